"""Multi-device systems: N identical devices, the fabric inside a node and the network between nodes.

A system is read from YAML (presets in ``arch/systems/``; the format is documented in
``docs/systems.md``)::

    name: dgx-a100
    device: a100-80gb                 # a device preset name, or a YAML path relative to this file
    devices_per_node: 8
    nodes: 1
    intra: {topology: switch, bandwidth: 300 GB/s, latency: 0.47 us, energy_per_byte: 88}
    inter: {bandwidth: 25 GB/s, latency: 2.7 us, energy_per_byte: 176, nics_per_node: 8}

Bandwidths are per direction and per device port: on a switch the one port of a device to the
switch (all its links together); on a ring, torus or mesh each link to a neighbour; on a PCIe tree
the device's slot (the root complex they share is ``root_bandwidth``); between nodes each NIC.
Latencies are per message hop (the ``alpha`` of the alpha-beta model) and energies are pJ per byte
carried over one hop. Collective costs are in :mod:`xpusim.sim.collectives`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity
from .loader import load_arch, read_preset
from .spec import Arch

SYSTEMS_DIR = Path(__file__).parent / "systems"

#: device-to-device fabrics inside a node
TOPOLOGIES = {
    "switch": "every device has one port to a non-blocking switch (NVSwitch); any pattern runs at the port bandwidth",
    "fully_connected": "a direct link bundle between every pair of devices (NVLink without a switch); a device's "
                       "bandwidth is split evenly over its n-1 peers",
    "ring": "a 1-D ring; each device has a link to each of its two neighbours",
    "torus": "a k-D torus of shape dims; each device has two links per dimension (one where the dimension is 2)",
    "mesh": "a k-D mesh of shape dims (a torus without wrap-around links)",
    "pcie": "a PCIe tree; every device has its slot's bandwidth but all traffic crosses the shared root complex",
}

_TOP = {"name", "description", "device", "devices_per_node", "nodes", "intra", "inter", "algorithms", "rules",
        "sources", "notes", "host_link"}
_INTRA = {"topology", "bandwidth", "latency", "energy_per_byte", "dims", "root_bandwidth", "in_switch_reduction"}
_INTER = {"bandwidth", "latency", "energy_per_byte", "nics_per_node"}


@dataclass(frozen=True)
class Link:
    """One kind of link. ``bandwidth_Bps``: per direction, per device port (bytes/s), what one device
    can send on this fabric; ``latency_s``: per message hop (alpha); ``energy_pj_per_byte``: energy
    to carry one byte over one hop."""

    bandwidth_Bps: float
    latency_s: float
    energy_pj_per_byte: float = 0.0

    def __post_init__(self) -> None:
        for name, v, positive in (("bandwidth", self.bandwidth_Bps, True), ("latency", self.latency_s, False),
                                  ("energy_per_byte", self.energy_pj_per_byte, False)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or (positive and v == 0):
                raise SpecError(f"link {name}: must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")


@dataclass(frozen=True)
class System:
    """``devices_per_node`` x ``nodes`` identical devices; ``intra`` joins the devices of a node in
    ``intra_topology`` (of shape ``dims`` for a torus or mesh), ``inter`` joins the nodes through
    ``nics_per_node`` NICs per node. ``in_switch_reduction``: the switch reduces and multicasts
    (NVSwitch gen3 NVLink SHARP), which the ``nvls`` collectives use."""

    name: str
    device: Arch
    devices_per_node: int
    nodes: int
    intra: Link
    intra_topology: str
    dims: tuple[int, ...] = ()
    inter: Link | None = None
    nics_per_node: int = 0
    description: str = ""
    in_switch_reduction: bool = False
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        where = f"system {self.name!r}"
        if not isinstance(self.device, Arch):
            raise SpecError(f"{where}: device must be a device (load it with load_arch), got {type(self.device).__name__}")
        for k in ("devices_per_node", "nodes"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"{where}: {k} must be a whole number >= 1, got {v!r}")
        if not isinstance(self.intra, Link):
            raise SpecError(f"{where}: intra must be a Link")
        if self.intra_topology not in TOPOLOGIES:
            raise SpecError(f"{where}: unknown intra topology {self.intra_topology!r}; use one of {', '.join(TOPOLOGIES)}")
        dims = tuple(self.dims)
        if self.intra_topology in ("torus", "mesh"):
            if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
                raise SpecError(f"{where}: a {self.intra_topology} needs dims, a list of whole numbers >= 1 such as [2, 2, 2]")
            if math.prod(dims) != self.devices_per_node:
                raise SpecError(f"{where}: dims {list(dims)} hold {math.prod(dims)} devices but devices_per_node is "
                                f"{self.devices_per_node}; make their product equal")
        elif dims:
            raise SpecError(f"{where}: dims apply to a torus or mesh only, not to a {self.intra_topology}; remove them")
        if not isinstance(self.in_switch_reduction, bool):
            raise SpecError(f"{where}: in_switch_reduction must be true or false, got {self.in_switch_reduction!r}")
        if self.in_switch_reduction and self.intra_topology != "switch":
            raise SpecError(f"{where}: in_switch_reduction needs a switch topology (the switch reduces), "
                            f"not {self.intra_topology}; remove it")
        if isinstance(self.nics_per_node, bool) or not isinstance(self.nics_per_node, int) or self.nics_per_node < 0:
            raise SpecError(f"{where}: nics_per_node must be a whole number >= 0, got {self.nics_per_node!r}")
        if self.inter is not None and not isinstance(self.inter, Link):
            raise SpecError(f"{where}: inter must be a Link or None")
        if self.nodes > 1 and (self.inter is None or self.nics_per_node < 1):
            raise SpecError(f"{where}: {self.nodes} nodes need an inter link with nics_per_node >= 1 "
                            "(inter: {bandwidth: ..., latency: ..., nics_per_node: ...})")

    @property
    def n_devices(self) -> int:
        return self.devices_per_node * self.nodes


def list_systems() -> list[str]:
    """Names of the shipped system presets."""
    return sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml"))


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in set(d) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def _whole(v: Any, where: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v < minimum:
        raise SpecError(f"{where}: must be a whole number >= {minimum}, got {v!r}")
    return int(v)


def _energy_pj(v: Any, where: str) -> float:
    """Energy per byte: a plain number is pJ (quoted or not); a quantity with a unit of joules is
    converted ('88 pJ')."""
    if isinstance(v, str) and v.strip() and not any(c.isalpha() for c in v.strip().lstrip("+-").replace("e", "", 1)):
        v = parse_quantity(v, "joules", where)  # "88": a number without a unit, pJ as a plain one
    pj = parse_quantity(v, "joules", where) * 1e12 if isinstance(v, str) else v
    if isinstance(pj, bool) or not isinstance(pj, int | float) or not math.isfinite(pj) or pj < 0:
        raise SpecError(f"{where}: must be >= 0 pJ per byte, got {v!r}")
    return float(pj)


def _link(d: dict[str, Any], where: str) -> Link:
    for k in ("bandwidth", "latency"):
        if k not in d:
            raise SpecError(f"{where}: missing {k!r} (e.g. bandwidth: 300 GB/s, latency: 1 us)")
    bw = parse_quantity(d["bandwidth"], "bytes_per_s", f"{where}.bandwidth")
    lat = parse_quantity(d["latency"], "seconds", f"{where}.latency")
    e = _energy_pj(d.get("energy_per_byte", 0.0), f"{where}.energy_per_byte")
    if not bw > 0:
        raise SpecError(f"{where}.bandwidth: must be > 0, got {d['bandwidth']!r}")
    if lat < 0:
        raise SpecError(f"{where}.latency: must be >= 0, got {d['latency']!r}")
    return Link(bandwidth_Bps=bw, latency_s=lat, energy_pj_per_byte=e)


def _algorithms(v: Any, where: str) -> dict[str, tuple[str, ...]]:
    """``algorithms:`` -- the candidates of the automatic choice: a mapping of collective kind to list,
    or one list for every collective, of which each kind keeps the algorithms that implement it
    (send_recv: direct, its only one). Every listed algorithm must implement its collective."""
    from ..sim.collectives import ALGORITHMS, KINDS, VALID

    if isinstance(v, list):
        if not v or any(a not in ALGORITHMS for a in v):
            raise SpecError(f"{where}: must be a non-empty list drawn from {', '.join(ALGORITHMS)}, got {v!r}")
        out = {k: tuple(a for a in v if a in VALID[k]) for k in KINDS if k != "send_recv"}
        empty = [k for k, algos in out.items() if not algos]
        if empty:
            raise SpecError(f"{where}: none of {v} implements {', '.join(empty)}; add one of "
                            f"{', '.join(VALID[empty[0]])}, or give a mapping of collective to list")
        return {**out, "send_recv": ("direct",)}
    if not isinstance(v, dict) or not v:
        raise SpecError(f"{where}: must be a list of algorithms or a mapping of collective to list, "
                        f"e.g. {{all_reduce: [ring, tree]}}")
    out = {}
    for kind, algos in v.items():
        if kind not in KINDS:
            raise SpecError(f"{where}: unknown collective {kind!r}; use {', '.join(KINDS)}")
        if not isinstance(algos, list) or not algos or any(a not in ALGORITHMS for a in algos):
            raise SpecError(f"{where}.{kind}: must be a non-empty list drawn from {', '.join(ALGORITHMS)}, got {algos!r}")
        bad = [a for a in algos if a not in VALID[kind]]
        if bad:
            raise SpecError(f"{where}.{kind}: {', '.join(bad)} do{'es' * (len(bad) == 1)} not implement {kind}; "
                            f"use some of {', '.join(VALID[kind])}")
        out[str(kind)] = tuple(algos)
    return out


def system_from_dict(d: Any, name: str = "system", base: Path | None = None) -> System:
    """Build and validate a :class:`System` from a parsed YAML mapping; ``base`` is the folder a
    relative device path is read from (the system file's)."""
    if not isinstance(d, dict):
        raise SpecError(f"system {name!r}: expected a mapping of fields, got {type(d).__name__}")
    name = str(d.get("name", name))
    where = f"system {name!r}"
    _check_keys(d, _TOP, where)
    for k in ("device", "devices_per_node", "intra"):
        if k not in d:
            raise SpecError(f"{where}: missing required field {k!r}")
    dev = d["device"]
    if isinstance(dev, dict):
        from .loader import arch_from_dict

        device = arch_from_dict(dev, str(dev.get("name", "device")))
    elif isinstance(dev, str) and dev:
        ref: str | Path = dev
        if base is not None and (dev.endswith((".yaml", ".yml")) or "/" in dev):
            ref = (base / dev) if not Path(dev).is_absolute() else Path(dev)
        device = load_arch(ref)
    else:
        raise SpecError(f"{where}: device must be a device preset name, a YAML path or a mapping, got {dev!r}")
    dpn = _whole(d["devices_per_node"], f"{where}.devices_per_node")
    nodes = _whole(d.get("nodes", 1), f"{where}.nodes")
    intra_d = d["intra"]
    if not isinstance(intra_d, dict):
        raise SpecError(f"{where}.intra: must be a mapping with topology, bandwidth, latency")
    _check_keys(intra_d, _INTRA, f"{where}.intra")
    topo = intra_d.get("topology")
    if topo not in TOPOLOGIES:
        raise SpecError(f"{where}.intra.topology: must be one of {', '.join(TOPOLOGIES)}, got {topo!r}")
    intra = _link(intra_d, f"{where}.intra")
    dims: tuple[int, ...] = ()
    if "dims" in intra_d:
        raw = intra_d["dims"]
        if not isinstance(raw, list | tuple) or not raw:
            raise SpecError(f"{where}.intra.dims: must be a list of whole numbers, e.g. [2, 2, 2]")
        dims = tuple(_whole(x, f"{where}.intra.dims") for x in raw)
    meta: dict[str, Any] = {}
    if "root_bandwidth" in intra_d:
        if topo != "pcie":
            raise SpecError(f"{where}.intra.root_bandwidth: applies to a pcie topology only; remove it")
        root = parse_quantity(intra_d["root_bandwidth"], "bytes_per_s", f"{where}.intra.root_bandwidth")
        if not root > 0:
            raise SpecError(f"{where}.intra.root_bandwidth: must be > 0")
        meta["root_Bps"] = root
    isr = intra_d.get("in_switch_reduction", False)
    if not isinstance(isr, bool):
        raise SpecError(f"{where}.intra.in_switch_reduction: must be true or false, got {isr!r}")
    if isr and topo != "switch":
        raise SpecError(f"{where}.intra.in_switch_reduction: needs topology switch (the switch reduces), not {topo}")
    inter = None
    nics = 0
    if d.get("inter") is not None:
        inter_d = d["inter"]
        if not isinstance(inter_d, dict):
            raise SpecError(f"{where}.inter: must be a mapping with bandwidth, latency, nics_per_node")
        _check_keys(inter_d, _INTER, f"{where}.inter")
        inter = _link(inter_d, f"{where}.inter")
        if "nics_per_node" not in inter_d:
            raise SpecError(f"{where}.inter: missing 'nics_per_node' (NICs per node, each of the inter bandwidth)")
        nics = _whole(inter_d["nics_per_node"], f"{where}.inter.nics_per_node")
    if "algorithms" in d:
        meta["algorithms"] = _algorithms(d["algorithms"], f"{where}.algorithms")
        if not isr and any("nvls" in a for a in meta["algorithms"].values()):
            raise SpecError(f"{where}.algorithms: nvls needs a switch that reduces (intra: in_switch_reduction: true)")
    if "rules" in d:
        if not isinstance(d["rules"], dict):
            raise SpecError(f"{where}.rules: must be a mapping (as written by validation/fit_nccl.py)")
        from ..sim.collectives import parse_rules

        parse_rules(d["rules"], f"{where}.rules")
        meta["rules"] = dict(d["rules"])
    for k in ("sources", "notes"):
        if k in d:
            meta[k] = d[k]
    if "host_link" in d:  # host memory to one device (PCIe): what loading a model from host DRAM runs at
        hl = parse_quantity(d["host_link"], "bytes_per_s", f"{where}.host_link")
        if not (math.isfinite(hl) and hl > 0):
            raise SpecError(f"{where}.host_link: must be a positive bandwidth, e.g. '63 GB/s'")
        meta["host_link_Bps"] = hl
    return System(name=name, device=device, devices_per_node=dpn, nodes=nodes, intra=intra, intra_topology=str(topo),
                  dims=dims, inter=inter, nics_per_node=nics, description=str(d.get("description", "")),
                  in_switch_reduction=isr, meta=meta)


def system_dict(ref: str | Path) -> tuple[dict[str, Any], str, Path]:
    """The parsed YAML of a system (preset name or path), its name and the folder it lives in."""
    data, path = read_preset(ref, SYSTEMS_DIR, "system", list_systems())
    return data, path.stem, path.parent


def load_system(ref: str | Path | System) -> System:
    """Load a system by preset name (``arch/systems/<name>.yaml``) or YAML path."""
    if isinstance(ref, System):
        return ref
    if not isinstance(ref, str | Path):
        raise SpecError(f"a system is a preset name, a YAML path or a System, got {type(ref).__name__}")
    data, name, base = system_dict(ref)
    return system_from_dict(data, name, base)
