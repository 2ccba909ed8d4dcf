#pragma once
// The engine's view of the paged latent cache: blocks handed to sequences' tables with reference
// counts, and automatic prefix caching over them. A full block whose rows are all written is
// published under a hash chained over every token before it and its own (and the model's key),
// so a later sequence whose prompt starts with the same tokens takes the block by reference
// instead of computing it again. Published blocks outlive their sequences: with no reference left
// they wait, least recently used first, until the pool needs them. MLA caches one small latent row
// per token, so keeping many of them is cheap.
//
// When MTP drafting is on, the MTP row at a block's last position was computed from the token after
// the block, so a key then covers that next token as well.
//
// Nothing here allocates after construction: block state lives in arrays by block id, the hash
// table and the LRU list are threaded through them.
#include <cstdint>
#include <span>
#include <vector>

#include "model/latent_cache.h"

namespace dsv3 {

struct PrefixCacheStats {
  std::int64_t used_blocks = 0;    // referenced by at least one sequence
  std::int64_t cached_blocks = 0;  // published, unreferenced, evictable
  std::int64_t free_blocks = 0;    // in the pool
  std::int64_t hit_tokens = 0;     // prompt tokens taken from cached blocks, over all sequences
  std::int64_t evicted_blocks = 0;
};

class BlockManager {
 public:
  // A sequence's progress through the hash chain: its first `published` blocks are in the table
  // (matched or published by it), the last of them under `hash`.
  struct Chain {
    std::int64_t published = 0;
    std::uint64_t hash = 0;
  };

  // `model_key` seeds every chain (a different model or cache layout never hits); `key_next_token`
  // makes a block's key cover the first token after it (MTP rows). `enabled` false: no matching,
  // no publishing, blocks go back to the pool when their last reference goes.
  BlockManager(LatentCache& cache, std::uint64_t model_key, bool enabled, bool key_next_token);

  bool enabled() const { return enabled_; }
  std::int64_t block_tokens() const { return block_tokens_; }
  // Free blocks and evictable cached ones, in tokens: what reserve() can still hand out.
  std::int64_t available_tokens() const { return (cache_.free_block_count() + lru_count_) * block_tokens_; }
  PrefixCacheStats stats() const;

  // Puts into the empty `table` the longest run of cached blocks that begins `prompt` and leaves
  // at least one of its tokens uncovered (the last prompt token's logits are always computed);
  // returns the tokens they cover.
  std::int64_t match(std::span<const std::int32_t> prompt, LatentCache::Table& table, Chain& chain);
  // Grows `table` to back `tokens` rows, evicting cached blocks when the pool is empty, or throws
  // CacheFullError leaving everything unchanged.
  void reserve(LatentCache::Table& table, std::int64_t tokens);
  // Drops the table's references past its first `tokens` rows (never a published block, which is
  // full and before the sequence's end).
  void truncate(LatentCache::Table& table, std::int64_t tokens);
  void release(LatentCache::Table& table, Chain& chain) {
    truncate(table, 0);
    chain = {};
  }
  // Publishes the table's full blocks whose rows [0, complete) are written, the tokens of the
  // sequence being `first` then `second` (its prompt and its output).
  void publish(const LatentCache::Table& table, Chain& chain, std::int64_t complete,
               std::span<const std::int32_t> first, std::span<const std::int32_t> second);

 private:
  std::int64_t key_tokens() const { return block_tokens_ + (key_next_token_ ? 1 : 0); }
  std::int32_t take();  // a free block, else the least recently used cached one
  std::int32_t find(std::uint64_t hash, std::uint64_t parent, std::span<const std::int32_t> key) const;
  void unhash(std::int32_t block);
  void lru_push(std::int32_t block);
  void lru_remove(std::int32_t block);

  LatentCache& cache_;
  const std::uint64_t model_key_;
  const bool enabled_;
  const bool key_next_token_;
  const std::int64_t block_tokens_;
  std::vector<std::int32_t> references_;
  std::vector<std::uint8_t> hashed_;
  std::vector<std::uint64_t> hash_, parent_;  // a published block's chain hash and its parent's
  std::vector<std::int32_t> keys_;            // [blocks, key_tokens]: a published block's tokens
  std::vector<std::int32_t> buckets_;         // heads of the hash table's chains (-1: empty)
  std::vector<std::int32_t> bucket_next_;
  std::vector<std::int32_t> lru_prev_, lru_next_;
  std::int32_t lru_head_ = -1, lru_tail_ = -1;  // head: the least recently used
  std::int64_t lru_count_ = 0;
  std::int64_t used_blocks_ = 0;
  std::int64_t hit_tokens_ = 0;
  std::int64_t evicted_blocks_ = 0;
  std::vector<std::int32_t> scratch_key_;
};

// The hash of one block in a chain: its parent's hash, then its key tokens.
std::uint64_t chain_hash(std::uint64_t parent, std::span<const std::int32_t> key);

}  // namespace dsv3
