"""Collective communication on a :class:`~xpusim.arch.system.System`: all-reduce, all-gather,
reduce-scatter, all-to-all and send/recv, by ring, tree, recursive halving/doubling, hierarchical,
direct (one-shot) and in-switch (NVLink SHARP, ``nvls``) algorithms, under an alpha-beta model with
NCCL's three protocols.

The time of an algorithm ``a`` run with protocol ``p`` is (the form of NCCL's own tuner,
``src/graph/tuning.cc``: ``latency + bytes / bandwidth`` per algorithm and protocol)::

    t(a, p) = base_p + steps_intra(a) * alpha_intra + steps_inter(a) * alpha_inter
              + bandwidth_term(a)   with link bandwidths scaled by efficiency_p

``alpha`` is the per-hop latency of a link (system YAML); ``steps`` counts the message hops on the
critical path; the bandwidth term is the data the busiest port (or the bisection, or a node's
NICs) must carry divided by its bandwidth, taken over the phases of the algorithm (pipelined
phases: the slowest sets the rate; sequential steps: summed). The protocols are NCCL's: ``ll``
(cheap to start, low achievable bandwidth), ``ll128`` (near-bulk bandwidth at a low start-up cost;
NCCL enables it only on NVLink fabrics, here the ``switch`` and ``fully_connected`` topologies) and
``simple`` (bulk). Their ``base`` latency and bandwidth ``efficiency`` are the fitted rules of a
system (written by ``validation/fit_nccl.py`` into the DGX A100 preset; systems without their own
rules use those). ``nvls`` reduces in the switch (systems whose intra fabric declares
``in_switch_reduction``) and runs the ``simple`` protocol only, as in NCCL. When no algorithm is
named, the cheapest (algorithm, protocol) for the size, topology and rank count is taken, as NCCL's
tuner does. Formulas per algorithm and topology are in ``docs/systems.md``.

``nbytes`` follows nccl-tests: all_reduce the buffer per rank, all_gather the output per rank,
reduce_scatter the input per rank, all_to_all the bytes each rank sends (and keeps), send_recv the
bytes sent. Ranks are placed contiguously, filling a node before the next. :func:`send_time` costs
the one-way sends of a pipeline stage boundary at the devices they join.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..arch.system import System, load_system
from ..errors import SpecError
from ..units import parse_quantity
from .node_geometry import Node, node_geometry

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
# direct: one-shot over a switch/all-to-all; nvls: NVLink SHARP, reduction and multicast in the switch
ALGORITHMS = ("ring", "tree", "halving_doubling", "hierarchical", "direct", "nvls")
PROTOCOLS = ("ll", "ll128", "simple")
#: algorithms that implement each kind (nvls: as NCCL >= 2.18, all-reduce, all-gather and reduce-scatter)
VALID: dict[str, tuple[str, ...]] = {
    "all_reduce": ("ring", "tree", "halving_doubling", "hierarchical", "direct", "nvls"),
    "all_gather": ("ring", "halving_doubling", "hierarchical", "direct", "nvls"),
    "reduce_scatter": ("ring", "halving_doubling", "hierarchical", "direct", "nvls"),
    "all_to_all": ("direct", "ring", "halving_doubling", "hierarchical"),
    "send_recv": ("direct",),
}
#: achievable fraction of a NIC's line rate: 24 GB/s per 200 Gb/s (25 GB/s) NIC, the peak NCCL
#: reaches (S. Jeaugey, NVIDIA, github.com/NVIDIA/nccl-tests/issues/119)
NET_EFFICIENCY = 24.0 / 25.0
#: the system whose preset carries the fitted rules every other system uses
CALIBRATION_SYSTEM = "dgx-a100"
#: NVLink fabrics, the only ones NCCL enables LL128 on ("Enable LL128 by default only on
#: Volta/Ampere/Hopper+NVLink", NVIDIA/nccl src/graph/tuning.cc, v2.20.3)
LL128_TOPOLOGIES = ("switch", "fully_connected")
#: NVLS algorithm bandwidth over the bandwidth its channels claim on each port: NCCL's tuner,
#: ``ratio *= 5.0/6.0`` for NCCL_ALGO_NVLS (NVIDIA/nccl src/graph/tuning.cc, v2.20.3)
NVLS_EFFICIENCY = 5.0 / 6.0
#: the protocols each algorithm runs (NCCL: NVLS is Simple only)
ALGO_PROTOCOLS: dict[str, tuple[str, ...]] = {"nvls": ("simple",)}


@dataclass(frozen=True)
class CollectiveCost:
    """``time_s`` of the collective; ``algorithm`` used; ``algbw_Bps`` = nbytes / time;
    ``busbw_Bps`` = algbw x :func:`bus_factor` (nccl-tests); ``energy_j`` of the bytes moved over
    links (device energy while waiting is not included); ``protocol`` used."""

    time_s: float
    algorithm: str
    algbw_Bps: float
    busbw_Bps: float
    energy_j: float
    protocol: str = ""


@dataclass(frozen=True)
class Protocol:
    base_latency_s: float = 0.0
    efficiency: float = 1.0


@dataclass(frozen=True)
class CollectiveRules:
    """Fitted constants: per protocol, a fixed latency per collective and the achievable fraction of
    the intra-node link bandwidth. Without rules: the ideal alpha-beta model (every protocol ideal)."""

    protocols: tuple[tuple[str, Protocol], ...] = tuple((p, Protocol()) for p in PROTOCOLS)

    def protocol(self, name: str) -> Protocol:
        return dict(self.protocols)[name]

    def names(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.protocols)


def bus_factor(kind: str, ranks: int) -> float:
    """nccl-tests' bus-bandwidth factor: all_reduce 2(n-1)/n; all_gather, reduce_scatter and
    all_to_all (n-1)/n; send_recv 1."""
    _check_kind(kind)
    n = _check_int(ranks, "ranks")
    if kind == "send_recv":
        return 1.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


def parse_rules(rules: Any, where: str = "system rules") -> CollectiveRules:
    """Parse a ``rules:`` section of a system preset (as written by ``validation/fit_nccl.py``). The
    protocols listed are the ones used, each with both constants; ``simple`` must be among them (it is
    the NICs' reference) and no protocol may be more efficient than it."""
    if rules is None:
        return CollectiveRules()
    if not isinstance(rules, dict):
        raise SpecError(f"{where}: must be a mapping with protocols: {{ll: ..., ll128: ..., simple: ...}}")
    unknown = sorted(str(k) for k in set(rules) - {"protocols", "fitted_by", "fit_error"})
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: fitted_by, fit_error, protocols")
    protos = rules.get("protocols")
    if not isinstance(protos, dict) or not protos:
        state = "missing; it" if protos is None else "it"
        raise SpecError(f"{where}.protocols: {state} must map {', '.join(PROTOCOLS)} to {{base_latency, efficiency}}")
    unknown = sorted(str(k) for k in set(protos) - set(PROTOCOLS))
    if unknown:
        raise SpecError(f"{where}.protocols: unknown protocol(s) {unknown}; use {', '.join(PROTOCOLS)}")
    if "simple" not in protos:
        raise SpecError(f"{where}.protocols: missing 'simple' (the bulk protocol every algorithm can run)")
    out = []
    for p in PROTOCOLS:
        if p not in protos:
            continue
        d = protos[p]
        if not isinstance(d, dict) or set(d) != {"base_latency", "efficiency"}:
            raise SpecError(f"{where}.protocols.{p}: must be a mapping with base_latency and efficiency, got {d!r}")
        base = parse_quantity(d["base_latency"], "seconds", f"{where}.protocols.{p}.base_latency")
        eff = d["efficiency"]
        if isinstance(eff, bool) or not isinstance(eff, int | float) or not 0 < eff <= 1:
            raise SpecError(f"{where}.protocols.{p}.efficiency: must be a fraction in (0, 1], got {eff!r}")
        if not base >= 0 or not math.isfinite(base):
            raise SpecError(f"{where}.protocols.{p}.base_latency: must be a finite time >= 0")
        out.append((p, Protocol(base, float(eff))))
    simple = dict(out)["simple"].efficiency
    for p, proto in out:  # the NICs run at eff_p / eff_simple of their achievable rate: never above it
        if proto.efficiency > simple:
            raise SpecError(f"{where}.protocols.{p}.efficiency: {proto.efficiency} exceeds simple's {simple}; "
                            "no protocol moves bulk data faster than the bulk protocol")
    return CollectiveRules(tuple(out))


@lru_cache(maxsize=1)
def _calibrated() -> CollectiveRules:
    try:
        sysm = load_system(CALIBRATION_SYSTEM)
    except SpecError:  # pragma: no cover - the shipped preset is tested
        return CollectiveRules()
    return parse_rules(sysm.meta.get("rules"), f"system {CALIBRATION_SYSTEM!r} rules")


def system_rules(system: System) -> CollectiveRules:
    """The rules a system's collectives use: its own, else the calibration system's."""
    if system.meta.get("rules") is not None:
        return parse_rules(system.meta["rules"], f"system {system.name!r} rules")
    return _calibrated()


# --------------------------------------------------------------------------------------------
# checks


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise SpecError(f"unknown collective {kind!r}; use one of {', '.join(KINDS)}")


def _check_int(v: Any, what: str) -> int:
    x = float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else math.nan
    if not math.isfinite(x) or int(x) != x or x < 1:
        raise SpecError(f"{what} must be a whole number >= 1, got {v!r}")
    return int(x)


# --------------------------------------------------------------------------------------------
# algorithm plans


@dataclass
class _Plan:
    steps_intra: float = 0.0
    steps_inter: float = 0.0
    t_intra: float = 0.0      # bandwidth term at 100 % protocol efficiency, intra-node links
    t_inter: float = 0.0      # the same, NICs
    serial: bool = False      # True: intra and inter bandwidth terms add (sequential steps); else pipelined (max)
    bytes_intra: float = 0.0  # byte-hops over intra links (energy)
    bytes_inter: float = 0.0  # bytes over the network (energy)


def _hd_steps(node: Node, S: float, kind: str) -> tuple[float, float, float]:
    """Recursive halving/doubling inside a node: (steps, time at full speed, byte-hops) of the
    reduce-scatter half (kind all_reduce/reduce_scatter/all_gather) or Bruck's all-to-all."""
    r = node.r
    bw = node.p2p_bw()
    if r < 2:
        return 0.0, 0.0, 0.0
    L = math.ceil(math.log2(r))
    steps, t, e = 0.0, 0.0, 0.0
    if kind == "all_to_all":
        for k in range(L):
            blocks = sum(1 for j in range(r) if (j >> k) & 1)
            dt, de = node.exchange(2 ** k, None, S * blocks / r, bw)
            steps, t, e = steps + 1, t + dt, e + de
        return steps, t, e
    pow2 = 2 ** int(math.floor(math.log2(r)))
    if pow2 == r:
        for k in range(L):
            dt, de = node.exchange(None, 2 ** k, S / 2 ** (k + 1), bw)
            steps, t, e = steps + 1, t + dt, e + de
        return steps, t, e
    # not a power of two: dissemination (Bruck) over ceil(log2 r) steps, (r-1)/r of S in all
    for k in range(L):
        dt, de = node.exchange(2 ** k, None, S * min(2 ** k, r - 2 ** k) / r, bw)
        steps, t, e = steps + 1, t + dt, e + de
    return steps, t, e


def _plan(system: System, kind: str, algo: str, S: float, n: int) -> _Plan:
    dpn = system.devices_per_node
    m = -(-n // dpn)                 # nodes used
    r = min(n, dpn)                  # ranks per (full) node
    node = node_geometry(system, r)
    NB = system.nics_per_node * system.inter.bandwidth_Bps if (m > 1 and system.inter is not None) else math.inf
    P = _Plan()
    if kind == "send_recv":  # every rank sends S to the next, the last to the first
        dt, de = node.exchange(1, None, S, node.p2p_bw())
        P.steps_intra, P.t_intra, P.bytes_intra = 1, dt, de
        if m > 1 and system.inter is not None:  # each node's last rank sends over a NIC; n - m sends stay in a node
            P.steps_intra, P.t_intra, P.bytes_intra = (1 if r > 1 else 0), S / node.p2p_bw(), S * (n - m)
            P.steps_inter, P.t_inter, P.bytes_inter = 1, S / system.inter.bandwidth_Bps, S * m
        return P
    ar = kind == "all_reduce"
    half = 2.0 if ar else 1.0       # all-reduce = reduce-scatter + all-gather
    if algo == "ring":
        saved = m * (r - 1 - node.ring_steps())   # hops a multi-dimensional ring saves in each node
        if kind == "all_to_all":
            v = S / n
            vol = v * n * (n - 1) / 2.0          # per ring link: messages travel n/2 hops on average
            P.t_intra = vol / node.ring_bw()
            P.t_inter = vol / NB if m > 1 else 0.0
            P.steps_intra, P.steps_inter = (n - 1) - (m - 1) - saved, m - 1
            cross = m if m > 1 else 0           # ring hops that leave a node
            P.bytes_intra = vol * (n - cross)
            P.bytes_inter = vol * cross
            return P
        traffic = half * (n - 1) / n * S
        P.t_intra = traffic / node.ring_bw()
        P.t_inter = traffic / NB if m > 1 else 0.0
        inter_steps = half * (m - 1)
        P.steps_intra = half * ((n - 1) - (m - 1) - saved)
        P.steps_inter = inter_steps
        cross = m if m > 1 else 0               # ring hops that leave a node
        P.bytes_intra = traffic * (n - cross)
        P.bytes_inter = traffic * cross
        return P
    if algo == "tree":  # pipelined (double) binary trees: reduce up, broadcast down
        P.steps_intra = 2 * max(math.ceil(math.log2(r)) if r > 1 else 0, node.diameter())
        P.steps_inter = 2 * math.ceil(math.log2(m)) if m > 1 else 0
        P.t_intra = 2.0 * S / node.tree_bw() if r > 1 else 0.0
        P.t_inter = 2.0 * S / NB if m > 1 else 0.0
        P.bytes_intra = 2.0 * S * (r - 1) * m
        P.bytes_inter = 2.0 * S * (m - 1)
        return P
    if algo == "halving_doubling":
        if kind == "all_to_all":  # Bruck: ceil(log2 n) steps of about half the data each
            steps, t, e = _hd_steps(node, S, kind)
            P.steps_intra, P.t_intra, P.bytes_intra = steps, t, e * m
            if m > 1:
                L = math.ceil(math.log2(m))
                P.steps_inter, P.t_inter, P.bytes_inter = L, L * (S / 2.0) * r / NB, L * (S / 2.0) * n
            P.serial = True
            return P
        steps, t, e = _hd_steps(node, S, kind)
        pow2 = r > 1 and 2 ** int(math.log2(r)) == r
        extra = ar and r > 1 and not pow2   # the ranks beyond a power of two fold in first and out last
        P.steps_intra = half * steps + (2 if extra else 0)
        P.t_intra = half * t + (2.0 * S / node.p2p_bw() if extra else 0.0)
        P.bytes_intra = (half * e + (2.0 * S * (r - 2 ** int(math.log2(r))) if extra else 0.0)) * m
        if m > 1:  # the last log2(m) steps pair ranks of different nodes, each node's ranks sharing its NICs
            L = math.ceil(math.log2(m))
            lr = math.ceil(math.log2(r)) if r > 1 else 0
            inter = sum(S / 2 ** (k + 1) for k in range(lr, lr + L))
            P.steps_inter = half * L
            P.t_inter = half * inter * r / NB
            P.bytes_inter = half * inter * n
        P.serial = True
        return P
    if algo == "nvls":  # NVLink SHARP, one node: the switch reduces (multimem ld_reduce) and multicasts (multimem st)
        # busiest direction of each port: all_reduce S up to be reduced (every slice of the rank, its own too) and
        # S/r of results up to be multicast, the same down; reduce_scatter S up; all_gather S down
        port = S * (r + 1) / r if ar else S
        P.steps_intra = 2 if ar else 1   # a reduction and a multicast, each one switched hop
        P.t_intra = port / (node.B * NVLS_EFFICIENCY)
        P.bytes_intra = S * (r + 1) if ar else S * (r + 1) / 2.0   # hops of two link traversals, as every switched hop
        return P
    if algo == "direct":
        v = S if ar else S / n          # one-shot all-reduce: every rank reads every peer's whole buffer
        t, e = node.uniform(v)
        P.steps_intra = max(1, node.diameter()) if r > 1 else 0
        P.t_intra, P.bytes_intra = t, e * m
        if m > 1:
            P.steps_inter = 1
            P.t_inter = r * (n - r) * v / NB
            P.bytes_inter = n * (n - r) * v
        return P
    if algo == "hierarchical":  # intra reduce-scatter, inter all-reduce across nodes, intra all-gather
        if kind == "all_to_all":
            v = S / n
            t, e = node.uniform(v * m)
            P.steps_intra, P.t_intra, P.bytes_intra = max(1, node.diameter()), t, e * m
            P.steps_inter, P.t_inter, P.bytes_inter = 1, r * (n - r) * v / NB, n * (n - r) * v
            return P
        local = half * (r - 1) / r * S
        P.steps_intra = half * node.ring_steps()
        P.t_intra = local / node.ring_bw() if r > 1 else 0.0
        P.steps_inter = half * (m - 1)
        P.t_inter = half * (m - 1) / m * S / NB
        P.bytes_intra = r * local * m
        P.bytes_inter = m * half * (m - 1) / m * S
        return P
    raise SpecError(f"unknown algorithm {algo!r}; use one of {', '.join(ALGORITHMS)}")  # pragma: no cover


def _time(system: System, P: _Plan, proto: Protocol, simple: Protocol) -> float:
    a_in = system.intra.latency_s
    a_net = system.inter.latency_s if system.inter is not None else 0.0
    eff_net = NET_EFFICIENCY * proto.efficiency / simple.efficiency
    ti = P.t_intra / proto.efficiency
    tn = P.t_inter / eff_net if P.t_inter > 0 else 0.0
    bw = ti + tn if P.serial else max(ti, tn)
    return proto.base_latency_s + P.steps_intra * a_in + P.steps_inter * a_net + bw


def _protocols(system: System, rules: CollectiveRules, algo: str) -> tuple[str, ...]:
    """The protocols ``algo`` runs on ``system``: those of the rules, LL128 only on NVLink fabrics, NVLS
    Simple only (NCCL's tuner)."""
    allowed = ALGO_PROTOCOLS.get(algo, PROTOCOLS)
    return tuple(p for p in rules.names()
                 if p in allowed and (p != "ll128" or system.intra_topology in LL128_TOPOLOGIES))


def _candidates(system: System, kind: str, n: int) -> tuple[str, ...]:
    """The algorithms the automatic choice weighs: the system's list for ``kind`` (else every one),
    less those that cannot run on ``n`` ranks; a list that leaves none is an error."""
    multi = n > system.devices_per_node
    valid = [a for a in VALID[kind] if (multi or a != "hierarchical")
             and (a != "nvls" or (system.in_switch_reduction and not multi))]
    listed = (system.meta.get("algorithms") or {}).get(kind)
    if not listed:
        return tuple(valid)
    chosen = tuple(a for a in valid if a in listed)
    if not chosen:
        where = "across nodes" if multi else "inside one node"
        raise SpecError(f"system {system.name!r} lists only {', '.join(listed)} for {kind}, which cannot run on {n} ranks "
                        f"{where}; add one of {', '.join(valid)} to its algorithms")
    return chosen


def _cheapest(system: System, plans: list[tuple[str, _Plan]]) -> tuple[float, str, str, _Plan]:
    """The fastest (time, algorithm, protocol, plan) over the plans and the protocols each runs."""
    rules = system_rules(system)
    simple = rules.protocol("simple")
    best: tuple[float, str, str, _Plan] | None = None
    for algo, P in plans:
        for p in _protocols(system, rules, algo):
            t = _time(system, P, rules.protocol(p), simple)
            if best is None or t < best[0]:
                best = (t, algo, p, P)
    assert best is not None
    return best


def _energy(system: System, P: _Plan) -> float:
    return (P.bytes_intra * system.intra.energy_pj_per_byte
            + P.bytes_inter * (system.inter.energy_pj_per_byte if system.inter else 0.0)) * 1e-12


def send_time(system: System, nbytes: float, senders: int, stride: int, first: int = 0) -> CollectiveCost:
    """One-way sends at once: each of the ``senders`` devices from device ``first`` sends ``nbytes`` to
    the device ``stride`` further on (a pipeline stage boundary). A send that leaves its node takes a
    NIC (the node's leaving sends share its NICs, one each while they last); one inside a node crosses
    ``d`` hops of its fabric (``d`` = 1 on a switch, fully connected or PCIe fabric) at ``b_p2p``, the
    longest setting the time. ``busbw`` = ``algbw``."""
    system = load_system(system)
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real) or not math.isfinite(nbytes) or nbytes <= 0:
        raise SpecError(f"send: nbytes must be a positive number of bytes, got {nbytes!r}")
    senders, stride = _check_int(senders, "send: senders"), _check_int(stride, "send: stride")
    if isinstance(first, bool) or not isinstance(first, int) or first < 0 or first + senders + stride > system.n_devices:
        raise SpecError(f"send: {senders} senders from device {first!r} to {stride} devices on need devices "
                        f"0 .. {first + senders + stride - 1}; {system.name} has {system.n_devices}")
    S, dpn = float(nbytes), system.devices_per_node
    node = node_geometry(system, dpn)
    leaving: dict[int, int] = {}
    hops: dict[int, list[int]] = {}
    for i in range(first, first + senders):
        j = i + stride
        if i // dpn != j // dpn:
            leaving[i // dpn] = leaving.get(i // dpn, 0) + 1
        else:
            hops.setdefault(i // dpn, []).append(node.dist(i % dpn, j % dpn))
    P = _Plan()
    if hops:
        d = max(max(h) for h in hops.values())
        P.steps_intra = d
        P.t_intra = S * d / node_geometry(system, max(2, *map(len, hops.values()))).p2p_bw()  # PCIe: the senders share the root
        P.bytes_intra = S * sum(map(sum, hops.values()))
    if leaving:
        assert system.inter is not None  # a System of several nodes has one
        P.steps_inter = 1
        P.t_inter = S * max(1.0, max(leaving.values()) / system.nics_per_node) / system.inter.bandwidth_Bps
        P.bytes_inter = S * sum(leaving.values())
    t, _, proto, P = _cheapest(system, [("direct", P)])
    return CollectiveCost(time_s=t, algorithm="direct", algbw_Bps=S / t, busbw_Bps=S / t, energy_j=_energy(system, P),
                          protocol=proto)


def collective_time(system: System, kind: str, nbytes: float, ranks: int, algorithm: str | None = None) -> CollectiveCost:
    """Time, bandwidths and link energy of one collective of ``nbytes`` (nccl-tests convention) over
    ``ranks`` devices of ``system``; the cheapest algorithm when ``algorithm`` is None."""
    system = load_system(system)
    _check_kind(kind)
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real) or not math.isfinite(nbytes) or nbytes <= 0:
        raise SpecError(f"{kind}: nbytes must be a positive number of bytes, got {nbytes!r}")
    if isinstance(ranks, bool) or not isinstance(ranks, numbers.Real) or not math.isfinite(ranks) or int(ranks) != ranks:
        raise SpecError(f"{kind}: ranks must be a whole number, got {ranks!r}")
    n = int(ranks)
    if n < 1 or n > system.n_devices:
        raise SpecError(f"{kind}: ranks must be between 1 and {system.n_devices} (the devices of {system.name}), got {n}")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise SpecError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)} (or None to choose)")
    if algorithm is not None and algorithm not in VALID[kind]:
        raise SpecError(f"algorithm {algorithm!r} does not implement {kind}; use one of {', '.join(VALID[kind])}")
    if algorithm == "hierarchical" and n <= system.devices_per_node:
        raise SpecError(f"algorithm 'hierarchical' needs ranks spanning nodes (more than {system.devices_per_node}); "
                        f"use ring, tree or halving_doubling inside a node")
    if algorithm == "nvls" and not system.in_switch_reduction:
        raise SpecError(f"algorithm 'nvls' needs a switch that reduces in the fabric (intra: in_switch_reduction: true); "
                        f"system {system.name!r} has none")
    if algorithm == "nvls" and n > system.devices_per_node:
        raise SpecError(f"algorithm 'nvls' runs inside one node (at most {system.devices_per_node} ranks), got {n} ranks; "
                        f"use hierarchical or ring across nodes")
    if n == 1:
        return CollectiveCost(0.0, algorithm or "direct", math.inf, 0.0, 0.0)
    if kind == "send_recv" and algorithm is None:
        algorithm = "direct"
    algos = [algorithm] if algorithm else _candidates(system, kind, n)
    t, algo, proto, P = _cheapest(system, [(a, _plan(system, kind, a, float(nbytes), n)) for a in algos])
    algbw = float(nbytes) / t
    return CollectiveCost(time_s=t, algorithm=algo, algbw_Bps=algbw, busbw_Bps=algbw * bus_factor(kind, n),
                          energy_j=_energy(system, P), protocol=proto)
