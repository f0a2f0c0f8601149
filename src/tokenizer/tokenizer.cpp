// The format-independent parts of the tokenizers: whole-sequence decode, loading
// by content (sentencepiece protobuf, llama2.c tokenizer.bin or tokenizer.json),
// and finding the tokenizer that sits beside a model.
#include "dha/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "dha/tokenizer_bpe.h"
#include "tokenizer_impl.h"

namespace dha {

namespace fs = std::filesystem;

std::string Tokenizer::decode(const std::vector<int32_t>& tokens) const {
  std::string text;
  // Starting "after BOS" drops the dummy-prefix space of the first word even
  // when the sequence itself does not begin with BOS.
  int32_t prev = bos_id();
  for (const int32_t token : tokens) {
    if (token != bos_id() && token != eos_id()) text += decode_piece(prev, token);
    prev = token;
  }
  return text;
}

void Tokenizer::write_files(const std::string& dir) const {
  if (path_.empty()) fail("tokenizer: built in memory, it has no file to copy into ", dir);
  std::error_code error;
  fs::copy_file(path_, fs::path(dir) / tokenizer_file_name(path_), fs::copy_options::overwrite_existing, error);
  if (error) fail(path_, ": cannot copy into ", dir, " (", error.message(), ")");
}

DocumentProtocol document_protocol(const Tokenizer& tokenizer) {
  if (tokenizer.add_bos_by_default()) return {FirstToken::kBos, tokenizer.bos_id()};
  const int32_t separator = tokenizer.document_separator_id();
  if (separator >= 0) return {FirstToken::kSeparator, separator};
  return {FirstToken::kGiven, -1};
}

const char* first_token_name(FirstToken first_token) {
  switch (first_token) {
    case FirstToken::kBos: return "bos";
    case FirstToken::kSeparator: return "separator";
    case FirstToken::kGiven: return "given";
  }
  return "given";
}

namespace detail {

bool parse_byte_piece(const std::string& piece, unsigned char* byte) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return false;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else return false;
    value = value * 16 + digit;
  }
  *byte = static_cast<unsigned char>(value);
  return true;
}

}  // namespace detail

namespace {

// Tokenizers are at most a few MiB; a bigger file is most likely a checkpoint
// passed by mistake, and is refused before it is read into memory.
constexpr std::uintmax_t kMaxTokenizerBytes = std::uintmax_t{256} << 20;

std::string read_tokenizer_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) fail(path, ": no such file");
  if (fs::is_directory(st)) fail(path, ": is a directory, expected a tokenizer file");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) fail(path, ": cannot read its size (", ec.message(), ")");
  if (size > kMaxTokenizerBytes)
    fail(path, ": ", size, " bytes is too large for a tokenizer (is it a model checkpoint?)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open for reading");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size)
    fail(path, ": read ", in.gcount(), " of its ", size, " bytes");
  return bytes;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int64_t expected_vocab) {
  const std::string ext = fs::path(path).extension().string();
  // A GGUF model carries its tokenizer in its metadata.
  if (ext == ".gguf") return detail::load_gguf_tokenizer(path, expected_vocab);
  const std::string bytes = read_tokenizer_file(path);

  // A Hugging Face tokenizer.json (named so, or an unnamed file starting with
  // '{', which a sentencepiece model never does): byte-level BPE. Its ids must
  // fit the model's embedding, which may be padded beyond the vocab.
  if (ext == ".json" || (ext != ".bin" && ext != ".model" && !bytes.empty() && bytes[0] == '{')) {
    auto bpe = ByteLevelBpeTokenizer::from_json(path, bytes);
    if (expected_vocab > 0 && bpe->vocab_size() > expected_vocab)
      fail(path, ": tokenizer has ", bpe->vocab_size(), " tokens but the model's vocab is ", expected_vocab);
    return bpe;
  }

  using Loader = std::unique_ptr<Tokenizer> (*)(const std::string&, const std::string&, int64_t);
  Loader first = detail::load_sentencepiece_tokenizer;
  Loader second = detail::load_llama2c_tokenizer;
  if (ext == ".bin") std::swap(first, second);
  const bool named = ext == ".bin" || ext == ".model";

  // A file whose name says its format gets that format's own error when it
  // fails both ways; the other format is only a fallback for misnamed files.
  // Vocab-size mismatches (plain dha::Error) are never retried.
  std::string first_error;
  try {
    return first(path, bytes, expected_vocab);
  } catch (const detail::TokenizerFormatError& e) {
    first_error = e.what();
  }
  try {
    return second(path, bytes, expected_vocab);
  } catch (const detail::TokenizerFormatError& e) {
    if (named) throw Error(first_error);
    // Each message starts with "PATH: "; keep only the reasons.
    const auto reason = [&](const std::string& m) {
      return m.compare(0, path.size() + 2, path + ": ") == 0 ? m.substr(path.size() + 2) : m;
    };
    fail(path, ": neither a sentencepiece model nor a llama2.c tokenizer.bin (",
         reason(first_error), "; ", reason(e.what()), ")");
  }
}

namespace {

// The names find_tokenizer_in_dir looks for, in order.
constexpr const char* kTokenizerNames[] = {"tokenizer.model", "tokenizer.bin", "tokenizer.json"};

}  // namespace

std::string tokenizer_file_name(const std::string& tokenizer_path) {
  const fs::path extension = fs::path(tokenizer_path).extension();
  if (extension == ".model") return "tokenizer.model";
  if (extension == ".json") return "tokenizer.json";
  return "tokenizer.bin";
}

std::string find_tokenizer_in_dir(const std::string& dir) {
  std::error_code ec;
  for (const char* name : kTokenizerNames) {
    const fs::path candidate = fs::path(dir) / name;
    if (fs::is_regular_file(candidate, ec)) return candidate.string();
  }
  return "";
}

std::string find_tokenizer_for_model(const std::string& model_path, int64_t vocab_size) {
  std::error_code ec;
  const fs::path model(model_path);
  if (fs::is_directory(model, ec)) return find_tokenizer_in_dir(model_path);
  if (model.extension() == ".gguf") return model_path;  // its metadata holds the tokenizer
  const fs::path dir = model.parent_path();  // empty for a bare file name: the cwd
  std::string found = find_tokenizer_in_dir(dir.empty() ? "." : dir.string());
  if (found.empty() && vocab_size > 0) {
    const fs::path candidate = dir / ("tok" + std::to_string(vocab_size) + ".bin");
    if (fs::is_regular_file(candidate, ec)) found = candidate.string();
  }
  return found;
}

}  // namespace dha
