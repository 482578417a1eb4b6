"""Systolic presets and the hierarchy features they use: levels that serve only some operands,
the device's accumulator width, whole folds per tile, and agreement with ZigZag where both tools
model the same thing."""

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch import arch_from_dict, load_arch
from xpusim.arch.spec import with_array
from xpusim.errors import SpecError
from xpusim.mappers.exhaustive import brute_force, exhaustive_search
from xpusim.mappers.search import _score, search
from xpusim.sim.compute import min_tile
from xpusim.sim.cost import bytes_fit, keep_mask
from xpusim.sim.engine import op_cost
from xpusim.sim.nest import analyse
from xpusim.sim.problem import gemm_problem, problem_from_op
from xpusim.workloads.einsum import gemm_op
from xpusim.workloads.functional.tiled import execute_tiled

ROOT = Path(__file__).resolve().parent.parent

TINY_SYSTOLIC = {
    "name": "tiny-systolic", "class": "systolic", "clock": "1 GHz", "technology_nm": 45,
    "matrix": {"instances": 1, "array": [2, 2], "dataflow": "ws", "macs_per_cycle": {"bf16": 4}},
    "vector": {"instances": 1, "flops_per_cycle": {"fp32": 8}},
    "memory": [
        {"name": "dram", "capacity": "1 MiB", "bandwidth": "2 GB/s", "latency": "10 ns", "kind": "ddr4"},
        {"name": "sram", "capacity": "160 B", "bandwidth": "16 GB/s", "multicast": True, "kind": "sram",
         "serves": ["ifmap", "ofmap"]},
    ],
}


@pytest.mark.parametrize("name", ["tpu-v4", "tpu-v5e", "edge-npu", "zigzag-tpu-like", "systolic-npu"])
def test_presets_map_a_gemm_within_physical_bounds(name):
    arch = load_arch(name)
    dtype = "int8" if name in ("edge-npu", "zigzag-tpu-like") else "bf16"
    op = gemm_op(512, 1024, 768, dtype)
    cost = op_cost(op, arch, isolated=True)
    ideal = op.macs / (arch.matrix.rate(dtype.replace("bf16", "bf16")) * arch.matrix.instances)
    assert cost.compute_cycles >= ideal  # no device beats its peak MAC rate
    assert 0 < cost.utilization <= 1
    assert cost.cycles >= cost.compute_cycles
    dram = arch.memory[0]
    assert cost.latency_s >= cost.bytes_by_level[dram.name] / dram.bandwidth_Bps * (1 - 1e-9)


def test_tpu_peak_rates_match_published_figures():
    """TPU v4 275 bf16 TFLOPS, TPU v5e 197 bf16 TFLOPS / 393 int8 TOPS (docs/devices.md)."""
    assert load_arch("tpu-v4").peak_flops("bf16") == pytest.approx(275e12, rel=0.01)
    v5e = load_arch("tpu-v5e")
    assert v5e.peak_flops("bf16") == pytest.approx(197e12, rel=0.01)
    assert v5e.peak_flops("int8") == pytest.approx(393e12, rel=0.01)


def test_level_that_does_not_serve_weights_never_holds_them():
    arch = load_arch("zigzag-tpu-like")
    prob = problem_from_op(gemm_op(256, 256, 256, "int8"), arch.matrix.accumulator_bits)
    keep = keep_mask(prob, arch)
    assert keep[0].all() and keep[1].tolist() == [True, False, True]  # sram: ifmap, ofmap; no filter
    res = search(prob, arch)
    assert not res.mapping.keep[1][1]


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.sampled_from(["latency", "energy", "edp"]))
def test_exhaustive_equals_brute_force_on_a_systolic_device_with_served_operands(m, n, k, objective):
    arch = arch_from_dict(TINY_SYSTOLIC)
    prob = gemm_problem(m, n, k)
    best, count = brute_force(prob, arch, objective)
    ex = exhaustive_search(prob, arch, objective)
    assert count > 0
    assert np.isclose(float(_score(objective, ex.costs.cycles, ex.costs.energy_pj)[0]), best, rtol=1e-9)


def test_served_operand_mapping_replays_in_the_functional_reference():
    arch = arch_from_dict(TINY_SYSTOLIC)
    prob = gemm_problem(5, 3, 4)
    res = exhaustive_search(prob, arch, "energy")
    tiles, spatial, order, keep = res.mapping.arrays()
    assert not keep[1, 1]  # the filter bypasses the sram
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    mc = np.array([lv.multicast for lv in arch.memory])
    run = execute_tiled(prob.sizes, prob.rel, prob.elem_bytes, prob.acc_bytes, [a, b], tiles, spatial, order, keep, mc,
                        forward_leaf=True)
    np.testing.assert_allclose(run.output, a @ b.T, atol=1e-12)
    tr = analyse(prob, tiles[None], spatial[None], order[None], keep, mc, forward_leaf=True)
    np.testing.assert_allclose(run.reads, tr.reads[0])
    np.testing.assert_allclose(run.writes, tr.writes[0])
    assert bytes_fit(prob, arch, run.peak_bytes[1][None], 1)[0]  # the buffers the execution held fit the sram
    assert run.peak_bytes[1][1] == 0  # and it never held the bypassed filter


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 600), st.integers(1, 600), st.integers(1, 600), st.sampled_from(["ws", "os", "is"]))
def test_every_level_holds_whole_folds(m, n, k, dataflow):
    from xpusim.cli import _override_array

    arch = _override_array(load_arch("systolic-npu"), 32, 32, dataflow)
    prob = gemm_problem(m, n, k)
    tiles = np.array(search(prob, arch).mapping.tiles)
    low = min_tile(prob, arch)
    assert (tiles[:-1] >= low[None, :]).all()


def test_accumulator_width_sets_partial_sum_bytes():
    arch = load_arch("zigzag-tpu-like")
    op = gemm_op(64, 64, 64, "int8")
    assert problem_from_op(op, arch.matrix.accumulator_bits).acc_bytes == 2
    assert problem_from_op(op).acc_bytes == 4  # int8's own accumulator is int32


@pytest.mark.parametrize("bad, msg", [
    ({"serves": ["ifmap", "bias"]}, "serves must list"),
    ({"serves": []}, "serves must list"),
])
def test_bad_serves_is_a_one_line_spec_error(bad, msg):
    d = {**TINY_SYSTOLIC, "memory": [TINY_SYSTOLIC["memory"][0], {**TINY_SYSTOLIC["memory"][1], **bad}]}
    with pytest.raises(SpecError, match=msg) as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)


def test_outermost_level_must_serve_everything():
    d = {**TINY_SYSTOLIC, "memory": [{**TINY_SYSTOLIC["memory"][0], "serves": ["ifmap"]}, TINY_SYSTOLIC["memory"][1]]}
    with pytest.raises(SpecError, match="outermost level must serve every operand"):
        arch_from_dict(d)


ZIGZAG = {(int(r["M"]), int(r["N"]), int(r["K"]), r["objective"]): r
          for r in csv.DictReader((ROOT / "validation" / "zigzag" / "tpu_like.csv").open())}


@pytest.mark.parametrize("shape, lat_tol, energy_tol", [((1, 4096, 4096), 0.01, 0.01), ((256, 256, 256), 0.05, 0.15)])
def test_agrees_with_zigzag_where_dram_bound(shape, lat_tol, energy_tol):
    """Where DRAM bandwidth bounds the GEMM both tools count the same bytes at the same energy
    per byte; elsewhere xpusim adds SCALE-Sim's fill and drain per fold, which ZigZag omits."""
    ref = ZIGZAG[(*shape, "latency")]
    cost = op_cost(gemm_op(*shape, "int8"), load_arch("zigzag-tpu-like"), "latency", isolated=True)
    assert cost.cycles == pytest.approx(float(ref["latency_cycles"]), rel=lat_tol)
    assert cost.energy_j * 1e12 == pytest.approx(float(ref["energy_pj"]), rel=energy_tol)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 700), n=st.integers(1, 700), k=st.integers(1, 700), df=st.sampled_from(["ws", "is", "os"]))
def test_preloaded_stationary_operand_saves_r_cycles_per_fold_but_the_first(m, n, k, df):
    from xpusim.sim.compute import systolic_compute_cycles, systolic_roles

    prob = gemm_problem(m, n, k)
    base = systolic_compute_cycles(prob, 128, 128, df)
    pre = systolic_compute_cycles(prob, 128, 128, df, preload=True)
    rd, cd, _ = systolic_roles(prob, df)
    folds = -(-int(prob.sizes[rd]) // 128) * -(-int(prob.sizes[cd]) // 128)
    if df == "os":  # nothing stationary to load
        assert pre == base
    else:
        assert base - pre == 128 * (folds - 1)


def test_preload_is_validated_and_only_for_arrays():
    d = {**TINY_SYSTOLIC, "matrix": {**TINY_SYSTOLIC["matrix"], "preload": "yes"}}
    with pytest.raises(SpecError, match="preload"):
        arch_from_dict(d)
    d = {**TINY_SYSTOLIC, "matrix": {"instances": 1, "macs_per_cycle": {"bf16": 4}, "preload": True}}
    with pytest.raises(SpecError, match="preload"):
        arch_from_dict(d)
    # NeuPIMs' simulator and the TPU MXUs preload; the SCALE-Sim reference array does not
    assert load_arch("neupims-npu").matrix.preload and load_arch("tpu-v4").matrix.preload
    assert not load_arch("systolic-npu").matrix.preload


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_an_operand_that_bypasses_the_buffer_is_still_forwarded_in_the_array(dataflow):
    """zigzag-tpu-like keeps the filter out of its SRAM (serves: ifmap, ofmap), so the filter comes
    straight from DRAM; the array forwards it between its PEs whatever DRAM's multicast flag. 256^3
    int8 os: A 64 KiB + C 64 KiB + a 256 x 32 filter block per fold x 64 folds = 640 KiB of DRAM."""
    from dataclasses import replace

    arch = with_array(load_arch("zigzag-tpu-like"), None, None, dataflow)
    flipped = replace(arch, memory=(replace(arch.memory[0], multicast=True), *arch.memory[1:]))
    op = gemm_op(256, 256, 256, "int8")
    base, other = op_cost(op, arch, isolated=True), op_cost(op, flipped, isolated=True)
    assert base.bytes_by_level["dram"] == other.bytes_by_level["dram"]
    assert base.latency_s == other.latency_s
    if dataflow == "os":
        assert base.bytes_by_level["dram"] == 640 * 1024


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("array"), "class systolic needs matrix.array"),
    (lambda m: m.update(accumulator_bits=3), "whole number of bytes"),
    (lambda m: m.update(accumulator_bits=12), "whole number of bytes"),
])
def test_a_systolic_device_without_an_array_or_with_a_fractional_accumulator_is_refused(change, match):
    import copy

    d = copy.deepcopy(TINY_SYSTOLIC)
    change(d["matrix"])
    with pytest.raises(SpecError, match=match):
        arch_from_dict(d)
