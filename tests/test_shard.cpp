// model/shard: how the model is cut over ranks. The cuts must tile every split dimension exactly
// (each head, MLP column, vocabulary row and routed expert on exactly one rank per copy), keep FP8
// tensors on their scale blocks or say which tensor cannot be cut, and the cut weights must be the
// same numbers as the whole ones, rows and columns, with the rest of a column-cut tensor's pages
// given back. (The cut model computing the same logits is checked under mpirun: tests/dist.)
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "core/error.h"
#include "model/shard.h"
#include "model/weights.h"
#include "support.h"

namespace dsv3 {
namespace {

DType bf16_everywhere(const CheckpointTensor&) { return DType::BF16; }

TEST(Shard, EveryHeadColumnRowAndExpertIsOnExactlyOneRank) {
  const ModelConfig c = ModelConfig::load(test::tiny_model_dir());
  for (int ranks = 1; ranks <= 4; ++ranks) {
    std::int64_t heads = 0, dense = 0, shared = 0, vocab = 0;
    std::vector<std::vector<int>> experts_held(c.num_hidden_layers + c.num_nextn_predict_layers,
                                               std::vector<int>(c.n_routed_experts, 0));
    for (int r = 0; r < ranks; ++r) {
      const Shard s = make_shard(c, r, ranks, bf16_everywhere);
      EXPECT_EQ(s.heads.begin, heads) << ranks << " ranks, rank " << r;
      EXPECT_EQ(s.dense.begin, dense);
      EXPECT_EQ(s.shared.begin, shared);
      EXPECT_EQ(s.vocab.begin, vocab);
      EXPECT_EQ(s.vocab_bounds[r], s.vocab.begin);
      EXPECT_EQ(s.vocab_bounds[r + 1], s.vocab.end);
      EXPECT_GE(s.vocab_stride(), s.vocab.size());
      EXPECT_GT(s.heads.size(), 0);
      heads = s.heads.end, dense = s.dense.end, shared = s.shared.end, vocab = s.vocab.end;
      for (std::int64_t layer = 0; layer < static_cast<std::int64_t>(s.experts.size()); ++layer)
        for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
          experts_held[layer][e] += s.holds(layer, e) ? 1 : 0;
    }
    EXPECT_EQ(heads, c.num_attention_heads);
    EXPECT_EQ(dense, c.intermediate_size);
    EXPECT_EQ(shared, c.moe_intermediate_size * c.n_shared_experts);
    EXPECT_EQ(vocab, c.vocab_size);
    for (std::int64_t layer = 0; layer < static_cast<std::int64_t>(experts_held.size()); ++layer)
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
        EXPECT_EQ(experts_held[layer][e], c.is_moe_layer(layer) ? 1 : 0) << "layer " << layer << " expert " << e;
  }
}

TEST(Shard, FiveRanksCannotCutFourHeads) {
  const ModelConfig c = ModelConfig::load(test::tiny_model_dir());
  try {
    make_shard(c, 0, 5, bf16_everywhere);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_b_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4 heads cannot be split over 5 ranks"), std::string::npos) << e.what();
  }
}

TEST(Shard, Fp8TensorsAreCutOnTheirScaleBlocksOrTheErrorNamesTheTensor) {
  ModelConfig c = ModelConfig::load(test::tiny_model_dir());
  const auto fp8 = [](const CheckpointTensor& t) {
    return t.fp8_in_official_checkpoints ? DType::F8_E4M3 : DType::BF16;
  };
  // qk 48 and 128-row blocks: q_b_proj can be cut only every 8 heads, and the model has 4.
  try {
    make_shard(c, 0, 2, fp8);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model.layers.0.self_attn.q_b_proj.weight"), std::string::npos) << what;
    EXPECT_NE(what.find("over 2 ranks"), std::string::npos) << what;
    EXPECT_NE(what.find("every 8 heads"), std::string::npos) << what;
  }
  // DeepSeek-V3's head shape (qk 192, v 128): heads go in pairs; the MLPs in 128-column blocks.
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.num_attention_heads = 8;
  c.intermediate_size = 3 * 128;
  c.moe_intermediate_size = 3 * 128;
  for (int ranks : {2, 3}) {
    std::int64_t dense = 0;
    for (int r = 0; r < ranks; ++r) {
      const Shard s = make_shard(c, r, ranks, fp8);
      EXPECT_EQ(s.heads.begin % 2, 0);
      EXPECT_EQ(s.dense.begin % 128, 0);
      EXPECT_EQ(s.dense.begin, dense);
      dense = s.dense.end;
    }
    EXPECT_EQ(dense, c.intermediate_size);
  }
  EXPECT_THROW(make_shard(c, 0, 4, fp8), Error);  // 3 blocks of dense MLP columns for 4 ranks
}

TEST(Shard, APlacementGivesEachRankItsSlotsAndDealsAReplicatedExpertsRowsToItsCopies) {
  const ModelConfig c = ModelConfig::load(test::tiny_model_dir());
  std::vector<dist::LayerPlacement> plan;
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    std::vector<double> load(static_cast<std::size_t>(c.n_routed_experts), 1.0);
    load[3] = 100;  // expert 3 is hot: it gets the redundant slots
    plan.push_back(dist::place_experts(load, 2, 1));
  }
  const Shard s0 = make_shard(c, 0, 2, bf16_everywhere, plan), s1 = make_shard(c, 1, 2, bf16_everywhere, plan);
  const std::int64_t layer = c.first_k_dense_replace;
  const ExpertCopies& copies = s0.experts[layer];
  const std::size_t n = copies.copies[3].size();
  ASSERT_GE(n, 2u);  // the two redundant slots went to the hot expert
  EXPECT_TRUE(s0.holds(layer, 3));
  EXPECT_TRUE(s1.holds(layer, 3));
  EXPECT_EQ(copies.holder.size(), static_cast<std::size_t>(c.n_routed_experts + 2));
  EXPECT_EQ(copies.copies[0].size(), 1u);
  // Consecutive tokens are dealt round the hot expert's copies, which are on both ranks.
  std::set<int> holders;
  for (std::size_t token = 0; token < n; ++token) {
    EXPECT_EQ(copies.copy_for(3, token), copies.copies[3][token]);
    EXPECT_EQ(copies.copy_for(3, token + n), copies.copies[3][token]);
    holders.insert(copies.holder[copies.copy_for(3, token)]);
  }
  EXPECT_EQ(holders.size(), 2u);
  // A plan for another number of ranks is refused.
  EXPECT_THROW(make_shard(c, 0, 4, bf16_everywhere, plan), Error);
}

TEST(Shard, CutWeightsHoldTheWholeWeightsRowsAndColumns) {
  const std::filesystem::path dir = test::tiny_model_dir();
  const Weights whole = Weights::load(dir);
  const ModelConfig& c = whole.config;
  const int ranks = 3, rank = 2;
  Weights cut = Weights::load(dir);
  const TensorStore& store = cut.store;
  cut_weights(cut, make_shard(c, rank, ranks, [&store](const CheckpointTensor& t) { return store.require(t.name).dtype; }));
  const Shard& s = cut.shard;
  const std::size_t element = 2;  // BF16
  const auto row = [&](const Matrix& m, std::int64_t r) { return m.data + r * m.cols * element; };
  // Row cuts are views of the mapped file (no copy), the same values as the whole matrix's rows.
  const auto same_rows = [&](const Matrix& cut_m, const Matrix& m, std::int64_t first) {
    EXPECT_EQ(cut_m.owner, nullptr) << cut_m.name;
    EXPECT_EQ(cut_m.cols, m.cols);
    return std::memcmp(cut_m.data, row(m, first), cut_m.bytes()) == 0;
  };
  // q_b_proj: rows of this rank's heads.
  const Matrix& q = whole.layers[0].attention.q_b_proj;
  const Matrix& q_cut = cut.layers[0].attention.q_b_proj;
  ASSERT_EQ(q_cut.rows, s.heads.size() * c.qk_head_dim());
  EXPECT_TRUE(same_rows(q_cut, q, s.heads.begin * c.qk_head_dim()));
  // o_proj: this rank's heads' columns, copied out.
  const Matrix& o = whole.layers[1].attention.o_proj;
  const Matrix& o_cut = cut.layers[1].attention.o_proj;
  ASSERT_EQ(o_cut.cols, s.heads.size() * c.v_head_dim);
  ASSERT_EQ(o_cut.rows, o.rows);
  for (std::int64_t r = 0; r < o.rows; ++r)
    ASSERT_EQ(std::memcmp(row(o_cut, r), row(o, r) + s.heads.begin * c.v_head_dim * element, o_cut.cols * element), 0)
        << "row " << r;
  // The dense MLP's down_proj columns and gate rows.
  const MlpWeights& mlp = *whole.layers[0].mlp;
  const MlpWeights& mlp_cut = *cut.layers[0].mlp;
  EXPECT_TRUE(same_rows(mlp_cut.gate_proj, mlp.gate_proj, s.dense.begin));
  EXPECT_EQ(std::memcmp(row(mlp_cut.down_proj, 5), row(mlp.down_proj, 5) + s.dense.begin * element,
                        mlp_cut.down_proj.cols * element),
            0);
  // Routed experts: this rank's copies hold the experts' weights, the others are empty.
  const MoeWeights& moe = *cut.layers[1].moe;
  ASSERT_EQ(moe.experts.size(), moe.copies.expert.size());
  for (std::size_t p = 0; p < moe.experts.size(); ++p) {
    const bool mine = moe.copies.holder[p] == rank;
    EXPECT_EQ(moe.experts[p].gate_proj.empty(), !mine) << "copy " << p;
    if (mine) EXPECT_TRUE(same_rows(moe.experts[p].up_proj, whole.layers[1].moe->experts[moe.copies.expert[p]].up_proj, 0));
  }
  // The vocabulary slice of the embedding and head.
  EXPECT_EQ(cut.embed_tokens.rows, s.vocab.size());
  EXPECT_TRUE(same_rows(cut.lm_head, whole.lm_head, s.vocab.begin));
  // Replicated weights are whole.
  EXPECT_EQ(cut.layers[1].attention.kv_a_proj_with_mqa.rows, whole.layers[1].attention.kv_a_proj_with_mqa.rows);
  EXPECT_TRUE(same_rows(cut.layers[1].moe->router, whole.layers[1].moe->router, 0));
}

TEST(Shard, HeldBytesOverTheRanksAreTheModelPlusTheReplicatedPartPerExtraRank) {
  const std::filesystem::path dir = test::tiny_model_dir();
  const TensorStore store = TensorStore::open(dir);
  const ModelConfig c = ModelConfig::load(dir);
  const auto dtype_of = [&store](const CheckpointTensor& t) { return store.require(t.name).dtype; };
  std::int64_t total = 0, replicated = 0;
  const Shard one = make_shard(c, 0, 1, dtype_of);
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    if (!store.find(t.name)) continue;
    total += held_bytes(t, dtype_of(t), one, c);
    if (cut_of(t, one, c).kind == TensorCut::Kind::whole && t.mlp != CheckpointTensor::Mlp::routed_expert &&
        t.role != CheckpointTensor::Role::embed_tokens && t.role != CheckpointTensor::Role::lm_head &&
        t.role != CheckpointTensor::Role::mtp_embed_tokens && t.role != CheckpointTensor::Role::shared_head_head)
      replicated += held_bytes(t, dtype_of(t), one, c);
  }
  EXPECT_EQ(total, static_cast<std::int64_t>(store.total_bytes()));
  for (int ranks : {2, 3, 4}) {
    std::int64_t sum = 0;
    for (int r = 0; r < ranks; ++r) {
      const Shard s = make_shard(c, r, ranks, dtype_of);
      for (const CheckpointTensor& t : checkpoint_layout(c))
        if (store.find(t.name)) sum += held_bytes(t, dtype_of(t), s, c);
    }
    EXPECT_EQ(sum, total + (ranks - 1) * replicated) << ranks << " ranks";
  }
}

}  // namespace
}  // namespace dsv3
