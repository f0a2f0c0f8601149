"""Hugging Face `tokenizers` on the same documents as bench_bpe_encode: single
thread (one encode per document, TOKENIZERS_PARALLELISM=false) and encode_batch
on all cores.  usage: bpe_encode_reference.py TOKENIZER.json TEXT.txt"""
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402


def split_documents(text):
    # dha::split_documents: runs of blank lines (empty or only " \t\r\f\v")
    # separate documents, each kept exactly as written; the "\n" or "\r\n"
    # ending a document's last line belongs to the separator.
    docs, current, broken = [], [], False
    lines = text.split("\n")

    def close():
        doc = "\n".join(current)
        docs.append(doc[:-1] if broken and doc.endswith("\r") else doc)

    for i, line in enumerate(lines):
        if line.strip(" \t\r\f\v") == "":
            if current:
                close()
            current = []
        else:
            current.append(line)
            broken = i + 1 < len(lines)
    if current:
        close()
    return docs


def main(tokenizer_path, text_path):
    tok = Tokenizer.from_file(tokenizer_path)
    with open(text_path, encoding="utf-8", newline="") as f:
        docs = split_documents(f.read())
    size = sum(len(d.encode("utf-8")) for d in docs)
    print("%s: %d documents, %.2f MB" % (text_path, len(docs), size / 1e6))
    start = time.perf_counter()
    tokens = sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs)
    s = time.perf_counter() - start
    print("tokenizers, one thread, encode per document: %.3f s, %.2f MB/s, %d tokens" % (s, size / 1e6 / s, tokens))
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    start = time.perf_counter()
    tokens = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))
    s = time.perf_counter() - start
    print("tokenizers, encode_batch on %d cores: %.3f s, %.2f MB/s, %d tokens" % (os.cpu_count(), s, size / 1e6 / s, tokens))


if __name__ == "__main__":
    main(*sys.argv[1:3])
