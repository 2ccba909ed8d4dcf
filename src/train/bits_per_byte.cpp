// Held-out bits per byte: how many bits the model needs per byte of text it never trained on, and
// the same for a unigram model counted on the training text, over the same tokens. Per byte, not
// per token, so models with different vocabularies compare.
#include <cmath>

#include "core/error.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

// -log2 softmax(logits)[target], in FP64.
double bits_of(const float* logits, std::int64_t vocab, std::int64_t target) {
  double largest = logits[0];
  for (std::int64_t i = 1; i < vocab; ++i) largest = std::max(largest, static_cast<double>(logits[i]));
  double sum = 0.0;
  for (std::int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - largest);
  return (std::log(sum) - (static_cast<double>(logits[target]) - largest)) / std::log(2.0);
}

}  // namespace

nlohmann::json BitsPerByte::to_json() const {
  return {{"held_out_documents", documents},
          {"held_out_bytes", bytes},
          {"held_out_tokens", tokens},
          {"baseline_tokens", baseline_tokens},
          {"context", context},
          {"model_bits", model_bits},
          {"unigram_bits", unigram_bits},
          {"model_bits_per_byte", model_bits_per_byte()},
          {"unigram_bits_per_byte", unigram_bits_per_byte()},
          {"reduction", reduction()}};
}

BitsPerByte bits_per_byte(const Model& model, const Tokenizer& tokenizer, const std::vector<Document>& held_out,
                          const std::vector<Document>& baseline, std::int64_t context) {
  if (context < 2) fail("bits per byte: the context must be at least 2 tokens, got {}", context);
  if (context > model.config().max_position_embeddings)
    fail("bits per byte: a context of {} tokens exceeds the model's {} positions", context,
         model.config().max_position_embeddings);
  if (held_out.empty()) fail("bits per byte: no held-out documents");
  if (baseline.empty()) fail("bits per byte: no baseline documents");
  const auto vocab = static_cast<std::int64_t>(tokenizer.vocab_size());
  if (vocab > model.config().vocab_size)
    fail("bits per byte: the tokenizer has {} tokens, the model only {}", vocab, model.config().vocab_size);

  // The unigram baseline: token frequencies of the baseline (training) text, add-one smoothed over
  // the tokenizer's vocabulary so that no held-out token has probability 0.
  BitsPerByte result;
  result.context = context;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(vocab), 0);
  for (const Document& d : baseline)
    for (std::int32_t id : tokenizer.encode(d.text)) {
      ++counts[static_cast<std::size_t>(id)];
      ++result.baseline_tokens;
    }
  const double unigram_total = static_cast<double>(result.baseline_tokens + vocab);

  // Each document is read as training packs it, after an end-of-sentence token, so its first token
  // is predicted as a document's first token. Windows of `context` tokens advance by half of it;
  // each scores only the targets that no earlier window scored, so every target but the first few
  // is predicted from at least context / 2 tokens before it (the usual strided evaluation).
  const std::int64_t stride = context / 2;
  const std::int64_t model_vocab = model.config().vocab_size;
  for (const Document& d : held_out) {
    std::vector<std::int64_t> ids{tokenizer.eos_id()};
    for (std::int32_t id : tokenizer.encode(d.text)) ids.push_back(id);
    const auto n = static_cast<std::int64_t>(ids.size());
    result.documents += 1;
    result.bytes += static_cast<std::int64_t>(d.text.size());
    result.tokens += n - 1;
    for (std::int64_t target = 1; target < n; ++target)
      result.unigram_bits -= std::log2((static_cast<double>(counts[static_cast<std::size_t>(ids[target])]) + 1.0) /
                                       unigram_total);
    std::int64_t scored_to = 1;  // targets [1, scored_to) have been scored
    for (std::int64_t begin = 0; scored_to < n; begin += stride) {
      const std::int64_t end = std::min(begin + context, n);
      const ForwardOutput out = model.forward(std::span<const std::int64_t>(ids).subspan(begin, end - begin));
      for (std::int64_t target = scored_to; target < end; ++target)
        result.model_bits += bits_of(out.logits.data() + (target - 1 - begin) * model_vocab, model_vocab, ids[target]);
      scored_to = end;
    }
  }
  if (result.bytes == 0) fail("bits per byte: the held-out documents are empty");
  return result;
}

}  // namespace dsv3::train
