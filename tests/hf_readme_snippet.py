# Load a dha directory with transformers, and call dha's attention op from Python.
import torch
from transformers import AutoModelForCausalLM

# A dha directory (e.g. dha-convert ... --out demo-dha) loads with the code it carries.
model = AutoModelForCausalLM.from_pretrained("demo-dha", trust_remote_code=True)
prompt = torch.tensor([[1, 15, 27, 4]])  # token ids, BOS first
out = model.generate(prompt, max_new_tokens=16, do_sample=False)
print(out[0].tolist())
print(model.kv_bytes_per_token(2), "KV-cache bytes per token in bf16")

# dha's attention op from Python: query head i reads key head k_map[i] and value head v_map[i].
torch.ops.load_library("build/libdha.so")
q = torch.randn(1, 4, 5, 8)  # [batch, query heads, tokens, head dim]
k = torch.randn(1, 2, 5, 8)  # 2 key heads
v = torch.randn(1, 3, 5, 8)  # 3 value heads
k_map = torch.tensor([0, 1, 1, 0])
v_map = torch.tensor([2, 0, 1, 1])
y = torch.ops.dha.grouped_attention(q, k, v, k_map, v_map, True)  # causal
print(y.shape)  # torch.Size([1, 4, 5, 8])
# With libdha loaded, the model's attention layers run this op too.
print(model.attention_backend())  # op
