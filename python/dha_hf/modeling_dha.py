# DhaForCausalLM: the forward of the dha toolkit (src/model.cpp) in plain PyTorch for
# transformers' AutoModelForCausalLM with trust_remote_code. Embedded in libdha and
# written into every dha directory next to configuration_dha.py.
"""LLaMA with Decoupled-Head Attention and Shared Attention layers.

RMSNorm (in float32), rotary embeddings in the rotate-half layout, SwiGLU, and
per-layer grouped attention: query head ``i`` of layer ``l`` reads key head
``k_map[l][i]`` and value head ``v_map[l][i]``. A layer with an empty ``k_map`` row
has no queries or keys and applies the attention probabilities of its source layer
(the last earlier layer with keys) to its own values.

The KV cache (a transformers ``DynamicCache``) holds ``H_K[l]`` key heads and
``H_V[l]`` value heads per layer, nothing more: a sharing layer caches no keys, and
its source hands over its probabilities for the new query positions over every
cached position within the same forward pass. ``kv_cache_bytes(cache)`` counts what
a cache holds: sum_l (H_K[l] + H_V[l]) * d_h * T * bytes per element.

When libdha is loaded into the process (``torch.ops.load_library(".../libdha.so")``,
the environment variable ``DHA_LIBRARY``, or a file ``dha_library.txt`` in the model
directory naming it), the non-sharing layers run ``torch.ops.dha.grouped_attention``
(its CUDA kernels on a GPU); otherwise scaled dot-product attention with the key and
value heads gathered by the maps. ``config.dha_attention_backend`` ("auto", "op",
"torch") or ``model.set_attention_backend(...)`` chooses.
"""

import dataclasses
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_dha import DhaConfig

_LIBRARY_FILE = "dha_library.txt"
_loaded_libraries = {}


# ---- libdha and its op -------------------------------------------------------------


def grouped_attention_op():
    """torch.ops.dha.grouped_attention if libdha is loaded in this process, else None."""
    try:
        return torch.ops.dha.grouped_attention
    except (AttributeError, RuntimeError):
        return None


def load_dha_library(path):
    """torch.ops.load_library(path) once; returns True when the op is then available."""
    path = os.path.abspath(os.path.expanduser(path))
    if path not in _loaded_libraries:
        try:
            torch.ops.load_library(path)
            _loaded_libraries[path] = True
        except (OSError, RuntimeError) as error:
            warnings.warn(f"dha: cannot load {path} ({error}); attention runs in plain PyTorch")
            _loaded_libraries[path] = False
    return grouped_attention_op() is not None


def _find_library(model_dir):
    """DHA_LIBRARY, else the path in <model_dir>/dha_library.txt (relative to the directory)."""
    path = os.environ.get("DHA_LIBRARY")
    if path:
        return path
    if model_dir and os.path.isfile(os.path.join(model_dir, _LIBRARY_FILE)):
        with open(os.path.join(model_dir, _LIBRARY_FILE), encoding="utf-8") as f:
            recorded = f.read().strip()
        if recorded:
            return recorded if os.path.isabs(recorded) else os.path.join(model_dir, recorded)
    return None


# ---- version differences of transformers ------------------------------------------------


def _output(cls, cache, **fields):
    """A ModelOutput with the cache under the name this transformers uses ("cache" or "past_key_values")."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields["cache" if "cache" in names else "past_key_values"] = cache
    return cls(**fields)


def _cache_layers(cache):
    """[(keys, values)] per layer of a DynamicCache (transformers 4 and 5) or of the
    tuples transformers 4's generate() hands back."""
    if isinstance(cache, (tuple, list)):
        return [(layer[0], layer[1]) for layer in cache]
    if hasattr(cache, "layers"):
        return [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


# ---- building blocks -------------------------------------------------------------------


class DhaRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalised in float32 whatever the activation dtype, as dha and HF LLaMA do.
        x32 = x.to(torch.float32)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_inverse_frequencies(config):
    """[d_h / 2] float64 inverse frequencies for config's RoPE ("default", "linear", "llama3").

    The formulas are transformers' (modeling_rope_utils); they are evaluated in float64
    as dha evaluates its RoPE tables, so long contexts keep their accuracy.
    """
    rope = config.rope_settings()
    d = config.head_dim
    exponents = torch.arange(0, d, 2, dtype=torch.float64) / d
    inv_freq = torch.pow(float(rope["rope_theta"]), -exponents)
    rope_type = rope["rope_type"]
    if rope_type == "linear":
        inv_freq = inv_freq / rope["factor"]
    elif rope_type == "llama3":
        factor = rope["factor"]
        low_freq_factor, high_freq_factor = rope["low_freq_factor"], rope["high_freq_factor"]
        old_context_len = rope["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq  # attention scaling is 1 for these three types


class DhaRotary:
    """cos/sin tables for given positions (not a module: nothing to save or initialise)."""

    def __init__(self, config):
        self.config = config
        self.inv_freq = {}  # per device, computed on first use: models are built on the meta device

    def cos_sin(self, position_ids):
        """position_ids [B, T] -> cos, sin [B, 1, T, d_h] in float32."""
        device = position_ids.device
        compute = device if device.type in ("cpu", "cuda") else torch.device("cpu")  # float64 support
        if compute not in self.inv_freq:
            with torch.device("cpu"):
                self.inv_freq[compute] = rope_inverse_frequencies(self.config).to(compute)
        angles = position_ids.to(compute, torch.float64)[..., None] * self.inv_freq[compute]
        both = torch.cat([angles, angles], dim=-1)
        return both.cos().to(device, torch.float32)[:, None], both.sin().to(device, torch.float32)[:, None]


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def causal_allowed(t_q, t_k, device):
    """[T_q, T_k] bool: query t (the last T_q of T_k positions) may read key j <= T_k - T_q + t."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(t_k - t_q)


def attention_probabilities(q, k, k_map, allowed):
    """Softmax(q k^T / sqrt(d_h)) with k's heads gathered by k_map: [B, H, T_q, T_k],
    float32 (float64 for float64 inputs). allowed: None (causal) or bool [B, 1, T_q, T_k]."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.to(compute), k.index_select(1, k_map).to(compute).transpose(-2, -1)) * scale
    t_q, t_k = q.shape[2], k.shape[2]
    if allowed is None and t_k > 1:
        allowed = causal_allowed(t_q, t_k, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def apply_attention_probabilities(p, v, v_map):
    """P [B, H, T_q, T_k] and v [B, H_V, T_k, d_h] -> [B, H, T_q, d_h] in v's dtype."""
    return torch.matmul(p, v.index_select(1, v_map).to(p.dtype)).to(v.dtype)


def sdpa_grouped_attention(q, k, v, k_map, v_map, allowed):
    """The plain-PyTorch grouped attention (dha's reference): heads gathered, then SDPA."""
    k_heads, v_heads = k.index_select(1, k_map), v.index_select(1, v_map)
    t_q, t_k = q.shape[2], k.shape[2]
    if allowed is not None:
        return F.scaled_dot_product_attention(q, k_heads, v_heads, attn_mask=allowed)
    if t_q == 1:  # one query at the end sees every key
        return F.scaled_dot_product_attention(q, k_heads, v_heads)
    if t_q == t_k:
        return F.scaled_dot_product_attention(q, k_heads, v_heads, is_causal=True)
    # SDPA's is_causal aligns top-left; queries continuing a cache need bottom-right.
    return F.scaled_dot_product_attention(q, k_heads, v_heads, attn_mask=causal_allowed(t_q, t_k, q.device))


class DhaAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.n_k_heads, self.n_v_heads = config.n_k_heads(layer_idx), config.n_v_heads(layer_idx)
        self.shares = config.shares_attention(layer_idx)
        # The source of a shared span materialises its probabilities and hands them on.
        self.emits_probabilities = (
            not self.shares and layer_idx + 1 < config.num_hidden_layers and config.shares_attention(layer_idx + 1)
        )
        d, bias = config.hidden_size, config.attention_bias
        if not self.shares:
            self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
            self.k_proj = nn.Linear(d, self.n_k_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_v_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self._maps = {"k": list(config.k_map[layer_idx]), "v": list(config.v_map[layer_idx])}
        self._map_tensors = {}

    def map_tensor(self, which, device):
        key = (which, device)
        if key not in self._map_tensors:
            self._map_tensors[key] = torch.tensor(self._maps[which], dtype=torch.int64, device=device)
        return self._map_tensors[key]

    def forward(self, x, cos, sin, cache, allowed, probabilities, use_op):
        b, t, _ = x.shape
        heads = lambda y, n: y.view(b, t, n, self.head_dim).transpose(1, 2)  # noqa: E731
        v = heads(self.v_proj(x), self.n_v_heads)
        v_map = self.map_tensor("v", x.device)
        if self.shares:
            if cache is not None:
                no_keys = v.new_empty(b, 0, t, self.head_dim)
                _, v = cache.update(no_keys, v, self.layer_idx)
            if probabilities is None or probabilities.shape[2] != t or probabilities.shape[3] != v.shape[2]:
                raise RuntimeError(
                    f"dha: layer {self.layer_idx} shares attention but got no matching probabilities from its source"
                )
            out = apply_attention_probabilities(probabilities, v, v_map)
        else:
            q = apply_rope(heads(self.q_proj(x), self.n_heads), cos, sin)
            k = apply_rope(heads(self.k_proj(x), self.n_k_heads), cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)
            k_map = self.map_tensor("k", x.device)
            if self.emits_probabilities:
                probabilities = attention_probabilities(q, k, k_map, allowed)
                out = apply_attention_probabilities(probabilities, v, v_map).to(q.dtype)
            elif use_op and allowed is None:
                out = torch.ops.dha.grouped_attention(q, k, v, k_map, v_map, True)
            else:
                out = sdpa_grouped_attention(q, k, v, k_map, v_map, allowed)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)), probabilities


class DhaMlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, hidden, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, hidden, bias=bias)
        self.up_proj = nn.Linear(d, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DhaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = DhaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DhaAttention(config, layer_idx)
        self.post_attention_layernorm = DhaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DhaMlp(config)

    def forward(self, x, cos, sin, cache, allowed, probabilities, use_op):
        attn, probabilities = self.self_attn(self.input_layernorm(x), cos, sin, cache, allowed, probabilities, use_op)
        h = x + attn
        return h + self.mlp(self.post_attention_layernorm(h)), probabilities


# ---- the models --------------------------------------------------------------------------


class DhaPreTrainedModel(PreTrainedModel):
    config_class = DhaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DhaDecoderLayer"]
    _supports_sdpa = True  # attention is SDPA or dha's op whatever the requested implementation
    _supports_cache_class = True  # transformers 4: use a DynamicCache in generate()


class DhaModel(DhaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DhaDecoderLayer(config, l) for l in range(config.num_hidden_layers))
        self.norm = DhaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = DhaRotary(config)
        self._library_checked = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _use_op(self, device):
        backend = getattr(self.config, "dha_attention_backend", "auto")
        if backend == "torch":
            return False
        if not self._library_checked:
            self._library_checked = True
            path = _find_library(getattr(self.config, "_name_or_path", None))
            if path and grouped_attention_op() is None:
                load_dha_library(path)
        available = grouped_attention_op() is not None
        if backend == "op" and not available:
            raise RuntimeError(
                'dha: dha_attention_backend is "op" but torch.ops.dha.grouped_attention is not loaded '
                "(call torch.ops.load_library on libdha.so or set DHA_LIBRARY)"
            )
        return available

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if output_attentions:
            raise ValueError("dha: output_attentions is not supported (attention is computed fused)")
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("dha: pass exactly one of input_ids and inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = h.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache:
            cache = None
        if isinstance(cache, tuple):
            raise ValueError("dha: pass a transformers Cache (e.g. DynamicCache), not a tuple of tensors")
        past = cache.get_seq_length() if cache is not None else 0
        if past + t > self.config.max_position_embeddings:
            raise ValueError(
                f"dha: {past + t} positions exceed the model's context of {self.config.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=h.device).unsqueeze(0).expand(b, t)
        cos, sin = self.rotary.cos_sin(position_ids)
        allowed = self._allowed(attention_mask, b, t, past, h.device)
        use_op = self._use_op(h.device)
        probabilities = None  # handed from a source layer to the layers that share its attention
        hidden_states = [h] if output_hidden_states else None
        for layer in self.layers:
            h, probabilities = layer(h, cos, sin, cache, allowed, probabilities, use_op)
            if output_hidden_states:
                hidden_states.append(h)
        h = self.norm(h)
        if output_hidden_states:
            hidden_states[-1] = h  # as transformers' LLaMA: the last entry is after the final norm
            hidden_states = tuple(hidden_states)
        return _output(BaseModelOutputWithPast, cache, last_hidden_state=h, hidden_states=hidden_states)

    @staticmethod
    def _allowed(attention_mask, b, t, past, device):
        """None for plain causal attention (no padding), else bool [B, 1, T, past + T]."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] != past + t:
            raise ValueError(
                f"dha: attention_mask must be [batch, past + new tokens] = [{b}, {past + t}], "
                f"got {list(attention_mask.shape)}"
            )
        valid = attention_mask.to(device=device, dtype=torch.bool)
        if bool(valid.all()):
            return None
        allowed = causal_allowed(t, past + t, device)[None, None] & valid[:, None, None, :]
        # A padding query reads no key; let it read its causal window so nothing turns NaN.
        empty = ~allowed.any(dim=-1, keepdim=True)
        return allowed | (empty & causal_allowed(t, past + t, device)[None, None])


class DhaForCausalLM(DhaPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = DhaModel(config)
        # Tied: the logits use the embedding matrix itself (no second copy, nothing to tie).
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def set_attention_backend(self, backend):
        """"auto" (dha's op when libdha is loaded), "op" (required) or "torch" (plain PyTorch)."""
        if backend not in ("auto", "op", "torch"):
            raise ValueError(f'backend must be "auto", "op" or "torch", got {backend!r}')
        self.config.dha_attention_backend = backend

    def attention_backend(self):
        """What the non-sharing layers run now: "op" or "torch"."""
        return "op" if self.model._use_op(self.device) else "torch"

    def kv_cache_bytes(self, cache):
        """Bytes the cache's key and value tensors hold."""
        total = 0
        for keys, values in _cache_layers(cache):
            for x in (keys, values):
                if x is not None:
                    total += x.numel() * x.element_size()
        return total

    def kv_cache_length(self, cache):
        """Positions the cache holds (layer 0 always has keys)."""
        keys = _cache_layers(cache)[0][0] if _cache_layers(cache) else None
        return keys.shape[2] if keys is not None and keys.dim() == 4 else 0

    def kv_cache_heads(self, cache):
        """[(key heads, value heads)] per layer of a filled cache."""
        return [(k.shape[1] if k is not None and k.dim() == 4 else 0, v.shape[1] if v is not None and v.dim() == 4 else 0)
                for k, v in _cache_layers(cache)]

    def kv_bytes_per_token(self, bytes_per_element=2):
        """dha's accounting: sum_l (H_K[l] + H_V[l]) * d_h * bytes_per_element."""
        return self.config.kv_bytes_per_token(bytes_per_element)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        cache=None,
        logits_to_keep=0,
        return_dict=None,
        **kwargs,
    ):
        kwargs.pop("cache_position", None)  # positions come from the cache length or position_ids
        logits_to_keep = kwargs.pop("num_logits_to_keep", logits_to_keep)  # transformers 4 spelling
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache if cache is not None else past_key_values,
            output_hidden_states=kwargs.pop("output_hidden_states", None),
            output_attentions=kwargs.pop("output_attentions", None),
        )
        h = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        h = h[:, keep, :]
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.model.embed_tokens.weight)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        cache_out = out.cache if hasattr(out, "cache") else out.past_key_values
        result = _output(CausalLMOutputWithPast, cache_out, loss=loss, logits=logits, hidden_states=out.hidden_states)
        if return_dict is False:
            return result.to_tuple()
        return result


# config.json of a non-GQA layout names this architecture.
class DhaLlamaForCausalLM(DhaForCausalLM):
    pass


def _prepare_inputs_for_generation_v4(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, cache_position=None, position_ids=None,
                                      use_cache=True, **kwargs):
    """transformers < 4.46 has no generic prepare_inputs_for_generation: LLaMA's, without the 4D masks."""
    if past_key_values is not None:
        if inputs_embeds is not None:
            input_ids = input_ids[:, -cache_position.shape[0]:]
        elif input_ids.shape[1] != cache_position.shape[0]:
            input_ids = input_ids[:, cache_position]
    if attention_mask is not None and position_ids is None:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        position_ids = position_ids[:, -input_ids.shape[1]:]
    if inputs_embeds is not None and cache_position[0] == 0:
        model_inputs = {"inputs_embeds": inputs_embeds, "input_ids": None}
    else:
        model_inputs = {"input_ids": input_ids.contiguous()}
    model_inputs.update(position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                        attention_mask=attention_mask)
    return model_inputs


if "NotImplementedError" in GenerationMixin.prepare_inputs_for_generation.__code__.co_names:
    DhaForCausalLM.prepare_inputs_for_generation = _prepare_inputs_for_generation_v4


__all__ = ["DhaForCausalLM", "DhaLlamaForCausalLM", "DhaModel", "DhaPreTrainedModel", "grouped_attention_op",
           "load_dha_library"]
