// dist/: the single-process communicator and the factory (the MPI one runs under mpirun in
// tests/dist/mpi_check.cpp), and expert placement (EPLB) with `dsv3 placement`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <random>

#include "dist/communicator.h"
#include "dist/placement.h"
#include "support.h"

namespace dsv3 {
namespace {

using namespace test;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SingleProcess, IsRankZeroOfOneAndItsCollectivesAreTheIdentity) {
  dist::SingleProcess comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  std::vector<float> values = {1.5f, -2.0f, 3.25f};
  comm.all_reduce_sum(values);
  EXPECT_THAT(values, ElementsAre(1.5f, -2.0f, 3.25f));
  std::vector<std::int32_t> ints = {7, 8};
  comm.broadcast(std::span<std::int32_t>(ints), 0);
  EXPECT_THAT(ints, ElementsAre(7, 8));
  const std::vector<std::int32_t> gathered = comm.gather(std::span<const std::int32_t>(ints));
  EXPECT_THAT(gathered, ElementsAre(7, 8));
  EXPECT_THAT(error_message([&] { comm.broadcast(std::span<std::int32_t>(ints), 1); }), HasSubstr("root 1"));
}

TEST(SingleProcess, AFailingRankPrintsItsReasonOnceAndExitsNonZero) {
  EXPECT_EXIT(
      {
        dist::SingleProcess comm;
        dist::run_rank(comm, []() -> int { throw Error("cannot load its part"); });
      },
      ::testing::ExitedWithCode(1), "^rank 0: cannot load its part\n$");
  dist::SingleProcess comm;
  EXPECT_EQ(dist::run_rank(comm, [] { return 3; }), 3);
}

TEST(Communicator, OutsideMpirunTheFactoryGivesOneProcess) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) GTEST_SKIP() << "running under mpirun";
  EXPECT_EQ(dist::launched_ranks(), 1);
  const auto comm = dist::make_communicator();
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->description(), "single process");
}

TEST(Communicator, ABuildWithoutMpiRefusesSeveralRanksRatherThanRunAlone) {
  if (dist::built_with_mpi()) GTEST_SKIP() << "this build has MPI: tests/dist/mpi_check.cpp covers it";
  ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  const std::string message = error_message([] { dist::make_communicator(); });
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  EXPECT_THAT(message, HasSubstr("4 ranks"));
  EXPECT_THAT(message, HasSubstr("without MPI"));
}

double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

// 4 experts with rows {6, 2, 2, 2} on 2 ranks, 1 redundant slot each (worked by hand): the two
// extra slots both go to expert 0 (6 -> 3 per copy, still the heaviest, -> 2 per copy); six copies
// of 2 rows packed in turn onto the lighter rank: rank 0 {0, 0, 2}, rank 1 {0, 1, 3}, 6 rows each.
// Unplanned, rank 0 holds experts 0 and 1 (8 rows) and rank 1 holds 2 and 3 (4 rows).
TEST(Placement, HandWorkedFourExpertsTwoRanksOneRedundant) {
  const std::vector<double> counts = {6, 2, 2, 2};
  const dist::LayerPlacement plan = dist::place_experts(counts, 2, 1);
  EXPECT_THAT(plan.replicas, ElementsAre(3, 1, 1, 1));
  ASSERT_EQ(plan.rank_experts.size(), 2u);
  EXPECT_THAT(plan.rank_experts[0], ElementsAre(0, 0, 2));
  EXPECT_THAT(plan.rank_experts[1], ElementsAre(0, 1, 3));
  EXPECT_THAT(plan.rank_load, ElementsAre(6.0, 6.0));
  EXPECT_THAT(plan.unplanned_load, ElementsAre(8.0, 4.0));
  const std::vector<dist::LayerPlacement> layers = {plan};
  const dist::Imbalance imbalance = dist::imbalance(layers);
  EXPECT_DOUBLE_EQ(imbalance.unplanned, 8.0 / 6.0);
  EXPECT_DOUBLE_EQ(imbalance.planned, 1.0);
}

// Without redundant slots the plan only packs: heaviest first onto the lighter rank with room.
// {6, 2, 2, 2}: 6 -> rank 0, 2 -> rank 1, 2 -> rank 1 (now full), 2 -> rank 0.
TEST(Placement, HandWorkedWithoutRedundantSlotsOnlyPacks) {
  const std::vector<double> counts = {6, 2, 2, 2};
  const dist::LayerPlacement plan = dist::place_experts(counts, 2, 0);
  EXPECT_THAT(plan.replicas, ElementsAre(1, 1, 1, 1));
  EXPECT_THAT(plan.rank_experts[0], ElementsAre(0, 3));
  EXPECT_THAT(plan.rank_experts[1], ElementsAre(1, 2));
  EXPECT_THAT(plan.rank_load, ElementsAre(8.0, 4.0));
}

TEST(Placement, InvariantsOnRandomSkewedLoads) {
  std::mt19937_64 rng(20261126);
  int cases = 0;
  for (int experts : {8, 16, 64, 256}) {
    for (int ranks : {1, 2, 4, 8, 16}) {
      if (experts % ranks != 0) continue;
      for (int redundant : {0, 1, 2, 4}) {
        for (int trial = 0; trial < 5; ++trial) {
          // Router statistics are skewed: a log-normal weight per expert times a row budget.
          std::lognormal_distribution<double> skew(0.0, 1.0 + trial * 0.3);
          std::vector<double> counts(experts);
          for (double& c : counts) c = std::floor(1000.0 * skew(rng));
          const dist::LayerPlacement plan = dist::place_experts(counts, ranks, redundant);
          ++cases;
          const std::string where = fmt::format("E={} N={} R={} trial {}", experts, ranks, redundant, trial);
          ASSERT_EQ(static_cast<int>(plan.rank_experts.size()), ranks) << where;
          std::vector<std::int64_t> held(experts, 0);
          for (const auto& slots : plan.rank_experts) {
            EXPECT_EQ(static_cast<int>(slots.size()), experts / ranks + redundant) << where;
            for (std::int64_t e : slots) ++held[e];
          }
          EXPECT_EQ(held, plan.replicas) << where;
          for (int e = 0; e < experts; ++e) EXPECT_GE(plan.replicas[e], 1) << where << " expert " << e;
          EXPECT_EQ(std::accumulate(plan.replicas.begin(), plan.replicas.end(), std::int64_t{0}),
                    experts + ranks * redundant)
              << where;
          // Each rank's load is its copies' shares, and all rows are served exactly once.
          double total_planned = 0;
          for (int r = 0; r < ranks; ++r) {
            double load = 0;
            for (std::int64_t e : plan.rank_experts[r]) load += counts[e] / plan.replicas[e];
            EXPECT_NEAR(load, plan.rank_load[r], 1e-9 * (1 + load)) << where;
            total_planned += load;
          }
          const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
          EXPECT_NEAR(total_planned, total, 1e-9 * total) << where;
          EXPECT_NEAR(std::accumulate(plan.unplanned_load.begin(), plan.unplanned_load.end(), 0.0), total,
                      1e-9 * total)
              << where;
          // The busiest rank never carries more than without a plan. Greedy packing does not
          // promise this in general; on skewed loads with copies to spread it holds.
          EXPECT_LE(max_of(plan.rank_load), max_of(plan.unplanned_load) * (1 + 1e-12)) << where;
          // With one copy to spare per rank, no rank carries more than the mean plus one copy.
          if (redundant > 0) {
            double heaviest_copy = 0;
            for (int e = 0; e < experts; ++e) heaviest_copy = std::max(heaviest_copy, counts[e] / plan.replicas[e]);
            EXPECT_LE(max_of(plan.rank_load), total / ranks + heaviest_copy + 1e-9 * total) << where;
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 200);
}

TEST(Placement, BadArgumentsAreClearErrors) {
  const std::vector<double> six(6, 1.0);
  EXPECT_THAT(error_message([&] { dist::place_experts(six, 4, 1); }),
              HasSubstr("6 experts do not split evenly over 4 ranks"));
  EXPECT_THAT(error_message([&] { dist::place_experts(six, 0, 1); }), HasSubstr("--ranks 0"));
  EXPECT_THAT(error_message([&] { dist::place_experts(six, 2, -1); }), HasSubstr("--redundant -1"));
  const std::vector<double> negative = {1, -3};
  EXPECT_THAT(error_message([&] { dist::place_experts(negative, 2, 0); }), HasSubstr("expert 1 has count -3"));
}

TEST(PlacementCli, WritesThePlanAndPrintsTheImbalance) {
  const auto dir = temp_dir("placement");
  const auto stats = dir / "stats.json";
  std::ofstream(stats) << R"({"layers": [[6, 2, 2, 2], [1, 1, 1, 9]]})";
  const auto plan_path = dir / "plan.json";
  std::string output;
  ASSERT_EQ(run_dsv3(fmt::format("placement --stats {} --ranks 2 --redundant 1 --out {}", stats.string(),
                                 plan_path.string()),
                     output),
            0)
      << output;
  // Layer 1 unplanned: ranks carry 2 and 10 rows (mean 6): 10/6; both layers: (8 + 10) / (6 + 6).
  EXPECT_THAT(output, HasSubstr("1.667"));
  EXPECT_THAT(output, HasSubstr("1.500"));
  std::ifstream in(plan_path);
  const nlohmann::json plan = nlohmann::json::parse(in);
  EXPECT_EQ(plan["ranks"], 2);
  EXPECT_EQ(plan["layers"][0]["rank_experts"], nlohmann::json::parse("[[0, 0, 2], [0, 1, 3]]"));
  EXPECT_EQ(plan["layers"][0]["replicas"], nlohmann::json::parse("[3, 1, 1, 1]"));
}

TEST(PlacementCli, BadStatisticsNameTheFileAndTheField) {
  const auto dir = temp_dir("placement-bad");
  const auto stats = dir / "stats.json";
  std::ofstream(stats) << R"({"layers": [[1, 2, 3, 4], [1, "x", 3, 4]]})";
  std::string output;
  EXPECT_EQ(run_dsv3(fmt::format("placement --stats {} --ranks 2 --redundant 1", stats.string()), output), 1);
  EXPECT_THAT(output, HasSubstr("layers[1][1]"));
  std::ofstream(stats) << R"({"layers": [[1, 2, 3, 4, 5, 6]]})";
  output.clear();
  EXPECT_EQ(run_dsv3(fmt::format("placement --stats {} --ranks 4 --redundant 1", stats.string()), output), 1);
  EXPECT_THAT(output, HasSubstr("layers[0]: placement: 6 experts do not split evenly over 4 ranks"));
}

}  // namespace
}  // namespace dsv3
