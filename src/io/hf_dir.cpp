// HF LLaMA / toolkit directories: config.json mapping, single or sharded safetensors.
#include "dha/io/hf_dir.h"

#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/checkpoint_family.h"
#include "dha/io/safetensors.h"
#include "hf_remote_code.h"
#include "json_fields.h"

namespace dha::io {
namespace fs = std::filesystem;
using detail::optional_field;
using detail::required;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: fail("unsupported weight dtype ", c10::toString(dtype), " (use float32, float16 or bfloat16)");
  }
}

// eos_token_id may be a list in newer configs; the first one ends generation.
int32_t token_id(const json& j, const char* key, int32_t fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  const json& v = j.at(key);
  if (v.is_array() && !v.empty() && v.front().is_number_integer()) return v.front().get<int32_t>();
  if (v.is_number_integer()) return v.get<int32_t>();
  fail(where, ": field \"", key, "\" must be an integer or a list of integers");
}

json read_json_file(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
}

json read_config(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  if (!fs::exists(config_path)) fail(dir, ": no config.json (expected an HF LLaMA or dha model directory)");
  return read_json_file(config_path);
}

std::map<std::string, std::string> shard_map(const std::string& dir) {
  const std::string index_path = dir + "/" + kIndexFile;
  const json index = read_json_file(index_path);
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path, ": \"weight_map\" object is missing");
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) fail(index_path, ": weight_map[\"", name, "\"] must be a file name");
    const std::string shard = file.get<std::string>();
    if (shard.find('/') != std::string::npos || shard.empty() || shard[0] == '.')
      fail(index_path, ": weight_map[\"", name, "\"] = \"", shard, "\" is not a plain file name");
    map[name] = shard;
  }
  return map;
}

}  // namespace

ModelConfig config_from_hf_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": expected a JSON object");
  const CheckpointFamily& family = config_family(j, where);
  if (optional_field<bool>(j, "mlp_bias", false, where))
    fail(where, ": mlp_bias is not supported (the MLP projections have no biases)");
  const std::string act = optional_field<std::string>(j, "hidden_act", "silu", where);
  if (act != "silu") fail(where, ": hidden_act \"", act, "\" is not supported (expected \"silu\")");

  ModelConfig c;
  c.attention_bias = family.attention_bias(j, where);
  c.dim = required<int64_t>(j, "hidden_size", where);
  c.hidden_dim = required<int64_t>(j, "intermediate_size", where);
  c.n_layers = required<int64_t>(j, "num_hidden_layers", where);
  c.n_heads = required<int64_t>(j, "num_attention_heads", where);
  c.vocab_size = required<int64_t>(j, "vocab_size", where);
  if (c.n_heads <= 0) fail(where, ": num_attention_heads must be positive");
  c.head_dim = optional_field<int64_t>(j, "head_dim", c.dim / c.n_heads, where);
  c.max_seq_len =
      optional_field<int64_t>(j, "max_position_embeddings", family.default_max_position_embeddings, where);
  c.norm_eps = optional_field<double>(j, "rms_norm_eps", 1e-6, where);
  c.tied_embeddings = optional_field<bool>(j, "tie_word_embeddings", false, where);
  c.bos_id = token_id(j, "bos_token_id", 1, where);
  c.eos_id = token_id(j, "eos_token_id", 2, where);

  // Sliding windows are never represented (docs/architecture.md, "Checkpoint
  // families"): the family refuses one that could mask a position.
  if (family.check_sliding_windows) family.check_sliding_windows(j, c, where);

  // RoPE: "rope_theta" + "rope_scaling" (transformers 4) or "rope_parameters"
  // (transformers 5, with rope_theta inside); rope_parameters wins, as in
  // configuration_dha.py. An original_max_position_embeddings beside them
  // overrides the one inside, as transformers' standardize_rope_params does.
  c.rope_theta = optional_field<double>(j, "rope_theta", 10000.0, where);
  if (optional_field<double>(j, "partial_rotary_factor", 1.0, where) != 1.0)
    fail(where, ": partial_rotary_factor ", j.at("partial_rotary_factor").dump(),
         " is not supported (every head dimension is rotated)");
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!j.contains(key) || j.at(key).is_null()) continue;
    json rope = j.at(key);
    if (!rope.is_object()) fail(where, ": \"", key, "\" must be an object");
    if (j.contains("original_max_position_embeddings") && !j.at("original_max_position_embeddings").is_null())
      rope["original_max_position_embeddings"] = j.at("original_max_position_embeddings");
    c.rope_scaling = rope_scaling_from_json(rope, c.max_seq_len, where + " (\"" + key + "\")");
    if (rope.contains("rope_theta")) c.rope_theta = required<double>(rope, "rope_theta", where);
  }

  if (j.contains("dha")) {
    c.layout = layout_from_json(j.at("dha"), where + " (\"dha\")");
  } else {
    const int64_t n_kv = optional_field<int64_t>(j, "num_key_value_heads", c.n_heads, where);
    if (n_kv <= 0 || n_kv > c.n_heads || c.n_heads % n_kv != 0)
      fail(where, ": num_key_value_heads ", n_kv, " must divide num_attention_heads ", c.n_heads);
    c.layout = HeadLayout::gqa(c.n_layers, c.n_heads, n_kv);
  }
  c.validate(where);
  return c;
}

json config_to_hf_json(const ModelConfig& c, DirFormat format, torch::ScalarType dtype) {
  const int64_t n_kv = c.layout.uniform_gqa_kv_heads();
  if (format == DirFormat::kHf && n_kv == 0)
    fail("an HF LLaMA directory holds only MHA/GQA layouts; this one (", describe_layout(c),
         ") needs the dha format or a gqa/mha export");
  const CheckpointFamily& family = written_family(c);
  const bool standard = n_kv != 0;
  json j = {
      {"architectures", {family.architecture}},
      {"model_type", family.name},
      {"hidden_size", c.dim},
      {"intermediate_size", c.hidden_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", standard ? n_kv : c.n_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tied_embeddings},
      {"hidden_act", "silu"},
      {"attention_bias", c.attention_bias},  // q/k/v, read by configuration_dha.py (qwen2 ignores it)
      {"mlp_bias", false},
      {"bos_token_id", c.bos_id},
      {"eos_token_id", c.eos_id},
      {"torch_dtype", dtype_name(dtype)},
  };
  if (c.rope_scaling.scaled()) j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);  // rope_theta beside it
  if (c.attention_bias) {  // biases are Qwen2's: say that no layer has its sliding window
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
  }
  if (format == DirFormat::kDha) {
    json dha = layout_to_json(c.layout);
    dha["format_version"] = 1;
    j["dha"] = dha;
  }
  return j;
}

ModelConfig load_hf_dir_config(const std::string& dir) {
  return config_from_hf_json(read_config(dir), dir + "/config.json");
}

torch::ScalarType hf_dir_storage_dtype(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  const json config = read_config(dir);
  const std::string embedding =
      config_family(config, config_path).checkpoint_name("model.embed_tokens.weight");
  if (fs::exists(dir + "/" + kSingleFile))
    return SafetensorsFile(dir + "/" + kSingleFile).entry(embedding).dtype;
  if (fs::exists(dir + "/" + kIndexFile)) {  // sharded: the shard that holds the embedding
    const auto files = shard_map(dir);
    const auto it = files.find(embedding);
    if (it == files.end()) fail(dir, "/", kIndexFile, ": weight_map has no entry for ", embedding);
    return SafetensorsFile(dir + "/" + it->second).entry(embedding).dtype;
  }
  // Only config.json (planning before the weights are downloaded): the dtype
  // the weights are published in.
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = config.find(key);
    if (it == config.end() || !it->is_string()) continue;
    const std::string name = it->get<std::string>();
    if (name == "bfloat16") return torch::kBFloat16;
    if (name == "float16") return torch::kFloat16;
    if (name == "float32") return torch::kFloat32;
    fail(config_path, ": ", key, " \"", name, "\" is not one of bfloat16, float16, float32");
  }
  return torch::kFloat32;
}

Checkpoint load_hf_dir(const std::string& dir) {
  const json config = read_config(dir);
  const CheckpointFamily& family = config_family(config, dir + "/config.json");
  Checkpoint checkpoint;
  checkpoint.config = config_from_hf_json(config, dir + "/config.json");

  std::map<std::string, std::string> files;  // tensor -> file
  if (fs::exists(dir + "/" + kIndexFile)) {
    files = shard_map(dir);
  } else if (fs::exists(dir + "/" + kSingleFile)) {
    SafetensorsFile single(dir + "/" + kSingleFile);
    for (const auto& name : single.names()) files[name] = kSingleFile;
  } else {
    fail(dir, ": neither model.safetensors nor model.safetensors.index.json is present",
         fs::exists(dir + "/pytorch_model.bin") ? " (pytorch_model.bin is not read: convert it to safetensors)" : "");
  }

  std::set<std::string> shards;
  for (const auto& [name, file] : files) shards.insert(file);
  bool have_dtype = false;
  for (const auto& file : shards) {
    SafetensorsFile st(dir + "/" + file);
    for (const auto& [name, owner] : files) {
      if (owner != file) continue;
      if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // old HF exports
      if (!st.contains(name)) fail(st.path(), ": tensor '", name, "' listed in the index is missing");
      // Views of the file's pages: a 7B model is not copied on load, and the
      // pages of weights a stage copies to fp32 can be handed back.
      torch::Tensor t = st.mapped_tensor(name);
      if (!have_dtype) checkpoint.storage_dtype = t.scalar_type(), have_dtype = true;
      checkpoint.tensors[family.canonical_name(name)] = std::move(t);
    }
  }
  check_tensors(checkpoint.config, checkpoint.tensors, dir);
  return checkpoint;
}

void save_hf_dir(const std::string& dir, const Checkpoint& checkpoint, const DirSaveOptions& options) {
  // Validate before creating anything.
  config_to_hf_json(checkpoint.config, options.format, options.dtype.value_or(checkpoint.storage_dtype));
  check_tensors(checkpoint.config, checkpoint.tensors, dir);
  StagedDirectory staged(dir, options.overwrite);
  write_hf_files(staged.path(), checkpoint, options);
  staged.commit();
}

void write_hf_files(const std::string& dir, const Checkpoint& checkpoint, const DirSaveOptions& options) {
  const ModelConfig& c = checkpoint.config;
  const torch::ScalarType dtype = options.dtype.value_or(checkpoint.storage_dtype);
  json config = config_to_hf_json(c, options.format, dtype);
  check_tensors(c, checkpoint.tensors, dir);
  const CheckpointFamily& family = written_family(c);
  auto file = [&](const std::string& name) { return dir + "/" + name; };
  if (options.format == DirFormat::kDha) {
    // transformers loads the directory with the code beside it (trust_remote_code=True).
    config["auto_map"] = {{"AutoConfig", "configuration_dha.DhaConfig"},
                          {"AutoModelForCausalLM", "modeling_dha.DhaForCausalLM"}};
    for (size_t i = 0; i < detail::kHfRemoteCodeCount; ++i)
      write_file_atomic(file(detail::kHfRemoteCode[i].name), detail::kHfRemoteCode[i].text);
  }
  write_file_atomic(file("config.json"), config.dump(2) + "\n");

  // Canonical order; shards are filled greedily up to max_shard_bytes.
  std::vector<NamedTensors> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& [name, shape] : expected_tensors(c)) {
    torch::Tensor t = checkpoint.tensors.at(name).to(torch::kCPU, dtype).contiguous();
    const int64_t bytes = t.numel() * t.element_size();
    if (options.max_shard_bytes > 0 && shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(family.checkpoint_name(name), std::move(t));
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    save_safetensors(file(kSingleFile), shards.front(), metadata);
  } else {
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      save_safetensors(file(name), shards[s], metadata);
      for (const auto& [tensor_name, t] : shards[s]) weight_map[tensor_name] = name;
    }
    const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomic(file(kIndexFile), index.dump(2) + "\n");
  }
  for (const auto& [source, name] : options.extra_files) {
    std::error_code error;
    fs::copy_file(source, file(name), fs::copy_options::overwrite_existing, error);
    if (error) fail(source, ": cannot copy into ", dir, " (", error.message(), ")");
  }
  if (options.tokenizer) options.tokenizer->write_files(dir);
}

}  // namespace dha::io
