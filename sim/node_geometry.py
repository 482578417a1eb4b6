"""Geometry of the ranks of one node of a :class:`~xpusim.arch.system.System`, for the collectives:
the block ``r`` contiguous ranks occupy on a switch, fully connected, PCIe, ring, torus or mesh
fabric, their coordinates (dimension-major and boustrophedon orders), hop distances, and the
per-device bandwidth of each traffic pattern (``docs/systems.md``, per-device bandwidth by topology).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..arch.system import System


@dataclass(frozen=True)
class Node:
    """The fabric of one node as seen by ``r`` contiguous ranks."""

    topo: str
    B: float          # link (port) bandwidth per direction
    r: int            # ranks in the node
    N: int            # devices in the node
    shape: tuple[int, ...]   # extents of the ranks' block per dimension (torus/mesh/ring)
    phys: tuple[int, ...]    # physical dims
    wrap: tuple[bool, ...]   # whether each dim has a wrap-around link (torus or ring, size >= 3)
    root: float = math.inf   # PCIe root complex bandwidth

    # coordinates of rank i (dimension-major order) within the sub-block
    def coords(self, i: int) -> tuple[int, ...]:
        out = []
        for s in self.shape:
            out.append(i % s)
            i //= s
        return tuple(out)

    def snake(self, i: int) -> tuple[int, ...]:
        """Coordinates of rank i in boustrophedon order: consecutive ranks are neighbours (the order a
        library lays a ring or a shift on a torus or mesh in)."""
        out = []
        block = 1
        for s in self.shape:
            d = (i // block) % s
            if (i // (block * s)) % 2:
                d = s - 1 - d
            out.append(d)
            block *= s
        return tuple(out)

    def dist(self, i: int, j: int, snake: bool = False) -> int:
        """Hops between ranks i and j (1 on a switch, fully connected or PCIe fabric)."""
        if self.topo in ("switch", "fully_connected", "pcie"):
            return 0 if i == j else 1
        d = 0
        ci, cj = (self.snake(i), self.snake(j)) if snake else (self.coords(i), self.coords(j))
        for a, b, w, p in zip(ci, cj, self.wrap, self.phys, strict=True):
            k = abs(a - b)
            d += min(k, p - k) if w else k
        return d

    def diameter(self) -> int:
        if self.topo in ("switch", "fully_connected", "pcie"):
            return 1 if self.r > 1 else 0
        return sum(min(s - 1, p // 2) if w else s - 1 for s, w, p in zip(self.shape, self.wrap, self.phys, strict=True))

    def ring_steps(self) -> int:
        """Hops of one ring phase: ``r - 1``; on a torus or mesh ``sum_i (s_i - 1)`` (the rings run in
        every dimension at once)."""
        if self.topo in ("torus", "mesh"):
            return sum(s - 1 for s in self.shape)
        return self.r - 1

    def ring_bw(self) -> float:
        """Per-device bandwidth of (bidirectional, multi-dimensional) logical rings over the ranks."""
        if self.r < 2:  # a lone rank in its node moves nothing over intra links
            return math.inf
        if self.topo == "switch":
            return self.B
        if self.topo == "fully_connected":
            return self.B * (self.r - 1) / (self.N - 1)
        if self.topo == "pcie":
            return min(self.B, self.root / self.r)
        return sum(self.B * (2.0 if w else 1.0) for s, w in zip(self.shape, self.wrap, strict=True) if s >= 2)

    def p2p_bw(self) -> float:
        """Bandwidth of one device towards one peer."""
        if self.r < 2:
            return math.inf
        if self.topo == "fully_connected":
            return self.B / (self.N - 1)
        if self.topo == "pcie":
            return min(self.B, self.root / self.r)
        return self.B

    def tree_bw(self) -> float:
        if self.r < 2:
            return math.inf
        if self.topo == "fully_connected":
            return self.B * min(self.r - 1, 2) / (self.N - 1)
        return self.p2p_bw()

    def uniform(self, v: float) -> tuple[float, float]:
        """Every rank sends ``v`` bytes to every other rank: (time at full link speed, total byte-hops)."""
        r = self.r
        if r < 2 or v <= 0:
            return 0.0, 0.0
        if self.topo == "switch":
            return (r - 1) * v / self.B, r * (r - 1) * v
        if self.topo == "fully_connected":
            return v * (self.N - 1) / self.B, r * (r - 1) * v
        if self.topo == "pcie":
            return max((r - 1) * v / self.B, r * (r - 1) * v / self.root), r * (r - 1) * v
        # direct networks: injection (link-load / link-capacity) and bisection bounds
        mean_all = 0.0
        ports = 0.0
        t_bis = 0.0
        for s, w, p in zip(self.shape, self.wrap, self.phys, strict=True):
            if s < 2:
                continue
            # mean hop distance over all pairs of positions 0..s-1 (through the wrap-around when it is shorter)
            mean_all += sum(min(abs(a - b), p - abs(a - b)) if w else abs(a - b) for a in range(s) for b in range(s)) / (s * s)
            ports += 2.0 if w else 2.0 * (s - 1) / s
            c = 2.0 if w else 1.0
            t_bis = max(t_bis, (r * r / 4.0) * v / ((r / s) * c * self.B))
        hops = mean_all * r / (r - 1)
        t_inj = (r - 1) * v * hops / (ports * self.B)
        return max(t_inj, t_bis), r * (r - 1) * v * hops

    def exchange(self, shift: int | None, xor: int | None, m: float, bw: float) -> tuple[float, float]:
        """Every rank sends ``m`` bytes to its partner (i XOR xor, or i + shift mod r): time at full
        speed (the longest path's link carries that many flows) and byte-hops."""
        if m <= 0 or self.r < 2:
            return 0.0, 0.0
        worst, total = 0, 0
        for i in range(self.r):
            j = (i ^ xor) if xor is not None else (i + (shift or 0)) % self.r
            if j >= self.r:
                continue
            d = self.dist(i, j, snake=xor is None)
            worst = max(worst, d)
            total += d
        return m * worst / bw, m * total


def block_shape(dims: tuple[int, ...], r: int) -> tuple[int, ...]:
    """Extents of the smallest block (dimension-major) that holds r contiguous devices; a ring or a
    shift over ranks that do not fill it is routed through its idle devices."""
    out = []
    rem = r
    for d in dims:
        if rem <= 1:
            out.append(1)
        elif rem >= d:
            out.append(d)
            rem = -(-rem // d)
        else:
            out.append(rem)
            rem = 1
    return tuple(out)


def node_geometry(system: System, r: int) -> Node:
    topo, B, N = system.intra_topology, system.intra.bandwidth_Bps, system.devices_per_node
    root = float(system.meta.get("root_Bps", B)) if topo == "pcie" else math.inf
    if topo in ("switch", "fully_connected", "pcie"):
        return Node(topo, B, r, N, (r,), (N,), (False,), root)
    phys = (N,) if topo == "ring" else tuple(system.dims)
    wrap_ok = topo in ("ring", "torus")
    shape = block_shape(phys, r)
    # a torus dimension of 3 or more closes through its wrap-around link, also for a block that does not
    # fill it (through the idle devices); along a dimension of 2 both neighbours are one device
    wrap = tuple(wrap_ok and p >= 3 for p in phys)
    return Node(topo, B, r, N, shape, phys, wrap, root)
