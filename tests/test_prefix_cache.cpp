// Automatic prefix caching: the block manager's chained hashes, reference counts and LRU eviction
// on a small pool, and the engine's cached runs against uncached ones (same greedy tokens, logprobs
// within the cache dtype's rounding, with and without MTP drafts).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>

#include "engine/block_manager.h"
#include "engine/engine.h"
#include "support.h"

namespace dsv3 {
namespace {

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

constexpr std::int64_t kBlock = 4;

// `blocks` whole blocks of tokens: block i is filled with ids[i].
std::vector<std::int32_t> blocks_of(std::initializer_list<std::int32_t> ids) {
  std::vector<std::int32_t> tokens;
  for (const std::int32_t id : ids) tokens.insert(tokens.end(), kBlock, id);
  return tokens;
}

struct Pool {
  LatentCache cache;
  BlockManager manager;
  Pool(std::int64_t blocks, bool key_next_token = false)
      : cache(tiny_model().config(),
              {.capacity_tokens = blocks * kBlock, .dtype = DType::BF16, .block_tokens = kBlock}),
        manager(cache, 1234, true, key_next_token) {}

  // A sequence that computed all of `tokens` and published its full blocks.
  LatentCache::Table computed(const std::vector<std::int32_t>& tokens, BlockManager::Chain& chain) {
    LatentCache::Table table;
    manager.match(tokens, table, chain);
    manager.reserve(table, static_cast<std::int64_t>(tokens.size()));
    manager.publish(table, chain, static_cast<std::int64_t>(tokens.size()), tokens, {});
    return table;
  }
  // Computes and releases `tokens`: its full blocks stay cached.
  void cache_sequence(const std::vector<std::int32_t>& tokens) {
    BlockManager::Chain chain;
    LatentCache::Table table = computed(tokens, chain);
    manager.release(table, chain);
  }
  std::int64_t hits(const std::vector<std::int32_t>& prompt) {
    LatentCache::Table table;
    BlockManager::Chain chain;
    const std::int64_t matched = manager.match(prompt, table, chain);
    manager.release(table, chain);
    return matched;
  }
};

TEST(PrefixCache, HashesAreChainedOverEveryEarlierBlock) {
  Pool pool(16);
  pool.cache_sequence(blocks_of({5, 6, 7}));
  EXPECT_EQ(pool.hits(blocks_of({5, 6, 7, 8})), 3 * kBlock);
  EXPECT_EQ(pool.hits(blocks_of({5, 6, 9, 8})), 2 * kBlock);
  // Block 6 after a different first block is another block.
  EXPECT_EQ(pool.hits(blocks_of({9, 6, 7, 8})), 0);
  // At least one prompt token is left to compute: a prompt of exactly the cached blocks hits all
  // but the last one.
  EXPECT_EQ(pool.hits(blocks_of({5, 6, 7})), 2 * kBlock);
  auto plus_one = blocks_of({5, 6, 7});
  plus_one.push_back(1);
  EXPECT_EQ(pool.hits(plus_one), 3 * kBlock);
  // A partial last block is never published.
  auto partial = blocks_of({3});
  partial.push_back(3);
  pool.cache_sequence(partial);
  partial.push_back(4);
  partial.push_back(4);
  EXPECT_EQ(pool.hits(partial), kBlock);
  EXPECT_EQ(pool.hits({3, 3, 3, 3, 3, 9}), kBlock);
  EXPECT_EQ(pool.hits({3, 3, 3, 9, 3, 9}), 0);
}

TEST(PrefixCache, WithMtpAKeyCoversTheTokenAfterTheBlock) {
  Pool pool(16, true);
  auto tokens = blocks_of({5, 6});
  pool.cache_sequence(tokens);
  // Block 1's next token is unknown: only block 0 (followed by a 6) was published.
  EXPECT_EQ(pool.hits(blocks_of({5, 6, 7})), kBlock);
  tokens.push_back(2);
  pool.cache_sequence(tokens);
  auto other_next = blocks_of({5, 6});
  other_next.push_back(3);
  other_next.push_back(3);
  EXPECT_EQ(pool.hits(other_next), kBlock) << "the MTP row at block 1's end was computed with token 2, not 3";
  auto same_next = blocks_of({5, 6});
  same_next.push_back(2);
  same_next.push_back(3);
  EXPECT_EQ(pool.hits(same_next), 2 * kBlock);
}

TEST(PrefixCache, BlocksAreSharedByReferenceAndKeptAfterTheirSequences) {
  Pool pool(8);
  const auto prompt = blocks_of({1, 2, 3});
  BlockManager::Chain chain_a, chain_b;
  LatentCache::Table a = pool.computed(prompt, chain_a);
  EXPECT_EQ(pool.manager.stats().used_blocks, 3);
  LatentCache::Table b;
  auto longer = blocks_of({1, 2, 3, 4});
  EXPECT_EQ(pool.manager.match(longer, b, chain_b), 3 * kBlock);
  EXPECT_EQ(std::vector(b.blocks.begin(), b.blocks.end()), a.blocks) << "the same blocks, not copies";
  pool.manager.reserve(b, 4 * kBlock);
  EXPECT_EQ(pool.manager.stats().used_blocks, 4);
  pool.manager.release(a, chain_a);
  EXPECT_EQ(pool.manager.stats().used_blocks, 4) << "b still holds a's blocks";
  EXPECT_EQ(pool.manager.stats().cached_blocks, 0);
  pool.manager.publish(b, chain_b, 4 * kBlock, longer, {});
  pool.manager.release(b, chain_b);
  const PrefixCacheStats s = pool.manager.stats();
  EXPECT_EQ(s.used_blocks, 0);
  EXPECT_EQ(s.cached_blocks, 4);
  EXPECT_EQ(s.free_blocks, 4);
  EXPECT_EQ(pool.manager.available_tokens(), 8 * kBlock) << "cached blocks count as available";
  EXPECT_EQ(s.hit_tokens, 3 * kBlock);
}

TEST(PrefixCache, EvictsTheLeastRecentlyUsedBlocksOnlyWhenThePoolNeedsThem) {
  Pool pool(4);
  pool.cache_sequence(blocks_of({1, 1}));  // two blocks
  pool.cache_sequence(blocks_of({2}));
  pool.cache_sequence(blocks_of({3}));
  EXPECT_EQ(pool.manager.stats().cached_blocks, 4);
  EXPECT_EQ(pool.manager.stats().free_blocks, 0);
  // Using {2} again makes it the most recent.
  EXPECT_EQ(pool.hits(blocks_of({2, 9})), kBlock);
  // A new sequence needing two blocks evicts two: of {1, 1} the later block went first (released
  // first), then the earlier one; {3} and {2} stay.
  LatentCache::Table table;
  pool.manager.reserve(table, 2 * kBlock);
  EXPECT_EQ(pool.manager.stats().evicted_blocks, 2);
  EXPECT_EQ(pool.hits(blocks_of({1, 1, 9})), 0);
  EXPECT_EQ(pool.hits(blocks_of({3, 9})), kBlock);
  EXPECT_EQ(pool.hits(blocks_of({2, 9})), kBlock);
  pool.manager.reserve(table, 3 * kBlock);
  EXPECT_EQ(pool.hits(blocks_of({3, 9})), 0) << "{3} was used less recently than {2}";
  EXPECT_EQ(pool.hits(blocks_of({2, 9})), kBlock);
  BlockManager::Chain chain;
  pool.manager.release(table, chain);
}

TEST(PrefixCache, APoolFullOfCachedBlocksStillAdmitsNewWork) {
  Pool pool(4);
  pool.cache_sequence(blocks_of({1, 2, 3, 4}));
  EXPECT_EQ(pool.manager.stats().cached_blocks, 4);
  LatentCache::Table table;
  EXPECT_NO_THROW(pool.manager.reserve(table, 4 * kBlock));
  EXPECT_EQ(pool.manager.stats().used_blocks, 4);
  LatentCache::Table more;
  EXPECT_THROW(pool.manager.reserve(more, 1), CacheFullError) << "every block is in use";
  EXPECT_TRUE(more.blocks.empty());
}

// Greedy generation with top logprobs, one prompt after another in one engine.
struct Generated {
  std::vector<std::int32_t> tokens;
  std::vector<float> logprobs;  // every event's top logprobs, back to back
  std::int64_t cached = 0;
};

Generated generate(Engine& engine, const std::vector<std::int32_t>& prompt, std::int32_t max_tokens) {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = max_tokens;
  greedy.ignore_eos = true;
  greedy.logprobs = 4;
  Generated run;
  const SequenceId id = engine.add(prompt, greedy);
  run.cached = engine.cached_prompt_tokens(id);
  while (engine.has_work())
    for (const TokenEvent& event : engine.step()) {
      run.tokens.push_back(event.sampled.token);
      for (const auto& top : event.sampled.top_logprobs) run.logprobs.push_back(top.logprob);
    }
  return run;
}

TEST(PrefixCache, CachedRunsGiveTheSameGreedyTokensAsUncachedOnes) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto ids = test::read_i64(reference->tensors().at("input_ids_3"));
  const std::vector<std::int32_t> shared(ids.begin(), ids.begin() + 70);
  for (const std::int64_t mtp : {0, 2}) {
    for (const DType dtype : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(fmt::format("mtp {}, cache {}", mtp, dtype_name(dtype)));
      const EngineOptions options{
          .cache_tokens = 512, .cache_dtype = dtype, .block_tokens = 16, .prefill_chunk = 32, .mtp_drafts = mtp};
      Engine cached(tiny_model(), options);
      EngineOptions off = options;
      off.prefix_cache = false;
      const Generated first = generate(cached, shared, 20);
      EXPECT_EQ(first.cached, 0);
      // The same prompt, one that shares its first 64 tokens and continues otherwise, and one
      // that continues the first reply (whose blocks were published while it was generated).
      std::vector<std::int32_t> branch(shared.begin(), shared.begin() + 64);
      branch.insert(branch.end(), ids.begin() + 200, ids.begin() + 220);
      std::vector<std::int32_t> follow_up = shared;
      follow_up.insert(follow_up.end(), first.tokens.begin(), first.tokens.end());
      follow_up.insert(follow_up.end(), ids.begin() + 280, ids.begin() + 285);
      // With MTP the branch cannot share block 3: its MTP row at position 63 saw token 64.
      const std::vector<std::pair<std::vector<std::int32_t>, std::int64_t>> cases = {
          {shared, 64}, {branch, mtp > 0 ? 48 : 64}, {follow_up, 80}};
      for (const auto& [prompt, expected_hit] : cases) {
        const Generated hit = generate(cached, prompt, 24);
        Engine fresh(tiny_model(), off);
        const Generated miss = generate(fresh, prompt, 24);
        EXPECT_EQ(miss.cached, 0);
        EXPECT_EQ(hit.cached, expected_hit) << "prompt of " << prompt.size();
        EXPECT_EQ(hit.tokens, miss.tokens);
        ASSERT_EQ(hit.logprobs.size(), miss.logprobs.size());
        float worst = 0.0f;
        for (std::size_t i = 0; i < hit.logprobs.size(); ++i)
          worst = std::max(worst, std::abs(hit.logprobs[i] - miss.logprobs[i]));
        // BF16 keeps 8 bits of mantissa: a cached latent may differ from one computed in the same
        // chunk by that rounding, which moves a logprob by well under 0.05 in this model.
        EXPECT_LE(worst, dtype == DType::F32 ? 1e-4f : 5e-2f);
        std::printf("mtp %lld, %s cache, prompt %zu: %lld tokens cached, largest logprob difference %.2g\n",
                    static_cast<long long>(mtp), std::string(dtype_name(dtype)).c_str(), prompt.size(),
                    static_cast<long long>(hit.cached), worst);
      }
      EXPECT_EQ(cached.prefix_cache().used_blocks, 0);
      EXPECT_GT(cached.prefix_cache().cached_blocks, 0);
      EXPECT_EQ(cached.free_tokens(), cached.cache().capacity_tokens());
    }
  }
}

// With MTP drafting, greedy drafts depend on the MTP rows: equal acceptance counts show that the
// cached blocks' MTP rows are the ones an uncached run computes.
TEST(PrefixCache, CachedMtpRowsDraftLikeComputedOnes) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto ids = test::read_i64(reference->tensors().at("input_ids_3"));
  const std::vector<std::int32_t> prompt(ids.begin(), ids.begin() + 90);
  const EngineOptions options{.cache_tokens = 512, .cache_dtype = DType::F32, .block_tokens = 16, .mtp_drafts = 3};
  Engine warm(tiny_model(), options);
  generate(warm, prompt, 8);
  const SpeculationStats before = warm.speculation();
  const Generated hit = generate(warm, prompt, 40);
  EXPECT_EQ(hit.cached, 80);
  EngineOptions off = options;
  off.prefix_cache = false;
  Engine fresh(tiny_model(), off);
  const Generated miss = generate(fresh, prompt, 40);
  EXPECT_EQ(hit.tokens, miss.tokens);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(warm.speculation().drafted[i] - before.drafted[i], fresh.speculation().drafted[i]);
    EXPECT_EQ(warm.speculation().accepted[i] - before.accepted[i], fresh.speculation().accepted[i]) << "draft " << i;
  }
}

TEST(PrefixCache, AnEngineFullOfCachedBlocksStillAdmitsNewWork) {
  Engine engine(tiny_model(), {.cache_tokens = 64, .block_tokens = 16});
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 2;
  greedy.ignore_eos = true;
  std::vector<std::int32_t> prompt(60);
  std::iota(prompt.begin(), prompt.end(), 10);
  engine.add(prompt, greedy);
  while (engine.has_work()) engine.step();
  EXPECT_EQ(engine.prefix_cache().cached_blocks, 3);
  EXPECT_EQ(engine.free_tokens(), 64);
  std::iota(prompt.begin(), prompt.end(), 500);
  engine.add(prompt, greedy);
  std::int64_t produced = 0;
  while (engine.has_work()) produced += static_cast<std::int64_t>(engine.step().size());
  EXPECT_EQ(produced, 2);
  EXPECT_EQ(engine.prefix_cache().evicted_blocks, 3);
}

}  // namespace
}  // namespace dsv3
