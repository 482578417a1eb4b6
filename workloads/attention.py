"""Standard multi-head attention of one layer (MHA, GQA, MQA through the ``r`` = query heads per
KV head dimension; sliding window; RoPE or learned positions): Q/K/V projections, RoPE, KV-cache
append, scores, softmax, context, output projection."""

from __future__ import annotations

import math

from ..errors import SpecError
from .einsum import Op, Tensor
from .model import ModelSpec
from .opkit import ROPE_FLOPS, SOFTMAX_FLOPS, linear, norm
from .phases import Phase, is_causal, position_attrs


def kv_append_ops(p: str, b: int, q: int, h: int, e: int, pairs: tuple[tuple[str, str], ...], offset: int,
                  adt: str, kdt: str) -> list[Op]:
    """Append the step's (b, q, h, e) keys/values ``(source, cache)`` to their caches at ``offset``."""
    return [Op(f"{p}{cache[0]}_append" if cache in ("k_cache", "v_cache") else f"{cache}_append", "kv_append",
               (("b", b), ("q", q), ("h", h), ("e", e)), (Tensor(src, ("b", "q", "h", "e"), adt),),
               Tensor(cache, ("b", "q", "h", "e"), kdt, "kv"), 0.0, {"offset": offset}) for src, cache in pairs]


def sdpa_ops(p: str, b: int, h: int, r: int, q: int, s: int, e: int, q_name: str, kv: tuple[str, str, str], out: str,
             adt: str, kdt: str, mask: dict, softmax: dict, bias: str = "", shared_kv: bool = False) -> list[Op]:
    """Scores, softmax and context of ``b x h x r`` query heads over ``s`` keys (``kv`` = key and
    value tensor names and their role); ``mask`` attrs go on every op (``causal``, window...),
    ``softmax`` attrs on the softmax; ``bias`` names an additive (h, r, q, s) score bias;
    ``shared_kv``: one K/V for the whole batch (a shared prefix: the keys do not index ``b``)."""
    k_name, v_name, role = kv
    kv_dims = ("s", "h", "e") if shared_kv else ("b", "s", "h", "e")
    dims = (("b", b), ("h", h), ("r", r), ("q", q), ("s", s), ("e", e))
    sm_in = [Tensor(f"{p}scores", ("b", "h", "r", "q", "s"), adt)]
    if bias:
        sm_in.append(Tensor(bias, ("h", "r", "q", "s"), adt))
    kdtype = kdt if role == "kv" else adt
    return [
        Op(f"{p}attn_score", "matmul", dims,
           (Tensor(q_name, ("b", "q", "h", "r", "e"), adt), Tensor(k_name, kv_dims, kdtype, role)),
           Tensor(f"{p}scores", ("b", "h", "r", "q", "s"), adt), 2.0, dict(mask)),
        Op(f"{p}softmax", "softmax", dims[:5], tuple(sm_in), Tensor(f"{p}probs", ("b", "h", "r", "q", "s"), adt),
           SOFTMAX_FLOPS, {**mask, **softmax}),
        Op(f"{p}attn_context", "matmul", dims,
           (Tensor(f"{p}probs", ("b", "h", "r", "q", "s"), adt), Tensor(v_name, kv_dims, kdtype, role)),
           Tensor(out, ("b", "q", "h", "r", "e"), adt), 2.0, dict(mask)),
    ]


def attention_core(model: ModelSpec, phase: Phase) -> list[Op]:
    """RoPE, KV append, scores, softmax and context for one layer."""
    b, lq, lkv = phase.batch, phase.q_len, phase.kv_len
    h, r, e = model.n_kv_heads, model.q_per_kv, model.head_dim
    adt, kdt = model.act_dtype, model.kv_dtype
    offset = lkv - lq  # position of the first new token
    causal = is_causal(phase)
    pos = position_attrs(phase)
    window, sinks = model.sliding_window, model.attention_sinks
    if not causal:  # decode reads the cached tokens kept: all, or the sinks plus the recent window
        lkv = model.kv_tokens(lkv)
    ops: list[Op] = []
    q_name, k_name = "q", "k"
    if model.position == "rope":
        rope = {"theta": model.rope_theta, **pos}
        ops.append(Op("rope_q", "rope", (("b", b), ("q", lq), ("h", h), ("r", r), ("e", e)),
                      (Tensor("q", ("b", "q", "h", "r", "e"), adt), Tensor("rope_table", ("q", "e"), "fp32", "input")),
                      Tensor("q_rot", ("b", "q", "h", "r", "e"), adt), ROPE_FLOPS, rope))
        ops.append(Op("rope_k", "rope", (("b", b), ("q", lq), ("h", h), ("e", e)),
                      (Tensor("k", ("b", "q", "h", "e"), adt), Tensor("rope_table", ("q", "e"), "fp32", "input")),
                      Tensor("k_rot", ("b", "q", "h", "e"), adt), ROPE_FLOPS, rope))
        q_name, k_name = "q_rot", "k_rot"
    prefix = getattr(phase, "shared_prefix", 0)
    if prefix:  # Hydragen: the shared prefix attended as one batched GEMM, the suffixes per sequence
        if lkv < phase.kv_len:
            raise SpecError(f"--shared-prefix: {model.name}'s sliding window keeps {lkv} of the {phase.kv_len} context tokens, "
                            "so the shared prefix would leave it; the split is modelled for full-attention caches: drop "
                            f"--shared-prefix or use a context of at most {lkv}")
        scale = {"scale": 1.0 / math.sqrt(e), "lse": True}
        own = lkv - prefix
        ops += kv_append_ops("", b, lq, h, e, ((k_name, "k_cache"), ("v", "v_cache")), own - lq, adt, kdt)
        ops += sdpa_ops("prefix_", b, h, r, lq, prefix, e, q_name, ("k_prefix", "v_prefix", "kv"), "attn_prefix", adt,
                        kdt, {"causal": False}, scale, shared_kv=True)
        ops += sdpa_ops("", b, h, r, lq, own, e, q_name, ("k_cache", "v_cache", "kv"), "attn_own", adt, kdt,
                        {"causal": False}, scale)
        lse = ("b", "h", "r", "q")
        ops.append(Op("attn_merge", "attn_merge", (("b", b), ("h", h), ("r", r), ("q", lq), ("e", e)),
                      (Tensor("attn_prefix", ("b", "q", "h", "r", "e"), adt), Tensor("attn_own", ("b", "q", "h", "r", "e"), adt),
                       Tensor("prefix_probs_lse", lse, "fp32"), Tensor("probs_lse", lse, "fp32")),
                      Tensor("attn", ("b", "q", "h", "r", "e"), adt), 4.0, {}))
        return ops
    ops += kv_append_ops("", b, lq, h, e, ((k_name, "k_cache"), ("v", "v_cache")), offset, adt, kdt)
    ops += sdpa_ops("", b, h, r, lq, lkv, e, q_name, ("k_cache", "v_cache", "kv"), "attn", adt, kdt,
                    {"causal": causal, "window": window, "sinks": sinks},
                    {"scale": 1.0 / math.sqrt(e), **pos, "kv_start": phase.kv_len - lkv})
    return ops


def attention_ops(model: ModelSpec, phase: Phase, m: int) -> list[Op]:
    """Projections, attention core and output projection on ``xn``, producing ``attn_out``."""
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    hq, hkv, e = model.n_heads, model.n_kv_heads, model.head_dim
    return [
        linear("q_proj", m, hq * e, d, "xn", "wq", "q", wdt, adt),
        linear("k_proj", m, hkv * e, d, "xn", "wk", "k", wdt, adt),
        linear("v_proj", m, hkv * e, d, "xn", "wv", "v", wdt, adt),
        *attention_core(model, phase),
        *([norm("attn_sub_norm", model, m, "attn", "attn_n", "attn_sub_norm", hq * e)] if model.sub_norms else []),
        linear("o_proj", m, d, hq * e, "attn_n" if model.sub_norms else "attn", "wo", "attn_out", wdt, adt),
    ]
