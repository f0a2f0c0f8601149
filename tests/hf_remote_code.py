"""Checks of the transformers remote code that every dha directory carries
(configuration_dha.py + modeling_dha.py, from python/dha_hf/, embedded in libdha).

usage:
  hf_remote_code.py check MODEL_DIR EXPECTED.safetensors [LIBDHA]
      MODEL_DIR: a dha directory written by dha. EXPECTED (from dha, C++) holds
      "tokens" [B, T] and "logits" [B, T, V]; "prompt" [1, P] and "greedy" [N], the
      ids dha's greedy KV-cache generation continues the prompt with, and "step_logits"
      [N, V], the logits each of them was chosen from; "kv_heads"
      [L, 2], the key and value heads of each layer of dha's KV cache; and
      "kv_bytes_per_token" [1], dha's accounting at 4 bytes per element.
      Loads MODEL_DIR with AutoModelForCausalLM(trust_remote_code=True) in float32 and
      requires: logits within 1e-5, generate() (greedy, 20 tokens) = dha's ids and
      its per-step logits within 1e-5, a KV
      cache holding exactly H_K[l] / H_V[l] heads per layer and kv_bytes_per_token * T
      bytes; then saves the model with save_pretrained to MODEL_DIR-saved. With LIBDHA:
      names it in MODEL_DIR/dha_library.txt and requires the reloaded model to run
      torch.ops.dha.grouped_attention, with the plain path's logits and generation.
  hf_remote_code.py rope MODEL_DIR
      RoPE scaling ("linear", "llama3") and q/k/v biases against transformers' own
      models: small random transformers LlamaForCausalLM / Qwen2ForCausalLM models
      rewritten as dha directories (plain GQA maps, MODEL_DIR's .py files) must give
      transformers' own logits (1e-4) and greedy generation.
Every check prints one line; exits 0 when all pass, 1 otherwise.
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
REMOTE_FILES = ("configuration_dha.py", "modeling_dha.py")
failures = []


def report(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def dtype_kwargs(dtype):
    return {"dtype": dtype} if TRANSFORMERS_5 else {"torch_dtype": dtype}


def load_remote(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, **dtype_kwargs(torch.float32))
    return model.eval()


def greedy_generate(model, prompt, n):
    """generate(): greedy, exactly n new tokens (no end-of-sequence stop, as the C++ loop)."""
    # A stop id past the vocabulary: generation never ends early, the logits stay untouched.
    never = model.config.vocab_size + 7
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                         eos_token_id=never, pad_token_id=never, return_dict_in_generate=True, output_logits=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return out.sequences[0, prompt.shape[1]:], torch.cat(out.logits, dim=0), cache


def check(model_dir, expected_path, library):
    expected = load_file(expected_path)
    tokens = expected["tokens"].to(torch.int64)
    model = load_remote(model_dir)
    report(type(model).__name__ in ("DhaForCausalLM", "DhaLlamaForCausalLM"),
           f"AutoModelForCausalLM gives {type(model).__name__}")
    model.set_attention_backend("torch")
    with torch.no_grad():
        logits = model(tokens).logits
    diff = (logits - expected["logits"]).abs().max().item()
    report(diff < 1e-5, f"logits vs dha: max abs difference {diff:.3e} (< 1e-5)")

    if json.load(open(os.path.join(model_dir, "config.json")))["model_type"] == "llama":
        # A plain GQA layout is also an HF LLaMA directory: transformers' own model agrees.
        from transformers import LlamaForCausalLM

        llama = LlamaForCausalLM.from_pretrained(model_dir, **dtype_kwargs(torch.float32)).eval()
        with torch.no_grad():
            diff = (llama(tokens).logits - logits).abs().max().item()
        report(diff < 1e-5, f"logits vs transformers LlamaForCausalLM: max abs difference {diff:.3e} (< 1e-5)")

    prompt = expected["prompt"].to(torch.int64)
    want = expected["greedy"].to(torch.int64)
    with torch.no_grad():
        got, steps, cache = greedy_generate(model, prompt, want.numel())
    report(torch.equal(got, want), f"generate() greedy {got.tolist()} vs dha {want.tolist()}")
    diff = (steps - expected["step_logits"]).abs().max().item() if steps.shape == expected["step_logits"].shape else 1e9
    report(diff < 1e-5, f"generate() per-step logits (KV cache) vs dha: max abs difference {diff:.3e} (< 1e-5)")

    # The same steps by hand: a DynamicCache, no attention mask, no position ids.
    from transformers import DynamicCache

    manual = DynamicCache()
    with torch.no_grad():
        rows = [model(prompt, past_key_values=manual, use_cache=True).logits[0, -1]]
        for token in want[:-1].tolist():
            rows.append(model(torch.tensor([[token]]), past_key_values=manual, use_cache=True).logits[0, -1])
    diff = (torch.stack(rows) - expected["step_logits"]).abs().max().item()
    report(diff < 1e-5, f"forward() step by step with a DynamicCache vs dha: max abs difference {diff:.3e} (< 1e-5)")

    heads = [tuple(h) for h in expected["kv_heads"].to(torch.int64).tolist()]
    got_heads = model.kv_cache_heads(cache)
    report(got_heads == heads, f"KV cache heads per layer (H_K, H_V) {got_heads} vs dha {heads}")
    length = model.kv_cache_length(cache)
    per_token = int(expected["kv_bytes_per_token"].item())
    cache_bytes = model.kv_cache_bytes(cache)
    report(cache_bytes == per_token * length and model.kv_bytes_per_token(4) == per_token,
           f"KV cache bytes {cache_bytes} for {length} positions vs dha's {per_token} bytes/token x {length}")

    # A left-padded batch: the padded row's real positions match the row alone.
    t = tokens.shape[1]
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.int64), tokens[:1, : t - pad]], dim=1)
    batch = torch.cat([padded, tokens[1:2]], dim=0)
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model(batch, attention_mask=mask, position_ids=position_ids).logits
    diff = max((out[0, pad:] - expected["logits"][0, : t - pad]).abs().max().item(),
               (out[1] - expected["logits"][1]).abs().max().item())
    report(diff < 1e-5, f"left-padded batch vs dha: max abs difference {diff:.3e} (< 1e-5)")

    if not library:
        # A directory written back by transformers: dha reads it (the C++ test compares).
        model.save_pretrained(model_dir + "-saved")
    else:
        # libdha named next to the model: loaded and used without any call by the user.
        with open(os.path.join(model_dir, "dha_library.txt"), "w") as f:
            f.write(library + "\n")
        model = load_remote(model_dir)
        report(model.attention_backend() == "op", "dha_library.txt beside the model: torch.ops.dha.grouped_attention is used")
        model.set_attention_backend("op")
        with torch.no_grad(), torch.profiler.profile() as profile:
            op_logits = model(tokens).logits
        calls = sum(event.name == "dha::grouped_attention" for event in profile.events())
        layers = sum(not (model.config.shares_attention(l) or
                          (l + 1 < model.config.num_hidden_layers and model.config.shares_attention(l + 1)))
                     for l in range(model.config.num_hidden_layers))
        report(calls == layers, f"the profiler saw {calls} dha::grouped_attention calls for {layers} layers")
        with torch.no_grad():
            op_got, op_steps, _ = greedy_generate(model, prompt, want.numel())
        diff = (op_logits - logits).abs().max().item()
        report(diff < 1e-6, f"op path vs plain path: max abs logit difference {diff:.3e} (< 1e-6)")
        diff = (op_logits - expected["logits"]).abs().max().item()
        report(diff < 1e-5, f"op path vs dha: max abs difference {diff:.3e} (< 1e-5)")
        report(torch.equal(op_got, want), f"op path generate() {op_got.tolist()} vs dha {want.tolist()}")
        diff = (op_steps - steps).abs().max().item()
        report(diff < 1e-6, f"op path vs plain path: per-step generate() logits differ by {diff:.3e} (< 1e-6)")


# ---- RoPE scaling and biases against transformers' own models ----------------------------


def rope_config_kwargs(theta, scaling):
    """transformers 5 takes rope_parameters (with rope_theta); 4 takes rope_theta + rope_scaling."""
    if TRANSFORMERS_5:
        return {"rope_parameters": dict(scaling, rope_theta=theta)}
    return {"rope_theta": theta, "rope_scaling": scaling if scaling["rope_type"] != "default" else None}


def as_dha_dir(hf_dir, out_dir, code_dir, attention_bias, ablate=False):
    """hf_dir's weights with a dha config.json (plain GQA maps, auto_map) and the remote code.
    ablate: without the RoPE scaling and the biases (a model that must differ)."""
    src = json.load(open(os.path.join(hf_dir, "config.json")))
    n_layers, n_heads = src["num_hidden_layers"], src["num_attention_heads"]
    group = n_heads // src["num_key_value_heads"]
    row = [i // group for i in range(n_heads)]
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "rope_scaling", "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id")
    config = {k: src[k] for k in keep if k in src}
    config.update({
        "model_type": "dha_llama",
        "architectures": ["DhaForCausalLM"],
        "attention_bias": attention_bias,
        "dha": {"k_map": [row] * n_layers, "v_map": [row] * n_layers, "format_version": 1},
        "auto_map": {"AutoConfig": "configuration_dha.DhaConfig", "AutoModelForCausalLM": "modeling_dha.DhaForCausalLM"},
    })
    if ablate:
        for key in ("rope_scaling", "rope_parameters"):
            config.pop(key, None)
        config["rope_theta"] = src.get("rope_theta", src.get("rope_parameters", {}).get("rope_theta"))
        config["attention_bias"] = False
    os.makedirs(out_dir)
    json.dump(config, open(os.path.join(out_dir, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(hf_dir, "model.safetensors"), out_dir)
    for name in REMOTE_FILES:
        shutil.copy(os.path.join(code_dir, name), out_dir)


def compare_with_transformers(name, model_class, config, code_dir, work, attention_bias):
    torch.manual_seed(0)
    reference = model_class(config).eval()
    with torch.no_grad():
        for p in reference.parameters():  # visible biases and norms, not the zero/one defaults
            p.add_(0.05 * torch.randn_like(p))
    hf_dir, dha_dir = os.path.join(work, name + "-hf"), os.path.join(work, name + "-dha")
    reference.save_pretrained(hf_dir)
    as_dha_dir(hf_dir, dha_dir, code_dir, attention_bias)
    model = load_remote(dha_dir)
    model.set_attention_backend("torch")
    tokens = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(tokens).logits, model(tokens).logits
    diff = (want - got).abs().max().item()
    report(diff < 1e-4, f"{name}: logits vs transformers {model_class.__name__}: max abs difference {diff:.3e} (< 1e-4)")
    # The same weights without the scaling and biases must not pass: the check sees them.
    as_dha_dir(hf_dir, dha_dir + "-ablated", code_dir, attention_bias, ablate=True)
    with torch.no_grad():
        diff = (want - load_remote(dha_dir + "-ablated")(tokens).logits).abs().max().item()
    report(diff > 1e-2, f"{name}: without its RoPE scaling/biases the logits differ by {diff:.3e} (> 1e-2)")
    prompt = tokens[:1, :6]
    never = config.vocab_size + 7
    with torch.no_grad():
        kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                      eos_token_id=never, pad_token_id=never)
        want, got = reference.generate(prompt, **kwargs), model.generate(prompt, **kwargs)
    report(torch.equal(want, got), f"{name}: generate() greedy equals transformers' ({got[0, 6:].tolist()})")


def rope(model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5)
    # llama3 with these numbers has all three regimes: head_dim 16, theta 10000 gives wavelengths
    # from 6.3 up; high_freq_wavelen = 16 / 2 = 8 and low_freq_wavelen = 16 / 0.5 = 32.
    llama3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 0.5, "high_freq_factor": 2.0,
              "original_max_position_embeddings": 16}
    linear = {"rope_type": "linear", "factor": 3.0}
    with tempfile.TemporaryDirectory() as work:
        for name, scaling in (("llama-llama3", llama3), ("llama-linear", linear)):
            config = LlamaConfig(**shape, tie_word_embeddings=False, **rope_config_kwargs(10000.0, scaling))
            compare_with_transformers(name, LlamaForCausalLM, config, model_dir, work, attention_bias=False)
        for name, scaling, tied in (("qwen2-bias-linear", linear, True),
                                    ("qwen2-bias", {"rope_type": "default"}, False)):
            config = Qwen2Config(**shape, tie_word_embeddings=tied, **rope_config_kwargs(1e6, scaling))
            compare_with_transformers(name, Qwen2ForCausalLM, config, model_dir, work, attention_bias=True)


def main():
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    if len(sys.argv) >= 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif len(sys.argv) == 3 and sys.argv[1] == "rope":
        rope(sys.argv[2])
    else:
        print(__doc__)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
