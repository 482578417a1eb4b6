"""State-space layers: the chunk-parallel scan equals the recurrence, Mamba-1/Mamba-2 traces equal
a token-by-token recurrent forward, decode continues the recurrent state exactly, hybrids
(Jamba) become one period block, and the sizes match the published models."""

import dataclasses

import numpy as np
import pytest
import xpusim
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import simulate
from xpusim.workloads import Decode, ModelSpec, Prefill, build_trace, load_model
from xpusim.workloads.functional import ssm
from xpusim.workloads.functional.reference import execute, init_weights, weight_key

TINY_MAMBA1 = ModelSpec(name="tiny-mamba", n_layers=2, d_model=16, n_heads=1, n_kv_heads=1, head_dim=1, d_ff=0,
                        vocab_size=29, position="none", ssm_kind="mamba1", ssm_state=4, ssm_expand=2, ssm_conv=3)
TINY_MAMBA2 = ModelSpec(name="tiny-mamba2", n_layers=2, d_model=16, n_heads=1, n_kv_heads=1, head_dim=1, d_ff=0,
                        vocab_size=29, position="none", ssm_kind="mamba2", ssm_state=4, ssm_expand=2, ssm_conv=4,
                        ssm_head_dim=8, ssm_groups=2)
TINY_JAMBA = ModelSpec(name="tiny-jamba", n_layers=8, d_model=16, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24,
                       vocab_size=29, position="none", ssm_kind="mamba1", ssm_state=4, ssm_conv=4, ssm_inner_norms=True,
                       attn_period=4, attn_offset=2, n_experts=4, experts_per_token=2, moe_period=2, moe_offset=1)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 2), t=st.integers(1, 40), c=st.integers(1, 5), n=st.integers(1, 4), chunk=st.integers(1, 16),
       shared_b=st.booleans(), seed=st.integers(0, 1000), with_state=st.booleans())
def test_chunked_scan_equals_recurrence(b, t, c, n, chunk, shared_b, seed, with_state):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c))
    dt = ssm.softplus(rng.standard_normal((b, t, c)))
    A = -np.exp(rng.standard_normal((c, n)))
    B = rng.standard_normal((b, t, 1 if shared_b else c, n))
    C = rng.standard_normal((b, t, c, n))
    h0 = rng.standard_normal((b, c, n)) if with_state else None
    y1, h1 = ssm.scan_recurrent(x, dt, A, B, C, h0)
    y2, h2 = ssm.scan_chunked(x, dt, A, B, C, h0, chunk)
    np.testing.assert_allclose(y2, y1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h2, h1, rtol=1e-10, atol=1e-10)


def test_conv1d_state_continues_the_sequence():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 3))
    w, bias = rng.standard_normal((3, 4)), rng.standard_normal(3)
    full, _ = ssm.conv1d_causal(x, w, bias, None)
    a, state = ssm.conv1d_causal(x[:, :5], w, bias, None)
    b, _ = ssm.conv1d_causal(x[:, 5:], w, bias, state)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), full)
    # causal: output t depends on inputs t-3..t only (taps w[:, j] multiply x[t - 3 + j])
    np.testing.assert_allclose(full[:, 6], sum(x[:, 3 + j] * w[:, j] for j in range(4)) + bias)


def recurrent_forward(model: ModelSpec, w: dict, ids: np.ndarray) -> np.ndarray:
    """Mamba, one token at a time (Mamba paper, Algorithm 2, with the reference block layout)."""
    B, S = ids.shape
    di, n, k = model.ssm_inner, model.ssm_state, model.ssm_conv

    def rms(v, g):
        return v / np.sqrt((v**2).mean(-1, keepdims=True) + model.norm_eps) * g

    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    x = w["embed_table"][ids]
    for i in range(model.n_layers):
        key = lambda nm, i=i: w[weight_key("ssm_layer", model.n_layers, i, nm)]  # noqa: E731
        hn = rms(x, key("attn_norm.weight"))
        z = hn @ key("w_in_z").T
        if model.ssm_kind == "mamba1":
            xs = hn @ key("w_in_x").T
            xc = np.zeros_like(xs)
            for t in range(S):  # causal depthwise conv over the last k inputs
                for j in range(k):
                    src = t - (k - 1) + j
                    if src >= 0:
                        xc[:, t] += xs[:, src] * key("conv_x.weight")[:, j]
            xa = silu(xc + key("conv_x.bias"))
            dt = softplus((xa @ key("w_x_dt").T) @ key("w_dt").T + key("dt_bias"))
            Bm, Cm = xa @ key("w_x_B").T, xa @ key("w_x_C").T
            A = -np.exp(key("A_log"))
            h = np.zeros((B, di, n))
            y = np.zeros((B, S, di))
            for t in range(S):
                h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * xa[:, t])[:, :, None] * Bm[:, t, None, :]
                y[:, t] = (h * Cm[:, t, None, :]).sum(-1) + key("D") * xa[:, t]
            x = x + (y * silu(z)) @ key("w_out").T
        else:
            nh, p, g = model.ssm_heads, model.ssm_head_dim, model.ssm_groups

            def conv(v, name, key=key):
                out = np.zeros_like(v)
                for t in range(S):
                    for j in range(k):
                        if t - (k - 1) + j >= 0:
                            out[:, t] += v[:, t - (k - 1) + j] * key(f"{name}.weight")[:, j]
                return silu(out + key(f"{name}.bias"))

            xa = conv(hn @ key("w_in_x").T, "conv_x").reshape(B, S, nh, p)
            Bm = conv(hn @ key("w_in_B").T, "conv_B").reshape(B, S, g, n)
            Cm = conv(hn @ key("w_in_C").T, "conv_C").reshape(B, S, g, n)
            dt = softplus(hn @ key("w_in_dt").T + key("dt_bias"))  # (B, S, heads)
            A = -np.exp(key("A_log"))  # one per head
            y = np.zeros((B, S, nh, p))
            h = np.zeros((B, nh, p, n))
            for t in range(S):
                for hh in range(nh):
                    gg = hh // (nh // g)
                    h[:, hh] = (np.exp(dt[:, t, hh] * A[hh])[:, None, None] * h[:, hh]
                                + (dt[:, t, hh, None] * xa[:, t, hh])[:, :, None] * Bm[:, t, gg, None, :])
                    y[:, t, hh] = (h[:, hh] * Cm[:, t, gg, None, :]).sum(-1) + key("D")[hh] * xa[:, t, hh]
            yg = y.reshape(B, S, di) * silu(z)
            x = x + rms(yg, key("ssm_norm.weight")) @ key("w_out").T
    x = rms(x[:, -1], w["final_norm.weight"])
    return x @ (w["embed_table"] if model.tied_embeddings else w["lm_head"]).T


@pytest.mark.parametrize("model", [TINY_MAMBA1, TINY_MAMBA2], ids=lambda m: m.name)
def test_prefill_and_decode_equal_recurrent_forward(model):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, model.vocab_size, size=(2, 9))
    w = init_weights(build_trace(model, Prefill(2, 9)), seed=5)
    logits, _ = execute(build_trace(model, Prefill(2, 9)), w, ids)
    ref = recurrent_forward(model, w, ids)
    np.testing.assert_allclose(logits, ref, rtol=1e-9, atol=1e-9)
    # prefill 7 tokens, then two decode steps from the recurrent state
    _, cache = execute(build_trace(model, Prefill(2, 7)), w, ids[:, :7])
    _, cache = execute(build_trace(model, Decode(2, 8)), w, ids[:, 7:8], cache)
    logits, cache = execute(build_trace(model, Decode(2, 9)), w, ids[:, 8:9], cache)
    np.testing.assert_allclose(logits, ref, rtol=1e-9, atol=1e-9)
    state = cache[weight_key("ssm_layer", 2, 1, "ssm_state")]
    assert state.shape == ((2, model.ssm_inner, model.ssm_state) if model.ssm_kind == "mamba1"
                           else (2, model.ssm_heads, model.ssm_head_dim, model.ssm_state))


def test_hybrid_is_one_period_block_and_decode_continues_prefill():
    model = TINY_JAMBA
    kinds = model.layer_kinds()
    assert [mx for mx, _ in kinds].count("attn") == 2 and [f for _, f in kinds].count("moe") == 4
    trace = build_trace(model, Decode(2, 6))
    assert [(b.name, b.repeat) for b in trace.blocks] == [("embed", 1), ("period", 2), ("head", 1)]
    rng = np.random.default_rng(8)
    ids = rng.integers(0, model.vocab_size, size=(2, 6))
    w = init_weights(build_trace(model, Prefill(2, 6)), seed=6)
    full, _ = execute(build_trace(model, Prefill(2, 6)), w, ids)
    _, cache = execute(build_trace(model, Prefill(2, 5)), w, ids[:, :5])
    step, _ = execute(build_trace(model, Decode(2, 6)), w, ids[:, 5:], cache)
    np.testing.assert_allclose(step, full, rtol=1e-9, atol=1e-9)


def test_published_sizes_and_constant_state():
    mamba = load_model("mamba-2.8b")
    assert mamba.params == pytest.approx(2.77e9, rel=0.01)  # state-spaces/mamba-2.8b: 2.77B parameters
    assert mamba.kv_bytes_per_token == 0
    # per layer: conv window (k-1) x channels + scan state channels x N, fp32 as published
    assert mamba.ssm_state_bytes(1) == 64 * (3 * 5120 + 5120 * 16) * 4
    jamba = load_model("jamba-v0.1")
    assert jamba.params == pytest.approx(52e9, rel=0.02)  # Jamba paper: 52B total parameters
    assert jamba.attention_layers == 4 and jamba.moe_layers == 16
    assert jamba.kv_bytes_per_token == 4 * 2 * 8 * 128 * 2  # only the 4 attention layers cache K/V
    short = xpusim.simulate("h100-sxm", mamba, Decode(4, 128))
    long = xpusim.simulate("h100-sxm", mamba, Decode(4, 65536))
    assert short.ssm_state_bytes == long.ssm_state_bytes and long.kv_cache_bytes == 0
    assert long.latency_s == pytest.approx(short.latency_s, rel=1e-9)  # a decode step does not grow with context


# --- Hyena long convolutions (issue 11) ------------------------------------------------------------------

TINY_HYENA = ModelSpec(name="tiny-hyena", n_layers=2, d_model=16, n_heads=2, n_kv_heads=2, head_dim=8, d_ff=32,
                       vocab_size=37, max_seq_len=512, ssm_kind="hyena", ssm_expand=1, ssm_conv=3, hyena_order=2)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), hist=st.integers(0, 20), q=st.integers(1, 20), c=st.integers(1, 4), seed=st.integers(0, 99))
def test_fft_long_convolution_equals_the_direct_sum(b, hist, q, c, seed):
    from xpusim.workloads.functional.ssm import long_conv_causal

    r = np.random.default_rng(seed)
    x, h = r.standard_normal((b, q, c)), r.standard_normal((hist + q + 3, c))
    past = r.standard_normal((b, hist, c)) if hist else None
    fft, u = long_conv_causal(x, h, past, "fft")
    direct, _ = long_conv_causal(x, h, past, "direct")
    np.testing.assert_allclose(fft, direct, atol=1e-10)
    assert u.shape == (b, hist + q, c)
    full = np.concatenate([past, x], axis=1) if hist else x  # textbook: y[t] = sum_s h[t - s] u[s]
    t = hist + q - 1
    np.testing.assert_allclose(fft[:, -1], np.einsum("bsc,sc->bc", full[:, : t + 1], h[t::-1]), atol=1e-10)


@pytest.mark.parametrize("split", [1, 17, 128])
def test_hyena_decode_and_chunked_prefill_equal_one_prefill(split):
    # the one-shot prefill takes the FFT form; the continuations the direct sum (or FFT for a long chunk)
    r = np.random.default_rng(4)
    n = 256
    ids = r.integers(0, 37, (2, n))
    trace = build_trace(TINY_HYENA, Prefill(2, n))
    assert {op.attrs["method"] for b in trace.blocks for op in b.ops if op.kind == "fftconv"} == {"fft"}
    w = init_weights(trace, seed=1)
    full, _ = execute(trace, w, ids)
    _, cache = execute(build_trace(TINY_HYENA, Prefill(2, n - split)), w, ids[:, :n - split])
    if split == 1:
        step = build_trace(TINY_HYENA, Decode(2, n))
    else:
        step = build_trace(TINY_HYENA, Prefill(2, split, prefix=n - split))
    out, _ = execute(step, w, ids[:, n - split:], cache)
    np.testing.assert_allclose(out, full, atol=1e-10)


def test_hyena_context_beyond_its_filters_is_refused():
    with pytest.raises(xpusim.errors.XpusimError, match="max_seq_len") as e:
        build_trace(TINY_HYENA, Decode(1, 1000))
    assert "\n" not in str(e.value)


def test_hyena_costs_grow_n_log_n_in_prefill_and_linearly_in_decode():
    from xpusim.workloads.ssm import fftconv_flops_per_point

    fpp = [fftconv_flops_per_point(n, n)[0] for n in (1024, 4096, 16384)]
    assert fpp[0] < fpp[1] < fpp[2] < 2 * fpp[0]  # per point ~ log n
    dec = [fftconv_flops_per_point(n, 1) for n in (1024, 4096)]
    assert dec[0][1] == dec[1][1] == "direct" and dec == [(2 * 1024 + 2, "direct"), (2 * 4096 + 2, "direct")]
    big = dataclasses.replace(TINY_HYENA, n_layers=4, d_model=1024, max_seq_len=32768, vocab_size=50277)
    assert big.kv_bytes_per_token == 4 * 2 * 1024 * 2  # each long convolution's input history, per token
    for arch in ("h100-sxm", "sn40l"):
        a, b = (simulate(arch, big, Decode(1, n), check_memory=False).latency_s for n in (4096, 16384))
        assert b > a


def test_hyena_weights_from_a_short_trace_run_a_longer_one():
    """The long filters are stored at max_seq_len (as the parameter count has them): weights drawn
    from an 8-token prefill sized them to 8 taps and could not run the 9th token."""
    w = init_weights(build_trace(TINY_HYENA, Prefill(1, 8)), seed=0)
    assert all(v.shape[0] == TINY_HYENA.max_seq_len for k, v in w.items() if "hyena_filter" in k)
    ids = np.arange(9).reshape(1, 9) % TINY_HYENA.vocab_size
    _, cache = execute(build_trace(TINY_HYENA, Prefill(1, 8)), w, ids[:, :8])
    step, _ = execute(build_trace(TINY_HYENA, Decode(1, 9)), w, ids[:, 8:], cache)
    whole, _ = execute(build_trace(TINY_HYENA, Prefill(1, 9)), w, ids)
    np.testing.assert_allclose(step[:, -1], whole[:, -1], rtol=1e-9, atol=1e-12)
