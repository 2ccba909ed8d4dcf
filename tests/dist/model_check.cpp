// The model across ranks, run under mpirun: rank 0 holds the whole model in-process (the
// single-process run) beside the model cut over every rank, and checks that they agree:
// full-sequence logits and MTP logits within 1e-5 relative (the ranks only change the order of
// the sums), the fixture's transformers logits at the parity tests' tolerance, and greedy tokens
// identical through the engine, with and without MTP drafts. The other ranks follow.
// Usage: dsv3_model_check MODEL_DIR [--placement REDUNDANT] [--reference FILE]
//   --placement R: routed experts placed by dist::place_experts with R redundant slots per rank,
//                  from a skewed load, so replicated experts split their rows between copies.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/placement.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "model/distributed.h"

namespace {

using namespace dsv3;

int failures = 0;

void check(bool ok, const std::string& what) {
  fmt::print("{}: {}\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

// max |a - b| / max |b|
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

std::vector<std::int32_t> greedy(const Model& model, const std::vector<std::int32_t>& prompt, std::int64_t tokens,
                                 std::int64_t drafts) {
  EngineOptions options;
  options.cache_tokens = 1024;
  options.mtp_drafts = drafts;
  Engine engine(model, options);
  SamplingParams params;
  params.temperature = 0;
  params.max_tokens = tokens;
  engine.add(prompt, params);
  std::vector<std::int32_t> out;
  while (engine.has_work())
    for (const TokenEvent& event : engine.step()) out.push_back(event.sampled.token);
  return out;
}

// A skewed load (expert e gets (e + 1)^2 rows) placed with `redundant` extra slots per rank.
std::vector<dist::LayerPlacement> skewed_placement(const ModelConfig& c, int ranks, int redundant) {
  std::vector<dist::LayerPlacement> plan;
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    std::vector<double> load;
    for (std::int64_t e = 0; e < c.n_routed_experts; ++e) load.push_back(static_cast<double>((e + 1) * (e + 1 + layer)));
    plan.push_back(dist::place_experts(load, ranks, redundant));
  }
  return plan;
}

int lead(dist::Communicator& comm, const std::string& dir, int redundant, const std::string& reference_path) {
  const kernels::Backend& backend = kernels::default_backend();
  const Model whole(Weights::load(dir), backend);
  ShardedLoad load{dir, {}, true};
  if (redundant >= 0) load.placement = skewed_placement(whole.config(), comm.size(), redundant);
  const Model split = load_across_ranks(load, comm, backend);
  fmt::print("{} ranks{}; resident weight bytes per rank:", comm.size(),
             redundant >= 0 ? fmt::format(", experts placed with {} redundant slot(s) per rank", redundant) : "");
  for (const std::int64_t bytes : resident_weight_bytes(split, comm)) fmt::print(" {}", bytes);
  fmt::print("\n");

  const auto reference = reference_path.empty() ? nullptr : SafetensorsFile::open(reference_path);
  std::vector<std::vector<std::int64_t>> inputs;
  std::vector<std::string> names;
  if (reference) {
    for (const auto& [name, view] : reference->tensors())
      if (name.starts_with("input_ids_")) {
        inputs.push_back(read_token_ids(view));
        names.push_back(name.substr(10));
      }
  } else {
    std::vector<std::int64_t> ids;
    for (std::int64_t i = 0; i < 40; ++i) ids.push_back((i * 7919 + 13) % whole.config().vocab_size);
    inputs.push_back(ids);
    names.push_back("synthetic");
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const ForwardOutput a = whole.forward(inputs[i]), b = split.forward(inputs[i]);
    const double logits = relative_difference(b.logits, a.logits);
    check(logits <= 1e-5, fmt::format("input {} ({} tokens): logits within {:.2g} of one process", names[i],
                                      inputs[i].size(), logits));
    if (reference) {
      const TensorView* hf = reference->tensors().count("logits_" + names[i]) ? &reference->tensors().at("logits_" + names[i]) : nullptr;
      if (hf) {
        std::vector<float> expected(static_cast<std::size_t>(hf->numel()));
        std::memcpy(expected.data(), hf->data, hf->nbytes);
        const double d = relative_difference(b.logits, expected);
        check(d <= 1e-4, fmt::format("input {}: logits within {:.2g} of transformers'", names[i], d));
      }
    }
    if (!whole.weights().mtp.empty() && inputs[i].size() >= 2) {
      const double mtp = relative_difference(split.mtp_logits(inputs[i], b.hidden), whole.mtp_logits(inputs[i], a.hidden));
      check(mtp <= 1e-5, fmt::format("input {}: MTP logits within {:.2g} of one process", names[i], mtp));
    }
  }

  std::vector<std::int32_t> prompt;
  for (std::int64_t i = 0; i < 12; ++i) prompt.push_back(static_cast<std::int32_t>((i * 31 + 5) % whole.config().vocab_size));
  const std::vector<std::int32_t> expected = greedy(whole, prompt, 48, 0);
  check(greedy(split, prompt, 48, 0) == expected, "greedy tokens identical to one process");
  if (!whole.weights().mtp.empty())
    check(greedy(split, prompt, 48, 2) == expected, "greedy tokens identical with 2 MTP drafts per step");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: dsv3_model_check MODEL_DIR [--placement REDUNDANT] [--reference FILE]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int redundant = -1;
  std::string reference;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--placement") redundant = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--reference") reference = argv[i + 1];
  }
  // FP32 GEMMs, where the default may take BF16 inputs (AMD, AMX): the ranks then only change the
  // order of the sums, which is what the 1e-5 bounds below measure.
  kernels::set_gemm_bf16(false);
  std::unique_ptr<dist::Communicator> comm = dist::make_communicator();
  if (comm->size() < 2) {
    fmt::print(stderr, "dsv3_model_check runs under mpirun with 2 or more ranks\n");
    return 2;
  }
  return dist::run_rank(*comm, [&] {
    if (comm->rank() != 0) return follow(*comm, kernels::default_backend());
    const int status = lead(*comm, dir, redundant, reference);
    stop_followers(*comm);
    return status;
  });
}
