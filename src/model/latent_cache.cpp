#include "model/latent_cache.h"

#include <algorithm>
#include <atomic>

namespace dsv3 {

namespace {
std::uint64_t next_id() {
  static std::atomic<std::uint64_t> last{0};
  return ++last;
}
}  // namespace

LatentCache::LatentCache(const ModelConfig& config, Options options, const kernels::Backend& backend)
    : backend_(backend),
      options_(options),
      width_(config.kv_lora_rank + config.qk_rope_head_dim),
      layers_(config.num_hidden_layers + config.num_nextn_predict_layers),
      id_(next_id()) {
  if (options_.dtype != DType::F32 && options_.dtype != DType::BF16)
    fail("KV cache dtype {} is not supported (F32 or BF16)", dtype_name(options_.dtype));
  if (options_.block_tokens <= 0) fail("KV cache block size must be positive");
  if (options_.capacity_tokens <= 0) fail("KV cache capacity must be at least one token");
  block_count_ = (options_.capacity_tokens + options_.block_tokens - 1) / options_.block_tokens;
  const std::size_t bytes =
      static_cast<std::size_t>(block_count_ * layers_ * options_.block_tokens * width_) * dtype_size(options_.dtype);
  storage_ = static_cast<std::byte*>(backend_.allocate(bytes));
  free_blocks_.resize(static_cast<std::size_t>(block_count_));
  // Handed out from the back: block 0 first.
  for (std::int64_t i = 0; i < block_count_; ++i) free_blocks_[i] = static_cast<std::int32_t>(block_count_ - 1 - i);
}

LatentCache::~LatentCache() {
  if (on_destroy_) on_destroy_();
  backend_.release(storage_);
}

std::int64_t LatentCache::bytes_per_token(const ModelConfig& config, DType dtype) {
  return (config.num_hidden_layers + config.num_nextn_predict_layers) *
         (config.kv_lora_rank + config.qk_rope_head_dim) * static_cast<std::int64_t>(dtype_size(dtype));
}

std::int64_t LatentCache::tokens_for_bytes(const ModelConfig& config, DType dtype, std::int64_t bytes) {
  return bytes / bytes_per_token(config, dtype);
}

void LatentCache::reserve(Table& table, std::int64_t tokens) {
  const std::int64_t needed = (tokens + options_.block_tokens - 1) / options_.block_tokens -
                              static_cast<std::int64_t>(table.blocks.size());
  if (needed <= 0) return;
  if (needed > static_cast<std::int64_t>(free_blocks_.size()))
    throw CacheFullError(fmt::format(
        "KV cache exhausted: a sequence needs {} tokens, {} more than it holds, but only {} of {} tokens are free "
        "(raise the cache capacity)",
        tokens, tokens - reserved_tokens(table), free_tokens(), capacity_tokens()));
  for (std::int64_t i = 0; i < needed; ++i) {
    table.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
}

void LatentCache::truncate(Table& table, std::int64_t tokens) {
  const auto keep = static_cast<std::size_t>((tokens + options_.block_tokens - 1) / options_.block_tokens);
  while (table.blocks.size() > keep) {
    free_blocks_.push_back(table.blocks.back());
    table.blocks.pop_back();
  }
}

std::int32_t LatentCache::take_block() {
  if (free_blocks_.empty()) return -1;
  const std::int32_t block = free_blocks_.back();
  free_blocks_.pop_back();
  return block;
}

void LatentCache::give_block(std::int32_t block) {
  if (block < 0 || block >= block_count_) fail("KV cache block {} is outside the pool of {}", block, block_count_);
  free_blocks_.push_back(block);
}

kernels::LatentPages LatentCache::pages(std::int64_t layer, const Table& table) const {
  kernels::LatentPages pages;
  pages.storage = storage_;
  pages.dtype = options_.dtype;
  pages.width = width_;
  pages.block_tokens = options_.block_tokens;
  pages.block_stride_rows = layers_ * options_.block_tokens;
  pages.layer_offset_rows = layer * options_.block_tokens;
  pages.blocks = table.blocks;
  return pages;
}

}  // namespace dsv3
