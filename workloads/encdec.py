"""Encoder-decoder transformers (T5: Raffel et al., JMLR 2020, arXiv:1910.10683).

* **Prefill** of ``seq`` source tokens: embedding, the encoder stack (bidirectional self-attention
  with T5's bucketed relative position bias, computed once per stack and shared by its layers),
  the encoder's final norm, then the first decoder step on the start token, in which every
  decoder layer projects the encoder output to its cross-attention keys/values and caches them.
* **Decode**: one decoder token per sequence; each decoder layer runs causal self-attention over
  ``context`` decoder tokens (its own KV cache, with the decoder's unidirectional position bias),
  cross-attention over the ``source`` cached encoder keys/values, and the MLP.

T5 does not scale the scores by 1/sqrt(head dim) (folded into its initialisation) and, with tied
embeddings, scales the decoder output by ``d_model ** -0.5`` before the LM head.
"""

from __future__ import annotations

from ..errors import SpecError
from .attention import kv_append_ops, sdpa_ops
from .einsum import Op, Tensor
from .ffn import mlp_ops
from .model import ModelSpec
from .opkit import add, linear, norm
from .phases import Decode, Phase, Prefill
from .trace import Block, Trace


def _bias(name: str, model: ModelSpec, q: int, s: int, offset: int, bidirectional: bool) -> Op:
    """Relative position bias (h, 1, q, s) gathered from the (buckets, heads) table."""
    h, u = model.n_heads, model.rel_buckets
    return Op(name, "rel_bias", (("u", u), ("h", h), ("r", 1), ("q", q), ("s", s)),
              (Tensor(f"{name}_table", ("u", "h"), model.param_dtype, "weight"),),
              Tensor(f"{name}_out", ("h", "r", "q", "s"), model.act_dtype), 0.0,
              {"offset": offset, "bidirectional": bidirectional, "max_distance": model.rel_max_distance})


def _self_attention(p: str, model: ModelSpec, b: int, q: int, s: int, offset: int, x: str, bias: str,
                    causal: bool) -> list[Op]:
    """Projections, cached K/V (decoder) or plain K/V (encoder), attention with ``bias``, output."""
    d, h, e, adt, wdt, kdt = (model.d_model, model.n_heads, model.head_dim, model.act_dtype, model.weight_dtype,
                              model.kv_dtype)
    m = b * q
    ops = [linear(f"{p}q_proj", m, h * e, d, x, f"{p}wq", f"{p}q", wdt, adt),
           linear(f"{p}k_proj", m, h * e, d, x, f"{p}wk", f"{p}k", wdt, adt),
           linear(f"{p}v_proj", m, h * e, d, x, f"{p}wv", f"{p}v", wdt, adt)]
    if causal:  # the decoder caches its keys/values
        ops += kv_append_ops(p, b, q, h, e, ((f"{p}k", f"{p}k_cache"), (f"{p}v", f"{p}v_cache")), offset, adt, kdt)
        kv = (f"{p}k_cache", f"{p}v_cache", "kv")
    else:
        kv = (f"{p}k", f"{p}v", "activation")
    ops += sdpa_ops(p, b, h, 1, q, s, e, f"{p}q", kv, f"{p}attn", adt, kdt, {"causal": causal},
                    {"scale": 1.0, "offset": offset, "kv_start": 0}, bias)
    ops.append(linear(f"{p}o_proj", m, d, h * e, f"{p}attn", f"{p}wo", f"{p}out", wdt, adt))
    return ops


def _cross_attention(model: ModelSpec, b: int, source: int, project: bool) -> list[Op]:
    """Decoder cross-attention on ``xc``; ``project``: compute and cache the encoder K/V first."""
    d, h, e, adt, wdt, kdt = (model.d_model, model.n_heads, model.head_dim, model.act_dtype, model.weight_dtype,
                              model.kv_dtype)
    ops = [linear("cross_q_proj", b, h * e, d, "xc", "cross_wq", "cross_q", wdt, adt)]
    if project:
        ms = b * source
        ops += [linear("cross_k_proj", ms, h * e, d, "enc_out", "cross_wk", "cross_k", wdt, adt),
                linear("cross_v_proj", ms, h * e, d, "enc_out", "cross_wv", "cross_v", wdt, adt),
                *kv_append_ops("", b, source, h, e, (("cross_k", "cross_k_cache"), ("cross_v", "cross_v_cache")), 0,
                               adt, kdt)]
    ops += sdpa_ops("cross_", b, h, 1, 1, source, e, "cross_q", ("cross_k_cache", "cross_v_cache", "kv"), "cross_attn",
                    adt, kdt, {"causal": False}, {"scale": 1.0, "offset": 0, "kv_start": 0})
    ops.append(linear("cross_o_proj", b, d, h * e, "cross_attn", "cross_wo", "cross_out", wdt, adt))
    return ops


def encdec_trace(model: ModelSpec, phase: Phase) -> Trace:
    """One prefill (encode + first decoder step) or decode step of an encoder-decoder model."""
    b, d, adt = phase.batch, model.d_model, model.act_dtype
    edt = model.embedding_dtype
    if isinstance(phase, Prefill):
        if phase.prefix:
            raise SpecError(f"{model.name} is an encoder-decoder model: chunked prefill of its source is not modelled")
        source, context, project = phase.seq, 1, True
    elif isinstance(phase, Decode):
        source, context, project = phase.source, phase.context, False
        if not source:
            raise SpecError(f"{model.name} is an encoder-decoder model: decode needs the source length (--seq)")
    else:
        raise SpecError(f"{model.name}: speculative verification of encoder-decoder models is not modelled")
    blocks: list[Block] = []
    if project:
        ms = b * source
        blocks += [
            Block("embed", [Op("embed", "embedding", (("m", ms), ("d", d)),
                               (Tensor("token_ids", ("m",), "int32", "input"), Tensor("embed_table", ("m", "d"), edt, "weight")),
                               Tensor("x", ("m", "d"), adt), 0.0, {"rows": model.vocab_size, "seq": source, "offset": 0})]),
            Block("encoder_bias", [_bias("enc_bias", model, source, source, 0, True)]),
            Block("encoder", [norm("attn_norm", model, ms, "x", "xn", "attn_norm"),
                              *_self_attention("", model, b, source, source, 0, "xn", "enc_bias_out", False),
                              add("residual_attn", ms, d, "x", "out", "x1", adt),
                              norm("mlp_norm", model, ms, "x1", "xn2", "mlp_norm"), *mlp_ops(model, ms),
                              add("residual_mlp", ms, d, "x1", "mlp_out", "x", adt)], model.encoder_layers),
            Block("encoder_norm", [norm("enc_final_norm", model, ms, "x", "enc_out", "enc_final_norm")]),
        ]
    offset = context - 1
    start = {"start_token": model.decoder_start_token} if project else {}
    blocks += [
        Block("dec_embed", [Op("dec_embed", "embedding", (("m", b), ("d", d)),
                               (Tensor("token_ids", ("m",), "int32", "input"), Tensor("embed_table", ("m", "d"), edt, "weight")),
                               Tensor("y", ("m", "d"), adt), 0.0,
                               {"rows": model.vocab_size, "seq": 1, "offset": offset, **start})]),
        Block("decoder_bias", [_bias("dec_bias", model, 1, context, offset, False)]),
        Block("decoder", [norm("self_norm", model, b, "y", "yn", "self_norm"),
                          *_self_attention("self_", model, b, 1, context, offset, "yn", "dec_bias_out", True),
                          add("residual_self", b, d, "y", "self_out", "y1", adt),
                          norm("cross_norm", model, b, "y1", "xc", "cross_norm"),
                          *_cross_attention(model, b, source, project),
                          add("residual_cross", b, d, "y1", "cross_out", "x1", adt),
                          norm("mlp_norm", model, b, "x1", "xn2", "mlp_norm"), *mlp_ops(model, b),
                          add("residual_mlp", b, d, "x1", "mlp_out", "y", adt)], model.n_layers),
    ]
    head = [norm("final_norm", model, b, "y", "xf", "final_norm")]
    last = "xf"
    if model.tied_embeddings:  # T5 rescales before the tied LM head
        head.append(Op("head_scale", "elementwise", (("m", b), ("d", d)), (Tensor("xf", ("m", "d"), adt),),
                       Tensor("xs", ("m", "d"), adt), 1.0, {"function": "scale", "factor": d ** -0.5}))
        last = "xs"
    lm_w = "embed_table" if model.tied_embeddings else "lm_head"
    head.append(linear("lm_head", b, model.vocab_size, d, last, lm_w, "logits", edt, adt))
    blocks.append(Block("head", head))
    meta = {**{k: v for k, v in vars(phase).items()}, "model": model.name, "source": source}
    return Trace(f"{model.name}-{phase.name}", phase.name, blocks, tokens=phase.tokens, meta=meta)

