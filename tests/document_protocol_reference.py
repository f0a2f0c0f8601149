"""Tokenizers and reference lengths for tests/test_document_protocol.cpp, from Hugging Face `tokenizers`.

  OUT TEXT HELDOUT_TEXT
      trains a small byte-level BPE on TEXT's documents and writes three
      tokenizers that differ only in how a document begins:
        OUT/separator/  special <|endoftext|>, no BOS (GPT-2's and SmolLM2's convention)
        OUT/bos/        the same, with tokenizer_config.json add_bos_token and
                        bos_token <|im_start|>
        OUT/given/      no special token at all
      and OUT/<name>/heldout_lengths.json: the number of ids of each document of
      HELDOUT_TEXT (encode with add_special_tokens=False).

Documents are split as dha's split_documents splits them: runs of blank lines
separate them, and each is kept exactly as written.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


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


def documents(path):
    with open(path, encoding="utf-8", newline="") as f:
        return split_documents(f.read())


def train(docs, special):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=special, show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def main(out, text_path, heldout_path):
    docs, heldout = documents(text_path), documents(heldout_path)
    variants = {
        "separator": (train(docs, ["<|endoftext|>", "<|im_start|>"]), None),
        "bos": (train(docs, ["<|endoftext|>", "<|im_start|>"]),
                {"add_bos_token": True, "bos_token": "<|im_start|>", "eos_token": None}),
        "given": (train(docs, []), None),
    }
    for name, (tok, config) in variants.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        if config is not None:
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(config, f)
        lengths = [len(e.ids) for e in tok.encode_batch(heldout, add_special_tokens=False)]
        with open(os.path.join(d, "heldout_lengths.json"), "w") as f:
            json.dump(lengths, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
