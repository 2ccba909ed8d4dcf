// Training that has to work, measured on State of the Union speeches with a tiny model: the
// validation loss falls well below the unigram entropy, the bias update evens out expert load,
// and the FP8 recipe trains as well as FP32. Plus the FP8 gradients themselves, and the plot.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include "core/error.h"
#include "train_support.h"

namespace dsv3 {
namespace {

struct RunResult {
  std::vector<double> loss;                 // per step
  std::vector<double> max_over_mean;        // per step, averaged over the MoE layers
  train::ValidationReport validation;       // at the end
  double tokens_per_second = 0.0;
};

RunResult train_run(const train::TrainConfig& config) {
  train::Trainer trainer(config);
  RunResult run;
  double seconds = 0.0;
  std::int64_t tokens = 0;
  trainer.run([&](const train::StepReport& r) {
    run.loss.push_back(r.loss_main);
    double sum = 0.0;
    for (const auto& b : r.balance) sum += b.max_over_mean();
    run.max_over_mean.push_back(sum / static_cast<double>(r.balance.size()));
    seconds += r.seconds;
    tokens += r.tokens;
  });
  run.validation = trainer.validate();
  run.tokens_per_second = static_cast<double>(tokens) / seconds;
  return run;
}

TEST(Train, SotuValidationLossFallsWellBelowTheUnigramEntropy) {
  auto setup = test::training_setup("sotu", 24);
  train::TrainConfig c = setup.config;
  c.steps = 300;
  c.lr = {.peak = 3e-3, .floor = 3e-4, .warmup_steps = 20, .decay_start = 100, .decay_steps = 200};
  c.validation_interval = 100;
  c.checkpoint_dir = (setup.dir / "ckpt").string();
  c.checkpoint_interval = 0;
  train::Trainer trainer(c);
  const train::PackedSequences& validation = trainer.corpus().validation;
  const std::int64_t scored = std::min(c.validation_sequences, validation.count());
  // The unigram entropy of the scored validation targets: what a model knowing only token
  // frequencies (and those of this very text) would achieve.
  std::map<std::int64_t, double> counts;
  double total = 0.0;
  for (std::int64_t s = 0; s < scored; ++s)
    for (std::size_t i = 1; i < validation[s].size(); ++i, total += 1.0) counts[validation[s][i]] += 1.0;
  double entropy = 0.0;
  for (const auto& [id, n] : counts) entropy -= n / total * std::log(n / total);

  std::vector<double> val;
  double first_loss = 0.0, seconds = 0.0;
  std::int64_t tokens = 0;
  trainer.run([&](const train::StepReport& r) {
    if (r.step == 1) first_loss = r.loss_main;
    if (r.validation) val.push_back(r.validation->loss_main);
    seconds += r.seconds;
    tokens += r.tokens;
  });
  std::printf("vocab %lld, %lld training sequences; first loss %.3f (ln V = %.3f); validation %.3f / %.3f / %.3f at "
              "steps 100/200/300; unigram entropy of the validation targets %.3f nats; %.0f tokens/s\n",
              static_cast<long long>(trainer.model().config.vocab_size),
              static_cast<long long>(trainer.corpus().train.count()), first_loss,
              std::log(static_cast<double>(trainer.model().config.vocab_size)), val.at(0), val.at(1), val.at(2),
              entropy, static_cast<double>(tokens) / seconds);
  EXPECT_NEAR(first_loss, std::log(static_cast<double>(trainer.model().config.vocab_size)), 0.2);
  EXPECT_LT(val.at(2), entropy - 0.7);
  EXPECT_LT(val.at(2), val.at(0));
  // The metrics log has a line per step, with validation where it ran.
  std::ifstream log(setup.dir / "ckpt" / "metrics.jsonl");
  std::string line;
  int lines = 0, validated = 0;
  while (std::getline(log, line)) {
    const auto record = nlohmann::json::parse(line);
    ++lines;
    validated += record.contains("val_loss_main");
    EXPECT_EQ(record["load"].size(), 2u);
  }
  EXPECT_EQ(lines, 300);
  EXPECT_EQ(validated, 3);
  EXPECT_TRUE(std::filesystem::exists(setup.dir / "ckpt" / "step-300" / "model.safetensors"));
}

TEST(Balance, BiasUpdateLowersLoadImbalance) {
  auto setup = test::training_setup("balance", 12);
  train::TrainConfig c = setup.config;
  c.steps = 150;
  c.balance_alpha = 0.0;  // the bias update alone
  c.gamma.gamma = 0.0;
  const RunResult off = train_run(c);
  c.gamma.gamma = 0.01;
  const RunResult on = train_run(c);
  const double off_tail = test::mean_tail(off.max_over_mean, 50), on_tail = test::mean_tail(on.max_over_mean, 50);
  std::printf("max/mean expert load over the last 50 steps: gamma 0: %.3f, gamma 0.01: %.3f; loss %.3f vs %.3f\n",
              off_tail, on_tail, test::mean_tail(off.loss, 20), test::mean_tail(on.loss, 20));
  EXPECT_LT(on_tail, 0.8 * off_tail);
}

TEST(Fp8Train, GradientsAreCloseToFp32) {
  auto model = train::TrainableModel::initialise(ModelConfig::from_json(test::tiny_config_json(640)), 11);
  std::vector<std::int64_t> ids(96);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 37 + i * i * 11) % 640);
  const auto fp32 = train::accumulate_gradients(model, ids, {.mtp_weight = 0.3, .balance_alpha = 1e-4});
  std::map<std::string, std::vector<float>> reference;
  for (const auto& [name, p] : model.parameters) reference[name] = p.grad;
  model.zero_gradients();
  model.set_fp8_gemms(true);
  const auto fp8 = train::accumulate_gradients(model, ids, {.mtp_weight = 0.3, .balance_alpha = 1e-4});
  double worst = 0.0, diff = 0.0, norm = 0.0;
  std::string worst_name;
  for (const auto& [name, p] : model.parameters) {
    const auto& r = reference[name];
    double d = 0.0, n = 0.0;
    for (std::size_t i = 0; i < r.size(); ++i) {
      d += (static_cast<double>(p.grad[i]) - r[i]) * (static_cast<double>(p.grad[i]) - r[i]);
      n += static_cast<double>(r[i]) * r[i];
    }
    diff += d;
    norm += n;
    if (n > 0 && std::sqrt(d / n) > worst) {
      worst = std::sqrt(d / n);
      worst_name = name;
    }
  }
  std::printf("loss FP32 %.6f, FP8 %.6f; gradient relative L2 error: all %.4f, worst %.4f (%s)\n", fp32.main, fp8.main,
              std::sqrt(diff / norm), worst, worst_name.c_str());
  // E4M3 keeps 3 mantissa bits: a relative rounding error of at most 2^-4 per input, about 2^-4/√3 ≈ 3.6%
  // RMS; a GEMM of two rounded inputs carries ~5%, a few chained GEMMs somewhat more.
  EXPECT_GT(std::sqrt(diff / norm), 1e-3);  // the quantiser is really on
  EXPECT_LT(std::sqrt(diff / norm), 0.10);
  EXPECT_LT(worst, 0.25);
  EXPECT_NEAR(fp8.main, fp32.main, 0.01 * fp32.main);
}

TEST(Fp8Train, TrainingEndsWithinHalfAPercentOfFp32) {
  auto setup = test::training_setup("fp8", 12);
  train::TrainConfig c = setup.config;
  c.steps = 150;
  const RunResult fp32 = train_run(c);
  c.fp8 = true;
  const RunResult fp8 = train_run(c);
  const double relative = std::abs(fp8.validation.loss_main - fp32.validation.loss_main) / fp32.validation.loss_main;
  std::printf("after %lld steps: validation loss FP32 %.4f, FP8 %.4f (relative %.4f); train loss (last 20) %.4f vs "
              "%.4f; %.0f vs %.0f tokens/s\n",
              static_cast<long long>(c.steps), fp32.validation.loss_main, fp8.validation.loss_main, relative,
              test::mean_tail(fp32.loss, 20), test::mean_tail(fp8.loss, 20), fp32.tokens_per_second,
              fp8.tokens_per_second);
  EXPECT_LT(relative, 0.005);
  EXPECT_LT(fp8.validation.loss_main, fp8.loss.front() - 1.0);  // it did train
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {

std::size_t occurrences(const std::string& text, const std::string& needle) {
  std::size_t count = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

TEST(Plot, DrawsLossAndBalancePanelsWithAxesTicksAndLegend) {
  std::vector<nlohmann::json> records;
  for (int step = 1; step <= 50; ++step) {
    nlohmann::json r = {{"step", step}, {"loss_main", 6.0 - step * 0.05}, {"loss_mtp", 6.1 - step * 0.04}};
    r["load"] = {{{"layer", 1}, {"max_over_mean", 3.0 - step * 0.03}}, {{"layer", 2}, {"max_over_mean", 2.0}}};
    if (step % 10 == 0) {
      r["val_loss_main"] = 6.0 - step * 0.045;
      r["val_loss_mtp"] = 6.1 - step * 0.035;
    }
    records.push_back(r);
  }
  const std::string svg = train::plot_metrics_svg(records);
  EXPECT_TRUE(svg.starts_with("<svg "));
  EXPECT_TRUE(svg.ends_with("</svg>\n"));
  for (const char* label : {"train main", "train MTP", "validation main", "validation MTP", "layer 1 max/mean",
                            "layer 2 max/mean", "Loss", "Expert load balance", "step"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(occurrences(svg, "<path "), 6u);     // 4 loss series + 2 layers
  EXPECT_EQ(occurrences(svg, "<circle "), 10u);  // validation markers: 5 steps x 2
  EXPECT_GE(occurrences(svg, "text-anchor=\"middle\">"), 10u);  // x tick labels of both panels
  EXPECT_EQ(occurrences(svg, "<text"), occurrences(svg, "</text>"));
  // The x ticks: 1, 2 or 5 times a power of ten (here every 5 steps up to 50).
  EXPECT_NE(svg.find(">50</text>"), std::string::npos);
  EXPECT_THROW(train::plot_metrics_svg({nlohmann::json{{"loss_main", 1.0}}}), Error);
  EXPECT_NE(train::plot_metrics_svg({}).find("no data"), std::string::npos);
}

TEST(Train, CliTrainsResumesAndPlots) {
  auto setup = test::training_setup("cli", 6);
  nlohmann::json config = {{"model_config", setup.config.model_config},
                           {"tokenizer", setup.config.tokenizer},
                           {"corpus", setup.corpus},
                           {"seq_len", 64},
                           {"batch_size", 2},
                           {"accumulation", 2},
                           {"steps", 6},
                           {"lr", 1e-3},
                           {"validation_fraction", 0.2},
                           {"validation_interval", 3},
                           {"checkpoint_dir", (setup.dir / "ckpt").string()},
                           {"checkpoint_interval", 3},
                           {"fp8", true},
                           {"moment_dtype", "f32"},
                           {"resume", "latest"}};
  std::ofstream(setup.dir / "train.json") << config.dump(2);
  std::string output;
  ASSERT_EQ(test::run_dsv3("train --config " + (setup.dir / "train.json").string(), output), 0) << output;
  EXPECT_NE(output.find("trained steps 1..6"), std::string::npos) << output;
  EXPECT_EQ(output.find("ETA"), std::string::npos) << "no progress bar when piped:\n" << output;
  EXPECT_TRUE(std::filesystem::exists(setup.dir / "ckpt" / "step-3" / "model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(setup.dir / "ckpt" / "step-6" / "model.safetensors"));

  // Asking for more steps resumes from step-6 and appends to the log.
  config["steps"] = 8;
  std::ofstream(setup.dir / "train.json") << config.dump(2);
  output.clear();
  ASSERT_EQ(test::run_dsv3("train --config " + (setup.dir / "train.json").string(), output), 0) << output;
  EXPECT_NE(output.find("resumed from"), std::string::npos) << output;
  EXPECT_NE(output.find("trained steps 7..8"), std::string::npos) << output;
  std::ifstream log(setup.dir / "ckpt" / "metrics.jsonl");
  std::string line;
  std::vector<std::int64_t> steps;
  while (std::getline(log, line)) {
    const auto record = nlohmann::json::parse(line);
    steps.push_back(record["step"].get<std::int64_t>());
    for (const char* key : {"lr", "loss_main", "loss_mtp", "loss_balance", "grad_norm", "tokens_per_second", "load"})
      EXPECT_TRUE(record.contains(key)) << key;
  }
  EXPECT_EQ(steps, (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));

  output.clear();
  const auto svg = setup.dir / "metrics.svg";
  ASSERT_EQ(test::run_dsv3("plot " + (setup.dir / "ckpt" / "metrics.jsonl").string() + " --out " + svg.string(), output), 0)
      << output;
  EXPECT_GT(std::filesystem::file_size(svg), 1000u);

  // Unknown keys fail, naming the key.
  config["learning_rate"] = 0.1;
  std::ofstream(setup.dir / "bad.json") << config.dump(2);
  output.clear();
  EXPECT_NE(test::run_dsv3("train --config " + (setup.dir / "bad.json").string(), output), 0);
  EXPECT_NE(output.find("unknown key \"learning_rate\""), std::string::npos) << output;
}

}  // namespace
}  // namespace dsv3
