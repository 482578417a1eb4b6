"""Wafer-scale class (issue 10): the wafer: section, MeshGEMM / MeshGEMV / naive costs, functional references."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import simulate
from xpusim.arch import arch_from_dict, load_arch
from xpusim.arch.loader import PRESETS_DIR
from xpusim.arch.wafer import wafer_spec
from xpusim.errors import CapacityError, SpecError
from xpusim.mappers.wafer import (
    ALGORITHMS,
    core_bytes,
    evaluate,
    interleave_hops,
    interleave_order,
    parallelism,
    wafer_matmul_cost,
)
from xpusim.sim.engine import clear_cache, op_cost
from xpusim.workloads.einsum import Op, Tensor, gemm_op
from xpusim.workloads.functional.wafer import cannon_matmul, mesh_gemv, tree_stages
from xpusim.workloads.phases import Decode

RAW = {n: yaml.safe_load((PRESETS_DIR / f"{n}.yaml").read_text()) for n in ("wse-2", "wse-3")}
FAST = settings(max_examples=30, deadline=None)
#: published totals (docs/devices.md, section Wafer-scale): cores, SRAM bytes, SRAM B/s, fabric b/s, peak FLOP/s
PUBLISHED = {"wse-2": (850_000, 40e9, 20e15, 220e15, 125e15 / 2), "wse-3": (900_000, 44e9, 21e15, 214e15, 125e15)}


def variant(name="wse-3", mesh=None, **wafer):
    """A preset with wafer: fields replaced (matrix, vector and SRAM instances resized to the mesh)."""
    d = copy.deepcopy(RAW[name])
    if mesh is not None:
        d["wafer"]["mesh"] = list(mesh)
    for k, v in wafer.items():
        if k == "core_sram":
            d["wafer"].pop("sram_total", None)
        d["wafer"][k] = v
    n = d["wafer"]["mesh"][0] * d["wafer"]["mesh"][1]
    d["matrix"]["instances"] = d["vector"]["instances"] = d["memory"][0]["instances"] = n
    return arch_from_dict(d)


def batched(g, m, n, k, dtype="bf16"):
    dims = (("g", g), ("m", m), ("n", n), ("k", k))
    return Op("bgemm", "matmul", dims, (Tensor("x", ("g", "m", "k"), dtype), Tensor("w", ("g", "n", "k"), dtype, "weight")),
              Tensor("y", ("g", "m", "n"), dtype))


# --- presets and the wafer: section -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wse-2", "wse-3"])
def test_presets_derive_per_core_figures_from_published_totals(name):
    cores, sram, sram_bw, fabric, peak = PUBLISHED[name]
    a = load_arch(name)
    s = wafer_spec(a)
    assert s.cores == cores and s.mesh_cores == math.isqrt(cores) ** 2 == a.matrix.instances
    assert s.core_sram_bytes == math.floor(sram / cores) == a.backing.capacity_bytes
    assert s.link_bytes_per_cycle * s.links_per_core * cores * a.clock_hz * 8 == pytest.approx(fabric)
    assert a.backing.bandwidth_Bps * cores == pytest.approx(sram_bw, rel=1e-3)
    # peak of the mesh = published peak x (mesh cores / published cores), to the rounding of the YAML rate
    assert a.peak_flops("bf16") == pytest.approx(peak * s.mesh_cores / cores, rel=1e-4)
    assert s.io_bandwidth_Bps == pytest.approx(1.2e12 / 8)


@pytest.mark.parametrize("bad, msg", [
    ({"mesh": [1000, 1000]}, "exceeds cores"),
    ({"mesh": [10]}, "mesh"),
    ({"hop_latency": -1}, "hop_latency"),
    ({"routes_per_core": 0}, "routes_per_core"),
    ({"core_sram": "48 KiB"}, "exactly one"),
    ({"bogus": 1}, "unknown field"),
])
def test_bad_wafer_sections_are_one_line_spec_errors(bad, msg):
    d = copy.deepcopy(RAW["wse-3"])
    d["wafer"].update(bad)
    with pytest.raises(SpecError, match=msg) as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)


def test_class_and_section_go_together_and_instances_match_mesh():
    d = copy.deepcopy(RAW["wse-3"])
    d["class"] = "generic"
    with pytest.raises(SpecError, match="go together"):
        arch_from_dict(d)
    d = copy.deepcopy(RAW["wse-3"])
    d["matrix"]["instances"] = 7
    with pytest.raises(SpecError, match="matrix.instances"):
        arch_from_dict(d)


# --- functional references ------------------------------------------------------------------------------


@FAST
@given(m=st.integers(1, 12), k=st.integers(1, 12), n=st.integers(1, 12), p=st.integers(1, 8), seed=st.integers(0, 99))
def test_cannon_meshgemm_equals_matmul(m, k, n, p, seed):
    r = np.random.default_rng(seed)
    a, b = r.standard_normal((m, k)), r.standard_normal((k, n))
    np.testing.assert_allclose(cannon_matmul(a, b, p), a @ b, atol=1e-10)


@FAST
@given(n=st.integers(1, 20), k=st.integers(1, 20), m=st.integers(1, 3), p=st.integers(1, 8), seed=st.integers(0, 99))
def test_meshgemv_tree_reduction_equals_matvec(n, k, m, p, seed):
    r = np.random.default_rng(seed)
    w, x = r.standard_normal((n, k)), r.standard_normal((k, m))
    np.testing.assert_allclose(mesh_gemv(w, x, p), w @ x, atol=1e-10)
    np.testing.assert_allclose(mesh_gemv(w, x[:, 0], p), w @ x[:, 0], atol=1e-10)
    assert tree_stages(p) == (math.ceil(math.log2(p)) if p > 1 else 0)


@pytest.mark.parametrize("p", range(1, 40))
def test_interleaved_placement_bounds_every_shift_to_two_hops(p):
    pos = interleave_order(p)
    assert sorted(pos.tolist()) == list(range(p))  # a permutation of the physical positions
    assert interleave_hops(p) == min(p - 1, 2)


# --- PLMR terms --------------------------------------------------------------------------------------


def test_parallelism_term_splits_groups_into_squares_and_waves():
    a = variant(mesh=(8, 8))
    par = parallelism(evaluate(batched(1, 4, 64, 64), a)["gemv"], 8, 8)
    assert (par["p"], par["concurrent"], par["waves"]) == (8, 1, 1)
    par = parallelism(evaluate(batched(4, 4, 64, 64), a)["gemv"], 8, 8)
    assert (par["p"], par["concurrent"], par["waves"], par["cores_used"]) == (4, 4, 1, 64)
    par = parallelism(evaluate(batched(100, 4, 64, 64), a)["gemv"], 8, 8)
    assert (par["p"], par["concurrent"], par["waves"]) == (1, 64, 2)


def test_latency_term_is_hops_times_hop_latency():
    op = gemm_op(256, 256, 256)
    e1 = evaluate(op, variant(mesh=(16, 16), hop_latency=1))
    e5 = evaluate(op, variant(mesh=(16, 16), hop_latency=5))
    p = e1["parallelism"]["p"]
    d = {a: e5["times"][a]["comm"] - e1["times"][a]["comm"] for a in ALGORITHMS}
    assert d["meshgemm"] == pytest.approx(4 * (p + p * interleave_hops(p)))  # skew p hops + p shifts of 2 hops
    assert d["meshgemv"] == pytest.approx(4 * 2 * (p - 1))  # column broadcast + row reduction distance
    assert d["naive"] == pytest.approx(4 * (p * p - 1) * 2 * (p - 1))  # every ring step waits for the wrap link


def test_memory_term_capacity_error_exactly_at_the_boundary():
    op = gemm_op(64, 64, 64)
    need = core_bytes(evaluate(op, variant(mesh=(4, 4)))["gemv"], evaluate(op, variant(mesh=(4, 4)))["parallelism"])
    b = int(need["meshgemm"])
    assert b == need["meshgemm"]
    fits = wafer_matmul_cost(op, variant(mesh=(4, 4), core_sram=b), algorithm="meshgemm")
    assert fits.detail["core_bytes"]["meshgemm"] == b == fits.detail["core_sram_bytes"]
    with pytest.raises(CapacityError, match="per core") as e:
        wafer_matmul_cost(op, variant(mesh=(4, 4), core_sram=b - 1), algorithm="meshgemm")
    assert "\n" not in str(e.value) and "larger region" in str(e.value)
    smallest = min(need.values())
    wafer_matmul_cost(op, variant(mesh=(4, 4), core_sram=int(smallest)))  # the best that fits is chosen
    with pytest.raises(CapacityError):
        wafer_matmul_cost(op, variant(mesh=(4, 4), core_sram=int(smallest) - 1))


def test_routing_term_limits_algorithms():
    op = gemm_op(16, 512, 512)
    free = wafer_matmul_cost(op, variant(mesh=(16, 16)))
    r = free.detail["routes"]
    assert r["meshgemm"] == 4 and r["naive"] == 2 and r["meshgemv"] == 1 + 4
    two = wafer_matmul_cost(op, variant(mesh=(16, 16), routes_per_core=2))
    assert two.mapping["algorithm"] == "naive"  # the only mapping within 2 routes
    with pytest.raises(CapacityError, match="routes per core"):
        wafer_matmul_cost(op, variant(mesh=(16, 16), routes_per_core=2), algorithm="meshgemm")
    with pytest.raises(CapacityError, match="routes"):
        wafer_matmul_cost(op, variant(mesh=(16, 16), routes_per_core=1))


def test_region_is_validated():
    with pytest.raises(SpecError, match="region"):
        wafer_matmul_cost(gemm_op(8, 8, 8), variant(mesh=(4, 4)), region=(5, 4))


# --- behaviour ---------------------------------------------------------------------------------------


def test_meshgemm_beats_naive_more_on_larger_meshes(capsys):
    a = load_arch("wse-3")
    op = gemm_op(4096, 4096, 4096)
    ratios = []
    for side in (16, 64, 256, 948):
        ev = evaluate(op, a, region=(side, side))
        t = {k: ev["times"][k]["total"] for k in ALGORITHMS}
        ratio = t["naive"] / t["meshgemm"]
        ratios.append(ratio)
        with capsys.disabled():
            print(f"\nwse-3 GEMM 4096^3 on {side}x{side}: meshgemm {t['meshgemm']:.3g} cycles "
                  f"(fits SRAM: {ev['fits']['meshgemm']}), naive {t['naive']:.3g} cycles "
                  f"(fits: {ev['fits']['naive']}), naive/meshgemm = {ratio:.3g}")
    assert all(r > 1 for r in ratios)
    assert ratios == sorted(ratios)
    c = wafer_matmul_cost(op, a)  # the whole wafer holds it; MeshGEMM is chosen
    assert c.mapping["algorithm"] == "meshgemm" and c.detail["naive_cycles"] > c.cycles


@FAST
@given(m=st.integers(1, 2048), n=st.integers(1, 8192), k=st.integers(1, 8192), dm=st.integers(0, 512),
       dn=st.integers(0, 512), dk=st.integers(0, 512))
def test_cost_is_monotone_in_sizes(m, n, k, dm, dn, dk):
    a = load_arch("wse-3")
    small = wafer_matmul_cost(gemm_op(m, n, k), a)
    big = wafer_matmul_cost(gemm_op(m + dm, n + dn, k + dk), a)
    assert big.cycles >= small.cycles * (1 - 1e-12)


def test_engine_sends_contractions_to_the_wafer_mapper():
    a = load_arch("wse-2")
    c = op_cost(gemm_op(1, 4096, 4096), a)
    assert c.mapping["algorithm"] in ("meshgemm", "meshgemv") and c.detail["region"] == (921, 921)
    assert c.mapping["algorithm"] == "meshgemv"  # a GEMV: the tree reduction beats p Cannon steps


def test_llama3_8b_decode_on_wse3_is_fast_and_fits_sram(capsys):
    clear_cache()
    t = time.perf_counter()
    r = simulate("wse-3", "llama-3-8b", Decode(1, 2048), check_memory=True)
    wall = time.perf_counter() - t
    with capsys.disabled():
        print(f"\nllama-3-8b decode(1, 2048) on wse-3: {r.latency_s * 1e3:.3f} ms/token, weights "
              f"{r.weights_bytes / 1e9:.2f} GB, footprint {r.memory_bytes / 1e9:.2f} GB of "
              f"{r.capacity_bytes / 1e9:.2f} GB SRAM, wall {wall:.3f} s")
    assert wall < 0.2
    assert 15e9 < r.weights_bytes < 17e9 and r.memory_bytes <= r.capacity_bytes
    assert r.latency_s > 0
