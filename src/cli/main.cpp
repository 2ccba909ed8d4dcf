// dsv3: the command-line front door. Subcommands register themselves (cli/command.h).
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/default_model.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "model/distributed.h"
#include "model/weights.h"

namespace dsv3::cli {
namespace {
std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}
std::unique_ptr<dsv3::dist::Communicator>& the_communicator() {
  static std::unique_ptr<dsv3::dist::Communicator> communicator;
  return communicator;
}
}  // namespace

dist::Communicator& communicator() {
  auto& c = the_communicator();
  if (!c) c = std::make_unique<dist::SingleProcess>();
  return *c;
}

bool register_command(Command command) {
  commands().push_back(std::move(command));
  return true;
}

void add_exact_flag(CLI::App& app) {
  app.add_flag_callback("--exact", [] { dsv3::kernels::set_exact_arithmetic(true); },
                        "Exact arithmetic: FP32 activations throughout, no GEMM library (as DSV3_EXACT=1)");
}

void add_head_fp8_flag(CLI::App& app) {
  app.add_flag_callback("--head-fp8", [] { dsv3::set_output_heads_fp8(true); },
                        "Re-quantise a BF16 output head to FP8 with 128x128 block scales at load: about half "
                        "its bytes per decode step, at some logits precision (as DSV3_HEAD_FP8=1)");
}

}  // namespace dsv3::cli

int main(int argc, char** argv) {
  using namespace dsv3::cli;
  CLI::App app{"dsv3: DeepSeek-V3 in C++ — run, serve and train DeepSeek-V3-architecture models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dsv3 0.1.0");
  auto& all = commands();
  std::sort(all.begin(), all.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, Run>> runs;
  for (auto& command : all) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    runs.emplace_back(sub, command.setup(*sub));
    // with_default_model fills in --model when it is absent, so no command requires it.
    if (CLI::Option* model = sub->get_option_no_throw("--model")) {
      model->required(false);
      model->description(model->get_description() + " (default: models/sotu, or $DSV3_MODEL)");
    }
  }
  std::vector<std::string> arguments(argv, argv + argc);
  try {
    the_communicator() = dsv3::dist::make_communicator();
  } catch (const dsv3::Error& e) {
    fmt::print(stderr, "dsv3: error: {}\n", e.what());
    return 1;
  }
  dsv3::dist::Communicator& ranks = communicator();
  // Under mpirun rank 0 alone speaks; the others parse the same command line (so flags such as
  // --exact apply everywhere), then follow rank 0's model.
  const bool follower = ranks.rank() != 0;
  if (follower) std::freopen("/dev/null", "w", stdout);
  try {
    arguments = with_default_model(app, std::move(arguments));
  } catch (const dsv3::Error& e) {
    fmt::print(stderr, "dsv3: error: {}\n", e.what());
    return 1;
  }
  std::vector<char*> pointers;
  for (std::string& a : arguments) pointers.push_back(a.data());
  try {
    app.parse(static_cast<int>(pointers.size()), pointers.data());
  } catch (const CLI::ParseError& e) {
    return follower ? e.get_exit_code() : app.exit(e);
  }
  const auto run_command = [&runs] {
    try {
      for (auto& [sub, run] : runs)
        if (sub->parsed()) return run();
    } catch (const dsv3::Error& e) {
      fmt::print(stderr, "dsv3: error: {}\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      fmt::print(stderr, "dsv3: unexpected error: {}\n", e.what());
      return 1;
    }
    return 0;
  };
  if (ranks.size() == 1) return run_command();
  if (follower) return dsv3::dist::run_rank(ranks, [&ranks] { return dsv3::follow(ranks, dsv3::kernels::default_backend()); });
  return dsv3::dist::run_rank(ranks, [&] {
    const int status = run_command();
    dsv3::stop_followers(ranks);
    return status;
  });
}
