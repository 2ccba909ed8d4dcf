// dsv3 train: trains a DeepSeek-V3-shaped model on a text corpus as a TRAIN.json describes (see
// train::TrainConfig for every key), with a progress bar on a terminal and a JSONL metrics log.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli/command.h"
#include "kernels/cpu/ops.h"
#include "train/train.h"

namespace dsv3::cli {
namespace {

std::string duration(double seconds) {
  const auto s = static_cast<std::int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

int run_train(const std::string& config_path) {
  // FP32 GEMMs unless DSV3_GEMM says otherwise: the backward passes are exact for the forward that
  // FP32 products compute, where the BF16 inputs some CPUs default to (linear_dnnl.cpp) would
  // round the recorded activations first.
  kernels::use_f32_gemm_unless_chosen();
  const train::TrainConfig config = train::TrainConfig::load(config_path);
  train::Trainer trainer(config);
  const train::Corpus& corpus = trainer.corpus();
  std::int64_t parameters = 0;
  for (const auto& [name, p] : trainer.model().parameters) parameters += static_cast<std::int64_t>(p.value.size());
  fmt::print(stderr, "corpus: {} documents, {} tokens; {} training sequences, {} validation sequences of {} tokens\n",
             corpus.documents, corpus.tokens, corpus.train.count(), corpus.validation.count(), config.seq_len);
  if (!corpus.skipped.empty()) {
    fmt::print(stderr, "corpus: skipped {} document{} that cannot be encoded (skip_invalid_documents):\n",
               corpus.skipped.size(), corpus.skipped.size() == 1 ? "" : "s");
    constexpr std::size_t kShown = 5;
    for (std::size_t i = 0; i < std::min(kShown, corpus.skipped.size()); ++i)
      fmt::print(stderr, "  {}\n", corpus.skipped[i]);
    if (corpus.skipped.size() > kShown) fmt::print(stderr, "  and {} more\n", corpus.skipped.size() - kShown);
  }
  fmt::print(stderr, "model: {} parameters; {}; AdamW moments {}\n", parameters, config.fp8 ? "FP8 GEMMs" : "FP32",
             config.adamw.moment_dtype == train::MomentDType::bf16 ? "BF16" : "FP32");
  if (trainer.resumed_from())
    fmt::print(stderr, "resumed from {} at step {}\n", trainer.resumed_from()->string(), trainer.steps_done());

  const bool terminal = ::isatty(STDERR_FILENO) != 0;
  const std::int64_t first = trainer.steps_done();
  const auto start = std::chrono::steady_clock::now();
  std::int64_t tokens = 0;
  std::optional<train::StepReport> last;
  trainer.run([&](const train::StepReport& r) {
    tokens += r.tokens;
    last = r;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r.validation && terminal)
      fmt::print(stderr, "\r\033[Kstep {}: validation loss {:.4f} (MTP {:.4f})\n", r.step, r.validation->loss_main,
                 r.validation->loss_mtp);
    if (!terminal) return;
    const double done = static_cast<double>(r.step - first) / static_cast<double>(config.steps - first);
    const int width = 24, filled = static_cast<int>(done * width);
    const double eta = done > 0.0 ? elapsed * (1.0 - done) / done : 0.0;
    fmt::print(stderr, "\r\033[K[{}{}] {}/{} loss {:.4f} (MTP {:.4f}) lr {:.2e} {:.0f} tok/s ETA {}",
               std::string(filled, '#'), std::string(width - filled, '.'), r.step, config.steps, r.loss_main,
               r.loss_mtp, r.lr, static_cast<double>(tokens) / elapsed, duration(eta));
  });
  if (terminal) fmt::print(stderr, "\n");
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (last) {
    fmt::print(stderr, "trained steps {}..{} in {}: {:.0f} tokens/s; last loss {:.4f} (MTP {:.4f})", first + 1,
               last->step, duration(elapsed), static_cast<double>(tokens) / elapsed, last->loss_main, last->loss_mtp);
    if (last->validation) fmt::print(stderr, ", validation {:.4f}", last->validation->loss_main);
    fmt::print(stderr, "\n");
  } else {
    fmt::print(stderr, "nothing to do: already at step {} of {}\n", trainer.steps_done(), config.steps);
  }
  if (!config.checkpoint_dir.empty())
    fmt::print(stderr, "checkpoint: {}/step-{}\n", config.checkpoint_dir, trainer.steps_done());
  return 0;
}

const bool registered = register_command(
    {"train", "Train a DeepSeek-V3-shaped model on a text corpus (AdamW, MTP, balancing, FP8 recipe, checkpoints)",
     [](CLI::App& app) -> Run {
       auto config = std::make_shared<std::string>();
       add_exact_flag(app);
       app.add_option("--config", *config, "TRAIN.json: model_config, tokenizer, corpus, and hyper-parameters")
           ->required();
       return [config] { return run_train(*config); };
     }});

}  // namespace
}  // namespace dsv3::cli
