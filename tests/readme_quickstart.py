"""Runs README.md's quickstart as a reader would copy it: every ```sh block of the
"## Quickstart" section, in order, in one bash from the checkout's root
(```console blocks are shown, not run).

The reader's own model is a Llama-2-style HF directory that transformers writes
(save_pretrained of the embedded demo model, with its sentencepiece
tokenizer.model), their text is this repository's documentation, and the
quickstart's documented variables make the runs tiny: CONVERT_ARGS and
TRAIN_ARGS, TOKENS, NGPU=2 ranks on Gloo, and DHA_DEMO_QUICK / DHA_DEMO_OUT for
scripts/demo.

usage: readme_quickstart.py SOURCE_DIR TOOLS_DIR WORK_DIR
Exits 0 when every block ran and the outputs the quickstart names exist.
"""
import os
import re
import shutil
import subprocess
import sys
import time

SOURCE, TOOLS, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
PYTHON = sys.executable


def quickstart_blocks():
    readme = open(os.path.join(SOURCE, "README.md")).read()
    match = re.search(r"\n## Quickstart\n(.*?)(?=\n## )", readme, re.S)
    if not match:
        sys.exit("README.md has no \"## Quickstart\" section")
    blocks = re.findall(r"```sh\n(.*?)```\n", match.group(1), re.S)
    if not blocks:
        sys.exit("README.md's Quickstart has no ```sh block")
    return blocks


def write_hf_llama2(out):
    """A Llama-2-style HF directory as transformers writes it."""
    import torch
    from transformers import LlamaForCausalLM
    demo = os.path.join(SOURCE, "models", "demo-mha")
    model = LlamaForCausalLM.from_pretrained(demo, dtype=torch.bfloat16)
    model.save_pretrained(out)
    shutil.copy(os.path.join(demo, "tokenizer.model"), out)


def write_text(train, heldout):
    """Documents (blank-line separated paragraphs) of the repository's own docs."""
    docs = []
    for name in sorted(os.listdir(os.path.join(SOURCE, "docs"))):
        if name.endswith(".md"):
            text = open(os.path.join(SOURCE, "docs", name)).read()
            docs += [d.strip() for d in text.split("\n\n") if len(d.strip()) > 80]
    with open(train, "w") as f:
        f.write("\n\n".join(d for i, d in enumerate(docs) if i % 10) + "\n")
    with open(heldout, "w") as f:
        f.write("\n\n".join(d for i, d in enumerate(docs) if i % 10 == 0) + "\n")


def main():
    shutil.rmtree(WORK, ignore_errors=True)  # the quickstart refuses to overwrite its outputs
    os.makedirs(WORK)
    write_hf_llama2(os.path.join(WORK, "Llama-2-tiny-hf"))
    write_text(os.path.join(WORK, "train.txt"), os.path.join(WORK, "heldout.txt"))
    script = "PS4='+ [${SECONDS}s] '\nset -eo pipefail -x\n" + "\n".join(quickstart_blocks())
    # The commands name build/ and .venv/ of the checkout; point them at this build.
    script = script.replace("build/dha-", TOOLS + "/dha-").replace(".venv/bin/python", PYTHON)
    env = dict(os.environ,
               MODEL=os.path.join(WORK, "Llama-2-tiny-hf"),
               TEXT=os.path.join(WORK, "train.txt"),
               HELDOUT=os.path.join(WORK, "heldout.txt"),
               WORK=os.path.join(WORK, "run"),
               NGPU="2",
               TOKENS="16384",
               CONVERT_ARGS="--fusion-steps 2 --search-steps 2 --batch 2 --seq-len 64 --eval-docs 8",
               TRAIN_ARGS="--eval-docs 8",
               DHA_DEMO_QUICK="1",
               DHA_DEMO_OUT=os.path.join(WORK, "demo"),
               DHA_BUILD_DIR=TOOLS,
               HF_MODULES_CACHE=os.path.join(WORK, "hf_modules"),
               HF_HUB_OFFLINE="1",
               PATH=os.path.dirname(PYTHON) + os.pathsep + os.environ.get("PATH", ""))
    start = time.time()
    done = subprocess.run(["bash", "-c", script], cwd=SOURCE, env=env)
    print(f"quickstart: exit {done.returncode} after {time.time() - start:.0f} s")
    if done.returncode != 0:
        sys.exit(1)
    run = os.path.join(WORK, "run")
    for path in ["converted/config.json", "converted/report.json", "tokens/data.json", "train/model/config.json",
                 "model.gguf"]:
        if not os.path.exists(os.path.join(run, path)):
            sys.exit(f"quickstart: ran, but {path} is missing under WORK")
    print("quickstart: every output is there")
    # The llama.cpp step (llama-cli) is shown, not run; its file must load and run in llama.cpp.
    try:
        from llama_cpp import Llama
    except ImportError:
        print("quickstart: llama-cpp-python is not installed; the GGUF file was not run")
        return
    llm = Llama(model_path=os.path.join(run, "model.gguf"), n_ctx=64, verbose=False)
    out = llm("Once upon a time", max_tokens=4, temperature=0)
    print("quickstart: llama.cpp continues the prompt:", repr(out["choices"][0]["text"]))


if __name__ == "__main__":
    main()
