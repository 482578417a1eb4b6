"""Cost of a contraction on a wafer-scale mesh of cores (WaferLLM's MeshGEMM / MeshGEMV, and a naive mapping).

The op is ``groups`` independent products of ``m`` activation rows (``m x k``) with a stored matrix
(``k x n``: a weight or the KV cache), as in ``mappers/pim.py`` (:func:`~xpusim.mappers.pim.as_gemv`).
It runs on a ``width x height`` region of the mesh (default: the whole wafer). Each group gets a
``p x p`` square of cores; as many groups as fit run at once, the rest in ``waves``. The candidate
squares are the widest for each number of waves up to twice what ``floor(sqrt(cores / groups))``
needs (:func:`square_sides`: that square may not tile the region and cost an extra wave); the
best fitting mapping over squares and algorithms under the objective (the fastest by default) is
kept, MeshGEMV over row chunks when its buffers overflow. Every count below is arithmetic on
shapes, never a loop over cores.

The four PLMR terms (He et al., "WaferLLM", OSDI 2025, arXiv 2502.04563) are separate terms:

* **P**arallelism: cores used ``p^2 x concurrent groups`` and the per-core tiles
  ``mt, kt, nt = ceil(m/p), ceil(k/p), ceil(n/p)``;
* **L**atency: hops x ``hop_latency`` per message, plus bytes / ``link`` bandwidth;
* **M**emory: bytes each core must hold (:func:`core_bytes`), checked against ``core_sram``
  (:class:`~xpusim.errors.CapacityError` when over, fits at equality); on a region of a placed
  model, whose cores already hold their stage's weights and KV cache, the working buffers beside
  the stored tile (:func:`working_bytes`) are checked against what the stage leaves, and the op
  keeps its matrix where the placement stored it (:func:`stored_square`, padded tiles
  :func:`stored_tile_bytes`): only squares storing no more are tried;
* **R**outing: routes a core's router must hold at once (:func:`routes_needed`), checked against
  ``routes_per_core`` when the device gives one.

Algorithms (cycles per wave):

* ``meshgemm`` (Cannon's algorithm with WaferLLM's interleaved placement: the logical ring of a row
  or column visits physical positions ``0, 2, 4, ..., 5, 3, 1`` so every shift, the wrap-around included, is at
  most :func:`interleave_hops` hops): an alignment (skew) of one tile over up to ``p`` hops, then
  ``p`` steps, each ``max(compute, shift)`` (the shift of the next tiles overlaps the local GEMM):
  ``compute = mt kt nt / rate``, ``shift = max(A tile, B tile) / link + hops x hop_latency``;
* ``meshgemv``: the matrix blocked ``p x p`` (``nt x kt`` per core; the vector chunk of a grid
  column already replicated down it, as WaferLLM's alternating weight layouts leave the previous
  op's output), local GEMV ``m nt kt / rate``, then a K-tree allreduce of the ``m nt`` partial sums
  along each row (:func:`ktree_phases`, ``K = 2`` as WaferLLM implements it): in each phase groups of
  ``g = ceil(p^(1/K))`` roots reduce into their centre member, ``ceil((g - 1) / 2)`` serial steps of
  one message (``m nt acc / link``) and one add per partial sum; the reduced chunk is multicast back
  along the row; the hop distance, to the centre and back, is counted once per hop;
* ``naive`` (the layout a shared-memory, GPU-designed compiler gives the mesh): the matrix in
  row-major chunks of ``ceil(n k / p^2)`` elements over the ``p^2`` cores taken as a ring in serpentine
  row order (every ring link one hop but the closing one, ``p - 1`` hops); the activations are
  all-gathered to every core around the ring, pipelined: ``p^2 - 1`` forwarding steps of one message
  (``m ceil(k / p^2) x`` bytes) and one hop each, plus the closing link's hops once; compute overlaps
  the gather; a matrix row spread over ``s`` cores then reduces its ``s`` partial sums along the
  ring (``s - 1`` neighbour steps). Per core it holds the whole ``m x k`` activation (WaferLLM's
  "inflated buffers" of all-gather GEMM).

Messages are whole flits: ``ceil(bytes / link)`` cycles.

WaferLLM's two algorithms are both costed and the faster one that fits memory and routing is kept;
the naive mapping is reported in ``detail`` for comparison (and chosen only if nothing else fits).
"""

from __future__ import annotations

import dataclasses
import functools
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
MESH_ALGORITHMS = ALGORITHMS[:2]  # WaferLLM's; the naive mapping is the GPU-style baseline
#: phases of MeshGEMV's K-tree allreduce (WaferLLM, section 6.1: its implementation uses K = 2)
KTREE_K = 2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _msg(nbytes: float, link: float) -> float:
    """Cycles to push one message of ``nbytes`` over a link of ``link`` bytes per cycle (whole flits)."""
    return float(math.ceil(nbytes / link - 1e-9)) if nbytes > 0 else 0.0


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


def ktree_phases(p: int, k: int = KTREE_K) -> list[tuple[int, int]]:
    """``(steps, hops)`` of each phase of a K-tree reduction of ``p`` cores in a line: groups of
    ``g = ceil(p^(1/k))`` consecutive roots (``g^j`` cores apart in phase ``j``) reduce into their
    centre member in ``ceil((g - 1) / 2)`` serial steps; ``hops`` is the distance from the group's
    farthest member to its root. Phases stop once one root is left (at most ``k``)."""
    if p <= 1:
        return []
    g = max(2, math.ceil(round(p ** (1.0 / k), 9)))
    out, roots, stride = [], p, 1
    while roots > 1:
        size = min(g, roots)
        steps = math.ceil((size - 1) / 2)
        out.append((steps, steps * stride))
        roots, stride = _cdiv(roots, g), stride * g
    return out


def region_of(spec: WaferSpec, region: tuple[int, int] | None) -> tuple[int, int]:
    """The region's ``(width, height)``, validated against the mesh (default: the whole wafer)."""
    if region is None:
        return spec.width, spec.height
    w, h = region
    if not (isinstance(w, int) and isinstance(h, int) and 1 <= w <= spec.width and 1 <= h <= spec.height):
        raise SpecError(f"region {region!r} must be (width, height) with 1 <= width <= {spec.width} and "
                        f"1 <= height <= {spec.height} (the mesh)")
    return w, h


def _widest_square(g: Gemv, w: int, h: int) -> int:
    """Side of the widest square ``floor(sqrt(w h / groups))`` that could run every group at once on a
    ``w x h`` region (at least 1, at most the shorter side)."""
    return _widest(g.groups, w, h)


def _widest(groups: int, w: int, h: int) -> int:
    return max(1, min(w, h, math.isqrt((w * h) // groups) if groups <= w * h else 1))


def square_sides(g: Gemv, w: int, h: int) -> list[int]:
    """Candidate sides ``p`` of the square each group gets on a ``w x h`` region, widest first: for
    each number of waves ``v`` the groups can take, up to twice what the widest square
    ``floor(sqrt(w h / groups))`` needs, the widest square whose packing ``floor(w/p) floor(h/p)``
    runs them in ``v`` waves (squares do not tile a region exactly: the widest square can cost an
    extra wave, and a wider one the same waves as a narrower)."""
    return list(_square_sides(g.groups, w, h))


@functools.lru_cache(maxsize=4096)
def _square_sides(groups: int, w: int, h: int) -> tuple[int, ...]:
    """:func:`square_sides` of ``groups`` matrices on a ``w x h`` region (memoised: the placement asks
    for every op on every candidate region)."""
    side = min(w, h)
    top = _widest(groups, w, h)
    ps = np.arange(1, side + 1)
    waves = -(-groups // ((w // ps) * (h // ps)))
    keep = waves <= 2 * waves[top - 1]
    best = {int(v): int(ps[keep & (waves == v)].max()) for v in np.unique(waves[keep])}  # widest per wave count
    return tuple(sorted(best.values(), reverse=True))


def parallelism(g: Gemv, w: int, h: int, p: int | None = None) -> dict[str, int]:
    """P: the square ``p x p`` of cores per group (default: the widest candidate of
    :func:`square_sides`, which holds the least per core), groups run at once, waves, cores used."""
    side = min(w, h)
    if p is None:
        p = square_sides(g, w, h)[0]
    elif isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 1 <= p <= side:
        raise SpecError(f"square side {p!r} must be an integer in 1..{side} (the region's shorter side)")
    p = int(p)
    concurrent = min(g.groups, (w // p) * (h // p))
    waves = _cdiv(g.groups, concurrent)
    return {"p": p, "concurrent": concurrent, "waves": waves, "cores_used": p * p * concurrent,
            "mt": _cdiv(g.m, p), "kt": _cdiv(g.k, p), "nt": _cdiv(g.n, p),
            "chunk": _cdiv(g.n * g.k, p * p)}


def core_bytes(g: Gemv, par: dict[str, int]) -> dict[str, float]:
    """M: bytes one core holds under each algorithm (operand tiles; MeshGEMM double-buffers the
    shifted tiles, MeshGEMV the partial sums it receives; the naive mapping holds the whole gathered
    activation)."""
    mt, kt, nt = par["mt"], par["kt"], par["nt"]
    a, b, c = mt * kt * g.x_bytes, kt * nt * g.w_bytes, mt * nt * g.acc_bytes
    return {
        "meshgemm": 2 * (a + b) + c,
        "meshgemv": nt * kt * g.w_bytes + g.m * kt * g.x_bytes + 2 * g.m * nt * g.acc_bytes,
        "naive": par["chunk"] * g.w_bytes + g.m * g.k * g.x_bytes + g.m * (_cdiv(par["chunk"], g.k) + 1) * g.acc_bytes,
    }


def stored_tile_bytes(g: Gemv, w: int, h: int, p: int, copies: int | None = None, algorithm: str | None = None) -> float:
    """M: bytes of the stored matrix (a weight or the KV cache) on the fullest core of a ``w x h`` region
    when the op's ``copies`` matrices (default its ``groups``; a mixture of experts stores every
    expert's, not only the routed ones') lie on ``p x p`` squares: ``ceil(copies / squares)`` rounds of
    a ceil-padded tile (``kt nt`` elements; ``ceil(n k / p^2)`` under the ``naive`` mapping), as the
    square at the region's origin takes a matrix in every round and its origin core a full tile of each
    (the stored matrices of later waves stay resident too)."""
    par = parallelism(g, w, h, p)
    squares = (w // par["p"]) * (h // par["p"])
    tile = par["chunk"] if algorithm == "naive" else par["kt"] * par["nt"]
    return _cdiv(g.groups if copies is None else copies, squares) * tile * g.w_bytes


def stored_copies(op: Op, g: Gemv) -> int | None:
    """Matrices a contraction keeps stored on the mesh: its ``groups``, or every expert of a mixture
    (``experts_total``: any may be routed next step); None when its matrix operand is neither a weight
    nor the KV cache (nothing stays resident)."""
    if next(t.role for t in op.inputs if t.name == g.matrix) not in ("weight", "kv"):
        return None
    if op.attrs.get("moe_group") is not None:
        return max(int(op.attrs.get("experts_total") or 0), g.groups)
    return g.groups


#: :func:`stored_square` memo: (op signature and roles, device fingerprint, objective, region) -> side
_STORED: dict[tuple[Any, ...], int | None] = {}


def clear_stored() -> None:
    """Forget memoised :func:`stored_square` answers (with the op-cost memo, for a cold run)."""
    _STORED.clear()


def stored_square(op: Op, arch: Arch, objective: str = "latency", region: tuple[int, int] | None = None) -> int | None:
    """The square side a placed model stores ``op``'s matrix on, on ``arch``'s mesh (or ``region``):
    the one the mapper picks with nothing else resident, or, under the placement's compact layout
    (``rules['wafer_layout'] = 'compact'``), the candidate square storing the least per core (the
    widest of equals). ``sim/wafer_placement.py`` reserves its tiles; on the placed region the op may
    move only to squares that store no more. None when no mapping fits the bare mesh. Memoised: the
    placement asks for every op of every unit on every candidate region."""
    key = (op.signature(), tuple(t.role for t in op.inputs), op.attrs.get("experts_total"), arch.fingerprint(), objective,
           region)
    if key not in _STORED:
        if len(_STORED) > 65536:
            _STORED.clear()
        _STORED[key] = _stored_square(op, arch, objective, region)
    return _STORED[key]


def _stored_square(op: Op, arch: Arch, objective: str, region: tuple[int, int] | None) -> int | None:
    spec = wafer_spec(arch)
    g = as_gemv(op, arch)
    copies = stored_copies(op, g)
    if arch.rules.get("wafer_layout") == "compact" and copies:
        w, h = region_of(spec, region)
        return min(square_sides(g, w, h), key=lambda p: stored_tile_bytes(g, w, h, p, copies))
    if spec.buffer_limit_bytes is not None:
        arch = dataclasses.replace(arch, rules={**arch.rules, "wafer": dataclasses.replace(spec, buffer_limit_bytes=None)})
    try:
        mapping = wafer_matmul_cost(op, arch, region=region, objective=objective).mapping
    except CapacityError:
        return None
    assert mapping is not None
    return int(mapping["p"])


def routes_needed(par: dict[str, int]) -> dict[str, int]:
    """R: routes a router holds at once. MeshGEMM: A along rows and B along columns, each with its
    own route and one passing through (interleaved shifts skip a core): 4. MeshGEMV: ``K + 1`` at a
    tree root (one per phase plus the multicast back; WaferLLM section 6.1). Naive: the ring and the
    closing route passing through every core of the first column: 2."""
    p = par["p"]
    return {"meshgemm": 4 if p > 2 else (2 if p == 2 else 0),
            "meshgemv": (len(ktree_phases(p)) + 1) if p > 1 else 0, "naive": 2}


def working_bytes(g: Gemv, par: dict[str, int]) -> dict[str, float]:
    """Bytes one core holds under each algorithm beside its tile of the stored matrix (which a placed
    model keeps resident with the stage's weights and KV cache)."""
    mem = core_bytes(g, par)
    tile = {"meshgemm": par["kt"] * par["nt"], "meshgemv": par["kt"] * par["nt"], "naive": par["chunk"]}
    return {a: mem[a] - tile[a] * g.w_bytes for a in ALGORITHMS}


def fit_need(g: Gemv, par: dict[str, int], spec: WaferSpec) -> dict[str, float]:
    """Bytes per core each algorithm needs against :func:`fit_room`: its working buffers on a placed
    region (``buffer_limit_bytes`` set), else everything it holds."""
    return working_bytes(g, par) if spec.buffer_limit_bytes is not None else core_bytes(g, par)


def fit_room(spec: WaferSpec) -> float:
    """Bytes per core an op may use: what the stage's residents leave on a placed region, else the SRAM."""
    return spec.buffer_limit_bytes if spec.buffer_limit_bytes is not None else float(spec.core_sram_bytes)


def check_core_memory(need: float, spec: WaferSpec, what: str) -> None:
    """Raise :class:`CapacityError` when ``need`` bytes exceed the room per core (equality fits)."""
    if need <= fit_room(spec):
        return
    if spec.buffer_limit_bytes is not None:
        raise CapacityError(f"{what} needs {need:,.0f} B of working buffers per core but its stage's weights and KV cache "
                            f"leave {spec.buffer_limit_bytes:,.0f} B of a core's {spec.core_sram_bytes:,} B; use larger "
                            "regions, more wafers or a narrower dtype")
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
    shift = (_msg(max(a, b), link) + shift_hops * hop) if p > 1 else 0.0
    align = (_msg(max(a, b), link) + p * hop) if p > 1 else 0.0
    gemm = {"compute": p * comp_step, "comm": align + p * shift, "hops": shift_hops,
            "total": align + p * max(comp_step, shift)}
    # MeshGEMV: local GEMV, K-tree allreduce of the partial sums along the row, multicast back
    phases = ktree_phases(p)
    steps = sum(st for st, _ in phases)
    dist = sum(d for _, d in phases)
    msg = _msg(g.m * nt * g.acc_bytes, link)
    local = g.m * nt * kt / rate
    adds = steps * g.m * nt / rate  # one add per received partial sum per step
    red = steps * msg + (msg if p > 1 else 0.0) + 2 * dist * hop
    gemv = {"compute": local + adds, "comm": red, "hops": 2 * dist, "total": local + adds + red}
    # naive: row-major chunks of the matrix on a serpentine ring, activations all-gathered (pipelined)
    ring = p * p
    close = (p - 1) if p > 1 else 0
    gather = ((ring - 1) * (_msg(g.m * _cdiv(g.k, ring) * g.x_bytes, link) + hop) + close * hop) if ring > 1 else 0.0
    span = _cdiv(g.k, par["chunk"]) if par["chunk"] < g.k else 1  # cores one matrix row is spread over
    row_red = (span - 1) * (_msg(g.m * g.acc_bytes, link) + hop + g.m / rate)
    comp_n = g.m * par["chunk"] / rate
    naive = {"compute": comp_n, "comm": gather + row_red, "hops": close, "total": max(comp_n, gather) + row_red}
    return {"meshgemm": gemm, "meshgemv": gemv, "naive": naive}


def sram_traffic(g: Gemv, par: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(reads, writes): bytes one core of a group moves through its SRAM under each algorithm, with
    ``a, b, c`` its activation, matrix and accumulator tiles. MeshGEMM: each of the ``p`` steps reads
    ``a, b`` and updates ``c``, and writes the shifted ``a, b`` it receives (plus the initial skew);
    MeshGEMV: reads its tiles once and writes its partial sums; the reduction tree adds each of a
    row's ``p - 1`` other partials once (read the received one and the running sum, write the sum),
    and the result comes back to every core; naive: reads its chunk and the whole gathered
    activation, which it also receives (writes)."""
    p, mt, kt, nt = par["p"], par["mt"], par["kt"], par["nt"]
    a, b, c = mt * kt * g.x_bytes, kt * nt * g.w_bytes, mt * nt * g.acc_bytes
    adds = (p - 1) / p  # received partials per core of a row, on average
    part = g.m * nt * g.acc_bytes
    act = g.m * g.k * g.x_bytes
    outs = g.m * (_cdiv(par["chunk"], g.k) + 1) * g.acc_bytes
    return {"meshgemm": (p * (a + b + c) + (a + b), p * (a + b + c) + (a + b)),
            "meshgemv": (b + g.m * kt * g.x_bytes + 2 * adds * part, part * (2 + adds)),
            "naive": (par["chunk"] * g.w_bytes + act, act + outs)}


def evaluate(op: Op, arch: Arch, region: tuple[int, int] | None = None, p: int | None = None) -> dict[str, Any]:
    """Every PLMR term of every algorithm for ``op`` on ``region`` with ``p x p`` squares per group
    (default: the widest candidate; no choice made)."""
    spec = wafer_spec(arch)
    g = as_gemv(op, arch)
    w, h = region_of(spec, region)
    par = parallelism(g, w, h, p)
    mem = fit_need(g, par, spec)
    routes = routes_needed(par)
    rate = arch.matrix.rate_per_cycle[g.compute]
    t = times(g, spec, rate, par)
    traffic = sram_traffic(g, par)
    chunks = 1
    if mem["meshgemv"] > fit_room(spec) and g.m > 1:  # MeshGEMV over row chunks whose buffers fit
        chunks = gemv_row_chunks(g, par, spec)
        if chunks > 1:
            gc = dataclasses.replace(g, m=-(-g.m // chunks))
            one, mem["meshgemv"] = times(gc, spec, rate, par)["meshgemv"], fit_need(gc, par, spec)["meshgemv"]
            t["meshgemv"] = {k: (v * chunks if k != "hops" else v) for k, v in one.items()}
            traffic["meshgemv"] = tuple(chunks * v for v in sram_traffic(gc, par)["meshgemv"])  # type: ignore[assignment]
    sram_bpc = arch.backing.bandwidth_Bps / arch.clock_hz  # one core's SRAM, bytes per cycle
    for a, (reads, writes) in traffic.items():  # a wave cannot beat its SRAM traffic
        t[a]["sram"] = (reads + writes) / sram_bpc
        t[a]["total"] = max(t[a]["total"], t[a]["sram"])
    fits = {k: mem[k] <= fit_room(spec) for k in ALGORITHMS}
    routable = {k: spec.routes_per_core is None or routes[k] <= spec.routes_per_core for k in ALGORITHMS}
    return {"gemv": g, "spec": spec, "region": (w, h), "parallelism": par, "memory": mem,
            "core_bytes": core_bytes(g, par), "routes": routes, "sram_traffic": traffic, "gemv_chunks": chunks,
            "times": t, "fits": fits, "routable": routable}


def gemv_row_chunks(g: Gemv, par: dict[str, int], spec: WaferSpec) -> int:
    """Row chunks MeshGEMV needs for its per-core buffers (the activation rows and their partial
    sums grow with ``m``) to fit the room left: the fewest whose chunk fits, 1 when none does."""
    room = fit_room(spec)
    one, two = (fit_need(dataclasses.replace(g, m=r), par, spec)["meshgemv"] for r in (1, 2))
    per_row = two - one  # the need is linear in the rows
    if one > room or per_row <= 0:
        return 1
    rows = int((room - (one - per_row)) // per_row)
    return -(-g.m // max(rows, 1)) if rows < g.m else 1


def energy_parts(ev: dict[str, Any], a: str, arch: Arch, seconds: float | None = None) -> dict[str, float]:
    """Joules of mapping ``ev`` under algorithm ``a`` by component: the MACs, every core's SRAM
    traffic (:func:`sram_traffic`) at the SRAM level's name, and static power over ``seconds``
    (default: the mapping's waves)."""
    g, par, lv = ev["gemv"], ev["parallelism"], arch.backing
    reads, writes = ev["sram_traffic"][a]
    cores = g.groups * par["p"] ** 2  # every group runs once on its square
    if seconds is None:
        seconds = par["waves"] * ev["times"][a]["total"] / arch.clock_hz
    return {"compute": g.macs * arch.matrix.energy(g.compute) * 1e-12,
            lv.name: cores * (reads * lv.read_energy_pj_per_byte + writes * lv.write_energy_pj_per_byte) * 1e-12,
            "static": arch.static_power_w * seconds}


def _energy_j(ev: dict[str, Any], a: str, arch: Arch) -> float:
    """Joules of mapping ``ev`` under algorithm ``a`` (the sum of :func:`energy_parts`)."""
    return sum(energy_parts(ev, a, arch).values())


def _choose(evs: list[dict[str, Any]], algorithm: str | None, what: str, arch: Arch | None = None,
            objective: str = "latency") -> tuple[dict[str, Any], str]:
    """The (square side, algorithm) of the best mapping under ``objective`` (latency, energy or
    edp; energy needs ``arch``) that fits per-core memory and routing: ``algorithm`` when given,
    else WaferLLM's two (the naive mapping only if neither fits)."""
    def cycles(ev: dict[str, Any], a: str) -> float:
        return ev["parallelism"]["waves"] * ev["times"][a]["total"]

    def total(ev: dict[str, Any], a: str) -> float:
        if objective == "latency" or arch is None:
            return cycles(ev, a)
        e = _energy_j(ev, a, arch)
        return e if objective == "energy" else e * cycles(ev, a)

    spec, widest = evs[0]["spec"], evs[0]  # the widest square holds the least per core
    if algorithm is not None:
        routable = [ev for ev in evs if ev["routable"][algorithm]]
        if not routable:
            raise CapacityError(f"{what}: {algorithm} needs {widest['routes'][algorithm]} routes per core but a router "
                                f"holds {spec.routes_per_core}; use a smaller region or another algorithm")
        fit = [ev for ev in routable if ev["fits"][algorithm]]
        if not fit:
            check_core_memory(min(ev["memory"][algorithm] for ev in routable), spec, f"{what} ({algorithm})")
        return min(fit, key=lambda ev: total(ev, algorithm)), algorithm
    ok = [(ev, a) for ev in evs for a in ALGORITHMS if ev["fits"][a] and ev["routable"][a]]
    pool = [(ev, a) for ev, a in ok if a != "naive"] or ok
    if not pool:
        k = min(ALGORITHMS, key=lambda a: widest["memory"][a])
        if not any(any(ev["fits"].values()) for ev in evs):
            check_core_memory(widest["memory"][k], spec, f"{what} (its smallest-footprint mapping, {k})")
        raise CapacityError(f"{what}: no mapping fits both a core's {fit_room(spec):,.0f} B "
                            f"(needs {widest['memory']}) and the router's {spec.routes_per_core} routes "
                            f"(needs {widest['routes']}); use a smaller region or a device with more routes")
    return min(pool, key=lambda c: total(*c))


def wafer_matmul_cost(op: Op, arch: Arch, launch_s: float = 0.0, region: tuple[int, int] | None = None,
                      algorithm: str | None = None, objective: str = "latency") -> OpCost:
    """Cost of a two-input contraction on a wafer-scale device: over the candidate squares per group
    (:func:`square_sides`), the better under ``objective`` of MeshGEMM and MeshGEMV that fits
    per-core memory and routing (or ``algorithm`` when given). On a placed region
    (``buffer_limit_bytes`` set) a stored matrix keeps the layout the placement reserved: only the
    squares whose stored tiles are no larger than at :func:`stored_square` are tried."""
    algorithm = algorithm or (arch.rules.get("wafer_algorithm") if isinstance(arch.rules, dict) else None)
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise SpecError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    first = evaluate(op, arch, region)
    g, (w, h) = first["gemv"], first["region"]
    sides = square_sides(g, w, h)
    copies = stored_copies(op, g)
    if first["spec"].buffer_limit_bytes is not None and copies:
        # a placed region: the matrix stays where the placement reserved its tiles (its square on the bare region)
        home = stored_square(op, arch, objective, region)
        if home is not None:
            cap = stored_tile_bytes(g, w, h, home, copies)
            sides = [p for p in sides if stored_tile_bytes(g, w, h, p, copies) <= cap]
    evs = [first if p == first["parallelism"]["p"] else evaluate(op, arch, region, p) for p in sides]
    ev, best = _choose(evs, algorithm, f"op {op.name!r}", arch, objective)
    spec, g, par, t = ev["spec"], ev["gemv"], ev["parallelism"], ev["times"]
    clock = arch.clock_hz
    waves = par["waves"]
    cycles = waves * t[best]["total"] + launch_s * clock
    latency = cycles / clock
    comp = waves * t[best]["compute"]
    lv = arch.backing
    reads, writes = ev["sram_traffic"][best]
    sram_bytes = g.groups * par["p"] ** 2 * (reads + writes)  # every group runs once on its square
    energy = energy_parts(ev, best, arch, latency)
    ideal = g.macs / (arch.matrix.rate_per_cycle[g.compute] * arch.matrix.instances)
    detail: dict[str, Any] = {f"{a}_cycles": waves * t[a]["total"] for a in ALGORITHMS}
    detail.update({
        "algorithm": best, "region": ev["region"], "parallelism": par, "core_bytes": ev["core_bytes"],
        "fit_bytes": ev["memory"], "fit_room_bytes": fit_room(spec),
        "core_sram_bytes": spec.core_sram_bytes, "routes": ev["routes"], "hops": {a: t[a]["hops"] for a in ALGORITHMS},
        "compute_cycles": {a: waves * t[a]["compute"] for a in ALGORITHMS},
        "comm_cycles": {a: waves * t[a]["comm"] for a in ALGORITHMS},
        "weight_stream_s": g.groups * g.n * g.k * g.w_bytes / spec.io_bandwidth_Bps,
        "shape": {"groups": g.groups, "m": g.m, "n": g.n, "k": g.k}, "matrix": g.matrix,
    })
    return OpCost(
        cycles=cycles, latency_s=latency, compute_cycles=comp, stall_cycles=max(cycles - comp, 0.0),
        energy_j=float(sum(energy.values())), utilization=ideal / cycles if cycles else 0.0,
        bound=max((("compute", t[best]["compute"]), ("fabric", t[best]["comm"]), (lv.name, t[best]["sram"])),
                  key=lambda kv: kv[1])[0],
        bytes_by_level={lv.name: sram_bytes}, energy_by_component=energy,
        mapping={"algorithm": best, "p": par["p"], "region": list(ev["region"]), "waves": waves,
                 **({"row_chunks": ev["gemv_chunks"]} if best == "meshgemv" and ev["gemv_chunks"] > 1 else {})},
        detail=detail,
    )


#: row allreduces a streaming op needs on a mesh: a norm's sum of squares (mean and variance in one
#: pass of sums), a softmax's running maximum and its sum of exponentials
_REDUCTIONS = {"norm": 1, "softmax": 2}


def allreduce_cycles(p: int, rows: int, spec: WaferSpec, add_rate: float, stat_bytes: float = 4.0) -> float:
    """Cycles of a K-tree allreduce (as MeshGEMV's) of ``rows`` statistics per core along a row of
    ``p`` cores: serial steps of one message and one add, the multicast back, the hop distance twice."""
    phases = ktree_phases(p)
    if not phases:
        return 0.0
    steps = sum(st for st, _ in phases)
    dist = sum(d for _, d in phases)
    msg = _msg(rows * stat_bytes, spec.link_bytes_per_cycle)
    return steps * (msg + rows / add_rate) + msg + 2 * dist * spec.hop_latency_cycles


def wafer_streaming_cost(op: Op, arch: Arch, launch_s: float = 0.0) -> OpCost:
    """A streaming op on the mesh: the SRAM/vector-lane time of :func:`~xpusim.sim.streaming.streaming_cost`
    over every core, plus the row allreduces a reduction needs when its row (the normalised dimension)
    is spread over a row of ``p`` cores (:data:`_REDUCTIONS`; the rows themselves over the other axis)."""
    from ..sim.streaming import _ROW_DIM, streaming_cost, vector_rate

    spec = wafer_spec(arch)  # (refuses a device whose memory is more than the cores' SRAM)
    base = streaming_cost(op, arch, launch_s)
    if base.cycles < 1.0:  # spread over the whole mesh a small op's share per core is a fraction of a cycle: a core
        floor = 1.0 / arch.clock_hz  # still takes a whole cycle (and each core's step is one)
        energy = {**base.energy_by_component, "static": arch.static_power_w * floor}
        base = dataclasses.replace(base, cycles=1.0, latency_s=floor, stall_cycles=1.0 - base.compute_cycles,
                                   utilization=base.compute_cycles, energy_j=float(sum(energy.values())),
                                   energy_by_component=energy)
    n_red = _REDUCTIONS.get(op.kind, 0)
    dim = _ROW_DIM.get(op.kind)
    if not n_red or dim not in op.sizes:
        return base
    p = min(spec.width, spec.height)
    rows = max(1, math.prod(op.sizes.values()) // op.sizes[dim])
    rows_core = _cdiv(rows, p)
    rate, _ = vector_rate(arch, op.output.dtype)
    extra = n_red * allreduce_cycles(p, rows_core, spec, rate)
    cycles = base.cycles + extra
    latency = cycles / arch.clock_hz
    energy = {**base.energy_by_component, "static": arch.static_power_w * latency}
    return OpCost(
        cycles=cycles, latency_s=latency, compute_cycles=base.compute_cycles, stall_cycles=max(cycles - base.compute_cycles, 0.0),
        energy_j=float(sum(energy.values())), utilization=base.compute_cycles / cycles if cycles else 0.0,
        bound="fabric" if extra > base.cycles else base.bound, bytes_by_level=base.bytes_by_level,
        energy_by_component=energy, mapping={"allreduces": n_red, "p": p},
        detail={**base.detail, "allreduce_cycles": extra, "rows_per_core": rows_core},
    )
