// Router statistics for expert placement: the counts a step tallies (RouterCounts) against the
// reference backend's routing of the same router logits, the engine's totals, and
// `dsv3 generate --expert-stats` feeding `dsv3 placement`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <numeric>

#include "engine/engine.h"
#include "kernels/reference/reference.h"
#include "support.h"

namespace dsv3 {
namespace {

using namespace test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Model& tiny_model() {
  static const Model model(Weights::load(tiny_model_dir()));
  return model;
}

std::vector<std::int64_t> fixture_ids(const std::string& name) {
  const auto reference = SafetensorsFile::open(tiny_model_dir() / "reference.safetensors");
  return read_i64(reference->tensors().at(name));
}

std::int64_t sum(const std::vector<std::int64_t>& counts) { return std::accumulate(counts.begin(), counts.end(), 0ll); }

TEST(RouterCounts, EqualTheReferenceRoutingOfTheStepsRouterLogits) {
  const Model& model = tiny_model();
  const ModelConfig& c = model.config();
  const std::vector<std::int64_t> ids = fixture_ids("input_ids_2");  // 64 tokens
  const auto tokens = static_cast<std::int64_t>(ids.size());
  LatentCache cache(c, {.capacity_tokens = tokens, .dtype = DType::F32}, model.backend());
  LatentCache::Table table;
  cache.reserve(table, tokens);
  kernels::Workspace workspace(model.backend()), storage(model.backend());
  StepRecord record(storage);
  RouterCounts counts(c);
  const StepSegment segment{&table, 0, ids, false};
  model.step(std::span(&segment, 1), cache, workspace, &record, &counts);

  // The fixture's layer 0 is dense; layers 1 and 2 are MoE layers of 16 experts.
  EXPECT_THAT(counts.layers, ElementsAre(1, 2));
  EXPECT_EQ(counts.rows, tokens);
  ASSERT_EQ(record.layers.size(), 3u);
  const kernels::ReferenceBackend reference;
  for (std::size_t m = 0; m < counts.layers.size(); ++m) {
    const auto layer = static_cast<std::size_t>(counts.layers[m]);
    std::vector<std::int32_t> experts(static_cast<std::size_t>(tokens * c.num_experts_per_tok));
    std::vector<float> weights(experts.size());
    reference.route(record.layers[layer].router_logits, model.weights().layers[layer].moe->e_score_correction_bias,
                    {.n_group = c.n_group, .topk_group = c.topk_group, .top_k = c.num_experts_per_tok,
                     .norm_topk_prob = c.norm_topk_prob, .routed_scaling_factor = c.routed_scaling_factor},
                    experts, weights);
    std::vector<std::int64_t> expected(static_cast<std::size_t>(c.n_routed_experts), 0);
    for (const std::int32_t e : experts) ++expected[static_cast<std::size_t>(e)];
    EXPECT_EQ(counts.experts[m], expected) << "MoE layer " << layer;
    EXPECT_EQ(sum(counts.experts[m]), tokens * c.num_experts_per_tok);
    // Not a degenerate case: several experts are used and they are not all equally loaded.
    EXPECT_GT(*std::max_element(expected.begin(), expected.end()), *std::min_element(expected.begin(), expected.end()));
  }

  // A second step adds to the counts; a step given none leaves them.
  const std::vector<std::int64_t> before = counts.experts[0];
  cache.reserve(table, tokens);
  model.step(std::span(&segment, 1), cache, workspace);
  EXPECT_EQ(counts.experts[0], before);
  EXPECT_EQ(counts.rows, tokens);

  ModelConfig other = c;
  other.n_routed_experts = 8;
  RouterCounts wrong(other);
  EXPECT_THAT(error_message([&] { model.step(std::span(&segment, 1), cache, workspace, nullptr, &wrong); }),
              HasSubstr("router counts made for another model"));
}

// Every row the main model computes is counted: the prompt, each decode token, and with MTP each
// verified draft, accepted or not; the MTP module's own layer is not a layer of the counts.
TEST(RouterCounts, TheEngineCountsTopKExpertsForEveryRowItsMainModelSteps) {
  const Model& model = tiny_model();
  const ModelConfig& c = model.config();
  const std::vector<std::int64_t> prompt64 = fixture_ids("gen_prompt");
  const std::vector<std::int32_t> prompt(prompt64.begin(), prompt64.end());
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_tokens = 20;
  params.ignore_eos = true;
  {
    Engine engine(model, {.cache_tokens = 256});
    EXPECT_EQ(engine.router_counts(), nullptr);  // off unless asked
  }
  for (const std::int64_t mtp : {0, 2}) {
    Engine engine(model, {.cache_tokens = 256, .mtp_drafts = mtp, .expert_stats = true});
    engine.add(prompt, params);
    std::int64_t steps = 0, generated = 0;
    while (engine.has_work()) {
      generated += static_cast<std::int64_t>(engine.step().size());
      ++steps;
    }
    ASSERT_EQ(generated, 20);
    const RouterCounts* counts = engine.router_counts();
    ASSERT_NE(counts, nullptr);
    // One prefill step, then decode steps each feeding the pending token and its drafts.
    const std::int64_t rows = static_cast<std::int64_t>(prompt.size()) + (steps - 1) * (1 + mtp);
    EXPECT_EQ(counts->rows, rows) << "mtp " << mtp;
    if (mtp == 0) EXPECT_EQ(rows, static_cast<std::int64_t>(prompt.size()) + generated - 1);
    ASSERT_EQ(counts->experts.size(), 2u);
    for (const auto& layer : counts->experts) EXPECT_EQ(sum(layer), rows * c.num_experts_per_tok) << "mtp " << mtp;
  }
}

TEST(ExpertStatsCli, GenerateWritesStatisticsThatPlacementReads) {
  const auto dir = temp_dir("stats");
  const auto stats = dir / "stats.json";
  std::string output;
  ASSERT_EQ(run_dsv3(fmt::format("generate --model {} --prompt-ids 5,6,7,8,9 --max-tokens 12 --expert-stats {}",
                                 tiny_model_dir().string(), stats.string()),
                     output),
            0)
      << output;
  EXPECT_THAT(output, HasSubstr("expert statistics of 16 routed tokens"));
  std::ifstream in(stats);
  const nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_EQ(json["tokens"], 5 + 12 - 1);  // the last token generated is never fed back
  EXPECT_EQ(json["model"], tiny_model_dir().string());
  EXPECT_EQ(json["moe_layers"], nlohmann::json::parse("[1, 2]"));
  ASSERT_EQ(json["layers"].size(), 2u);
  for (const auto& layer : json["layers"]) {
    ASSERT_EQ(layer.size(), 16u);
    EXPECT_EQ(sum(layer.get<std::vector<std::int64_t>>()), 16 * 4);
  }

  output.clear();
  ASSERT_EQ(run_dsv3(fmt::format("placement --stats {} --ranks 4 --redundant 1", stats.string()), output), 0) << output;
  EXPECT_THAT(output, HasSubstr("2 layers, 16 experts, 4 ranks, 4 + 1 slots per rank"));

  // Several files are summed: a file twice gives the same ratios as once.
  std::string twice;
  ASSERT_EQ(run_dsv3(fmt::format("placement --stats {0} --stats {0} --ranks 4 --redundant 1", stats.string()), twice),
            0)
      << twice;
  EXPECT_EQ(twice, output);
  const auto other = dir / "other.json";
  std::ofstream(other) << R"({"layers": [[1, 2, 3, 4]]})";
  output.clear();
  EXPECT_EQ(run_dsv3(fmt::format("placement --stats {} --stats {} --ranks 2 --redundant 1", stats.string(),
                                 other.string()),
                     output),
            1);
  EXPECT_THAT(output, HasSubstr("cannot be summed"));

  output.clear();
  EXPECT_EQ(run_dsv3(fmt::format("generate --model {} --prompt-ids 5 --max-tokens 2 --expert-stats {}",
                                 tiny_model_dir().string(), (dir / "missing" / "stats.json").string()),
                     output),
            1);
  EXPECT_THAT(output, HasSubstr("--expert-stats"));
}

}  // namespace
}  // namespace dsv3
