"""Reference ids for tests/test_tokenizer_bpe.cpp from Hugging Face `tokenizers`.

  build OUT DOCS ADV ids|no-ids [MIXED_DOCS]
                          train a byte-level BPE vocab on part of DOCS, write the
                          tokenizer variants to OUT/<name>/ and (ids) the ids of
                          every document (OUT/<name>/ids.bin, add_special_tokens=False;
                          of MIXED_DOCS for the slow "mixed" variant) and of ADV
                          with special tokens (ids_special.bin)
  encode DOCS DIR OUT [DIR OUT ...]
                          ids of DOCS by DIR/tokenizer.json (OUT) and by
                          transformers' AutoTokenizer on DIR (OUT.auto, its defaults)
  gguf FILE OUT DOCS      the tokenizer of a GGUF file: its metadata as
                          OUT/spec.json, a tokenizer.json built from it with
                          `tokenizers` (OUT/tokenizer.json) and its ids of DOCS

Documents: uint32 count, then uint32 length + UTF-8 bytes each. Ids: uint32
count, then uint32 n + n int32 each.
"""
import json
import os
import struct
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    # GPT-2's byte alphabet: the characters that bytes 0..255 are spelled with.
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def read_docs(path):
    with open(path, "rb") as f:
        data = f.read()
    (count,) = struct.unpack_from("<I", data, 0)
    pos, docs = 4, []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        docs.append(data[pos:pos + n].decode("utf-8"))
        pos += n
    return docs


def write_ids(path, all_ids):
    out = [struct.pack("<I", len(all_ids))]
    for ids in all_ids:
        out.append(struct.pack("<I", len(ids)))
        out.append(struct.pack("<%di" % len(ids), *ids))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def encode_all(tok, docs, special):
    return [e.ids for e in tok.encode_batch(docs, add_special_tokens=special)]


def save(tok, out, name, docs, adv, config=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    if docs is None:
        return
    write_ids(os.path.join(d, "ids.bin"), encode_all(tok, docs, False))
    write_ids(os.path.join(d, "ids_special.bin"), encode_all(tok, adv, True))


def variant(base, edit):
    j = json.loads(base.to_str())
    edit(j)
    return Tokenizer.from_str(json.dumps(j))


def build(out, docs_path, adv_path, mode, mixed_path=None):
    docs, adv = read_docs(docs_path), read_docs(adv_path)
    mixed_docs = read_docs(mixed_path) if mixed_path else docs
    train_docs = docs[::7]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL, show_progress=False)
    # U+180E between punctuation: merges across it exist only if Oniguruma's \s
    # (which lacks U+180E, unlike PCRE2's) kept it in one word during training.
    tok.train_from_iterator(train_docs + ["x!\u180e!y !\u180e!\u180e! " * 20], trainer=trainer)
    words = {}
    for doc in docs[:3000]:
        for w in doc.split():
            if w.isalpha() and len(w) >= 7:
                words[w] = words.get(w, 0) + 1
    frequent = sorted(words, key=lambda w: (-words[w], w))[:40]
    if mode == "no-ids":
        docs = mixed_docs = None

    save(tok, out, "gpt2", docs, adv)

    prefix = Tokenizer.from_str(tok.to_str())
    prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    save(prefix, out, "gpt2_prefix", docs, adv)

    # Llama-3: Split + ByteLevel without regex, ignore_merges, and whole words
    # added to the vocab that merges cannot build (ignore_merges takes them).

    def llama3(j):
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        j["model"]["ignore_merges"] = True
        vocab = j["model"]["vocab"]
        next_id = max(vocab.values()) + 1
        for w in frequent:
            for form in ("\u0120" + w, w):
                if form not in vocab:
                    vocab[form] = next_id
                    next_id += 1
        j["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}]}
    save(variant(tok, llama3), out, "llama3", docs, adv)

    def qwen2(j):
        j["normalizer"] = {"type": "NFC"}
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    save(variant(tok, qwen2), out, "qwen2", docs, adv,
         {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>", "add_eos_token": True})

    def smollm(j):
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    save(variant(tok, smollm), out, "smollm", docs, adv,
         {"add_bos_token": False, "bos_token": {"content": "<|im_start|>", "__type": "AddedToken"},
          "eos_token": "<|im_end|>"})

    # Every other step type and behavior, steps after ByteLevel (which then see
    # byte-level characters), a normalizer Sequence, and added-token flags.
    def mixed(j):
        j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "NFC"}]}
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"^a|b$|\h{3,}|\u00e9"}, "behavior": "Isolated", "invert": False},
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": r"\p{P}+"}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": r"[aeiou]+"}, "behavior": "Contiguous", "invert": True},
            {"type": "Digits", "individual_digits": False},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            {"type": "Split", "pattern": {"Regex": r"\u010a+"}, "behavior": "Removed", "invert": False},
            {"type": "Split", "pattern": {"Regex": r"e"}, "behavior": "Isolated", "invert": False}]}
        # Characters the vocab lacks: bytes 1 and 2 become one fused <unk>,
        # bytes 3 and 4 the <0xXX> byte-fallback tokens of their UTF-8.
        vocab = j["model"]["vocab"]
        alphabet = {b: c for b, c in zip(range(256), bytes_to_unicode())}
        for b in (1, 2, 3, 4):
            assert not any(alphabet[b] in part for m in j["model"]["merges"]
                           for part in (m.split(" ") if isinstance(m, str) else m))
            del vocab[alphabet[b]]
        next_id = max(vocab.values()) + 1
        for b in (3, 4):  # steps follow ByteLevel, so the missing characters are spelled ones
            for x in alphabet[b].encode("utf-8"):
                if "<0x%02X>" % x not in vocab:
                    vocab["<0x%02X>" % x] = next_id
                    next_id += 1
        j["model"]["unk_token"] = "<|endoftext|>"
        j["model"]["fuse_unk"] = True
        j["model"]["byte_fallback"] = True
    mix = variant(tok, mixed)
    mix.add_tokens([AddedToken("[note]", single_word=True, normalized=True),
                    AddedToken("ﬁx", normalized=True)])
    mix.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    save(mix, out, "mixed", mixed_docs, adv)


def encode(docs_path, *dirs_and_outs):
    docs = read_docs(docs_path)
    from transformers import AutoTokenizer
    for d, out in zip(dirs_and_outs[::2], dirs_and_outs[1::2]):
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        write_ids(out, encode_all(tok, docs, False))
        auto = AutoTokenizer.from_pretrained(d)
        write_ids(out + ".auto", [auto(doc)["input_ids"] for doc in docs])


def gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf(path, out, docs_path):
    from gguf import GGUFReader
    reader = GGUFReader(path)
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    types = gguf_field(reader, "tokenizer.ggml.token_type", [])
    spec = {
        "model": gguf_field(reader, "tokenizer.ggml.model"),
        "pre": gguf_field(reader, "tokenizer.ggml.pre", "default"),
        "tokens": tokens, "merges": merges, "token_types": types,
        "bos_id": gguf_field(reader, "tokenizer.ggml.bos_token_id", -1),
        "eos_id": gguf_field(reader, "tokenizer.ggml.eos_token_id", -1),
        "unk_id": gguf_field(reader, "tokenizer.ggml.unknown_token_id", -1),
        "add_bos": bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos": bool(gguf_field(reader, "tokenizer.ggml.add_eos_token", False)),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "spec.json"), "w") as f:
        json.dump(spec, f)
    if spec["model"] != "gpt2" or spec["pre"] != "smollm":
        sys.exit("expected a gpt2 / smollm tokenizer, got %s / %s" % (spec["model"], spec["pre"]))
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    unk = tokens[spec["unk_id"]] if spec["unk_id"] >= 0 else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types) if ty == 4])
    tok.save(os.path.join(out, "tokenizer.json"))
    write_ids(os.path.join(out, "ids.bin"), encode_all(tok, read_docs(docs_path), False))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"build": build, "encode": encode, "gguf": gguf}[command](*args)
