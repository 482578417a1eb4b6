"""Encoder-decoder (T5): the prefill and decode traces equal a textbook T5 forward pass, and the
shipped t5-base has its published size."""

import math

import numpy as np
import pytest
import xpusim
from xpusim.workloads import Decode, ModelSpec, Prefill, build_trace, load_model
from xpusim.workloads.functional.reference import execute, init_weights

TINY_T5 = ModelSpec(name="tiny-t5", n_layers=2, encoder_layers=2, d_model=24, n_heads=3, n_kv_heads=3, head_dim=8,
                    d_ff=40, vocab_size=37, activation="relu", gated_mlp=False, position="relative",
                    tied_embeddings=True, rel_buckets=8, rel_max_distance=16, norm_eps=1e-6)


def bucket(rel, bidirectional, nb, maxd):
    """T5's _relative_position_bucket, one offset at a time."""
    ret = 0
    if bidirectional:
        nb //= 2
        ret += nb if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    exact = nb // 2
    if n < exact:
        return ret + n
    return ret + min(nb - 1, exact + int(math.log(n / exact) / math.log(maxd / exact) * (nb - exact)))


def textbook_t5(model, w, src, tgt):
    """Logits at the last target position; tgt starts with the decoder start token."""
    H, E = model.n_heads, model.head_dim

    def rms(x, g):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + model.norm_eps) * g

    def attend(q, k, v, bias, mask=None):
        s = np.einsum("bqhe,bshe->bhqs", q, k) + bias[None]
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("bhqs,bshe->bqhe", p / p.sum(-1, keepdims=True), v)

    def table_bias(table, nq, ns, bidirectional):
        return np.array([[table[bucket(j - i, bidirectional, model.rel_buckets, model.rel_max_distance)]
                          for j in range(ns)] for i in range(nq)]).transpose(2, 0, 1)

    B, S = src.shape
    T = tgt.shape[1]
    x = w["embed_table"][src]
    eb = table_bias(w["enc_bias_table"], S, S, True)
    for i in range(model.encoder_layers):
        p = f"encoder.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q, k, v = ((h @ w[p + n].T).reshape(B, S, H, E) for n in ("wq", "wk", "wv"))
        x = x + attend(q, k, v, eb).reshape(B, S, H * E) @ w[p + "wo"].T
        h = rms(x, w[p + "mlp_norm.weight"])
        x = x + np.maximum(h @ w[p + "w_fc1"].T, 0) @ w[p + "w_fc2"].T
    enc = rms(x, w["enc_final_norm.weight"])
    y = w["embed_table"][tgt]
    db = table_bias(w["dec_bias_table"], T, T, False)
    causal = np.tril(np.ones((T, T), bool))
    for i in range(model.n_layers):
        p = f"decoder.{i}."
        h = rms(y, w[p + "self_norm.weight"])
        q, k, v = ((h @ w[p + n].T).reshape(B, T, H, E) for n in ("self_wq", "self_wk", "self_wv"))
        y = y + attend(q, k, v, db, causal).reshape(B, T, H * E) @ w[p + "self_wo"].T
        h = rms(y, w[p + "cross_norm.weight"])
        q = (h @ w[p + "cross_wq"].T).reshape(B, T, H, E)
        k, v = ((enc @ w[p + n].T).reshape(B, S, H, E) for n in ("cross_wk", "cross_wv"))
        y = y + attend(q, k, v, np.zeros((H, T, S))).reshape(B, T, H * E) @ w[p + "cross_wo"].T
        h = rms(y, w[p + "mlp_norm.weight"])
        y = y + np.maximum(h @ w[p + "w_fc1"].T, 0) @ w[p + "w_fc2"].T
    out = rms(y[:, -1], w["final_norm.weight"]) * model.d_model ** -0.5
    return out @ w["embed_table"].T


def test_prefill_and_decode_equal_textbook_t5():
    rng = np.random.default_rng(13)
    src = rng.integers(0, TINY_T5.vocab_size, size=(2, 20))  # longer than the exact buckets: log buckets used
    w = init_weights(build_trace(TINY_T5, Prefill(2, 20)), seed=10)
    logits, cache = execute(build_trace(TINY_T5, Prefill(2, 20)), w, src)
    tgt = np.zeros((2, 1), int)  # the decoder start token
    np.testing.assert_allclose(logits, textbook_t5(TINY_T5, w, src, tgt), rtol=1e-9, atol=1e-9)
    for step in range(2, 5):  # greedy decoding continues from the cached self and cross K/V
        nxt = logits.argmax(-1)
        tgt = np.concatenate([tgt, nxt[:, None]], axis=1)
        logits, cache = execute(build_trace(TINY_T5, Decode(2, step, 20)), w, nxt[:, None], cache)
        np.testing.assert_allclose(logits, textbook_t5(TINY_T5, w, src, tgt), rtol=1e-9, atol=1e-9)


def test_t5_base_size_and_memory():
    m = load_model("t5-base")
    assert m.params == pytest.approx(222.9e6, rel=0.002)  # t5-base: 223M parameters
    # per decoder token: K and V of 12 heads x 64 in each of 12 decoder layers (bf16: the config names no dtype)
    assert m.kv_bytes_per_token == 12 * 2 * 12 * 64 * 2
    res = xpusim.simulate("h100-sxm", m, Decode(8, 64, 512))
    assert res.kv_cache_bytes == m.kv_bytes_per_token * 8 * (64 + 512)  # self cache plus cross cache
    with pytest.raises(xpusim.SpecError, match="source length"):
        xpusim.simulate("h100-sxm", m, Decode(8, 64))
