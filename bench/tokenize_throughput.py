#!/usr/bin/env python3
"""Tokenizer throughput: dha-tokenize against the reference Python tokenizers on one
JSONL corpus, the same thread count on both sides, and the ids compared.

usage: tokenize_throughput.py --tools DIR --tokenizer T --work DIR [--threads N]
                              [--max-mb 200] [--compress none|gz|zst] [--text-field text]
                              [--corpus FILE.jsonl[.gz|.zst]] [--reference-only] SOURCE.txt ...

  --tokenizer  a byte-level BPE tokenizer.json (reference: Hugging Face `tokenizers`,
               Tokenizer.from_file(...).encode_batch), a sentencepiece .model (reference:
               the `sentencepiece` module, Encode(list, num_threads=N)), or a model
               directory holding one (tokenizer.model first, as dha looks for it)
  SOURCE.txt   UTF-8 text files (e.g. ../shared/data/text/*.txt); their blank-line
               separated paragraphs become JSONL records {"text": paragraph}, the files
               repeated in order until the corpus reaches --max-mb megabytes (of JSONL)
  --corpus     use this JSONL corpus instead of building one (SOURCE files not needed)
  --threads    encoding threads of both sides (default: every core): dha-tokenize
               --threads N; RAYON_NUM_THREADS=N for `tokenizers`; num_threads=N for
               sentencepiece
  --reference-only  skip dha-tokenize (a smoke run of the Python side)

Each side runs in its own process; the table gives its wall time, tokens per second
(end to end: reading the corpus, encoding, and for dha writing the shards), the Python
side's encode-only rate, and each process's peak RSS (getrusage of that child).

The ids. dha-tokenize writes WORK/dha-tokens/train-*.tok (--heldout 0): a 64-byte header
(magic "DHATOK\\0\\0", u32 version, u32 bytes per token, u64 vocab, u64 tokens, u64 docs,
u32 first-token kind, i32 first-token id, 16 reserved bytes), the tokens (uint16 or uint32
LE), then (version 2) one u64 per document: its first token's position (include/dha/data.h).
Each document is encode_document(text): the first token data.json names (first_token /
first_token_id: BOS, a separator or none) followed by encode(text). The reference encodes
each record's text without special tokens (add_special_tokens=False / no add_bos) and
puts the same first token before it; records whose text is empty are no document, as in
dha-tokenize. Exit 0 when the ids are equal (or with --reference-only), 1 otherwise.
"""
import argparse
import glob
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

HEADER = 64
MAGIC = b"DHATOK\0\0"
CHUNK_DOCS = 4096  # documents per encode call on the Python side


# ---- the corpus --------------------------------------------------------------------------

def paragraphs(path):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return [p for p in re.split(r"\r?\n[ \t\r\f\v]*(?:\r?\n[ \t\r\f\v]*)+", text) if p.strip()]


def open_write(path):
    if path.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    return open(path, "w", encoding="utf-8")


def build_corpus(sources, path, max_mb):
    """JSONL of the sources' paragraphs, the sources repeated until max_mb MB of plain JSONL."""
    limit = int(max_mb * 1e6)
    plain = path[:-4] if path.endswith(".zst") else path
    written, records = 0, 0
    docs = [p for s in sources for p in paragraphs(s)]
    if not docs:
        sys.exit("the SOURCE files hold no paragraph")
    with open_write(plain) as f:
        while written < limit:
            for d in docs:
                line = json.dumps({"text": d}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                records += 1
                if written >= limit:
                    break
    if path.endswith(".zst"):
        if shutil.which("zstd"):
            subprocess.run(["zstd", "-q", "-f", "-1", "--rm", plain, "-o", path], check=True)
        else:
            import zstandard  # pip zstandard
            with open(plain, "rb") as src, open(path, "wb") as dst:
                zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
            os.remove(plain)
    print(f"corpus: {path}: {records} records, {written / 1e6:.1f} MB of JSONL", flush=True)
    return path


def read_records(path, field):
    if path.endswith(".gz"):
        f = gzip.open(path, "rt", encoding="utf-8")
    elif path.endswith(".zst"):
        try:
            import zstandard  # pip zstandard
            f = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
        except ImportError:  # else the zstd program (Debian's zstd)
            f = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE, encoding="utf-8").stdout
    else:
        f = open(path, encoding="utf-8")
    with f:
        for line in f:
            if line.strip():
                text = json.loads(line)[field]
                if text:  # an empty text is no document
                    yield text


# ---- the reference side (run as a child process: --worker) ------------------------------------

def find_tokenizer(path):
    if os.path.isdir(path):
        for name in ("tokenizer.model", "tokenizer.json"):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        sys.exit(f"{path}: no tokenizer.model or tokenizer.json (tokenizer.bin has no Python reference)")
    return path


def worker(tokenizer_path, corpus, field, threads, first_id, out_path):
    """Encodes every document; writes the ids (int32, documents concatenated, each led by
    first_id when >= 0) and the document starts (int64) as .npy files; prints one JSON line."""
    import numpy as np
    start = time.time()
    if tokenizer_path.endswith(".model"):
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
        encode = lambda texts: sp.encode(texts, out_type=int, num_threads=threads)  # noqa: E731
        kind = f"sentencepiece {spm.__version__}"
    else:
        from tokenizers import Tokenizer
        import tokenizers
        tok = Tokenizer.from_file(tokenizer_path)
        batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        encode = lambda texts: [e.ids for e in batch(texts, add_special_tokens=False)]  # noqa: E731
        kind = f"tokenizers {tokenizers.__version__} ({batch.__name__})"
    lead = [first_id] if first_id >= 0 else []
    parts, starts, position, docs, encode_s = [], [], 0, 0, 0.0
    texts = []

    def flush():
        nonlocal position, docs, encode_s
        t = time.time()
        encoded = encode(texts)
        encode_s += time.time() - t
        for ids in encoded:
            starts.append(position)
            row = lead + list(ids)
            parts.append(np.asarray(row, dtype=np.int32))
            position += len(row)
        docs += len(texts)
        texts.clear()

    for text in read_records(corpus, field):
        texts.append(text)
        if len(texts) == CHUNK_DOCS:
            flush()
    if texts:
        flush()
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    wall = time.time() - start
    np.save(out_path + ".ids.npy", ids)
    np.save(out_path + ".starts.npy", np.asarray(starts, dtype=np.int64))
    print(json.dumps({"kind": kind, "docs": docs, "tokens": int(ids.size), "seconds": wall,
                      "encode_seconds": encode_s}))


# ---- dha's shards -----------------------------------------------------------------------------

def read_shards(directory):
    """All train-*.tok of a dha-tokenize directory: (ids int64, document starts int64)."""
    import numpy as np
    ids, starts, offset = [], [], 0
    paths = sorted(glob.glob(os.path.join(directory, "train-*.tok")))
    if not paths:
        sys.exit(f"{directory}: no train-*.tok shard")
    for path in paths:
        with open(path, "rb") as f:
            header = f.read(HEADER)
        if header[:8] != MAGIC:
            sys.exit(f"{path}: not a dha shard (magic {header[:8]!r})")
        version = int.from_bytes(header[8:12], "little")
        width = int.from_bytes(header[12:16], "little")
        count = int.from_bytes(header[24:32], "little")
        n_docs = int.from_bytes(header[32:40], "little")
        dtype = {2: "<u2", 4: "<u4"}[width]
        tokens = np.fromfile(path, dtype=dtype, count=count, offset=HEADER).astype(np.int64)
        if version >= 2:
            index = np.fromfile(path, dtype="<u8", count=n_docs, offset=HEADER + count * width).astype(np.int64)
        else:
            sys.exit(f"{path}: version {version} shard (no document index); rerun dha-tokenize")
        ids.append(tokens)
        starts.append(index + offset)
        offset += count
    return np.concatenate(ids), np.concatenate(starts)


def run_child(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, peak RSS in MB of that child)."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} exited with {proc.returncode}")
    return out, wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tools", help="directory holding dha-tokenize")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--max-mb", type=float, default=200.0)
    p.add_argument("--compress", choices=["none", "gz", "zst"], default="none")
    p.add_argument("--text-field", default="text")
    p.add_argument("--corpus")
    p.add_argument("--reference-only", action="store_true")
    p.add_argument("--worker", nargs=5, metavar=("TOKENIZER", "CORPUS", "FIELD", "FIRST_ID", "OUT"),
                   help=argparse.SUPPRESS)
    p.add_argument("sources", nargs="*")
    a = p.parse_args()
    if a.worker:
        tokenizer_path, corpus, field, first_id, out = a.worker
        worker(tokenizer_path, corpus, field, a.threads, int(first_id), out)
        return 0

    import numpy as np
    os.makedirs(a.work, exist_ok=True)
    tokenizer_path = find_tokenizer(os.path.abspath(a.tokenizer))
    corpus = a.corpus
    if not corpus:
        if not a.sources:
            p.error("give SOURCE text files or --corpus")
        suffix = {"none": "", "gz": ".gz", "zst": ".zst"}[a.compress]
        corpus = build_corpus(a.sources, os.path.join(a.work, "corpus.jsonl" + suffix), a.max_mb)
    corpus_mb = os.path.getsize(corpus) / 1e6
    rows = []

    # dha-tokenize (it also says how documents begin: data.json's first_token_id).
    first_id = -1
    dha = None
    if not a.reference_only:
        if not a.tools:
            p.error("--tools DIR (where dha-tokenize is), or --reference-only")
        out_dir = os.path.join(a.work, "dha-tokens")
        cmd = [os.path.join(a.tools, "dha-tokenize"), "--tokenizer", tokenizer_path, "--threads", str(a.threads),
               "--text-field", a.text_field, "--heldout", "0", "--force", "--out", out_dir, corpus]
        print("+ " + " ".join(cmd), flush=True)
        out, wall, rss = run_child(cmd)
        sys.stdout.write(out)
        meta = json.load(open(os.path.join(out_dir, "data.json")))
        first_id = meta["first_token_id"] if meta.get("first_token_id") is not None else -1
        dha = read_shards(out_dir)
        rows.append(("dha-tokenize", int(dha[0].size), int(dha[1].size), wall, None, rss))
        print(f"dha: documents begin with {meta.get('first_token')} (id {first_id})", flush=True)
    elif tokenizer_path.endswith(".model"):
        import sentencepiece as spm
        first_id = spm.SentencePieceProcessor(model_file=tokenizer_path).bos_id()  # dha: BOS + tokens

    # The reference, in its own process with its thread count.
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), RAYON_RS_NUM_CPUS=str(a.threads),
               TOKENIZERS_PARALLELISM="true", OMP_NUM_THREADS=str(a.threads))
    ref_out = os.path.join(a.work, "reference")
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(a.threads), "--tokenizer", tokenizer_path,
           "--work", a.work, "--worker", tokenizer_path, corpus, a.text_field, str(first_id), ref_out]
    out, wall, rss = run_child(cmd, env=env)
    info = json.loads(out.strip().splitlines()[-1])
    rows.append((info["kind"], info["tokens"], info["docs"], wall, info["encode_seconds"], rss))

    print(f"\n{corpus} ({corpus_mb:.1f} MB), {a.threads} threads, tokenizer {tokenizer_path}")
    print(f"{'':40s} {'docs':>10s} {'tokens':>12s} {'wall s':>8s} {'tokens/s':>12s} {'encode tokens/s':>16s} "
          f"{'peak RSS MB':>12s}")
    for name, tokens, docs, wall_s, encode_s, rss_mb in rows:
        encode_rate = f"{tokens / encode_s:16.0f}" if encode_s else f"{'-':>16s}"
        print(f"{name:40s} {docs:10d} {tokens:12d} {wall_s:8.1f} {tokens / wall_s:12.0f} {encode_rate} {rss_mb:12.0f}")

    if dha is None:
        print("ids not compared (--reference-only)")
        return 0
    ref_ids = np.load(ref_out + ".ids.npy").astype(np.int64)
    ref_starts = np.load(ref_out + ".starts.npy")
    ids, starts = dha
    if ids.size == ref_ids.size and starts.size == ref_starts.size and np.array_equal(ids, ref_ids) \
            and np.array_equal(starts, ref_starts):
        print(f"ids equal: {ids.size} tokens in {starts.size} documents")
        return 0
    n = min(ids.size, ref_ids.size)
    diff = np.flatnonzero(ids[:n] != ref_ids[:n])
    at = int(diff[0]) if diff.size else n
    doc = int(np.searchsorted(ref_starts, at, side="right") - 1)
    print(f"FAIL ids differ: dha {ids.size} tokens in {starts.size} documents, reference {ref_ids.size} in "
          f"{ref_starts.size}; first difference at token {at} (document {doc}): dha {ids[max(0, at - 3):at + 5].tolist()} "
          f"vs reference {ref_ids[max(0, at - 3):at + 5].tolist()}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
