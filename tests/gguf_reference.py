#!/usr/bin/env python3
"""Independent GGUF reference for tests/test_gguf.cpp, built on gguf-py (the
`gguf` PyPI package maintained with llama.cpp).

  gguf_reference.py write OUT.gguf SEED
      Writes, with gguf-py's GGUFWriter and gguf.quants.quantize, metadata of
      every value type and one tensor per supported tensor type (F32, F16, BF16,
      Q8_0, Q4_0, Q4_1), plus raw blocks of random bytes per block type; for
      each tensor NAME an F32 tensor "expected.NAME" holds gguf.quants.dequantize's
      floats.

  gguf_reference.py dump IN.gguf OUT.safetensors [NAME ...]
      Reads IN.gguf with gguf-py's GGUFReader and writes every tensor (or the
      named ones) dequantized to float32 in torch order, with the metadata as
      JSON under the safetensors metadata key "gguf" ({key: {"type", "element",
      "values"}}; floats as float.hex(), strings as hex bytes).
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from safetensors.numpy import save_file


def write(path, seed):
    np.seterr(over="ignore")  # 3e38 becomes inf in F16 on purpose
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch="reference")
    w.add_key_value("test.uint8", 200, V.UINT8)
    w.add_key_value("test.int8", -100, V.INT8)
    w.add_key_value("test.uint16", 60000, V.UINT16)
    w.add_key_value("test.int16", -30000, V.INT16)
    w.add_key_value("test.uint32", 4000000000, V.UINT32)
    w.add_key_value("test.int32", -2000000000, V.INT32)
    w.add_key_value("test.float32", 0.1, V.FLOAT32)
    w.add_key_value("test.bool", True, V.BOOL)
    w.add_key_value("test.string", "h\u00e9llo \u2713", V.STRING)
    w.add_key_value("test.empty_string", "", V.STRING)
    w.add_key_value("test.uint64", 18000000000000000000, V.UINT64)
    w.add_key_value("test.int64", -9000000000000000000, V.INT64)
    w.add_key_value("test.float64", -1.0e-300, V.FLOAT64)
    w.add_key_value("test.strings", ["a", "", "b c", "\u0120the"], V.ARRAY, V.STRING)
    w.add_key_value("test.int32s", [1, -2, 3], V.ARRAY, V.INT32)
    w.add_key_value("test.uint8s", [0, 255], V.ARRAY, V.UINT8)
    w.add_key_value("test.float32s", [0.5, -2.25, 1e-8], V.ARRAY, V.FLOAT32)
    w.add_key_value("test.bools", [True, False, True], V.ARRAY, V.BOOL)
    w.add_key_value("test.uint64s", [1, 2 ** 64 - 1], V.ARRAY, V.UINT64)

    # Values with outliers, an all-zero block, a constant block, negatives.
    data = (rng.standard_normal((6, 96)) * 0.05).astype(np.float32)
    data[0, :32] = 0.0
    data[1, 32:64] = 0.75
    data[2, 5] = 3.0
    data[3, 70] = -4.0
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-45, 65504.0, 3.0e38], dtype=np.float32)
    data[4, :8] = specials
    finite = data.copy()
    finite[4, :8] = [0.0, -0.0, 1.0, -1.0, 1e-3, -2e-3, 0.5, 2.0]  # quantizers assume finite input
    tensors = {}
    for qtype in (Q.F32, Q.F16, Q.BF16):
        tensors[qtype.name.lower()] = (gguf.quants.quantize(data, qtype), qtype)
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        tensors[qtype.name.lower()] = (gguf.quants.quantize(finite, qtype), qtype)
        # Random bytes as blocks: every float16 scale (subnormals included; no
        # inf or NaN) and every nibble / int8 value.
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(4, 3 * block_bytes), dtype=np.uint8)
        scale_fields = 2 if qtype == Q.Q4_1 else 1
        for b in range(3):
            for f in range(scale_fields):
                while True:
                    bits = int(rng.integers(0, 1 << 16))
                    if (bits >> 10) & 0x1F != 0x1F:
                        break
                at = b * block_bytes + 2 * f
                raw[:, at] = bits & 0xFF
                raw[:, at + 1] = bits >> 8
        tensors[qtype.name.lower() + "_raw"] = (raw, qtype)
    tensors["f32_1d"] = (data[5].copy(), Q.F32)
    tensors["q8_0_3d"] = (gguf.quants.quantize(finite.reshape(2, 3, 96), Q.Q8_0), Q.Q8_0)

    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, array, raw_dtype=qtype)
    for name, (array, qtype) in tensors.items():
        w.add_tensor("expected." + name, np.ascontiguousarray(gguf.quants.dequantize(array, qtype), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_json(field):
    main = field.types[0]
    # An array's element type as stored (parts: key length, key, type, element
    # type, count, ...): field.types omits it for an empty array.
    element = V(int(field.parts[3][0])) if main == V.ARRAY else main
    if element == V.STRING:
        values = [bytes(field.parts[i]).hex() for i in field.data]
    elif element in (V.FLOAT32, V.FLOAT64):
        values = [float(field.parts[i][0]).hex() for i in field.data]
    elif element == V.BOOL:
        values = [bool(field.parts[i][0]) for i in field.data]
    else:
        values = [int(field.parts[i][0]) for i in field.data]
    return {"type": main.name, "element": element.name, "values": values}


def dump(path, out, names):
    r = gguf.GGUFReader(path)
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's own pseudo-fields (version, counts)
        meta[key] = field_json(field)
    arrays = {}
    for t in r.tensors:
        if names and t.name not in names:
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        arrays[t.name] = np.ascontiguousarray(values.reshape(tuple(reversed([int(d) for d in t.shape]))),
                                              dtype=np.float32)
        arrays[t.name + ".type"] = np.array([int(t.tensor_type)], dtype=np.float32)
    missing = [n for n in names if n not in arrays]
    if missing:
        sys.exit("no tensors named " + ", ".join(missing))
    save_file(arrays, out, metadata={"gguf": json.dumps(meta), "version": str(int(r.fields["GGUF.version"].parts[0][0]))})


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
