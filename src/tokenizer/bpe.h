#pragma once
// Internal to src/tokenizer: the BPE model of a tokenizer.json ("model": {"type": "BPE", ...}),
// working on the byte-level pieces the pre-tokenizer produced.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv3::tokenizer_internal {

// (left id, right id) -> (rank, merged id), open addressing: it is probed for every adjacent pair
// of every new word, so it must be cheaper than std::unordered_map's node hops.
class MergeTable {
 public:
  struct Merge {
    std::uint32_t rank;
    std::int32_t merged;
  };
  void reserve(std::size_t count);
  // Returns false when the pair is already present (the first, lower rank, wins as in HF).
  bool insert(std::int32_t left, std::int32_t right, Merge merge);
  const Merge* find(std::int32_t left, std::int32_t right) const {
    std::uint64_t key = pack(left, right);
    for (std::size_t i = slot(key);; i = (i + 1) & mask_) {
      const Entry& entry = entries_[i];
      if (entry.key == key) return &entry.merge;
      if (entry.key == kEmpty) return nullptr;
    }
  }
  std::size_t size() const { return size_; }
  template <typename Visit>
  void for_each(Visit&& visit) const {
    for (const Entry& entry : entries_)
      if (entry.key != kEmpty)
        visit(static_cast<std::int32_t>(entry.key >> 32), static_cast<std::int32_t>(entry.key & 0xFFFFFFFFu), entry.merge);
  }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  struct Entry {
    std::uint64_t key = kEmpty;
    Merge merge{};
  };
  static std::uint64_t pack(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
  }
  std::size_t slot(std::uint64_t key) const { return (key * 0x9E3779B97F4A7C15ULL) >> shift_; }
  std::vector<Entry> entries_;
  std::size_t mask_ = 0;
  int shift_ = 64;
  std::size_t size_ = 0;
};

// Reused buffers for merging one word, so the merge loop does not allocate per word.
struct BpeScratch {
  std::vector<std::int32_t> symbols;
  std::vector<std::uint32_t> ranks;
  struct Node {
    std::int32_t id, previous, next;
  };
  std::vector<Node> nodes;
  struct Candidate {
    std::uint32_t rank;
    std::int32_t position;
    std::int32_t merged;
  };
  std::vector<Candidate> heap;
};

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json; errors name fields under "model".
  static BpeModel from_json(const nlohmann::json& model);

  // Appends the ids of one pre-token piece (raw bytes; the byte-level mapping is implied).
  void encode_piece(std::string_view bytes, std::vector<std::int32_t>& out, BpeScratch& scratch) const;

  // The slow twin of encode_piece, for tests: merges byte-level strings, looking up each adjacent
  // pair "left right" in `ranks` (from reference_ranks()), lowest rank first, leftmost on ties.
  std::vector<std::int32_t> encode_piece_reference(
      std::string_view bytes, const std::unordered_map<std::string, std::uint32_t>& ranks) const;
  std::unordered_map<std::string, std::uint32_t> reference_ranks() const;

  // Number of ids of the BPE vocabulary (its largest id + 1).
  std::size_t vocab_size() const { return tokens_.size(); }
  // The byte-level token string of `id`, or nullptr when no token has that id.
  const std::string* token(std::int32_t id) const;
  std::optional<std::int32_t> token_id(std::string_view token) const;

 private:
  void merge_short(std::size_t count, std::vector<std::int32_t>& out, BpeScratch& scratch) const;
  void merge_long(std::size_t count, std::vector<std::int32_t>& out, BpeScratch& scratch) const;

  std::vector<std::string> tokens_;  // id -> byte-level string; empty where no token has the id
  std::vector<bool> has_token_;
  std::unordered_map<std::string, std::int32_t> ids_;  // byte-level string -> id
  std::int32_t byte_ids_[256];                         // byte -> id of its one-byte token
  MergeTable merges_;
  bool ignore_merges_ = false;
};

}  // namespace dsv3::tokenizer_internal
