"""The exact mapper returns the brute-force optimum of the whole mapspace, and its mapping replays
in the functional reference with the traffic the cost model counts."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch import arch_from_dict
from xpusim.mappers.exhaustive import brute_force, exhaustive_search, sampled_search
from xpusim.mappers.search import _score, search
from xpusim.sim.nest import analyse
from xpusim.sim.problem import gemm_problem
from xpusim.workloads.functional.tiled import execute_tiled

TINY = {
    "name": "tiny", "class": "generic", "clock": "1 GHz", "technology_nm": 45,
    "matrix": {"instances": 2, "macs_per_cycle": {"bf16": 2}},
    "vector": {"instances": 1, "flops_per_cycle": {"fp32": 8}},
    "memory": [
        {"name": "dram", "capacity": "1 MiB", "bandwidth": "4 GB/s", "latency": "10 ns", "kind": "ddr4"},
        {"name": "sram", "capacity": "96 B", "bandwidth": "16 GB/s", "instances": 2, "multicast": True, "kind": "sram"},
    ],
}


def _score1(obj, res):
    return float(_score(obj, res.costs.cycles, res.costs.energy_pj)[0])


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.sampled_from(["latency", "energy", "edp"]),
       st.booleans(), st.booleans())
def test_exhaustive_equals_brute_force(m, n, k, objective, divisors_only, bypass):
    arch = arch_from_dict(TINY)
    prob = gemm_problem(m, n, k)
    best, n_mappings = brute_force(prob, arch, objective, divisors_only, bypass)
    ex = exhaustive_search(prob, arch, objective, divisors_only, bypass)
    assert n_mappings > 0
    assert np.isclose(_score1(objective, ex), best, rtol=1e-9)
    if not divisors_only:  # the default mapper searches a superset of the divisor-only space
        assert _score1(objective, ex) <= _score1(objective, search(prob, arch, objective)) * (1 + 1e-9)


def test_exhaustive_mapping_replays_exactly():
    arch = arch_from_dict(TINY)
    prob = gemm_problem(5, 3, 4)
    res = exhaustive_search(prob, arch, "latency", bypass=True)
    tiles, spatial, order, keep = res.mapping.arrays()
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    mc = np.array([lv.multicast for lv in arch.memory])
    run = execute_tiled(prob.sizes, prob.rel, prob.elem_bytes, prob.acc_bytes, [a, b], tiles, spatial, order, keep, mc)
    np.testing.assert_allclose(run.output, a @ b.T, atol=1e-12)
    tr = analyse(prob, tiles[None], spatial[None], order[None], keep, mc)
    np.testing.assert_allclose(run.reads, tr.reads[0])
    np.testing.assert_allclose(run.writes, tr.writes[0])


def test_sampled_search_never_worse_than_default():
    arch = arch_from_dict(TINY)
    prob = gemm_problem(12, 10, 9)
    res = sampled_search(prob, arch, "latency", budget_s=0.2, seed=3)
    assert _score1("latency", res) <= _score1("latency", search(prob, arch, "latency"))
