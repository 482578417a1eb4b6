"""Cost of a contraction on a bank-level DRAM PIM device (GEMV and small-M GEMM).

The op is seen as ``groups`` independent matrices of ``n`` rows by ``k`` reduction elements (the
operand that lives in DRAM: a weight or the KV cache), each multiplied by ``m`` vectors
(:func:`as_gemv`). The mapping:

* **channels** split the work three ways, ``pg x pn x pk = channels``: groups, matrix rows, and the
  reduction (a K split leaves ``pk`` partial sums per output to be reduced outside the PUs);
* **PUs** of a channel split the channel's rows (``n_u`` rows each); every PU of a channel works on
  the same input chunk, written once per channel into the PUs' input buffers (broadcast), since an
  all-bank PIM command gives every PU the same operand;
* a row of the matrix is stored as its ``k`` elements, chunked by what the input buffer holds
  (``k_chunk`` for ``m_tile`` vectors, or that rounded down to whole column bursts), packed densely
  into the DRAM rows of the PU's banks in the order the PU streams them; one column access brings ``column`` bytes to the PU;
* **M reuse**: each weight burst is used for ``m_tile`` vectors (limited by the input buffer and the
  PU's accumulators); ``ceil(m / m_tile)`` passes stream the matrix again;
* **loop order**: ``chunk`` (input chunk outer; when a PU's rows do not fit its accumulators the
  partial sums are read out after every chunk) or ``row`` (row blocks outer; the input chunks are
  written again for every row block).

Per pass and channel (the most loaded one), with ``b`` banks per PU, ``C`` columns per DRAM row and
``t_col`` the all-bank column period:

* bursts per PU ``B = g_c n_u s`` (``s`` bursts per matrix row), DRAM rows ``R = g_c ceil(n_u s / C)``;
* all-bank mode: one ACT opens a row in every bank, so a PU's rows are opened in ``ceil(R / b)``
  lock-step groups, each exposing ``tRCD + tRP`` (plus the tRRD/tFAW stagger where the device
  cannot activate all banks with one command: every ACT after a group's first waits
  ``max(tRRD, tFAW / 4)``); time ``= groups x (tRCD + tRP) + B x max(t_col,
  t_mac)`` and at least ``groups x (tRAS + tRP)``; ``t_mac = m x burst elements / MACs per cycle
  / PU clock``;
* per-bank mode: one bank computes per column command: at least the all-bank time, ``U x B x
  tCCD_S`` of column commands and ``U x R`` separate ACTs at ``max(tRRD, tFAW/4)`` each;
* IO: input chunks written and partial sums read over the channel's share of the external
  interface (single-buffered: not overlapped with the bank phase), plus the reduction of partial
  sums (lanes without an adder tree, chunks, K splits) on the vector unit;
* the command bus carries one command per ``command_period``; all-bank refresh stretches the time
  by ``1 / (1 - tRFC / tREFI)``.

Every candidate mapping is costed at once with numpy; the fastest is kept (first on ties). The
bound is the largest of the activation, column, compute, IO and command times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..arch.pim import PimSpec, pim_spec
from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import SpecError
from ..sim.cost import OpCost
from ..workloads.einsum import Op

BOUNDS = ("activation", "column", "compute", "io", "command")
ORDERS = ("chunk", "row")


@dataclass(frozen=True)
class Gemv:
    """An op as ``groups`` matrices (``n`` x ``k``) times ``m`` vectors each."""

    groups: int
    m: int
    n: int
    k: int
    w_bytes: float  # bytes per matrix element as stored (scales included)
    x_bytes: float  # bytes per vector element
    acc_bytes: float  # bytes of one partial sum read out of a PU
    compute: str  # compute class the PUs run in
    matrix: str  # name of the operand stored in DRAM

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.n * self.k


#: :func:`as_gemv` memo, keyed by the op's signature and operands and the matrix unit's classes
_GEMV: dict[tuple[Any, ...], Gemv] = {}


def as_gemv(op: Op, arch: Arch) -> Gemv:
    """The matrix operand is the input that lives in DRAM (a weight or the KV cache; else the
    larger input); dims both inputs and the output index are groups, dims only the vector and the
    output index are M, dims only the matrix and the output index are N, summed dims are K.
    Memoised (a wafer placement asks for every op on every candidate region)."""
    unit = arch.matrix
    key = (op.signature(), tuple((t.name, t.role) for t in op.inputs), tuple(sorted(unit.rate_per_cycle.items())),
           tuple(sorted((unit.runs_as or {}).items())), unit.accumulator_bits)
    got = _GEMV.get(key)
    if got is None:
        if len(_GEMV) > 65536:
            _GEMV.clear()
        got = _GEMV[key] = _as_gemv(op, arch)
    return got


def _as_gemv(op: Op, arch: Arch) -> Gemv:
    if op.kind != "matmul" or len(op.inputs) != 2:
        raise SpecError(f"op {op.name!r}: the PIM mapper costs two-input contractions, got a {op.kind} of {len(op.inputs)}")
    a, b = op.inputs
    stored = [t for t in (a, b) if t.role in ("weight", "kv")]
    mat = stored[-1] if stored else max((b, a), key=op.elements)
    vec = a if mat is b else b
    s, out = op.sizes, set(op.output.dims)
    prod = lambda dims: math.prod(s[d] for d in dims)  # noqa: E731
    groups = prod(d for d in op.dim_names if d in out and d in mat.dims and d in vec.dims)
    m = prod(d for d in op.dim_names if d in out and d not in mat.dims)
    n = prod(d for d in op.dim_names if d in out and d in mat.dims and d not in vec.dims)
    k = prod(d for d in op.dim_names if d not in out)
    compute = arch.matrix.resolve(get_dtype(op.compute_dtype).compute)
    bits = arch.matrix.accumulator_bits
    acc = bits / 8 if bits else get_dtype(get_dtype(op.compute_dtype).accum).bytes
    return Gemv(groups, m, n, k, get_dtype(mat.dtype).bytes, get_dtype(vec.dtype).bytes, acc, compute, mat.name)


def _cdiv(a: Any, b: Any) -> Any:
    return -(-np.asarray(a) // np.asarray(b))


def _splits(channels: int) -> np.ndarray:
    """(S, 3) every ordered (groups, rows, k) split of the channels."""
    out = [(g, r, channels // (g * r)) for g in range(1, channels + 1) if channels % g == 0
           for r in range(1, channels // g + 1) if (channels // g) % r == 0]
    return np.array(out, dtype=np.int64)


def candidates(g: Gemv, spec: PimSpec) -> dict[str, np.ndarray]:
    """Every mapping considered: channel split x vectors per pass x loop order x input chunk
    (``align`` 0: as many elements as the input buffer holds; 1: that rounded down to whole column
    bursts of the matrix, so no chunk pads its last burst) (flat arrays)."""
    split = _splits(spec.channels)
    mt = np.arange(1, min(g.m, spec.accumulators) + 1, dtype=np.int64)
    order = np.arange(len(ORDERS), dtype=np.int64)
    align = np.arange(2, dtype=np.int64)
    i, j, o, a = (x.ravel() for x in np.meshgrid(np.arange(len(split)), np.arange(len(mt)), order, align, indexing="ij"))
    return {"pg": split[i, 0], "pn": split[i, 1], "pk": split[i, 2], "m_tile": mt[j], "order": o, "align": a}


def counts(g: Gemv, spec: PimSpec, lanes: float, plan: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-pass counts of the most loaded channel and PU for each candidate ``plan`` (arrays):
    the layout (``k_chunk``, ``chunks``, ``bursts_per_row``, ``rows_per_pu``...), and the bytes
    written into and read out of a channel for a full pass (``m_tile`` vectors)."""
    pg, pn, pk, mt, order = (np.asarray(plan[k], dtype=np.int64) for k in ("pg", "pn", "pk", "m_tile", "order"))
    cb, C, U, b = spec.column_bytes, spec.row_columns, spec.pu_per_channel, spec.banks_per_pu
    g_c, n_c, k_c = _cdiv(g.groups, pg), _cdiv(g.n, pn), _cdiv(g.k, pk)
    cap = np.floor(spec.input_buffer_bytes / (mt * g.x_bytes)).astype(np.int64)  # input elements per vector
    valid = cap >= 1
    # the fewest elements that fill whole column bursts (element bytes may be fractional: group-scaled int4)
    per_burst = (Fraction(cb) / Fraction(g.w_bytes).limit_denominator(1 << 20)).numerator
    aligned = np.where(cap >= per_burst, cap // per_burst * per_burst, cap)  # whole bursts where one fits
    align = np.asarray(plan.get("align", np.zeros_like(mt)), dtype=np.int64)
    kc = np.minimum(k_c, np.maximum(np.where(align == 1, aligned, cap), 1))
    chunks = _cdiv(k_c, kc)
    last = k_c - (chunks - 1) * kc
    s = (chunks - 1) * np.ceil(kc * g.w_bytes / cb) + np.ceil(last * g.w_bytes / cb)
    n_u = _cdiv(n_c, U)
    rows_per_group = np.ceil(n_u * s / C)
    rb = np.maximum(spec.accumulators // mt, 1)  # matrix rows a PU accumulates at once
    blocks = _cdiv(n_u, rb)
    rewrite = np.where((order == 1) & (chunks > 1), blocks, 1)  # row order: chunks written per row block
    spill = np.where((order == 0) & (blocks > 1), chunks, 1)  # chunk order: partial sums read per chunk
    # without an adder tree each lane keeps a partial sum, but only as many lanes as one column burst
    # feeds operands to can be busy
    partials = 1.0 if spec.adder_tree else float(min(lanes, max(1.0, cb / g.w_bytes)))
    return {
        "valid": valid, "g_c": g_c, "n_c": n_c, "k_c": k_c, "k_chunk": kc, "chunks": chunks, "bursts_per_row": s,
        "n_u": n_u, "row_block": rb, "bursts_per_pu": g_c * n_u * s, "rows_per_pu": g_c * rows_per_group,
        "act_groups": g_c * np.ceil(rows_per_group / b), "input_writes": rewrite, "readouts": spill,
        "input_bytes": g_c * k_c * rewrite * g.x_bytes,  # per vector
        "output_bytes": g_c * n_c * spill * partials * g.acc_bytes,  # per vector
        "partials_per_output": pk * spill * partials,
    }


def _phase_times(g: Gemv, spec: PimSpec, c: dict[str, np.ndarray], m: np.ndarray, rate: float, pu_hz: float,
                 vec_flops_s: float, bw_channel: float) -> dict[str, np.ndarray]:
    """Seconds of one pass with ``m`` vectors: each bound's time and the pass total."""
    U = spec.pu_per_channel
    B, R, G = c["bursts_per_pu"], c["rows_per_pu"], c["act_groups"]
    t_mac = m * (spec.column_bytes / g.w_bytes) / rate / pu_hz  # one burst's MACs for m vectors
    comp = B * t_mac
    rrd = max(spec.tRRD, spec.tFAW / 4)
    io_bytes = m * (c["input_bytes"] + c["output_bytes"])
    adds = np.maximum(c["partials_per_output"] - 1, 0) * g.groups * g.n * m  # reduction outside the PUs
    io = io_bytes / bw_channel + adds / vec_flops_s
    # a PU's banks open their rows together (G groups), each exposing tRCD + tRP, and stay open >= tRAS
    # without all-bank activation every ACT after a group's first waits max(tRRD, tFAW/4): U x R ACTs
    # per channel in G groups (a group opens the banks that hold its rows, not every bank of the PU)
    staggered = not spec.all_bank_activate and spec.mode == "all_bank"
    stagger = np.maximum(U * R - G, 0) * rrd if staggered else 0.0
    col = B * spec.column_period
    act = G * (spec.tRCD + spec.tRP) + stagger
    stream = np.maximum(col, comp)
    act = act + np.maximum(G * (spec.tRAS + spec.tRP) - (act + stream), 0.0)
    bank = act + stream
    if spec.mode == "all_bank":
        n_cmd = 2 * (G if spec.all_bank_activate else U * R) + B  # ACT + PRE per opened row, one column command per burst
    else:  # one bank per column command: the channel's commands serialise over its PUs; one ACT per bank row
        col = np.maximum(col, U * B * spec.tCCD_S)
        act = np.maximum(act, U * R * rrd)
        bank = np.maximum(bank, np.maximum(col, act))
        n_cmd = 2 * U * R + U * B
    n_cmd = n_cmd + np.ceil(io_bytes / spec.column_bytes)
    cmd = n_cmd * spec.command_period
    return {"activation": act, "column": col, "compute": comp, "io": io, "command": cmd, "banks_io": bank + io,
            "total": np.maximum(bank + io, cmd)}


def evaluate(g: Gemv, arch: Arch, plan: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Counts and whole-op times (seconds, refresh included) of candidate mappings."""
    spec = pim_spec(arch)
    rate = arch.matrix.rate_per_cycle[g.compute]
    c = counts(g, spec, rate, plan)
    mt = np.asarray(plan["m_tile"], dtype=np.int64)
    full, rem = g.m // mt, g.m % mt
    vec = arch.vector.fp32_rate()
    args = (rate, arch.matrix_clock_hz, vec * arch.vector.instances * arch.vector_clock_hz,
            arch.backing.bandwidth_Bps * arch.backing.instances / spec.channels)
    tf, tr = _phase_times(g, spec, c, mt, *args), _phase_times(g, spec, c, np.maximum(rem, 1), *args)
    times = {k: (full * tf[k] + np.where(rem > 0, tr[k], 0.0)) * spec.refresh_factor for k in tf}
    times["total"] = np.where(c["valid"], times["total"], np.inf)
    c["passes"] = full + (rem > 0)
    return c, times


def _bound(times: dict[str, np.ndarray], i: int) -> str:
    """``command`` when the command bus outlasts the banks and the IO, else the largest of the other
    times (ties go to the earlier of activation, column, compute, io)."""
    if float(times["command"][i]) > float(times["banks_io"][i]):
        return "command"
    top = max(float(times[k][i]) for k in BOUNDS[:-1])
    return next(k for k in BOUNDS[:-1] if float(times[k][i]) >= top * (1 - 1e-9))


def plan_of(plan: dict[str, np.ndarray], c: dict[str, np.ndarray], i: int, spec: PimSpec) -> dict[str, Any]:
    """The chosen mapping as plain values (what ``workloads/functional/pim.py`` executes)."""
    return {"split": {"groups": int(plan["pg"][i]), "rows": int(plan["pn"][i]), "k": int(plan["pk"][i])},
            "m_tile": int(plan["m_tile"][i]), "k_chunk": int(c["k_chunk"][i]), "row_block": int(c["row_block"][i]),
            "order": ORDERS[int(plan["order"][i])], "mode": spec.mode, "pus_per_channel": spec.pu_per_channel,
            "banks_per_pu": spec.banks_per_pu, "row_columns": spec.row_columns, "column_bytes": spec.column_bytes}


def pim_matmul_cost(op: Op, arch: Arch, launch_s: float = 0.0) -> OpCost:
    """Cost of a two-input contraction on a PIM device under its fastest mapping."""
    spec = pim_spec(arch)
    g = as_gemv(op, arch)
    plan = candidates(g, spec)
    c, times = evaluate(g, arch, plan)
    i = int(np.argmin(times["total"]))
    if not np.isfinite(times["total"][i]):
        raise SpecError(f"device {arch.name!r}: the PU input buffer ({spec.input_buffer_bytes} B) cannot hold one element "
                        f"of op {op.name!r}'s vector; give pim.pu.input_buffer at least {g.x_bytes:g} B")
    clock = arch.clock_hz
    latency = float(times["total"][i]) + launch_s
    cycles = latency * clock
    comp = float(times["compute"][i]) * clock
    passes = int(c["passes"][i])
    written = g.m * spec.channels * float(c["input_bytes"][i])  # input vectors into the PUs' buffers
    read_out = g.m * spec.channels * float(c["output_bytes"][i])  # partial sums out of the PUs
    io_bytes = written + read_out
    internal = passes * g.groups * g.n * g.k * g.w_bytes
    lv = arch.backing
    inside = (8.0 * spec.internal_read_energy_pj_per_bit if spec.internal_read_energy_pj_per_bit is not None
              else lv.read_energy_pj_per_byte)
    energy = {"compute": g.macs * arch.matrix.energy(g.compute) * 1e-12,
              lv.name: (internal * inside + written * lv.write_energy_pj_per_byte
                        + read_out * lv.read_energy_pj_per_byte) * 1e-12,
              "static": arch.static_power_w * latency}
    ideal = g.macs / (arch.matrix.rate_per_cycle[g.compute] * arch.matrix.instances * arch.matrix_clock_hz)
    streamed = (g.groups * g.n * g.k * g.w_bytes + g.groups * g.m * (g.k * g.x_bytes + g.n * g.acc_bytes)) / (
        lv.bandwidth_Bps * lv.instances)
    detail: dict[str, Any] = {f"{k}_s": float(times[k][i]) for k in BOUNDS}
    detail.update({
        "passes": passes, "refresh_factor": spec.refresh_factor, "matrix": g.matrix,
        "shape": {"groups": g.groups, "m": g.m, "n": g.n, "k": g.k},
        "bursts_per_pu": float(c["bursts_per_pu"][i]), "rows_per_pu": float(c["rows_per_pu"][i]),
        "activations_per_channel": float(c["act_groups"][i] if spec.mode == "all_bank" and spec.all_bank_activate
                                         else c["rows_per_pu"][i] * spec.pu_per_channel),
        "input_bytes_per_channel": float(g.m * c["input_bytes"][i]),
        "output_bytes_per_channel": float(g.m * c["output_bytes"][i]),
        "internal_bandwidth_Bps": spec.internal_bandwidth(), "streamed_s": streamed,
        "mappings_evaluated": int(len(times["total"])),
    })
    return OpCost(
        cycles=cycles, latency_s=latency, compute_cycles=comp, stall_cycles=max(cycles - comp, 0.0),
        energy_j=float(sum(energy.values())), utilization=ideal / latency if latency else 0.0, bound=_bound(times, i),
        bytes_by_level={lv.name: internal + io_bytes}, energy_by_component=energy, mapping=plan_of(plan, c, i, spec),
        detail=detail,
    )
