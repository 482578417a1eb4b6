"""Multi-head latent attention (MLA) of DeepSeek-V2/V3 (DeepSeek-V2 report, arXiv:2405.04434,
section 2.1; DeepSeek-V3 report, arXiv:2412.19437, section 2.1.1).

Per token a layer caches only the compressed latent ``c_kv`` (``kv_lora_rank`` = dc values, RMS
normalised) and one decoupled RoPE key ``k_pe`` (``qk_rope_head_dim`` = dr values) shared by all
heads: the cache row ``kv_latent`` is ``[c_kv | k_pe]`` (dc + dr elements). Queries go through an
optional low-rank ``q_a`` (dq) with its norm; per head a query has a no-position part (dn) and a
RoPE part (dr). The up-projections ``k_up`` (H*dn x dc) and ``v_up`` (H*dv x dc) expand the latent.

Two equivalent traces (``form``):

* ``naive`` — expand every cached latent into per-head keys ``[k_nope | k_pe]`` and values, then
  ordinary multi-head attention with head dim dn + dr (values dv). Cheap in prefill, where the
  expansion is the usual K/V projection of the prompt; in decode it re-expands the whole context.
* ``absorbed`` — fold ``k_up`` into the query (``q_lat = q_nope @ W_uk``, per head dn -> dc) and
  ``v_up`` after the context (``ctx_lat @ W_uv``), so attention runs directly on the cache as one
  shared KV "head" of dim dc + dr read by all H query heads (values: its first dc elements). Decode
  then reads each cached row once for every head: the high arithmetic intensity of MLA decode.

The weights are the same in both forms (the absorbed one views ``k_up``/``v_up`` per head), so
both traces compute the same output (``tests/test_mla.py``).
"""

from __future__ import annotations

import math

from .einsum import Op, Tensor
from .model import ModelSpec
from .opkit import ROPE_FLOPS, SOFTMAX_FLOPS, concat, linear, norm
from .phases import Phase, is_causal, position_attrs

MLA_FORMS = ("naive", "absorbed")


def _rope(name: str, x: str, out: str, dims: tuple[tuple[str, int], ...], adt: str, theta: float,
          pos: dict[str, object]) -> Op:
    names = tuple(d for d, _ in dims)
    return Op(name, "rope", dims, (Tensor(x, names, adt), Tensor("rope_table", ("q", "e"), "fp32", "input")),
              Tensor(out, names, adt), ROPE_FLOPS, {"theta": theta, **pos})


def mla_ops(model: ModelSpec, phase: Phase, m: int, form: str) -> list[Op]:
    """MLA of one layer on ``xn``, producing ``attn_out``, in the ``naive`` or ``absorbed`` form."""
    b, lq, lkv = phase.batch, phase.q_len, phase.kv_len
    d, h, adt, wdt, kdt = model.d_model, model.n_heads, model.act_dtype, model.weight_dtype, model.kv_dtype
    dq, dc, dn, dr, dv = (model.q_lora_rank, model.kv_lora_rank, model.qk_nope_head_dim, model.qk_rope_head_dim,
                          model.v_head_dim)
    offset, causal, pos = lkv - lq, is_causal(phase), position_attrs(phase)
    rope = (model.rope_theta, pos)
    ops: list[Op] = []
    q_in = "xn"
    if dq:
        ops += [linear("q_a_proj", m, dq, d, "xn", "w_q_a", "q_a", wdt, adt),
                norm("q_a_norm", model, m, "q_a", "q_a_n", "q_a_norm", dq)]
        q_in = "q_a_n"
    ops += [
        linear("q_nope_proj", m, h * dn, dq or d, q_in, "w_q_nope", "q_nope", wdt, adt),
        linear("q_pe_proj", m, h * dr, dq or d, q_in, "w_q_pe", "q_pe", wdt, adt),
        _rope("rope_q", "q_pe", "q_pe_rot", (("b", b), ("q", lq), ("h", h), ("e", dr)), adt, *rope),
        linear("kv_a_proj", m, dc, d, "xn", "w_kv_a", "c_kv", wdt, adt),
        norm("kv_a_norm", model, m, "c_kv", "c_kv_n", "kv_a_norm", dc),
        linear("k_pe_proj", m, dr, d, "xn", "w_k_pe", "k_pe", wdt, adt),
        _rope("rope_k", "k_pe", "k_pe_rot", (("b", b), ("q", lq), ("e", dr)), adt, *rope),
        concat("latent_cat", (("b", b), ("q", lq)), (("c_kv_n", ("b", "q"), "c", dc), ("k_pe_rot", ("b", "q"), "p", dr)),
               "latent_new", adt),
        Op("latent_append", "kv_append", (("b", b), ("q", lq), ("h", 1), ("e", dc + dr)),
           (Tensor("latent_new", ("b", "q", "h", "e"), adt),), Tensor("kv_latent", ("b", "q", "h", "e"), kdt, "kv"),
           0.0, {"offset": offset}),
    ]
    scale = {"scale": 1.0 / math.sqrt(dn + dr), "causal": causal, **pos, "kv_start": 0}
    if form == "naive":
        ops += [
            Op("k_up", "matmul", (("b", b), ("s", lkv), ("n", h * dn), ("c", dc)),
               (Tensor("kv_latent", ("b", "s", "c"), kdt, "kv"), Tensor("w_k_up", ("n", "c"), wdt, "weight")),
               Tensor("k_nope", ("b", "s", "n"), adt)),
            Op("v_up", "matmul", (("b", b), ("s", lkv), ("n", h * dv), ("c", dc)),
               (Tensor("kv_latent", ("b", "s", "c"), kdt, "kv"), Tensor("w_v_up", ("n", "c"), wdt, "weight")),
               Tensor("v_full", ("b", "s", "n"), adt)),
            concat("q_cat", (("b", b), ("q", lq), ("h", h)), (("q_nope", ("b", "q", "h"), "n", dn),
                                                               ("q_pe_rot", ("b", "q", "h"), "p", dr)), "q_full", adt),
            concat("k_cat", (("b", b), ("s", lkv), ("h", h)), (("k_nope", ("b", "s", "h"), "n", dn),
                                                                ("kv_latent", ("b", "s"), "p", dr)), "k_full", adt,
                   kv_dtype=kdt, kv_offset=dc),  # the RoPE keys: features dc.. of each cached row
        ]
        dims = (("b", b), ("h", h), ("r", 1), ("q", lq), ("s", lkv), ("e", dn + dr))
        ops += [
            Op("attn_score", "matmul", dims, (Tensor("q_full", ("b", "q", "h", "r", "e"), adt),
                                               Tensor("k_full", ("b", "s", "h", "e"), adt)),
               Tensor("scores", ("b", "h", "r", "q", "s"), adt), 2.0, {"causal": causal}),
            Op("softmax", "softmax", dims[:5], (Tensor("scores", ("b", "h", "r", "q", "s"), adt),),
               Tensor("probs", ("b", "h", "r", "q", "s"), adt), SOFTMAX_FLOPS, scale),
            Op("attn_context", "matmul", (*dims[:5], ("e", dv)), (Tensor("probs", ("b", "h", "r", "q", "s"), adt),
                                                                   Tensor("v_full", ("b", "s", "h", "e"), adt)),
               Tensor("attn", ("b", "q", "h", "r", "e"), adt), 2.0, {"causal": causal}),
        ]
    else:
        dims = (("b", b), ("h", 1), ("r", h), ("q", lq), ("s", lkv), ("e", dc + dr))
        ops += [
            Op("q_absorb", "matmul", (("b", b), ("q", lq), ("h", h), ("n", dn), ("c", dc)),
               (Tensor("q_nope", ("b", "q", "h", "n"), adt), Tensor("w_k_up", ("h", "n", "c"), wdt, "weight")),
               Tensor("q_lat", ("b", "q", "h", "c"), adt)),
            concat("q_cat", (("b", b), ("q", lq), ("h", h)), (("q_lat", ("b", "q", "h"), "c", dc),
                                                               ("q_pe_rot", ("b", "q", "h"), "p", dr)), "q_full", adt),
            Op("attn_score", "matmul", dims, (Tensor("q_full", ("b", "q", "h", "r", "e"), adt),
                                               Tensor("kv_latent", ("b", "s", "h", "e"), kdt, "kv")),
               Tensor("scores", ("b", "h", "r", "q", "s"), adt), 2.0, {"causal": causal}),
            Op("softmax", "softmax", dims[:5], (Tensor("scores", ("b", "h", "r", "q", "s"), adt),),
               Tensor("probs", ("b", "h", "r", "q", "s"), adt), SOFTMAX_FLOPS, scale),
            Op("attn_context", "matmul", (*dims[:5], ("e", dc)), (Tensor("probs", ("b", "h", "r", "q", "s"), adt),
                                                                   Tensor("kv_latent", ("b", "s", "h", "e"), kdt, "kv")),
               Tensor("ctx_lat", ("b", "q", "h", "r", "e"), adt), 2.0, {"causal": causal, "shares_keys": True}),
            Op("v_absorb", "matmul", (("b", b), ("q", lq), ("h", h), ("v", dv), ("c", dc)),
               (Tensor("ctx_lat", ("b", "q", "h", "c"), adt), Tensor("w_v_up", ("h", "v", "c"), wdt, "weight")),
               Tensor("attn", ("b", "q", "h", "v"), adt)),
        ]
    ops.append(linear("o_proj", m, d, h * dv, "attn", "wo", "attn_out", wdt, adt))
    return ops
