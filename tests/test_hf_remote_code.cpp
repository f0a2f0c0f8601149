// dha directories carry transformers remote code (python/dha_hf, embedded in libdha):
// AutoModelForCausalLM(trust_remote_code=True) must reproduce dha's logits, greedy
// KV-cache generation and KV accounting (tests/hf_remote_code.py); skips without transformers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <nlohmann/json.hpp>

#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/safetensors.h"
#include "dha/model.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

constexpr int64_t kNewTokens = 20;

bool python_has_transformers() { return dha::test::python_imports("transformers, safetensors"); }

std::string library_path() { return std::string(DHA_TOOLS_DIR) + "/libdha.so"; }

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

// The Python side runs hermetically: its module cache under `tmp`, no network.
std::string python(const dha::test::TempDir& tmp, const std::string& args) {
  return "HF_MODULES_CACHE=\"" + tmp.file("hf_modules") + "\" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \"" +
         DHA_PYTHON + "\" \"" + DHA_SOURCE_DIR + "/tests/hf_remote_code.py\" " + args;
}

dha::ModelConfig small_config(int64_t n_layers, int64_t n_heads, bool tied) {
  dha::ModelConfig c;
  c.dim = 48;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.head_dim = 8;
  c.hidden_dim = 80;
  c.vocab_size = 97;
  c.max_seq_len = 64;
  c.norm_eps = 1e-5;
  c.tied_embeddings = tied;
  c.layout = dha::HeadLayout::mha(n_layers, n_heads);
  return c;
}

// Unequal, non-contiguous groups with H_K != H_V in every layer.
dha::ModelConfig decoupled_config() {
  dha::ModelConfig c = small_config(3, 6, /*tied=*/false);
  c.layout.k_map = {{2, 0, 1, 0, 2, 2}, {0, 1, 0, 0, 1, 0}, {0, 0, 0, 0, 0, 0}};
  c.layout.v_map = {{0, 1, 2, 3, 1, 0}, {4, 3, 2, 1, 0, 5}, {1, 0, 1, 2, 2, 1}};
  return c;
}

// Two shared spans (1 from layer 0, 3-4 from layer 2), DHA groups elsewhere, tied classifier.
dha::ModelConfig shared_config() {
  dha::ModelConfig c = small_config(6, 6, /*tied=*/true);
  c.layout.k_map = {{1, 0, 1, 2, 0, 2}, {}, {0, 1, 1, 0, 0, 1}, {}, {}, {2, 1, 0, 0, 1, 2}};
  c.layout.v_map = {{0, 0, 1, 1, 2, 2}, {2, 1, 0, 0, 1, 2}, {0, 1, 2, 3, 4, 5},
                    {1, 1, 0, 0, 0, 1}, {3, 2, 1, 0, 0, 0}, {0, 1, 0, 1, 0, 1}};
  return c;
}

dha::ModelConfig gqa_config() {
  dha::ModelConfig c = small_config(2, 8, /*tied=*/false);
  c.dim = 64;
  c.layout = dha::HeadLayout::gqa(2, 8, 2);
  return c;
}

torch::Tensor as_float(const std::vector<int64_t>& values) {
  return torch::tensor(values, torch::kInt64).to(torch::kFloat32);
}

// Saves `checkpoint` as a dha directory under tmp/model, and dha's answers in
// tmp/expected.safetensors (see tests/hf_remote_code.py for the fields).
void write_case(const dha::test::TempDir& tmp, const dha::Checkpoint& checkpoint, uint64_t seed) {
  torch::NoGradGuard no_grad;
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kDha;
  options.dtype = torch::kFloat32;
  dha::io::save_hf_dir(tmp.file("model"), checkpoint, options);

  const dha::ModelConfig& c = checkpoint.config;
  dha::Llama model = dha::make_model(checkpoint, "test checkpoint");
  const torch::Tensor tokens = dha::test::random_tokens(2, 40, c.vocab_size, seed);
  const torch::Tensor logits = model->forward(tokens);

  // dha-generate's loop (dha::generate) without a tokenizer: greedy, with the KV cache.
  const torch::Tensor prompt = dha::test::random_tokens(1, 6, c.vocab_size, seed + 1);
  const int64_t capacity = prompt.size(1) + kNewTokens;
  dha::KVCache cache = model->make_cache(1, capacity, torch::kFloat32);
  std::mt19937_64 rng(0);
  torch::Tensor next_logits = model->forward(prompt, &cache).select(1, prompt.size(1) - 1);
  std::vector<int64_t> greedy;
  std::vector<torch::Tensor> step_logits;  // what each greedy token was chosen from
  while (static_cast<int64_t>(greedy.size()) < kNewTokens) {
    step_logits.push_back(next_logits.reshape({-1}));
    const int32_t next = dha::sample_token(next_logits, /*temperature=*/0.0, /*top_p=*/1.0, rng);
    greedy.push_back(next);
    if (cache.length >= capacity) break;
    next_logits = model->forward(torch::tensor({{static_cast<int64_t>(next)}}, torch::kInt64), &cache).select(1, 0);
  }
  ASSERT_EQ(static_cast<int64_t>(greedy.size()), kNewTokens);
  std::vector<int64_t> heads;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    heads.push_back(cache.k[l].size(1));
    heads.push_back(cache.v[l].size(1));
  }
  // dha's own accounting, which the Python cache must meet.
  ASSERT_EQ(cache.bytes(), c.kv_bytes_per_token(4) * capacity);

  dha::io::save_safetensors(tmp.file("expected.safetensors"),
                            {{"tokens", tokens.to(torch::kFloat32)},
                             {"logits", logits},
                             {"prompt", prompt.to(torch::kFloat32)},
                             {"greedy", as_float(greedy)},
                             {"step_logits", torch::stack(step_logits)},
                             {"kv_heads", as_float(heads).view({c.n_layers, 2})},
                             {"kv_bytes_per_token", as_float({c.kv_bytes_per_token(4)})}});
}

void check_case(const dha::ModelConfig& config, uint64_t seed, bool with_library) {
  dha::test::TempDir tmp;
  write_case(tmp, dha::test::random_checkpoint(config, seed), seed);
  std::string args = "check \"" + tmp.file("model") + "\" \"" + tmp.file("expected.safetensors") + "\"";
  if (with_library) args += " \"" + library_path() + "\"";
  ASSERT_EQ(run_logged(python(tmp, args)), 0);
  if (with_library) return;
  // What transformers' save_pretrained wrote is a dha directory again.
  const dha::Checkpoint saved = dha::io::load_hf_dir(tmp.file("model-saved"));
  const dha::Checkpoint original = dha::io::load_hf_dir(tmp.file("model"));
  EXPECT_EQ(saved.config.layout, original.config.layout);
  EXPECT_EQ(saved.config.tied_embeddings, original.config.tied_embeddings);
  EXPECT_EQ(saved.config.rope_theta, original.config.rope_theta);
  EXPECT_TRUE(saved.config.rope_scaling == original.config.rope_scaling);
  EXPECT_EQ(saved.config.attention_bias, original.config.attention_bias);
  ASSERT_EQ(saved.tensors.size(), original.tensors.size());
  for (const auto& [name, t] : original.tensors) EXPECT_TRUE(torch::equal(t, saved.tensors.at(name))) << name;
}

#define DHA_REQUIRE_TRANSFORMERS()                                                              \
  do {                                                                                          \
    if (!python_has_transformers())                                                             \
      GTEST_SKIP() << DHA_PYTHON << " cannot import transformers (scripts/setup installs it)"; \
  } while (0)

}  // namespace

TEST(HfRemoteCode, DhaDirectoryCarriesTheCodeAndStillLoads) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(shared_config(), 3);
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kDha;
  dha::io::save_hf_dir(tmp.file("dha"), ck, options);
  for (const char* name : {"configuration_dha.py", "modeling_dha.py"}) {
    ASSERT_TRUE(fs::exists(tmp.file("dha/") + name)) << name;
    // The embedded copy is the source file, byte for byte.
    EXPECT_EQ(dha::io::read_file(tmp.file("dha/") + name),
              dha::io::read_file(std::string(DHA_SOURCE_DIR) + "/python/dha_hf/" + name))
        << name;
  }
  const nlohmann::json j = nlohmann::json::parse(dha::io::read_file(tmp.file("dha/config.json")));
  EXPECT_EQ(j.at("auto_map").at("AutoConfig"), "configuration_dha.DhaConfig");
  EXPECT_EQ(j.at("auto_map").at("AutoModelForCausalLM"), "modeling_dha.DhaForCausalLM");
  const dha::Checkpoint back = dha::io::load_hf_dir(tmp.file("dha"));
  EXPECT_EQ(back.config.layout, ck.config.layout);
  for (const auto& [name, t] : ck.tensors) EXPECT_TRUE(torch::equal(t, back.tensors.at(name))) << name;

  // A plain HF directory stays plain.
  const dha::Checkpoint gqa = dha::test::random_checkpoint(gqa_config(), 4);
  options.format = dha::io::DirFormat::kHf;
  dha::io::save_hf_dir(tmp.file("hf"), gqa, options);
  EXPECT_FALSE(fs::exists(tmp.file("hf/modeling_dha.py")));
  EXPECT_FALSE(nlohmann::json::parse(dha::io::read_file(tmp.file("hf/config.json"))).contains("auto_map"));
}

TEST(HfRemoteCode, DecoupledUnequalGroupsMatchDha) {
  DHA_REQUIRE_TRANSFORMERS();
  check_case(decoupled_config(), 14, /*with_library=*/false);
}

TEST(HfRemoteCode, SharedAttentionSpansMatchDha) {
  DHA_REQUIRE_TRANSFORMERS();
  check_case(shared_config(), 12, /*with_library=*/false);
}

TEST(HfRemoteCode, PlainGqaMatchesDha) {
  DHA_REQUIRE_TRANSFORMERS();
  check_case(gqa_config(), 13, /*with_library=*/false);
}

// q/k/v biases and Llama 3 RoPE scaling on unequal groups, 40 positions past an
// original context of 32 (head_dim 8, theta 500000: one frequency kept, one blended,
// two slowed): the config.json keys dha writes are the ones modeling_dha.py reads.
TEST(HfRemoteCode, BiasesAndLlama3ScalingMatchDha) {
  DHA_REQUIRE_TRANSFORMERS();
  dha::ModelConfig c = decoupled_config();
  c.attention_bias = true;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = dha::RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 0.1;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  check_case(c, 16, /*with_library=*/false);
}

TEST(HfRemoteCode, OpPathMatchesPlainPath) {
  DHA_REQUIRE_TRANSFORMERS();
  if (!fs::exists(library_path())) GTEST_SKIP() << library_path() << " is not built";
  check_case(decoupled_config(), 15, /*with_library=*/true);
}

TEST(HfRemoteCode, RopeScalingAndBiasesMatchTransformers) {
  DHA_REQUIRE_TRANSFORMERS();
  dha::test::TempDir tmp;
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kDha;
  dha::io::save_hf_dir(tmp.file("model"), dha::test::random_checkpoint(gqa_config(), 5), options);
  EXPECT_EQ(run_logged(python(tmp, "rope \"" + tmp.file("model") + "\"")), 0);
}

// The README snippet (tests/hf_readme_snippet.py), run as it is from a directory with
// demo-dha/ (a dha directory) and build/libdha.so beside it.
TEST(HfRemoteCode, ReadmeSnippetRuns) {
  DHA_REQUIRE_TRANSFORMERS();
  if (!fs::exists(library_path())) GTEST_SKIP() << library_path() << " is not built";
  dha::test::TempDir tmp;
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kDha;
  options.dtype = torch::kBFloat16;
  dha::io::save_hf_dir(tmp.file("demo-dha"), dha::test::random_checkpoint(decoupled_config(), 6), options);
  fs::create_directory_symlink(DHA_TOOLS_DIR, tmp.file("build"));
  const std::string command = "cd \"" + tmp.path() + "\" && HF_MODULES_CACHE=\"" + tmp.file("hf_modules") +
                              "\" HF_HUB_OFFLINE=1 \"" + DHA_PYTHON + "\" \"" + DHA_SOURCE_DIR +
                              "/tests/hf_readme_snippet.py\"";
  EXPECT_EQ(run_logged(command), 0);
}
