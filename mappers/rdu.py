"""Cost of a block of ops (a decoder layer) on a reconfigurable dataflow unit: one fused spatial
pipeline, or kernel after kernel.

**Fused** (the RDU's way, SN40L: Prabhakar et al., MICRO 2024): every op of the block is a pipeline
stage; the PCUs are dealt out to the stages in proportion to their work (:func:`allocate`: at least
one each, at most what the op's parallelism can use), so the stages run at nearly the same rate;
the ``m`` rows of the block (tokens) flow through the pipeline in tiles of ``lanes`` rows. With
stage times ``t_i`` (the whole op on its PCUs) and ``n`` tiles, the pipeline takes
``sum(t_i) / n + (n - 1) max(t_i) / n`` cycles (fill and drain, then one tile per slowest stage).
Intermediates stay in the PMUs (double-buffered tiles); only the block's input and output, the
weights and the KV cache move to and from their tiers (:func:`tiers`: the KV cache in HBM when it
fits, the weights filling the rest of the HBM and overflowing into DDR, both tiers streaming at
once). The block takes the longest of its pipeline and its tier transfers, plus one kernel
launch. A block with more stages than PCUs is cut into several pipelines (one launch each). The
part of the intermediates' tiles the PMUs' SRAM cannot hold spills to HBM and back.

**Unfused** (kernel by kernel, the GPU way): each op uses every PCU its parallelism allows, reads
its inputs from and writes its output to HBM (intermediates included), and pays a kernel launch.

Every term is arithmetic on the ops' sizes; per-op shares of the block's time (for the result
table) are the ops' shares of their unfused times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..arch.rdu import rdu_spec
from ..arch.spec import Arch
from ..arch.tech import dram_energy_pj_per_byte
from ..dtypes import get_dtype
from ..errors import DtypeError, SpecError
from ..sim.cost import OpCost
from ..workloads.einsum import Op
from .tiers import balanced_share, kv_near
from .tiers import tiers as two_tiers

#: how a dataflow device runs a trace: fused pipelines (a kernel per block instance), looped (a kernel
#: per repeated block, Kernel Looping), unfused (a kernel per op)
RDU_MODES = ("fused", "looped", "unfused")


def _compute_class(op: Op) -> str:
    return get_dtype(op.inputs[0].dtype).compute


def op_work_cycles(op: Op, arch: Arch) -> float:
    """Cycles the op needs on one PCU: MACs over the PCU's MAC rate for a contraction, FLOPs over its
    SIMD lanes x stages (one operation per lane per stage per cycle) otherwise."""
    spec = rdu_spec(arch)
    # causal attention streams query tiles of ``lanes`` rows against key tiles: tiles the mask empties
    # are skipped (Op.kept_block_fraction; 1 for every other op)
    kept = op.kept_block_fraction(spec.pcu_lanes, spec.pcu_lanes)
    if op.kind == "matmul" and len(op.inputs) == 2:
        try:
            rate = arch.matrix.rate(arch.matrix.resolve(_compute_class(op)))
        except DtypeError:  # a class the systolic mode lacks (fp32 SSM scans) runs in SIMD mode
            return op.flops * kept / (spec.pcu_lanes * spec.pcu_stages)
        return op.flops * kept / 2.0 / rate
    elems = float(np.prod([op.sizes[d] for d in op.output.dims])) if op.output.dims else 1.0
    return max(op.flops, elems) * kept / (spec.pcu_lanes * spec.pcu_stages)


def op_parallelism(op: Op, arch: Arch) -> int:
    """PCUs the op can keep busy: one per ``lanes``-wide slice of its output."""
    out = int(np.prod([op.sizes[d] for d in op.output.dims])) if op.output.dims else 1
    return max(1, math.ceil(out / rdu_spec(arch).pcu_lanes))


def allocate(work: np.ndarray, cap: np.ndarray, units: int) -> np.ndarray:
    """Integer units per stage, at least one and at most ``cap`` each, that minimise the slowest
    stage's time ``work / units`` (water-filling: the smallest time ``T`` whose allocation
    ``clip(ceil(work / T), 1, cap)`` fits ``units``, found by bisection; then each unit left over to the
    slowest stage that can take one). One more unit never makes the slowest stage slower. Needs
    ``len(work) <= units``."""
    work = np.asarray(work, dtype=np.float64)
    cap = np.maximum(np.asarray(cap, dtype=np.int64), 1)

    def alloc_at(t: float) -> np.ndarray:
        return np.clip(np.ceil(work / t), 1, cap).astype(np.int64)

    hi = float(max(work.max(initial=0.0), 1e-300))  # one unit each meets this time
    if alloc_at(hi).sum() > units:
        raise SpecError(f"{len(work)} pipeline stages need at least as many units, got {units}")
    lo = float(max((work / cap).max(initial=0.0), 1e-300))  # every stage at its cap
    if alloc_at(lo).sum() <= units:
        hi = lo
    else:
        for _ in range(60):  # alloc_at(hi) fits, alloc_at(lo) does not
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            if alloc_at(mid).sum() <= units:
                hi = mid
            else:
                lo = mid
    alloc = alloc_at(hi)
    for _ in range(units - int(alloc.sum())):
        t = np.where(alloc < cap, work / alloc, -1.0)
        i = int(np.argmax(t))
        if t[i] < 0:
            break
        alloc[i] += 1
    return alloc


#: the most consecutive pipelines :func:`sections_of` cuts a block into (more when it needs more)
SECTIONS_TRIED = 8


def sections_of(work: np.ndarray, cap: np.ndarray, units: int, rows_share: float, launch_cycles: float,
                floor_cycles: float = 0.0) -> tuple[list[list[int]], float]:
    """A block's stages cut into consecutive pipelines of at most ``units`` stages, each run on all the
    units in turn, and their compute cycles: among the fewest pipelines the stages need up to
    :data:`SECTIONS_TRIED` (cuts of balanced work or of equal stage counts), the one whose ``max(compute,
    floor_cycles) + pipelines x launch_cycles`` is shortest (``floor_cycles``: the block's tier
    transfers, which compute hides under). A pipeline's compute is its slowest stage plus the other
    stages' fill (``rows_share``: the first tile's share of the rows)."""
    s = len(work)
    k_min = -(-s // units)
    best: tuple[float, list[list[int]], float] | None = None
    cum = np.cumsum(work)
    # pipeline counts up to a bound that does not move with the units, so one more unit only adds
    # candidates (while the units are at least an eighth of the stages)
    bound = max(floor_cycles, float(cum[-1]) / units)  # no cut computes faster than every unit busy
    memo: dict[tuple[int, int], float] = {}

    def pipeline(a: int, b: int) -> float:
        """Compute cycles of stages a..b-1 as one pipeline on all the units."""
        if (a, b) not in memo:
            t = work[a:b] / allocate(work[a:b], cap[a:b], units)
            memo[a, b] = float(t.max() + (t.sum() - t.max()) * rows_share)
        return memo[a, b]

    for k in range(k_min, min(s, max(SECTIONS_TRIED, k_min)) + 1):
        if best is not None and bound + k * launch_cycles >= best[0]:
            break  # more pipelines only add launches beyond what the best already takes
        cuts = [int(np.searchsorted(cum, cum[-1] * j / k, side="left")) + 1 for j in range(1, k)]  # balanced work
        for bounds in ([0, *cuts, s], [round(s * j / k) for j in range(k + 1)]):  # ... or equal stage counts
            pairs = list(zip(bounds[:-1], bounds[1:], strict=True))
            if any(b <= a or b - a > units for a, b in pairs):
                continue
            secs = [list(range(a, b)) for a, b in pairs]
            cyc = sum(pipeline(a, b) for a, b in pairs)
            total = max(cyc, floor_cycles) + k * launch_cycles
            if best is None or total < best[0]:
                best = (total, secs, cyc)
    assert best is not None  # equal counts of ceil(s / k_min) <= units stages always fit
    return best[1], best[2]


@dataclass
class BlockCost:
    """A block's time and traffic on an RDU; ``share``: each op's part of the time and energy, by its
    own busy time (sums to 1)."""

    latency_s: float
    compute_s: float
    tier_s: dict[str, float]
    bytes_by_tier: dict[str, float]
    sram_bytes: float
    launches: int
    bound: str
    energy_j: float
    energy_by_component: dict[str, float]
    share: np.ndarray
    byte_share: np.ndarray  # each op's part of the HBM bytes (sums to 1)
    utilization: float
    detail: dict[str, Any] = field(default_factory=dict)


def tiers(arch: Arch, weights_bytes: float, kv_bytes: float) -> dict[str, Any]:
    """Where the weights and the KV cache live on the socket (:func:`xpusim.mappers.tiers.tiers` over
    its HBM, under the socket's ``rdu.tiers`` policy)."""
    spec = rdu_spec(arch)
    share = balanced_share(arch.backing.bandwidth_Bps * arch.backing.instances, spec.ddr_Bps, spec.tiers)
    return two_tiers(arch.backing.capacity_bytes * arch.backing.instances, weights_bytes, kv_bytes, share)


def _op_bytes(op: Op) -> dict[str, float]:
    """Bytes an op moves by operand role: weights, KV and recurrent state (per-sequence memory, read
    and written in its tier), activations."""
    out = {"weights": 0.0, "kv": 0.0, "act": 0.0}
    for t in op.inputs:
        role = "weights" if t.role == "weight" else "kv" if t.role in ("kv", "state") else "act"
        out[role] += op.tensor_bytes(t)
    out["kv" if op.kind == "kv_append" or op.output.role == "kv" else "act"] += op.tensor_bytes(op.output)
    return out


def attention_form(arch: Arch) -> str:
    """``streaming`` (reordered, online softmax: the default) or ``naive`` (every score kept), from
    the device's ``rules['rdu_attention']``."""
    form = arch.rules.get("rdu_attention", "streaming") if isinstance(arch.rules, dict) else "streaming"
    if form not in ("streaming", "naive"):
        raise SpecError(f"attention form {form!r}: use streaming or naive")
    return str(form)


def intermediates(ops: list[Op], tiles: int, kv_tile: int, form: str) -> tuple[float, float, float]:
    """(bytes the block exchanges with HBM besides weights and KV: the activations it reads before
    making them — its input, e.g. the residual stream — and those it makes and no later op of the
    block reads — its output —; bytes of its intermediates, as they stay on chip; their
    double-buffered tiles). Walks the ops in order, so a name the block both reads first and
    rewrites last (the residual stream ``x``) counts as input and output. In the streaming attention
    form the scores and probabilities exist one ``kv_tile`` of keys per query row at a time (the
    tile :func:`~xpusim.workloads.functional.rdu.streaming_attention` streams), in the naive form whole."""
    external: dict[str, float] = {}
    made: dict[str, tuple[int, Op]] = {}
    last_read: dict[str, int] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            if t.role in ("activation", "input") and t.name not in made:
                external[t.name] = max(external.get(t.name, 0.0), op.tensor_bytes(t))
            last_read[t.name] = i
        made[op.output.name] = (i, op)
    outputs, inter, tile_bytes = 0.0, 0.0, 0.0
    for name, (i, op) in made.items():
        if op.output.role == "kv":
            continue
        b = op.tensor_bytes(op.output)
        if last_read.get(name, -1) <= i:  # no later op reads it: it leaves the block
            outputs += b
            continue
        s = op.sizes.get("s")
        if form == "streaming" and s and "s" in op.output.dims:  # attention scores / probabilities
            b = b * min(kv_tile, s) / s
        inter += b
        tile_bytes += b / tiles
    return sum(external.values()) + outputs, inter, 2.0 * tile_bytes


def block_tiles(ops: list[Op], lanes: int) -> tuple[int, float]:
    """(row tiles of ``lanes`` rows a block's tokens flow in, the first tile's share of the rows)."""
    rows = max((op.sizes.get("m", 1) for op in ops if op.kind == "matmul"), default=1)
    return max(1, math.ceil(rows / lanes)), min(1.0, lanes / rows)


def on_chip(ops: list[Op], arch: Arch) -> tuple[float, float, float, float]:
    """:func:`intermediates` of a fused block on ``arch`` (its row tiles and attention form) and the
    bytes of intermediates its PMUs' SRAM cannot hold, which go to HBM and back (and so live there)."""
    spec = rdu_spec(arch)
    sram = arch.memory[1]
    ext, inter, buffers = intermediates(ops, block_tiles(ops, spec.pcu_lanes)[0], spec.pcu_lanes, attention_form(arch))
    spill = inter * max(0.0, 1.0 - sram.capacity_bytes * sram.instances / buffers) if buffers > 0 else 0.0
    return ext, inter, buffers, spill


def block_cost(ops: list[Op], arch: Arch, placement: dict[str, str], fused: bool = True) -> BlockCost:
    """Time, traffic and energy of ``ops`` (one block instance) on ``arch`` (see the module docstring)."""
    spec = rdu_spec(arch)
    clock = arch.matrix_clock_hz
    sram = arch.memory[1]
    hbm_bw = arch.backing.bandwidth_Bps * arch.backing.instances
    bw = {"hbm": hbm_bw, "ddr": spec.ddr_Bps}
    work = np.array([op_work_cycles(op, arch) for op in ops])
    cap = np.array([op_parallelism(op, arch) for op in ops], dtype=np.int64)
    moved = [_op_bytes(op) for op in ops]
    by_tier = {"hbm": 0.0, "ddr": 0.0}
    frac = float(placement.get("weights_hbm", 1.0 if placement["weights"] == "hbm" else 0.0))
    kv_frac = kv_near(placement)
    for b in moved:
        by_tier["hbm"] += b["weights"] * frac + b["kv"] * kv_frac
        by_tier["ddr"] += b["weights"] * (1.0 - frac) + b["kv"] * (1.0 - kv_frac)
    # unfused: every op alone on the PCUs it can use, its activations through HBM; both tiers stream at once
    alone = work / np.minimum(cap, spec.pcus)
    act = np.array([b["act"] for b in moved])
    traffic_s = np.array([max((b["weights"] * frac + b["kv"] * kv_frac + b["act"]) / hbm_bw,
                              (b["weights"] * (1 - frac) + b["kv"] * (1 - kv_frac)) / spec.ddr_Bps) for b in moved])
    busy_op_s = np.maximum(alone / clock, traffic_s)
    unfused_op_s = busy_op_s + spec.kernel_launch_s
    # each op's part of the block: its own busy time (a launch per op would give every tiny op ~4 %)
    # and its own HBM bytes (weights and KV in HBM, its activations)
    share = busy_op_s / busy_op_s.sum() if busy_op_s.sum() > 0 else np.full(len(ops), 1.0 / len(ops))
    op_hbm = np.array([b["weights"] * frac + b["kv"] * kv_frac + b["act"] for b in moved])
    byte_share = op_hbm / op_hbm.sum() if op_hbm.sum() > 0 else share
    if fused:
        # a decode step (rows <= lanes) is one tile: the stages run one after another (no overlap), which
        # is harmless while the step is bound by streaming the weights from HBM; ``first``: the first
        # tile's share of the rows (a partial last tile is not a full one)
        _, first = block_tiles(ops, spec.pcu_lanes)
        # the block's input and output activations cross HBM once; intermediates stay in the PMUs
        # (double-buffered tiles); the part of them the SRAM cannot hold goes to HBM and back
        ext, inter, buffers, spill = on_chip(ops, arch)
        capacity = sram.capacity_bytes * sram.instances
        by_tier["hbm"] += ext + 2.0 * spill
        # the first tile fills each pipeline through every stage; the other rows then flow at the slowest stage's rate
        floor = max(v / bw[k] for k, v in by_tier.items()) * clock
        sections, compute_cyc = sections_of(work, cap, spec.pcus, first, spec.kernel_launch_s * clock, floor)
        launches = len(sections)
        compute_s = compute_cyc / clock
        sram_bytes = min(buffers, capacity)
    else:
        by_tier["hbm"] += act.sum()
        launches = len(ops)
        compute_s = float(alone.sum() / clock)
        sram_bytes = 0.0
        inter = 0.0
    tier_s = {k: v / bw[k] for k, v in by_tier.items()}
    if fused:
        busy = max([compute_s, *tier_s.values()])
    else:  # kernel by kernel: each op is bound by its own compute or traffic
        busy = float((unfused_op_s - spec.kernel_launch_s).sum())
    latency = busy + launches * spec.kernel_launch_s
    bound = max([("compute", compute_s), *tier_s.items()], key=lambda kv: kv[1])[0]
    # the work the PCUs do: a causal mask's skipped tiles are neither computed nor counted as useful
    kept = {id(op): op.kept_block_fraction(spec.pcu_lanes, spec.pcu_lanes) for op in ops}
    macs = sum(op.flops * kept[id(op)] / 2.0 for op in ops if op.kind == "matmul")
    vec = sum(op.flops * kept[id(op)] for op in ops if op.kind != "matmul")
    classes = [_compute_class(op) for op in ops if op.kind == "matmul"]
    cc = next((c for c in classes if c in arch.matrix.rate_per_cycle), next(iter(arch.matrix.rate_per_cycle)))
    energy = {"compute": (macs * arch.matrix.energy(cc) + vec * arch.vector.energy("fp32")) * 1e-12,
              "hbm": by_tier["hbm"] * arch.backing.read_energy_pj_per_byte * 1e-12,
              # the DDR tier at the energy table's DDR5 figure (the SN40L's DDR generation is not published;
              # DDR4's is the same 70 pJ/bit); intermediates written to and read from the PMUs once each,
              # a write costing what a read does (the SRAM level's read energy)
              "ddr": by_tier["ddr"] * dram_energy_pj_per_byte("ddr5") * 1e-12,
              "sram": 2.0 * inter * sram.read_energy_pj_per_byte * 1e-12,
              "static": arch.static_power_w * latency}
    ideal = macs / (arch.matrix.rate(cc) * arch.matrix.instances) / clock if macs else 0.0
    return BlockCost(latency_s=latency, compute_s=compute_s, tier_s=tier_s, bytes_by_tier=by_tier, sram_bytes=sram_bytes,
                     launches=launches, bound=bound, energy_j=float(sum(energy.values())), energy_by_component=energy,
                     share=share, byte_share=byte_share, utilization=ideal / latency if latency else 0.0,
                     detail={"fused": fused, "stages": len(ops), "unfused_s": float(unfused_op_s.sum())})


def rdu_op_cost(op: Op, arch: Arch) -> OpCost:
    """One contraction alone as a one-stage fused pipeline (what ``xpusim op`` costs on a dataflow
    device, as :func:`block_cost` runs it inside a block): its PCUs, its operands through HBM (or DDR
    where its weights would not fit), one kernel launch."""
    nbytes = _op_bytes(op)
    bc = block_cost([op], arch, tiers(arch, nbytes["weights"], nbytes["kv"]), fused=True)
    clock = arch.matrix_clock_hz
    return OpCost(cycles=bc.latency_s * clock, latency_s=bc.latency_s, compute_cycles=bc.compute_s * clock,
                  stall_cycles=max(bc.latency_s - bc.compute_s, 0.0) * clock, energy_j=bc.energy_j,
                  utilization=bc.utilization, bound=bc.bound,
                  bytes_by_level={arch.memory[0].name: bc.bytes_by_tier["hbm"]},
                  energy_by_component=bc.energy_by_component, mapping={"pipeline": "one stage", "launches": bc.launches},
                  detail={"tier_s": bc.tier_s, "ddr_bytes": bc.bytes_by_tier["ddr"], "sram_footprint_bytes": bc.sram_bytes})
