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

from ..errors import SpecError
from .einsum import Op, Tensor
from .encdec import encdec_trace
from .layers import layer_blocks
from .mla import MLA_FORMS
from .model import ModelSpec
from .opkit import linear, norm
from .phases import Phase, Prefill, Verify
from .routing import Routing, parse_routing
from .trace import Block, Trace


def build_trace(model: ModelSpec, phase: Phase, routing: Routing | str | None = None, mla_form: str | None = None) -> Trace:
    """The ops of one step of ``phase`` (prefill or decode) of ``model``; ``routing`` sizes the
    expert GEMMs of a mixture-of-experts model (default balanced); ``mla_form`` (``naive`` or
    ``absorbed``) writes multi-head latent attention (default: naive in prefill, absorbed in
    decode, as DeepSeek's inference does)."""
    if model.encoder_layers:
        return encdec_trace(model, phase)
    b, lq = phase.batch, phase.q_len
    m = b * lq
    d, adt = model.d_model, model.act_dtype

    edt = model.embedding_dtype
    emb_inputs = [Tensor("token_ids", ("m",), "int32", "input"), Tensor("embed_table", ("m", "d"), edt, "weight")]
    if model.position == "learned":
        emb_inputs.append(Tensor("pos_table", ("m", "d"), edt, "weight"))
    embed = Op("embed", "embedding", (("m", m), ("d", d)), tuple(emb_inputs), Tensor("x", ("m", "d"), adt),
               1.0 if model.position == "learned" else 0.0,
               {"rows": model.vocab_size, "pos_rows": model.max_seq_len, "seq": lq, "offset": phase.kv_len - lq})

    if isinstance(phase, Verify) and phase.parents and (model.position == "learned" or model.ssm_layers):
        raise SpecError(f"{model.name}: token-tree verification needs RoPE or position-free attention layers "
                        "(learned positions and SSM states cannot branch); verify a chain instead")
    form = mla_form or ("naive" if isinstance(phase, Prefill) else "absorbed")
    if form not in MLA_FORMS:
        raise SpecError(f"mla_form {form!r}: use one of {', '.join(MLA_FORMS)}")
    layers, meta = layer_blocks(model, phase, parse_routing(routing), form)

    head: list[Op] = []
    last = "x"
    if lq > 1 and not phase.logits_all:
        head.append(Op("take_last", "take_last", (("b", b), ("d", d)), (Tensor("x", ("b", "d"), adt),),
                       Tensor("x_last", ("b", "d"), adt), 0.0, {"seq": lq}))
        last = "x_last"
    rows = m if phase.logits_all else b  # verification scores every position
    head.append(norm("final_norm", model, rows, last, "xf", "final_norm"))
    lm_w = "embed_table" if model.tied_embeddings else "lm_head"
    head.append(linear("lm_head", rows, model.vocab_size, d, "xf", lm_w, "logits", edt, adt))

    meta.update({k: v for k, v in vars(phase).items() if k != "parents"})
    if isinstance(phase, Verify) and phase.parents:
        meta["tree_nodes"] = phase.draft
    meta["model"] = model.name
    if model.is_mla:
        meta["mla_form"] = form
    return Trace(
        name=f"{model.name}-{phase.name}",
        phase=phase.name,
        blocks=[Block("embed", [embed]), *layers, Block("head", head)],
        tokens=phase.tokens,
        meta=meta,
    )
