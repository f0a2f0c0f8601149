// llm.c and Megatron-LM token files, laid out for TokenShard (foreign_shards.h).
#include "foreign_shards.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "dha/error.h"

namespace dha {

namespace fs = std::filesystem;

namespace {

constexpr int32_t kLlmcMagic = 20240520;
constexpr int64_t kLlmcHeaderBytes = 256 * 4;
constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};

template <typename T>
T load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

bool is_llmc(const uint8_t* map, size_t size) {
  return size >= static_cast<size_t>(kLlmcHeaderBytes) && load<int32_t>(map) == kLlmcMagic;
}

std::string megatron_index_of(const std::string& bin_path) {
  if (fs::path(bin_path).extension() != ".bin") return "";
  return fs::path(bin_path).replace_extension(".idx").string();
}

bool has_megatron_index(const std::string& bin_path) {
  const std::string idx = megatron_index_of(bin_path);
  if (idx.empty() || !fs::is_regular_file(idx)) return false;
  std::ifstream in(idx, std::ios::binary);
  char magic[9] = {};
  in.read(magic, 9);
  return in.gcount() == 9 && std::memcmp(magic, kMegatronMagic, 9) == 0;
}

void parse_llmc(const std::string& path, const uint8_t* map, size_t size, ForeignShardLayout& layout) {
  const int32_t version = load<int32_t>(map + 4);
  const int64_t count = load<int32_t>(map + 8);
  if (version != 1 && version != 2)
    fail(path, ": llm.c header version ", version, " is not supported (1: uint16 tokens, 2: uint32)");
  layout.format = "llm.c";
  layout.width = version == 1 ? 2 : 4;
  layout.data_offset = kLlmcHeaderBytes;
  layout.count = count;
  const uint64_t expected = kLlmcHeaderBytes + static_cast<uint64_t>(count) * layout.width;
  if (count < 0 || expected != size)
    fail(path, ": llm.c header says ", count, " tokens of ", layout.width, " bytes (", expected,
         " bytes with the header) but the file holds ", size, " bytes", expected > size ? " (truncated?)" : "");
}

int64_t megatron_width(int code, bool& is_signed, const std::string& idx) {
  // megatron.core.datasets.indexed_dataset.DType
  switch (code) {
    case 1: is_signed = false; return 1;  // uint8
    case 2: is_signed = true; return 1;   // int8
    case 3: is_signed = true; return 2;   // int16
    case 4: is_signed = true; return 4;   // int32
    case 5: is_signed = true; return 8;   // int64
    case 8: is_signed = false; return 2;  // uint16
    default: fail(idx, ": dtype code ", code, " is not an integer token type (expected 1-5 or 8)");
  }
}

void parse_megatron(const std::string& path, size_t size, ForeignShardLayout& layout) {
  const std::string idx = megatron_index_of(path);
  std::ifstream in(idx, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  constexpr size_t kHeader = 9 + 8 + 1 + 8 + 8;
  if (bytes.size() < kHeader) fail(idx, ": ", bytes.size(), " bytes, shorter than a Megatron index header");
  if (load<uint64_t>(p + 9) != 1) fail(idx, ": Megatron index version ", load<uint64_t>(p + 9), " (expected 1)");
  layout.format = "megatron";
  layout.width = megatron_width(p[17], layout.is_signed, idx);
  const uint64_t sequences = load<uint64_t>(p + 18), document_entries = load<uint64_t>(p + 26);
  const uint64_t need = kHeader + sequences * (4 + 8) + document_entries * 8;
  if (sequences > bytes.size() || document_entries > bytes.size() || need > bytes.size())
    fail(idx, ": header says ", sequences, " sequences and ", document_entries, " document indices (", need,
         " bytes) but the file holds ", bytes.size(), " bytes");
  const uint8_t* lengths = p + kHeader;
  const uint8_t* pointers = lengths + 4 * sequences;
  const uint8_t* documents = pointers + 8 * sequences;
  // The sequences are stored back to back, in order (as IndexedDatasetBuilder writes them).
  int64_t tokens = 0;
  std::vector<int64_t> sequence_start(sequences);
  for (uint64_t s = 0; s < sequences; ++s) {
    const int32_t length = load<int32_t>(lengths + 4 * s);
    const int64_t pointer = load<int64_t>(pointers + 8 * s);
    if (length < 0 || pointer != tokens * layout.width)
      fail(idx, ": sequence ", s, " has length ", length, " at byte ", pointer, " (expected byte ",
           tokens * layout.width, ": sequences back to back)");
    sequence_start[s] = tokens;
    tokens += length;
  }
  if (static_cast<uint64_t>(tokens * layout.width) != size)
    fail(path, ": its index ", idx, " describes ", tokens, " tokens (", tokens * layout.width,
         " bytes) but the file holds ", size, " bytes");
  if (document_entries < 1 || load<int64_t>(documents) != 0)
    fail(idx, ": the document indices must start with 0");
  layout.count = tokens;
  layout.indexed = true;
  for (uint64_t d = 0; d + 1 < document_entries; ++d) {
    const int64_t first = load<int64_t>(documents + 8 * d), next = load<int64_t>(documents + 8 * (d + 1));
    if (first < 0 || next < first || next > static_cast<int64_t>(sequences))
      fail(idx, ": document ", d, " spans sequences [", first, ", ", next, ") of ", sequences);
    const int64_t start = first < static_cast<int64_t>(sequences) ? sequence_start[first] : tokens;
    // An empty document holds no token and so starts nothing.
    if (start < tokens && (layout.starts.empty() || start > layout.starts.back())) layout.starts.push_back(start);
  }
  layout.data_offset = 0;
}

}  // namespace

bool parse_foreign_shard(const std::string& path, const uint8_t* map, size_t size, ForeignShardLayout& layout) {
  // The index first: a Megatron .bin has no header, and its first tokens could
  // spell llm.c's magic.
  if (has_megatron_index(path)) {
    parse_megatron(path, size, layout);
    return true;
  }
  if (map && is_llmc(map, size)) {
    parse_llmc(path, map, size, layout);
    return true;
  }
  return false;
}

std::string foreign_shard_format(const std::string& path) {
  if (has_megatron_index(path)) return "megatron";
  std::ifstream in(path, std::ios::binary);
  int32_t magic = 0;
  in.read(reinterpret_cast<char*>(&magic), 4);
  return in.gcount() == 4 && magic == kLlmcMagic ? "llm.c" : "";
}

std::vector<std::string> foreign_shard_paths(const std::string& dir, const std::string& split) {
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".bin") continue;
    const std::string path = entry.path().string(), format = foreign_shard_format(path);
    const bool held_out = format == "llm.c" && entry.path().filename().string().find("val") != std::string::npos;
    if (!format.empty() && held_out == (split == "heldout")) paths.push_back(path);
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace dha
