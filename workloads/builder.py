"""Trace builder: a :class:`ModelSpec` and a phase become a :class:`Trace` of Einsum ops.

Layout of a dense decoder step (pre-norm, as Llama and GPT):

* ``embed`` block: token (+ learned position) embedding.
* ``layer`` block, repeated ``n_layers`` times: norm, Q/K/V projections, RoPE, KV-cache append,
  attention scores (GQA ``r`` dimension), softmax, context, output projection, residual add, norm,
  MLP (gated SwiGLU or plain GELU), residual add.
* ``head`` block: last-token selection (prefill), final norm, LM head (logits of the last token of
  each sequence, as inference engines compute them).

Linear weights are stored (out, in) as ``torch.nn.Linear`` does: dims ``(n, k)``.
"""

from __future__ import annotations

import math

from .einsum import Op, Tensor
from .model import ModelSpec
from .phases import Decode, Phase, Prefill
from .trace import Block, Trace

#: FLOPs per element of the streaming ops (counted as in LLMCompass-style analytical models:
#: one per add/multiply/exp/max/divide).
NORM_FLOPS = {"rmsnorm": 4.0, "layernorm": 7.0}
SOFTMAX_FLOPS = 5.0  # max, subtract, exp, sum, divide
ACT_FLOPS = {("silu", True): 5.0, ("gelu", False): 8.0, ("gelu", True): 9.0, ("silu", False): 4.0,
             ("relu", False): 1.0, ("relu", True): 2.0}
ROPE_FLOPS = 3.0  # two multiplies and one add per element


def _linear(name: str, m: int, n: int, k: int, x: str, w: str, out: str, wdt: str, adt: str) -> Op:
    return Op(
        name, "matmul", (("m", m), ("n", n), ("k", k)),
        (Tensor(x, ("m", "k"), adt), Tensor(w, ("n", "k"), wdt, "weight")),
        Tensor(out, ("m", "n"), adt),
    )


def _norm(name: str, model: ModelSpec, m: int, x: str, out: str, prefix: str) -> Op:
    adt, wdt = model.act_dtype, model.weight_dtype
    params = [Tensor(f"{prefix}.weight", ("d",), wdt, "weight")]
    if model.norm == "layernorm":
        params.append(Tensor(f"{prefix}.bias", ("d",), wdt, "weight"))
    return Op(
        name, "norm", (("m", m), ("d", model.d_model)),
        (Tensor(x, ("m", "d"), adt), *params), Tensor(out, ("m", "d"), adt),
        NORM_FLOPS[model.norm], {"type": model.norm, "eps": model.norm_eps},
    )


def _add(name: str, m: int, d: int, a: str, b: str, out: str, adt: str) -> Op:
    return Op(name, "elementwise", (("m", m), ("d", d)),
              (Tensor(a, ("m", "d"), adt), Tensor(b, ("m", "d"), adt)), Tensor(out, ("m", "d"), adt),
              1.0, {"function": "add"})


def _attention(model: ModelSpec, phase: Phase) -> list[Op]:
    """RoPE, KV append, scores, softmax and context for one layer."""
    b, lq, lkv = phase.batch, phase.q_len, phase.kv_len
    h, r, e = model.n_kv_heads, model.q_per_kv, model.head_dim
    adt, kdt = model.act_dtype, model.kv_dtype
    offset = lkv - lq  # position of the first new token
    causal = isinstance(phase, Prefill)
    ops: list[Op] = []
    q_name, k_name = "q", "k"
    if model.position == "rope":
        rope = {"theta": model.rope_theta, "offset": offset}
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
                  Tensor("scores", ("b", "h", "r", "q", "s"), adt), 2.0, {"causal": causal}))
    ops.append(Op("softmax", "softmax", attn_dims[:5], (Tensor("scores", ("b", "h", "r", "q", "s"), adt),),
                  Tensor("probs", ("b", "h", "r", "q", "s"), adt), SOFTMAX_FLOPS,
                  {"scale": 1.0 / math.sqrt(e), "causal": causal, "offset": offset}))
    ops.append(Op("attn_context", "matmul", attn_dims,
                  (Tensor("probs", ("b", "h", "r", "q", "s"), adt), Tensor("v_cache", ("b", "s", "h", "e"), kdt, "kv")),
                  Tensor("attn", ("b", "q", "h", "r", "e"), adt), 2.0, {"causal": causal}))
    return ops


def _mlp(model: ModelSpec, m: int) -> list[Op]:
    d, f, adt, wdt = model.d_model, model.d_ff, model.act_dtype, model.weight_dtype
    act = (model.activation, model.gated_mlp)
    if model.gated_mlp:
        return [
            _linear("gate_proj", m, f, d, "xn2", "w_gate", "gate", wdt, adt),
            _linear("up_proj", m, f, d, "xn2", "w_up", "up", wdt, adt),
            Op("act", "activation", (("m", m), ("f", f)),
               (Tensor("gate", ("m", "f"), adt), Tensor("up", ("m", "f"), adt)), Tensor("act", ("m", "f"), adt),
               ACT_FLOPS[act], {"function": model.activation, "gated": True}),
            _linear("down_proj", m, d, f, "act", "w_down", "mlp_out", wdt, adt),
        ]
    return [
        _linear("fc1", m, f, d, "xn2", "w_fc1", "h", wdt, adt),
        Op("act", "activation", (("m", m), ("f", f)), (Tensor("h", ("m", "f"), adt),),
           Tensor("act", ("m", "f"), adt), ACT_FLOPS[act], {"function": model.activation, "gated": False}),
        _linear("fc2", m, d, f, "act", "w_fc2", "mlp_out", wdt, adt),
    ]


def build_trace(model: ModelSpec, phase: Phase) -> Trace:
    """The ops of one step of ``phase`` (prefill or decode) of ``model``."""
    b, lq = phase.batch, phase.q_len
    m = b * lq
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    hq, hkv, e = model.n_heads, model.n_kv_heads, model.head_dim

    emb_inputs = [Tensor("token_ids", ("m",), "int32", "input"), Tensor("embed_table", ("m", "d"), wdt, "weight")]
    if model.position == "learned":
        emb_inputs.append(Tensor("pos_table", ("m", "d"), wdt, "weight"))
    embed = Op("embed", "embedding", (("m", m), ("d", d)), tuple(emb_inputs), Tensor("x", ("m", "d"), adt),
               1.0 if model.position == "learned" else 0.0,
               {"rows": model.vocab_size, "pos_rows": model.max_seq_len, "seq": lq, "offset": phase.kv_len - lq})

    layer = [
        _norm("attn_norm", model, m, "x", "xn", "attn_norm"),
        _linear("q_proj", m, hq * e, d, "xn", "wq", "q", wdt, adt),
        _linear("k_proj", m, hkv * e, d, "xn", "wk", "k", wdt, adt),
        _linear("v_proj", m, hkv * e, d, "xn", "wv", "v", wdt, adt),
        *_attention(model, phase),
        _linear("o_proj", m, d, hq * e, "attn", "wo", "attn_out", wdt, adt),
        _add("residual_attn", m, d, "x", "attn_out", "x1", adt),
        _norm("mlp_norm", model, m, "x1", "xn2", "mlp_norm"),
        *_mlp(model, m),
        _add("residual_mlp", m, d, "x1", "mlp_out", "x", adt),
    ]

    head: list[Op] = []
    last = "x"
    if lq > 1:
        head.append(Op("take_last", "take_last", (("b", b), ("d", d)), (Tensor("x", ("b", "d"), adt),),
                       Tensor("x_last", ("b", "d"), adt), 0.0, {"seq": lq}))
        last = "x_last"
    head.append(_norm("final_norm", model, b, last, "xf", "final_norm"))
    lm_w = "embed_table" if model.tied_embeddings else "lm_head"
    head.append(_linear("lm_head", b, model.vocab_size, d, "xf", lm_w, "logits", wdt, adt))

    meta: dict[str, int | str]
    if isinstance(phase, Decode):
        meta = {"batch": phase.batch, "context": phase.context}
    else:
        meta = {"batch": phase.batch, "seq": phase.seq}
    meta["model"] = model.name
    return Trace(
        name=f"{model.name}-{phase.name}",
        phase=phase.name,
        blocks=[Block("embed", [embed]), Block("layer", layer, model.n_layers), Block("head", head)],
        tokens=phase.tokens,
        meta=meta,
    )
