#pragma once
// Each subcommand lives in its own file and registers itself here at start-up:
//   static const bool registered = dsv3::cli::register_command({"info", "...", setup});
// `setup` adds the subcommand's options to the CLI11 app and returns the function to run.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/placement.h"

namespace dsv3::cli {

using Run = std::function<int()>;

struct Command {
  std::string name;
  std::string description;
  // Adds options to `app` (whose values it binds to state it owns) and returns what runs it.
  std::function<Run(CLI::App& app)> setup;
};

bool register_command(Command command);

// --exact, for the commands that run the model: FP32 activations throughout (parity work), where
// the default multiplies many-row linears through a GEMM library (kernels/ops.h).
void add_exact_flag(CLI::App& app);
// --head-fp8 (model/weights.h, quantize_output_heads_fp8) for the commands that load through load_model.
void add_head_fp8_flag(CLI::App& app);

// The ranks this run spans: under mpirun several (rank 0 runs the command, the others follow the
// model it loads: model/distributed.h), otherwise one process.
dist::Communicator& communicator();

// A plan written by `dsv3 placement --out` for `ranks` ranks: each MoE layer's experts per rank.
std::vector<dist::LayerPlacement> read_placement_plan(const std::string& path, int ranks);

}  // namespace dsv3::cli
