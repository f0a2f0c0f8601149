#!/usr/bin/env python3
"""What each runtime keeps: KV bytes per token as the runtime allocates them,
and held-out NLL as the runtime computes it on the same token ids, for
converted models in three runtimes:

  dha           dha-eval (its own accounting, `kv_bytes_per_token` at bf16; the NLL
                it prints), which also writes the token ids it scored (--save-ids);
  transformers  AutoModelForCausalLM(trust_remote_code=True) on the converted
                directory (its configuration_dha.py / modeling_dha.py): NLL in
                float32 on those ids; KV bytes per token of its cache, filled by a
                bf16 load of the model with the longest document;
  llama.cpp     `dha-export --format gguf --dtype f32`, run by llama-cpp-python
                (tests/llama_cpp_check.py): NLL on those ids; KV bytes per token
                from its "llama_kv_cache_unified: size" log line (f16 cache), and
                checked against the per-token growth of its sequence state.

usage: scripts/experiments/runtimes_table.py [NAME=MODEL_DIR ...] [--heldout TEXT] [--work DIR]
  default models: dha and per-layer-gqa from scripts/experiments/layouts_demo.sh
  (build/experiments/layouts/{dha,per-layer-gqa}), held-out text its heldout.txt.
Prints a markdown table (and writes it to WORK/runtimes.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("DHA_BUILD_DIR", os.path.join(ROOT, "build"))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def run(command, log):
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = open(log).read()[-3000:]
        sys.exit(f"runtimes_table.py: failed: {' '.join(command)}\n{tail}")


def dha_runtime(model, heldout, work):
    ids_path = os.path.join(work, "ids.json")
    log = os.path.join(work, "dha-eval.log")
    run([os.path.join(BUILD, "dha-eval"), "--model", model, "--text", heldout, "--json", "--save-ids", ids_path], log)
    result = json.loads(open(log).read().strip().splitlines()[-1])
    return {"kv": result["kv_bytes_per_token"], "nll": result["mean_nll"], "tokens": result["tokens"]}, ids_path


TRANSFORMERS_SIDE = r'''
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, DynamicCache
model_dir, ids_path, out_path = sys.argv[1:4]
v5 = int(transformers.__version__.split(".")[0]) >= 5
def load(dtype):
    kw = {"dtype": dtype} if v5 else {"torch_dtype": dtype}
    m = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, **kw).eval()
    m.set_attention_backend("torch")
    return m
docs = json.load(open(ids_path))
model = load(torch.float32)
total, tokens = 0.0, 0
with torch.no_grad():
    for ids in docs:
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        total -= logp.gather(-1, x[0, 1:, None]).sum().item()
        tokens += len(ids) - 1
bf16 = load(torch.bfloat16)
longest = max(docs, key=len)
cache = DynamicCache()
with torch.no_grad():
    bf16(torch.tensor([longest]), past_key_values=cache, use_cache=True)
length = bf16.kv_cache_length(cache)
json.dump({"nll": total / tokens, "tokens": tokens, "kv": bf16.kv_cache_bytes(cache) / length,
           "cache_length": length, "class": type(model).__name__, "transformers": transformers.__version__},
          open(out_path, "w"))
'''


def transformers_runtime(model, ids_path, work):
    script = os.path.join(work, "transformers_side.py")
    open(script, "w").write(TRANSFORMERS_SIDE)
    out = os.path.join(work, "transformers.json")
    env = dict(os.environ, HF_MODULES_CACHE=os.path.join(work, "hf_modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    with open(os.path.join(work, "transformers.log"), "w") as f:
        done = subprocess.run([PYTHON, script, model, ids_path, out], stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit("runtimes_table.py: transformers failed:\n" + open(os.path.join(work, "transformers.log")).read()[-3000:])
    return json.load(open(out))


def llama_cpp_runtime(model, ids_path, work):
    gguf = os.path.join(work, "model.gguf")
    run([os.path.join(BUILD, "dha-export"), "--model", model, "--format", "gguf", "--dtype", "f32", "--out", gguf,
         "--force"], os.path.join(work, "dha-export.log"))
    request = os.path.join(work, "llama_request.json")
    n_ctx = 4096  # a large cache, so that the MiB of its log line are precise
    json.dump({"n_ctx": n_ctx, "docs": json.load(open(ids_path))}, open(request, "w"))
    out = os.path.join(work, "llama_result.json")
    run([PYTHON, os.path.join(ROOT, "tests", "llama_cpp_check.py"), gguf, request, out],
        os.path.join(work, "llama_cpp.log"))
    r = json.load(open(out))
    kv = r["kv_cache"]
    logged = (kv["k_mib"] + kv["v_mib"]) * 1024 * 1024 / kv["cells"]
    nll = sum(d["nll_sum"] for d in r["docs"]) / sum(d["tokens"] for d in r["docs"])
    return {"nll": nll, "tokens": sum(d["tokens"] for d in r["docs"]), "kv": logged,
            "kv_state": r["kv_state_bytes_per_token"], "n_head_kv": r["n_head_kv"], "arch": r["arch"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="NAME=MODEL_DIR (converted dha directories)")
    layouts = os.path.join(ROOT, "build", "experiments", "layouts")
    parser.add_argument("--heldout", default=os.path.join(layouts, "heldout.txt"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "experiments", "runtimes"))
    args = parser.parse_args()
    models = [m.split("=", 1) for m in args.models] or [
        ("dha", os.path.join(layouts, "dha")), ("per-layer-gqa", os.path.join(layouts, "per-layer-gqa"))]
    for name, path in models:
        if not os.path.isfile(os.path.join(path, "config.json")):
            sys.exit(f"runtimes_table.py: {path} is not a model directory (run scripts/experiments/layouts_demo.sh first)")
    if not os.path.isfile(args.heldout):
        sys.exit(f"runtimes_table.py: {args.heldout}: no held-out text")
    rows = []
    for name, path in models:
        work = os.path.join(args.work, name)
        os.makedirs(work, exist_ok=True)
        print(f"runtimes_table.py: {name}: dha-eval", file=sys.stderr)
        dha, ids_path = dha_runtime(path, args.heldout, work)
        print(f"runtimes_table.py: {name}: transformers", file=sys.stderr)
        hf = transformers_runtime(path, ids_path, work)
        print(f"runtimes_table.py: {name}: llama.cpp", file=sys.stderr)
        cpp = llama_cpp_runtime(path, ids_path, work)
        if not (dha["tokens"] == hf["tokens"] == cpp["tokens"]):
            sys.exit(f"runtimes_table.py: {name}: token counts differ: {dha['tokens']} {hf['tokens']} {cpp['tokens']}")
        if abs(cpp["kv"] - cpp["kv_state"]) > 0.5:
            print(f"runtimes_table.py: {name}: llama.cpp's log line gives {cpp['kv']:.1f} bytes/token, its state "
                  f"growth {cpp['kv_state']:.1f}", file=sys.stderr)
        rows.append(f"| {name} | dha (dha-eval) | {dha['kv']} | {dha['nll']:.4f} |")
        rows.append(f"| {name} | transformers {hf['transformers']} (remote code, {hf['class']}) | {hf['kv']:.0f} | {hf['nll']:.4f} |")
        rows.append(f"| {name} | llama.cpp (GGUF `{cpp['arch']}`, KV heads {cpp['n_head_kv']}) | {cpp['kv']:.0f} | {cpp['nll']:.4f} |")
    lines = [f"same token ids in every runtime: {dha['tokens']} predicted tokens of {args.heldout}", "",
             "| layout | runtime | KV bytes/token (16-bit cache) | held-out NLL |", "|---|---|---:|---:|"] + rows
    text = "\n".join(lines) + "\n"
    os.makedirs(args.work, exist_ok=True)
    open(os.path.join(args.work, "runtimes.md"), "w").write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
