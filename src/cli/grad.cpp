// dsv3 grad: the exact gradient of the training objective for one sequence, in the format of the
// fixture tiny-dsv3/grads.safetensors (a contract): loss_main, loss_mtp (F64 [1]) and
// grad:<tensor name> (F32, the weight's shape) for every trained weight of the checkpoint, i.e. all
// but the router bias and the MTP module's copies of the shared embedding and head.
#include <fmt/core.h>

#include <chrono>
#include <limits>
#include <cstring>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/train.h"

namespace dsv3::cli {
namespace {

struct Options {
  std::string model, input, seq, output;
  double mtp_weight = 0.3;
  double balance_alpha = 0.0;
};

int run_grad(const Options& options) {
  train::TrainableModel model = train::TrainableModel::from_weights(Weights::load(options.model));
  const auto in = SafetensorsFile::open(options.input);
  const std::string ids_name = "input_ids_" + options.seq;
  const auto found = in->tensors().find(ids_name);
  if (found == in->tensors().end()) fail("{}: no tensor {}", options.input, ids_name);
  const std::vector<std::int64_t> ids = read_token_ids(found->second);

  const auto start = std::chrono::steady_clock::now();
  model.zero_gradients();
  const train::LossReport loss =
      train::accumulate_gradients(model, ids, {.mtp_weight = options.mtp_weight, .balance_alpha = options.balance_alpha});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "grad {}: {} tokens in {:.3f} s; loss_main {:.9g}, loss_mtp {:.9g}, loss_balance {:.9g}, total {:.9g}\n",
             options.seq, ids.size(), seconds, loss.main, loss.mtp, loss.balance, loss.total);
  fmt::print(stderr, "activations kept for the backward pass: {} bytes\n", loss.stored_activation_bytes);

  std::vector<TensorToWrite> tensors;
  const double losses[2] = {loss.main, loss.mtp};
  const char* loss_names[2] = {"loss_main", "loss_mtp"};
  for (int i = 0; i < 2; ++i)
    tensors.push_back({loss_names[i], DType::F64, {1}, std::as_bytes(std::span(losses + i, 1))});
  for (const auto& [name, p] : model.parameters)
    tensors.push_back(tensor_to_write("grad:" + name, p.shape, p.grad));
  write_safetensors(options.output, tensors,
                    {{"seq", options.seq}, {"mtp_weight", fmt::format("{}", options.mtp_weight)}});
  return 0;
}

const bool registered = register_command(
    {"grad", "Exact gradients of the training loss for one input_ids_<name> sequence (grads.safetensors format)",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<Options>();
       app.add_option("--model", options->model, "Model directory")->required();
       app.add_option("--input", options->input, "Safetensors with input_ids_<name> (I64/I32 [T])")->required();
       app.add_option("--seq", options->seq, "Which sequence: <name> of input_ids_<name>")->required();
       constexpr double most = std::numeric_limits<double>::max();
       add_number(app, "--mtp-weight", options->mtp_weight, "Weight of the MTP loss", 0.0, most)->capture_default_str();
       add_number(app, "--balance-alpha", options->balance_alpha, "Weight alpha of the sequence-wise balance loss", 0.0,
                  most)
           ->capture_default_str();
       app.add_option("--output", options->output, "Safetensors to write loss_main, loss_mtp and grad:<name>")
           ->required();
       return [options] { return run_grad(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
