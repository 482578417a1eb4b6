"""Trace builder: a :class:`ModelSpec` and a phase become a :class:`Trace` of Einsum ops.

Layout of a dense decoder step (pre-norm, as Llama and GPT):

* ``embed`` block: token (+ learned position) embedding.
* ``layer`` block, repeated ``n_layers`` times: norm, Q/K/V projections, RoPE, KV-cache append,
  attention scores (GQA ``r`` dimension), softmax, context, output projection, residual add, norm,
  MLP (gated SwiGLU or plain GELU), residual add.
* ``head`` block: last-token selection (prefill), final norm, LM head (logits of the last token of
  each sequence, as inference engines compute them).

A mixture-of-experts model replaces the MLP of its MoE layers (a ``moe_layer`` block after
``first_dense_layers`` dense ``layer`` blocks) by: router GEMM, top-k routing, token dispatch, the
expert GEMMs (experts that receive equally many tokens batched into one GEMM, sized by the
routing distribution, see :mod:`xpusim.workloads.routing`), the weighted combine, and the
shared experts as a dense MLP. A sliding window bounds the keys each query attends to (and the
KV cache, a rolling buffer of ``window`` tokens).

Linear weights are stored (out, in) as ``torch.nn.Linear`` does: dims ``(n, k)``.
"""

from __future__ import annotations

import math

from .einsum import Op, Tensor
from .model import ModelSpec
from .phases import Decode, Phase, Prefill
from .routing import Routing, count_groups, expert_counts, parse_routing
from .trace import Block, Trace

#: FLOPs per element of the streaming ops (counted as in LLMCompass-style analytical models:
#: one per add/multiply/exp/max/divide).
NORM_FLOPS = {"rmsnorm": 4.0, "layernorm": 7.0}
SOFTMAX_FLOPS = 5.0  # max, subtract, exp, sum, divide
ACT_FLOPS = {("silu", True): 5.0, ("gelu", False): 8.0, ("gelu", True): 9.0, ("silu", False): 4.0,
             ("relu", False): 1.0, ("relu", True): 2.0}
ROPE_FLOPS = 3.0  # two multiplies and one add per element
ROUTE_FLOPS = 6.0  # per (token, expert) score: exp or sigmoid, normalise, compare for top-k


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
    window = model.sliding_window
    if window and not causal:  # decode reads only the last `window` cached tokens
        lkv = min(lkv, window)
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
                  Tensor("scores", ("b", "h", "r", "q", "s"), adt), 2.0, {"causal": causal, "window": window}))
    ops.append(Op("softmax", "softmax", attn_dims[:5], (Tensor("scores", ("b", "h", "r", "q", "s"), adt),),
                  Tensor("probs", ("b", "h", "r", "q", "s"), adt), SOFTMAX_FLOPS,
                  {"scale": 1.0 / math.sqrt(e), "causal": causal, "offset": offset, "window": window,
                   "kv_start": phase.kv_len - lkv}))
    ops.append(Op("attn_context", "matmul", attn_dims,
                  (Tensor("probs", ("b", "h", "r", "q", "s"), adt), Tensor("v_cache", ("b", "s", "h", "e"), kdt, "kv")),
                  Tensor("attn", ("b", "q", "h", "r", "e"), adt), 2.0, {"causal": causal}))
    return ops


def _mlp(model: ModelSpec, m: int, f: int | None = None, prefix: str = "", out: str = "mlp_out") -> list[Op]:
    """Dense MLP on ``xn2`` (intermediate size ``f``, default the model's); ``prefix`` names its
    ops, tensors and weights apart (shared experts)."""
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    f = f or model.d_ff
    act = (model.activation, model.gated_mlp)
    p = prefix
    if model.gated_mlp:
        return [
            _linear(f"{p}gate_proj", m, f, d, "xn2", f"{p}w_gate", f"{p}gate", wdt, adt),
            _linear(f"{p}up_proj", m, f, d, "xn2", f"{p}w_up", f"{p}up", wdt, adt),
            Op(f"{p}act", "activation", (("m", m), ("f", f)),
               (Tensor(f"{p}gate", ("m", "f"), adt), Tensor(f"{p}up", ("m", "f"), adt)), Tensor(f"{p}act", ("m", "f"), adt),
               ACT_FLOPS[act], {"function": model.activation, "gated": True}),
            _linear(f"{p}down_proj", m, d, f, f"{p}act", f"{p}w_down", out, wdt, adt),
        ]
    return [
        _linear(f"{p}fc1", m, f, d, "xn2", f"{p}w_fc1", f"{p}h", wdt, adt),
        Op(f"{p}act", "activation", (("m", m), ("f", f)), (Tensor(f"{p}h", ("m", "f"), adt),),
           Tensor(f"{p}act", ("m", "f"), adt), ACT_FLOPS[act], {"function": model.activation, "gated": False}),
        _linear(f"{p}fc2", m, d, f, f"{p}act", f"{p}w_fc2", out, wdt, adt),
    ]


def _moe(model: ModelSpec, m: int, routing: Routing) -> tuple[list[Op], dict[str, int | str]]:
    """Router, routing, dispatch, expert GEMMs grouped by token count, combine, shared experts."""
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    E, k, f = model.n_experts, model.experts_per_token, model.expert_ff
    counts, dropped = expert_counts(routing, m, E, k, model.capacity_factor)
    route = {"top_k": k, "scoring": model.router_scoring, "norm_topk_prob": model.norm_topk_prob,
             "capacity_factor": model.capacity_factor}
    ops = [
        _linear("router", m, E, d, "xn2", "w_router", "router_logits", wdt, adt),
        Op("route", "route", (("m", m), ("x", E)), (Tensor("router_logits", ("m", "x"), adt),),
           Tensor("route_weights", ("m", "x"), adt), ROUTE_FLOPS, route),
        Op("dispatch", "gather", (("m", m), ("t", k), ("d", d)), (Tensor("xn2", ("m", "d"), adt),),
           Tensor("x_dispatched", ("m", "t", "d"), adt), 0.0, {}),
    ]
    act = (model.activation, model.gated_mlp)
    for g, (c, n_e) in enumerate(count_groups(counts)):
        grp = {"moe_group": g, "experts_total": E, "tokens_per_expert": c}

        def gemm(name: str, n: int, kk: int, x: str, w: str, out: str, g=g, grp=grp, n_e=n_e, c=c) -> Op:
            return Op(f"{name}.{g}", "matmul", (("x", n_e), ("m", c), ("n", n), ("k", kk)),
                      (Tensor(x, ("x", "m", "k"), adt), Tensor(w, ("x", "n", "k"), wdt, "weight")),
                      Tensor(out, ("x", "m", "n"), adt), 2.0, grp)

        names = ("expert_gate", "expert_up") if model.gated_mlp else ("expert_fc1",)
        for nm in names:
            ops.append(gemm(nm, f, d, f"x_dispatched.{g}", f"experts.w_{nm[7:]}", f"{nm}_out.{g}"))
        ins = tuple(Tensor(f"{nm}_out.{g}", ("x", "m", "f"), adt) for nm in names)
        ops.append(Op(f"expert_act.{g}", "activation", (("x", n_e), ("m", c), ("f", f)), ins,
                      Tensor(f"expert_act.{g}", ("x", "m", "f"), adt), ACT_FLOPS[act],
                      {"function": model.activation, "gated": model.gated_mlp, **grp}))
        down = "expert_down" if model.gated_mlp else "expert_fc2"
        ops.append(gemm(down, d, f, f"expert_act.{g}", f"experts.w_{down[7:]}", f"y_dispatched.{g}"))
    routed_out = "moe_out" if model.n_shared_experts else "mlp_out"
    ops.append(Op("combine", "combine", (("m", m), ("t", k), ("d", d)),
                  (Tensor("y_dispatched", ("m", "t", "d"), adt), Tensor("route_topk", ("m", "t"), adt)),
                  Tensor(routed_out, ("m", "d"), adt), 2.0,
                  {**route, "function": model.activation, "gated": model.gated_mlp}))
    if model.n_shared_experts:
        ops += _mlp(model, m, model.n_shared_experts * f, "shared_", "shared_out")
        ops.append(_add("shared_add", m, d, "moe_out", "shared_out", "mlp_out", adt))
    meta: dict[str, int | str] = {"routing": routing.describe(), "active_experts": int((counts > 0).sum()),
                                  "dropped_assignments": dropped}
    return ops, meta


def build_trace(model: ModelSpec, phase: Phase, routing: Routing | str | None = None) -> Trace:
    """The ops of one step of ``phase`` (prefill or decode) of ``model``; ``routing`` sizes the
    expert GEMMs of a mixture-of-experts model (default balanced)."""
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

    attention = [
        _norm("attn_norm", model, m, "x", "xn", "attn_norm"),
        _linear("q_proj", m, hq * e, d, "xn", "wq", "q", wdt, adt),
        _linear("k_proj", m, hkv * e, d, "xn", "wk", "k", wdt, adt),
        _linear("v_proj", m, hkv * e, d, "xn", "wv", "v", wdt, adt),
        *_attention(model, phase),
        _linear("o_proj", m, d, hq * e, "attn", "wo", "attn_out", wdt, adt),
        _add("residual_attn", m, d, "x", "attn_out", "x1", adt),
        _norm("mlp_norm", model, m, "x1", "xn2", "mlp_norm"),
    ]
    residual = _add("residual_mlp", m, d, "x1", "mlp_out", "x", adt)
    layers: list[Block] = []
    meta: dict[str, int | str] = {}
    if model.n_layers - model.moe_layers:
        layers.append(Block("layer", [*attention, *_mlp(model, m), residual], model.n_layers - model.moe_layers))
    if model.is_moe:
        moe_ops, meta = _moe(model, m, parse_routing(routing))
        layers.append(Block("moe_layer", [*attention, *moe_ops, residual], model.moe_layers))

    head: list[Op] = []
    last = "x"
    if lq > 1:
        head.append(Op("take_last", "take_last", (("b", b), ("d", d)), (Tensor("x", ("b", "d"), adt),),
                       Tensor("x_last", ("b", "d"), adt), 0.0, {"seq": lq}))
        last = "x_last"
    head.append(_norm("final_norm", model, b, last, "xf", "final_norm"))
    lm_w = "embed_table" if model.tied_embeddings else "lm_head"
    head.append(_linear("lm_head", b, model.vocab_size, d, "xf", lm_w, "logits", wdt, adt))

    if isinstance(phase, Decode):
        meta.update({"batch": phase.batch, "context": phase.context})
    else:
        meta.update({"batch": phase.batch, "seq": phase.seq})
    meta["model"] = model.name
    return Trace(
        name=f"{model.name}-{phase.name}",
        phase=phase.name,
        blocks=[Block("embed", [embed]), *layers, Block("head", head)],
        tokens=phase.tokens,
        meta=meta,
    )
