"""The trace executor computes what a transformer computes: compared with an independent plain
numpy forward pass (written here from the models' published equations, not from the trace)."""

import math

import numpy as np
import pytest
from xpusim.workloads import Decode, ModelSpec, Prefill, build_trace
from xpusim.workloads.functional.reference import execute, init_weights, weight_key

TINY_LLAMA = ModelSpec(name="tiny-llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                       vocab_size=97, max_seq_len=64, rope_theta=10000.0)
TINY_GPT = ModelSpec(name="tiny-gpt", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256,
                     vocab_size=97, max_seq_len=64, activation="gelu", gated_mlp=False, norm="layernorm",
                     position="learned", tied_embeddings=True)
TINY_MOE = ModelSpec(name="tiny-moe", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                     vocab_size=53, max_seq_len=64, n_experts=6, experts_per_token=2, d_ff_expert=24,
                     n_shared_experts=1, first_dense_layers=1, sliding_window=3, attention_sinks=2)
TINY_BITNET = ModelSpec(name="tiny-bitnet", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
                        vocab_size=53, activation="relu2", sub_norms=True, tied_embeddings=True, weight_dtype="ternary",
                        embed_dtype="bf16")
TINY_DSV3_ROUTER = ModelSpec(name="tiny-sigmoid-moe", n_layers=2, d_model=32, n_heads=4, n_kv_heads=4, head_dim=8,
                             d_ff=64, vocab_size=53, max_seq_len=64, n_experts=5, experts_per_token=3,
                             router_scoring="sigmoid", capacity_factor=1.0, routed_scaling=2.5)


def plain_forward(model: ModelSpec, w: dict, ids: np.ndarray) -> np.ndarray:
    """Logits of the last position of each sequence, computed the textbook way."""
    B, S = ids.shape
    H, KV, E = model.n_heads, model.n_kv_heads, model.head_dim

    def norm(x, p):
        if model.norm == "rmsnorm":
            return x / np.sqrt((x**2).mean(-1, keepdims=True) + model.norm_eps) * w[p + ".weight"]
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + model.norm_eps) * w[p + ".weight"] + w[p + ".bias"]

    def rope(x):  # x: (B, S, heads, E)
        inv = model.rope_theta ** (-np.arange(0, E, 2) / E)
        ang = np.outer(np.arange(S), inv)
        cos, sin = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., : E // 2], x[..., E // 2 :]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    def moe(h, key):
        """Mixture of experts, one token at a time: softmax/sigmoid scores, top-k, renormalise,
        capacity in token order, dense shared expert."""
        rows = h.reshape(-1, h.shape[-1])
        logits = rows @ w[key("w_router")].T
        out = np.zeros_like(rows)
        cap = math.ceil(model.capacity_factor * rows.shape[0] * model.experts_per_token / model.n_experts)
        taken = np.zeros(model.n_experts, int)
        for t, z in enumerate(logits):
            sc = np.exp(z - z.max()) / np.exp(z - z.max()).sum() if model.router_scoring == "softmax" else 1 / (1 + np.exp(-z))
            top = sorted(range(model.n_experts), key=lambda e: (-sc[e], e))[: model.experts_per_token]
            wt = (sc[top] / sc[top].sum() if model.norm_topk_prob else sc[top]) * model.routed_scaling
            for e, g in zip(top, wt, strict=True):
                taken[e] += 1
                if model.capacity_factor and taken[e] > cap:
                    continue
                a = rows[t] @ w[key("experts.w_gate")][e].T
                a = a / (1 + np.exp(-a)) * (rows[t] @ w[key("experts.w_up")][e].T)
                out[t] += g * (a @ w[key("experts.w_down")][e].T)
            if model.n_shared_experts:
                a = rows[t] @ w[key("shared_w_gate")].T
                a = a / (1 + np.exp(-a)) * (rows[t] @ w[key("shared_w_up")].T)
                out[t] += a @ w[key("shared_w_down")].T
        return out.reshape(h.shape)

    x = w["embed_table"][ids]
    if model.position == "learned":
        x = x + w["pos_table"][np.arange(S)][None]
    dense = model.n_layers - model.moe_layers
    for i in range(model.n_layers):
        block, rep, j = ("layer", dense, i) if i < dense else ("moe_layer", model.moe_layers, i - dense)
        key = lambda n, block=block, rep=rep, j=j: weight_key(block, rep, j, n)  # noqa: E731
        p = key("")
        h = norm(x, p + "attn_norm")
        q = (h @ w[p + "wq"].T).reshape(B, S, H, E)
        k = (h @ w[p + "wk"].T).reshape(B, S, KV, E)
        v = (h @ w[p + "wv"].T).reshape(B, S, KV, E)
        if model.position == "rope":
            q, k = rope(q), rope(k)
        rep = H // KV
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
        att = np.einsum("bqhe,bshe->bhqs", q, k) / math.sqrt(E)
        mask = np.tril(np.ones((S, S), bool))
        if model.sliding_window:
            mask &= ~np.tril(np.ones((S, S), bool), -model.sliding_window) | (np.arange(S)[None, :] < model.attention_sinks)
        att = np.where(mask, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshe->bqhe", att, v).reshape(B, S, H * E)
        if model.sub_norms:
            o = norm(o, p + "attn_sub_norm")
        x = x + o @ w[p + "wo"].T
        h = norm(x, p + "mlp_norm")
        if block == "moe_layer":
            x = x + moe(h, key)
        elif model.gated_mlp:
            g, u = h @ w[p + "w_gate"].T, h @ w[p + "w_up"].T
            a = (np.maximum(g, 0) ** 2 if model.activation == "relu2" else g / (1 + np.exp(-g))) * u
            if model.sub_norms:  # BitNet: RMS norm of the gated activations before the down projection
                a = norm(a, p + "ffn_sub_norm")
            x = x + a @ w[p + "w_down"].T
        else:
            f = h @ w[p + "w_fc1"].T
            a = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f**3)))
            x = x + a @ w[p + "w_fc2"].T
    x = norm(x[:, -1], "final_norm")
    head = w["embed_table"] if model.tied_embeddings else w["lm_head"]
    return x @ head.T


@pytest.mark.parametrize("model", [TINY_LLAMA, TINY_GPT, TINY_MOE, TINY_DSV3_ROUTER, TINY_BITNET], ids=lambda m: m.name)
def test_prefill_trace_equals_plain_forward(model):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, model.vocab_size, size=(2, 7))
    trace = build_trace(model, Prefill(2, 7))
    w = init_weights(trace, seed=1)
    logits, cache = execute(trace, w, ids)
    np.testing.assert_allclose(logits, plain_forward(model, w, ids), rtol=1e-9, atol=1e-9)
    assert next(v for k, v in cache.items() if k.endswith("k_cache")).shape == (2, 7, model.n_kv_heads, model.head_dim)


@pytest.mark.parametrize("model", [TINY_LLAMA, TINY_GPT, TINY_MOE], ids=lambda m: m.name)
def test_decode_with_cache_equals_longer_prefill(model):
    """Prefill 6 tokens, then decode token 7 from the cache: same logits as prefilling all 7."""
    rng = np.random.default_rng(4)
    ids = rng.integers(0, model.vocab_size, size=(3, 7))
    w = init_weights(build_trace(model, Prefill(3, 7)), seed=2)
    _, cache = execute(build_trace(model, Prefill(3, 6)), w, ids[:, :6])
    logits, cache = execute(build_trace(model, Decode(3, 7)), w, ids[:, 6:], cache)
    np.testing.assert_allclose(logits, plain_forward(model, w, ids), rtol=1e-9, atol=1e-9)
    assert next(v for k, v in cache.items() if k.endswith("v_cache")).shape[1] == 7
