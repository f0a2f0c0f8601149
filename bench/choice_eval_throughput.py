#!/usr/bin/env python3
"""Multiple-choice evaluation throughput: dha-eval --task against lm-evaluation-harness's
hf backend on the same model, task and batch size, on the CPU in float32; the accuracies
must agree.

usage: choice_eval_throughput.py --tools DIR --model DIR --work DIR [--items 200]
                                 [--batch 16] [--threads N] SOURCE.txt ...

  --model   a dha or Hugging Face directory transformers loads (trust_remote_code)
  SOURCE    UTF-8 text; the task is built from it: each item's context is a passage's
            first words, its choices the next four words of that passage and of three
            others (gold: the passage's own), as ARC / HellaSwag-style continuations.
Prints items/s of both (the whole tool or call, model loading excluded for lm-eval; the
tool's wall time for dha-eval, which includes loading), and exits 1 if acc or acc_norm differ.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time


def build_task(sources, n_items, path, seed=1):
    words = []
    for source in sources:
        with open(source, encoding="utf-8") as f:
            words += re.findall(r"\S+", f.read())
    rng = random.Random(seed)
    items = []
    for _ in range(n_items):
        starts = [rng.randrange(0, len(words) - 40) for _ in range(4)]
        context = " ".join(words[starts[0]:starts[0] + 24])
        choices = [" " + " ".join(words[s + 24:s + 28]) for s in starts]
        gold = rng.randrange(4)
        choices[0], choices[gold] = choices[gold], choices[0]
        items.append({"context": context, "choices": choices, "gold": gold})
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def task_yaml(path, data):
    with open(path, "w") as f:
        f.write("task: bench_mc\ndataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
                "test_split: test\noutput_type: multiple_choice\n"
                "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\n"
                "target_delimiter: \"\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tools", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("sources", nargs="+")
    a = p.parse_args()
    os.makedirs(os.path.join(a.work, "tasks"), exist_ok=True)
    data = os.path.abspath(os.path.join(a.work, "tasks", "bench_mc.jsonl"))
    build_task(a.sources, a.items, data)
    task_yaml(os.path.join(a.work, "tasks", "bench_mc.yaml"), data)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    t0 = time.time()
    out = subprocess.run([os.path.join(a.tools, "dha-eval"), "--model", a.model, "--task", data, "--batch",
                          str(a.batch), "--json"], env=env, capture_output=True, text=True, check=True).stdout
    dha_s = time.time() - t0
    dha = json.loads(out.strip().splitlines()[-1])["tasks"]["bench_mc"]

    import torch
    torch.set_num_threads(a.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    t0 = time.time()
    lm = HFLM(pretrained=a.model, trust_remote_code=True, dtype="float32", device="cpu", batch_size=a.batch)
    load_s = time.time() - t0
    t0 = time.time()
    res = lm_eval.simple_evaluate(model=lm, tasks=["bench_mc"], task_manager=TaskManager(include_path=os.path.join(a.work, "tasks")),
                                  bootstrap_iters=0, log_samples=False, cache_requests=False)
    lm_s = time.time() - t0
    r = res["results"]["bench_mc"]
    print(f"{a.items} items of 4 choices, batch {a.batch}, {a.threads} threads, model {a.model}")
    print(f"{'':28} {'acc':>8} {'acc_norm':>9} {'seconds':>9} {'items/s':>9}")
    print(f"{'dha-eval --task':28} {dha['acc']:8.4f} {dha['acc_norm']:9.4f} {dha_s:9.1f} {a.items / dha_s:9.1f}  (whole tool, loading included)")
    print(f"{'lm-eval hf':28} {r['acc,none']:8.4f} {r['acc_norm,none']:9.4f} {lm_s:9.1f} {a.items / lm_s:9.1f}  (evaluation only; loading {load_s:.1f} s)")
    same = dha["acc"] == r["acc,none"] and dha["acc_norm"] == r["acc_norm,none"]
    print("accuracies equal" if same else "ACCURACIES DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
