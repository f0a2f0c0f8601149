# DhaConfig: the config.json of a dha directory (a LLaMA config plus the per-layer
# K/V head maps under "dha") for transformers' AutoConfig with trust_remote_code.
# Written into every dha directory by the dha toolkit (embedded in libdha).
"""Configuration of a Decoupled-Head Attention (DHA) LLaMA model.

Each layer ``l`` has two maps: query head ``i`` reads key head ``k_map[l][i]`` and
value head ``v_map[l][i]``. Each map is onto ``0..H_K[l]-1`` (resp. ``H_V[l]-1``);
groups may be unequal and non-contiguous, and ``H_K[l] != H_V[l]`` is allowed.
A layer with an empty ``k_map`` row shares attention (Shared Attention): it has no
``q_proj``/``k_proj`` and reuses the attention probabilities of the last earlier
layer that has keys. MHA and GQA are the special cases of equal contiguous groups.
"""

from transformers import PretrainedConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# The model types dha writes a dha directory as, each with the fields it implies when read
# here as a dha config: a GQA layout is written as "llama" (or "qwen2" with q/k/v biases) so
# that plain transformers reads it too. The remote-code column of dha's checkpoint family
# table (src/io/checkpoint_families.cpp); tests/test_model_families.cpp checks they agree.
WRITTEN_AS = {"llama": {}, "qwen2": {"attention_bias": True}, "dha_llama": {}}

# transformers 5 keeps all RoPE settings in `rope_parameters` (with `rope_theta`) and
# turns `rope_scaling` into an alias of it; transformers 4 has `rope_theta` + `rope_scaling`.
_ROPE_SCALING_IS_ALIAS = isinstance(getattr(PretrainedConfig, "rope_scaling", None), property)


def _gqa_map(n_heads, n_kv_heads):
    group = n_heads // n_kv_heads
    return [i // group for i in range(n_heads)]


def _check_map(row, name, layer, n_heads):
    if len(row) != n_heads:
        raise ValueError(
            f'config.json "dha": {name}[{layer}] has {len(row)} entries, expected one per query head ({n_heads})'
        )
    for i, h in enumerate(row):
        if not isinstance(h, int) or isinstance(h, bool) or h < 0 or h >= n_heads:
            raise ValueError(f'config.json "dha": {name}[{layer}][{i}] = {h!r} is out of range [0, {n_heads})')
    width = max(row) + 1
    missing = sorted(set(range(width)) - set(row))
    if missing:
        raise ValueError(
            f'config.json "dha": {name}[{layer}] never uses head {missing[0]} but uses head {width - 1} '
            "(maps must be onto 0..H-1)"
        )


def _standard_rope(rope_theta, rope_scaling, rope_parameters, max_position_embeddings):
    """One flat dict {"rope_type", "rope_theta", ...} from any of the ways configs spell RoPE."""
    rope = None
    for source in (rope_parameters, rope_scaling):  # rope_parameters wins, as in the dha reader
        if source:
            if not isinstance(source, dict):
                raise ValueError(f"config.json: rope settings must be an object, got {source!r}")
            rope = dict(source)
            break
    rope = rope or {}
    rope_type = rope.pop("type", None)
    rope_type = rope.get("rope_type", rope_type) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f'config.json: RoPE type "{rope_type}" is not supported by DhaForCausalLM '
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    rope["rope_type"] = rope_type
    theta = rope.get("rope_theta", rope_theta)
    rope["rope_theta"] = float(theta if theta is not None else 10000.0)
    needed = {"default": (), "linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
    for key in needed[rope_type]:
        if key not in rope:
            raise ValueError(f'config.json: RoPE type "{rope_type}" needs "{key}"')
    if rope_type == "llama3":
        rope.setdefault("original_max_position_embeddings", max_position_embeddings)
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("config.json: partial_rotary_factor != 1 is not supported by DhaForCausalLM")
    return rope


class DhaConfig(PretrainedConfig):
    model_type = "dha_llama"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=None,
        rope_scaling=None,
        rope_parameters=None,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        use_cache=True,
        initializer_range=0.02,
        dha=None,
        dha_attention_backend="auto",
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        if hidden_act != "silu":
            raise ValueError(f'config.json: hidden_act "{hidden_act}" is not supported (LLaMA uses "silu")')
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = bool(attention_bias)  # q/k/v biases, no o_proj bias (as Qwen2)
        self.mlp_bias = bool(mlp_bias)
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        # "auto": torch.ops.dha.grouped_attention when libdha is loaded, else plain PyTorch;
        # "op": require the op; "torch": never use it.
        if dha_attention_backend not in ("auto", "op", "torch"):
            raise ValueError(f'dha_attention_backend must be "auto", "op" or "torch", got {dha_attention_backend!r}')
        self.dha_attention_backend = dha_attention_backend

        rope = _standard_rope(rope_theta, rope_scaling, rope_parameters, max_position_embeddings)
        self.rope_theta = rope["rope_theta"]
        if _ROPE_SCALING_IS_ALIAS:
            self.rope_parameters = rope
        else:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            self.rope_scaling = scaling if scaling["rope_type"] != "default" else None

        if dha is None:
            # A plain LLaMA config: GQA with contiguous equal groups.
            if num_attention_heads % self.num_key_value_heads != 0:
                raise ValueError(
                    f"config.json: num_key_value_heads {self.num_key_value_heads} must divide "
                    f"num_attention_heads {num_attention_heads}"
                )
            row = _gqa_map(num_attention_heads, self.num_key_value_heads)
            dha = {"k_map": [list(row) for _ in range(num_hidden_layers)],
                   "v_map": [list(row) for _ in range(num_hidden_layers)], "format_version": 1}
        self.dha = dha
        self._check_layout()

        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        # Set again: transformers 5 keeps these out of its base fields.
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        written_as = config_dict.get("model_type")
        if written_as in WRITTEN_AS and "dha" in config_dict:
            config_dict = dict(config_dict, model_type=cls.model_type, **WRITTEN_AS[written_as])
        return config_dict, kwargs

    # ---- the head layout -------------------------------------------------------------

    def _check_layout(self):
        dha = self.dha
        if not isinstance(dha, dict) or not isinstance(dha.get("k_map"), list) or not isinstance(dha.get("v_map"), list):
            raise ValueError('config.json: "dha" needs "k_map" and "v_map" as arrays of integer arrays')
        n_layers, n_heads = self.num_hidden_layers, self.num_attention_heads
        for name in ("k_map", "v_map"):
            if len(dha[name]) != n_layers:
                raise ValueError(f'config.json "dha": {name} has {len(dha[name])} layers, expected {n_layers}')
        for layer in range(n_layers):
            k_row, v_row = dha["k_map"][layer], dha["v_map"][layer]
            if len(k_row) == 0:
                if layer == 0:
                    raise ValueError('config.json "dha": k_map[0] is empty, but layer 0 cannot share attention')
            else:
                _check_map(k_row, "k_map", layer, n_heads)
            _check_map(v_row, "v_map", layer, n_heads)
        spans = dha.get("shared_attention")
        if spans is not None:
            in_span = [False] * n_layers
            for span in spans:
                if not (isinstance(span, (list, tuple)) and len(span) == 2 and 0 <= span[0] <= span[1] < n_layers):
                    raise ValueError(f'config.json "dha": shared_attention span {span!r} does not fit layers 0..{n_layers - 1}')
                for layer in range(span[0], span[1] + 1):
                    in_span[layer] = True
            for layer in range(n_layers):
                if in_span[layer] != (len(dha["k_map"][layer]) == 0):
                    raise ValueError(
                        f'config.json "dha": layer {layer} is {"in" if in_span[layer] else "in no"} shared_attention '
                        f'span but k_map[{layer}] is {"not " if in_span[layer] else ""}empty'
                    )

    @property
    def k_map(self):
        return self.dha["k_map"]

    @property
    def v_map(self):
        return self.dha["v_map"]

    def shares_attention(self, layer):
        return len(self.dha["k_map"][layer]) == 0

    def attention_source(self, layer):
        """The layer whose attention probabilities `layer` uses (itself unless it shares)."""
        while layer > 0 and self.shares_attention(layer):
            layer -= 1
        return layer

    def n_k_heads(self, layer):
        row = self.dha["k_map"][layer]
        return max(row) + 1 if row else 0

    def n_v_heads(self, layer):
        return max(self.dha["v_map"][layer]) + 1

    def kv_heads(self):
        """sum_l H_K[l] + H_V[l]: the KV heads the cache holds per token."""
        return sum(self.n_k_heads(l) + self.n_v_heads(l) for l in range(self.num_hidden_layers))

    def kv_bytes_per_token(self, bytes_per_element=2):
        """dha's KV accounting: sum_l (H_K[l] + H_V[l]) * d_h * bytes_per_element."""
        return self.kv_heads() * self.head_dim * bytes_per_element

    def rope_settings(self):
        """The flat RoPE dict {"rope_type", "rope_theta", ...} whatever the transformers version."""
        if _ROPE_SCALING_IS_ALIAS:
            return dict(self.rope_parameters)
        rope = dict(self.rope_scaling or {"rope_type": "default"})
        rope["rope_theta"] = self.rope_theta
        return rope


__all__ = ["DhaConfig"]
