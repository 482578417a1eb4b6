"""Multi-head latent attention: the naive and the weight-absorbed traces compute the same logits,
both equal a textbook MLA forward pass, decode from the latent cache equals a longer prefill,
and the cache and intensity figures are MLA's."""

import math

import numpy as np
import pytest
import xpusim
from xpusim.workloads import Decode, ModelSpec, Prefill, build_trace, load_model
from xpusim.workloads.functional.reference import execute, init_weights, weight_key
from xpusim.workloads.opkit import SOFTMAX_FLOPS

TINY_MLA = ModelSpec(name="tiny-mla", n_layers=2, d_model=48, n_heads=4, n_kv_heads=4, head_dim=12, d_ff=64,
                     vocab_size=41, max_seq_len=64, q_lora_rank=20, kv_lora_rank=16, qk_nope_head_dim=8,
                     qk_rope_head_dim=4, v_head_dim=6, n_experts=4, experts_per_token=2, d_ff_expert=16,
                     n_shared_experts=1, first_dense_layers=1, router_scoring="sigmoid", routed_scaling=2.0)
TINY_MLA_NO_QLORA = ModelSpec(name="tiny-mla-v2lite", n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, head_dim=12,
                              d_ff=48, vocab_size=41, max_seq_len=64, kv_lora_rank=10, qk_nope_head_dim=8,
                              qk_rope_head_dim=4, v_head_dim=8)


def textbook_mla_prefill(model, w, ids):
    """DeepSeek-V2 eqs. (9)-(19): per-head keys from the latent, shared RoPE key, standard softmax."""
    B, S = ids.shape
    H, dn, dr, dv = model.n_heads, model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim

    def rms(x, g):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + model.norm_eps) * g

    def rope(x):  # (..., S, [heads,] dr), rotate-half layout
        inv = model.rope_theta ** (-np.arange(0, dr, 2) / dr)
        ang = np.outer(np.arange(S), inv)
        c, s = np.cos(ang), np.sin(ang)
        if x.ndim == 4:
            c, s = c[:, None, :], s[:, None, :]
        x1, x2 = x[..., : dr // 2], x[..., dr // 2:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    x = w["embed_table"][ids]
    dense = model.n_layers - model.moe_layers
    for i in range(model.n_layers):
        block, rep, j = ("layer", dense, i) if i < dense else ("moe_layer", model.moe_layers, i - dense)
        key = lambda n, block=block, rep=rep, j=j: w[weight_key(block, rep, j, n)]  # noqa: E731
        h = rms(x, key("attn_norm.weight"))
        cq = rms(h @ key("w_q_a").T, key("q_a_norm.weight")) if model.q_lora_rank else h
        q_nope = (cq @ key("w_q_nope").T).reshape(B, S, H, dn)
        q_pe = rope((cq @ key("w_q_pe").T).reshape(B, S, H, dr))
        c_kv = rms(h @ key("w_kv_a").T, key("kv_a_norm.weight"))
        k_pe = rope(h @ key("w_k_pe").T)  # (B, S, dr), one for all heads
        k_nope = (c_kv @ key("w_k_up").T).reshape(B, S, H, dn)
        v = (c_kv @ key("w_v_up").T).reshape(B, S, H, dv)
        att = (np.einsum("bqhe,bshe->bhqs", q_nope, k_nope) + np.einsum("bqhe,bse->bhqs", q_pe, k_pe)) / math.sqrt(dn + dr)
        att = np.where(np.tril(np.ones((S, S), bool)), att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshe->bqhe", att, v).reshape(B, S, H * dv)
        x = x + o @ key("wo").T
        h = rms(x, key("mlp_norm.weight"))
        if block == "layer":
            g = h @ key("w_gate").T
            x = x + (g / (1 + np.exp(-g)) * (h @ key("w_up").T)) @ key("w_down").T
        else:  # sigmoid routing, top-k, renormalised, scaled; one shared expert
            rows = h.reshape(-1, h.shape[-1])
            sc = 1 / (1 + np.exp(-(rows @ key("w_router").T)))
            out = np.zeros_like(rows)
            for t in range(rows.shape[0]):
                top = np.argsort(-sc[t], kind="stable")[: model.experts_per_token]
                wt = sc[t, top] / sc[t, top].sum() * model.routed_scaling
                for e, gw in zip(top, wt, strict=True):
                    a = rows[t] @ key("experts.w_gate")[e].T
                    out[t] += gw * ((a / (1 + np.exp(-a)) * (rows[t] @ key("experts.w_up")[e].T)) @ key("experts.w_down")[e].T)
                a = rows[t] @ key("shared_w_gate").T
                out[t] += (a / (1 + np.exp(-a)) * (rows[t] @ key("shared_w_up").T)) @ key("shared_w_down").T
            x = x + out.reshape(h.shape)
    return rms(x[:, -1], w["final_norm.weight"]) @ w["lm_head"].T


@pytest.mark.parametrize("model", [TINY_MLA, TINY_MLA_NO_QLORA], ids=lambda m: m.name)
def test_both_forms_equal_textbook_prefill(model):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, model.vocab_size, size=(2, 6))
    w = init_weights(build_trace(model, Prefill(2, 6), mla_form="naive"), seed=3)
    ref = textbook_mla_prefill(model, w, ids)
    for form in ("naive", "absorbed"):
        logits, cache = execute(build_trace(model, Prefill(2, 6), mla_form=form), w, ids)
        np.testing.assert_allclose(logits, ref, rtol=1e-9, atol=1e-9)
        latent = next(v for k, v in cache.items() if k.endswith("kv_latent"))
        assert latent.shape == (2, 6, 1, model.kv_lora_rank + model.qk_rope_head_dim)


@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_decode_from_latent_cache_equals_longer_prefill(form):
    model = TINY_MLA
    rng = np.random.default_rng(6)
    ids = rng.integers(0, model.vocab_size, size=(3, 7))
    w = init_weights(build_trace(model, Prefill(3, 7), mla_form="naive"), seed=4)
    _, cache = execute(build_trace(model, Prefill(3, 6), mla_form="naive"), w, ids[:, :6])
    logits, _ = execute(build_trace(model, Decode(3, 7), mla_form=form), w, ids[:, 6:], cache)
    np.testing.assert_allclose(logits, textbook_mla_prefill(model, w, ids), rtol=1e-9, atol=1e-9)


def test_deepseek_v3_sizes():
    m = load_model("deepseek-v3")
    assert m.params == pytest.approx(671e9, rel=0.005)  # DeepSeek-V3 report: 671B total parameters
    assert m.kv_bytes_per_token == m.n_layers * (512 + 64) * 2  # latent 512 + RoPE key 64, bf16
    assert m.weight_dtype == "fp8-e4m3" and m.n_experts == 256 and m.first_dense_layers == 3


def _attention_intensity(res):
    return float(res.ops[res.ops.kind == "attention"].intensity.iloc[0])


def test_mla_decode_intensity_far_above_mha_and_gqa_in_duplex_range():
    """Duplex (MICRO 2024): decode attention of Llama-3-70B (GQA, 8 query heads per KV head) runs at
    4-8 FLOP/B; MLA's absorbed form reads each latent row once for all 128 heads."""
    phase = Decode(32, 4096)
    mha = xpusim.simulate("h200", "llama-2-7b", phase)
    gqa = xpusim.simulate("h200", "llama-3-70b", phase, check_memory=False)
    mla = xpusim.simulate("h200", "deepseek-v3", phase, check_memory=False)
    e = load_model("llama-3-70b").head_dim
    softmax_share = 1 + SOFTMAX_FLOPS / (4 * e)  # the group also counts the softmax's FLOPs
    assert 4 <= _attention_intensity(gqa) <= 8 * softmax_share
    assert _attention_intensity(mha) < 1.1 * softmax_share
    assert mla.inputs["meta"]["mla_form"] == "absorbed"
    assert _attention_intensity(mla) > 10 * _attention_intensity(gqa)


def test_mapper_picks_naive_prefill_absorbed_decode():
    m = load_model("deepseek-v3")
    pre = xpusim.simulate("h200", m, Prefill(1, 2048), check_memory=False)
    dec = xpusim.simulate("h200", m, Decode(16, 2048), check_memory=False)
    assert pre.inputs["meta"]["mla_form"] == "naive" and dec.inputs["meta"]["mla_form"] == "absorbed"
    forced = xpusim.simulate("h200", m, Decode(16, 2048), check_memory=False, mla_form="naive")
    assert forced.latency_s > dec.latency_s
