#pragma once
// The model across ranks (DESIGN.md, dist/): rank 0 runs the command (the engine, its scheduling,
// cache pages and sampling) and, before each step, announces it to the other ranks, which compute
// their share of the same step in lockstep (model/shard.h says which share). Loading a model and
// dropping a cache are announced the same way, so every command works unchanged under mpirun:
// rank 0 runs it, the other ranks follow() until rank 0 stops them.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "dist/communicator.h"
#include "dist/placement.h"
#include "model/model.h"

namespace dsv3 {

struct ShardedLoad {
  std::filesystem::path model_dir;
  // dsv3 placement's plan, one per MoE layer of the main model; empty: experts dealt evenly.
  std::vector<dist::LayerPlacement> placement;
  bool read_in = false;  // read every held page now rather than on first use
};

// This rank's part of a checkpoint: the full weights mapped, cut to the shard, the held pages read
// in when asked (with progress(done, total) in bytes). Measures the resident memory it took.
Model load_shard(const ShardedLoad& load, dist::Communicator& comm, const kernels::Backend& backend,
                 const std::function<void(std::int64_t, std::int64_t)>& progress = {});

// Rank 0 of several: tells the other ranks to load their parts, then loads its own.
Model load_across_ranks(const ShardedLoad& load, dist::Communicator& comm, const kernels::Backend& backend,
                        const std::function<void(std::int64_t, std::int64_t)>& progress = {});

// Every rank but 0: loads and steps as rank 0 announces, until rank 0 calls stop_followers.
// Returns 0; an error ends every rank (run it under dist::run_rank).
int follow(dist::Communicator& comm, const kernels::Backend& backend);

// Rank 0: ends the other ranks' follow() (after its command, once its models are gone).
void stop_followers(dist::Communicator& comm);

// Rank 0: each rank's measured resident weight bytes (Model::resident_weight_bytes), in rank order.
std::vector<std::int64_t> resident_weight_bytes(const Model& model, dist::Communicator& comm);

}  // namespace dsv3
