#pragma once
// The latent KV cache of MLA: per token and layer only the normalised latent c_kv
// (kv_lora_rank) and the rotated k_rope (qk_rope_head_dim), in F32 or BF16. Paged: a pool of
// fixed-size blocks, each holding block_tokens rows for every layer (the MTP layers included),
// handed to sequences through their block tables, so sequences of any length share one pool.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "io/model_config.h"
#include "kernels/ops.h"

namespace dsv3 {

// Thrown when the pool has too few free blocks; the message says how many tokens were asked for
// and how many remain.
class CacheFullError : public Error {
 public:
  using Error::Error;
};

class LatentCache {
 public:
  struct Options {
    std::int64_t capacity_tokens = 4096;
    DType dtype = DType::F32;  // F32 or BF16
    std::int64_t block_tokens = 16;
  };
  // One sequence's pages: blocks in order; `reserved` rows are backed by them.
  struct Table {
    std::vector<std::int32_t> blocks;
  };

  // The pool lives in the backend's memory.
  LatentCache(const ModelConfig& config, Options options,
              const kernels::Backend& backend = kernels::default_backend());
  ~LatentCache();
  LatentCache(const LatentCache&) = delete;
  LatentCache& operator=(const LatentCache&) = delete;

  static std::int64_t bytes_per_token(const ModelConfig& config, DType dtype);
  // Tokens that fit in `bytes` of cache memory.
  static std::int64_t tokens_for_bytes(const ModelConfig& config, DType dtype, std::int64_t bytes);

  std::int64_t width() const { return width_; }
  std::int64_t layers() const { return layers_; }
  std::int64_t block_tokens() const { return options_.block_tokens; }
  DType dtype() const { return options_.dtype; }
  std::int64_t capacity_tokens() const { return block_count_ * options_.block_tokens; }
  std::int64_t free_tokens() const { return static_cast<std::int64_t>(free_blocks_.size()) * options_.block_tokens; }
  std::int64_t reserved_tokens(const Table& table) const {
    return static_cast<std::int64_t>(table.blocks.size()) * options_.block_tokens;
  }

  // Grows `table` to back at least `tokens` rows, or throws CacheFullError leaving it unchanged.
  void reserve(Table& table, std::int64_t tokens);
  // Returns the blocks beyond the first `tokens` rows to the pool (speculative rollback).
  void truncate(Table& table, std::int64_t tokens);
  void release(Table& table) { truncate(table, 0); }

  // Single blocks, for a block manager that shares them between tables (engine/block_manager.h):
  // a free block (or -1 when none is), and a block given back to the pool.
  std::int32_t take_block();
  void give_block(std::int32_t block);
  std::int64_t block_count() const { return block_count_; }
  std::int64_t free_block_count() const { return static_cast<std::int64_t>(free_blocks_.size()); }

  // One layer of a sequence's rows, for the cache_store / cache_load / attention_latent ops.
  kernels::LatentPages pages(std::int64_t layer, const Table& table) const;

  const Options& options() const { return options_; }
  // Unique among this process's caches: across ranks, rank 0 names a cache by it.
  std::uint64_t id() const { return id_; }
  // Runs `hook` when the cache is destroyed (a model across ranks tells the others to drop theirs).
  void on_destroy(std::function<void()> hook) { on_destroy_ = std::move(hook); }

 private:
  const kernels::Backend& backend_;
  Options options_;
  std::int64_t width_;
  std::int64_t layers_;
  std::int64_t block_count_;
  std::byte* storage_ = nullptr;
  std::vector<std::int32_t> free_blocks_;
  std::uint64_t id_;
  std::function<void()> on_destroy_;
};

}  // namespace dsv3
