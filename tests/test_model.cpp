// The model: KV-cache decoding equals the full forward pass, the cache holds
// exactly H_K + H_V heads per layer, GQA equals its expanded MHA twin, and
// checkpoints with missing/extra/mis-shaped tensors are refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dha/error.h"
#include "dha/model.h"
#include "model_fixtures.h"

using dha::test::random_checkpoint;
using dha::test::random_tokens;

namespace {

void expect_cache_matches_full_forward(const dha::ModelConfig& config) {
  torch::NoGradGuard no_grad;
  dha::Llama model = dha::make_model(random_checkpoint(config, 3), "random");
  const int64_t batch = 2, length = 13;
  const torch::Tensor tokens = random_tokens(batch, length, config.vocab_size, 4);
  const torch::Tensor full = model->forward(tokens);

  // Prefill 5 tokens, then decode one at a time, then a chunk of 3.
  dha::KVCache cache = model->make_cache(batch, config.max_seq_len, torch::kFloat32);
  std::vector<torch::Tensor> pieces{model->forward(tokens.narrow(1, 0, 5), &cache)};
  for (int64_t t = 5; t < 10; ++t) pieces.push_back(model->forward(tokens.narrow(1, t, 1), &cache));
  pieces.push_back(model->forward(tokens.narrow(1, 10, 3), &cache));
  const torch::Tensor incremental = torch::cat(pieces, 1);
  EXPECT_EQ(cache.length, length);
  EXPECT_TRUE(torch::allclose(incremental, full, 1e-4, 1e-5))
      << "max abs diff " << (incremental - full).abs().max().item<double>();
}

}  // namespace

TEST(Model, KvCacheDecodingEqualsFullForwardMha) {
  expect_cache_matches_full_forward(dha::test::tiny_config());
}

TEST(Model, KvCacheDecodingEqualsFullForwardDecoupledLayout) {
  expect_cache_matches_full_forward(dha::test::tiny_dha_config(/*tied=*/true));
}

TEST(Model, KvCacheStoresOnlyTheLayoutsHeads) {
  const dha::ModelConfig config = dha::test::tiny_dha_config();
  dha::Llama model(config);
  const int64_t batch = 3, capacity = 20;
  const dha::KVCache cache = model->make_cache(batch, capacity, torch::kBFloat16);
  int64_t heads = 0;
  for (int64_t l = 0; l < config.n_layers; ++l) {
    EXPECT_EQ(cache.k[l].size(1), config.layout.n_k_heads(l));
    EXPECT_EQ(cache.v[l].size(1), config.layout.n_v_heads(l));
    heads += config.layout.n_k_heads(l) + config.layout.n_v_heads(l);
  }
  EXPECT_EQ(heads, 2 + 1 + 3 + 3);
  // docs/method.md invariant 5: bytes == sum_l (H_K + H_V) * d_h * T * bytes (per sequence).
  EXPECT_EQ(cache.bytes(), heads * config.head_dim * capacity * batch * 2);
  EXPECT_EQ(cache.bytes(), config.kv_bytes_per_token(2) * capacity * batch);
}

TEST(Model, GqaEqualsItsExpandedMhaTwin) {
  // Copying each shared K/V head to the query heads that read it gives an MHA
  // model computing the same function.
  torch::NoGradGuard no_grad;
  dha::ModelConfig gqa = dha::test::tiny_config();
  gqa.layout = dha::HeadLayout::gqa(gqa.n_layers, gqa.n_heads, 2);
  const dha::Checkpoint source = random_checkpoint(gqa, 5);
  dha::Checkpoint twin = source;
  twin.config.layout = dha::HeadLayout::mha(gqa.n_layers, gqa.n_heads);
  for (int64_t l = 0; l < gqa.n_layers; ++l) {
    for (const char* proj : {"k_proj", "v_proj"}) {
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn." + proj + ".weight";
      const torch::Tensor w = source.tensors.at(name).view({2, gqa.head_dim, gqa.dim});
      twin.tensors[name] = w.repeat_interleave(2, 0).reshape({gqa.n_heads * gqa.head_dim, gqa.dim});
    }
  }
  const torch::Tensor tokens = random_tokens(2, 9, gqa.vocab_size, 6);
  const torch::Tensor a = dha::make_model(source, "gqa")->forward(tokens);
  const torch::Tensor b = dha::make_model(twin, "mha")->forward(tokens);
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6));
}

TEST(Model, TiedClassifierUsesTheEmbedding) {
  torch::NoGradGuard no_grad;
  const dha::Checkpoint ck = random_checkpoint(dha::test::tiny_config(/*tied=*/true), 8);
  EXPECT_EQ(ck.tensors.count("lm_head.weight"), 0u);
  dha::Llama model = dha::make_model(ck, "tied");
  EXPECT_FALSE(model->lm_head);
  EXPECT_EQ(model->state().size(), ck.tensors.size());
}

TEST(Model, ContextOverflowIsAnError) {
  const dha::ModelConfig config = dha::test::tiny_config();
  dha::Llama model = dha::make_model(random_checkpoint(config, 1), "random");
  EXPECT_THROW(model->forward(random_tokens(1, config.max_seq_len + 1, config.vocab_size, 2)), dha::Error);
}

TEST(Model, CheckpointWithMissingTensorIsRefused) {
  dha::Checkpoint ck = random_checkpoint(dha::test::tiny_config(), 1);
  ck.tensors.erase("model.layers.1.mlp.up_proj.weight");
  try {
    dha::make_model(ck, "ckpt");
    FAIL();
  } catch (const dha::Error& e) {
    EXPECT_STREQ(e.what(), "ckpt: tensor 'model.layers.1.mlp.up_proj.weight' is missing");
  }
}

TEST(Model, CheckpointWithMisShapedTensorIsRefused) {
  dha::Checkpoint ck = random_checkpoint(dha::test::tiny_dha_config(), 1);
  ck.tensors["model.layers.0.self_attn.k_proj.weight"] = torch::zeros({32, 32});
  try {
    dha::make_model(ck, "ckpt");
    FAIL();
  } catch (const dha::Error& e) {
    EXPECT_STREQ(e.what(),
                 "ckpt: tensor 'model.layers.0.self_attn.k_proj.weight' has shape [32, 32] but the "
                 "config implies [16, 32]");
  }
}

TEST(Model, CheckpointWithUnexpectedTensorIsRefused) {
  dha::Checkpoint ck = random_checkpoint(dha::test::tiny_config(/*tied=*/true), 1);
  ck.tensors["lm_head.weight"] = torch::zeros({61, 32});
  EXPECT_THROW(dha::make_model(ck, "ckpt"), dha::Error);
}

// The converter's instruments are given per forward and kept by no one: K/V
// weights equal to a layer's own reproduce its logits (others change them, in
// that layer only), and an observer sees each layer's keys before RoPE and
// values as the projections compute them.
TEST(Model, ForwardOptionsAreUsedForThatForwardOnly) {
  const dha::Checkpoint ck = random_checkpoint(dha::test::tiny_dha_config(), 31);
  dha::Llama model = dha::make_model(ck, "model");
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = random_tokens(2, 9, ck.config.vocab_size, 3);
  const torch::Tensor plain = model->forward(tokens);

  std::vector<dha::KVWeights> own(ck.config.n_layers);
  for (int64_t l = 0; l < ck.config.n_layers; ++l) {
    own[l].k_weight = ck.tensors.at(dha::projection_name(l, "k_proj"));
    own[l].v_weight = ck.tensors.at(dha::projection_name(l, "v_proj"));
  }
  dha::ForwardOptions with_own;
  with_own.kv_weights = &own;
  EXPECT_TRUE(torch::allclose(model->forward(tokens, with_own), plain, 1e-6, 1e-6));

  std::vector<dha::KVWeights> scaled = own;
  scaled[1].v_weight = own[1].v_weight * 2.0;
  dha::ForwardOptions with_scaled;
  with_scaled.kv_weights = &scaled;
  EXPECT_FALSE(torch::allclose(model->forward(tokens, with_scaled), plain, 1e-4, 1e-4));
  EXPECT_TRUE(torch::equal(model->forward(tokens), plain)) << "nothing stays with the model";

  struct Seen : dha::AttentionObserver {
    std::vector<torch::Tensor> keys, values;
    bool wants_keys_and_values(int64_t) const override { return true; }
    void keys_and_values(int64_t, const torch::Tensor& k, const torch::Tensor& v) override {
      keys.push_back(k), values.push_back(v);
    }
  } seen;
  dha::ForwardOptions observed;
  observed.observer = &seen;
  EXPECT_TRUE(torch::equal(model->forward(tokens, observed), plain));
  ASSERT_EQ(seen.keys.size(), static_cast<size_t>(ck.config.n_layers));
  // Layer 0's keys: its k_proj of the normed embedding, [B, H_K, T, d_h].
  auto& layer0 = *model->model->layers[0]->as<dha::DecoderLayer>();
  const torch::Tensor x = layer0.input_layernorm(model->model->embed_tokens(tokens));
  const int64_t hk = ck.config.layout.n_k_heads(0), d_h = ck.config.head_dim;
  const torch::Tensor want = layer0.self_attn->k_proj(x).view({2, 9, hk, d_h}).transpose(1, 2);
  EXPECT_TRUE(torch::allclose(seen.keys[0], want, 1e-6, 1e-6));
  EXPECT_EQ(seen.values[1].size(1), ck.config.layout.n_v_heads(1));
}
