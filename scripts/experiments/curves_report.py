#!/usr/bin/env python3
"""Tables, tokens_to_match.json and figures from scripts/experiments/curves.sh's runs.

Every curve is held-out NLL against TOTAL tokens: the tokens the conversion read
(report.json `tokens.total`) plus those continued pre-training read (`tokens` of
each evaluation in metrics.jsonl). Between two evaluations a curve is linear in
tokens; nothing is extrapolated past a curve's ends.

usage: curves_report.py --work WORK_DIR [--plot path/to/dha-plot]
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys

METHODS = ["dha", "dha-no-distill", "dha-distill", "dha-distill-teach", "dha-short", "dha-adaptive", "dha-paper",
           "aligned-gqa", "gqa", "shared-attention", "source"]
BASELINES = ["dha-paper", "aligned-gqa", "gqa"]  # what the default dha is measured against
LABELS = {"dha": "dha (default: even head counts, align, then fuse, distilling)", "dha-no-distill": "dha, fusing without distillation",
          "dha-distill": "dha, DISTILL_WEIGHT in fusion",
          "dha-distill-teach": "dha, distilled from the source in fusion and training",
          "dha-short": "dha, short fusion", "dha-adaptive": "dha, adaptive head counts (the default before)",
          "dha-paper": "dha (paper recipe)",
          "aligned-gqa": "aligned-gqa", "gqa": "gqa (mean pooling)", "shared-attention": "shared attention",
          "source": "source itself (not converted: full KV cache)"}
MODEL_NAMES = {"demo": "demo-mha", "stories260k": "stories260K (GQA form)", "stories260k-mha": "stories260K (MHA twin)"}
DEMO_POINT = 614400  # the demo's 150 steps of 16 x 256 tokens: where the 5x target is read


# The variables of curves.sh (and endpoints.sh) that change what is run; the header lists those set.
SETTINGS = ["MODELS", "BUDGETS", "METHODS", "TOKENS", "LONG_TOKENS", "JOBS", "DISTILL_WEIGHT", "SHORT_FUSION_STEPS",
            "FUSION_LR", "LR", "WARMUP", "SCHEDULE", "TEACH", "BUDGET", "TOTALS"]


def provenance(title, script, work, data):
    """The header of a results file: when it was written, from which commit, on which machine, by which command.

    Written into the file itself, so that it survives regeneration (docs/results/ holds copies of these files)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    commit = run("git", "-C", root, "rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    if run("git", "-C", root, "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    memory = ""
    if os.path.exists("/proc/meminfo"):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                memory = ", %.0f GiB" % (int(line.split()[1]) / 2**20)
    gpus = run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader") if shutil.which("nvidia-smi") else ""
    machine = "%d-core %s CPU%s, %s" % (os.cpu_count() or 0, platform.machine(), memory,
                                       "GPU: " + ", ".join(gpus.splitlines()) if gpus else "no GPU")
    if "OMP_NUM_THREADS" in os.environ:
        machine += ", OMP_NUM_THREADS=%s per process" % os.environ["OMP_NUM_THREADS"]
    settings = ["%s=%s" % (k, shlex.quote(os.environ[k])) for k in SETTINGS if k in os.environ]
    work = os.path.realpath(work)  # named relative to the checkout: no machine's paths in a document
    work = os.path.relpath(work, root) if work.startswith(root + os.sep) else "WORK_DIR"
    return ("# %s\n\n| | |\n|---|---|\n| measured | %s (UTC: when this file was written; the runs it reads had "
            "finished), commit %s |\n"
            "| recipe | the defaults of that commit (the script's header lists them)%s |\n"
            "| machine | %s |\n| command | `%s` |\n| data | %s |\n\n" % (
                title, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), commit,
                ", changed by the environment: " + " ".join(settings) if settings else "", machine,
                " ".join(settings + [script, work]), data))


def load_run(run_dir):
    """-> dict(conversion, kv, points=[(total tokens, nll)]) or dict(unreachable=reason)."""
    if os.path.exists(os.path.join(run_dir, "unreachable.txt")):
        return {"unreachable": open(os.path.join(run_dir, "unreachable.txt")).read().strip()}
    if os.path.exists(os.path.join(run_dir, "inspect.json")):  # the source itself: nothing converted
        conversion, kv, fusion_steps = 0, json.load(open(os.path.join(run_dir, "inspect.json")))["kv_bytes_per_token"], 0
    else:
        report = json.load(open(os.path.join(run_dir, "converted", "report.json")))
        conversion, kv = report["tokens"]["total"], report["kv_bytes_per_token"]["after"]
        fusion_steps = report["recipe"]["fusion_steps"]
    points = {}
    for line in open(os.path.join(run_dir, "train", "metrics.jsonl")):
        entry = json.loads(line)
        if entry.get("event") == "eval":
            points[entry["step"]] = (conversion + entry["tokens"], entry["eval_nll"])
    return {"conversion": conversion, "kv": kv, "fusion_steps": fusion_steps, "points": sorted(points.values())}


END_SLACK = 0.01  # curves end within a training step of the common total (step counts are whole)


def value_at(points, tokens):
    """The curve's NLL at `tokens` (linear between evaluations), None outside its range;
    a point just past the curve's end (by under END_SLACK) reads its last value."""
    if not points or tokens < points[0][0] or tokens > points[-1][0] * (1 + END_SLACK):
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= tokens <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)
    return points[-1][1]


def tokens_to_reach(points, nll):
    """The fewest total tokens at which the curve is at or below `nll` (linear between
    evaluations), None when it never gets there."""
    if points[0][1] <= nll:
        return points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 <= nll:
            return x0 + (x1 - x0) * (y0 - nll) / (y0 - y1)
    return None


def fmt(v):
    return "-" if v is None else "%.4f" % v


def millions(t):
    return "%.2fM" % (t / 1e6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--plot", help="dha-plot binary: one SVG per model and budget")
    args = ap.parse_args()
    runs_root = os.path.join(args.work, "runs")
    if not os.path.isdir(runs_root):
        sys.exit("curves_report.py: %s holds no runs (run scripts/experiments/curves.sh first)" % runs_root)

    md, match, verdicts = [], {}, []
    # One row per model and budget: each method right after conversion and where every
    # curve ends (the same total tokens).
    # Its columns are the methods some model and budget ran (known after the loop).
    summary_cells = []
    for model in sorted(os.listdir(runs_root), key=lambda m: list(MODEL_NAMES).index(m) if m in MODEL_NAMES else 99):
        source_path = os.path.join(args.work, model + "-source.json")
        source = json.load(open(source_path))["mean_nll"] if os.path.exists(source_path) else None
        for budget in sorted(os.listdir(os.path.join(runs_root, model)), key=float, reverse=True):
            base = os.path.join(runs_root, model, budget)
            runs = {m: load_run(os.path.join(base, m)) for m in METHODS
                    if os.path.exists(os.path.join(base, m, ".done"))}
            curves = {m: r for m, r in runs.items() if "points" in r}
            if "dha" not in curves:
                continue
            dha = curves["dha"]["points"]
            grid = [x for x, _ in dha]  # DHA's evaluated points
            md.append("### %s, budget %s\n" % (MODEL_NAMES.get(model, model), budget))
            md.append("Held-out NLL at DHA's evaluated points (total tokens = conversion + continued "
                      "pre-training; other curves linear between their own evaluations). "
                      "Source model: %s.\n" % fmt(source))
            md.append("| method | KV bytes/token | conversion tokens | after conversion | " +
                      " | ".join(millions(x) for x in grid) + " |")
            md.append("|---|---:|---:|---:|" + "---:|" * len(grid))
            for m in METHODS:
                if m not in runs:
                    continue
                r = runs[m]
                if "unreachable" in r:
                    md.append("| %s | not reachable: %s |" % (LABELS[m], r["unreachable"].replace("|", "/")) +
                              " |" * (len(grid) + 2))
                    continue
                row = [fmt(value_at(r["points"], x)) for x in grid]
                if m not in ("dha", "source"):  # bold where a baseline is at or below DHA (the source is a reference)
                    row = ["**%s**" % v if v != "-" and float(v) <= float(fmt(y)) else v for v, (_, y) in zip(row, dha)]
                label = LABELS[m] + (" (%d steps)" % r["fusion_steps"] if m == "dha-short" else "")
                md.append("| %s | %d | %d | %s | %s |" % (label, r["kv"], r["conversion"], fmt(r["points"][0][1]),
                                                          " | ".join(row)))
            md.append("")
            end = dha[-1][0]
            cells = {}
            for m, r in runs.items():
                cells[m] = "not reachable" if "unreachable" in r else "%s → %s" % (
                    fmt(r["points"][0][1]), fmt(value_at(r["points"], end)))
            summary_cells.append((MODEL_NAMES.get(model, model), budget, millions(end), cells))

            # tokens_to_match: for each baseline and each point of DHA's curve.
            entry = {}
            for m in BASELINES + ["shared-attention"]:
                if m not in curves:
                    continue
                entry[m] = []
                for x, y in dha:
                    need = tokens_to_reach(curves[m]["points"], y)
                    entry[m].append({"dha_tokens": x, "dha_nll": round(y, 6),
                                     "baseline_tokens": "not reached" if need is None else int(round(need)),
                                     "ratio": None if need is None else round(need / x, 3),
                                     "baseline_last_tokens": curves[m]["points"][-1][0]})
            match.setdefault(model, {})[budget] = entry

            # Targets, read on every model and budget (the issue names the demo model at 0.25).
            for m in ("aligned-gqa", "gqa"):
                if m not in curves:
                    continue
                both = [(x, y, value_at(curves[m]["points"], x)) for x, y in dha]
                both = [(x, y, b) for x, y, b in both if b is not None]  # where the baseline's curve reaches
                lost = [(x, y, b) for x, y, b in both if not y < b]
                verdicts.append("%s %s: dha < %s at %d of %d evaluated points%s%s" % (
                    MODEL_NAMES.get(model, model), budget, m, len(both) - len(lost), len(dha),
                    "" if len(both) == len(dha) else " (%d beyond the baseline's curve)" % (len(dha) - len(both)),
                    "" if not lost else "; not at %s" % ", ".join(
                        "%s (%.4f vs %.4f)" % (millions(x), y, b) for x, y, b in lost)))
            if model == "demo" and "gqa" in curves and dha[0][0] <= DEMO_POINT <= dha[-1][0]:
                y = value_at(dha, DEMO_POINT)
                need = tokens_to_reach(curves["gqa"]["points"], y)
                last = curves["gqa"]["points"][-1][0]
                verdicts.append("%s %s: dha at %s total tokens: %.4f; gqa reaches it %s" % (
                    MODEL_NAMES[model], budget, millions(DEMO_POINT), y,
                    "after %s (%.2fx)" % (millions(need), need / DEMO_POINT) if need is not None
                    else "not within its %s (more than %.2fx)" % (millions(last), last / DEMO_POINT)))

            if args.plot:
                fig_dir = os.path.join(args.work, "figures")
                os.makedirs(fig_dir, exist_ok=True)
                series = []
                for m in METHODS:
                    if m not in curves:
                        continue
                    path = os.path.join(fig_dir, "%s-%s-%s.jsonl" % (model, budget, m))
                    with open(path, "w") as f:
                        for x, y in curves[m]["points"]:
                            f.write(json.dumps({"tokens": x, "eval_nll": y}) + "\n")
                    series += ["--run", "%s=%s" % (LABELS[m], path)]
                svg = os.path.join(fig_dir, "curves-%s-%s.svg" % (model, budget))
                subprocess.run([args.plot] + series + [
                    "--title", "%s, budget %s: held-out NLL at equal total tokens" % (MODEL_NAMES.get(model, model), budget),
                    "--x-label", "total tokens (conversion + continued pre-training)", "--out", svg],
                    check=True, stdout=subprocess.DEVNULL)

    columns = [m for m in METHODS if any(m in cells for *_, cells in summary_cells)]
    summary = ["| model | budget | total tokens | " + " | ".join(LABELS[m] for m in columns) + " |",
               "|---|---:|---:|" + "---|" * len(columns)]
    for name, budget, end, cells in summary_cells:
        summary.append("| %s | %s | %s | %s |" % (name, budget, end, " | ".join(cells.get(m, "") for m in columns)))

    with open(os.path.join(args.work, "tokens_to_match.json"), "w") as f:
        json.dump(match, f, indent=1)
    text = (provenance(
        "DHA against the baselines at equal total tokens: every table",
        "scripts/experiments/curves.sh", args.work,
        "models/demo-mha (in the repository) on the corpus of scripts/corpus (the King James Bible and the Jargon "
        "File from Debian packages; every 20th document held out); stories260K (llama2.c's release) with "
        "tinystories_train_sample.txt / tinystories_valid_sample.txt (TinyStories samples), which the script "
        "looks for in ../shared/models and ../shared/data next to the checkout") +
            "### Every model and budget\n\nHeld-out NLL right after conversion → at the end of the curves "
            "(every method at the same total tokens).\n\n" + "\n".join(summary) + "\n\n" +
            "\n".join(md) + "\n### Targets\n\n" + "\n".join("- " + v for v in verdicts) + "\n")
    with open(os.path.join(args.work, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
