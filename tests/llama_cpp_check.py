"""Runs a GGUF file in llama.cpp (llama-cpp-python) for tests/test_llama_cpp.cpp.

usage: llama_cpp_check.py MODEL.gguf REQUEST.json RESULT.json

REQUEST: {"n_ctx": N, "n_batch": B (512), "threads": T (2),
          "docs": [[ids], ...],      token ids to score (each scored from its 2nd token on),
          "tokenize": ["text", ...], texts for llama.cpp's tokenizer (BOS added as the file says),
          "score_tokenized": bool,   also score the ids of "tokenize" (appended to "docs"),
          "generate": {"prompt": "text" or [ids], "n": 40}}  greedy continuation}
RESULT:  {"arch", "n_head": [per layer], "n_head_kv": [per layer],
          "kv_cache": {"cells", "layers", "k_type", "v_type", "k_mib", "v_mib"}  (llama.cpp's log line),
          "kv_state_bytes_per_token": exact, from llama_state_seq_get_size,
          "docs": [{"tokens": n, "nll_sum": s}], "tokenized": [[ids]],
          "generate": {"prompt": [ids], "tokens": [ids], "top5": [{"ids", "logits"} per step]}}
Only the llama.cpp side happens here; every comparison is in the C++ test.
"""
import ctypes
import json
import re
import sys

import numpy as np
import llama_cpp

LOG = []


@llama_cpp.llama_log_callback
def _collect_log(level, text, user_data):
    LOG.append(text.decode("utf-8", errors="replace"))


def log_value(name):
    """A print_info line: "print_info: n_head_kv        = [8, 4, 2]" or "= 8"."""
    for line in "".join(LOG).splitlines():
        m = re.match(r"print_info: %s\s+= (.*)$" % re.escape(name), line)
        if m:
            return m.group(1).strip()
    raise SystemExit("llama_cpp_check.py: llama.cpp logged no print_info line for " + name)


def per_layer(value, n_layer):
    if value.startswith("["):
        values = [int(x) for x in value.strip("[]").split(",")]
    else:
        values = [int(value)] * n_layer
    assert len(values) == n_layer, (value, n_layer)
    return values


def kv_cache_line():
    # llama_kv_cache_unified: size =    6.00 MiB (  4096 cells,   6 layers,  1/1 seqs), K (f16):    3.00 MiB, V (f16):    3.00 MiB
    pattern = (r"llama_kv_cache_unified: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers,.*\), "
               r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")
    for line in "".join(LOG).splitlines():
        m = re.search(pattern, line)
        if m:
            return {"cells": int(m.group(2)), "layers": int(m.group(3)), "k_type": m.group(4),
                    "k_mib": float(m.group(5)), "v_type": m.group(6), "v_mib": float(m.group(7))}
    raise SystemExit("llama_cpp_check.py: llama.cpp logged no 'llama_kv_cache_unified: size' line")


def nll_sum(llm, ids):
    """Sum of -log p(ids[t] | ids[:t]) for t >= 1, in float64 from llama.cpp's logits."""
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    targets = np.asarray(ids[1:])
    return float((log_z - logits[np.arange(len(targets)), targets]).sum())


def state_bytes_per_token(llm, ids):
    """KV bytes per token from the sequence state's growth: each cell adds its
    K and V rows of every layer plus 12 bytes of cell metadata (position,
    sequence-id count, the sequence id; llama_kv_cache_unified::state_write)."""
    sizes = []
    for n in (len(ids) // 2, len(ids)):
        llm.reset()
        llm.eval(ids[:n])
        sizes.append((n, llama_cpp.llama_state_seq_get_size(llm.ctx, 0)))
    (n1, s1), (n2, s2) = sizes
    per_cell = (s2 - s1) / (n2 - n1)
    return per_cell - 12


def main():
    model_path, request_path, result_path = sys.argv[1:4]
    request = json.load(open(request_path))
    llama_cpp.llama_log_set(_collect_log, ctypes.c_void_p(0))
    n_batch = request.get("n_batch", 512)
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=request["n_ctx"], n_batch=n_batch, n_ubatch=n_batch,
                          logits_all=True, flash_attn=True,
                          n_threads=request.get("threads", 2), n_threads_batch=request.get("threads", 2),
                          seed=0, verbose=True)
    # Llama() registers its own logger on import only; ours stays in place.
    n_layer = int(log_value("n_layer"))
    result = {
        "arch": log_value("arch"),
        "n_head": per_layer(log_value("n_head"), n_layer),
        "n_head_kv": per_layer(log_value("n_head_kv"), n_layer),
        "kv_cache": kv_cache_line(),
        "n_vocab": llm.n_vocab(),
    }
    tokenized = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in request.get("tokenize", [])]
    result["tokenized"] = tokenized
    docs = list(request.get("docs", []))
    if request.get("score_tokenized"):
        docs += tokenized
    result["docs"] = [{"tokens": len(ids) - 1, "nll_sum": nll_sum(llm, ids)} for ids in docs]
    if docs:
        longest = max(docs, key=len)
        result["kv_state_bytes_per_token"] = state_bytes_per_token(llm, longest)
    if "generate" in request:
        prompt = request["generate"]["prompt"]
        if isinstance(prompt, str):
            prompt = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(prompt)
        out, top = [], []
        for _ in range(request["generate"]["n"]):
            logits = llm.scores[llm.n_tokens - 1]
            best = np.argsort(-logits, kind="stable")[:5]
            top.append({"ids": [int(i) for i in best], "logits": [float(logits[i]) for i in best]})
            out.append(int(best[0]))
            llm.eval([out[-1]])
        result["generate"] = {"prompt": prompt, "tokens": out, "top5": top}
    json.dump(result, open(result_path, "w"))


if __name__ == "__main__":
    main()
