"""Hugging Face ``config.json`` -> :class:`ModelSpec`, one reader per supported ``model_type``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ShapeError, SpecError
from .model import ModelSpec

_HF_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
HF_MODEL_TYPES = ("llama", "bitnet", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3", "mamba",
                  "mamba2", "jamba", "t5", "gpt2")


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


def _whole(cfg: dict[str, Any], key: str, name: str) -> int:
    """A required whole-number field."""
    v = _get(cfg, key, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"config.json of {name!r}: {key} must be a whole number, got {v!r}")
    return v


def _positive(cfg: dict[str, Any], key: str, name: str, default: Any = None) -> Any:
    """A field that must be a whole number >= 1 when given (Hugging Face has no 0 for "none" in these: a 0
    would load as another model, e.g. a dense expert width or plain attention)."""
    v = _get(cfg, key, name, default)
    if key in cfg and cfg[key] is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise SpecError(f"config.json of {name!r}: {key} must be a whole number >= 1, got {v!r}")
    return v


def _whole_heads(hidden: Any, heads: Any, name: str) -> int:
    """The head width ``hidden / heads`` when the config gives no ``head_dim``: it must divide."""
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise SpecError(f"config.json of {name!r}: hidden size {hidden} is not a multiple of {heads} attention heads; "
                        "give head_dim")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else hidden


def model_from_hf_config(cfg: dict[str, Any], name: str) -> ModelSpec:
    """Map a Hugging Face ``config.json`` onto a :class:`ModelSpec`."""
    mt = cfg.get("model_type")
    if "tie_word_embeddings" in cfg and not isinstance(cfg["tie_word_embeddings"], bool):
        raise SpecError(f"config.json of {name!r}: tie_word_embeddings must be true or false")
    torch_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")  # newer configs write "dtype"
    if torch_dtype not in _HF_DTYPES:
        raise SpecError(f"config.json of {name!r}: torch_dtype {torch_dtype!r} is not one of {', '.join(_HF_DTYPES)}; "
                        "set it to the checkpoint's storage format (the simulation's formats are chosen with "
                        "--weight-dtype/--act-dtype/--kv-dtype)")
    dtype = _HF_DTYPES[torch_dtype]
    return _quantised(_family(cfg, name, mt, dtype), cfg, name, dtype)


def _quantised(model: ModelSpec, cfg: dict[str, Any], name: str, dtype: str) -> ModelSpec:
    """``model`` with the weight format of the config's ``quantization_config``: ``fp8`` (``fmt``
    e4m3, the default, or e5m2) or ``gptq``/``awq`` 4-bit (``int4-g<group_size>``; -1, one scale
    per channel, as ``int4-g<hidden size>``). The embeddings and LM head stay in ``dtype``, as the
    checkpoints keep them; another ``quant_method`` is refused."""
    q = cfg.get("quantization_config")
    if q is None:
        return model
    where, fix = f"config.json of {name!r}: quantization_config", "delete the block and set the format with --weight-dtype"
    if not isinstance(q, dict):
        raise SpecError(f"{where} must be an object with a quant_method; {fix}")
    method = q.get("quant_method")
    if method == "bitnet" and model.family == "bitnet":
        return model  # ternary already
    if method == "fp8":
        fmt = q.get("fmt", "e4m3")
        if fmt not in ("e4m3", "e5m2"):
            raise SpecError(f"{where} fmt {fmt!r} is not e4m3 or e5m2; {fix}")
        wdt = f"fp8-{fmt}"
    elif method in ("gptq", "awq"):
        bits, group = q.get("bits"), q.get("group_size", 128)
        if bits != 4:
            raise SpecError(f"{where}: {method} with bits {bits!r} is not read (4 is); {fix} (e.g. int8)")
        if group == -1:
            group = model.d_model
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise SpecError(f"{where} group_size {group!r} is not a whole number >= 1 or -1 (per channel); {fix}")
        wdt = f"int4-g{group}"
    else:
        raise SpecError(f"{where} quant_method {method!r} is not read (fp8, gptq and awq are); {fix}")
    return replace(model, weight_dtype=wdt, embed_dtype=model.embed_dtype or dtype)


def _family(cfg: dict[str, Any], name: str, mt: Any, dtype: str) -> ModelSpec:
    """The model of one ``model_type``, in the config's ``dtype``."""
    if mt in ("deepseek_v2", "deepseek_v3"):
        return _deepseek(cfg, name, mt, dtype)
    if mt in ("mamba", "mamba2"):
        return _mamba(cfg, name, mt, dtype)
    if mt == "jamba":
        return _jamba(cfg, name, dtype)
    if mt == "t5":
        return _t5(cfg, name, dtype)
    if mt == "bitnet":  # BitNet b1.58: a Llama layout with ternary linear weights and sub-norms
        base = _family(cfg, name, "llama", dtype)
        return replace(base, family="bitnet", weight_dtype="ternary", embed_dtype=dtype, sub_norms=True)
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
                   "d_ff_expert": _positive(cfg, "moe_intermediate_size", name),
                   "norm_topk_prob": bool(cfg.get("norm_topk_prob", False))}
        qwen = mt.startswith("qwen")
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", not qwen) else None
        if window and qwen:  # Qwen slides only the layers from max_window_layers on
            layers, first = _get(cfg, "num_hidden_layers", name), cfg.get("max_window_layers", 0) or 0
            if first >= layers:
                window = None
            elif first > 0:
                raise SpecError(f"config.json of {name!r}: the sliding window covers layers {first}..{layers - 1} only "
                                f"(max_window_layers {first}); per-layer windows are not modelled: set max_window_layers "
                                "to 0 (every layer) or use_sliding_window to false")
        return ModelSpec(
            name=name,
            family=mt,
            n_layers=_get(cfg, "num_hidden_layers", name),
            d_model=hidden,
            n_heads=heads,
            n_kv_heads=_get(cfg, "num_key_value_heads", name, heads),
            head_dim=_positive(cfg, "head_dim", name, 0) or _whole_heads(hidden, heads, name),
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
            head_dim=_whole_heads(hidden, heads, name),
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
    """DeepSeek-V2/V3: multi-head latent attention and fine-grained MoE with shared experts (the
    fp8 checkpoint of V3 is read by :func:`_quantised`); the multi-token-prediction module
    (``num_nextn_predict_layers``) is not part of a decode step, and group-limited expert selection
    (``n_group``/``topk_group``) changes which experts are chosen, not how many, so the routing
    distribution models it."""
    heads = _get(cfg, "num_attention_heads", name)
    if cfg.get("moe_layer_freq", 1) != 1:
        raise SpecError(f"config.json of {name!r}: moe_layer_freq != 1 is not supported; every layer after "
                        "first_k_dense_replace must be MoE")
    return ModelSpec(
        name=name, family=mt, n_layers=_get(cfg, "num_hidden_layers", name), d_model=_get(cfg, "hidden_size", name),
        n_heads=heads, n_kv_heads=heads,
        head_dim=sum(_whole(cfg, k, name) for k in ("qk_nope_head_dim", "qk_rope_head_dim")),
        d_ff=_get(cfg, "intermediate_size", name), vocab_size=_get(cfg, "vocab_size", name),
        max_seq_len=_get(cfg, "max_position_embeddings", name, 4096), activation="silu", gated_mlp=True,
        norm="rmsnorm", norm_eps=_num(_get(cfg, "rms_norm_eps", name, 1e-6), "rms_norm_eps", name), position="rope",
        rope_theta=_num(_get(cfg, "rope_theta", name, 10000.0), "rope_theta", name),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_dtype=dtype, act_dtype=dtype, kv_dtype=dtype,
        n_experts=_get(cfg, "n_routed_experts", name), experts_per_token=_get(cfg, "num_experts_per_tok", name),
        d_ff_expert=_positive(cfg, "moe_intermediate_size", name), n_shared_experts=_get(cfg, "n_shared_experts", name, 0),
        first_dense_layers=_get(cfg, "first_k_dense_replace", name, 0),
        router_scoring="sigmoid" if cfg.get("scoring_func") == "sigmoid" else "softmax",
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        routed_scaling=_num(_get(cfg, "routed_scaling_factor", name, 1.0), "routed_scaling_factor", name),
        q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=_positive(cfg, "kv_lora_rank", name),
        qk_nope_head_dim=_get(cfg, "qk_nope_head_dim", name), qk_rope_head_dim=_get(cfg, "qk_rope_head_dim", name),
        v_head_dim=_get(cfg, "v_head_dim", name),
    )


def _mamba(cfg: dict[str, Any], name: str, mt: str, dtype: str) -> ModelSpec:
    """Mamba-1 (``mamba``) and Mamba-2 (``mamba2``): every layer one SSM mixer, no MLP, no
    attention; embeddings tied unless the config says otherwise (the Hugging Face default)."""
    d = _get(cfg, "hidden_size", name)
    rank = cfg.get("time_step_rank", "auto")
    ssm: dict[str, Any] = {"ssm_kind": "mamba1" if mt == "mamba" else "mamba2", "ssm_state": _get(cfg, "state_size", name),
                           "ssm_expand": _get(cfg, "expand", name, 2), "ssm_conv": _get(cfg, "conv_kernel", name, 4)}
    if mt == "mamba":
        ssm["ssm_dt_rank"] = 0 if rank == "auto" else rank
    else:
        ssm.update(ssm_head_dim=_get(cfg, "head_dim", name, 64), ssm_groups=_get(cfg, "n_groups", name, 1))
    return ModelSpec(
        name=name, family=mt, n_layers=_get(cfg, "num_hidden_layers", name, cfg.get("n_layer")), d_model=d,
        n_heads=1, n_kv_heads=1, head_dim=1, d_ff=0, vocab_size=_get(cfg, "vocab_size", name),
        max_seq_len=1 << 20, norm="rmsnorm", position="none",
        norm_eps=_num(_get(cfg, "layer_norm_epsilon", name, 1e-5), "layer_norm_epsilon", name),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), weight_dtype=dtype, act_dtype=dtype, kv_dtype=dtype,
        **ssm,
    )


def _jamba(cfg: dict[str, Any], name: str, dtype: str) -> ModelSpec:
    """Jamba: Mamba-1 layers (with RMS norms on dt, B, C) and one attention layer per
    ``attn_layer_period`` (no positional encoding), MoE every ``expert_layer_period`` layers
    (softmax router, top-k weights not renormalised)."""
    hidden, heads = _get(cfg, "hidden_size", name), _get(cfg, "num_attention_heads", name)
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
        raise ShapeError(f"config.json of {name!r}: hidden_size and num_attention_heads must be positive integers")
    return ModelSpec(
        name=name, family="jamba", n_layers=_get(cfg, "num_hidden_layers", name), d_model=hidden, n_heads=heads,
        n_kv_heads=_get(cfg, "num_key_value_heads", name, heads), head_dim=_whole_heads(hidden, heads, name),
        d_ff=_get(cfg, "intermediate_size", name), vocab_size=_get(cfg, "vocab_size", name),
        max_seq_len=_get(cfg, "max_position_embeddings", name, 262144), norm="rmsnorm", position="none",
        norm_eps=_num(_get(cfg, "rms_norm_eps", name, 1e-6), "rms_norm_eps", name),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_dtype=dtype, act_dtype=dtype, kv_dtype=dtype,
        n_experts=_get(cfg, "num_experts", name), experts_per_token=_get(cfg, "num_experts_per_tok", name),
        norm_topk_prob=False, ssm_kind="mamba1", ssm_state=_get(cfg, "mamba_d_state", name, 16),
        ssm_expand=_get(cfg, "mamba_expand", name, 2), ssm_conv=_get(cfg, "mamba_d_conv", name, 4),
        ssm_dt_rank=_get(cfg, "mamba_dt_rank", name, 0), ssm_inner_norms=True,
        attn_period=_positive(cfg, "attn_layer_period", name), attn_offset=_get(cfg, "attn_layer_offset", name, 0),
        moe_period=_positive(cfg, "expert_layer_period", name), moe_offset=_get(cfg, "expert_layer_offset", name, 0),
    )


def _t5(cfg: dict[str, Any], name: str, dtype: str) -> ModelSpec:
    """T5 (v1.0 and v1.1 layouts): ``feed_forward_proj`` relu, gelu or gated-gelu; RMS-style
    layer norm; relative position buckets; embeddings tied by default (the T5Config default)."""
    ff = str(cfg.get("feed_forward_proj", "relu"))
    gated = ff.startswith("gated-")
    act = ff.removeprefix("gated-")
    act = "gelu" if act.startswith("gelu") else act
    heads = _get(cfg, "num_heads", name)
    layers = _get(cfg, "num_layers", name)
    return ModelSpec(
        name=name, family="t5", n_layers=_get(cfg, "num_decoder_layers", name, layers), encoder_layers=layers,
        d_model=_get(cfg, "d_model", name), n_heads=heads, n_kv_heads=heads, head_dim=_get(cfg, "d_kv", name),
        d_ff=_get(cfg, "d_ff", name), vocab_size=_get(cfg, "vocab_size", name),
        max_seq_len=_get(cfg, "n_positions", name, 512), activation=act, gated_mlp=gated, norm="rmsnorm",
        norm_eps=_num(_get(cfg, "layer_norm_epsilon", name, 1e-6), "layer_norm_epsilon", name), position="relative",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        rel_buckets=_get(cfg, "relative_attention_num_buckets", name, 32),
        rel_max_distance=_get(cfg, "relative_attention_max_distance", name, 128),
        decoder_start_token=_get(cfg, "decoder_start_token_id", name, 0),
        weight_dtype=dtype, act_dtype=dtype, kv_dtype=dtype,
    )
