"""Writes a LLaMA-shaped slice with random weights the way users' checkpoints
are written: transformers' save_pretrained, bf16, several safetensors shards.

usage: memory_scale_slice.py OUT_DIR DIM LAYERS HEADS FFN VOCAB SHARDS
(the default bench shape is Llama-2-7B's layer: 4096 32 x 128 11008 32000)
"""
import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    out, dim, layers, heads, ffn, vocab, shards = sys.argv[1], *map(int, sys.argv[2:8])
    config = LlamaConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=ffn, vocab_size=vocab,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.02, torch_dtype="bfloat16")
    torch.manual_seed(0)
    # Built directly in bf16 so that the builder itself needs 2 bytes per parameter.
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    shard_bytes = (2 * params) // shards + 1
    model.save_pretrained(out, max_shard_size=shard_bytes, safe_serialization=True)
    print(json.dumps({"parameters": params, "dir": out}))


if __name__ == "__main__":
    main()
