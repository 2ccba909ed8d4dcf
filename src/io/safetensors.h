#pragma once
// Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw bytes. Files are memory-mapped and validated
// once when opened; tensors are views into the mapping, never copied.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {

// "[2,3]": how errors spell a shape.
std::string shape_string(const std::vector<std::int64_t>& shape);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;  // inside the file's mapping; not necessarily aligned
  std::size_t nbytes = 0;
  std::filesystem::path file;

  std::int64_t numel() const;
  std::string shape_string() const;  // "[2,3]"
};

// One mapped .safetensors file. Construction validates the whole header:
// size fields, JSON, dtypes, shapes vs byte sizes, offsets in range and not overlapping.
class SafetensorsFile {
 public:
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);
  // Parses and validates a header against a data section of `data_size` bytes (no file needed);
  // the fuzz target drives this directly.
  static std::map<std::string, TensorView> parse_header(std::string_view header_json,
                                                        std::size_t data_size,
                                                        const std::filesystem::path& file);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Whether [data, data + bytes) lies inside this file's mapping.
  bool maps(const std::byte* data, std::size_t bytes) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* mapping_ = nullptr;
  std::size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a checkpoint: one model.safetensors, or shards listed by
// model.safetensors.index.json, or a single named .safetensors file.
class TensorStore {
 public:
  static TensorStore open(const std::filesystem::path& path);

  const TensorView* find(const std::string& name) const;
  // Throws, naming the tensor and where it was looked for, when absent.
  const TensorView& require(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::filesystem::path& location() const { return location_; }
  std::size_t total_bytes() const;
  // Reads every mapped page once, so the first forward pass does not stall on page faults;
  // `progress(tensors_done, bytes_done)` is called after each tensor.
  void prefetch(const std::function<void(std::size_t, std::size_t)>& progress = {}) const;
  // Drops the whole pages of [data, data + bytes) from this process's memory, where they lie in a
  // mapping of this store (a rank that copied out its columns of a matrix); they are read again
  // from the file if touched. Memory elsewhere is left alone.
  void release(const std::byte* data, std::size_t bytes) const;

 private:
  std::filesystem::path location_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// Reads one byte of every page of [data, data + bytes), so mapped pages are in memory before
// they are first used.
void read_pages(const std::byte* data, std::size_t bytes);

// A [T] tensor of token ids (I64 or I32) as int64; errors name the file, tensor, shape or dtype.
std::vector<std::int64_t> read_token_ids(const TensorView& view);

// A tensor to write: `bytes` must hold exactly numel(shape) * dtype_size(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes atomically: to a temporary name beside `path`, then renamed over it.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Helpers for the common cases of writing float32 / int tensors held in vectors.
TensorToWrite tensor_to_write(std::string name, std::vector<std::int64_t> shape,
                              std::span<const float> values);

}  // namespace dsv3
