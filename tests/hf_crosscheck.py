"""Independent cross-check: logits of Hugging Face transformers' LlamaForCausalLM
on an HF directory written by dha, against the logits dha computed.

usage: hf_crosscheck.py MODEL_DIR EXPECTED.safetensors
EXPECTED holds "tokens" [B, T] (float32 ids) and "logits" [B, T, V] from dha.
Prints the max abs difference; exits 0 if below 1e-4, 1 otherwise.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main() -> int:
    model_dir, expected_path = sys.argv[1], sys.argv[2]
    expected = load_file(expected_path)
    tokens = expected["tokens"].to(torch.int64)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(tokens).logits
    diff = (logits - expected["logits"]).abs().max().item()
    print(f"max abs logit difference vs transformers: {diff:.3e}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
