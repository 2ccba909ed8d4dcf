// Parity with the Hugging Face reference (float64 transformers) on the tiny-dsv3 fixture.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

std::vector<std::string> sequence_names(const SafetensorsFile& reference) {
  std::vector<std::string> names;
  for (const auto& [name, view] : reference.tensors())
    if (name.starts_with("input_ids_")) names.push_back(name.substr(10));
  return names;
}

TEST(Parity, LogitsAndMtpLogitsMatchTransformers) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const Model& model = tiny_model();
  const std::int64_t vocab = model.config().vocab_size;
  const auto names = sequence_names(*reference);
  ASSERT_EQ(names.size(), 4u);
  for (const auto& name : names) {
    SCOPED_TRACE("sequence " + name);
    const auto ids = test::read_i64(reference->tensors().at("input_ids_" + name));
    const auto tokens = static_cast<std::int64_t>(ids.size());
    const ForwardOutput out = model.forward(ids);
    const auto expected = test::read_f32(reference->tensors().at("logits_" + name));
    ASSERT_EQ(out.logits.size(), expected.size());
    const auto logits = test::compare_rows(out.logits.data(), expected.data(), tokens, vocab);
    std::printf("sequence %s (T=%lld): logits worst row relative error %.3g, arg-max checked on %lld rows\n",
                name.c_str(), static_cast<long long>(tokens), logits.worst_relative_error,
                static_cast<long long>(logits.argmax_checked));
    EXPECT_LE(logits.worst_relative_error, 1e-3);
    EXPECT_EQ(logits.argmax_mismatches, 0) << "of " << logits.argmax_checked << " rows checked";
    EXPECT_GT(logits.argmax_checked, 0);

    if (tokens < 2) {  // no MTP row exists; the reference has no mtp_logits for it either
      EXPECT_FALSE(reference->tensors().contains("mtp_logits_" + name));
      continue;
    }
    const auto mtp = model.mtp_logits(ids, out.hidden);
    const auto expected_mtp = test::read_f32(reference->tensors().at("mtp_logits_" + name));
    ASSERT_EQ(mtp.size(), expected_mtp.size());
    if (tokens < 3) continue;  // rows p >= 1 only
    const auto mtp_rows = test::compare_rows(mtp.data() + vocab, expected_mtp.data() + vocab, tokens - 2, vocab);
    std::printf("sequence %s: mtp_logits (rows >= 1) worst row relative error %.3g\n", name.c_str(),
                mtp_rows.worst_relative_error);
    EXPECT_LE(mtp_rows.worst_relative_error, 1e-3);
    EXPECT_EQ(mtp_rows.argmax_mismatches, 0) << "of " << mtp_rows.argmax_checked << " rows checked";
  }
}

}  // namespace
}  // namespace dsv3
