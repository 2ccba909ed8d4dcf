#include "model/distributed.h"

#include <cstring>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/error.h"
#include "core/machine.h"
#include "model/shard.h"

namespace dsv3 {
namespace {

enum class Kind : std::int32_t { stop = 1, load, unload, step, mtp_step, drop_cache, report_memory };

// A message from rank 0, built and read in the same order.
class Message {
 public:
  explicit Message(Kind kind) { put(static_cast<std::int32_t>(kind)); }
  explicit Message(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}

  template <typename T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  template <typename T>
  void put_span(std::span<const T> values) {
    put(static_cast<std::int64_t>(values.size()));
    const auto* p = reinterpret_cast<const std::byte*>(values.data());
    bytes_.insert(bytes_.end(), p, p + values.size_bytes());
  }
  void put_string(const std::string& s) { put_span(std::span<const char>(s.data(), s.size())); }

  template <typename T>
  T get() {
    T value;
    take(&value, sizeof(T));
    return value;
  }
  template <typename T>
  std::vector<T> get_vector() {
    const auto count = get<std::int64_t>();
    if (count < 0 || static_cast<std::size_t>(count) > (bytes_.size() - read_) / sizeof(T))
      fail("a message from rank 0 is cut short");
    std::vector<T> values(static_cast<std::size_t>(count));
    take(values.data(), values.size() * sizeof(T));
    return values;
  }
  std::string get_string() {
    const std::vector<char> chars = get_vector<char>();
    return {chars.begin(), chars.end()};
  }

  // Rank 0 sends, every other rank receives: the length (the others may wait long for it: an
  // idle server), then the bytes.
  void broadcast(dist::Communicator& comm) {
    auto size = static_cast<std::int64_t>(bytes_.size());
    comm.broadcast_patiently(std::as_writable_bytes(std::span(&size, 1)), 0);
    bytes_.resize(static_cast<std::size_t>(size));
    comm.broadcast(std::span<std::byte>(bytes_), 0);
  }
  static Message receive(dist::Communicator& comm) {
    Message m{std::vector<std::byte>()};
    m.broadcast(comm);
    return m;
  }

 private:
  void take(void* out, std::size_t bytes) {
    if (bytes > bytes_.size() - read_) fail("a message from rank 0 is cut short");
    std::memcpy(out, bytes_.data() + read_, bytes);
    read_ += bytes;
  }
  std::vector<std::byte> bytes_;
  std::size_t read_ = 0;
};

void put_cache(Message& m, const LatentCache& cache) {
  m.put(cache.id());
  m.put(cache.options().capacity_tokens);
  m.put(static_cast<std::int32_t>(cache.options().dtype));
  m.put(cache.options().block_tokens);
}

void put_table(Message& m, const LatentCache::Table* table) {
  m.put(static_cast<std::int8_t>(table != nullptr));
  if (table) m.put_span(std::span<const std::int32_t>(table->blocks));
}

void put_load(Message& m, const ShardedLoad& load) {
  m.put_string(std::filesystem::absolute(load.model_dir).string());
  m.put(static_cast<std::int8_t>(load.read_in));
  m.put(static_cast<std::int64_t>(load.placement.size()));
  for (const dist::LayerPlacement& layer : load.placement) {
    m.put(static_cast<std::int64_t>(layer.rank_experts.size()));
    for (const auto& experts : layer.rank_experts) m.put_span(std::span<const std::int64_t>(experts));
  }
}

ShardedLoad get_load(Message& m) {
  ShardedLoad load;
  load.model_dir = m.get_string();
  load.read_in = m.get<std::int8_t>() != 0;
  load.placement.resize(static_cast<std::size_t>(m.get<std::int64_t>()));
  for (dist::LayerPlacement& layer : load.placement) {
    layer.rank_experts.resize(static_cast<std::size_t>(m.get<std::int64_t>()));
    for (auto& experts : layer.rank_experts) experts = m.get_vector<std::int64_t>();
  }
  return load;
}

}  // namespace

// Rank 0's side: announces steps, and each cache the first time a step uses it.
class StepAnnouncer {
 public:
  explicit StepAnnouncer(dist::Communicator& comm) : comm_(comm) {}
  ~StepAnnouncer() { Message(Kind::unload).broadcast(comm_); }

  void step(std::span<const StepSegment> segments, LatentCache& cache) {
    Message m(Kind::step);
    announce(m, cache);
    m.put(static_cast<std::int64_t>(segments.size()));
    for (const StepSegment& s : segments) {
      m.put(s.start);
      m.put(static_cast<std::int8_t>(s.all_logits));
      m.put_span(s.tokens);
      put_table(m, s.table);
    }
    m.broadcast(comm_);
  }

  void mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, std::int64_t depth) {
    Message m(Kind::mtp_step);
    announce(m, cache);
    m.put(depth);
    m.put(static_cast<std::int64_t>(segments.size()));
    for (const MtpSegment& s : segments) {
      m.put(s.start);
      m.put(static_cast<std::int8_t>(s.all_logits));
      m.put_span(s.next_tokens);
      m.put_span(s.hidden);
      put_table(m, s.table);
    }
    m.broadcast(comm_);
  }

 private:
  void announce(Message& m, LatentCache& cache) {
    put_cache(m, cache);
    if (!announced_.insert(cache.id()).second) return;
    // The followers keep a twin of each cache; when rank 0's goes, theirs go too.
    dist::Communicator* comm = &comm_;
    const std::uint64_t id = cache.id();
    cache.on_destroy([comm, id] {
      Message drop(Kind::drop_cache);
      drop.put(id);
      drop.broadcast(*comm);
    });
  }

  dist::Communicator& comm_;
  std::set<std::uint64_t> announced_;
};

Model::Model(Weights weights, const kernels::Backend& backend, dist::Communicator* comm)
    : weights_(std::move(weights)), backend_(backend), rope_(weights_.config), comm_(comm) {
  const Shard& shard = weights_.shard;
  if (shard.ranks > 1 && (!comm_ || comm_->size() != shard.ranks || comm_->rank() != shard.rank))
    fail("weights cut for rank {} of {} need a communicator of that rank and size", shard.rank, shard.ranks);
  if (shard.ranks > 1 && comm_->rank() == 0) announcer_ = std::make_unique<StepAnnouncer>(*comm_);
}

Model::Model(Model&&) noexcept = default;
Model::~Model() = default;

// Errors after a step was announced would leave the other ranks inside its collectives: they end
// the job instead. Errors found before announcing (the engine's own checks) are ordinary.
template <typename F>
static StepOutput announced(dist::Communicator* comm, F&& compute) {
  try {
    return compute();
  } catch (const std::exception& e) {
    comm->abort(e.what());
  }
  std::terminate();  // not reached: abort() ends the job (GCC does not see [[noreturn]] through the virtual)
}

StepOutput Model::step(std::span<const StepSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                       StepRecord* record, RouterCounts* counts) const {
  if (!announcer_) return compute_step(segments, cache, workspace, record, counts);
  if (record) fail("training steps run in one process");
  announcer_->step(segments, cache);
  return announced(comm_, [&] { return compute_step(segments, cache, workspace, nullptr, counts); });
}

StepOutput Model::mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                           std::int64_t depth, StepRecord* record) const {
  if (!announcer_) return compute_mtp_step(segments, cache, workspace, depth, record);
  if (record) fail("training steps run in one process");
  announcer_->mtp_step(segments, cache, depth);
  return announced(comm_, [&] { return compute_mtp_step(segments, cache, workspace, depth, nullptr); });
}

// A rank other than 0: the twin of rank 0's model and caches.
class Follower {
 public:
  Follower(dist::Communicator& comm, const kernels::Backend& backend) : comm_(comm), backend_(backend) {}

  int run() {
    for (;;) {
      Message m = Message::receive(comm_);
      switch (static_cast<Kind>(m.get<std::int32_t>())) {
        case Kind::stop:
          return 0;
        case Kind::load:
          caches_.clear();
          model_.reset();
          model_.emplace(load_shard(get_load(m), comm_, backend_));
          break;
        case Kind::unload:
          caches_.clear();
          model_.reset();
          break;
        case Kind::drop_cache:
          caches_.erase(m.get<std::uint64_t>());
          break;
        case Kind::step:
          step(m);
          break;
        case Kind::mtp_step:
          mtp_step(m);
          break;
        case Kind::report_memory: {
          const std::int64_t bytes = model_ ? model_->resident_weight_bytes : 0;
          comm_.gather(std::span(&bytes, 1));
          break;
        }
        default:
          fail("an unknown message from rank 0");
      }
    }
  }

 private:
  const Model& model() const {
    if (!model_) fail("rank 0 announced a step before loading a model");
    return *model_;
  }

  LatentCache& cache(Message& m) {
    const auto id = m.get<std::uint64_t>();
    LatentCache::Options options;
    options.capacity_tokens = m.get<std::int64_t>();
    options.dtype = static_cast<DType>(m.get<std::int32_t>());
    options.block_tokens = m.get<std::int64_t>();
    auto& cache = caches_[id];
    if (!cache) cache = std::make_unique<LatentCache>(model().config(), options, backend_);
    return *cache;
  }

  const LatentCache::Table* table(Message& m, std::vector<LatentCache::Table>& tables) {
    if (m.get<std::int8_t>() == 0) return nullptr;
    tables.push_back({m.get_vector<std::int32_t>()});
    return &tables.back();
  }

  void step(Message& m) {
    LatentCache& c = cache(m);
    const auto count = static_cast<std::size_t>(m.get<std::int64_t>());
    std::vector<std::vector<std::int64_t>> tokens(count);
    std::vector<LatentCache::Table> tables;
    tables.reserve(count);
    std::vector<StepSegment> segments(count);
    for (std::size_t i = 0; i < count; ++i) {
      segments[i].start = m.get<std::int64_t>();
      segments[i].all_logits = m.get<std::int8_t>() != 0;
      tokens[i] = m.get_vector<std::int64_t>();
      segments[i].tokens = tokens[i];
      segments[i].table = table(m, tables);
    }
    model().compute_step(segments, c, workspace(), nullptr, nullptr);
  }

  void mtp_step(Message& m) {
    LatentCache& c = cache(m);
    const auto depth = m.get<std::int64_t>();
    const auto count = static_cast<std::size_t>(m.get<std::int64_t>());
    std::vector<std::vector<std::int64_t>> next(count);
    std::vector<std::vector<float>> hidden(count);
    std::vector<LatentCache::Table> tables;
    tables.reserve(count);
    std::vector<MtpSegment> segments(count);
    for (std::size_t i = 0; i < count; ++i) {
      segments[i].start = m.get<std::int64_t>();
      segments[i].all_logits = m.get<std::int8_t>() != 0;
      next[i] = m.get_vector<std::int64_t>();
      hidden[i] = m.get_vector<float>();
      segments[i].next_tokens = next[i];
      segments[i].hidden = hidden[i];
      segments[i].table = table(m, tables);
    }
    model().compute_mtp_step(segments, c, workspace(), depth, nullptr);
  }

  kernels::Workspace& workspace() {
    if (!workspace_) workspace_.emplace(backend_);
    return *workspace_;
  }

  dist::Communicator& comm_;
  const kernels::Backend& backend_;
  std::optional<Model> model_;
  std::map<std::uint64_t, std::unique_ptr<LatentCache>> caches_;
  std::optional<kernels::Workspace> workspace_;
};

Model load_shard(const ShardedLoad& load, dist::Communicator& comm, const kernels::Backend& backend,
                 const std::function<void(std::int64_t, std::int64_t)>& progress) {
  const std::int64_t before = resident_memory_bytes();
  Weights weights = Weights::load(load.model_dir);
  const TensorStore& store = weights.store;
  const ModelConfig& config = weights.config;
  Shard shard = make_shard(
      config, comm.rank(), comm.size(),
      [&store, &config](const CheckpointTensor& t) { return stored_dtype(&store, t, config); }, load.placement);
  cut_weights(weights, std::move(shard));
  if (load.read_in) read_in_held(weights, progress);
  release_unheld(weights);
  if (output_heads_fp8()) quantize_output_heads_fp8(weights);  // each rank its vocabulary rows
  prepare_decode_weights(weights, backend);
  Model model(std::move(weights), backend, &comm);
  model.resident_weight_bytes = resident_memory_bytes() - before;
  return model;
}

Model load_across_ranks(const ShardedLoad& load, dist::Communicator& comm, const kernels::Backend& backend,
                        const std::function<void(std::int64_t, std::int64_t)>& progress) {
  Message m(Kind::load);
  put_load(m, load);
  m.broadcast(comm);
  return load_shard(load, comm, backend, progress);
}

int follow(dist::Communicator& comm, const kernels::Backend& backend) { return Follower(comm, backend).run(); }

void stop_followers(dist::Communicator& comm) { Message(Kind::stop).broadcast(comm); }

std::vector<std::int64_t> resident_weight_bytes(const Model& model, dist::Communicator& comm) {
  if (comm.size() > 1) Message(Kind::report_memory).broadcast(comm);
  const std::int64_t bytes = model.resident_weight_bytes;
  return comm.gather(std::span(&bytes, 1));
}

}  // namespace dsv3
