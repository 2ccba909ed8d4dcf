#include "engine/block_manager.h"

#include <algorithm>
#include <bit>

namespace dsv3 {
namespace {

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser: every input bit moves every output bit
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

std::uint64_t chain_hash(std::uint64_t parent, std::span<const std::int32_t> key) {
  std::uint64_t h = mix(parent + 0x9e3779b97f4a7c15ull);
  for (const std::int32_t token : key) h = mix(h ^ static_cast<std::uint32_t>(token));
  return mix(h + key.size());
}

BlockManager::BlockManager(LatentCache& cache, std::uint64_t model_key, bool enabled, bool key_next_token)
    : cache_(cache),
      model_key_(model_key),
      enabled_(enabled),
      key_next_token_(key_next_token),
      block_tokens_(cache.block_tokens()) {
  const auto blocks = static_cast<std::size_t>(cache.block_count());
  references_.assign(blocks, 0);
  hashed_.assign(blocks, 0);
  if (!enabled_) return;
  hash_.assign(blocks, 0);
  parent_.assign(blocks, 0);
  keys_.assign(blocks * static_cast<std::size_t>(key_tokens()), 0);
  buckets_.assign(std::bit_ceil(std::max<std::size_t>(2 * blocks, 2)), -1);
  bucket_next_.assign(blocks, -1);
  lru_prev_.assign(blocks, -1);
  lru_next_.assign(blocks, -1);
  scratch_key_.resize(static_cast<std::size_t>(key_tokens()));
}

PrefixCacheStats BlockManager::stats() const {
  return {.used_blocks = used_blocks_,
          .cached_blocks = lru_count_,
          .free_blocks = cache_.free_block_count(),
          .hit_tokens = hit_tokens_,
          .evicted_blocks = evicted_blocks_};
}

std::int32_t BlockManager::find(std::uint64_t hash, std::uint64_t parent, std::span<const std::int32_t> key) const {
  // The hash picks the candidates; the parent's hash and the tokens themselves must match too.
  for (std::int32_t b = buckets_[hash & (buckets_.size() - 1)]; b >= 0; b = bucket_next_[b]) {
    const auto at = keys_.begin() + static_cast<std::ptrdiff_t>(b) * key_tokens();
    if (hash_[b] == hash && parent_[b] == parent && std::equal(key.begin(), key.end(), at)) return b;
  }
  return -1;
}

void BlockManager::unhash(std::int32_t block) {
  if (!hashed_[block]) return;
  std::int32_t* link = &buckets_[hash_[block] & (buckets_.size() - 1)];
  while (*link != block) link = &bucket_next_[*link];
  *link = bucket_next_[block];
  hashed_[block] = 0;
}

void BlockManager::lru_push(std::int32_t block) {
  lru_prev_[block] = lru_tail_;
  lru_next_[block] = -1;
  (lru_tail_ >= 0 ? lru_next_[lru_tail_] : lru_head_) = block;
  lru_tail_ = block;
  ++lru_count_;
}

void BlockManager::lru_remove(std::int32_t block) {
  (lru_prev_[block] >= 0 ? lru_next_[lru_prev_[block]] : lru_head_) = lru_next_[block];
  (lru_next_[block] >= 0 ? lru_prev_[lru_next_[block]] : lru_tail_) = lru_prev_[block];
  --lru_count_;
}

std::int32_t BlockManager::take() {
  std::int32_t block = cache_.take_block();
  if (block < 0) {
    block = lru_head_;
    lru_remove(block);
    unhash(block);
    ++evicted_blocks_;
  }
  references_[block] = 1;
  ++used_blocks_;
  return block;
}

std::int64_t BlockManager::match(std::span<const std::int32_t> prompt, LatentCache::Table& table, Chain& chain) {
  if (!enabled_ || !table.blocks.empty()) return 0;
  const auto tokens = static_cast<std::int64_t>(prompt.size());
  std::uint64_t parent = model_key_;
  std::int64_t matched = 0;
  // Block i is usable when a token follows it: the last prompt token's logits must be computed, and
  // with MTP the key's next token is that one.
  for (; (matched + 1) * block_tokens_ < tokens; ++matched) {
    const auto key =
        prompt.subspan(static_cast<std::size_t>(matched * block_tokens_), static_cast<std::size_t>(key_tokens()));
    const std::uint64_t hash = chain_hash(parent, key);
    const std::int32_t block = find(hash, parent, key);
    if (block < 0) break;
    if (references_[block]++ == 0) {
      lru_remove(block);
      ++used_blocks_;
    }
    table.blocks.push_back(block);
    parent = hash;
  }
  chain = {matched, parent};
  hit_tokens_ += matched * block_tokens_;
  return matched * block_tokens_;
}

void BlockManager::reserve(LatentCache::Table& table, std::int64_t tokens) {
  const std::int64_t needed =
      (tokens + block_tokens_ - 1) / block_tokens_ - static_cast<std::int64_t>(table.blocks.size());
  if (needed <= 0) return;
  if (needed * block_tokens_ > available_tokens())
    throw CacheFullError(fmt::format(
        "KV cache exhausted: a sequence needs {} tokens, {} more than it holds, but only {} of {} tokens are free "
        "(raise the cache capacity)",
        tokens, tokens - cache_.reserved_tokens(table), available_tokens(), cache_.capacity_tokens()));
  for (std::int64_t i = 0; i < needed; ++i) table.blocks.push_back(take());
}

void BlockManager::truncate(LatentCache::Table& table, std::int64_t tokens) {
  const auto keep = static_cast<std::size_t>((tokens + block_tokens_ - 1) / block_tokens_);
  while (table.blocks.size() > keep) {
    const std::int32_t block = table.blocks.back();
    table.blocks.pop_back();
    if (--references_[block] > 0) continue;
    --used_blocks_;
    // A sequence's later blocks are pushed first, so they are evicted before its earlier ones,
    // which more prompts share.
    if (hashed_[block]) {
      lru_push(block);
    } else {
      cache_.give_block(block);
    }
  }
}

void BlockManager::publish(const LatentCache::Table& table, Chain& chain, std::int64_t complete,
                           std::span<const std::int32_t> first, std::span<const std::int32_t> second) {
  if (!enabled_) return;
  const auto length = static_cast<std::int64_t>(first.size() + second.size());
  const auto token = [&](std::int64_t p) {
    const auto i = static_cast<std::size_t>(p);
    return i < first.size() ? first[i] : second[i - first.size()];
  };
  const std::int64_t full =
      std::min<std::int64_t>(complete / block_tokens_, static_cast<std::int64_t>(table.blocks.size()));
  for (; chain.published < full; ++chain.published) {
    const std::int64_t start = chain.published * block_tokens_;
    if (start + key_tokens() > length) return;  // the next token is not known yet
    for (std::int64_t i = 0; i < key_tokens(); ++i) scratch_key_[static_cast<std::size_t>(i)] = token(start + i);
    const std::uint64_t parent = chain.published == 0 ? model_key_ : chain.hash;
    const std::uint64_t hash = chain_hash(parent, scratch_key_);
    chain.hash = hash;
    // Another sequence computed the same block first: keep that one, ours stays private.
    if (find(hash, parent, scratch_key_) >= 0) continue;
    const std::int32_t block = table.blocks[static_cast<std::size_t>(chain.published)];
    if (hashed_[block]) continue;
    hash_[block] = hash;
    parent_[block] = parent;
    std::copy(scratch_key_.begin(), scratch_key_.end(),
              keys_.begin() + static_cast<std::ptrdiff_t>(block) * key_tokens());
    const std::size_t bucket = hash & (buckets_.size() - 1);
    bucket_next_[block] = buckets_[bucket];
    buckets_[bucket] = block;
    hashed_[block] = 1;
  }
}

}  // namespace dsv3
