// Safetensors reading, writing and validation: every malformed file must raise dsv3::Error naming
// the file (and the tensor where there is one), never crash; sharded checkpoints load like single files.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string little_endian_u64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(value >> (8 * i));
  return bytes;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A safetensors file with the given header text and `data_bytes` zero bytes of data.
std::string safetensors_bytes(const std::string& header, std::size_t data_bytes) {
  return little_endian_u64(header.size()) + header + std::string(data_bytes, '\0');
}

class SafetensorsBadFile : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("files"); }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `bytes` as bad.safetensors and returns the error opening it raises.
  std::string open_error(const std::string& bytes) {
    path_ = dir_ / "bad.safetensors";
    write_bytes(path_, bytes);
    return test::error_message([&] { SafetensorsFile::open(path_); });
  }
  std::string header_error(const std::string& header, std::size_t data_bytes) {
    return open_error(safetensors_bytes(header, data_bytes));
  }

  fs::path dir_;
  fs::path path_;
};

TEST_F(SafetensorsBadFile, ShorterThanTheHeaderLength) {
  for (std::size_t size : {0, 1, 7}) {
    const std::string message = open_error(std::string(size, '\x01'));
    EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("truncated"))) << size << " bytes";
  }
}

TEST_F(SafetensorsBadFile, HeaderLengthPastTheEndOfTheFile) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string whole = safetensors_bytes(header, 4);
  const std::string message = open_error(whole.substr(0, 8 + header.size() / 2));
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("header length"),
                             HasSubstr(std::to_string(header.size())), HasSubstr("runs past the end")));
}

TEST_F(SafetensorsBadFile, ImplausiblyLargeHeaderLength) {
  // A sparse file large enough that the length fits, so the size limit itself is what rejects it.
  path_ = dir_ / "bad.safetensors";
  write_bytes(path_, little_endian_u64(200ull << 20));
  fs::resize_file(path_, (200ull << 20) + 64);
  const std::string message = test::error_message([&] { SafetensorsFile::open(path_); });
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("implausibly large")));
}

TEST_F(SafetensorsBadFile, MalformedHeaderJson) {
  const std::string message = header_error(R"({"a":{"dtype":"F32",)", 0);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("malformed safetensors header JSON")));
}

TEST_F(SafetensorsBadFile, HeaderNotAnObject) {
  for (const char* header : {"[1,2]", "\"text\"", "42", "null"}) {
    const std::string message = header_error(header, 0);
    EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("not a JSON object"))) << header;
  }
}

TEST_F(SafetensorsBadFile, EntryNotAnObject) {
  const std::string message = header_error(R"({"model.norm.weight":[1,2]})", 0);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("model.norm.weight"), HasSubstr("not an object")));
}

TEST_F(SafetensorsBadFile, EntryMissingDtypeShapeOrOffsets) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "shape"},
      {R"({"w":{"dtype":"F32","shape":"[1]","data_offsets":[0,4]}})", "shape"},
      {R"({"w":{"dtype":"F32","shape":[1]}})", "data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", "data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", "data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "non-integer dimension"},
  };
  for (const auto& [header, field] : cases) {
    const std::string message = header_error(header, 4);
    EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr(field))) << header;
  }
}

TEST_F(SafetensorsBadFile, UnknownDtype) {
  const std::string message = header_error(R"({"layer.w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("layer.w"), HasSubstr("unknown dtype F128")));
}

TEST_F(SafetensorsBadFile, NegativeOrHugeDimension) {
  std::string message = header_error(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("negative dimension -1")));
  message = header_error(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("18446744073709551615")));
  message = header_error(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("overflows")));
}

TEST_F(SafetensorsBadFile, OffsetsOutOfRange) {
  const std::string message = header_error(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("[0, 16]"),
                             HasSubstr("past the end of the data section (8 bytes)")));
}

TEST_F(SafetensorsBadFile, NegativeOffsets) {
  const std::string message = header_error(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("non-negative")));
}

TEST_F(SafetensorsBadFile, OffsetsRunBackwards) {
  const std::string message = header_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("[8, 0] run backwards")));
}

TEST_F(SafetensorsBadFile, OverlappingTensorsNameBoth) {
  const std::string message = header_error(R"({"first.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
      "second.weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("first.weight"), HasSubstr("second.weight"),
                             HasSubstr("overlap")));
}

TEST_F(SafetensorsBadFile, ContainedTensorOverlapsItsContainer) {
  const std::string message = header_error(R"({"outer":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},
      "inner":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},
      "after":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}})", 32);
  EXPECT_THAT(message, AllOf(HasSubstr("outer"), HasSubstr("inner"), HasSubstr("overlap")));
}

TEST_F(SafetensorsBadFile, ByteSizeNotMatchingShapeAndDtype) {
  const std::string message = header_error(R"({"w":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("tensor w"), HasSubstr("8 bytes for shape [3,2] of BF16"),
                             HasSubstr("12 bytes expected")));
}

TEST_F(SafetensorsBadFile, RealCheckpointTruncatedInItsDataSection) {
  const fs::path original = test::tiny_model_dir() / "model.safetensors";
  const std::string bytes = read_bytes(original);
  ASSERT_GT(bytes.size(), 1000000u);
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  const std::size_t kept = bytes.size() / 2;
  const std::uint64_t kept_data = kept - 8 - header_size;
  std::vector<std::string> cut_tensors;  // the tensors whose bytes the cut removes
  const json header = json::parse(bytes.substr(8, header_size));
  for (const auto& [name, entry] : header.items())
    if (name != "__metadata__" && entry["data_offsets"][1].get<std::uint64_t>() > kept_data) cut_tensors.push_back(name);
  ASSERT_FALSE(cut_tensors.empty());

  const std::string message = open_error(bytes.substr(0, kept));
  EXPECT_THAT(message, AllOf(HasSubstr(path_.string()), HasSubstr("data_offsets"),
                             HasSubstr(fmt::format("past the end of the data section ({} bytes)", kept_data))));
  const bool names_a_cut_tensor = std::any_of(cut_tensors.begin(), cut_tensors.end(), [&](const std::string& name) {
    return message.find("tensor " + name + ":") != std::string::npos;
  });
  EXPECT_TRUE(names_a_cut_tensor) << message;
}

TEST(SafetensorsParseHeader, AcceptsMetadataZeroSizedAndScalarTensors) {
  const auto tensors = SafetensorsFile::parse_header(
      R"({"__metadata__":{"format":"pt"},"empty":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},
          "scalar":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
      4, "in-memory");
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors.at("empty").nbytes, 0u);
  EXPECT_EQ(tensors.at("empty").numel(), 0);
  EXPECT_EQ(tensors.at("scalar").shape_string(), "[]");
  EXPECT_EQ(tensors.at("scalar").numel(), 1);
}

std::vector<std::byte> pattern_bytes(std::size_t count, unsigned seed) {
  std::vector<std::byte> bytes(count);
  for (std::size_t i = 0; i < count; ++i) bytes[i] = static_cast<std::byte>((i * 131 + seed * 17 + 7) & 0xff);
  return bytes;
}

TEST(SafetensorsRoundTrip, EveryDtypeZeroSizedAndMetadata) {
  const fs::path dir = test::temp_dir("roundtrip");
  struct Case {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"f64", DType::F64, {3}},          {"f32", DType::F32, {2, 3}},      {"f16", DType::F16, {5}},
      {"bf16", DType::BF16, {3, 1, 2}},  {"fp8", DType::F8_E4M3, {7, 3}},  {"i64", DType::I64, {2}},
      {"i32", DType::I32, {4}},          {"i16", DType::I16, {1}},         {"i8", DType::I8, {9}},
      {"u8", DType::U8, {2, 2}},         {"bool", DType::BOOL, {3}},       {"empty", DType::F32, {0, 4}},
      {"scalar", DType::I64, {}},
  };
  std::vector<std::vector<std::byte>> payloads;
  std::vector<TensorToWrite> to_write;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::size_t count = dtype_size(cases[i].dtype);
    for (auto dim : cases[i].shape) count *= static_cast<std::size_t>(dim);
    payloads.push_back(pattern_bytes(count, static_cast<unsigned>(i)));
  }
  for (std::size_t i = 0; i < cases.size(); ++i)
    to_write.push_back({cases[i].name, cases[i].dtype, cases[i].shape, payloads[i]});
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "round \"trip\" \u00e9"}};
  const fs::path path = dir / "all.safetensors";
  write_safetensors(path, to_write, metadata);

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(), metadata);
  ASSERT_EQ(file->tensors().size(), cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    const TensorView& view = file->tensors().at(cases[i].name);
    EXPECT_EQ(view.dtype, cases[i].dtype);
    EXPECT_EQ(view.shape, cases[i].shape);
    EXPECT_EQ(view.file, path);
    ASSERT_EQ(view.nbytes, payloads[i].size());
    // memcmp takes no null pointer even for 0 bytes, and a zero-sized tensor may have none.
    if (view.nbytes > 0) EXPECT_EQ(std::memcmp(view.data, payloads[i].data(), view.nbytes), 0);
  }
  // The header is padded so the data section starts on a 64-byte line within the file.
  const std::string bytes = read_bytes(path);
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + header_size) % 64, 0u);
  fs::remove_all(dir);
}

// DSV3_WEIGHTS picks how a file's bytes are held: read through the mapping, or copied into
// anonymous memory (the default when the file fits in half the memory available). Both give the
// same bytes at the same tensors, and an unknown setting is an error naming the variable.
TEST(SafetensorsRoundTrip, MappedAndCopiedFilesHoldTheSameBytes) {
  const fs::path dir = test::temp_dir("weights-copy");
  const auto payload = pattern_bytes(3 * 4096 + 10, 3);
  const fs::path path = dir / "w.safetensors";
  write_safetensors(path, {{"w", DType::U8, {static_cast<std::int64_t>(payload.size())}, payload}}, {});
  for (const char* setting : {"map", "copy"}) {
    SCOPED_TRACE(setting);
    ::setenv("DSV3_WEIGHTS", setting, 1);
    const auto file = SafetensorsFile::open(path);
    const TensorView& view = file->tensors().at("w");
    ASSERT_EQ(view.nbytes, payload.size());
    EXPECT_EQ(std::memcmp(view.data, payload.data(), payload.size()), 0);
    EXPECT_TRUE(file->maps(view.data, view.nbytes));
  }
  ::setenv("DSV3_WEIGHTS", "ram", 1);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "DSV3_WEIGHTS=ram accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DSV3_WEIGHTS=ram"), std::string::npos) << e.what();
  }
  ::unsetenv("DSV3_WEIGHTS");
  fs::remove_all(dir);
}

TEST(SafetensorsRoundTrip, WriteIsAtomicAndReplacesAnExistingFile) {
  const fs::path dir = test::temp_dir("atomic");
  const fs::path path = dir / "model.safetensors";
  const std::vector<float> old_values = {1, 2, 3}, new_values = {4, 5};
  write_safetensors(path, {tensor_to_write("old", {3}, old_values)});
  write_safetensors(path, {tensor_to_write("new", {2}, new_values)}, {{"step", "2"}});
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->tensors().count("old"), 0u);
  EXPECT_EQ(test::read_f32(file->tensors().at("new")), new_values);
  EXPECT_EQ(file->metadata().at("step"), "2");
  std::vector<std::string> entries;
  for (const auto& entry : fs::directory_iterator(dir)) entries.push_back(entry.path().filename().string());
  EXPECT_EQ(entries, std::vector<std::string>{"model.safetensors"});
  fs::remove_all(dir);
}

TEST(SafetensorsRoundTrip, RejectedWriteLeavesTheOldFileAlone) {
  const fs::path dir = test::temp_dir("reject");
  const fs::path path = dir / "model.safetensors";
  const std::vector<float> values = {1, 2, 3};
  write_safetensors(path, {tensor_to_write("kept", {3}, values)});
  std::string message = test::error_message([&] { write_safetensors(path, {tensor_to_write("short", {4}, values)}); });
  EXPECT_THAT(message, AllOf(HasSubstr(path.string()), HasSubstr("tensor short has 12 bytes"), HasSubstr("needs 16")));
  message = test::error_message(
      [&] { write_safetensors(path, {tensor_to_write("twice", {3}, values), tensor_to_write("twice", {3}, values)}); });
  EXPECT_THAT(message, AllOf(HasSubstr(path.string()), HasSubstr("twice given twice")));
  EXPECT_EQ(test::read_f32(SafetensorsFile::open(path)->tensors().at("kept")), values);
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  fs::remove_all(dir);
}

TEST(SafetensorsStore, OpensAFileADirectoryOrFailsNamingThePath) {
  const fs::path dir = test::temp_dir("store");
  const std::vector<float> values = {1, 2};
  write_safetensors(dir / "weights.safetensors", {tensor_to_write("w", {2}, values)});
  const TensorStore direct = TensorStore::open(dir / "weights.safetensors");
  EXPECT_EQ(direct.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(direct.total_bytes(), 8u);
  EXPECT_THAT(test::error_message([&] { direct.require("absent.weight"); }),
              AllOf(HasSubstr("weights.safetensors"), HasSubstr("absent.weight")));
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir); }),
              AllOf(HasSubstr(dir.string()), HasSubstr("neither model.safetensors nor model.safetensors.index.json")));
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir / "nowhere"); }),
              AllOf(HasSubstr((dir / "nowhere").string()), HasSubstr("no such")));
  fs::remove_all(dir);
}

// A copy of the tiny model split into two shards with an index, as Hugging Face writes them.
class SafetensorsSharded : public ::testing::Test {
 protected:
  static constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
  static constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

  void SetUp() override {
    dir_ = test::temp_dir("sharded");
    original_ = SafetensorsFile::open(test::tiny_model_dir() / "model.safetensors");
    std::size_t i = 0;
    for (const auto& [name, view] : original_->tensors()) {
      auto& shard = (i++ % 2 == 0) ? shard1_ : shard2_;
      shard.push_back({name, view.dtype, view.shape, {view.data, view.nbytes}});
      weight_map_[name] = (&shard == &shard1_) ? kShard1 : kShard2;
    }
    write_safetensors(dir_ / kShard1, shard1_, {{"format", "pt"}});
    write_safetensors(dir_ / kShard2, shard2_, {{"format", "pt"}});
    write_index();
    fs::copy_file(test::tiny_model_dir() / "config.json", dir_ / "config.json");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write_index() {
    std::size_t total_size = 0;
    for (const auto& [name, view] : original_->tensors()) total_size += view.nbytes;
    write_bytes(index_path(), json{{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map_}}.dump(1));
  }
  fs::path index_path() const { return dir_ / "model.safetensors.index.json"; }

  fs::path dir_;
  std::shared_ptr<const SafetensorsFile> original_;
  std::vector<TensorToWrite> shard1_, shard2_;
  json weight_map_ = json::object();
};

TEST_F(SafetensorsSharded, LoadsWithTheSameTensorsAndBitIdenticalLogits) {
  const TensorStore sharded = TensorStore::open(dir_);
  const TensorStore single = TensorStore::open(test::tiny_model_dir());
  EXPECT_EQ(sharded.names(), single.names());
  EXPECT_EQ(sharded.total_bytes(), single.total_bytes());
  EXPECT_EQ(sharded.require(shard2_.front().name).file, dir_ / kShard2);

  const Model from_shards(Weights::load(dir_));
  const Model from_file(Weights::load(test::tiny_model_dir()));
  const std::vector<std::int64_t> ids = {0, 17, 511, 1023, 3, 3, 42, 900};
  const ForwardOutput a = from_shards.forward(ids), b = from_file.forward(ids);
  ASSERT_EQ(a.logits.size(), ids.size() * 1024);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0);
}

TEST_F(SafetensorsSharded, MalformedIndex) {
  for (const char* text : {"{\"weight_map\": {", "[]", "{\"weight_map\": 3}"}) {
    write_bytes(index_path(), text);
    EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }), HasSubstr(index_path().string())) << text;
  }
  weight_map_[shard1_.front().name] = 5;
  write_index();
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(index_path().string()), HasSubstr(shard1_.front().name), HasSubstr("not a file name")));
  weight_map_[shard1_.front().name] = "../model.safetensors";
  write_index();
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(index_path().string()), HasSubstr("same directory")));
}

TEST_F(SafetensorsSharded, MissingShard) {
  fs::remove(dir_ / kShard2);
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(index_path().string()), HasSubstr(kShard2), HasSubstr("missing")));
}

TEST_F(SafetensorsSharded, ShardNamedInTheIndexIsADirectory) {
  weight_map_[shard1_.front().name] = ".";
  write_index();
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(dir_.string()), HasSubstr("not a regular file")));
}

TEST_F(SafetensorsSharded, TensorListedButAbsentFromItsShard) {
  weight_map_["model.layers.9.mlp.up_proj.weight"] = kShard1;
  write_index();
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(index_path().string()), HasSubstr("model.layers.9.mlp.up_proj.weight"),
                    HasSubstr(kShard1), HasSubstr("does not hold it")));
}

TEST_F(SafetensorsSharded, TensorListedUnderTheWrongShard) {
  const std::string name = shard2_.front().name;
  weight_map_[name] = kShard1;
  write_index();
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(index_path().string()), HasSubstr(name), HasSubstr("found in " + std::string(kShard2))));
}

TEST_F(SafetensorsSharded, TensorInTwoShards) {
  const TensorToWrite duplicate = shard1_.back();
  shard2_.push_back(duplicate);
  write_safetensors(dir_ / kShard2, shard2_);
  EXPECT_THAT(test::error_message([&] { TensorStore::open(dir_); }),
              AllOf(HasSubstr(duplicate.name), HasSubstr((dir_ / kShard1).string()), HasSubstr((dir_ / kShard2).string())));
}

}  // namespace
}  // namespace dsv3
