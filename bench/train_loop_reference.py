"""The plain PyTorch training loop that dha-train is compared with: the same
model (Hugging Face LlamaForCausalLM on an HF export), batch, sequence length,
precision (fp32 on CPU, bf16 autocast on CUDA) and optimizer (AdamW 0.9/0.95,
clip 1.0). Prints the median tokens/s over the timed steps as JSON.

usage: train_loop_reference.py HF_DIR BATCH SEQ_LEN STEPS [DEVICE]
"""
import json
import statistics
import sys
import time

import torch
from transformers import LlamaForCausalLM


def main() -> None:
    model_dir, batch, seq_len, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    vocab = model.config.vocab_size
    rates = []
    for step in range(steps):
        tokens = torch.randint(0, vocab, (batch, seq_len + 1), device=device)
        start = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(tokens[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= 2:  # warm-up steps are not timed
            rates.append(batch * seq_len / (time.perf_counter() - start))
    print(json.dumps({"tokens_per_s": statistics.median(rates), "steps_timed": len(rates), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
