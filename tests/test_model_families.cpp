// The checkpoints users bring: Llama 3.x (RoPE scaling "llama3" / "linear", rope_theta
// 500000), Qwen2 (q/k/v biases) and Mistral (sliding windows) written by transformers
// itself (tests/model_families.py) load to transformers' logits, convert end to end and
// reload to what dha-convert reported; what dha cannot run is refused in one line.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/checkpoint_family.h"
#include "dha/io/gguf_export.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/safetensors.h"
#include "dha/lookup.h"
#include "dha/model.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kTolerance = 1e-5;  // fp32 logits against transformers'

bool python_has_transformers() { return dha::test::python_imports("transformers, safetensors"); }

// Runs a command, shows its output in the test log, returns its exit status.
int run_logged(const std::string& command) {
  std::FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  const int status = ::pclose(pipe);
  std::printf("%s\n%s", command.c_str(), out.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string python(const dha::test::TempDir& tmp, const std::string& args) {
  return "HF_MODULES_CACHE=\"" + tmp.file("hf_modules") + "\" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \"" +
         DHA_PYTHON + "\" \"" + DHA_SOURCE_DIR + "/tests/model_families.py\" " + args;
}

// The cases tests/model_families.py writes that dha runs.
struct Family {
  const char* name;
  dha::RopeScaling::Type rope;
  bool biased, tied;
};
constexpr Family kFamilies[] = {
    {"llama3", dha::RopeScaling::Type::kLlama3, false, false},
    {"llama-linear", dha::RopeScaling::Type::kLinear, false, true},
    {"qwen2", dha::RopeScaling::Type::kNone, true, false},
    {"qwen2-tied", dha::RopeScaling::Type::kNone, true, true},
    {"mistral", dha::RopeScaling::Type::kNone, false, false},
    {"mistral-window", dha::RopeScaling::Type::kNone, false, false},
};

// ... and those it refuses, with what the one line must say.
struct Refusal {
  const char* name;
  std::vector<std::string> needles;
};
const std::vector<Refusal>& refusals() {
  static const std::vector<Refusal> cases = {
      {"refuse-yarn", {"RoPE scaling type \"yarn\" is not supported", "supported: default, linear, llama3"}},
      {"refuse-dynamic", {"RoPE scaling type \"dynamic\" is not supported", "supported: default, linear, llama3"}},
      {"refuse-mistral-window", {"sliding_window 16 (every layer) is below max_position_embeddings 128"}},
      {"refuse-qwen2-window", {"sliding_window 16 (layers 1..1) is below max_position_embeddings 128"}},
      {"refuse-llama-o-bias", {"o_proj biases are not supported"}},
  };
  return cases;
}

torch::Tensor forward(const dha::Checkpoint& checkpoint, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  dha::Llama model = dha::make_model(checkpoint, "test");
  return model->forward(tokens);
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// transformers writes every case once for the whole suite (a Python start-up each
// costs seconds).
class ModelFamilies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!python_has_transformers()) return;
    dir_ = std::make_unique<dha::test::TempDir>();
    written_ = run_logged(python(*dir_, "write \"" + dir_->path() + "\"")) == 0;
  }
  static void TearDownTestSuite() { dir_.reset(); }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << DHA_PYTHON << " cannot import transformers (scripts/setup installs it)";
    ASSERT_TRUE(written_) << "tests/model_families.py write failed";
  }
  static std::string path(const std::string& name) { return dir_->file(name); }
  static dha::TensorMap expected(const std::string& name) {
    const dha::io::SafetensorsFile file(path(name + ".expected.safetensors"));
    dha::TensorMap out;
    for (const auto& tensor : file.names()) out[tensor] = file.tensor(tensor);
    return out;
  }

  static std::unique_ptr<dha::test::TempDir> dir_;
  static bool written_;
};
std::unique_ptr<dha::test::TempDir> ModelFamilies::dir_;
bool ModelFamilies::written_ = false;

}  // namespace

TEST_F(ModelFamilies, EveryFamilyLoadsToTransformersLogits) {
  for (const Family& family : kFamilies) {
    SCOPED_TRACE(family.name);
    const dha::Checkpoint ck = dha::io::load_hf_dir(path(family.name));
    const dha::ModelConfig& c = ck.config;
    EXPECT_EQ(c.rope_scaling.type, family.rope);
    EXPECT_EQ(c.attention_bias, family.biased);
    EXPECT_EQ(c.tied_embeddings, family.tied);
    const dha::TensorMap want = expected(family.name);
    // The inverse frequencies: dha's float64 against transformers' float32.
    const torch::Tensor inv_freq = dha::rope_inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling);
    const torch::Tensor relative = (inv_freq - want.at("inv_freq").to(torch::kFloat64)).abs() / inv_freq;
    EXPECT_LT(relative.max().item<double>(), 1e-6) << inv_freq << want.at("inv_freq");

    const torch::Tensor tokens = want.at("tokens").to(torch::kInt64);
    const double diff = max_diff(forward(ck, tokens), want.at("logits"));
    EXPECT_LT(diff, kTolerance);
    std::printf("%s: %lld positions, max abs logit difference vs transformers %.3e\n", family.name,
                static_cast<long long>(tokens.size(1)), diff);

    // The check sees what the family adds: without its scaling (or its biases) the
    // logits are far off.
    if (family.rope != dha::RopeScaling::Type::kNone) {
      dha::Checkpoint plain = ck;
      plain.config.rope_scaling = {};
      EXPECT_GT(max_diff(forward(plain, tokens), want.at("logits")), 1e-2);
    }
    if (family.biased) {
      dha::Checkpoint unbiased = ck;
      for (auto& [name, t] : unbiased.tensors)
        if (name.find(".bias") != std::string::npos) t = torch::zeros_like(t);
      EXPECT_GT(max_diff(forward(unbiased, tokens), want.at("logits")), 1e-2);
    }
  }
  // Llama 3's scaling is checked past its original context.
  const dha::ModelConfig llama3 = dha::io::load_hf_dir_config(path("llama3"));
  EXPECT_GT(expected("llama3").at("tokens").size(1), llama3.rope_scaling.original_max_position_embeddings);
  EXPECT_DOUBLE_EQ(llama3.rope_theta, 500000.0);
}

TEST_F(ModelFamilies, WhatDhaCannotRunIsRefusedInOneLine) {
  const std::string calib = path("refusal-calib.txt");
  dha::io::write_file_atomic(calib, "One small calibration document.\n");
  const std::string tokenizer = dha::test::shared_path("models/stories260K/tok512.bin");
  for (const Refusal& refusal : refusals()) {
    SCOPED_TRACE(refusal.name);
    dha::test::expect_one_line_error([&] { dha::io::load_hf_dir(path(refusal.name)); }, refusal.needles.front());
    for (const auto& needle : refusal.needles)
      dha::test::expect_one_line_error([&] { dha::io::load_hf_dir_config(path(refusal.name)); }, needle);
    if (!fs::exists(tokenizer)) continue;  // ../shared is absent: the tool's line is not checked
    const std::string out = path(std::string(refusal.name) + "-out");
    dha::test::expect_one_error_line("dha-convert --model " + path(refusal.name) + " --tokenizer " + tokenizer +
                                         " --calib " + calib + " --out " + out + " --budget 0.25 --device cpu",
                                     refusal.needles.front());
    EXPECT_FALSE(fs::exists(out));
  }
}

// dha-convert --budget 0.25 on every family; the directory it writes reloads (in dha
// and in transformers) to the model it reported on; a biased model's gqa and mha
// exports too.
TEST_F(ModelFamilies, ConvertAndExportReloadToTheReportedModel) {
  DHA_REQUIRE_SHARED("models/stories260K/tok512.bin");
  const std::string tokenizer = dha::test::shared_path("models/stories260K/tok512.bin");
  std::string eval;
  for (int i = 0; i < 6; ++i) eval += "A dog named " + std::to_string(i) + " ran to the big red ball.\n\n";
  dha::io::write_file_atomic(path("calib.txt"), dha::test::tiny_calibration_text());
  dha::io::write_file_atomic(path("eval.txt"), eval);
  auto mean_nll = [&](const std::string& model) {
    const auto run = dha::test::run_tool("dha-eval --model " + model + " --tokenizer " + tokenizer + " --text " +
                                             path("eval.txt") + " --json",
                                         false);
    EXPECT_EQ(run.code, 0) << run.out;
    return json::parse(run.out.substr(run.out.rfind('{'))).at("mean_nll").get<double>();
  };
  json manifest = json::array();
  // dha's logits of a written directory, for tests/model_families.py check.
  auto expect_in_transformers = [&](const std::string& dir, const torch::Tensor& tokens, const torch::Tensor& logits) {
    const std::string file = dir + ".dha.safetensors";
    dha::io::save_safetensors(file, {{"tokens", tokens.to(torch::kFloat32)}, {"logits", logits.contiguous()}});
    manifest.push_back({{"dir", dir}, {"expected", file}});
  };

  for (const Family& family : kFamilies) {
    SCOPED_TRACE(family.name);
    const std::string out = path(std::string(family.name) + "-dha");
    const auto run = dha::test::run_tool(
        "dha-convert --model " + path(family.name) + " --tokenizer " + tokenizer + " --calib " + path("calib.txt") +
            " --eval-text " + path("eval.txt") + " --out " + out +
            " --budget 0.25 --search-steps 2 --search-average 1 --fusion-steps 2 --batch 2 --seq-len 16 --device cpu",
        true);
    ASSERT_EQ(run.code, 0) << run.out;
    const json report = json::parse(dha::io::read_file(out + "/report.json"));
    EXPECT_LT(report["export"]["max_abs_logit_diff"].get<double>(), 1e-4);
    const dha::Checkpoint source = dha::io::load_hf_dir(path(family.name));
    const dha::Checkpoint converted = dha::io::load_hf_dir(out);
    EXPECT_DOUBLE_EQ(converted.config.head_budget(), 0.25);
    // What the family is stays in the config the converted directory carries.
    EXPECT_TRUE(converted.config.rope_scaling == source.config.rope_scaling);
    EXPECT_EQ(converted.config.rope_theta, source.config.rope_theta);
    EXPECT_EQ(converted.config.attention_bias, family.biased);
    EXPECT_EQ(converted.config.max_seq_len, source.config.max_seq_len);
    // Reloaded from disk by dha-eval: the held-out NLL the report measured in memory.
    const double reported = report["after_collapse"]["heldout_nll"].get<double>();
    EXPECT_NEAR(mean_nll(out), reported, 1e-5 * std::max(1.0, std::abs(reported)));

    const torch::Tensor tokens = expected(family.name).at("tokens").to(torch::kInt64);
    const torch::Tensor logits = forward(converted, tokens);
    expect_in_transformers(out, tokens, logits);
    if (!family.biased) continue;
    // Re-layouts permute and duplicate heads, and each head's bias with it.
    for (const char* format : {"gqa", "mha"}) {
      SCOPED_TRACE(format);
      const std::string exported = out + "-" + format;
      const auto e = dha::test::run_tool(
          std::string("dha-export --model ") + out + " --format " + format + " --out " + exported, true);
      ASSERT_EQ(e.code, 0) << e.out;
      const dha::Checkpoint back = dha::io::load_hf_dir(exported);
      EXPECT_TRUE(back.config.attention_bias);
      if (std::string(format) == "mha") {
        EXPECT_EQ(back.config.layout.uniform_gqa_kv_heads(), back.config.n_heads);
      }
      const torch::Tensor exported_logits = forward(back, tokens);
      EXPECT_LT(max_diff(exported_logits, logits), kTolerance);
      expect_in_transformers(exported, tokens, exported_logits);
    }
  }
  // transformers reads every directory dha wrote (LlamaForCausalLM / Qwen2ForCausalLM
  // for a GQA layout, the remote code of a dha directory otherwise) to dha's logits.
  dha::io::write_file_atomic(path("manifest.json"), manifest.dump(2));
  EXPECT_EQ(run_logged(python(*dir_, "check \"" + path("manifest.json") + "\"")), 0);
}

// The remote code reads a dha directory written as each family as the table says.
TEST_F(ModelFamilies, RemoteCodeReadsEveryWrittenFamilyAsTheTableSays) {
  const std::string out = path("written_as.json");
  ASSERT_EQ(run_logged(std::string("\"") + DHA_PYTHON + "\" -c 'import json, sys; sys.path.insert(0, \"" +
                       DHA_SOURCE_DIR + "/python/dha_hf\"); import configuration_dha as c; "
                       "open(\"" + out + "\", \"w\").write(json.dumps(c.WRITTEN_AS))'"),
            0);
  json table = json::object();
  for (const dha::io::CheckpointFamily& family : dha::io::checkpoint_families())
    if (!family.remote_code_fields.empty()) table[family.name] = json::parse(family.remote_code_fields);
  EXPECT_EQ(json::parse(dha::io::read_file(out)), table);
}

// A family the writer never emits is exercised only by a checkpoint that
// tests/model_families.py writes with that model_type.
TEST_F(ModelFamilies, EveryFamilyHasACheckpointToRead) {
  std::set<std::string> cases;
  for (const Family& family : kFamilies) {
    const json config = json::parse(dha::io::read_file(path(family.name) + "/config.json"));
    cases.insert(config.at("model_type").get<std::string>());
  }
  for (const dha::io::CheckpointFamily& family : dha::io::checkpoint_families())
    EXPECT_TRUE(family.writes || cases.count(family.name))
        << family.name << ": add a case to tests/model_families.py and to kFamilies";
}

// ---- without Python: the family table -------------------------------------------------

TEST(ModelFamilyTable, EveryConfigIsWrittenAsExactlyOneFamilyAndReadBackAsIt) {
  const std::vector<std::pair<dha::ModelConfig, std::string>> cases = {
      {dha::test::tiny_config(), "llama"},
      {dha::test::tiny_config(false, true), "qwen2"},
      {dha::test::tiny_dha_config(), "dha_llama"},
      {dha::test::tiny_dha_config(false, true), "dha_llama"},
  };
  for (const auto& [config, model_type] : cases) {
    SCOPED_TRACE(model_type + " " + dha::describe_layout(config));
    int writers = 0;
    for (const dha::io::CheckpointFamily& family : dha::io::checkpoint_families())
      writers += family.writes && family.writes(config);
    EXPECT_EQ(writers, 1);
    const dha::io::CheckpointFamily& family = dha::io::written_family(config);
    EXPECT_EQ(family.name, model_type);
    const json written = dha::io::config_to_hf_json(config, dha::io::DirFormat::kDha, torch::kFloat32);
    EXPECT_EQ(written["model_type"], family.name);
    EXPECT_EQ(written["architectures"], json::array({family.architecture}));
    EXPECT_EQ(&dha::io::config_family(written, "config.json"), &family);
    EXPECT_EQ(dha::io::config_from_hf_json(written, "config.json").attention_bias, config.attention_bias);
  }
}

TEST(ModelFamilyTable, EveryRowHoldsWhatItsRolesNeed) {
  for (const char* model_type : {"llama", "mistral", "qwen2", "dha_llama"})
    EXPECT_NE(dha::find_row_or_null(dha::io::checkpoint_families(), model_type), nullptr) << model_type;
  std::set<std::string> names;
  const dha::ModelConfig config = dha::test::tiny_config(false, true);
  for (const dha::io::CheckpointFamily& family : dha::io::checkpoint_families()) {
    SCOPED_TRACE(family.name);
    EXPECT_TRUE(names.insert(family.name).second) << "model_type listed twice";
    EXPECT_GT(family.default_max_position_embeddings, 0);
    EXPECT_TRUE(family.attention_bias);
    // What the writer emits, it names, and the remote code reads.
    const bool written = static_cast<bool>(family.writes);
    EXPECT_EQ(!family.architecture.empty(), written);
    EXPECT_EQ(!family.remote_code_fields.empty(), written);
    if (written) {
      EXPECT_TRUE(json::parse(family.remote_code_fields).is_object());
    }
    for (const auto& [name, shape] : dha::expected_tensors(config))
      EXPECT_EQ(family.canonical_name(family.checkpoint_name(name)), name);
  }
}

TEST(ModelFamilyTable, TensorRenamesMapWholeNamePiecesBothWays) {
  dha::io::CheckpointFamily family;
  family.tensor_renames = {
      {"transformer.h", "model.layers"}, {"attn", "self_attn"}, {"wte", "model.embed_tokens"}};
  const std::vector<std::pair<std::string, std::string>> names = {
      {"transformer.h.3.attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight"},
      {"wte.weight", "model.embed_tokens.weight"},
      {"lm_head.weight", "lm_head.weight"},
      {"transformer.hx.attn_norm.weight", "transformer.hx.attn_norm.weight"},  // no whole piece matches
  };
  for (const auto& [checkpoint, canonical] : names) {
    EXPECT_EQ(family.canonical_name(checkpoint), canonical);
    EXPECT_EQ(family.checkpoint_name(canonical), checkpoint);
  }
}

TEST(ModelFamilyTable, GgufArchitecturesComeFromTheTable) {
  EXPECT_EQ(dha::io::gguf_architectures(), "llama, deci");
  EXPECT_EQ(dha::io::find_gguf_family("llama")->name, "llama");
  EXPECT_EQ(dha::io::find_gguf_family("deci")->name, "dha_llama");
  EXPECT_EQ(dha::io::find_gguf_family("qwen2"), nullptr);
  EXPECT_EQ(dha::io::find_gguf_family(""), nullptr);
  EXPECT_EQ(dha::io::gguf_architecture(dha::test::tiny_config()), "llama");
  dha::ModelConfig per_layer = dha::test::tiny_config();
  per_layer.layout = dha::HeadLayout::gqa(1, 4, 2);
  per_layer.layout.k_map.push_back(dha::HeadLayout::gqa(1, 4, 1).k_map[0]);
  per_layer.layout.v_map.push_back(dha::HeadLayout::gqa(1, 4, 1).v_map[0]);
  EXPECT_EQ(dha::io::gguf_architecture(per_layer), "deci");
  dha::test::expect_one_line_error([] { dha::io::gguf_architecture(dha::test::tiny_config(false, true)); },
                                   "model_type \"qwen2\" has no GGUF architecture");
}

// ---- without Python: the config.json fields of each family ---------------------------

namespace {

json family_config(const std::string& model_type) {
  return {{"model_type", model_type}, {"hidden_size", 32}, {"intermediate_size", 48}, {"num_hidden_layers", 2},
          {"num_attention_heads", 4},  {"num_key_value_heads", 2}, {"vocab_size", 61}, {"max_position_embeddings", 64}};
}

dha::ModelConfig read(const json& j) { return dha::io::config_from_hf_json(j, "config.json"); }

}  // namespace

TEST(ModelFamilyConfigs, RopeScalingIsReadInEverySpellingAndWrittenBack) {
  json v4 = family_config("llama");  // transformers 4: rope_theta beside rope_scaling
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}};
  json v5 = family_config("llama");  // transformers 5: everything in rope_parameters
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  for (const json& j : {v4, v5}) {
    const dha::ModelConfig c = read(j);
    EXPECT_EQ(c.rope_scaling.type, dha::RopeScaling::Type::kLlama3);
    EXPECT_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 16);
    EXPECT_EQ(c.rope_theta, 500000.0);
    // Written back as rope_theta + rope_scaling, which both transformers read.
    for (const auto format : {dha::io::DirFormat::kHf, dha::io::DirFormat::kDha}) {
      const json written = dha::io::config_to_hf_json(c, format, torch::kFloat32);
      EXPECT_EQ(written["rope_scaling"]["rope_type"], "llama3");
      EXPECT_EQ(written["rope_theta"], 500000.0);
      const dha::ModelConfig back = read(written);
      EXPECT_TRUE(back.rope_scaling == c.rope_scaling);
      EXPECT_EQ(back.rope_theta, c.rope_theta);
    }
  }
  // The older "type" key; llama3 without original_max_position_embeddings takes the context.
  json old = family_config("llama");
  old["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(read(old).rope_scaling.type, dha::RopeScaling::Type::kLinear);
  json fallback = v5;
  fallback["rope_parameters"].erase("original_max_position_embeddings");
  EXPECT_EQ(read(fallback).rope_scaling.original_max_position_embeddings, 64);
  // One beside rope_parameters wins, as transformers' standardize_rope_params.
  fallback["original_max_position_embeddings"] = 32;
  EXPECT_EQ(read(fallback).rope_scaling.original_max_position_embeddings, 32);
  // Plain RoPE writes no rope_scaling.
  EXPECT_FALSE(dha::io::config_to_hf_json(read(family_config("llama")), dha::io::DirFormat::kHf, torch::kFloat32)
                   .contains("rope_scaling"));
}

TEST(ModelFamilyConfigs, WhatCannotBeRunIsOneClearLine) {
  struct Case {
    std::string what;
    std::function<void(json&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"yarn", [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; },
       "\"rope_scaling\"): RoPE scaling type \"yarn\" is not supported (supported: default, linear, llama3)"},
      {"longrope", [](json& j) { j["rope_parameters"] = {{"rope_type", "longrope"}, {"rope_theta", 1e4}}; },
       "RoPE scaling type \"longrope\" is not supported"},
      {"dynamic", [](json& j) { j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}}; },
       "RoPE scaling type \"dynamic\" is not supported"},
      {"linear without factor", [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}}; },
       "RoPE scaling \"linear\" needs \"factor\""},
      {"llama3 low >= high",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 1.0}};
       },
       "needs 0 < low_freq_factor < high_freq_factor"},
      {"partial rotary", [](json& j) { j["partial_rotary_factor"] = 0.5; }, "partial_rotary_factor 0.5 is not supported"},
      {"per-layer rope",
       [](json& j) { j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}}}}; },
       "RoPE parameters per layer type (\"full_attention\") are not supported"},
      {"llama o_proj bias", [](json& j) { j["attention_bias"] = true; }, "o_proj biases are not supported"},
      {"mlp bias", [](json& j) { j["mlp_bias"] = true; }, "mlp_bias is not supported"},
      // The supported list is the family table's.
      {"unknown family", [](json& j) { j["model_type"] = "gemma2"; },
       "model_type \"gemma2\" is not supported (supported: " + dha::row_names(dha::io::checkpoint_families()) +
           ")"},
      {"mistral default window",  // MistralConfig's window is 4096 when the key is absent
       [](json& j) { j["model_type"] = "mistral"; j["max_position_embeddings"] = 32768; },
       "sliding_window 4096 (every layer) is below max_position_embeddings 32768"},
      {"mistral small window", [](json& j) { j["model_type"] = "mistral"; j["sliding_window"] = 63; },
       "sliding_window 63 (every layer) is below max_position_embeddings 64"},
      {"qwen2 window from max_window_layers",
       [](json& j) {
         j["model_type"] = "qwen2";
         j["use_sliding_window"] = true;
         j["sliding_window"] = 8;
         j["max_window_layers"] = 1;
       },
       "sliding_window 8 (layers 1..1) is below max_position_embeddings 64"},
      {"qwen2 window from layer_types",
       [](json& j) {
         j["model_type"] = "qwen2";
         j["use_sliding_window"] = true;
         j["sliding_window"] = 8;
         j["layer_types"] = {"sliding_attention", "full_attention"};
       },
       "sliding_window 8 (layers 0..0) is below max_position_embeddings 64"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    json j = family_config("llama");
    c.edit(j);
    dha::test::expect_one_line_error([&] { read(j); }, c.needle);
  }
}

TEST(ModelFamilyConfigs, WindowsThatNeverMaskAndQwen2BiasesAreAccepted) {
  json mistral = family_config("mistral");
  mistral["sliding_window"] = nullptr;
  EXPECT_FALSE(read(mistral).attention_bias);
  mistral["sliding_window"] = 64;  // a window of the whole context masks nothing
  EXPECT_NO_THROW(read(mistral));
  mistral.erase("max_position_embeddings");  // MistralConfig's default context, 131072 > the default window
  dha::test::expect_one_line_error([&] { read(mistral); }, "below max_position_embeddings 131072");

  json qwen2 = family_config("qwen2");
  qwen2["sliding_window"] = 8;  // Qwen2.5 configs: a window, but use_sliding_window false
  qwen2["use_sliding_window"] = false;
  qwen2["max_window_layers"] = 0;
  EXPECT_TRUE(read(qwen2).attention_bias);  // always, whatever attention_bias says
  qwen2["use_sliding_window"] = true;
  qwen2["max_window_layers"] = 2;  // no layer from 2 on in a 2-layer model
  EXPECT_NO_THROW(read(qwen2));
  qwen2.erase("max_position_embeddings");
  EXPECT_EQ(read(qwen2).max_seq_len, 32768);  // Qwen2Config's default

  // dha's own config: attention_bias means q/k/v, as in modeling_dha.py.
  json dha_llama = family_config("dha_llama");
  dha_llama["attention_bias"] = true;
  EXPECT_TRUE(read(dha_llama).attention_bias);
}

// Biases and a scaling survive every directory dha writes: a GQA layout with
// biases is written as Qwen2 (LLaMA's attention_bias would add o_proj biases).
TEST(ModelFamilyConfigs, BiasedDirectoriesRoundTripAsQwen2OrDha) {
  dha::test::TempDir tmp;
  for (bool decoupled : {false, true}) {
    dha::ModelConfig config = decoupled ? dha::test::tiny_dha_config(false, true) : dha::test::tiny_config(false, true);
    config.rope_theta = 500000.0;
    config.rope_scaling.type = dha::RopeScaling::Type::kLlama3;
    config.rope_scaling.factor = 8.0;
    config.rope_scaling.original_max_position_embeddings = 8;
    const dha::Checkpoint ck = dha::test::random_checkpoint(config, 3);
    const std::string dir = tmp.file(decoupled ? "dha" : "gqa");
    dha::io::save_hf_dir(dir, ck, {});
    const json written = json::parse(dha::io::read_file(dir + "/config.json"));
    EXPECT_EQ(written["model_type"], decoupled ? "dha_llama" : "qwen2");
    EXPECT_EQ(written["attention_bias"], true);
    const dha::Checkpoint back = dha::io::load_hf_dir(dir);
    EXPECT_TRUE(back.config.attention_bias);
    EXPECT_TRUE(back.config.rope_scaling == config.rope_scaling);
    const torch::Tensor tokens = dha::test::random_tokens(2, 20, config.vocab_size, 4);
    EXPECT_EQ(max_diff(forward(back, tokens), forward(ck, tokens)), 0.0);
    // A directory whose config says there are no biases but which holds them is refused.
    json unbiased = written;
    unbiased["model_type"] = "dha_llama";
    unbiased["attention_bias"] = false;
    dha::io::write_file_atomic(dir + "/config.json", unbiased.dump());
    dha::test::expect_one_line_error([&] { dha::io::load_hf_dir(dir); },
                                     "(the config says the attention has no biases)");
  }
}

TEST(ModelFamilyConfigs, Llama2cRefusesScalingAndBiases) {
  dha::test::TempDir tmp;
  dha::Checkpoint biased = dha::test::random_checkpoint(dha::test::tiny_config(false, true), 1);
  dha::test::expect_one_line_error([&] { dha::io::save_llama2c(tmp.file("b.bin"), biased); },
                                   "the llama2.c format has no biases");
  dha::Checkpoint scaled = dha::test::random_checkpoint(dha::test::tiny_config(), 1);
  scaled.config.rope_scaling.type = dha::RopeScaling::Type::kLinear;
  scaled.config.rope_scaling.factor = 2.0;
  dha::test::expect_one_line_error([&] { dha::io::save_llama2c(tmp.file("s.bin"), scaled); },
                                   "has RoPE scaling \"linear\"");
  EXPECT_FALSE(fs::exists(tmp.file("b.bin")));
  EXPECT_FALSE(fs::exists(tmp.file("s.bin")));
}

// The three regimes of Llama 3's scaling, each against plain RoPE: kept, slowed by
// the factor, and blended in between (continuous at both bounds).
TEST(ModelFamilyConfigs, Llama3FrequenciesKeepSlowAndBlend) {
  dha::RopeScaling llama3;
  llama3.type = dha::RopeScaling::Type::kLlama3;
  llama3.factor = 8.0;
  llama3.low_freq_factor = 1.0;
  llama3.high_freq_factor = 4.0;
  llama3.original_max_position_embeddings = 64;
  const torch::Tensor plain = dha::rope_inverse_frequencies(16, 500000.0);
  const torch::Tensor scaled = dha::rope_inverse_frequencies(16, 500000.0, llama3);
  ASSERT_EQ(scaled.scalar_type(), torch::kFloat64);
  const double pi = std::acos(-1.0);
  int kept = 0, slowed = 0, blended = 0;
  for (int64_t i = 0; i < 8; ++i) {
    const double f = plain[i].item<double>(), g = scaled[i].item<double>(), wavelen = 2 * pi / f;
    if (wavelen < 64.0 / 4.0) {
      EXPECT_EQ(g, f) << i;
      ++kept;
    } else if (wavelen > 64.0 / 1.0) {
      EXPECT_DOUBLE_EQ(g, f / 8.0) << i;
      ++slowed;
    } else {
      EXPECT_GT(g, f / 8.0) << i;
      EXPECT_LT(g, f) << i;
      ++blended;
    }
  }
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(blended, 1);
  EXPECT_EQ(slowed, 6);
  dha::RopeScaling linear;
  linear.type = dha::RopeScaling::Type::kLinear;
  linear.factor = 4.0;
  EXPECT_TRUE(torch::allclose(dha::rope_inverse_frequencies(16, 500000.0, linear), plain / 4.0, 0, 0));
}

// dha-train --from-scratch descriptions take the same two fields.
TEST(ModelFamilyConfigs, FromScratchDescriptionsTakeBiasesAndScaling) {
  const dha::ModelConfig c = dha::model_config_from_json(
      json::parse(R"({"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48, "max_seq_len": 64,
                      "attention_bias": true, "rope_theta": 500000,
                      "rope_scaling": {"rope_type": "linear", "factor": 2}})"),
      61, "model.json");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, dha::RopeScaling::Type::kLinear);
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(c.parameter_count(), [&] {
    int64_t n = 0;
    for (const auto& [name, shape] : dha::expected_tensors(c)) {
      int64_t size = 1;
      for (int64_t s : shape) size *= s;
      n += size;
    }
    return n;
  }());
  dha::test::expect_one_line_error(
      [] {
        dha::model_config_from_json(json::parse(R"({"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48,
                                                    "max_seq_len": 64, "rope_scaling": {"rope_type": "yarn"}})"),
                                    61, "model.json");
      },
      "model.json: RoPE scaling type \"yarn\" is not supported");
}
