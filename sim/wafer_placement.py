"""Placement of a model on wafer-scale devices: regions, pipeline stages, multi-wafer, weight streaming.

A wafer has no shared memory: every byte of weights and KV cache lives in some core's SRAM. The
layers are laid out on ``side x side`` square **regions** of the mesh, as WaferLLM does (He et al.,
OSDI 2025, sections 4 and 7.5: 48 KB per core forces pipeline parallelism; the core grid per phase
is tuned offline):

* the trace's blocks are unrolled into **units** (the embedding, each layer, the head), each with
  its weight bytes and its share of the KV cache; units are packed in order into **stages**, one
  region each, as many as fit a core's SRAM after the op working buffers (:func:`pack_units`);
* a wafer holds ``floor(width / side) x floor(height / side)`` regions; ``wafers`` wafers in a
  pipeline hold that many times more;
* every op of a unit runs on its stage's region (``mappers/wafer.py`` on a ``side x side`` mesh); a
  step's latency is the sum of its ops plus the hand-off of the activations from one stage to the
  next: across the wafer ``bytes / (side x link) + side x hop`` cycles, between wafers ``bytes /
  io_bandwidth``;
* the side is chosen among every candidate that fits (:func:`candidate_sides`) for the objective;
* **weight streaming** (``weight_streaming=True``): the weights stay in external memory and stream in
  over the wafer's I/O, one unit ahead (double-buffered): each unit takes ``max(its ops, its weight
  bytes / io_bandwidth)``, the whole wafer is one region holding the KV cache and two units' weights.

When nothing fits, :class:`~xpusim.errors.CapacityError` names the bytes per core needed and the
two remedies (more wafers, or weight streaming).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..arch.spec import Arch
from ..arch.wafer import wafer_spec
from ..dtypes import get_dtype
from ..errors import CapacityError, SpecError
from ..mappers.wafer import ALGORITHMS, MESH_ALGORITHMS, as_gemv, parallelism, working_bytes
from ..workloads.trace import Trace


@dataclass(frozen=True)
class Unit:
    """One placed piece of the model: a block instance (``block`` index ``i`` of its repeats)."""

    block: str
    index: int
    weight_bytes: float
    kv_bytes: float


@dataclass(frozen=True)
class WaferPlan:
    """Where a model runs: region side, stages, wafers, mode, and the per-core bytes of the fullest stage."""

    side: int
    stages: int
    regions_per_wafer: int
    wafers: int
    mode: str  # "resident" or "streaming"
    core_sram_bytes: int
    buffer_bytes: float  # op working buffers per core
    stage_core_bytes: tuple[float, ...]  # weights + KV per core of each stage
    units_per_stage: tuple[int, ...]

    @property
    def peak_core_bytes(self) -> float:
        return max(self.stage_core_bytes) + self.buffer_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "stages": self.stages, "regions_per_wafer": self.regions_per_wafer,
                "wafers": self.wafers, "mode": self.mode, "core_sram_bytes": self.core_sram_bytes,
                "buffer_bytes": self.buffer_bytes, "peak_core_bytes": self.peak_core_bytes,
                "units_per_stage": list(self.units_per_stage)}


def region_arch(arch: Arch, side: int, buffer_limit: float | None = None) -> Arch:
    """``arch`` restricted to a ``side x side`` region: the mesh, cores, lanes and SRAMs of the region;
    ``buffer_limit``: per-core bytes left for the ops' working buffers once the region's cores hold
    their stage's weights and KV cache (the mappers fit against it)."""
    spec = wafer_spec(arch)
    if not (isinstance(side, int) and 1 <= side <= min(spec.width, spec.height)):
        raise SpecError(f"wafer region side {side!r} must be an integer in 1..{min(spec.width, spec.height)} (the mesh)")
    if buffer_limit is not None:
        spec = dataclasses.replace(spec, buffer_limit_bytes=buffer_limit)
        arch = dataclasses.replace(arch, rules={**arch.rules, "wafer": spec})
    if (side, side) == (spec.width, spec.height):
        return arch
    n = side * side
    mem = tuple(dataclasses.replace(lv, instances=n) if i == 0 else lv for i, lv in enumerate(arch.memory))
    return dataclasses.replace(
        arch, name=f"{arch.name}[{side}x{side}]", memory=mem,
        matrix=dataclasses.replace(arch.matrix, instances=n), vector=dataclasses.replace(arch.vector, instances=n),
        rules={**arch.rules, "wafer": dataclasses.replace(spec, width=side, height=side)})


def _is_moe(block: Any) -> bool:
    return any(op.attrs.get("moe_group") is not None or op.name.startswith("expert") for op in block.ops)


def units_of(trace: Trace, weights_total: float, kv_total: float, embedding_bytes: float = 0.0) -> list[Unit]:
    """The trace's blocks unrolled into units with their weight and KV bytes. An embedding gather
    reads a few rows; its unit holds the whole table (``embedding_bytes``; 0 when the table lives with
    a tied head). A mixture of experts' trace reads only the routed experts: the weights it still
    misses (``weights_total`` less the rest) are added to its MoE blocks, evenly per instance; a model
    without MoE blocks has its units scaled to ``weights_total``."""
    rows = []
    for b in trace.blocks:
        w = sum(op.tensor_bytes(t) for op in b.ops for t in op.inputs if t.role == "weight")
        if embedding_bytes and any(op.kind == "embedding" for op in b.ops):
            w += embedding_bytes - sum(op.tensor_bytes(t) for op in b.ops if op.kind == "embedding"
                                       for t in op.inputs if t.role == "weight")
        kv = sum(1 for op in b.ops for t in op.inputs if t.role == "kv")
        rows.append((b, w, kv))
    w_sum = sum(w * b.repeat for b, w, _ in rows)
    kv_sum = sum(kv * b.repeat for b, _, kv in rows) or 1.0
    moe_instances = sum(b.repeat for b, _, _ in rows if _is_moe(b))
    missing = max(0.0, weights_total - w_sum)
    extra = missing / moe_instances if moe_instances else 0.0
    scale = weights_total / w_sum if (w_sum and not moe_instances) else 1.0
    return [Unit(b.name, i, w * scale + (extra if _is_moe(b) else 0.0), kv * kv_total / kv_sum)
            for b, w, kv in rows for i in range(b.repeat)]


def buffer_bytes(trace: Trace, arch: Arch, side: int) -> float:
    """Per-core working buffers the largest contraction needs at least on a ``side x side`` region
    (its widest squares; the smaller of MeshGEMM's and MeshGEMV's, or the forced one's): activation
    tiles, received partial sums and accumulators (the stored tile is counted with the units). The
    mapper then fits every op within what the fullest stage leaves (``region_arch``'s
    ``buffer_limit``). The naive baseline runs on the regions of this placement; its all-gathered
    activations are not reserved (on Llama-3-8B up to 28 KB per core: it would need four WSE-2s)."""
    reg = region_arch(arch, side)
    forced = _forced(arch)
    worst = 0.0
    for _, op in trace.ops():
        if op.kind != "matmul" or len(op.inputs) != 2:
            continue
        g = as_gemv(op, reg)
        work = working_bytes(g, parallelism(g, side, side))
        worst = max(worst, work[forced] if forced in MESH_ALGORITHMS else min(work[a] for a in MESH_ALGORITHMS))
    return worst


def _forced(arch: Arch) -> str | None:
    """The contraction algorithm forced on ``arch`` (``algorithm=``), if any."""
    return arch.rules.get("wafer_algorithm") if isinstance(arch.rules, dict) else None


def pack_units(units: list[Unit], per_stage_bytes: float) -> list[list[Unit]] | None:
    """Units packed in order into stages of at most ``per_stage_bytes``; None if one unit alone is larger."""
    stages: list[list[Unit]] = [[]]
    used = 0.0
    for u in units:
        b = u.weight_bytes + u.kv_bytes
        if b > per_stage_bytes:
            return None
        if used + b > per_stage_bytes and stages[-1]:
            stages.append([])
            used = 0.0
        stages[-1].append(u)
        used += b
    return stages


def candidate_sides(arch: Arch, count: int = 10) -> list[int]:
    """Region sides to try: geometric from 32 cores to the mesh's shorter side (and that side)."""
    spec = wafer_spec(arch)
    top = min(spec.width, spec.height)
    lo = min(32, top)
    return sorted({int(v) for v in np.geomspace(lo, top, count)} | {top})


def wafers_needed(units: list[Unit], arch: Arch, side: int, buffers: float) -> int | None:
    """Wafers a layout on ``side x side`` regions needs (None: a unit alone overflows a region)."""
    spec = wafer_spec(arch)
    free = spec.core_sram_bytes - buffers
    stages = pack_units(units, free * side * side) if free > 0 else None
    if stages is None:
        return None
    return math.ceil(len(stages) / ((spec.width // side) * (spec.height // side)))


def balanced_stages(units: list[Unit], count: int, cap: float) -> list[list[Unit]]:
    """The units in order in at most ``count`` stages of at most ``cap`` bytes each, with the fullest
    stage as small as it can be (bisection on the per-stage bound; ``cap`` must already admit a
    packing into ``count`` stages)."""
    lo, hi = max(u.weight_bytes + u.kv_bytes for u in units), cap
    for _ in range(48):
        mid = (lo + hi) / 2
        packed = pack_units(units, mid)
        if packed is not None and len(packed) <= count:
            hi = mid
        else:
            lo = mid
    stages = pack_units(units, hi)
    assert stages is not None
    return stages


def plan_for_side(units: list[Unit], arch: Arch, side: int, buffers: float, wafers: int,
                  spread: bool = False) -> WaferPlan | None:
    """The stage layout on ``side x side`` regions, or None when it needs more regions than ``wafers``
    wafers have: the fewest stages the units pack into, balanced so that the fullest stage leaves the
    most room for the ops' buffers (``spread``: as many stages as the regions allow, for more room)."""
    spec = wafer_spec(arch)
    free = spec.core_sram_bytes - buffers
    if free <= 0:
        return None
    greedy = pack_units(units, free * side * side)
    regions = (spec.width // side) * (spec.height // side)
    if greedy is None or len(greedy) > regions * wafers:
        return None
    count = min(len(units), regions * wafers) if spread else len(greedy)
    stages = balanced_stages(units, count, free * side * side)
    per_core = tuple(sum(u.weight_bytes + u.kv_bytes for u in st) / (side * side) for st in stages)
    return WaferPlan(side=side, stages=len(stages), regions_per_wafer=regions, wafers=wafers, mode="resident",
                     core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buffers, stage_core_bytes=per_core,
                     units_per_stage=tuple(len(st) for st in stages))


def streaming_plan(units: list[Unit], arch: Arch, buffers: float) -> WaferPlan:
    """Weight streaming on the whole wafer: the KV cache and two units' weights per core must fit."""
    spec = wafer_spec(arch)
    side = min(spec.width, spec.height)
    kv = sum(u.kv_bytes for u in units)
    two = sorted((u.weight_bytes for u in units), reverse=True)[:2]
    per_core = (kv + sum(two)) / (side * side)
    plan = WaferPlan(side=side, stages=1, regions_per_wafer=1, wafers=1, mode="streaming",
                     core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buffers, stage_core_bytes=(per_core,),
                     units_per_stage=(len(units),))
    if plan.peak_core_bytes > spec.core_sram_bytes:
        raise CapacityError(f"weight streaming on {arch.name} still needs {plan.peak_core_bytes:,.0f} B per core "
                            f"(KV cache {kv / 1e9:.2f} GB + two layers' weights + buffers) but a core has "
                            f"{spec.core_sram_bytes:,} B; use a smaller batch or context")
    return plan


def _between_wafers(plan: WaferPlan) -> int:
    """Stage boundaries that cross from one wafer to the next (over the wafers' I/O)."""
    return (plan.stages - 1) // plan.regions_per_wafer if plan.wafers > 1 and plan.stages > 1 else 0


def handoff_s(arch: Arch, plan: WaferPlan, act_bytes: float) -> float:
    """Seconds to pass a step's activations through every stage boundary (on-wafer and between wafers)."""
    spec = wafer_spec(arch)
    if plan.stages <= 1:
        return 0.0
    between_wafers = _between_wafers(plan)
    on_wafer = plan.stages - 1 - between_wafers
    cyc = act_bytes / (plan.side * spec.link_bytes_per_cycle) + plan.side * spec.hop_latency_cycles
    return on_wafer * cyc / arch.clock_hz + between_wafers * act_bytes / spec.io_bandwidth_Bps


def no_fit_error(arch: Arch, model_name: str, units: list[Unit], trace: Trace, wafers: int,
                 sides: list[int], fixed_side: bool = False) -> CapacityError:
    """The one-line error when the model fits no region layout on ``wafers`` wafers, with the fewest
    wafers that would hold it (``fixed_side``: the user chose the only region side tried)."""
    spec = wafer_spec(arch)
    total = sum(u.weight_bytes + u.kv_bytes for u in units)
    need = [n for s in sides if (n := wafers_needed(units, arch, s, buffer_bytes(trace, arch, s))) is not None]
    gib = 2.0**30
    if need:
        more = f"run it on {min(need)} wafers (--wafers {min(need)})"
    elif fixed_side:
        more = f"a larger region side than {sides[0]} (or drop --wafer-side to search the sides)"
    else:
        more = "shard its largest layer (it overflows a whole wafer)"
    return CapacityError(
        f"{model_name} needs {total / gib:.1f} GiB of weights and KV cache but {wafers} x {arch.name} hold "
        f"{wafers * spec.core_sram_bytes * spec.width * spec.height / gib:.1f} GiB in {spec.core_sram_bytes:,} B per core "
        f"and no layout of its layers on {'that region side' if fixed_side else 'square regions'} fits; {more} or "
        "stream the weights from external memory (--weight-streaming)")


def overflow_cands(units: list[Unit], arch: Arch, trace: Trace, model: Any, sides: list[int], wafers: int,
                   objective: str, kv: float, act: float) -> list[tuple[WaferPlan | None, Any]]:
    """Layouts for a model that overflows the wafers (``--ignore-memory``): its units balanced over
    every region of the region side that overflows a core least, as if the SRAM held them, the ops with
    the working buffers the placement reserves, the hand-offs charged (mode ``overflow``), so a step
    that does not fit is costed like the tightest layout that would, not as a whole-mesh run."""
    from .engine import simulate_trace

    spec = wafer_spec(arch)
    total = sum(u.weight_bytes + u.kv_bytes for u in units)
    plans = []
    for s in sides:
        regions = (spec.width // s) * (spec.height // s)
        stages = balanced_stages(units, min(len(units), regions * wafers), total)
        plans.append(WaferPlan(side=s, stages=len(stages), regions_per_wafer=regions, wafers=wafers, mode="overflow",
                               core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buffer_bytes(trace, arch, s),
                               stage_core_bytes=tuple(sum(u.weight_bytes + u.kv_bytes for u in st) / (s * s)
                                                      for st in stages),
                               units_per_stage=tuple(len(st) for st in stages)))
    least = min(p.peak_core_bytes for p in plans)
    out: list[tuple[WaferPlan | None, Any]] = []
    for plan in (p for p in plans if p.peak_core_bytes <= least * 1.01):
        s, buf = plan.side, plan.buffer_bytes
        try:
            res = simulate_trace(trace, region_arch(arch, s, buf), objective, model, kv_bytes=kv)
        except CapacityError:
            continue
        _add_handoffs(res, arch, plan, act)
        out.append((plan, res))
    return out


def _add_row(res: Any, name: str, nbytes: float, seconds: float, joules: float) -> None:
    """Append an ``io`` row (block ``io``) to a step's op table, so that its rows add up to the step."""
    row = {c: 0.0 for c in res.ops.columns} | {
        "block": "io", "name": name, "kind": "io", "repeat": 1, "bytes": nbytes, "latency_s": seconds,
        "total_latency_s": seconds, "energy_j": joules, "total_energy_j": joules, "bound": "io"}
    res.ops = pd.concat([res.ops, pd.DataFrame([row])], ignore_index=True)


def _add_handoffs(res: Any, arch: Arch, plan: WaferPlan, act: float) -> None:
    """The stage hand-offs of ``plan`` (the residual stream, ``act`` bytes, between stages; over the
    wafers' I/O between wafers): their time and energy in the step and as one ``handoff`` row."""
    t = handoff_s(arch, plan, act)
    e = _between_wafers(plan) * act * wafer_spec(arch).io_energy_j_per_byte
    res.latency_s += t
    res.energy_j += e
    if t or e:
        _add_row(res, "handoff", act * max(plan.stages - 1, 0), t, e)


def simulate_wafer(arch: Arch, model: Any, phase: Any, objective: str = "latency", check_memory: bool = True,
                   routing: str | None = None, mla_form: str | None = None, wafers: int = 1,
                   weight_streaming: bool = False, side: int | None = None, algorithm: str | None = None) -> Any:
    """One step of ``model`` on ``wafers`` wafer-scale devices ``arch`` (see the module docstring);
    ``side`` fixes the region side instead of searching it; ``algorithm`` forces one contraction
    mapping (``meshgemm``, ``meshgemv`` or ``naive``: the GPU-style baseline). The result's
    ``inputs['wafer_plan']`` says where the model went."""
    from ..workloads.builder import build_trace
    from .engine import _kv_bytes, _objective_value, simulate_trace

    if isinstance(wafers, bool) or not isinstance(wafers, int) or wafers < 1:
        raise SpecError(f"--wafers must be a positive integer, got {wafers!r}")
    if weight_streaming and wafers > 1:
        raise SpecError("weight streaming runs on one wafer; give --wafers 1 or drop --weight-streaming")
    if weight_streaming and side is not None:
        raise SpecError("weight streaming runs on the whole wafer; drop --wafer-side or --weight-streaming")
    if algorithm is not None:
        if algorithm not in ALGORITHMS:
            raise SpecError(f"wafer algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        arch = dataclasses.replace(arch, rules={**arch.rules, "wafer_algorithm": algorithm})
    kv = _kv_bytes(model, phase)
    forms = [mla_form] if mla_form or not model.is_mla else ["naive", "absorbed"]
    spec = wafer_spec(arch)
    best = None
    cands: list[tuple[WaferPlan | None, Any]]
    for form in forms:
        trace = build_trace(model, phase, routing, form)
        table = 0.0 if model.tied_embeddings else model.embedding_params * get_dtype(model.embedding_dtype).bytes
        units = units_of(trace, model.weights_bytes, kv, table)
        act = phase.tokens * model.d_model * 2.0  # the residual stream handed from stage to stage (16-bit)
        if weight_streaming:
            stream_plan = streaming_plan(units, arch, buffer_bytes(trace, arch, min(spec.width, spec.height)))
            res = simulate_trace(trace, arch, objective, model, kv_bytes=kv)
            per_inst = (res.ops["latency_s"]).groupby(res.ops["block"], sort=False).sum().to_dict()
            stream = [u.weight_bytes / spec.io_bandwidth_Bps for u in units] + [0.0]
            # the first unit streams in alone; then each unit computes while the next one streams in
            res.latency_s = stream[0] + sum(max(per_inst.get(u.block, 0.0), stream[i + 1]) for i, u in enumerate(units))
            streamed = sum(u.weight_bytes for u in units)
            io_j = streamed * spec.io_energy_j_per_byte  # every weight crosses the I/O each step
            res.energy_j += io_j
            # its own row, so the ops' energies add up to the step's; its time overlaps the units' compute
            _add_row(res, "weight_stream", streamed, 0.0, io_j)
            cands = [(stream_plan, res)]
        else:
            sides = [side] if side is not None else candidate_sides(arch)
            cands = []
            for s in sides:
                buf = buffer_bytes(trace, arch, s)
                plans = [plan_for_side(units, arch, s, buf, wafers, spread) for spread in (False, True)]
                for plan in {p.units_per_stage: p for p in plans if p is not None}.values():
                    free = (spec.core_sram_bytes - max(plan.stage_core_bytes)  # beside the fullest stage's residents
                            if _forced(arch) != "naive" else None)  # the baseline: its gathers are not reserved
                    try:
                        res = simulate_trace(trace, region_arch(arch, s, free), objective, model, kv_bytes=kv)
                    except CapacityError:  # an op's working set overflows a core of this region
                        continue
                    _add_handoffs(res, arch, plan, act)
                    cands.append((plan, res))
            if not cands:
                if check_memory:
                    raise no_fit_error(arch, model.name, units, trace, wafers, sides, fixed_side=side is not None)
                cands = overflow_cands(units, arch, trace, model, sides, wafers, objective, kv, act)
            if not cands:  # not even the ops' minimum buffers fit a region: the whole mesh, unplaced
                cands = [(None, simulate_trace(trace, arch, objective, model, kv_bytes=kv))]
        for chosen, res in cands:
            if arch.static_power_w:  # every wafer powered for the whole step (hand-offs, stages waiting), not the ops' busy time
                from .engine import powered_energy

                busy_j = arch.static_power_w * float(res.ops.loc[res.ops["kind"] != "io", "total_latency_s"].sum())
                n = chosen.wafers if chosen is not None else 1
                res.energy_j = powered_energy(res.energy_j, busy_j, arch.static_power_w * n, res.latency_s)
            res.inputs["wafer_plan"] = chosen.to_dict() if chosen is not None else None
            if best is None or _objective_value(res, objective) < _objective_value(best, objective):
                best = res
    assert best is not None
    best.capacity_bytes = float(spec.core_sram_bytes) * spec.width * spec.height * wafers
    best.inputs["arch"] = arch.name if wafers == 1 else f"{wafers} x {arch.name}"
    return best
