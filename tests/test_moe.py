"""Mixture of experts: routing-distribution counts, routed == dense expert computation, expert
GEMMs sized by the counts, and the CLI/API surface."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import SpecError, simulate
from xpusim.workloads import Decode, ModelSpec, Prefill, build_trace
from xpusim.workloads.functional import moe
from xpusim.workloads.routing import Routing, count_groups, expert_counts, parse_routing

MOE = ModelSpec(name="moe-test", n_layers=4, d_model=1024, n_heads=8, n_kv_heads=2, head_dim=128, d_ff=2816,
                vocab_size=32000, max_seq_len=4096, n_experts=16, experts_per_token=4, d_ff_expert=512,
                n_shared_experts=2, first_dense_layers=1)

routings = st.one_of(st.just(Routing()), st.floats(0.0, 3.0).map(lambda s: Routing("zipf", s)),
                     st.lists(st.floats(0.0, 10.0), min_size=8, max_size=8).filter(lambda w: sum(w) > 0)
                     .map(lambda w: Routing("file", 0.0, tuple(w))))


@settings(max_examples=200, deadline=None)
@given(routing=routings, tokens=st.integers(1, 300), top_k=st.integers(1, 8), cf=st.sampled_from([0.0, 0.5, 1.0, 1.25, 2.0]))
def test_counts_conserve_assignments_and_respect_caps(routing, tokens, top_k, cf):
    w = routing.expert_weights(8)
    if routing.kind == "file" and (w > 0).sum() < top_k:
        with pytest.raises(SpecError, match="cannot take every assignment"):
            expert_counts(routing, tokens, 8, top_k, cf)
        return
    counts, dropped = expert_counts(routing, tokens, 8, top_k, cf)
    assert counts.sum() + dropped == tokens * top_k  # every assignment placed or counted as dropped
    assert counts.max() <= tokens  # an expert takes a token at most once
    assert counts[w == 0].sum() == 0
    if cf:
        assert counts.max() <= math.ceil(cf * tokens * top_k / 8)
    else:
        assert dropped == 0
    again, _ = expert_counts(routing, tokens, 8, top_k, cf)
    assert np.array_equal(counts, again)
    groups = count_groups(counts)
    assert sum(c * n for c, n in groups) == counts.sum()


@given(tokens=st.integers(1, 500), top_k=st.integers(1, 8))
def test_balanced_is_even_and_zipf_is_hot_first(tokens, top_k):
    counts, _ = expert_counts(Routing(), tokens, 8, top_k)
    assert counts.max() - counts.min() <= 1
    z, _ = expert_counts(Routing("zipf", 1.2), tokens, 8, top_k)
    assert np.all(np.diff(z) <= 0)  # hottest expert first, never more than the one before


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 24), n_exp=st.integers(2, 9), k=st.integers(1, 4), scoring=st.sampled_from(["softmax", "sigmoid"]),
       norm=st.booleans(), cf=st.sampled_from([0.0, 0.75, 1.0, 2.0]), gated=st.booleans(), seed=st.integers(0, 99))
def test_routed_experts_equal_dense_reference(m, n_exp, k, scoring, norm, cf, gated, seed):
    k = min(k, n_exp)
    rng = np.random.default_rng(seed)
    d, f = 12, 10
    x = rng.standard_normal((m, d))
    names = ("w_gate", "w_up", "w_down") if gated else ("w_fc1", "w_fc2")
    shapes = {"w_gate": (f, d), "w_up": (f, d), "w_down": (d, f), "w_fc1": (f, d), "w_fc2": (d, f)}
    w = {n: rng.standard_normal((n_exp, *shapes[n])) / 3 for n in names}
    routed = moe.route(rng.standard_normal((m, n_exp)), k, scoring, norm, cf)
    act = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(moe.experts_grouped(x, routed, w, act, gated), moe.experts_dense(x, routed, w, act, gated),
                               rtol=1e-12, atol=1e-12)
    assert np.all((routed.index >= 0) & (routed.index < n_exp))
    assert all(len(set(row)) == k for row in routed.index)  # k distinct experts per token
    if cf:
        kept = np.bincount(routed.index[routed.kept], minlength=n_exp)
        assert kept.max() <= math.ceil(cf * m * k / n_exp)
    elif norm:
        np.testing.assert_allclose(routed.weight.sum(axis=1), 1.0)


@pytest.mark.parametrize("phase", [Decode(8, 512), Prefill(2, 300)], ids=["decode", "prefill"])
@pytest.mark.parametrize("routing", ["balanced", "zipf:1.5"])
def test_expert_gemms_sized_by_counts(phase, routing):
    trace = build_trace(MOE, phase, routing)
    blocks = {b.name: b for b in trace.blocks}
    assert blocks["layer"].repeat == 1 and blocks["moe_layer"].repeat == 3
    m = phase.batch * phase.q_len
    counts, _ = expert_counts(parse_routing(routing), m, MOE.n_experts, MOE.experts_per_token)
    gate = [op for op in blocks["moe_layer"].ops if op.name.startswith("expert_gate.")]
    assert sum(op.sizes["x"] * op.sizes["m"] for op in gate) == m * MOE.experts_per_token
    sizes = sorted((op.sizes["m"] for op in gate for _ in range(op.sizes["x"])), reverse=True)
    assert sizes == sorted(counts[counts > 0], reverse=True)
    expert_flops = sum(op.flops for op in blocks["moe_layer"].ops if "moe_group" in op.attrs and op.kind == "matmul")
    assert expert_flops == pytest.approx(2 * 3 * MOE.d_model * MOE.expert_ff * m * MOE.experts_per_token)
    shared = [op for op in blocks["moe_layer"].ops if op.name == "shared_gate_proj"]
    assert shared[0].sizes["n"] == MOE.n_shared_experts * MOE.expert_ff
    assert trace.meta["active_experts"] == int((counts > 0).sum())


def test_params_count_every_expert():
    per_expert = 3 * MOE.d_model * MOE.expert_ff
    dense_mlp = 3 * MOE.d_model * MOE.d_ff
    assert MOE.moe_layer_params - MOE.layer_params == (MOE.n_experts + MOE.n_shared_experts) * per_expert \
        + MOE.n_experts * MOE.d_model - dense_mlp


def test_skewed_routing_reads_fewer_experts_in_decode():
    """Small-batch decode is bound by reading the weights of every active expert: a skewed router
    activates fewer experts, so the step reads fewer weight bytes and runs faster."""
    bal = simulate("h100-sxm", MOE, Decode(8, 1024), routing="balanced")
    hot = simulate("h100-sxm", MOE, Decode(8, 1024), routing="zipf:3")
    assert hot.inputs["meta"]["active_experts"] < bal.inputs["meta"]["active_experts"]
    assert hot.latency_s < bal.latency_s


def test_routing_file_and_errors(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps([4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]))
    r = parse_routing(str(p))
    assert r.kind == "file" and len(r.weights) == 16
    build_trace(MOE, Decode(4, 64), str(p))
    p.write_text("1 2 3")
    with pytest.raises(SpecError, match="3 expert weights; the model has 16"):
        build_trace(MOE, Decode(4, 64), str(p))
    for bad in ("zipf:x", "zipf:-1", "nosuchfile"):
        with pytest.raises(SpecError):
            parse_routing(bad)
    with pytest.raises(SpecError, match="experts_per_token"):
        ModelSpec(name="bad", n_layers=2, d_model=8, n_heads=2, n_kv_heads=2, head_dim=4, d_ff=8, vocab_size=8,
                  max_seq_len=8, n_experts=4, experts_per_token=5)


def test_routing_file_of_counts_is_used_as_given(tmp_path):
    """A file of per-expert counts that sums to tokens x k is reproduced exactly."""
    counts = [5, 0, 3, 8, 8, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 32 assignments = 8 tokens x top-4, each <= 8
    p = tmp_path / "counts.txt"
    p.write_text("\n".join(map(str, counts)))
    got, dropped = expert_counts(parse_routing(str(p)), 8, 16, 4)
    assert got.tolist() == counts and dropped == 0
