#pragma once
// Full-sequence logits through the engine's cached step, fed a chunk at a time over one latent
// cache: every chunk after the first attends to a cached prefix, as every prompt longer than one
// prefill chunk and every prefix-cache hit does. `dsv3 forward --prefill-chunk` runs it, so the
// fixtures' full-sequence reference checks that path.
#include <cstdint>
#include <span>
#include <vector>

#include "core/dtype.h"
#include "model/model.h"

namespace dsv3 {

struct ChunkedForwardOptions {
  std::int64_t chunk = 512;        // tokens per step (MTP rows per step likewise)
  DType cache_dtype = DType::F32;  // F32 for parity; BF16 as the engine caches by default
  std::int64_t block_tokens = 16;  // cache page size
};

struct ChunkedForwardOutput {
  std::vector<float> logits;      // [T, vocab]
  std::vector<float> mtp_logits;  // [T-1, vocab] when the model has an MTP module and T >= 2, else empty
};

// The main model's steps over ids[0, T) in chunks, then the MTP module's steps over rows
// [0, T-1) in chunks of the same size, each row p chained on the main hidden state h[p] and the
// token p + 1 (the layout of Model::mtp_logits). Both share one cache, as the engine's do.
ChunkedForwardOutput forward_in_chunks(const Model& model, std::span<const std::int64_t> ids,
                                       const ChunkedForwardOptions& options);

}  // namespace dsv3
