#include "tokenizer/bpe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv3::tokenizer_internal {
namespace {

// Words up to this many bytes merge with a linear scan over an array, which beats a heap on the
// short words that make up almost all text; longer ones (a page without spaces) use the heap.
constexpr std::size_t kLinearMergeLimit = 96;
constexpr std::uint64_t kNoMerge = ~std::uint64_t{0};

std::uint64_t pack_merge(const MergeTable::Merge* merge) {
  if (!merge) return kNoMerge;
  return (static_cast<std::uint64_t>(merge->rank) << 32) | static_cast<std::uint32_t>(merge->merged);
}

}  // namespace

void MergeTable::reserve(std::size_t count) {
  std::size_t capacity = 16;
  shift_ = 60;
  while (capacity < count * 2) {
    capacity *= 2;
    --shift_;
  }
  entries_.assign(capacity, Entry{});
  mask_ = capacity - 1;
  size_ = 0;
}

bool MergeTable::insert(std::int32_t left, std::int32_t right, Merge merge) {
  if ((size_ + 1) * 2 > entries_.size()) {
    std::vector<Entry> old = std::move(entries_);
    reserve(std::max<std::size_t>(size_ + 1, old.size()));
    for (const Entry& entry : old)
      if (entry.key != kEmpty)
        insert(static_cast<std::int32_t>(entry.key >> 32), static_cast<std::int32_t>(entry.key & 0xFFFFFFFFu), entry.merge);
  }
  std::uint64_t key = pack(left, right);
  std::size_t i = slot(key);
  while (entries_[i].key != kEmpty) {
    if (entries_[i].key == key) return false;
    i = (i + 1) & mask_;
  }
  entries_[i] = Entry{key, merge};
  ++size_;
  return true;
}

BpeModel BpeModel::from_json(const nlohmann::json& model) {
  const std::string where = "model";
  BpeModel result;
  if (model.contains("type")) {
    std::string type = string_field(model, "type", where);
    if (type != "BPE") fail("model.type: '{}' is not supported (only BPE)", type);
  }
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
    fail("model.dropout: BPE dropout is a training-time option and is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
      fail("model.{}: not supported for byte-level BPE", key);
  }
  result.ignore_merges_ = bool_field(model, "ignore_merges", where, false);

  const nlohmann::json& vocab = required_field(model, "vocab", where);
  if (!vocab.is_object()) fail("model.vocab: expected an object of token -> id");
  result.ids_.reserve(vocab.size());
  for (const auto& [token, id_value] : vocab.items()) {
    if (!id_value.is_number_integer() || id_value.get<std::int64_t>() < 0 ||
        id_value.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
      fail("model.vocab[\"{}\"]: expected a non-negative integer id, found {}", token, id_value.dump());
    auto id = id_value.get<std::int32_t>();
    if (static_cast<std::size_t>(id) >= result.tokens_.size()) {
      result.tokens_.resize(id + 1);
      result.has_token_.resize(id + 1, false);
    }
    if (result.has_token_[id])
      fail("model.vocab: id {} is given to both \"{}\" and \"{}\"", id, result.tokens_[id], token);
    result.tokens_[id] = token;
    result.has_token_[id] = true;
    result.ids_.emplace(token, id);
  }
  const auto& table = bytes_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string token = byte_level_encode(std::string(1, static_cast<char>(b)));
    auto it = result.ids_.find(token);
    if (it == result.ids_.end())
      fail("model.vocab: no token for byte 0x{:02X} (\"{}\", U+{:04X}); byte-level BPE needs all 256",
           b, token, static_cast<std::uint32_t>(table[b]));
    result.byte_ids_[b] = it->second;
  }

  const nlohmann::json& merges = required_field(model, "merges", where);
  if (!merges.is_array()) fail("model.merges: expected an array");
  result.merges_.reserve(merges.size());
  auto lookup = [&](const std::string& token, std::size_t rank) {
    auto it = result.ids_.find(token);
    if (it == result.ids_.end()) fail("model.merges[{}]: \"{}\" is not in model.vocab", rank, token);
    return it->second;
  };
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const nlohmann::json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {
      // "left right": byte-level tokens never hold a plain space, so one space separates them.
      const std::string& line = merge.get_ref<const std::string&>();
      std::size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        fail("model.merges[{}]: \"{}\" is not two tokens separated by one space", rank, line);
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      fail("model.merges[{}]: expected \"left right\" or [\"left\", \"right\"], found {}", rank, merge.dump());
    }
    std::int32_t left_id = lookup(left, rank), right_id = lookup(right, rank);
    std::int32_t merged_id = lookup(left + right, rank);
    result.merges_.insert(left_id, right_id, {static_cast<std::uint32_t>(rank), merged_id});
  }
  return result;
}

const std::string* BpeModel::token(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size() || !has_token_[id]) return nullptr;
  return &tokens_[id];
}

std::optional<std::int32_t> BpeModel::token_id(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::encode_piece(std::string_view bytes, std::vector<std::int32_t>& out, BpeScratch& scratch) const {
  if (bytes.empty()) return;
  if (bytes.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(bytes[0])]);
    return;
  }
  if (ignore_merges_) {
    // Hugging Face's ignore_merges: a word that is itself in the vocabulary is taken whole.
    auto it = ids_.find(byte_level_encode(bytes));
    if (it != ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  auto& symbols = scratch.symbols;
  symbols.resize(bytes.size());
  for (std::size_t i = 0; i < bytes.size(); ++i) symbols[i] = byte_ids_[static_cast<unsigned char>(bytes[i])];
  if (bytes.size() <= kLinearMergeLimit)
    merge_short(bytes.size(), out, scratch);
  else
    merge_long(bytes.size(), out, scratch);
}

void BpeModel::merge_short(std::size_t count, std::vector<std::int32_t>& out, BpeScratch& scratch) const {
  std::int32_t* symbols = scratch.symbols.data();
  // pairs[i] describes (symbols[i], symbols[i+1]) as rank << 32 | merged id, so the smallest
  // value is the lowest rank, and the first smallest the leftmost.
  std::uint64_t pairs[kLinearMergeLimit];
  for (std::size_t i = 0; i + 1 < count; ++i) pairs[i] = pack_merge(merges_.find(symbols[i], symbols[i + 1]));
  std::size_t n = count;
  while (n > 1) {
    std::size_t best = 0;
    for (std::size_t i = 1; i + 1 < n; ++i)
      if (pairs[i] < pairs[best]) best = i;
    if (pairs[best] == kNoMerge) break;
    symbols[best] = static_cast<std::int32_t>(pairs[best] & 0xFFFFFFFFu);
    for (std::size_t i = best + 1; i + 1 < n; ++i) symbols[i] = symbols[i + 1];
    for (std::size_t i = best + 1; i + 2 < n; ++i) pairs[i] = pairs[i + 1];
    --n;
    if (best > 0) pairs[best - 1] = pack_merge(merges_.find(symbols[best - 1], symbols[best]));
    if (best + 1 < n) pairs[best] = pack_merge(merges_.find(symbols[best], symbols[best + 1]));
  }
  out.insert(out.end(), symbols, symbols + n);
}

void BpeModel::merge_long(std::size_t count, std::vector<std::int32_t>& out, BpeScratch& scratch) const {
  auto& nodes = scratch.nodes;
  auto& heap = scratch.heap;
  nodes.resize(count);
  heap.clear();
  for (std::size_t i = 0; i < count; ++i)
    nodes[i] = {scratch.symbols[i], static_cast<std::int32_t>(i) - 1,
                i + 1 < count ? static_cast<std::int32_t>(i + 1) : -1};
  // A min-heap on (rank, position): the same order as the linear scan's.
  auto later = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.position > b.position;
  };
  auto push = [&](std::int32_t position) {
    const BpeScratch::Node& node = nodes[position];
    if (node.next < 0) return;
    if (const MergeTable::Merge* merge = merges_.find(node.id, nodes[node.next].id)) {
      heap.push_back({merge->rank, position, merge->merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (std::size_t i = 0; i + 1 < count; ++i) push(static_cast<std::int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    BpeScratch::Candidate candidate = heap.back();
    heap.pop_back();
    BpeScratch::Node& node = nodes[candidate.position];
    // Entries go stale when a neighbour merged first: skip any whose pair is no longer there.
    if (node.id < 0 || node.next < 0) continue;
    BpeScratch::Node& right = nodes[node.next];
    const MergeTable::Merge* merge = merges_.find(node.id, right.id);
    if (!merge || merge->rank != candidate.rank || merge->merged != candidate.merged) continue;
    node.id = candidate.merged;
    right.id = -1;
    node.next = right.next;
    if (node.next >= 0) nodes[node.next].previous = candidate.position;
    if (node.previous >= 0) push(node.previous);
    push(candidate.position);
  }
  for (std::int32_t i = 0; i >= 0; i = nodes[i].next) out.push_back(nodes[i].id);
}

std::unordered_map<std::string, std::uint32_t> BpeModel::reference_ranks() const {
  std::unordered_map<std::string, std::uint32_t> ranks;
  merges_.for_each([&](std::int32_t left, std::int32_t right, MergeTable::Merge merge) {
    ranks.emplace(tokens_[left] + " " + tokens_[right], merge.rank);
  });
  return ranks;
}

std::vector<std::int32_t> BpeModel::encode_piece_reference(
    std::string_view bytes, const std::unordered_map<std::string, std::uint32_t>& ranks) const {
  std::vector<std::string> symbols;
  for (char byte : bytes) symbols.push_back(byte_level_encode(std::string_view(&byte, 1)));
  while (symbols.size() > 1) {
    std::size_t best = 0;
    std::uint32_t best_rank = std::numeric_limits<std::uint32_t>::max();
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = ranks.find(symbols[i] + " " + symbols[i + 1]);
      if (it != ranks.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<std::uint32_t>::max()) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  std::vector<std::int32_t> ids;
  for (const std::string& symbol : symbols) ids.push_back(ids_.at(symbol));
  return ids;
}

}  // namespace dsv3::tokenizer_internal
