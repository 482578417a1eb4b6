"""Cost of mapped contractions on the hierarchy: cycles, energy, bound, for many candidates at once.

cycles = max(compute cycles + first fill, transfer cycles of every level) + access latencies, where a
level's transfer cycles are its bytes (reads + writes) over the bandwidth of the instances in use
(double buffering overlaps transfers with compute; a level that is not double-buffered adds its
transfer cycles to compute instead), and the first fill is the first tile of every input into each
on-chip level, which compute waits for. The prologue reported is the latencies plus the first fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch.spec import Arch
from ..dtypes import get_dtype
from .compute import STATIONARY, compute_cycles, lanes
from .nest import analyse, busiest_lane_steps
from .problem import Problem


@dataclass
class OpCost:
    """Cost of one op on one device.

    ``cycles`` at the device clock; ``bytes_by_level``: bytes read + written per memory level;
    ``energy_by_component``: joules per component (``compute``, each level, ``static``);
    ``bound``: ``compute`` or the name of the limiting memory level; ``utilization``: ideal compute
    cycles over cycles.
    """

    cycles: float
    latency_s: float
    compute_cycles: float
    stall_cycles: float
    energy_j: float
    utilization: float
    bound: str
    bytes_by_level: dict[str, float]
    energy_by_component: dict[str, float]
    mapping: dict | None = None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "cycles": self.cycles, "latency_s": self.latency_s, "compute_cycles": self.compute_cycles,
            "stall_cycles": self.stall_cycles, "energy_j": self.energy_j, "utilization": self.utilization,
            "bound": self.bound, "bytes_by_level": self.bytes_by_level,
            "energy_by_component": self.energy_by_component, "mapping": self.mapping,
        }


@dataclass
class LevelArrays:
    """Per-level device parameters as arrays (L,)."""

    bw_bytes_per_cycle: np.ndarray
    capacity: np.ndarray
    latency_cycles: np.ndarray
    read_pj: np.ndarray
    write_pj: np.ndarray
    multicast: np.ndarray
    double_buffer: np.ndarray

    @classmethod
    def of(cls, arch: Arch) -> LevelArrays:
        f = arch.clock_hz
        m = arch.memory
        return cls(
            np.array([lv.bandwidth_Bps / f for lv in m]),
            np.array([lv.capacity_bytes for lv in m]),
            np.array([lv.latency_s * f for lv in m]),
            np.array([lv.read_energy_pj_per_byte for lv in m]),
            np.array([lv.write_energy_pj_per_byte for lv in m]),
            np.array([lv.multicast for lv in m]),
            np.array([lv.double_buffer for lv in m]),
        )


def kernel_energy(arch: Arch, macs: float, compute: str, moved: dict[str, float], latency_s: float) -> dict[str, float]:
    """Energy (J) by component of a kernel that performs ``macs`` and moves ``moved`` bytes per level
    (half reads, half writes): MACs, each level, and static power over ``latency_s``."""
    energy = {"compute": macs * arch.matrix.energy(compute) * 1e-12}
    for lv in arch.memory:
        b = moved.get(lv.name, 0.0)
        energy[lv.name] = b * 0.5 * (lv.read_energy_pj_per_byte + lv.write_energy_pj_per_byte) * 1e-12
    energy["static"] = arch.static_power_w * latency_s
    return energy


def footprint(prob: Problem, tiles: np.ndarray, keep: np.ndarray, level: int) -> np.ndarray:
    """(C, T) bytes of each tensor's tile held by one instance of ``level`` (outputs as partial sums)."""
    per_elem = np.append(prob.elem_bytes[:-1], prob.acc_bytes) * keep[level]  # (T,) zero where not stored
    held = np.where(prob.rel[None, :, :], tiles[:, level, None, :], 1).prod(axis=2)  # (C, T) elements
    return held * per_elem


def operand_names(prob: Problem) -> list[str]:
    """The operand role of each tensor: first input ``ifmap``, second ``filter``, output ``ofmap``
    (further inputs are streamed like the first)."""
    T = prob.n_tensors
    return ["ofmap" if t == T - 1 else ("filter" if t == 1 else "ifmap") for t in range(T)]


def keep_mask(prob: Problem, arch: Arch) -> np.ndarray:
    """(L, T) which levels store which tensors, from each level's ``serves`` (all when unset)."""
    names = operand_names(prob)
    return np.array([[lv.serves is None or n in lv.serves for n in names] for lv in arch.memory], dtype=bool)


def fits(prob: Problem, arch: Arch, tiles: np.ndarray, keep: np.ndarray, level: int) -> np.ndarray:
    """(C,) whether every candidate's tiles fit ``level`` (double-buffered where the level is)."""
    return bytes_fit(prob, arch, footprint(prob, tiles, keep, level), level)


def bytes_fit(prob: Problem, arch: Arch, held: np.ndarray, level: int) -> np.ndarray:
    """(C,) whether ``held`` (C, T) bytes of each tensor in one instance of ``level`` fit it: doubled where
    the level double-buffers, against each operand's partition where it has them."""
    lv = arch.memory[level]
    fp = held * (2.0 if lv.double_buffer else 1.0)
    if lv.partitions:
        ok = np.ones(held.shape[0], dtype=bool)
        per_part: dict[str, np.ndarray] = {}
        for t, name in enumerate(operand_names(prob)):
            per_part[name] = per_part.get(name, 0.0) + fp[:, t]
        for name, used in per_part.items():
            ok &= used <= lv.partitions.get(name, 0.0)  # an operand without a partition cannot be held here
        return ok
    return fp.sum(axis=1) <= lv.capacity_bytes


@dataclass
class NestCosts:
    """Costs of C candidate mappings (arrays of shape (C,) unless noted)."""

    cycles: np.ndarray
    compute: np.ndarray
    level_cycles: np.ndarray  # (C, L)
    prologue: np.ndarray
    energy_pj: np.ndarray
    level_energy_pj: np.ndarray  # (C, L)
    reads: np.ndarray
    writes: np.ndarray
    padded: np.ndarray  # (C,) bool: remainder chunks counted as full (an upper bound; see analyse)


def evaluate(prob: Problem, arch: Arch, tiles: np.ndarray, spatial: np.ndarray, order: np.ndarray,
             keep: np.ndarray, levels: LevelArrays | None = None,
             exact: bool = True) -> NestCosts:
    """Cost of every candidate mapping (arrays as in :func:`xpusim.sim.nest.analyse`)."""
    lv = levels or LevelArrays.of(arch)
    tr = analyse(prob, tiles, spatial, order, keep, lv.multicast, exact, forward_leaf=arch.matrix.array is not None)
    L = len(arch.memory)
    used = tr.used[:, :L]
    level_cycles = (tr.reads + tr.writes) / (lv.bw_bytes_per_cycle[None, :] * used)
    # MAC lanes without an array take one leaf step per cycle: count the busiest lane's exactly
    steps = busiest_lane_steps(tiles, spatial) if arch.matrix.array is None else tr.steps
    stationary = tr.fills[:, STATIONARY[arch.matrix.dataflow or "ws"], L] if arch.matrix.array is not None else None
    comp = compute_cycles(arch, prob, tiles, steps, spatial, stationary) * (
        arch.clock_hz / arch.matrix_clock_hz)
    # prologue: one access latency per level plus the first tile of every input into each level,
    # which compute waits for (the levels' own transfer time already holds those bytes); every
    # instance of the level in use under one parent loads its own first tile through the parent,
    # one copy per distinct tile where the parent multicasts
    first = np.zeros(tiles.shape[0])
    inputs = prob.rel[:-1]  # (T-1, D)
    for c in range(1, L):
        fp = footprint(prob, tiles, keep, c)[:, :-1]  # (C, T-1) bytes of one instance
        active = np.minimum(spatial[:, c - 1, :], -(-tiles[:, c - 1, :] // tiles[:, c, :]))  # (C, D) children in use
        shared = inputs if lv.multicast[c - 1] else np.ones_like(inputs)
        copies = np.where(shared[None, :, :], active[:, None, :], 1).prod(axis=2)  # (C, T-1)
        first += (fp * copies).sum(axis=1) / lv.bw_bytes_per_cycle[c - 1]
    prologue = lv.latency_cycles.sum() + first
    # a level that is not double-buffered cannot refill while compute reads it: its transfers add to compute
    serial = (level_cycles * ~lv.double_buffer[None, :]).sum(axis=1)
    cycles = np.maximum(comp + first + serial, level_cycles.max(axis=1)) + lv.latency_cycles.sum()
    level_e = tr.reads * lv.read_pj[None, :] + tr.writes * lv.write_pj[None, :]
    mac_e = arch.matrix.energy(get_dtype(prob.compute_dtype).compute) * prob.macs
    return NestCosts(cycles, comp, level_cycles, prologue, level_e.sum(axis=1) + mac_e, level_e, tr.reads, tr.writes,
                     tr.padded)


def ideal_compute_cycles(arch: Arch, prob: Problem) -> float:
    """MACs over the device's peak MAC rate (cycles at the device clock)."""
    per_cycle = lanes(arch, get_dtype(prob.compute_dtype).compute) * arch.memory[-1].instances
    return prob.macs / per_cycle * (arch.clock_hz / arch.matrix_clock_hz)
