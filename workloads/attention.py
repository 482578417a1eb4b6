"""Standard multi-head attention of one layer (MHA, GQA, MQA through the ``r`` = query heads per
KV head dimension; sliding window; RoPE or learned positions): Q/K/V projections, RoPE, KV-cache
append, scores, softmax, context, output projection."""

from __future__ import annotations

import math

from .einsum import Op, Tensor
from .model import ModelSpec
from .opkit import ROPE_FLOPS, SOFTMAX_FLOPS, linear, norm
from .phases import Phase, is_causal, position_attrs


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
    for src, cache in ((k_name, "k_cache"), ("v", "v_cache")):
        ops.append(Op(f"{cache[0]}_append", "kv_append", (("b", b), ("q", lq), ("h", h), ("e", e)),
                      (Tensor(src, ("b", "q", "h", "e"), adt),), Tensor(cache, ("b", "q", "h", "e"), kdt, "kv"),
                      0.0, {"offset": offset}))
    attn_dims = (("b", b), ("h", h), ("r", r), ("q", lq), ("s", lkv), ("e", e))
    ops.append(Op("attn_score", "matmul", attn_dims,
                  (Tensor(q_name, ("b", "q", "h", "r", "e"), adt), Tensor("k_cache", ("b", "s", "h", "e"), kdt, "kv")),
                  Tensor("scores", ("b", "h", "r", "q", "s"), adt), 2.0,
                  {"causal": causal, "window": window, "sinks": sinks}))
    ops.append(Op("softmax", "softmax", attn_dims[:5], (Tensor("scores", ("b", "h", "r", "q", "s"), adt),),
                  Tensor("probs", ("b", "h", "r", "q", "s"), adt), SOFTMAX_FLOPS,
                  {"scale": 1.0 / math.sqrt(e), "causal": causal, **pos, "window": window,
                   "sinks": sinks, "kv_start": phase.kv_len - lkv}))
    ops.append(Op("attn_context", "matmul", attn_dims,
                  (Tensor("probs", ("b", "h", "r", "q", "s"), adt), Tensor("v_cache", ("b", "s", "h", "e"), kdt, "kv")),
                  Tensor("attn", ("b", "q", "h", "r", "e"), adt), 2.0, {"causal": causal, "sinks": sinks}))
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
