"""Systolic arrays: the folds a mapping executes, packed MACs per PE, and the nest's time terms.

Each test names the behaviour it pins; they fail on a cost model that charges the closed-form folds
for tiles that split folds, ignores a dtype's MACs per PE, re-counts the first tile of a memory-bound
op, lets a single-buffered level overlap compute, or deals folds to arrays a mapping does not use.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch.loader import arch_dict, arch_from_dict, load_arch
from xpusim.arch.spec import with_array
from xpusim.cli import _override_array
from xpusim.errors import SpecError
from xpusim.sim.compute import executed_folds
from xpusim.sim.cost import evaluate, keep_mask
from xpusim.sim.engine import matmul_cost, op_cost
from xpusim.sim.problem import gemm_problem
from xpusim.workloads.einsum import gemm_op


def _pieces(size: int, tiles: list[int]) -> list[int]:
    """Innermost pieces of a dim cut level by level (reference by enumeration)."""
    pieces = [size]
    for t in tiles:
        pieces = [p for x in pieces for p in [t] * (x // t) + ([x % t] if x % t else [])]
    return pieces


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.lists(st.integers(1, 700), min_size=0, max_size=3), st.integers(1, 160))
def test_executed_folds_count_every_piece_the_tiles_leave(size, tiles, extent):
    tiles = sorted((min(t, size) for t in tiles), reverse=True)
    got = executed_folds(size, np.array([tiles], dtype=np.int64).reshape(1, len(tiles)), extent)[0]
    assert got == sum(-(-p // extent) for p in _pieces(size, tiles))
    if all(t % extent == 0 or t == size for t in tiles):
        assert got == -(-size // extent)  # tiles of whole folds split none


def _chunks(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def enumerated_compute(prob, arch, mapping) -> int:
    """Reference by enumeration: walk the mapping's loop nest level by level (temporal chunks in its
    loop order, each split over the child instances), and list for every innermost-level instance the
    array passes it runs, in order: (the row chunk, column chunk and batch point it holds stationary,
    the stream length it covers). Consecutive passes on one stationary block are one fold execution,
    costing SCALE-Sim's fold cycles for its stream; an instance's executions go greedily to its
    arrays. Returns the busiest array's cycles."""
    from xpusim.dtypes import get_dtype
    from xpusim.sim.compute import array_extents, systolic_fold_cycles, systolic_roles

    tiles, spatial, order, _ = mapping.arrays()
    L, D = spatial.shape[0], prob.n_dims
    rd, cd, sd = systolic_roles(prob, mapping.dataflow)
    ext_r, ext_c = array_extents(arch, get_dtype(prob.compute_dtype).compute)
    passes: dict[tuple, list] = {}

    def walk(level: int, box: list, inst: tuple) -> None:
        dims = list(np.argsort(order[level], kind="stable"))
        if level == L - 1:  # the innermost storage level: row and column chunks, the stream innermost
            step = [ext_r if d == rd else ext_c if d == cd else (box[d][1] - box[d][0]) if d == sd else 1 for d in range(D)]
            for combo in itertools.product(*[_chunks(box[d][0], box[d][1], step[d]) for d in dims]):
                at = dict(zip(dims, combo, strict=True))
                passes.setdefault(inst, []).append((tuple(at[d][0] for d in range(D) if d != sd), at[sd][1] - at[sd][0]))
            return
        step = spatial[level] * tiles[level + 1]
        for combo in itertools.product(*[_chunks(box[d][0], box[d][1], int(step[d])) for d in dims]):
            at = dict(zip(dims, combo, strict=True))
            split = [_chunks(at[d][0], at[d][1], int(tiles[level + 1][d])) for d in range(D)]
            for i, sub in enumerate(itertools.product(*split)):
                walk(level + 1, list(sub), (*inst, i))

    walk(0, [(0, int(x)) for x in prob.sizes], ())
    rows, cols = arch.matrix.array
    per_inst = arch.matrix.instances // arch.memory[-1].instances
    worst = 0
    for seq in passes.values():
        runs: list[list] = []
        for key, t in seq:
            if runs and runs[-1][0] == key:
                runs[-1][1] += t
            else:
                runs.append([key, t])
        loads = [0] * per_inst
        for _, t in runs:
            loads[loads.index(min(loads))] += systolic_fold_cycles(rows, cols, t, mapping.dataflow, arch.matrix.preload)
        worst = max(worst, max(loads))
    first = rows if arch.matrix.preload and mapping.dataflow in ("ws", "is") else 0
    return worst + first - 1


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["systolic-npu", "edge-npu", "tpu-v4"]), st.sampled_from(["ws", "os", "is"]),
       st.integers(1, 700), st.integers(1, 700), st.integers(1, 700))
def test_the_default_mapper_charges_the_fold_executions_its_schedule_runs(name, dataflow, m, n, k):
    """Compute cycles are those of the passes the chosen mapping's loop nest really runs (enumerated),
    re-entries of a fold's stationary block included when a level cuts the streamed dimension: exact
    with one array per buffer instance; with several (tpu-v4's four MXUs per VMEM) the executions are
    dealt by share and longest pass, within 3 % of dealing unequal remainder passes one by one in order."""
    from xpusim.mappers.search import search

    arch = _override_array(load_arch(name), None, None, dataflow)
    dt = "int8" if name == "edge-npu" else "bf16"
    prob = gemm_problem(m, n, k, dt)
    res = search(prob, arch)
    exact = arch.matrix.instances == arch.memory[-1].instances
    assert res.costs.compute[0] == pytest.approx(enumerated_compute(prob, arch, res.mapping), rel=0 if exact else 0.03)


def test_cutting_the_stream_above_the_array_reenters_every_fold():
    """64 x 300 x 300 on systolic-npu (ws): a gbuf tile of 32 of the 64 streamed rows, m outermost in
    DRAM, runs each of the 9 folds twice, 32 rows each: 18 x (32 + 2 x 128 + 128 - 2) - 1 cycles."""
    arch = load_arch("systolic-npu")
    prob = gemm_problem(64, 300, 300)
    assert _replay(arch, prob, [32, 128, 128]).compute[0] == 18 * (32 + 2 * 128 + 128 - 2) - 1
    assert _replay(arch, prob, [64, 128, 128]).compute[0] == 9 * (64 + 2 * 128 + 128 - 2) - 1


def _replay(arch, prob, gbuf_tile):
    """Cost of one hand-written two-level ws mapping (whole problem in DRAM, ``gbuf_tile`` on chip)."""
    tiles = np.array([[prob.sizes, gbuf_tile, [1, 1, 1]]], dtype=np.int64)
    spatial = np.ones((1, 2, 3), dtype=np.int64)
    spatial[0, 1, 1], spatial[0, 1, 2] = arch.matrix.array[1], arch.matrix.array[0]  # n on columns, k on rows
    order = np.array([[[0, 1, 2], [1, 2, 0]]], dtype=np.int64)
    return evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch))


def test_tiles_that_split_folds_are_charged_the_folds_they_run():
    """64 x 300 x 300 on a 128 x 128 ws array: k tiles of 150 take two folds each (128 + 22), so
    the schedule runs 2 x 2 x 3 = 12 folds, not the closed form's 3 x 3 = 9."""
    arch = load_arch("systolic-npu")
    prob = gemm_problem(64, 300, 300)
    fold = 64 + 2 * 128 + 128 - 2  # T + 2R + C - 2 (ws)
    assert _replay(arch, prob, [64, 128, 128]).compute[0] == 9 * fold - 1
    assert _replay(arch, prob, [64, 128, 150]).compute[0] == 12 * fold - 1


def _without_preload(name):
    d, _ = arch_dict(name)
    d["matrix"].pop("preload", None)
    return arch_from_dict(d, f"{name}-no-preload")


def test_tpu_presets_hide_the_weight_shift_in_behind_the_previous_fold():
    """TPU MXUs double-buffer their weight tile (Jouppi et al., ISCA 2017): a decode GEMM pays the
    R-cycle weight load once, not per fold."""
    op = gemm_op(8, 4096, 4096)
    with_preload = op_cost(op, load_arch("tpu-v4"), isolated=True).compute_cycles
    without = op_cost(op, _without_preload("tpu-v4"), isolated=True).compute_cycles
    rows = load_arch("tpu-v4").matrix.array[0]
    per_array = -(-(32 * 32) // 8)  # 4096/128 x 4096/128 folds over 8 MXUs
    assert without - with_preload == (per_array - 1) * rows


def test_int8_packing_halves_the_folds_on_tpu_v5e():
    """tpu-v5e retires two int8 MACs per PE per cycle (393 TOPS vs 197 bf16 TFLOPS): an int8 GEMM
    runs half the column folds of the bf16 one."""
    arch = _without_preload("tpu-v5e")  # fold cycles alike, so the cycle counts show the fold counts
    bf16 = op_cost(gemm_op(1024, 2048, 1024, "bf16"), arch, isolated=True).compute_cycles
    int8 = op_cost(gemm_op(1024, 2048, 1024, "int8"), arch, isolated=True).compute_cycles
    assert (bf16 + 1) == 2 * (int8 + 1)


def test_a_mac_rate_that_is_not_whole_macs_per_pe_is_refused():
    d, _ = arch_dict("systolic-npu")
    d["matrix"]["macs_per_cycle"] = {"bf16": 1024}
    with pytest.raises(SpecError, match="whole multiple"):
        arch_from_dict(d, "badrate")


@pytest.mark.parametrize("shape", [(100, 300, 700), (512, 512, 512), (64, 4096, 128)])
def test_a_larger_array_with_the_same_buffers_is_never_slower(shape):
    arch = load_arch("edge-npu")
    prev = math.inf
    for side in (64, 128, 256):
        cyc = op_cost(gemm_op(*shape, "int8"), _override_array(arch, side, side, None), isolated=True).cycles
        assert cyc <= prev * 1.001
        prev = cyc


@settings(max_examples=15, deadline=None)
@given(st.integers(8, 2048), st.integers(8, 2048), st.integers(8, 2048))
def test_a_single_buffered_level_is_never_faster(m, n, k):
    a0 = load_arch("systolic-npu")
    mem = list(a0.memory)
    mem[-1] = replace(mem[-1], double_buffer=False)
    single = replace(a0, memory=tuple(mem), name="single")
    c2 = op_cost(gemm_op(m, n, k), a0, isolated=True)
    c1 = op_cost(gemm_op(m, n, k), single, isolated=True)
    assert c1.cycles >= c2.cycles * 0.999


def test_folds_go_only_to_the_arrays_of_the_instances_in_use():
    """tpu-v4: 8 MXUs under 2 VMEMs. A mapping that keeps a 512^3 GEMM in one VMEM runs its 16
    folds on that TensorCore's 4 MXUs, twice the compute of one that uses both."""
    arch = _without_preload("tpu-v4")
    prob = gemm_problem(512, 512, 512)

    def run(split):
        tiles = np.array([[[512, 512, 512], [512, 512 // split, 512], [1, 1, 1]]], dtype=np.int64)
        spatial = np.ones((1, 2, 3), dtype=np.int64)
        spatial[0, 0, 1] = split
        spatial[0, 1, 1] = spatial[0, 1, 2] = 128
        order = np.array([[[0, 1, 2], [2, 0, 1]]], dtype=np.int64)
        return evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch)).compute[0]

    fold = 512 + 2 * 128 + 128 - 2
    assert run(1) == 4 * fold - 1 and run(2) == 2 * fold - 1


def test_every_instance_in_use_loads_its_first_tile_through_the_shared_parent():
    """tpu-v4: both TensorCores' VMEMs fill their first tiles from the one HBM, which does not
    multicast: with the GEMM split over both (n halves) the first fill moves both VMEMs' A and B tiles."""
    arch = load_arch("tpu-v4")
    prob = gemm_problem(512, 512, 512)
    tiles = np.array([[[512, 512, 512], [512, 256, 512], [1, 1, 1]]], dtype=np.int64)
    spatial = np.ones((1, 2, 3), dtype=np.int64)
    spatial[0, 0, 1] = 2
    spatial[0, 1, 1] = spatial[0, 1, 2] = 128
    order = np.array([[[0, 1, 2], [2, 0, 1]]], dtype=np.int64)
    cost = evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch))
    a_tile, b_tile = 512 * 512 * 2, 512 * 256 * 2  # bytes of one VMEM's first A (m x k) and B (k x n) tiles
    hbm_per_cycle = arch.memory[0].bandwidth_Bps / arch.clock_hz
    latencies = sum(lv.latency_s for lv in arch.memory) * arch.clock_hz
    assert cost.prologue[0] - latencies == pytest.approx(2 * (a_tile + b_tile) / hbm_per_cycle)


@pytest.mark.parametrize("name, dt", [("systolic-npu", "bf16"), ("tpu-v4", "bf16"), ("tpu-v5e", "bf16"),
                                      ("edge-npu", "int8")])
def test_a_large_square_gemm_is_compute_bound_on_every_systolic_preset(name, dt):
    """The buffer bandwidths are sized to feed the array at full rate under the modelled dataflow
    (docs/devices.md), so a 4096^3 GEMM waits on neither memory level."""
    cost = op_cost(gemm_op(4096, 4096, 4096, dt), load_arch(name), isolated=True)
    assert cost.bound == "compute"


@pytest.mark.parametrize("name", ["systolic-npu", "tpu-v4", "edge-npu"])
def test_more_buffer_capacity_is_never_slower(name):
    arch = load_arch(name)
    dt = "int8" if name == "edge-npu" else "bf16"
    prev = math.inf
    for mib in (4, 8, 16, 64):
        mem = list(arch.memory)
        mem[-1] = replace(mem[-1], capacity_bytes=float(mib * 2**20))
        cyc = op_cost(gemm_op(64, 1024, 4096, dt), replace(arch, memory=tuple(mem), name=f"{name}-{mib}"),
                      isolated=True).cycles
        assert cyc <= prev * 1.001
        prev = cyc


def test_fp32_operands_run_as_one_bf16_pass_on_a_tpu():
    """A Mamba scan's fp32 contractions run on the MXU as one bf16 pass (the TPU default precision):
    the same folds as bf16, twice the operand bytes."""
    arch = load_arch("tpu-v4")
    bf16 = op_cost(gemm_op(256, 1024, 1024, "bf16"), arch, isolated=True)
    fp32 = op_cost(gemm_op(256, 1024, 1024, "fp32"), arch, isolated=True)
    assert fp32.compute_cycles == bf16.compute_cycles
    assert sum(fp32.bytes_by_level.values()) > sum(bf16.bytes_by_level.values())
    from xpusim import simulate
    from xpusim.workloads import Decode

    assert simulate("tpu-v4", "mamba-2.8b", Decode(4, 3000)).latency_s > 0


def test_a_class_run_on_another_class_lanes_adds_no_silicon():
    """runs_as: {fp32: bf16} costs fp32 at the bf16 rate and energy; the area model sizes no fp32 array."""
    from xpusim.arch import area

    d, _ = arch_dict("tpu-v4")
    d["matrix"].pop("runs_as")
    plain = arch_from_dict(d, "tpu-v4-bf16-only")
    tpu = load_arch("tpu-v4")
    assert area.area_breakdown(tpu)["matrix"] == area.area_breakdown(plain)["matrix"]
    assert tpu.matrix.energy("fp32") == tpu.matrix.energy("bf16")
    for bad in ({"fp32": "fp64"}, {"bf16": "int8"}, ["fp32"]):
        d["matrix"]["runs_as"] = bad
        with pytest.raises(SpecError, match="runs_as"):
            arch_from_dict(d, "bad")


def test_fp16_on_a_tpu_is_widened_to_fp32_and_run_as_bf16():
    arch = load_arch("tpu-v5e")
    assert arch.matrix.resolve("fp16") == "bf16" and arch.matrix.resolve("fp32") == "bf16"
    fp16 = op_cost(gemm_op(512, 1024, 1024, "fp16"), arch, isolated=True)
    bf16 = op_cost(gemm_op(512, 1024, 1024, "bf16"), arch, isolated=True)
    assert fp16.compute_cycles == bf16.compute_cycles


def test_tpu_v5e_int8_reaches_twice_the_bf16_rate_on_a_large_gemm():
    """The VMEM feed is sized for the fastest class (int8, two MACs per PE), so the published 393 int8
    TOPS are reachable: a 4096^3 int8 GEMM runs at ~2x its bf16 time, compute-bound."""
    arch = load_arch("tpu-v5e")
    bf16 = op_cost(gemm_op(4096, 4096, 4096, "bf16"), arch, isolated=True)
    int8 = op_cost(gemm_op(4096, 4096, 4096, "int8"), arch, isolated=True)
    assert int8.bound == "compute" and bf16.latency_s / int8.latency_s == pytest.approx(2.0, rel=0.01)


def _mapping(levels, spatial_levels, order_levels):
    return (np.array([levels], dtype=np.int64), np.array([spatial_levels], dtype=np.int64),
            np.array([order_levels], dtype=np.int64))


def test_a_busiest_array_streams_at_least_its_longest_pass():
    """tpu-v4 (4 MXUs per VMEM, ws, no preload): 36 x 128 x 256 with VMEM tiles of 32 streamed rows and 128 of
    k, m outermost in HBM: 2 folds (k) each run for both m chunks, 4 executions (32, 32, 4, 4 rows) on
    the 4 MXUs; the busiest runs a 32-row pass: 32 + 2 x 128 + 128 - 2 - 1 = 413 cycles."""
    arch = _without_preload("tpu-v4")
    prob = gemm_problem(36, 128, 256)
    tiles, spatial, order = _mapping([[36, 128, 256], [32, 128, 128], [1, 1, 1]],
                                     [[1, 1, 1], [1, 128, 128]], [[0, 1, 2], [1, 2, 0]])
    cost = evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch))
    assert cost.compute[0] == 32 + 2 * 128 + 128 - 2 - 1


def test_stream_copies_count_only_the_instances_a_split_uses():
    """A 3-level ws device (dram, gbuf, 4 lbufs with one 128 x 128 array each): 512 x 128 x 256, the gbuf
    holding 256 streamed rows (2 chunks in DRAM) split 4 ways over the lbufs in 128-row pieces (2 lbufs in
    use) and k in 2 folds: each lbuf in use runs 2 folds per gbuf chunk, 4 executions of 128 rows:
    4 x (128 + 2 x 128 + 128 - 2) - 1 = 2039 cycles."""
    d = {"name": "three", "class": "systolic", "clock": "1 GHz", "technology_nm": 7,
         "matrix": {"instances": 4, "array": [128, 128], "dataflow": "ws", "macs_per_cycle": {"bf16": 16384}},
         "vector": {"instances": 1, "flops_per_cycle": {"fp32": 64}},
         "memory": [{"name": "dram", "kind": "hbm2", "capacity": "4 GiB", "bandwidth": "1 TB/s"},
                    {"name": "gbuf", "kind": "sram", "capacity": "16 MiB", "bandwidth": "8 TB/s", "multicast": True},
                    {"name": "lbuf", "kind": "sram", "capacity": "1 MiB", "bandwidth": "2 TB/s", "instances": 4,
                     "multicast": True}]}
    arch = arch_from_dict(d)
    prob = gemm_problem(512, 128, 256)
    tiles, spatial, order = _mapping([[512, 128, 256], [256, 128, 256], [128, 128, 128], [1, 1, 1]],
                                     [[1, 1, 1], [4, 1, 1], [1, 128, 128]], [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
    cost = evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch))
    assert cost.compute[0] == 4 * (128 + 2 * 128 + 128 - 2) - 1


def test_the_mapper_tries_the_streams_quarters():
    """systolic-npu (is) 300 x 5000 x 2000: the mapper's choice costs no more than the mapping whose gbuf
    streams a quarter of n (1250) per chunk."""
    from xpusim.mappers.search import search
    arch = with_array(load_arch("systolic-npu"), None, None, "is")
    prob = gemm_problem(300, 5000, 2000)
    tiles, spatial, order = _mapping([[300, 5000, 2000], [300, 1250, 128], [1, 1, 1]],
                                     [[1, 1, 1], [128, 1, 128]], [[2, 0, 1], [0, 2, 1]])
    quarter = evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch)).cycles[0]
    assert search(prob, arch).costs.cycles[0] <= quarter * (1 + 1e-9)


def test_a_split_whose_second_child_has_no_tile_loads_one_first_tile():
    """tpu-v4: n split 2 ways over the VMEMs but the VMEM tile is the whole n: one VMEM in use, one first
    fill of A and B (512 x 512 bf16 each) through the HBM."""
    arch = load_arch("tpu-v4")
    prob = gemm_problem(512, 512, 512)
    tiles, spatial, order = _mapping([[512, 512, 512], [512, 512, 512], [1, 1, 1]],
                                     [[1, 2, 1], [1, 128, 128]], [[0, 1, 2], [2, 0, 1]])
    cost = evaluate(prob, arch, tiles, spatial, order, keep_mask(prob, arch))
    hbm_per_cycle = arch.memory[0].bandwidth_Bps / arch.clock_hz
    latencies = sum(lv.latency_s for lv in arch.memory) * arch.clock_hz
    assert cost.prologue[0] - latencies == pytest.approx(2 * 512 * 512 * 2 / hbm_per_cycle)


def _tensorcores(n):
    a = load_arch("tpu-v4")  # 2 VMEMs, 4 MXUs each
    mem = list(a.memory)
    mem[-1] = dataclasses.replace(mem[-1], instances=n)
    return dataclasses.replace(a, name=f"tpu-v4-{n}tc", memory=tuple(mem),
                               matrix=dataclasses.replace(a.matrix, instances=4 * n))


def test_more_tensorcores_never_slow_a_small_gemm():
    op = gemm_op(1, 384, 128, "bf16")
    two = matmul_cost(op, _tensorcores(2)).latency_s
    for n in (4, 8):
        assert matmul_cost(op, _tensorcores(n)).latency_s <= two * 1.001, n
