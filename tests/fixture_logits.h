#pragma once
// A model's logits against the Hugging Face reference of the tiny-dsv3 fixture: every row of its
// four sequences, relative L2 error per row, and how often the arg-max differs where it is clear.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "model/model.h"
#include "support.h"

namespace dsv3::test {

struct LogitsError {
  double median = 0, p99 = 0, worst = 0;
  std::int64_t argmax_mismatches = 0, argmax_checked = 0;
};

// Relative L2 error per row over all four fixture sequences (every row: T = 1, 9, 64, 300).
inline LogitsError fixture_logits_error(const Model& model) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<double> rows;
  LogitsError error;
  for (const auto& [name, view] : reference->tensors()) {
    if (!name.starts_with("input_ids_")) continue;
    const auto ids = test::read_i64(view);
    const auto tokens = static_cast<std::int64_t>(ids.size());
    const ForwardOutput out = model.forward(ids);
    const auto expected = test::read_f32(reference->tensors().at("logits_" + name.substr(10)));
    EXPECT_EQ(out.logits.size(), expected.size());
    if (out.logits.size() != expected.size()) continue;
    for (std::int64_t r = 0; r < tokens; ++r)
      rows.push_back(test::relative_l2(out.logits.data() + r * vocab, expected.data() + r * vocab, vocab));
    const auto compared = test::compare_rows(out.logits.data(), expected.data(), tokens, vocab);
    error.argmax_mismatches += compared.argmax_mismatches;
    error.argmax_checked += compared.argmax_checked;
  }
  std::sort(rows.begin(), rows.end());
  if (!rows.empty())
    error.median = rows[rows.size() / 2], error.p99 = rows[rows.size() * 99 / 100], error.worst = rows.back();
  std::printf("logits relative L2 error over %zu rows: median %.3g, 99th percentile %.3g, worst %.3g; arg-max differs "
              "on %lld of %lld rows\n",
              rows.size(), error.median, error.p99, error.worst, static_cast<long long>(error.argmax_mismatches),
              static_cast<long long>(error.argmax_checked));
  return error;
}

}  // namespace dsv3::test
