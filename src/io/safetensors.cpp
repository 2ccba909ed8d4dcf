#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>

#include "core/error.h"
#include "core/machine.h"

namespace dsv3 {
namespace {

using json = nlohmann::json;

// A header larger than this is corrupt rather than large (the official 671B index has ~92K
// tensors spread over 163 shards; each shard header is well under 1 MB).
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

// Every partial product must fit in int64, so TensorView::numel() (left to right, in int64) cannot
// overflow even for a zero-sized shape such as [2^62, 4, 0].
std::uint64_t checked_product(const std::vector<std::int64_t>& shape, const std::string& where) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t product = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0) fail("{}: negative dimension {} in shape", where, dim);
    if (dim != 0 && product > kMax / static_cast<std::uint64_t>(dim))
      fail("{}: shape {} overflows int64", where, shape_string(shape));
    product *= static_cast<std::uint64_t>(dim);
  }
  return product;
}

// What write_safetensors aligns the data section to (one cache line).
constexpr std::size_t kDataAlignment = 64;

// Whether a file's bytes are copied into anonymous memory rather than read through its mapping.
// Decode streams the weights, and from the page cache's 4 KiB file pages the small matrices (a
// routed expert's 768 KiB) were read at half the speed of the same bytes in anonymous memory with
// transparent huge pages (bench-1b BF16 decode on a 2-vCPU AMD EPYC, `dsv3 bench --profile`: the
// routed experts 22-29 -> 47-53 GB/s, the step 0.49-0.61 -> 0.66-0.79 of the read roofline). So a
// file is copied when it fits in half the memory available now (the page cache's copy of it stays
// reclaimable), and mapped otherwise, as a model larger than memory must be. DSV3_WEIGHTS=map or
// copy decides instead.
bool copy_into_memory(std::uint64_t bytes) {
  const char* setting = std::getenv("DSV3_WEIGHTS");
  const std::string_view text = setting ? setting : "";
  if (text == "map") return false;
  if (text == "copy") return true;
  if (!text.empty()) fail("DSV3_WEIGHTS={}: expected map or copy", text);
  return bytes <= static_cast<std::uint64_t>(available_memory_bytes()) / 2;
}

// The file's bytes in anonymous memory (huge pages advised), read-only like the mapping; nullptr
// where the memory cannot be had, and the caller keeps the mapping.
void* copy_mapping(const void* mapping, std::size_t bytes) {
  void* memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return nullptr;
#if defined(MADV_HUGEPAGE)
  ::madvise(memory, bytes, MADV_HUGEPAGE);  // advice only: 4 KiB pages where the kernel has none
#endif
  std::memcpy(memory, mapping, bytes);
  ::mprotect(memory, bytes, PROT_READ);
  return memory;
}
}  // namespace

std::int64_t TensorView::numel() const {
  std::int64_t count = 1;
  for (auto dim : shape) count *= dim;
  return count;
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ",";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::string TensorView::shape_string() const { return dsv3::shape_string(shape); }

std::map<std::string, TensorView> SafetensorsFile::parse_header(std::string_view header_json,
                                                                std::size_t data_size,
                                                                const std::filesystem::path& file) {
  const std::string where = file.string();
  json header;
  try {
    header = json::parse(header_json);
  } catch (const json::exception& e) {
    fail("{}: malformed safetensors header JSON: {}", where, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", where);

  std::map<std::string, TensorView> tensors;
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::string>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string tensor_where = fmt::format("{}: tensor {}", where, name);
    if (!entry.is_object()) fail("{}: header entry is not an object", tensor_where);
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) fail("{}: missing or non-string dtype", tensor_where);
    if (shape_it == entry.end() || !shape_it->is_array()) fail("{}: missing or non-array shape", tensor_where);
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2)
      fail("{}: data_offsets must be an array [begin, end]", tensor_where);

    TensorView view;
    view.name = name;
    view.file = file;
    const auto dtype = parse_dtype(dtype_it->get<std::string>());
    if (!dtype) fail("{}: unknown dtype {}", tensor_where, dtype_it->get<std::string>());
    view.dtype = *dtype;
    for (const auto& dim : *shape_it) {
      if (!dim.is_number_integer()) fail("{}: shape has a non-integer dimension", tensor_where);
      if (dim.is_number_unsigned() &&
          dim.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail("{}: dimension {} in shape is too large", tensor_where, dim.get<std::uint64_t>());
      view.shape.push_back(dim.get<std::int64_t>());
    }
    for (const auto& offset : *offsets_it)
      if (!offset.is_number_unsigned()) fail("{}: data_offsets must be non-negative integers", tensor_where);
    const auto begin = (*offsets_it)[0].get<std::uint64_t>();
    const auto end = (*offsets_it)[1].get<std::uint64_t>();
    if (begin > end) fail("{}: data_offsets [{}, {}] run backwards", tensor_where, begin, end);
    if (end > data_size)
      fail("{}: data_offsets [{}, {}] run past the end of the data section ({} bytes)", tensor_where, begin,
           end, data_size);
    const std::uint64_t elements = checked_product(view.shape, tensor_where);
    const std::uint64_t element_size = dtype_size(view.dtype);
    if (elements > std::numeric_limits<std::uint64_t>::max() / element_size)
      fail("{}: shape overflows 64 bits", tensor_where);
    if (elements * element_size != end - begin)
      fail("{}: {} bytes for shape {} of {} ({} bytes expected)", tensor_where, end - begin,
           shape_string(view.shape), dtype_name(view.dtype), elements * element_size);
    view.nbytes = end - begin;
    view.data = reinterpret_cast<const std::byte*>(begin);  // rebased onto the mapping by open()
    ranges.emplace_back(begin, end, name);
    tensors.emplace(name, std::move(view));
  }
  // Zero-sized tensors occupy no bytes and cannot overlap anything.
  std::erase_if(ranges, [](const auto& range) { return std::get<0>(range) == std::get<1>(range); });
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    const auto& [previous_begin, previous_end, previous_name] = ranges[i - 1];
    const auto& [begin, end, name] = ranges[i];
    if (begin < previous_end)
      fail("{}: tensors {} and {} overlap (byte ranges [{}, {}) and [{}, {}))", where, previous_name, name,
           previous_begin, previous_end, begin, end);
  }
  return tensors;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string where = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", where, std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    fail("{}: cannot stat: {}", where, std::strerror(errno));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", where);
  }
  const auto file_size = static_cast<std::uint64_t>(info.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes, the header length alone takes 8)", where, file_size);
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) fail("{}: cannot map: {}", where, std::strerror(errno));
  if (copy_into_memory(file_size)) {
    if (void* copy = copy_mapping(mapping, file_size)) {
      ::munmap(mapping, file_size);
      mapping = copy;
    }
  }

  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;

  const auto* bytes = static_cast<const unsigned char*>(mapping);
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > file_size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes): truncated or not safetensors",
         where, header_size, file_size);
  if (header_size > kMaxHeaderBytes) fail("{}: header length {} is implausibly large", where, header_size);
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_size);
  const std::size_t data_size = file_size - 8 - header_size;
  file->tensors_ = parse_header(header, data_size, path);
  const auto* data = reinterpret_cast<const std::byte*>(bytes + 8 + header_size);
  for (auto& [name, view] : file->tensors_)
    view.data = data + reinterpret_cast<std::uint64_t>(view.data);

  const json parsed = json::parse(header);
  if (auto it = parsed.find("__metadata__"); it != parsed.end() && it->is_object())
    for (const auto& [key, value] : it->items())
      if (value.is_string()) file->metadata_[key] = value.get<std::string>();
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(mapping_, mapping_size_);
}

TensorStore TensorStore::open(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  TensorStore store;
  store.location_ = path;
  auto add_file = [&store](const fs::path& file) {
    store.files_.push_back(SafetensorsFile::open(file));
    for (const auto& [name, view] : store.files_.back()->tensors()) {
      if (auto it = store.index_.find(name); it != store.index_.end())
        fail("tensor {} appears in both {} and {}", name, it->second->file.string(), file.string());
      store.index_[name] = &view;
    }
  };
  if (fs::is_regular_file(path)) {
    add_file(path);
    return store;
  }
  if (!fs::is_directory(path)) fail("{}: no such checkpoint file or directory", path.string());
  const fs::path index_path = path / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json index;
    try {
      std::ifstream in(index_path);
      index = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: malformed JSON: {}", index_path.string(), e.what());
    }
    const auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object())
      fail("{}: missing object weight_map", index_path.string());
    std::set<std::string> shards;
    for (const auto& [name, shard] : map_it->items()) {
      if (!shard.is_string()) fail("{}: weight_map[{}] is not a file name", index_path.string(), name);
      const auto shard_name = shard.get<std::string>();
      if (shard_name.find('/') != std::string::npos)
        fail("{}: weight_map[{}] = {} must be a file in the same directory", index_path.string(), name,
             shard_name);
      shards.insert(shard_name);
    }
    for (const auto& shard : shards) {
      if (!fs::exists(path / shard))
        fail("{}: shard {} listed in the index is missing", index_path.string(), shard);
      add_file(path / shard);
    }
    for (const auto& [name, shard] : map_it->items()) {
      auto it = store.index_.find(name);
      if (it == store.index_.end())
        fail("{}: tensor {} is listed in {} but that shard does not hold it", index_path.string(), name,
             shard.get<std::string>());
      if (it->second->file.filename() != shard.get<std::string>())
        fail("{}: tensor {} is listed in {} but found in {}", index_path.string(), name,
             shard.get<std::string>(), it->second->file.filename().string());
    }
    return store;
  }
  if (fs::exists(path / "model.safetensors")) {
    add_file(path / "model.safetensors");
    return store;
  }
  fail("{}: holds neither model.safetensors nor model.safetensors.index.json", path.string());
}

const TensorView* TensorStore::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorView& TensorStore::require(const std::string& name) const {
  if (const TensorView* view = find(name)) return *view;
  fail("{}: tensor {} is missing", location_.string(), name);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> all;
  all.reserve(index_.size());
  for (const auto& [name, view] : index_) all.push_back(name);
  return all;
}

std::size_t TensorStore::total_bytes() const {
  std::size_t total = 0;
  for (const auto& [name, view] : index_) total += view->nbytes;
  return total;
}

void read_pages(const std::byte* data, std::size_t bytes) {
  constexpr std::size_t kPage = 4096;
  const auto* first = reinterpret_cast<const volatile unsigned char*>(data);
  for (std::size_t offset = 0; offset < bytes; offset += kPage) (void)first[offset];
}

void TensorStore::prefetch(const std::function<void(std::size_t, std::size_t)>& progress) const {
  std::size_t tensors = 0, bytes = 0;
  for (const auto& [name, view] : index_) {
    read_pages(view->data, view->nbytes);
    bytes += view->nbytes;
    if (progress) progress(++tensors, bytes);
  }
}

bool SafetensorsFile::maps(const std::byte* data, std::size_t bytes) const {
  const auto* begin = static_cast<const std::byte*>(mapping_);
  return mapping_ != nullptr && data >= begin && bytes <= mapping_size_ &&
         static_cast<std::size_t>(data - begin) <= mapping_size_ - bytes;
}

void TensorStore::release(const std::byte* data, std::size_t bytes) const {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (const auto& file : files_) {
    if (!file->maps(data, bytes)) continue;
    // Whole pages only: the partial pages at either end may hold a neighbour's values in use.
    const std::uintptr_t first = (reinterpret_cast<std::uintptr_t>(data) + page - 1) / page * page;
    const std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(data) + bytes) / page * page;
    if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    return;
  }
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& tensor : tensors) {
    const std::uint64_t expected = checked_product(tensor.shape, tensor.name) * dtype_size(tensor.dtype);
    if (expected != tensor.bytes.size())
      fail("writing {}: tensor {} has {} bytes, shape {} of {} needs {}", path.string(), tensor.name,
           tensor.bytes.size(), shape_string(tensor.shape), dtype_name(tensor.dtype), expected);
    if (header.contains(tensor.name)) fail("writing {}: tensor {} given twice", path.string(), tensor.name);
    header[tensor.name] = {{"dtype", dtype_name(tensor.dtype)},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + expected}}};
    offset += expected;
  }
  std::string text = header.dump();
  // Spaces (as Hugging Face's writer pads to 8) so that the data section starts on a cache line:
  // a tensor whose bytes start mid-line costs every 64-byte load two lines, and streaming a
  // weight ran ~25% slower (2-vCPU AMD EPYC, a BF16 GEMV on 2 threads: 46-49 GB/s aligned, 35-36
  // at the 40-byte offset the 8-byte padding gave bench-1b). Tensors that follow stay aligned when
  // the ones before them fill whole lines, as every weight of these models does.
  text.append((kDataAlignment - (8 + text.size()) % kDataAlignment) % kDataAlignment, ' ');

  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot open for writing", temporary.string());
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& tensor : tensors)
      out.write(reinterpret_cast<const char*>(tensor.bytes.data()),
                static_cast<std::streamsize>(tensor.bytes.size()));
    out.flush();
    if (!out) fail("{}: write failed (disk full?)", temporary.string());
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) fail("{}: cannot rename into place: {}", path.string(), error.message());
}

std::vector<std::int64_t> read_token_ids(const TensorView& view) {
  if (view.shape.size() != 1)
    fail("{}: tensor {} has shape {}, expected [T]", view.file.string(), view.name, view.shape_string());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(view.shape[0]));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (view.dtype == DType::I64) {
      std::memcpy(&ids[i], view.data + 8 * i, 8);
    } else if (view.dtype == DType::I32) {
      std::int32_t id;
      std::memcpy(&id, view.data + 4 * i, 4);
      ids[i] = id;
    } else {
      fail("{}: tensor {} has dtype {}, expected I64 or I32", view.file.string(), view.name, dtype_name(view.dtype));
    }
  }
  return ids;
}

TensorToWrite tensor_to_write(std::string name, std::vector<std::int64_t> shape,
                              std::span<const float> values) {
  return {std::move(name), DType::F32, std::move(shape), std::as_bytes(values)};
}

}  // namespace dsv3
