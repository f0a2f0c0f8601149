"""The checkpoints users bring: random-weight Llama 3.x (RoPE scaling "llama3", "linear",
rope_theta 500000), Qwen2 (q/k/v biases, tied and untied) and Mistral (sliding window
off, or not below the context) models written by transformers' own classes and
save_pretrained, for tests/test_model_families.cpp; and the check that transformers
reads the directories dha writes back to the logits dha computes.

usage:
  model_families.py write OUT_DIR
      For every case of CASES: OUT_DIR/<name>/ (config.json + model.safetensors, fp32)
      and, for the cases dha accepts, OUT_DIR/<name>.expected.safetensors with
      "tokens" [B, T] (float32 ids), "logits" [B, T, V] (transformers' fp32 forward)
      and "inv_freq" [d_h / 2] (the model's rotary inverse frequencies).
  model_families.py check MANIFEST.json
      MANIFEST: [{"dir": D, "expected": E}, ...], E as above (from dha). Loads each D
      with AutoModelForCausalLM (trust_remote_code for a dha directory) in fp32 and
      requires its logits within 1e-5 of E's.
Prints one line per case or check; exits 0 when every check passes, 1 otherwise.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
TOLERANCE = 1e-5
VOCAB = 512  # stories260K's tok512.bin tokenizes the calibration text for dha-convert

failures = []


def report(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def rope_kwargs(theta, scaling):
    """transformers 5 takes rope_parameters (with rope_theta); 4 takes rope_theta + rope_scaling."""
    if TRANSFORMERS_5:
        return {"rope_parameters": dict(scaling or {"rope_type": "default"}, rope_theta=theta)}
    return {"rope_theta": theta, "rope_scaling": scaling}


def shape(n_layers=2, n_heads=4, n_kv=2, head_dim=16, context=128):
    # Weights N(0, 0.1^2): logits of a few units, so that fp32 rounding (about 3e-6 here:
    # transformers' fp32 forward against its own fp64 one) stays well below the 1e-5
    # tolerance, while the RoPE scaling and the biases move the logits by units.
    return dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=head_dim,
                max_position_embeddings=context, rms_norm_eps=1e-5, initializer_range=0.1)


# Llama 3.1's own factors; with head_dim 16 and theta 500000 the wavelengths are
# 6.3, 32, 167, ...: one kept (< 64 / 4), one blended, the rest slowed by 8.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def cases():
    """name -> (model class, config, sequence length of the logits, dha accepts it)."""
    out = {}
    out["llama3"] = (LlamaForCausalLM, LlamaConfig(**shape(context=256), **rope_kwargs(500000.0, LLAMA3)), 200, True)
    out["llama-linear"] = (LlamaForCausalLM, LlamaConfig(**shape(n_kv=4), tie_word_embeddings=True,
                                                         **rope_kwargs(500000.0, {"rope_type": "linear", "factor": 4.0})),
                           128, True)
    # Qwen2: q/k/v biases; MHA with 3 layers of 8 heads, so that a searched budget gives
    # unequal pools and the gqa export re-lays heads (and their biases) out.
    out["qwen2"] = (Qwen2ForCausalLM, Qwen2Config(**shape(n_layers=3, n_heads=8, n_kv=8, head_dim=8),
                                                  **rope_kwargs(1000000.0, None)), 128, True)
    out["qwen2-tied"] = (Qwen2ForCausalLM, Qwen2Config(**shape(), tie_word_embeddings=True,
                                                       **rope_kwargs(10000.0, None)), 128, True)
    out["mistral"] = (MistralForCausalLM, MistralConfig(**shape(), sliding_window=None, **rope_kwargs(10000.0, None)),
                      128, True)
    # A window of the whole context never masks anything: logits over all 128 positions.
    out["mistral-window"] = (MistralForCausalLM, MistralConfig(**shape(), sliding_window=128,
                                                               **rope_kwargs(10000.0, None)), 128, True)
    # What dha refuses, each with one clear line.
    out["refuse-yarn"] = (LlamaForCausalLM, LlamaConfig(**shape(), **rope_kwargs(10000.0, {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})), 0, False)
    out["refuse-dynamic"] = (LlamaForCausalLM, LlamaConfig(**shape(), **rope_kwargs(10000.0, {
        "rope_type": "dynamic", "factor": 2.0})), 0, False)
    out["refuse-mistral-window"] = (MistralForCausalLM, MistralConfig(**shape(), sliding_window=16,
                                                                      **rope_kwargs(10000.0, None)), 0, False)
    out["refuse-qwen2-window"] = (Qwen2ForCausalLM, Qwen2Config(**shape(), use_sliding_window=True, sliding_window=16,
                                                                max_window_layers=1, **rope_kwargs(10000.0, None)),
                                  0, False)
    out["refuse-llama-o-bias"] = (LlamaForCausalLM, LlamaConfig(**shape(), attention_bias=True,
                                                                **rope_kwargs(10000.0, None)), 0, False)
    return out


def randomise(model, seed):
    """Visible biases and norms: transformers initialises them to 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith(".bias"):
                p.copy_(0.5 * noise)
            elif "norm" in name:
                p.add_(0.1 * noise)


def write(out_dir):
    for seed, (name, (model_class, config, length, accepted)) in enumerate(cases().items()):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        randomise(model, seed)
        model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
        if not accepted:
            print(f"wrote {name} (dha refuses it)")
            continue
        tokens = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            logits = model(tokens).logits.float()
        save_file({"tokens": tokens.float(), "logits": logits.contiguous(),
                   "inv_freq": model.model.rotary_emb.inv_freq.float().contiguous()},
                  os.path.join(out_dir, name + ".expected.safetensors"))
        print(f"wrote {name}: {model_class.__name__}, logits {list(logits.shape)}")


def check(manifest_path):
    for entry in json.load(open(manifest_path)):
        model_dir, expected = entry["dir"], load_file(entry["expected"])
        config = json.load(open(os.path.join(model_dir, "config.json")))
        remote = "auto_map" in config
        kwargs = {"dtype": torch.float32} if TRANSFORMERS_5 else {"torch_dtype": torch.float32}
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=remote, **kwargs).eval()
        if remote:
            model.set_attention_backend("torch")
        with torch.no_grad():
            logits = model(expected["tokens"].to(torch.int64)).logits
        diff = (logits - expected["logits"]).abs().max().item()
        report(diff < TOLERANCE, f"{model_dir}: {type(model).__name__} ({config['model_type']}) logits vs dha: "
                                 f"max abs difference {diff:.3e} (< {TOLERANCE:g})")
        if remote and config["model_type"] in transformers.CONFIG_MAPPING:
            # A GQA layout in a dha directory is written as transformers' own model.
            plain = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, **kwargs).eval()
            with torch.no_grad():
                diff = (plain(expected["tokens"].to(torch.int64)).logits - expected["logits"]).abs().max().item()
            report(diff < TOLERANCE, f"{model_dir}: {type(plain).__name__} logits vs dha: "
                                     f"max abs difference {diff:.3e} (< {TOLERANCE:g})")


def main():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        print(__doc__)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
