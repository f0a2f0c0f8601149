#!/usr/bin/env python3
"""Cross-check of dha-eval against EleutherAI's lm-evaluation-harness (PyPI lm-eval,
checked with 0.4.13) on one dha directory, loaded by lm-eval the way a user would:
`--model hf --model_args pretrained=DIR,trust_remote_code=True` (the directory's own
transformers remote code), in float32 on the CPU, fully offline.

usage: lm_eval_crosscheck.py --tools DIR --model MODEL_DIR --work DIR [--batch-size N]
  --tools  the directory holding dha-eval
  --model  a dha (or plain HF) directory that transformers loads with trust_remote_code
  --work   scratch directory (created; the task files, lm-eval's caches, dha's outputs)

1. Multiple choice. Writes a local task (WORK/tasks/dha_mc.jsonl, records
   {"context", "choices", "gold"}) and its lm-eval YAML (WORK/tasks/dha_mc.yaml), and
   compares two runs of
     dha-eval --model M --task dha_mc.jsonl --json --save-requests requests-LABEL.jsonl
   with lm_eval.simple_evaluate on the same items:
   [default]  dha-eval's default (--first-token tokenizer) against lm-eval exactly as a
              user runs it (model_args pretrained=M,trust_remote_code=True,dtype=float32:
              the tokenizer's own BOS default);
   [document] dha-eval --first-token document against lm-eval with add_bos_token set to
              what dha-eval --text leads documents with (BOS: True; separator: False, and
              the separator's text put before lm-eval's copy of each context; none: False).
   Each requires: the same items, acc and acc_norm exactly equal, acc_stderr /
   acc_norm_stderr within 1e-9, and for every (item, choice): the same context and
   continuation token ids, log-likelihoods within 1e-4 and the same is_greedy.
2. Rolling log-likelihood (perplexity). Writes a few documents (WORK/docs.txt, blank-line
   separated, for dha-eval --text; WORK/tasks/dha_rolling.jsonl for lm-eval's
   loglikelihood_rolling) and runs dha-eval --text docs.txt --stride C --json --save-ids,
   C being the model's context, and requires the same token ids per document, the same
   token count and the total log-likelihood within 1e-4 relative.

Why these settings make both sides score the same tokens (lm-eval 0.4.13 sources):
- lm-eval scores the continuation `target_delimiter + choice`; with target_delimiter ""
  that is the choice exactly as written (api/task.py ConfigurableTask.construct_requests).
  It then moves the context's trailing whitespace to the continuation and splits
  encode(context + continuation) at len(encode(context)) (api/model.py
  TemplateLM._encode_pair), and scores context_enc + continuation_enc: when the choice
  re-splits the context's last token ("Par" + "ent" with the demo's tokenizer) that is not
  encode(context + continuation). dha-eval --task is expected to do the same.
- acc: argmax of the log-likelihoods (first maximum on ties); acc_norm: argmax of
  loglikelihood / len(choice), the length in characters (Python code points) of the choice
  without the delimiter or the moved whitespace (api/task.py process_results). Their
  stderr is sqrt(sample variance (n - 1) / n) (api/metrics.py mean_stderr).
- BOS: HFLM encodes contexts with the tokenizer's own add_special_tokens default unless
  add_bos_token is given (models/huggingface.py HFLM.tok_encode, models/utils.py
  _add_special_kwargs), and passes add_bos_token to AutoTokenizer.from_pretrained too.
  transformers 5 loads a sentencepiece tokenizer.model that has no tokenizer_config.json
  beside it as a TokenizersBackend with add_bos_token False: lm-eval's default then
  leads contexts with no BOS, unlike dha's sentencepiece tokenizer ([default] fails on
  such a directory until it carries a tokenizer_config.json with "add_bos_token": true).
- Rolling: HFLM.loglikelihood_rolling encodes the document with tok_encode (adding BOS if
  the tokenizer would: a second BOS after the prefix token) and conditions the first
  window on prefix_token_id (BOS, else EOS). So the rolling run uses add_bos_token=False
  and prefix_token_id = dha's first token: [first] + tokens, every token predicted, as
  dha-eval. Its windows (utils.get_rolling_token_windows with context_len=1 and
  max_seq_len = max_length = config.max_position_embeddings) are windows of C ids: the
  first predicts ids 1..C, each later one is C ids ending right before its last target
  and scores the next min(C, rest) targets -- exactly dha-eval --stride C (src/model/eval.cpp
  evaluate_token_docs). A stride below C has no lm-eval counterpart (HFLM fixes
  context_len=1), so only --stride C is compared.
- Batch size 1 (default): no padding. lm-eval's logits cache merges requests whose
  context + continuation[:-1] agree, which changes no value.

Exit status: 0 when every check passes; 77 (skip) when lm-eval, or what transformers needs
to read the model's tokenizer, is not installed in this Python; 1 otherwise, with one
"FAIL" line per mismatch (at most 8 per multiple-choice run, then a count).
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

SKIP = 77
LL_TOLERANCE = 1e-4          # absolute, per request (nats)
ROLLING_TOLERANCE = 1e-4     # relative, total log-likelihood
STDERR_TOLERANCE = 1e-9
LONG_DOC_MAX_CONTEXT = 1024  # documents longer than the context only for contexts up to this
MAX_LINES = 8                # mismatch lines shown per multiple-choice run

# Multiple-choice items: contexts with and without a trailing space (lm-eval moves it to
# the continuation), several trailing spaces, a newline, unicode (accented, CJK, a symbol
# by byte fallback), choices with and without a leading space, a choice that continues the
# context's last word (with the demo's tokenizer "Par" + "ent" re-splits the context's last
# token: lm-eval then scores context_enc + whole[len(context_enc):], not encode(whole)), a
# choice led by a newline, choices of equal and of different lengths (acc vs acc_norm), and
# multi-byte choices whose character and byte lengths differ ("The letter is": on the demo
# model acc_norm by characters and by bytes pick different choices). No choice may merge
# into the context's last token: its continuation would be empty, which lm-eval asserts
# against (or, through its logits cache, scores as log-likelihood 0).
ITEMS = [
    {"context": "The cat sat on the", "choices": [" mat", " dog", " moon"], "gold": 0},
    {"context": "Once upon a time, there was a ", "choices": ["girl", "dragon", "computer"], "gold": 1},
    {"context": "Question: What is 2 + 2?\nAnswer:", "choices": [" 4", " 5", " four", " twenty-two"], "gold": 0},
    {"context": "Le café est très ", "choices": ["chaud", "froid"], "gold": 0},
    {"context": "Snowman: ☃, Japan: 日本語, and", "choices": [" ☃", " 日本語", " é", " the end"], "gold": 2},
    {"context": "The capital of France is Par", "choices": ["is", "ent", " is"], "gold": 0},
    {"context": "To install the package, run apt-get", "choices": [" install", " remove", " update"], "gold": 0},
    {"context": "Two spaces at the end:  ", "choices": ["next", "last"], "gold": 1},
    {"context": "The letter is", "choices": [" é", " `"], "gold": 0},
    {"context": "The end of the line.", "choices": ["\nThe", " The", "\nThe next line"], "gold": 0},
    {"context": "Über den Wolken", "choices": [" muss", " ist", " 雲の上"], "gold": 2},
    {"context": "A list of options:\n- first\n- second\n-", "choices": [" third", " 第三", " fourth option"], "gold": 0},
]

# Rolling documents: plain, leading and trailing spaces (kept by dha-eval's split and by
# lm-eval's doc_to_target), inner line breaks, unicode; a long one is added when the
# context allows (more than two windows).
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    " A document with a leading space and a trailing one. ",
    "Line one of a document\nline two of the same document\nand line three.",
    "Unicode: café, naïve, façade, ☃ and 日本語 — all in one document.",
]
WORDS = ("the package manager installs files from the archive and keeps a list of what "
         "each package owns so that removing it later deletes exactly those files while "
         "configuration that the administrator changed is kept unless purge is asked").split()

failures = []


def report(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def run_tool(cmd, timeout=600):
    """Runs a dha tool; returns (stdout, parsed JSON of its last stdout line)."""
    print("+ " + " ".join(cmd), flush=True)
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    print(f"  ({time.time() - start:.1f} s, exit {done.returncode})", flush=True)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        print("FAIL " + cmd[0] + " exited with " + str(done.returncode) + ": " + " | ".join(tail))
        sys.exit(1)
    lines = done.stdout.strip().splitlines()
    try:
        return done.stdout, json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"FAIL {cmd[0]}: the last stdout line is not one JSON object: {lines[-1:]!r}")
        sys.exit(1)


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_task_yaml(path, name, data_file, output_type, extra):
    # JSON strings are valid YAML double-quoted scalars.
    text = (f"task: {name}\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    test: {json.dumps(data_file)}\n"
            "test_split: test\n"
            f"output_type: {output_type}\n" + extra)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


MC_YAML = """\
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
# doc_to_text / doc_to_choice / doc_to_target name fields of the record: lm-eval then
# returns them as they are (no Jinja rendering, no literal_eval of a rendered list).
ROLLING_YAML = """\
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def accuracy(items, lls, norm):
    """Mean accuracy of argmax(ll / norm) (first maximum on ties, as numpy.argmax)."""
    hits = 0
    for i, item in enumerate(items):
        scores = [lls[(i, j)] / norm(item, j) for j in range(len(item["choices"]))]
        hits += int(max(range(len(scores)), key=lambda j: (scores[j], -j)) == item["gold"])
    return hits / len(items)


def compare_choice_run(label, items, lm_items, lm, run, summary, records):
    """One multiple-choice comparison: dha-eval's summary and requests against lm-eval's run."""
    tag = f"[{label}] "
    results = next(iter(run["results"].values()))
    samples = next(iter(run["samples"].values()))
    report(summary is not None, tag + "dha-eval --json reports task 'dha_mc'")
    summary = summary or {}
    report(summary.get("items") == len(items), tag + f"items: dha {summary.get('items')}, lm-eval {len(items)}")
    for metric in ("acc", "acc_norm"):
        ours, theirs = summary.get(metric), results[f"{metric},none"]
        report(ours == theirs, tag + f"{metric}: dha {ours} vs lm-eval {theirs} (exactly equal)")
        ours, theirs = summary.get(f"{metric}_stderr"), results[f"{metric}_stderr,none"]
        report(isinstance(ours, (int, float)) and abs(ours - theirs) <= STDERR_TOLERANCE,
               tag + f"{metric}_stderr: dha {ours} vs lm-eval {theirs} (within {STDERR_TOLERANCE:g})")
    n_requests = sum(len(item["choices"]) for item in items)
    report(len(records) == n_requests, tag + f"--save-requests: {len(records)} requests (expected {n_requests})")
    lm_lls, dha_lls, worst, bad = {}, {}, 0.0, 0
    first_ids = set()

    def mismatch(what):  # one line per mismatch, the first MAX_LINES of a run
        nonlocal bad
        bad += 1
        if bad <= MAX_LINES:
            report(False, what)
    for sample in samples:
        i = sample["doc_id"]
        for j, (ll, greedy) in enumerate(sample["filtered_resps"]):
            lm_lls[(i, j)] = ll
            r = records.get((i, j))
            where = tag + f"item {i} choice {j} ({items[i]['context']!r} + {items[i]['choices'][j]!r})"
            if r is None:
                mismatch(f"{where}: missing from --save-requests")
                continue
            dha_lls[(i, j)] = r["loglikelihood"]
            context_ids, continuation_ids = lm._encode_pair(lm_items[i]["context"], items[i]["choices"][j])
            first_ids.add((r.get("context_ids") or [None])[0] == context_ids[0])
            if r.get("context_ids") != context_ids or r.get("continuation_ids") != continuation_ids:
                mismatch(f"{where}: token ids differ: dha {r.get('context_ids')} | {r.get('continuation_ids')}, "
                         f"lm-eval {context_ids} | {continuation_ids}")
            diff = abs(r["loglikelihood"] - ll)
            worst = max(worst, diff)
            if diff > LL_TOLERANCE:
                mismatch(f"{where}: loglikelihood dha {r['loglikelihood']:.6f} vs lm-eval {ll:.6f} "
                         f"(differ by {diff:.2e} > {LL_TOLERANCE:g})")
            if bool(r["is_greedy"]) != bool(greedy):
                mismatch(f"{where}: is_greedy dha {r['is_greedy']} vs lm-eval {greedy}")
    if bad > MAX_LINES:
        print(f"      {tag}... {bad - MAX_LINES} more mismatches of this run not shown")
    report(bad == 0, tag + f"{len(lm_lls)} requests: token ids equal, loglikelihood within {LL_TOLERANCE:g} "
                           f"(max difference {worst:.2e}), is_greedy equal ({bad} mismatches)")
    if False in first_ids:
        print(f"      {tag}the contexts' first ids differ: lm-eval's tokenizer "
              f"({type(lm.tokenizer).__name__}, add_bos_token {getattr(lm.tokenizer, 'add_bos_token', '?')}) "
              f"{'adds' if lm.tok_encode('x')[:1] == [lm.tokenizer.bos_token_id] else 'does not add'} BOS here")

    # Which length normalisation each side's acc_norm follows (diagnostics).
    def moved(item, j):
        context = item["context"]
        return context[len(context.rstrip()):] + item["choices"][j]
    norms = {
        "len(choice) in characters (lm-eval's)": lambda item, j: len(item["choices"][j]),
        "len(choice) in UTF-8 bytes": lambda item, j: len(item["choices"][j].encode("utf-8")),
        "len(continuation with the moved whitespace) in characters": lambda item, j: len(moved(item, j)),
        "len(continuation with the moved whitespace) in bytes": lambda item, j: len(moved(item, j).encode("utf-8")),
    }
    if accuracy(items, lm_lls, norms["len(choice) in characters (lm-eval's)"]) == \
            accuracy(items, lm_lls, norms["len(choice) in UTF-8 bytes"]):
        print(f"note: {tag}on this model acc_norm by characters and by bytes agree; "
              "a byte-length acc_norm would go unnoticed here")
    if len(dha_lls) == n_requests and summary.get("acc_norm") != results["acc_norm,none"]:
        same = [name for name, norm in norms.items() if accuracy(items, dha_lls, norm) == summary.get("acc_norm")]
        print(f"      {tag}dha's acc_norm {summary.get('acc_norm')} is the accuracy of its own log-likelihoods "
              f"normalised by: {'; '.join(same) or 'none of ' + '; '.join(norms)}")
    if len(dha_lls) == n_requests and summary.get("acc") != results["acc,none"]:
        print(f"      {tag}argmax of dha's own log-likelihoods gives acc {accuracy(items, dha_lls, lambda item, j: 1.0)}")


def read_requests(path, stem):
    records = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("task") == stem:
                records[(r["item"], r["choice"])] = r
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", required=True, help="directory holding dha-eval")
    parser.add_argument("--model", required=True, help="dha/HF directory with transformers remote code")
    parser.add_argument("--work", required=True, help="scratch directory")
    parser.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size (default 1: no padding)")
    args = parser.parse_args()
    model_dir = os.path.abspath(args.model)
    work = os.path.abspath(args.work)
    dha_eval = os.path.join(os.path.abspath(args.tools), "dha-eval")
    tasks_dir = os.path.join(work, "tasks")
    os.makedirs(tasks_dir, exist_ok=True)

    # Offline, and every cache inside WORK (set before datasets / huggingface_hub import).
    os.environ.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": os.path.join(work, "hf_home"),
        "HF_DATASETS_CACHE": os.path.join(work, "hf_datasets"),
        "HF_MODULES_CACHE": os.path.join(work, "hf_modules"),
        "TOKENIZERS_PARALLELISM": "false", "DISABLE_MULTIPROC": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    })
    start = time.time()
    try:
        import lm_eval
        import lm_eval.api.registry
        import transformers
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        print(f"SKIP: lm-eval is not installed in {sys.executable} ({e}); pip install lm-eval accelerate")
        return SKIP
    files = set(os.listdir(model_dir))
    if "tokenizer.model" in files and "tokenizer.json" not in files:
        missing = [m for m in ("sentencepiece", "google.protobuf") if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            print(f"SKIP: transformers needs {' and '.join(missing)} in {sys.executable} to read "
                  f"{model_dir}/tokenizer.model; pip install sentencepiece protobuf")
            return SKIP
    print(f"lm-eval {getattr(lm_eval, '__version__', '?')}, transformers {transformers.__version__}: "
          f"imported in {time.time() - start:.1f} s", flush=True)

    # ---- how dha-eval begins documents ---------------------------------------------------
    probe_file = os.path.join(work, "probe.txt")
    with open(probe_file, "w", encoding="utf-8") as f:
        f.write(DOCS[0] + "\n")
    _, probe = run_tool([dha_eval, "--model", model_dir, "--text", probe_file, "--json"])
    first_token, first_id, context = probe["first_token"], probe.get("first_token_id"), int(probe["context"])
    separator = probe.get("separator", "")
    print(f"dha-eval: documents begin with {first_token} (id {first_id}); context {context}", flush=True)

    # ---- lm-eval's models ----------------------------------------------------------------
    # "default": exactly `--model hf --model_args pretrained=DIR,trust_remote_code=True`
    # (+ float32), to compare with dha-eval --task's default (--first-token tokenizer).
    model_args = f"pretrained={model_dir},trust_remote_code=True,dtype=float32"
    start = time.time()
    lm = lm_eval.api.registry.get_model("hf").create_from_arg_string(
        model_args, {"batch_size": args.batch_size, "max_batch_size": None, "device": "cpu"})
    print(f"lm-eval model ({model_args}): {type(lm.model).__name__}, tokenizer {type(lm.tokenizer).__name__} "
          f"(adds BOS by default: {lm.tok_encode('x')[:1] == [lm.tokenizer.bos_token_id]}), max_length "
          f"{lm.max_length}, loaded in {time.time() - start:.1f} s", flush=True)
    report(lm.max_length == context, f"lm-eval max_length {lm.max_length} = dha-eval's context {context}")

    # "document": dha-eval --task --first-token document (the context led as dha-eval --text
    # leads a document) against lm-eval with add_bos_token set to match (+ the separator's
    # text before each context for a separator-led model). The same weights; a tokenizer
    # loaded as HFLM loads it with add_bos_token (the flag must reach the tokenizer: a
    # tokenizer loaded without it adds no BOS even with add_special_tokens=True).
    add_bos = first_token == "bos"
    def tokenizer_with(bos):
        return transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True, use_fast=True,
                                                          add_bos_token=bos)
    lm_doc = HFLM(pretrained=lm.model, tokenizer=tokenizer_with(add_bos), add_bos_token=add_bos,
                  batch_size=args.batch_size, device="cpu")
    # The rolling run: no BOS from the tokenizer (lm-eval would put a second one after its
    # prefix token), dha's first token as the prefix token.
    lm_roll = None
    if first_token in ("bos", "separator"):
        lm_roll = HFLM(pretrained=lm.model, tokenizer=tokenizer_with(False), add_bos_token=False,
                       prefix_token_id=first_id, batch_size=args.batch_size, device="cpu")

    # ---- the task files --------------------------------------------------------------------
    mc_file = os.path.join(tasks_dir, "dha_mc.jsonl")
    write_jsonl(mc_file, ITEMS)
    doc_prefix = separator if first_token == "separator" else ""
    doc_items = [dict(item, context=doc_prefix + item["context"]) for item in ITEMS]
    doc_file = mc_file
    if doc_prefix:
        doc_file = os.path.join(tasks_dir, "lm_eval_mc_document.jsonl")
        write_jsonl(doc_file, doc_items)
    write_task_yaml(os.path.join(tasks_dir, "dha_mc.yaml"), "dha_mc", mc_file, "multiple_choice", MC_YAML)
    write_task_yaml(os.path.join(tasks_dir, "dha_mc_document.yaml"), "dha_mc_document", doc_file,
                    "multiple_choice", MC_YAML)
    # The rolling documents, and a long one (more than two windows) when the context is short.
    docs = list(DOCS)
    if lm_roll is not None and context <= LONG_DOC_MAX_CONTEXT:
        words, shift = [], 0
        while len(lm_roll.tok_encode(" ".join(words))) <= 2 * context + context // 2:
            words += WORDS[shift % len(WORDS):] + WORDS[: shift % len(WORDS)]
            shift += 7
        docs.append(" ".join(words))
    docs_file = os.path.join(work, "docs.txt")
    with open(docs_file, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")
    rolling_file = os.path.join(tasks_dir, "dha_rolling.jsonl")
    write_jsonl(rolling_file, [{"text": d} for d in docs])
    write_task_yaml(os.path.join(tasks_dir, "dha_rolling.yaml"), "dha_rolling", rolling_file,
                    "loglikelihood_rolling", ROLLING_YAML)

    # ---- dha-eval ------------------------------------------------------------------------------
    runs = [("default", [], lm, ITEMS, "dha_mc"), ("document", ["--first-token", "document"], lm_doc, doc_items,
                                                    "dha_mc_document")]
    dha_results = {}
    for label, extra, _, _, _ in runs:
        requests_file = os.path.join(work, f"requests-{label}.jsonl")
        _, out = run_tool([dha_eval, "--model", model_dir, "--task", mc_file, "--json",
                           "--save-requests", requests_file] + extra)
        dha_results[label] = (out.get("tasks", {}).get("dha_mc"), read_requests(requests_file, "dha_mc"))
    ids_file = os.path.join(work, "ids.json")
    _, dha_text = run_tool([dha_eval, "--model", model_dir, "--text", docs_file, "--stride", str(context),
                            "--json", "--save-ids", ids_file])

    # ---- lm-eval ---------------------------------------------------------------------------------
    task_manager = TaskManager(include_path=tasks_dir, include_defaults=False)
    common = dict(task_manager=task_manager, log_samples=True, bootstrap_iters=100, use_cache=None,
                  cache_requests=False, verbosity="WARNING")
    lm_runs = {}
    for label, _, model, _, task in runs:
        start = time.time()
        lm_runs[label] = lm_eval.simple_evaluate(model=model, tasks=[task], **common)
        print(f"lm-eval {task}: {time.time() - start:.1f} s", flush=True)
    roll_run = None
    if lm_roll is not None:
        start = time.time()
        roll_run = lm_eval.simple_evaluate(model=lm_roll, tasks=["dha_rolling"], **common)
        print(f"lm-eval dha_rolling: {time.time() - start:.1f} s", flush=True)

    # ---- 1. multiple choice ----------------------------------------------------------------------
    for label, _, model, lm_items, _ in runs:
        summary, records = dha_results[label]
        compare_choice_run(label, ITEMS, lm_items, model, lm_runs[label], summary, records)

    # ---- 2. rolling log-likelihood ---------------------------------------------------------------
    if roll_run is None:
        print(f"note: rolling part not compared: dha-eval's documents begin with {first_token!r}; "
              "lm-eval always conditions the first token on a prefix token")
    else:
        samples = sorted(roll_run["samples"]["dha_rolling"], key=lambda s: s["doc_id"])
        lm_ids = [[first_id] + lm_roll.tok_encode(d) for d in docs]
        with open(ids_file, encoding="utf-8") as f:
            dha_ids = json.load(f)
        report(len(dha_ids) == len(docs) and dha_text.get("docs") == len(docs),
               f"[rolling] documents: dha {dha_text.get('docs')} ({len(dha_ids)} in --save-ids), lm-eval {len(docs)}")
        for d, (ours, theirs) in enumerate(zip(dha_ids, lm_ids)):
            if ours != theirs:
                cut = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                report(False, f"[rolling] document {d}: ids differ from position {cut}: dha "
                              f"{ours[max(0, cut - 3):cut + 5]} (len {len(ours)}) vs lm-eval [prefix] + tok_encode "
                              f"{theirs[max(0, cut - 3):cut + 5]} (len {len(theirs)})")
        tokens = sum(len(ids) - 1 for ids in lm_ids)
        report(dha_text.get("tokens") == tokens,
               f"[rolling] predicted tokens: dha {dha_text.get('tokens')}, lm-eval {tokens} (longest document "
               f"{max(len(x) for x in lm_ids)} ids, context {context})")
        # A rolling sample's filtered_resps is [loglikelihood] (the windows' sum).
        lm_total = sum(float(s["filtered_resps"][0]) for s in samples)
        dha_total = -float(dha_text["mean_nll"]) * float(dha_text["tokens"])
        rel = abs(lm_total - dha_total) / max(abs(dha_total), 1e-30)
        report(rel <= ROLLING_TOLERANCE,
               f"[rolling] total log-likelihood: dha {dha_total:.6f} (mean NLL {dha_text['mean_nll']:.6f} x "
               f"{dha_text['tokens']}) vs lm-eval {lm_total:.6f} (relative difference {rel:.2e} <= "
               f"{ROLLING_TOLERANCE:g})")
        r = roll_run["results"]["dha_rolling"]
        print(f"      [rolling] lm-eval: word_perplexity {r['word_perplexity,none']:.4f}, byte_perplexity "
              f"{r['byte_perplexity,none']:.4f}, bits_per_byte {r['bits_per_byte,none']:.4f}; dha: "
              f"{dha_text.get('windows')} windows, perplexity {dha_text.get('ppl')}")

    print(f"lm_eval_crosscheck: {len(failures)} failed" if failures else "lm_eval_crosscheck: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
