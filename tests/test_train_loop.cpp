// The training loop end to end on a tiny DeepSeek-V3 shape and State of the Union speeches:
// checkpoints (HF layout, atomic, bit-identical resume), learning, balancing and the FP8 recipe.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "model/model.h"
#include "core/error.h"
#include "train_support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

double cross_entropy(const float* logits, std::int64_t vocab, std::int64_t target) {
  double max_logit = logits[0], sum = 0.0;
  for (std::int64_t i = 1; i < vocab; ++i) max_logit = std::max<double>(max_logit, logits[i]);
  for (std::int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - max_logit);
  return max_logit + std::log(sum) - logits[target];
}

// loss_main and loss_mtp of `ids` by the inference model (Model::forward / mtp_logits).
std::pair<double, double> inference_losses(const Model& model, std::span<const std::int64_t> ids) {
  const std::int64_t vocab = model.config().vocab_size, tokens = static_cast<std::int64_t>(ids.size());
  const ForwardOutput out = model.forward(ids);
  double main = 0.0, mtp = 0.0;
  for (std::int64_t p = 0; p + 1 < tokens; ++p) main += cross_entropy(out.logits.data() + p * vocab, vocab, ids[p + 1]);
  const std::vector<float> mtp_logits = model.mtp_logits(ids, out.hidden);
  for (std::int64_t p = 1; p + 2 < tokens; ++p) mtp += cross_entropy(mtp_logits.data() + p * vocab, vocab, ids[p + 2]);
  return {main / static_cast<double>(tokens - 1), mtp / static_cast<double>(tokens - 3)};
}

TEST(Checkpoint, ExportLoadsInWeightsAndTheInferenceModelGivesTheTrainingLoss) {
  auto setup = test::training_setup("export", 6);
  setup.config.steps = 3;
  train::Trainer trainer(setup.config);
  trainer.run();
  const auto ids = trainer.corpus().validation[0];
  const train::LossReport expected = train::accumulate_gradients(trainer.model(), ids, {.mtp_weight = 0.3});
  trainer.model().zero_gradients();

  for (const char* dtype : {"f32", "bf16"}) {
    SCOPED_TRACE(dtype);
    const fs::path dir = setup.dir / dtype;
    train::export_model(trainer.model(), dir, std::string(dtype) == "f32" ? DType::F32 : DType::BF16);
    const Model model(Weights::load(dir));
    const auto [main, mtp] = inference_losses(model, ids);
    std::printf("%s export: loss_main %.6f (training %.6f), loss_mtp %.6f (training %.6f)\n", dtype, main,
                expected.main, mtp, expected.mtp);
    const double tolerance = std::string(dtype) == "f32" ? 1e-5 : 1e-2;  // BF16 weights are rounded
    EXPECT_NEAR(main, expected.main, tolerance * expected.main);
    EXPECT_NEAR(mtp, expected.mtp, tolerance * expected.mtp);
    const TensorStore store = TensorStore::open(dir);
    const std::string mtp_prefix = "model.layers.2.";  // num_hidden_layers = 2
    for (const std::string& name : {mtp_prefix + "embed_tokens.weight", mtp_prefix + "shared_head.head.weight"})
      EXPECT_NE(store.find(name), nullptr) << name;
    EXPECT_EQ(store.require("model.layers.1.mlp.gate.e_score_correction_bias").dtype, DType::F32);
    EXPECT_EQ(store.require(mtp_prefix + "mlp.gate.e_score_correction_bias").dtype, DType::F32);
    EXPECT_EQ(store.require("model.layers.0.self_attn.o_proj.weight").dtype,
              std::string(dtype) == "f32" ? DType::F32 : DType::BF16);
  }
  // The router bias the training moved is what the exported model routes with.
  const Weights weights = Weights::load(setup.dir / "f32");
  EXPECT_EQ(weights.layers[1].moe->e_score_correction_bias, trainer.model().layers[1].moe->e_score_correction_bias);
}

TEST(Checkpoint, WritesAreAtomic) {
  auto setup = test::training_setup("atomic", 6);
  setup.config.steps = 1;
  setup.config.checkpoint_dir = (setup.dir / "ckpt").string();
  train::Trainer trainer(setup.config);
  trainer.run();
  const fs::path good = setup.dir / "ckpt" / "step-1";
  ASSERT_TRUE(fs::exists(good / "trainer_state.json"));
  EXPECT_TRUE(fs::exists(good / "tokenizer.json"));
  const std::string model_bytes = read_bytes(good / "model.safetensors");
  const std::string state_bytes = read_bytes(good / "trainer_state.json");

  // A write that fails half-way (here: the tokenizer copy, after the model is written) leaves the
  // existing checkpoint of that name untouched and no partial directory behind.
  const fs::path bad_tokenizer = setup.dir / "bad-tokenizer";
  fs::create_directories(bad_tokenizer / "tokenizer.json");  // a directory: copying it fails
  trainer.step();
  EXPECT_THROW(train::write_checkpoint(good, trainer.model(), trainer.optimizer(), {{"step", 2}}, DType::BF16,
                                       bad_tokenizer),
               std::exception);
  EXPECT_EQ(read_bytes(good / "model.safetensors"), model_bytes);
  EXPECT_EQ(read_bytes(good / "trainer_state.json"), state_bytes);
  for (const auto& entry : fs::directory_iterator(setup.dir / "ckpt"))
    EXPECT_FALSE(entry.path().filename().string().starts_with(".tmp")) << entry.path();

  // A crash mid-write leaves only a hidden temporary directory, which resuming ignores.
  fs::create_directories(setup.dir / "ckpt" / ".tmp-step-9-12345");
  std::ofstream(setup.dir / "ckpt" / ".tmp-step-9-12345" / "model.safetensors") << "partial";
  fs::create_directories(setup.dir / "ckpt" / "step-7");  // no trainer_state.json: incomplete
  EXPECT_EQ(train::latest_checkpoint(setup.dir / "ckpt"), good);

  // Overwriting a checkpoint of the same name replaces it whole.
  train::write_checkpoint(good, trainer.model(), trainer.optimizer(), {{"step", 2}, {"data", nlohmann::json::object()}},
                          DType::BF16, setup.config.tokenizer);
  EXPECT_NE(read_bytes(good / "model.safetensors"), model_bytes);
  EXPECT_NO_THROW(Weights::load(good));
}

// What interrupted saves leave (directories named after writers that no longer run; pids above
// the kernel's pid_max, so never alive) is cleaned by the next save and at the start of a run.
TEST(Checkpoint, InterruptedWritesLeaveNothingBehind) {
  auto setup = test::training_setup("interrupted", 6);
  setup.config.steps = 1;
  const fs::path root = setup.dir / "ckpt";
  setup.config.checkpoint_dir = root.string();
  train::Trainer trainer(setup.config);
  trainer.run();
  const fs::path step1 = root / "step-1";
  ASSERT_TRUE(fs::exists(step1 / "trainer_state.json"));
  auto plant = [&](const std::string& name, bool complete) {
    if (complete) {
      fs::copy(step1, root / name, fs::copy_options::recursive);
    } else {
      fs::create_directories(root / name);
      std::ofstream(root / name / "model.safetensors") << "partial";
    }
  };
  plant(".tmp-step-2-999999999", false);  // killed while writing step-2
  plant(".old-step-1-999999998", true);   // killed after publishing step-1, before removing the old one
  plant(".old-step-5-999999997", true);   // killed between moving step-5 aside and publishing its successor
  plant(".tmp-step-5-999999997", true);
  plant(".tmp-step-4-1", false);          // a writer that still runs (pid 1 always exists): left alone

  trainer.save_checkpoint(root / "step-3");
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(root)) names.insert(entry.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"metrics.jsonl", "step-1", "step-3", "step-5", ".tmp-step-4-1"}));
  EXPECT_TRUE(fs::exists(root / "step-5" / "trainer_state.json"));
  EXPECT_NO_THROW(Weights::load(root / "step-5"));

  // At the start of a run, before "latest" is resolved: the moved-aside step-9 is back and resumed.
  fs::remove_all(root / ".tmp-step-4-1");
  plant(".old-step-9-999999999", true);
  plant(".tmp-step-9-999999999", false);
  setup.config.resume = "latest";
  setup.config.steps = 2;
  train::Trainer resumed(setup.config);
  ASSERT_TRUE(resumed.resumed_from());
  EXPECT_EQ(*resumed.resumed_from(), root / "step-9");
  names.clear();
  for (const auto& entry : fs::directory_iterator(root)) names.insert(entry.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"metrics.jsonl", "step-1", "step-3", "step-5", "step-9"}));
}

// Every bit of the training state: master weights, router biases, AdamW moments.
std::map<std::string, std::string> state_bits(train::Trainer& trainer) {
  std::map<std::string, std::string> bits;
  for (const auto& [name, p] : trainer.model().parameters)
    bits[name] = std::string(reinterpret_cast<const char*>(p.value.data()), p.value.size() * sizeof(float));
  for (std::size_t l = 0; l < trainer.model().layers.size(); ++l)
    if (const auto& moe = trainer.model().layers[l].moe)
      bits["bias" + std::to_string(l)] = std::string(reinterpret_cast<const char*>(moe->e_score_correction_bias.data()),
                                                     moe->e_score_correction_bias.size() * sizeof(float));
  const auto& mtp_moe = trainer.model().mtp[0].layer.moe;
  bits["bias_mtp"] = std::string(reinterpret_cast<const char*>(mtp_moe->e_score_correction_bias.data()),
                                 mtp_moe->e_score_correction_bias.size() * sizeof(float));
  for (const TensorToWrite& t : trainer.optimizer().state_tensors())
    bits[t.name] = std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  return bits;
}

TEST(Checkpoint, ResumeContinuesBitIdentically) {
  auto setup = test::training_setup("resume", 8);
  train::TrainConfig c = setup.config;
  c.steps = 8;
  c.batch_size = 2;
  c.accumulation = 2;
  c.gamma.gamma = 0.01;
  c.lr = {.peak = 3e-3, .floor = 3e-4, .warmup_steps = 2, .decay_start = 3, .decay_steps = 4};
  c.validation_interval = 3;

  train::TrainConfig straight = c;
  straight.checkpoint_dir = (setup.dir / "straight").string();
  train::Trainer a(straight);
  std::vector<double> losses_a;
  a.run([&](const train::StepReport& r) { losses_a.push_back(r.loss); });

  train::TrainConfig first_half = c;
  first_half.steps = 4;
  first_half.checkpoint_dir = (setup.dir / "halves").string();
  train::Trainer b(first_half);
  b.run();
  // A new process would start here: nothing but the checkpoint carries over.
  train::TrainConfig second_half = c;
  second_half.checkpoint_dir = first_half.checkpoint_dir;
  second_half.resume = "latest";
  train::Trainer resumed(second_half);
  ASSERT_TRUE(resumed.resumed_from());
  EXPECT_EQ(resumed.steps_done(), 4);
  std::vector<double> losses_c;
  resumed.run([&](const train::StepReport& r) { losses_c.push_back(r.loss); });

  ASSERT_EQ(losses_c.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(losses_c[i], losses_a[i + 4]) << "step " << i + 5;
  const auto bits_a = state_bits(a), bits_c = state_bits(resumed);
  ASSERT_EQ(bits_a.size(), bits_c.size());
  std::size_t differing = 0;
  for (const auto& [name, bits] : bits_a)
    if (bits_c.at(name) != bits) {
      ++differing;
      ADD_FAILURE() << name << " differs after resuming";
    }
  std::printf("%zu tensors compared bit for bit after 4 + 4 steps vs 8: %zu differ\n", bits_a.size(), differing);
  // Both runs wrote the same final checkpoint and the same metrics after step 4.
  EXPECT_EQ(read_bytes(setup.dir / "straight" / "step-8" / "trainer_state.safetensors"),
            read_bytes(setup.dir / "halves" / "step-8" / "trainer_state.safetensors"));
}

}  // namespace
}  // namespace dsv3
