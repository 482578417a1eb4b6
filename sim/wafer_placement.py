"""Placement of a model on wafer-scale devices: regions, pipeline stages, multi-wafer, weight streaming.

A wafer has no shared memory: every byte of weights and KV cache lives in some core's SRAM. The
layers are laid out on ``side x side`` square **regions** of the mesh, as WaferLLM does (He et al.,
OSDI 2025, sections 4 and 7.5: 48 KB per core forces pipeline parallelism; the core grid per phase
is tuned offline):

* the trace's blocks are unrolled into **units** (the embedding, each layer, the head), each with
  its weight bytes and its share of the KV cache, and sized on a region by what its fullest core
  holds: every matrix its contractions store as the padded tiles of their layout
  (:func:`~xpusim.sim.wafer_units.unit_core_bytes`; the squares the mapper prefers, or the ``compact``
  ones storing least);
  units are packed in order into **stages**, one region each, as many as fit a core's SRAM after
  the op working buffers (:func:`pack_units`);
* a wafer holds ``floor(width / side) x floor(height / side)`` regions; ``wafers`` wafers in a
  pipeline hold that many times more;
* every op of a unit runs on its stage's region (``mappers/wafer.py`` on a ``side x side`` mesh); a
  step's latency is the sum of its ops plus the hand-off of the activations from one stage to the
  next: across the wafer ``bytes / (side x link) + side x hop`` cycles, between wafers ``bytes /
  io_bandwidth``;
* the side is chosen among every candidate that fits (:func:`candidate_sides`) for the objective;
* **weight streaming** (``weight_streaming=True``): the weights stay in external memory and stream in
  over the wafer's I/O, one unit ahead (double-buffered): each unit takes ``max(its ops, its weight
  bytes / io_bandwidth)``, the whole wafer is one region holding the KV cache and two units' weights,
  every op's buffers within what they leave.

When nothing fits, :class:`~xpusim.errors.CapacityError` names what overflows and its remedy
(:func:`no_fit_error`: an op that fits no core beside its stage, more wafers or weight streaming, the
reserved buffers, a larger side, the largest layer).
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
from ..errors import CapacityError, SpecError
from ..mappers.wafer import (
    ALGORITHMS,
)
from ..workloads.trace import Trace
from .wafer_units import (
    Unit,
    buffer_bytes,
    forced_algorithm,
    largest_buffers,
    least_buffers,
    model_units,
    unit_core_bytes,
)


@dataclass(frozen=True)
class WaferPlan:
    """Where a model runs: region side, stages, wafers, mode, and the per-core bytes of each stage."""

    side: int
    stages: int
    regions_per_wafer: int
    wafers: int
    mode: str  # "resident", "streaming" or "overflow"
    core_sram_bytes: int
    buffer_bytes: float  # op working buffers reserved per core
    stage_core_bytes: tuple[float, ...]  # weights + KV on the fullest core of each stage (stored tiles, unit_core_bytes)
    units_per_stage: tuple[int, ...]
    layout: str = "preferred"  # the stored matrices' squares: the mapper's "preferred" or the "compact" ones

    @property
    def peak_core_bytes(self) -> float:
        return max(self.stage_core_bytes) + self.buffer_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "stages": self.stages, "regions_per_wafer": self.regions_per_wafer,
                "wafers": self.wafers, "mode": self.mode, "core_sram_bytes": self.core_sram_bytes,
                "buffer_bytes": self.buffer_bytes, "peak_core_bytes": self.peak_core_bytes,
                "stage_core_bytes": list(self.stage_core_bytes), "units_per_stage": list(self.units_per_stage),
                "layout": self.layout}


#: layouts of the stored matrices the placement tries (``rules['wafer_layout']``, :func:`~xpusim.mappers.wafer.stored_square`)
LAYOUTS = ("preferred", "compact")


def _layout(arch: Arch) -> str:
    """The layout of the stored matrices ``arch``'s rules ask for (:data:`LAYOUTS`)."""
    return str(arch.rules.get("wafer_layout", "preferred"))


def with_buffer_limit(arch: Arch, buffer_limit: float | None) -> Arch:
    """``arch`` with ``buffer_limit`` per-core bytes for the ops' working buffers (None: unchanged)."""
    if buffer_limit is None:
        return arch
    spec = dataclasses.replace(wafer_spec(arch), buffer_limit_bytes=buffer_limit)
    return dataclasses.replace(arch, rules={**arch.rules, "wafer": spec})


def region_arch(arch: Arch, side: int, buffer_limit: float | None = None) -> Arch:
    """``arch`` restricted to a ``side x side`` region: the mesh, cores, lanes and SRAMs of the region;
    ``buffer_limit``: per-core bytes left for the ops' working buffers once the region's cores hold
    their stage's weights and KV cache (the mappers fit against it)."""
    spec = wafer_spec(arch)
    if not (isinstance(side, int) and 1 <= side <= min(spec.width, spec.height)):
        raise SpecError(f"wafer region side {side!r} must be an integer in 1..{min(spec.width, spec.height)} (the mesh)")
    arch = with_buffer_limit(arch, buffer_limit)
    spec = wafer_spec(arch)
    if (side, side) == (spec.width, spec.height):
        return arch
    n = side * side
    mem = tuple(dataclasses.replace(lv, instances=n) for lv in arch.memory)  # the one level: the cores' SRAM
    return dataclasses.replace(
        arch, name=f"{arch.name}[{side}x{side}]", memory=mem,
        matrix=dataclasses.replace(arch.matrix, instances=n), vector=dataclasses.replace(arch.vector, instances=n),
        rules={**arch.rules, "wafer": dataclasses.replace(spec, width=side, height=side)})


def pack_units(sizes: list[float], cap: float) -> list[int] | None:
    """Units (their bytes per core, in order) packed greedily into stages of at most ``cap`` bytes per
    core: the units of each stage; None if one unit alone is larger."""
    counts = [0]
    used = 0.0
    for b in sizes:
        if b > cap:
            return None
        if used + b > cap and counts[-1]:
            counts.append(0)
            used = 0.0
        counts[-1] += 1
        used += b
    return counts


def stage_sums(sizes: list[float], counts: tuple[int, ...] | list[int]) -> tuple[float, ...]:
    """Each stage's bytes per core: the sum of its units' (``counts`` units per stage, in order)."""
    ends = np.cumsum([0, *counts])
    return tuple(float(sum(sizes[a:b])) for a, b in zip(ends[:-1], ends[1:], strict=True))


def candidate_sides(arch: Arch, count: int = 10) -> list[int]:
    """Region sides to try: geometric from 32 cores to the mesh's shorter side (and that side)."""
    spec = wafer_spec(arch)
    top = min(spec.width, spec.height)
    lo = min(32, top)
    return sorted({int(v) for v in np.geomspace(lo, top, count)} | {top})


def wafers_needed(sizes: list[float], arch: Arch, side: int, buffers: float) -> int | None:
    """Wafers a layout of units of ``sizes`` bytes per core on ``side x side`` regions needs (None: a
    unit alone, or the buffers alone, overflow a core of a region)."""
    spec = wafer_spec(arch)
    free = spec.core_sram_bytes - buffers
    stages = pack_units(sizes, free) if free > 0 else None
    if stages is None:
        return None
    return math.ceil(len(stages) / ((spec.width // side) * (spec.height // side)))


def balanced_stages(sizes: list[float], count: int, cap: float) -> list[int]:
    """The units (bytes per core ``sizes``) in order in at most ``count`` stages of at most ``cap``
    bytes per core each, with the fullest stage as small as it can be (bisection on the per-stage
    bound; ``cap`` must already admit a packing into ``count`` stages): the units of each stage."""
    lo, hi = max(sizes), cap
    for _ in range(48):
        mid = (lo + hi) / 2
        packed = pack_units(sizes, mid)
        if packed is not None and len(packed) <= count:
            hi = mid
        else:
            lo = mid
    stages = pack_units(sizes, hi)
    assert stages is not None
    return stages


def plan_for_side(sizes: list[float], arch: Arch, side: int, buffers: float, wafers: int,
                  spread: bool = False) -> WaferPlan | None:
    """The stage layout of units of ``sizes`` bytes per core (:func:`unit_core_bytes`) on ``side x
    side`` regions, or None when it needs more regions than ``wafers`` wafers have: the fewest stages
    the units pack into, balanced so that the fullest stage leaves the most room for the ops' buffers
    (``spread``: as many stages as the regions allow, for more room)."""
    spec = wafer_spec(arch)
    free = spec.core_sram_bytes - buffers
    if free <= 0:
        return None
    greedy = pack_units(sizes, free)
    regions = (spec.width // side) * (spec.height // side)
    if greedy is None or len(greedy) > regions * wafers:
        return None
    count = min(len(sizes), regions * wafers) if spread else len(greedy)
    stages = balanced_stages(sizes, count, free)
    return WaferPlan(side=side, stages=len(stages), regions_per_wafer=regions, wafers=wafers, mode="resident",
                     core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buffers,
                     stage_core_bytes=stage_sums(sizes, stages), units_per_stage=tuple(stages), layout=_layout(arch))


def _streaming_core_bytes(pairs: list[tuple[float, float]]) -> float:
    """Bytes per core weight streaming keeps: every unit's KV cache and the two largest units' weights."""
    return sum(kv for _, kv in pairs) + sum(sorted((w for w, _ in pairs), reverse=True)[:2])


def streaming_plan(units: list[Unit], pairs: list[tuple[float, float]], arch: Arch, buffers: float) -> WaferPlan:
    """Weight streaming on the whole wafer: the KV cache and two units' weights per core (``pairs``:
    :func:`unit_core_bytes` on the whole mesh) and the buffers must fit."""
    spec = wafer_spec(arch)
    plan = WaferPlan(side=min(spec.width, spec.height), stages=1, regions_per_wafer=1, wafers=1, mode="streaming",
                     core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buffers,
                     stage_core_bytes=(_streaming_core_bytes(pairs),), units_per_stage=(len(units),),
                     layout=_layout(arch))
    if plan.peak_core_bytes > spec.core_sram_bytes:
        kv = sum(u.kv_bytes for u in units)
        raise CapacityError(f"weight streaming on {arch.name} still needs {plan.peak_core_bytes:,.0f} B per core "
                            f"(KV cache {kv / 1e9:.2f} GB + two layers' weights + buffers) but a core has "
                            f"{spec.core_sram_bytes:,} B; use a smaller batch or context")
    return plan


def realised(plan: WaferPlan, units: list[Unit], trace: Trace, arch: Arch, mappings: dict[str, Any]) -> WaferPlan:
    """``plan`` with each stage's bytes per core at the squares and algorithms its ops ran on
    (``mappings``; on a placed region they store no more than the placement reserved)."""
    if plan.mode == "streaming":
        pairs = unit_core_bytes(units, trace, arch, mappings)
        return dataclasses.replace(plan, stage_core_bytes=(_streaming_core_bytes(pairs),))
    pairs = unit_core_bytes(units, trace, region_arch(arch, plan.side), mappings)
    return dataclasses.replace(plan, stage_core_bytes=stage_sums([a + b for a, b in pairs], plan.units_per_stage))


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


def no_fit_error(arch: Arch, model_name: str, units: list[Unit], trace: Trace, wafers: int, sides: list[int],
                 fixed_side: bool = False, op_errors: list[str] | None = None, objective: str = "latency") -> CapacityError:
    """The one-line error when the model fits no region layout on ``wafers`` wafers, with the remedy
    for what failed (``fixed_side``: the user chose the only region side tried; ``op_errors``: the
    mapping errors of layouts whose units did pack):

    * the weights and KV cache packed but an op's mapping fits no core beside them: that op's error;
    * the units need more regions: the fewest wafers (more than ``wafers``) that hold them, or weight
      streaming;
    * the working buffers reserved for the largest contraction alone overflow a core on every side:
      that op and its buffers;
    * else a region side too small (``fixed_side``), or the largest unit overflowing a whole region."""
    spec = wafer_spec(arch)
    gib = 2.0**30
    where = "that region side" if fixed_side else "square regions"
    if op_errors:
        return CapacityError(f"{model_name}'s weights and KV cache fit {where} of {wafers} x {arch.name} but no layout "
                             f"maps every op beside them: {op_errors[-1]}")
    total = sum(u.weight_bytes + u.kv_bytes for u in units)
    compact = dataclasses.replace(arch, rules={**arch.rules, "wafer_layout": "compact"})  # each matrix stored least
    sizes = {s: [a + b for a, b in unit_core_bytes(units, trace, region_arch(compact, s), objective=objective)] for s in sides}
    bufs = {s: largest_buffers(trace, arch, s, s) for s in sides}
    need = [n for s in sides if (n := wafers_needed(sizes[s], arch, s, bufs[s][0])) is not None and n > wafers]
    head = (f"{model_name} needs {total / gib:.1f} GiB of weights and KV cache and {wafers} x {arch.name} hold "
            f"{wafers * spec.core_sram_bytes * spec.width * spec.height / gib:.1f} GiB in {spec.core_sram_bytes:,} B per "
            f"core, but no layout of its layers on {where} fits")
    stream = " or stream the weights from external memory (--weight-streaming)" if _streaming_fits(
        units, arch, trace, objective) else ""
    if need:
        return CapacityError(f"{head}; run it on {min(need)} wafers (--wafers {min(need)}){stream}")
    if all(b >= spec.core_sram_bytes for b, _, _ in bufs.values()):
        s = max(sides)  # the widest region: the least buffers
        b, op, g = bufs[s]
        assert g is not None
        # the buffers grow with the rows (activations, partial sums): fewer rows help unless one row overflows
        one_row = least_buffers(dataclasses.replace(g, m=1), arch, s, s)
        fewer = "a smaller batch or a shorter sequence" if int(trace.meta.get("batch", 1) or 1) > 1 else "a shorter sequence"
        remedy = (f"use {fewer}" if one_row < spec.core_sram_bytes else
                  f"even one row needs {one_row:,.0f} B: use a device whose mesh gives wider squares than {s} cores")
        return CapacityError(f"{model_name}: op {op!r} needs at least {b:,.0f} B of working buffers per core on "
                             f"{s} x {s}-core regions (its widest squares) but a core has {spec.core_sram_bytes:,} B; "
                             f"{remedy}")
    if fixed_side:
        return CapacityError(f"{head}; use a larger region side than {sides[0]} (or drop --wafer-side to search the "
                             f"sides){stream}")
    top = max(sides)
    i = max(range(len(units)), key=lambda j: sizes[top][j])
    return CapacityError(f"{head}: its largest layer ({units[i].block}, {units[i].weight_bytes / 1e9:.2f} GB) needs "
                         f"{sizes[top][i]:,.0f} B per core even on {top} x {top}-core regions; shard it or use a "
                         "narrower weight format")


def overflow_cands(units: list[Unit], arch: Arch, trace: Trace, model: Any, sides: list[int], wafers: int,
                   objective: str, kv: float, act: float) -> list[tuple[WaferPlan | None, Any]]:
    """Layouts for a model that overflows the wafers (``--ignore-memory``): its units balanced over
    every region of the region side that overflows a core least, as if the SRAM held them, the ops with
    the working buffers the placement reserves, the hand-offs charged (mode ``overflow``), so a step
    that does not fit is costed like the tightest layout that would, not as a whole-mesh run."""
    from .engine import simulate_trace

    spec = wafer_spec(arch)
    plans = []
    for s in sides:
        regions = (spec.width // s) * (spec.height // s)
        buf = buffer_bytes(trace, arch, s)
        for lay, sizes in _layouts(arch, lambda a, s=s: region_arch(a, s), units, trace, objective):
            stages = balanced_stages(sizes, min(len(units), regions * wafers), sum(sizes))
            plans.append((lay, WaferPlan(side=s, stages=len(stages), regions_per_wafer=regions, wafers=wafers,
                                         mode="overflow", core_sram_bytes=spec.core_sram_bytes, buffer_bytes=buf,
                                         stage_core_bytes=stage_sums(sizes, stages), units_per_stage=tuple(stages),
                                         layout=_layout(lay))))
    least = min(p.peak_core_bytes for _, p in plans)
    out: list[tuple[WaferPlan | None, Any]] = []
    for lay, plan in ((a, p) for a, p in plans if p.peak_core_bytes <= least * 1.01):
        room = plan.buffer_bytes if forced_algorithm(arch) != "naive" else None  # the baseline: its gathers are not reserved
        try:
            res = simulate_trace(trace, region_arch(lay, plan.side, room), objective, model, kv_bytes=kv)
        except CapacityError:
            continue
        _add_handoffs(res, arch, plan, act)
        out.append((realised(plan, units, trace, lay, res.mappings), res))
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


def _streaming_fits(units: list[Unit], arch: Arch, trace: Trace, objective: str) -> bool:
    """Whether weight streaming holds the KV cache, two units and the buffers per core in some layout
    (the no-fit error offers it only then)."""
    spec = wafer_spec(arch)
    buf = largest_buffers(trace, arch, spec.width, spec.height)[0]
    for lay, _ in _layouts(arch, lambda a: a, units, trace, objective):
        try:
            streaming_plan(units, unit_core_bytes(units, trace, lay, objective=objective), lay, buf)
        except CapacityError:
            continue
        return True
    return False


def _layouts(arch: Arch, region: Any, units: list[Unit], trace: Trace, objective: str) -> list[tuple[Arch, list[float]]]:
    """The layouts of the stored matrices to place with, each as (``arch`` with its
    ``wafer_layout`` rule, the units' bytes per core on ``region(that arch)``): the mapper's preferred
    squares, and the compact ones (each matrix on the candidate square storing least) where they store
    less (:func:`~xpusim.mappers.wafer.stored_square`)."""
    out: list[tuple[Arch, list[float]]] = []
    for layout in LAYOUTS:
        lay = dataclasses.replace(arch, rules={**{k: v for k, v in arch.rules.items() if k != "wafer_layout"},
                                               **({"wafer_layout": layout} if layout != "preferred" else {})})
        sizes = [a + b for a, b in unit_core_bytes(units, trace, region(lay), objective=objective)]
        if all(sizes != other for _, other in out):
            out.append((lay, sizes))
    return out


def _resident_cands(units: list[Unit], arch: Arch, trace: Trace, model: Any, sides: list[int], wafers: int,
                    objective: str, kv: float, act: float) -> tuple[list[tuple[WaferPlan | None, Any]], list[str]]:
    """Every layout that holds the model on ``wafers`` wafers (each side, layout of the stored
    matrices, fewest or spread stages) with its step, and the mapping errors of those whose units
    packed but an op did not fit beside them."""
    from .engine import simulate_trace

    spec = wafer_spec(arch)
    cands: list[tuple[WaferPlan | None, Any]] = []
    op_errors: list[str] = []
    for s in sides:
        buf = buffer_bytes(trace, arch, s)
        for lay, sizes in _layouts(arch, lambda a, s=s: region_arch(a, s), units, trace, objective):
            plans = [plan_for_side(sizes, lay, s, buf, wafers, spread) for spread in (False, True)]
            for plan in {p.units_per_stage: p for p in plans if p is not None}.values():
                free = (spec.core_sram_bytes - max(plan.stage_core_bytes)  # beside the fullest stage's residents
                        if forced_algorithm(arch) != "naive" else None)  # the baseline: its gathers are not reserved
                try:
                    res = simulate_trace(trace, region_arch(lay, s, free), objective, model, kv_bytes=kv)
                except CapacityError as e:  # an op's working set (or routes) overflows a core of this region
                    op_errors.append(str(e))
                    continue
                _add_handoffs(res, arch, plan, act)
                cands.append((realised(plan, units, trace, lay, res.mappings), res))
    return cands, op_errors


def _streaming_cands(units: list[Unit], arch: Arch, trace: Trace, model: Any, objective: str,
                     kv: float) -> list[tuple[WaferPlan | None, Any]]:
    """Weight streaming on the whole mesh: its KV cache and two units' weights per core, each op's
    buffers within what they leave; each unit takes the longer of its ops and its weights' I/O."""
    from .engine import simulate_trace

    spec = wafer_spec(arch)
    buf = largest_buffers(trace, arch, spec.width, spec.height)[0]
    cands: list[tuple[WaferPlan | None, Any]] = []
    error: CapacityError | None = None
    for lay, _ in _layouts(arch, lambda a: a, units, trace, objective):
        try:
            plan = streaming_plan(units, unit_core_bytes(units, trace, lay, objective=objective), lay, buf)
        except CapacityError as e:
            error = error or e
            continue
        res = simulate_trace(trace, with_buffer_limit(lay, spec.core_sram_bytes - max(plan.stage_core_bytes)),
                             objective, model, kv_bytes=kv)
        per_inst = (res.ops["latency_s"]).groupby(res.ops["block"], sort=False).sum().to_dict()
        stream = [u.weight_bytes / spec.io_bandwidth_Bps for u in units] + [0.0]
        # the first unit streams in alone; then each unit computes while the next one streams in
        res.latency_s = stream[0] + sum(max(per_inst.get(u.block, 0.0), stream[i + 1]) for i, u in enumerate(units))
        streamed = sum(u.weight_bytes for u in units)
        io_j = streamed * spec.io_energy_j_per_byte  # every weight crosses the I/O each step
        res.energy_j += io_j
        # its own row, so the ops' energies add up to the step's; its time overlaps the units' compute
        _add_row(res, "weight_stream", streamed, 0.0, io_j)
        cands.append((realised(plan, units, trace, lay, res.mappings), res))
    if not cands:
        assert error is not None
        raise error
    return cands


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
        units = model_units(model, trace, kv)
        act = phase.tokens * model.d_model * 2.0  # the residual stream handed from stage to stage (16-bit)
        if weight_streaming:
            cands = _streaming_cands(units, arch, trace, model, objective, kv)
        else:
            sides = [side] if side is not None else candidate_sides(arch)
            cands, op_errors = _resident_cands(units, arch, trace, model, sides, wafers, objective, kv, act)
            if not cands:
                if check_memory:
                    raise no_fit_error(arch, model.name, units, trace, wafers, sides, side is not None, op_errors, objective)
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
