#include "engine/chunked_forward.h"

#include <algorithm>

#include "core/error.h"
#include "model/latent_cache.h"

namespace dsv3 {

ChunkedForwardOutput forward_in_chunks(const Model& model, std::span<const std::int64_t> ids,
                                       const ChunkedForwardOptions& options) {
  const ModelConfig& c = model.config();
  if (options.chunk <= 0) fail("prefill chunk must be positive, got {}", options.chunk);
  const auto tokens = static_cast<std::int64_t>(ids.size());
  if (tokens == 0) fail("forward_in_chunks: no tokens");
  const std::int64_t hidden_size = c.hidden_size;
  LatentCache cache(c, {.capacity_tokens = tokens, .dtype = options.cache_dtype, .block_tokens = options.block_tokens},
                    model.backend());
  LatentCache::Table table;
  kernels::Workspace workspace(model.backend());
  const auto append = [&](std::vector<float>& values, kernels::Tensor t) {
    const std::size_t at = values.size();
    values.resize(at + static_cast<std::size_t>(t.size()));
    model.backend().read(t, std::span(values).subspan(at));
  };

  ChunkedForwardOutput result;
  std::vector<float> hidden;  // [T, hidden]: the main model's final hidden states, which the MTP rows chain on
  hidden.reserve(static_cast<std::size_t>(tokens * hidden_size));
  for (std::int64_t start = 0; start < tokens; start += options.chunk) {
    const std::int64_t count = std::min(options.chunk, tokens - start);
    cache.reserve(table, start + count);  // pages as the engine takes them, a chunk at a time
    const StepSegment segment{&table, start, ids.subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(count)),
                              true};
    const StepOutput out = model.step(std::span(&segment, 1), cache, workspace);
    append(result.logits, out.logits);
    append(hidden, out.hidden);
  }

  if (model.weights().mtp.empty()) return result;
  const std::int64_t rows = tokens - 1;  // row p predicts token p + 2
  for (std::int64_t start = 0; start < rows; start += options.chunk) {
    const std::int64_t count = std::min(options.chunk, rows - start);
    const MtpSegment segment{
        &table, start,
        std::span<const float>(hidden).subspan(static_cast<std::size_t>(start * hidden_size),
                                               static_cast<std::size_t>(count * hidden_size)),
        ids.subspan(static_cast<std::size_t>(start + 1), static_cast<std::size_t>(count)), true};
    const StepOutput out = model.mtp_step(std::span(&segment, 1), cache, workspace);
    append(result.mtp_logits, out.logits);
  }
  return result;
}

}  // namespace dsv3
