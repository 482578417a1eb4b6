"""The mapper's fast paths give what the slow ones give: row deduplication by a mixed-radix key
equals ``np.unique(axis=0)``; chunk counts taken as products of trip counts equal exact
propagation wherever :func:`_products_exact` allows them; and a search that keeps its last beam's
costs (no padded counts among them) reports the exact cost of the mapping it returns."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from xpusim.arch import arch_from_dict, load_arch
from xpusim.mappers.search import replay_costs, search
from xpusim.sim.nest import _chunk_table_exact, _chunk_tables, _products_exact, unique_rows
from xpusim.sim.problem import gemm_problem, problem_from_op
from xpusim.workloads import Decode, build_trace, load_model


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=st.integers(0, 9)))
def test_unique_rows_equals_numpy(a):
    ref, ref_idx, ref_inv = np.unique(a, axis=0, return_index=True, return_inverse=True)
    out, idx, inv = unique_rows(a, return_index=True, return_inverse=True)
    assert np.array_equal(out, ref) and np.array_equal(idx, ref_idx)
    assert np.array_equal(inv.reshape(-1), ref_inv.reshape(-1))
    assert np.array_equal(unique_rows(a), ref)


def test_unique_rows_falls_back_for_floats_and_negatives():
    for a in (np.array([[0.5, 0.2], [0.2, 0.5], [0.5, 0.2]]), np.array([[0, -1], [-1, 5], [0, -1]])):
        assert np.array_equal(unique_rows(a), np.unique(a, axis=0))


def test_unique_rows_falls_back_when_the_key_would_overflow():
    a = np.array([[2**40, 3, 2**30], [1, 2**40, 5], [2**40, 3, 2**30]], dtype=np.int64)
    out, inv = unique_rows(a, return_inverse=True)
    assert np.array_equal(out, np.unique(a, axis=0)) and np.array_equal(out[inv.reshape(-1)], a)


@st.composite
def chains(draw):
    depth = draw(st.integers(1, 3))
    tiles = [draw(st.integers(1, 200))]
    for _ in range(depth):
        tiles.append(draw(st.integers(1, tiles[-1])))
    spatial = [draw(st.integers(1, 8)) for _ in range(depth)]
    return np.array(tiles, dtype=np.int64), np.array(spatial, dtype=np.int64)


@settings(max_examples=300, deadline=None)
@given(st.lists(chains(), min_size=1, max_size=6), st.integers(-1, 3))
def test_chunk_tables_equal_exact_propagation(rows, excl):
    depth = min(len(t) - 1 for t, _ in rows)
    tiles = np.stack([t[: depth + 1] for t, _ in rows])[:, :, None]
    tiles[:, 0, 0] = tiles[0, 0, 0]  # one dimension size for all candidates
    tiles = np.minimum.accumulate(tiles, axis=1)
    spatial = np.stack([s[:depth] for _, s in rows])[:, :, None]
    excl_from = None if excl < 0 or excl > depth else excl
    exact = _chunk_table_exact(int(tiles[0, 0, 0]), tiles[:, :, 0], spatial[:, :, 0], depth, excl_from)
    assert np.array_equal(_chunk_tables(tiles[0, 0], tiles, spatial, depth, excl_from)[..., 0], exact)
    fast = _products_exact(tiles, spatial * tiles[:, 1:])[:, 0]
    padded = _chunk_tables(tiles[0, 0], tiles, spatial, depth, excl_from, exact=False)[..., 0]
    assert np.array_equal(padded[fast], exact[fast])
    assert (padded >= exact).all()  # padded counts are an upper bound


def test_products_exact_refuses_a_partial_last_chunk():
    tiles = np.array([[[12], [4]]])  # 12 elements in tiles of 4 over 2 instances: chunks of 8, the last one half
    spatial = np.array([[[2]]])
    assert not _products_exact(tiles, spatial * tiles[:, 1:])[0, 0]
    exact = _chunk_table_exact(12, tiles[:, :, 0], spatial[:, :, 0], 1, None)
    padded = _chunk_tables(np.array([12]), tiles, spatial, 1, None, exact=False)[..., 0]
    assert exact[0, 1, 1] == 3 and padded[0, 1, 1] == 4  # three tiles, four (chunk, instance) pairs


GENERIC = {
    "name": "three-level", "class": "generic", "clock": "1 GHz",
    "matrix": {"instances": 16, "macs_per_cycle": {"bf16": 8, "int8": 16}},
    "vector": {"instances": 1, "flops_per_cycle": {"fp32": 8}},
    "memory": [
        {"name": "dram", "capacity": "1 GiB", "bandwidth": "100 GB/s"},
        {"name": "sram", "capacity": "256 KiB", "bandwidth": "400 GB/s", "instances": 4, "multicast": True},
        {"name": "regs", "capacity": "2 KiB", "bandwidth": "1600 GB/s", "instances": 16},
    ],
}


def _ops(dtype: str):
    ops = [gemm_problem(m, n, k, dtype) for m, n, k in [(64, 64, 64), (150, 300, 77), (1, 4096, 4096), (256, 96, 1000)]]
    if dtype == "bf16":
        trace = build_trace(load_model("llama-3-8b"), Decode(batch=3, context=700))
        ops += [problem_from_op(op) for _, op in trace.ops() if op.kind == "matmul" and len(op.inputs) == 2][:6]
    return ops


@pytest.mark.parametrize("preset", ["systolic-npu", "edge-npu", "tpu-v4", "zigzag-tpu-like", "three-level"])
@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_search_reports_the_exact_cost_of_its_mapping(preset, objective):
    arch = arch_from_dict(GENERIC) if preset == "three-level" else load_arch(preset)
    dtype = "bf16" if "bf16" in arch.matrix.rate_per_cycle else "int8"
    for prob in _ops(dtype):
        res = search(prob, arch, objective)
        replay = replay_costs(prob, arch, res.mapping)
        for field in ("cycles", "energy_pj", "compute", "reads", "writes", "level_cycles"):
            assert np.array_equal(getattr(res.costs, field), getattr(replay, field)), (preset, prob.name, field)
