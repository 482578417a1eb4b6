"""Cost of a contraction on a wafer-scale mesh of cores (WaferLLM's MeshGEMM / MeshGEMV, and a naive mapping).

The op is ``groups`` independent products of ``m`` activation rows (``m x k``) with a stored matrix
(``k x n``: a weight or the KV cache), as in ``mappers/pim.py`` (:func:`~xpusim.mappers.pim.as_gemv`).
It runs on a ``width x height`` region of the mesh (default: the whole wafer). Each group gets a
``p x p`` square of cores, ``p = min(side, floor(sqrt(cores / groups)))``; as many groups as fit run
at once, the rest in ``waves``. Every count below is arithmetic on shapes, never a loop over cores.

The four PLMR terms (He et al., "WaferLLM", OSDI 2025, arXiv 2502.04563) are separate terms:

* **P**arallelism: cores used ``p^2 x concurrent groups`` and the per-core tiles
  ``mt, kt, nt = ceil(m/p), ceil(k/p), ceil(n/p)``;
* **L**atency: hops x ``hop_latency`` per message, plus bytes / ``link`` bandwidth;
* **M**emory: bytes each core must hold (:func:`core_bytes`), checked against ``core_sram``
  (:class:`~xpusim.errors.CapacityError` when over, fits at equality);
* **R**outing: routes a core's router must hold at once (:func:`routes_needed`), checked against
  ``routes_per_core`` when the device gives one.

Algorithms (cycles per wave):

* ``meshgemm`` (Cannon's algorithm with WaferLLM's interleaved placement: the logical ring of a row
  or column visits physical positions ``0, 2, 4, ..., 5, 3, 1`` so every shift, the wrap-around included, is at
  most :func:`interleave_hops` hops): an alignment (skew) of one tile over up to ``p`` hops, then
  ``p`` steps, each ``max(compute, shift)`` (the shift of the next tiles overlaps the local GEMM):
  ``compute = mt kt nt / rate``, ``shift = max(A tile, B tile) / link + hops x hop_latency``;
* ``meshgemv``: the matrix blocked ``p x p`` (``nt x kt`` per core), the vector chunk broadcast down
  each column (``m kt x / link + (p - 1) hop``), local GEMV ``m nt kt / rate``, then a binary-tree
  reduction of the ``m nt`` partial sums along each row: ``ceil(log2 p)`` serial message stages
  (``m nt acc / link`` each) and ``p - 1`` hops of distance in all;
* ``naive`` (a GPU-style 1-D mapping that ignores the mesh): the ``p^2`` cores form a row-major ring,
  the matrix split by columns (``ceil(n / p^2) x k`` per core); the activations are all-gathered
  around the ring in ``p^2 - 1`` synchronous steps, each as slow as the ring's longest link (the
  wrap from the last core back to the first, ``2 (p - 1)`` hops); compute overlaps the gather.

WaferLLM's two algorithms are both costed and the faster one that fits memory and routing is kept;
the naive mapping is reported in ``detail`` for comparison (and chosen only if nothing else fits).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..arch.spec import Arch
from ..arch.wafer import WaferSpec, wafer_spec
from ..errors import CapacityError, SpecError
from ..sim.cost import OpCost
from ..workloads.einsum import Op
from .pim import Gemv, as_gemv

ALGORITHMS = ("meshgemm", "meshgemv", "naive")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def interleave_order(p: int) -> np.ndarray:
    """Physical position of each logical index of a ring of ``p`` cores in WaferLLM's interleaved
    placement: the logical ring visits the even positions left to right, then the odd ones right to
    left (positions ``0, 2, 4, ..., 5, 3, 1``), so no ring link, the wrap-around included, is long."""
    i = np.arange(p)
    half = (p + 1) // 2
    return np.where(i < half, 2 * i, 2 * (p - 1 - i) + 1)


def interleave_hops(p: int) -> int:
    """Longest physical distance between logical ring neighbours (wrap-around included) of the
    interleaved placement: 2 for ``p >= 3`` (1 for ``p = 2``, 0 for one core)."""
    if p <= 1:
        return 0
    pos = interleave_order(p)
    return int(np.abs(pos - np.roll(pos, -1)).max())


def region_of(spec: WaferSpec, region: tuple[int, int] | None) -> tuple[int, int]:
    """The region's ``(width, height)``, validated against the mesh (default: the whole wafer)."""
    if region is None:
        return spec.width, spec.height
    w, h = region
    if not (isinstance(w, int) and isinstance(h, int) and 1 <= w <= spec.width and 1 <= h <= spec.height):
        raise SpecError(f"region {region!r} must be (width, height) with 1 <= width <= {spec.width} and "
                        f"1 <= height <= {spec.height} (the mesh)")
    return w, h


def parallelism(g: Gemv, w: int, h: int) -> dict[str, int]:
    """P: the square ``p x p`` of cores per group, groups run at once, waves, cores used."""
    side = min(w, h)
    p = max(1, min(side, math.isqrt((w * h) // g.groups) if g.groups <= w * h else 1))
    concurrent = min(g.groups, (w // p) * (h // p))
    waves = _cdiv(g.groups, concurrent)
    return {"p": p, "concurrent": concurrent, "waves": waves, "cores_used": p * p * concurrent,
            "mt": _cdiv(g.m, p), "kt": _cdiv(g.k, p), "nt": _cdiv(g.n, p), "n_ring": _cdiv(g.n, p * p)}


def core_bytes(g: Gemv, par: dict[str, int]) -> dict[str, float]:
    """M: bytes one core holds under each algorithm (operand tiles; MeshGEMM double-buffers the
    shifted tiles, MeshGEMV the vector chunk; the naive mapping holds the whole gathered activation)."""
    mt, kt, nt = par["mt"], par["kt"], par["nt"]
    a, b, c = mt * kt * g.x_bytes, kt * nt * g.w_bytes, mt * nt * g.acc_bytes
    return {
        "meshgemm": 2 * (a + b) + c,
        "meshgemv": nt * kt * g.w_bytes + 2 * g.m * kt * g.x_bytes + g.m * nt * g.acc_bytes,
        "naive": par["n_ring"] * g.k * g.w_bytes + g.m * g.k * g.x_bytes + g.m * par["n_ring"] * g.acc_bytes,
    }


def routes_needed(par: dict[str, int]) -> dict[str, int]:
    """R: routes a router holds at once. MeshGEMM: A along rows and B along columns, each with its
    own route and one passing through (interleaved shifts skip a core): 4. MeshGEMV: the column
    broadcast plus one route per reduction-tree level along the row. Naive: the ring and the
    wrap-around route passing through every core of a row: 2."""
    p = par["p"]
    levels = math.ceil(math.log2(p)) if p > 1 else 0
    return {"meshgemm": 4 if p > 2 else (2 if p == 2 else 0),
            "meshgemv": 1 + levels, "naive": 2}


def check_core_memory(need: float, spec: WaferSpec, what: str) -> None:
    """Raise :class:`CapacityError` when ``need`` bytes exceed a core's SRAM (equality fits)."""
    if need > spec.core_sram_bytes:
        raise CapacityError(f"{what} needs {need:,.0f} B per core but a core has {spec.core_sram_bytes:,} B of SRAM; "
                            "spread it over a larger region (more cores) or use a narrower dtype")


def times(g: Gemv, spec: WaferSpec, rate: float, par: dict[str, int]) -> dict[str, dict[str, float]]:
    """L (and compute): cycles of one wave of each algorithm, with its compute and communication terms."""
    p, mt, kt, nt = par["p"], par["mt"], par["kt"], par["nt"]
    link, hop = spec.link_bytes_per_cycle, spec.hop_latency_cycles
    a, b = mt * kt * g.x_bytes, kt * nt * g.w_bytes
    # MeshGEMM: skew, then p overlapped steps of local GEMM and a bounded-hop shift
    shift_hops = interleave_hops(p)
    comp_step = mt * kt * nt / rate
    shift = (max(a, b) / link + shift_hops * hop) if p > 1 else 0.0
    align = (max(a, b) / link + p * hop) if p > 1 else 0.0
    gemm = {"compute": p * comp_step, "comm": align + p * shift, "hops": shift_hops,
            "total": align + p * max(comp_step, shift)}
    # MeshGEMV: column broadcast of the vector chunk, local GEMV, tree reduction along the row
    levels = math.ceil(math.log2(p)) if p > 1 else 0
    bcast = (g.m * kt * g.x_bytes / link + (p - 1) * hop) if p > 1 else 0.0
    red = levels * (g.m * nt * g.acc_bytes / link) + (p - 1) * hop
    comp = g.m * nt * kt / rate + levels * g.m * nt / rate  # MACs, plus one add per partial sum per tree level
    gemv = {"compute": comp, "comm": bcast + red, "hops": 2 * (p - 1), "total": bcast + comp + red}
    # naive 1-D ring all-gather over the row-major order of the p x p cores
    ring = p * p
    ring_hops = 2 * (p - 1) if p > 1 else 0
    step = g.m * _cdiv(g.k, ring) * g.x_bytes / link + ring_hops * hop
    gather = (ring - 1) * step
    comp_n = g.m * par["n_ring"] * g.k / rate
    naive = {"compute": comp_n, "comm": gather, "hops": ring_hops, "total": max(comp_n, gather)}
    return {"meshgemm": gemm, "meshgemv": gemv, "naive": naive}


def evaluate(op: Op, arch: Arch, region: tuple[int, int] | None = None) -> dict[str, Any]:
    """Every PLMR term of every algorithm for ``op`` on ``region`` (no choice made)."""
    spec = wafer_spec(arch)
    g = as_gemv(op, arch)
    w, h = region_of(spec, region)
    par = parallelism(g, w, h)
    mem = core_bytes(g, par)
    routes = routes_needed(par)
    t = times(g, spec, arch.matrix.rate_per_cycle[g.compute], par)
    fits = {k: mem[k] <= spec.core_sram_bytes for k in ALGORITHMS}
    routable = {k: spec.routes_per_core is None or routes[k] <= spec.routes_per_core for k in ALGORITHMS}
    return {"gemv": g, "spec": spec, "region": (w, h), "parallelism": par, "memory": mem, "routes": routes,
            "times": t, "fits": fits, "routable": routable}


def wafer_matmul_cost(op: Op, arch: Arch, launch_s: float = 0.0, region: tuple[int, int] | None = None,
                      algorithm: str | None = None) -> OpCost:
    """Cost of a two-input contraction on a wafer-scale device: the faster of MeshGEMM and MeshGEMV
    that fits per-core memory and routing (or ``algorithm`` when given)."""
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise SpecError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    ev = evaluate(op, arch, region)
    spec, g, par, t = ev["spec"], ev["gemv"], ev["parallelism"], ev["times"]
    ok = [k for k in ALGORITHMS if ev["fits"][k] and ev["routable"][k]]
    if algorithm is not None:
        if spec.routes_per_core is not None and ev["routes"][algorithm] > spec.routes_per_core:
            raise CapacityError(f"op {op.name!r}: {algorithm} needs {ev['routes'][algorithm]} routes per core but a router "
                                f"holds {spec.routes_per_core}; use a smaller region or another algorithm")
        check_core_memory(ev["memory"][algorithm], spec, f"op {op.name!r} ({algorithm})")
        best = algorithm
    else:
        pool = [k for k in ok if k != "naive"] or ok
        if not pool:
            k = min(ALGORITHMS, key=lambda a: ev["memory"][a])
            if not any(ev["fits"].values()):
                check_core_memory(ev["memory"][k], spec, f"op {op.name!r} (its smallest-footprint mapping, {k})")
            raise CapacityError(f"op {op.name!r}: no mapping fits both a core's {spec.core_sram_bytes:,} B "
                                f"(needs {ev['memory']}) and the router's {spec.routes_per_core} routes (needs {ev['routes']}); "
                                "use a smaller region or a device with more routes")
        best = min(pool, key=lambda a: t[a]["total"])
    clock = arch.clock_hz
    waves = par["waves"]
    cycles = waves * t[best]["total"] + launch_s * clock
    latency = cycles / clock
    comp = waves * t[best]["compute"]
    lv = arch.backing
    sram_bytes = g.groups * (g.n * g.k * g.w_bytes + g.m * (g.k * g.x_bytes + g.n * g.acc_bytes))
    energy = {"compute": g.macs * arch.matrix.energy(g.compute) * 1e-12,
              lv.name: sram_bytes * lv.read_energy_pj_per_byte * 1e-12, "static": arch.static_power_w * latency}
    ideal = g.macs / (arch.matrix.rate_per_cycle[g.compute] * arch.matrix.instances)
    detail: dict[str, Any] = {f"{a}_cycles": waves * t[a]["total"] for a in ALGORITHMS}
    detail.update({
        "algorithm": best, "region": ev["region"], "parallelism": par, "core_bytes": ev["memory"],
        "core_sram_bytes": spec.core_sram_bytes, "routes": ev["routes"], "hops": {a: t[a]["hops"] for a in ALGORITHMS},
        "compute_cycles": {a: waves * t[a]["compute"] for a in ALGORITHMS},
        "comm_cycles": {a: waves * t[a]["comm"] for a in ALGORITHMS},
        "weight_stream_s": g.groups * g.n * g.k * g.w_bytes / spec.io_bandwidth_Bps,
        "shape": {"groups": g.groups, "m": g.m, "n": g.n, "k": g.k}, "matrix": g.matrix,
    })
    return OpCost(
        cycles=cycles, latency_s=latency, compute_cycles=comp, stall_cycles=max(cycles - comp, 0.0),
        energy_j=float(sum(energy.values())), utilization=ideal / cycles if cycles else 0.0,
        bound="compute" if t[best]["compute"] >= t[best]["comm"] else "fabric",
        bytes_by_level={lv.name: sram_bytes}, energy_by_component=energy,
        mapping={"algorithm": best, "p": par["p"], "region": list(ev["region"]), "waves": waves}, detail=detail,
    )
