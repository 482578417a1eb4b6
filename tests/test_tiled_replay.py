"""Tiled execution of random mappings equals the reference, and the bytes it moves at every level
equal the analytical loop-nest model's counts (non-divisible tiles, spatial splits, bypass and
multicast included)."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpusim.sim.cost import footprint
from xpusim.sim.nest import analyse, busiest_lane_steps
from xpusim.sim.problem import gemm_problem, problem_from_op
from xpusim.workloads.einsum import Op, Tensor
from xpusim.workloads.functional.tiled import execute_tiled


@st.composite
def mapped_gemms(draw):
    m, n, k = (draw(st.integers(1, 9)) for _ in range(3))
    prob = gemm_problem(m, n, k, draw(st.sampled_from(["bf16", "fp32", "int8"])))
    L = draw(st.integers(1, 3))
    tiles = [prob.sizes.copy()]
    spatial = []
    for lv in range(L):
        parent = tiles[-1]
        leaf = lv == L - 1 and draw(st.booleans())
        child = np.ones(3, int) if leaf else np.array([draw(st.integers(1, int(p))) for p in parent])
        tiles.append(child)
        spatial.append(np.array([draw(st.integers(1, 3)) for _ in range(3)]))
    order = np.array([draw(st.permutations(range(3))) for _ in range(L)])
    keep = np.ones((L, 3), bool)
    for lv in range(1, L):
        for t in range(3):
            keep[lv, t] = draw(st.booleans())
    multicast = np.array([draw(st.booleans()) for _ in range(L)])
    return prob, np.array(tiles), np.array(spatial), order, keep, multicast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapped_gemms(), st.integers(0, 2**31 - 1), st.booleans())
def test_tiled_gemm_equals_reference_and_counts(case, seed, forward):
    """``forward``: the leaf's split is a systolic array (its PEs share their source's reads)."""
    prob, tiles, spatial, order, keep, multicast = case
    rng = np.random.default_rng(seed)
    m, n, k = (int(x) for x in prob.sizes)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((n, k))  # canonical layout: dims in (m, n, k) order -> B is (n, k)
    run = execute_tiled(prob.sizes, prob.rel, prob.elem_bytes, prob.acc_bytes, [a, b], tiles, spatial, order, keep,
                        multicast, forward_leaf=forward)
    np.testing.assert_allclose(run.output, np.einsum("mk,nk->mn", a, b), rtol=1e-10, atol=1e-10)
    assert run.macs == m * n * k
    tr = analyse(prob, tiles[None], spatial[None], order[None], keep, multicast, forward_leaf=forward)
    np.testing.assert_allclose(run.reads, tr.reads[0])
    np.testing.assert_allclose(run.writes, tr.writes[0])
    # the capacity model's footprint is what the executed buffers held at their fullest
    for lv in range(1, len(spatial)):
        np.testing.assert_allclose(run.peak_bytes[lv], footprint(prob, tiles[None], keep, lv)[0])
    # the busiest lane's leaf steps: exact, and the padded count never below them
    assert busiest_lane_steps(tiles[None], spatial[None])[0] == run.leaf_visits
    assert tr.steps[0] >= run.leaf_visits


def test_batched_attention_scores_replay():
    """A GQA score op (batch, r and q merged by relevance) replays exactly too."""
    op = Op("scores", "matmul", (("b", 2), ("h", 2), ("r", 2), ("q", 3), ("s", 5), ("e", 4)),
            (Tensor("q", ("b", "q", "h", "r", "e"), "bf16"), Tensor("k", ("b", "s", "h", "e"), "bf16", "kv")),
            Tensor("p", ("b", "h", "r", "q", "s"), "bf16"))
    prob = problem_from_op(op)
    assert prob.dims == ("bh", "rq", "s", "e")
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 3, 2, 2, 4))
    kk = rng.standard_normal((2, 5, 2, 4))
    ref = np.einsum("bqhre,bshe->bhrqs", q, kk)
    # canonical layouts: q -> (bh, rq, e), k -> (bh, s, e)
    qc = q.transpose(0, 2, 3, 1, 4).reshape(4, 6, 4)
    kc = kk.transpose(0, 2, 1, 3).reshape(4, 5, 4)
    tiles = np.array([[4, 6, 5, 4], [2, 4, 3, 2], [1, 1, 1, 1]])
    spatial = np.array([[2, 1, 1, 1], [1, 2, 3, 2]])
    order = np.array([[0, 1, 2, 3], [0, 3, 1, 2]])
    keep = np.ones((2, 3), bool)
    mc = np.array([False, True])
    run = execute_tiled(prob.sizes, prob.rel, prob.elem_bytes, prob.acc_bytes, [qc, kc], tiles, spatial, order, keep, mc)
    np.testing.assert_allclose(run.output.reshape(2, 2, 2, 3, 5), ref, atol=1e-12)
    tr = analyse(prob, tiles[None], spatial[None], order[None], keep, mc)
    np.testing.assert_allclose(run.reads, tr.reads[0])
    np.testing.assert_allclose(run.writes, tr.writes[0])


def test_output_stationary_moves_compulsory_traffic_only():
    """With the reduction loop innermost and tiles covering the tensors, DRAM traffic is compulsory."""
    prob = gemm_problem(8, 8, 8, "bf16")
    tiles = np.array([[[8, 8, 8], [8, 8, 8], [1, 1, 1]]])
    spatial = np.array([[[1, 1, 1], [4, 4, 1]]])
    order = np.array([[[0, 1, 2], [0, 1, 2]]])
    tr = analyse(prob, tiles, spatial, order, np.ones((2, 3), bool), np.array([False, True]))
    assert tr.reads[0, 0] == 2 * 64 * 2  # A and B once, bf16
    assert tr.writes[0, 0] == 64 * 2  # C once, bf16
