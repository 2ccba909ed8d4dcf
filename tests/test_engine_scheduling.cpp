// The engine's step planning: preemption when the cache cannot hold every running sequence (the
// results stay those of each sequence alone), and the per-step token budget (decoding first, so a
// long prefill does not stall sequences that decode).
#include <gtest/gtest.h>

#include <map>

#include "engine/engine.h"
#include "support.h"

namespace dsv3 {
namespace {

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

std::vector<std::int32_t> fixture_ids(std::size_t from, std::size_t to) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto ids = test::read_i64(reference->tensors().at("input_ids_3"));
  return {ids.begin() + static_cast<std::ptrdiff_t>(from), ids.begin() + static_cast<std::ptrdiff_t>(to)};
}

SamplingParams greedy(std::int32_t max_tokens) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_tokens = max_tokens;
  params.ignore_eos = true;
  return params;
}

std::map<SequenceId, std::vector<std::int32_t>> run_all(Engine& engine) {
  std::map<SequenceId, std::vector<std::int32_t>> outputs;
  for (int steps = 0; engine.has_work(); ++steps) {
    EXPECT_LT(steps, 10000) << "the engine should finish";
    if (steps >= 10000) break;
    for (const TokenEvent& event : engine.step()) outputs[event.sequence].push_back(event.sampled.token);
  }
  return outputs;
}

TEST(EngineScheduling, PreemptedSequencesAreComputedAgainAndGiveTheirResultsAlone) {
  const std::vector<std::vector<std::int32_t>> prompts = {fixture_ids(0, 20), fixture_ids(30, 55), fixture_ids(60, 78),
                                                          fixture_ids(100, 121)};
  const std::int32_t max_tokens = 50;
  for (const std::int64_t mtp : {0, 2}) {
    for (const bool prefix_cache : {true, false}) {
      SCOPED_TRACE(fmt::format("mtp {}, prefix cache {}", mtp, prefix_cache));
      std::vector<std::vector<std::int32_t>> alone;
      for (const auto& prompt : prompts) {
        Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = DType::F32, .mtp_drafts = mtp});
        const SequenceId id = engine.add(prompt, greedy(max_tokens));
        alone.push_back(run_all(engine).at(id));
      }
      // Each sequence needs 5 blocks of 16 by its end (6 with MTP drafts); the cache holds 8.
      Engine engine(tiny_model(), {.cache_tokens = 128,
                                   .cache_dtype = DType::F32,
                                   .block_tokens = 16,
                                   .mtp_drafts = mtp,
                                   .prefix_cache = prefix_cache});
      std::vector<SequenceId> ids;
      for (const auto& prompt : prompts) ids.push_back(engine.add(prompt, greedy(max_tokens)));
      const auto together = run_all(engine);
      for (std::size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(together.at(ids[i]), alone[i]) << "sequence " << i;
      EXPECT_GT(engine.preemptions(), 0);
      EXPECT_EQ(engine.waiting(), 0);
      EXPECT_EQ(engine.prefix_cache().used_blocks, 0);
      EXPECT_EQ(engine.free_tokens(), 128);
      std::printf("mtp %lld, prefix cache %s: %lld preemptions\n", static_cast<long long>(mtp),
                  prefix_cache ? "on" : "off", static_cast<long long>(engine.preemptions()));
    }
  }
}

// A preempted sequence keeps its sampler state: a seeded sampled run is the run alone.
TEST(EngineScheduling, PreemptionKeepsTheSamplerState) {
  const std::vector<std::vector<std::int32_t>> prompts = {fixture_ids(0, 20), fixture_ids(30, 55), fixture_ids(60, 78)};
  auto sampled = [](std::uint64_t seed) {
    SamplingParams params = greedy(60);
    params.temperature = 0.9f;
    params.top_p = 0.95f;
    params.repetition_penalty = 1.1f;
    params.seed = seed;
    return params;
  };
  std::vector<std::vector<std::int32_t>> alone;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = DType::F32});
    const SequenceId id = engine.add(prompts[i], sampled(7 + i));
    alone.push_back(run_all(engine).at(id));
  }
  Engine engine(tiny_model(), {.cache_tokens = 112, .cache_dtype = DType::F32, .block_tokens = 16});
  std::vector<SequenceId> ids;
  for (std::size_t i = 0; i < prompts.size(); ++i) ids.push_back(engine.add(prompts[i], sampled(7 + i)));
  const auto together = run_all(engine);
  for (std::size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(together.at(ids[i]), alone[i]) << "sequence " << i;
  EXPECT_GT(engine.preemptions(), 0);
}

TEST(EngineScheduling, AStepThatCannotFitReservesNothing) {
  Engine engine(tiny_model(), {.cache_tokens = 64, .block_tokens = 16, .prefill_chunk = 16});
  engine.add(fixture_ids(0, 100), greedy(4));          // 100 tokens never fit in 64
  for (int step = 0; step < 4; ++step) engine.step();  // 64 tokens prefilled in chunks of 16
  EXPECT_EQ(engine.free_tokens(), 0);
  EXPECT_THROW(engine.step(), CacheFullError);
  EXPECT_EQ(engine.prefix_cache().used_blocks, 4) << "the sequence keeps what it had, nothing more";
  EXPECT_EQ(engine.preemptions(), 0) << "a sequence alone is never preempted";
}

TEST(EngineScheduling, DecodingSequencesKeepProducingWhileALongPromptIsPrefilled) {
  const auto short_prompt = fixture_ids(0, 10);
  const auto long_prompt = fixture_ids(20, 290);
  for (const std::int64_t mtp : {0, 1}) {
    SCOPED_TRACE(fmt::format("mtp {}", mtp));
    // The reference: each alone, with a budget that never binds.
    std::vector<std::vector<std::int32_t>> alone;
    for (const auto* prompt : {&short_prompt, &long_prompt}) {
      Engine engine(tiny_model(),
                    {.cache_tokens = 512, .cache_dtype = DType::F32, .max_step_tokens = 4096, .mtp_drafts = mtp});
      const SequenceId id = engine.add(*prompt, greedy(30));
      alone.push_back(run_all(engine).at(id));
    }
    Engine engine(tiny_model(),
                  {.cache_tokens = 512, .cache_dtype = DType::F32, .max_step_tokens = 24, .mtp_drafts = mtp});
    const SequenceId decoder = engine.add(short_prompt, greedy(30));
    std::map<SequenceId, std::vector<std::int32_t>> outputs;
    for (const TokenEvent& event : engine.step()) outputs[event.sequence].push_back(event.sampled.token);
    ASSERT_EQ(outputs[decoder].size(), 1u);
    const SequenceId prefiller = engine.add(long_prompt, greedy(30));
    // While the 270-token prompt is prefilled in what the budget leaves (24 - 1 - mtp tokens a
    // step), the decoding sequence gets a token every step.
    int prefill_steps = 0;
    while (outputs[prefiller].empty()) {
      ASSERT_LT(prefill_steps, 100);
      const bool decoding = outputs[decoder].size() < 30;
      std::size_t decoded = 0;
      for (const TokenEvent& event : engine.step()) {
        outputs[event.sequence].push_back(event.sampled.token);
        if (event.sequence == decoder) ++decoded;
      }
      ++prefill_steps;
      if (decoding) EXPECT_GE(decoded, 1u) << "step " << prefill_steps;
    }
    EXPECT_GE(prefill_steps, 270 / (24 - 1 - mtp)) << "the prompt went in chunks within the budget";
    for (const auto& [id, tokens] : run_all(engine))
      outputs[id].insert(outputs[id].end(), tokens.begin(), tokens.end());
    EXPECT_EQ(outputs[decoder], alone[0]);
    EXPECT_EQ(outputs[prefiller], alone[1]);
  }
}

TEST(EngineScheduling, RejectsANonPositiveStepBudget) {
  EXPECT_THROW(Engine(tiny_model(), {.max_step_tokens = 0}), Error);
}

}  // namespace
}  // namespace dsv3
