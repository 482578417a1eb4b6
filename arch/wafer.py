"""Wafer-scale device class: the ``wafer:`` section of a preset (Cerebras WSE-style 2-D mesh of cores).

A wafer-scale device is a ``width x height`` mesh of small cores, each with its own SRAM and a
router linked to its four nearest neighbours. The section describes (the four PLMR terms of
WaferLLM, He et al., OSDI 2025, arXiv 2502.04563: Parallelism, Latency, Memory, Routing):

* ``mesh``: ``[width, height]`` of the core grid (parallelism);
* ``cores``: the published core count the per-core figures below are derived from;
* ``core_sram`` (bytes per core) or ``sram_total`` (the published total, divided by ``cores``);
* ``link_bandwidth`` (bytes per cycle per direction of one router link) or ``fabric_bandwidth``
  (the published aggregate, both directions of every link: divided by ``2 x cores x links_per_core``
  and the clock);
* ``links_per_core``: router links of a core (4 in a 2-D mesh);
* ``hop_latency``: cycles one router hop adds (latency);
* ``routes_per_core``: routes (Cerebras "colours") a router can hold at once (routing; optional:
  unlimited when absent);
* ``io_bandwidth``: the wafer's I/O to external memory (weight streaming), bytes/s or bits/s;
  optional ``io_energy``: joules per byte over that I/O (e.g. '44 pJ').

The cores' MACs per cycle and clock are the preset's ``matrix`` unit (``instances = width x
height``); the cost model that reads the section is ``mappers/wafer.py``; sources in
``docs/devices.md`` (section Wafer-scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity
from .sections import check_section, count, positive

_KEYS = {"mesh", "cores", "core_sram", "sram_total", "link_bandwidth", "fabric_bandwidth", "links_per_core",
         "hop_latency", "routes_per_core", "io_bandwidth", "io_energy"}


@dataclass(frozen=True)
class WaferSpec:
    """A parsed ``wafer:`` section. Sizes in bytes, bandwidths per cycle unless named ``_Bps``."""

    width: int
    height: int
    cores: int
    core_sram_bytes: int
    link_bytes_per_cycle: float
    links_per_core: int
    hop_latency_cycles: float
    routes_per_core: int | None
    io_bandwidth_Bps: float
    io_energy_j_per_byte: float = 0.0  # moving a byte over the wafer's I/O (weight streaming); 0: not counted
    #: per-core bytes an op's working buffers may use beside its stored weight/KV tile, on a region whose
    #: cores already hold a stage's weights and KV cache (set by the placement); None: the whole SRAM
    buffer_limit_bytes: float | None = None

    @property
    def mesh_cores(self) -> int:
        return self.width * self.height


def _where(name: str) -> str:
    return f"device {name!r} wafer"


def _rate_Bps(v: Any, where: str) -> float:
    """A bandwidth given in bytes/s (``'20 PB/s'``) or bits/s (``'220 Pb/s'``)."""
    if isinstance(v, str) and v.strip().endswith(("b/s", "bps")) and not v.strip().endswith(("B/s", "Bps")):
        return positive(parse_quantity(v, "bits_per_s", where) / 8.0, where, "'1.2 Tb/s'")
    return positive(parse_quantity(v, "bytes_per_s", where), where, "'150 GB/s'")


def _one_of(d: dict[str, Any], a: str, b: str, where: str) -> str:
    if (a in d) == (b in d):
        raise SpecError(f"{where}: give exactly one of {a!r} (per core) or {b!r} (the published total)")
    return a if a in d else b


def parse_wafer(d: Any, clock_hz: float, name: str = "device") -> WaferSpec:
    """Parse and validate a ``wafer:`` section (one-line :class:`SpecError` on any bad field)."""
    where = _where(name)
    check_section(d, _KEYS, ["mesh", "cores", "hop_latency", "io_bandwidth"], where,
                  "mesh, cores, sram, link bandwidth, hop_latency, io_bandwidth")
    mesh = d["mesh"]
    if not (isinstance(mesh, list | tuple) and len(mesh) == 2):
        raise SpecError(f"{where}.mesh: must be [width, height] of the core grid, got {mesh!r}")
    width, height = count({"w": mesh[0]}, "w", f"{where}.mesh"), count({"h": mesh[1]}, "h", f"{where}.mesh")
    cores = count(d, "cores", where)
    if width * height > cores:
        raise SpecError(f"{where}.mesh: {width} x {height} = {width * height} cores exceeds cores ({cores}); shrink the mesh")
    links = count(d, "links_per_core", where) if "links_per_core" in d else 4  # 2-D mesh: N, E, S, W neighbours
    key = _one_of(d, "core_sram", "sram_total", where)
    total = parse_quantity(d[key], "bytes", f"{where}.{key}")
    sram = math.floor(total if key == "core_sram" else total / cores)
    if sram <= 0:
        raise SpecError(f"{where}.{key}: must give at least one byte per core, e.g. '48 KiB' or '40 GB'")
    key = _one_of(d, "link_bandwidth", "fabric_bandwidth", where)
    if key == "link_bandwidth":
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SpecError(f"{where}.link_bandwidth: must be bytes per cycle per direction, e.g. 4, got {v!r}")
        link = positive(float(v), f"{where}.link_bandwidth", "4 (bytes per cycle)")
    else:
        link = _rate_Bps(d[key], f"{where}.{key}") / (2 * cores * links) / clock_hz  # the aggregate counts both directions
    hop = d["hop_latency"]
    if isinstance(hop, bool) or not isinstance(hop, int | float) or not math.isfinite(hop) or hop < 0:
        raise SpecError(f"{where}.hop_latency: must be a number of cycles >= 0, got {hop!r}")
    routes = count(d, "routes_per_core", where) if "routes_per_core" in d else None
    io = _rate_Bps(d["io_bandwidth"], f"{where}.io_bandwidth")
    io_e = parse_quantity(d.get("io_energy", 0.0), "joules", f"{where}.io_energy")
    if not 0.0 <= io_e <= 1e-9:
        raise SpecError(f"{where}.io_energy: must be joules per byte from 0 to 1 nJ, e.g. '44 pJ', got {d['io_energy']!r}")
    return WaferSpec(width=width, height=height, cores=cores, core_sram_bytes=int(sram), link_bytes_per_cycle=link,
                     links_per_core=links, hop_latency_cycles=float(hop), routes_per_core=routes, io_bandwidth_Bps=io,
                     io_energy_j_per_byte=io_e)


def check_wafer_arch(spec: WaferSpec, matrix_instances: int, name: str, sram: Any = None) -> None:
    """The cores are the matrix unit: its instance count must be width x height; the innermost
    memory level ``sram`` (when given) is the cores' SRAM: one instance per core of ``core_sram``."""
    if matrix_instances != spec.mesh_cores:
        raise SpecError(f"{_where(name)}: matrix.instances ({matrix_instances}) must equal mesh width x height "
                        f"({spec.width} x {spec.height} = {spec.mesh_cores}): the matrix unit is the cores")
    if sram is not None and sram.instances != spec.mesh_cores:
        raise SpecError(f"{_where(name)}: memory level {sram.name!r} has {sram.instances} instances but the mesh has "
                        f"{spec.mesh_cores} cores; give it one instance per core")
    if sram is not None and sram.capacity_bytes != spec.core_sram_bytes:
        raise SpecError(f"{_where(name)}: memory level {sram.name!r} holds {sram.capacity_bytes:,.0f} B per instance but "
                        f"core_sram is {spec.core_sram_bytes:,} B; give both the same per-core SRAM")


def wafer_spec(arch: Any) -> WaferSpec:
    """The :class:`WaferSpec` of a wafer-scale device (stored under ``rules['wafer']`` by the loader);
    :class:`SpecError` unless its memory is one level, the cores' SRAM (``check_wafer_arch`` checks its
    instances and capacity): every wafer cost path reads it here."""
    spec = arch.rules.get("wafer") if isinstance(arch.rules, dict) else None
    if not isinstance(spec, WaferSpec):
        raise SpecError(f"device {arch.name!r} is not a wafer-scale device with a wafer: section "
                        f"(class {arch.device_class!r})")
    if len(arch.memory) != 1:  # the cost model reads the one level as every core's SRAM
        names = ", ".join(repr(lv.name) for lv in arch.memory)
        raise SpecError(f"device {arch.name!r}: a wafer-scale device's memory is its cores' SRAM alone (one level), got "
                        f"{len(arch.memory)} levels ({names}); external memory for weight streaming is "
                        "wafer.io_bandwidth")
    return spec
