"""Hugging Face ``config.json`` -> :class:`ModelSpec`, one reader per supported ``model_type``."""

from __future__ import annotations

from typing import Any

from ..errors import ShapeError, SpecError
from .model import ModelSpec

_HF_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
HF_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt2")


def _num(v: Any, key: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"config.json of {name!r}: {key} must be a number, got {v!r}")
    return float(v)


def _get(cfg: dict[str, Any], key: str, name: str, default: Any = None) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is None:
        raise SpecError(f"config.json of {name!r}: missing required key {key!r}")
    return default


def model_from_hf_config(cfg: dict[str, Any], name: str) -> ModelSpec:
    """Map a Hugging Face ``config.json`` onto a :class:`ModelSpec`."""
    mt = cfg.get("model_type")
    if "tie_word_embeddings" in cfg and not isinstance(cfg["tie_word_embeddings"], bool):
        raise SpecError(f"config.json of {name!r}: tie_word_embeddings must be true or false")
    dtype = _HF_DTYPES.get(str(cfg.get("torch_dtype", "bfloat16")), "bf16")
    if mt in ("deepseek_v2", "deepseek_v3"):
        return _deepseek(cfg, name, mt, dtype)
    if mt in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe"):
        hidden = _get(cfg, "hidden_size", name)
        heads = _get(cfg, "num_attention_heads", name)
        if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
            raise ShapeError(f"config.json of {name!r}: hidden_size and num_attention_heads must be positive integers")
        act = str(_get(cfg, "hidden_act", name, "silu"))
        moe: dict[str, Any] = {}
        if mt == "mixtral":  # softmax over the top-k router logits = softmax, top-k, renormalise
            moe = {"n_experts": _get(cfg, "num_local_experts", name), "experts_per_token": _get(cfg, "num_experts_per_tok", name),
                   "norm_topk_prob": True}
        elif mt == "qwen3_moe":
            if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
                raise SpecError(f"config.json of {name!r}: interleaved dense/MoE layers (decoder_sparse_step, "
                                "mlp_only_layers) are not supported; every layer must be MoE")
            moe = {"n_experts": _get(cfg, "num_experts", name), "experts_per_token": _get(cfg, "num_experts_per_tok", name),
                   "d_ff_expert": _get(cfg, "moe_intermediate_size", name),
                   "norm_topk_prob": bool(cfg.get("norm_topk_prob", False))}
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        return ModelSpec(
            name=name,
            family=mt,
            n_layers=_get(cfg, "num_hidden_layers", name),
            d_model=hidden,
            n_heads=heads,
            n_kv_heads=_get(cfg, "num_key_value_heads", name, heads),
            head_dim=_get(cfg, "head_dim", name, hidden // heads),
            d_ff=_get(cfg, "intermediate_size", name),
            vocab_size=_get(cfg, "vocab_size", name),
            max_seq_len=_get(cfg, "max_position_embeddings", name, 4096),
            activation="gelu" if act.startswith("gelu") else ("silu" if act == "swish" else act),
            gated_mlp=True,
            norm="rmsnorm",
            norm_eps=_num(_get(cfg, "rms_norm_eps", name, 1e-5), "rms_norm_eps", name),
            position="rope",
            rope_theta=_num(_get(cfg, "rope_theta", name, 10000.0), "rope_theta", name),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            weight_dtype=dtype,
            act_dtype=dtype,
            kv_dtype=dtype,
            sliding_window=window or 0,
            **moe,
        )
    if mt == "gpt2":
        hidden = _get(cfg, "n_embd", name)
        heads = _get(cfg, "n_head", name)
        if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
            raise ShapeError(f"config.json of {name!r}: n_embd and n_head must be positive integers")
        return ModelSpec(
            name=name,
            family="gpt2",
            n_layers=_get(cfg, "n_layer", name),
            d_model=hidden,
            n_heads=heads,
            n_kv_heads=heads,
            head_dim=hidden // heads,
            d_ff=_get(cfg, "n_inner", name, 4 * hidden),
            vocab_size=_get(cfg, "vocab_size", name),
            max_seq_len=_get(cfg, "n_positions", name, 1024),
            activation="gelu",
            gated_mlp=False,
            norm="layernorm",
            norm_eps=_num(_get(cfg, "layer_norm_epsilon", name, 1e-5), "layer_norm_epsilon", name),
            position="learned",
            tied_embeddings=True,
            weight_dtype=dtype,
            act_dtype=dtype,
            kv_dtype=dtype,
        )
    raise SpecError(
        f"config.json of {name!r}: model_type {mt!r} is not supported; supported: {', '.join(HF_MODEL_TYPES)}"
    )


def _deepseek(cfg: dict[str, Any], name: str, mt: str, dtype: str) -> ModelSpec:
    """DeepSeek-V2/V3: multi-head latent attention and fine-grained MoE with shared experts. The
    fp8 checkpoint of V3 (``quantization_config`` fmt e4m3, 128x128 blocks) stores fp8 weights; the
    multi-token-prediction module (``num_nextn_predict_layers``) is not part of a decode step, and
    group-limited expert selection (``n_group``/``topk_group``) changes which experts are chosen,
    not how many, so the routing distribution models it."""
    heads = _get(cfg, "num_attention_heads", name)
    if cfg.get("moe_layer_freq", 1) != 1:
        raise SpecError(f"config.json of {name!r}: moe_layer_freq != 1 is not supported; every layer after "
                        "first_k_dense_replace must be MoE")
    q = cfg.get("quantization_config") or {}
    wdt = "fp8-e4m3" if q.get("quant_method") == "fp8" and q.get("fmt", "e4m3") == "e4m3" else dtype
    return ModelSpec(
        name=name, family=mt, n_layers=_get(cfg, "num_hidden_layers", name), d_model=_get(cfg, "hidden_size", name),
        n_heads=heads, n_kv_heads=heads,
        head_dim=_get(cfg, "qk_nope_head_dim", name) + _get(cfg, "qk_rope_head_dim", name),
        d_ff=_get(cfg, "intermediate_size", name), vocab_size=_get(cfg, "vocab_size", name),
        max_seq_len=_get(cfg, "max_position_embeddings", name, 4096), activation="silu", gated_mlp=True,
        norm="rmsnorm", norm_eps=_num(_get(cfg, "rms_norm_eps", name, 1e-6), "rms_norm_eps", name), position="rope",
        rope_theta=_num(_get(cfg, "rope_theta", name, 10000.0), "rope_theta", name),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_dtype=wdt, act_dtype=dtype, kv_dtype=dtype,
        n_experts=_get(cfg, "n_routed_experts", name), experts_per_token=_get(cfg, "num_experts_per_tok", name),
        d_ff_expert=_get(cfg, "moe_intermediate_size", name), n_shared_experts=_get(cfg, "n_shared_experts", name, 0),
        first_dense_layers=_get(cfg, "first_k_dense_replace", name, 0),
        router_scoring="sigmoid" if cfg.get("scoring_func") == "sigmoid" else "softmax",
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        routed_scaling=_num(_get(cfg, "routed_scaling_factor", name, 1.0), "routed_scaling_factor", name),
        q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=_get(cfg, "kv_lora_rank", name),
        qk_nope_head_dim=_get(cfg, "qk_nope_head_dim", name), qk_rope_head_dim=_get(cfg, "qk_rope_head_dim", name),
        v_head_dim=_get(cfg, "v_head_dim", name),
    )
