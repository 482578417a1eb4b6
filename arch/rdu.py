"""Dataflow (RDU) device class: the ``rdu:`` section of a reconfigurable dataflow unit preset.

A reconfigurable dataflow unit (SambaNova's RDU, after Plasticine, Prabhakar et al., ISCA 2017)
is a grid of **pattern compute units** (PCUs: SIMD lanes x pipeline stages, or a systolic array)
and **pattern memory units** (PMUs: banked SRAM with address generation) joined by an on-chip
network; a whole fused subgraph is laid out on it as a spatial pipeline. Three memory tiers sit
behind it: the PMUs' SRAM, HBM and DDR. The section describes

* ``pcus``, ``pmus``: unit counts (the preset's ``matrix`` unit is the PCUs: ``instances = pcus``;
  its first memory level after the backing one is the PMUs' SRAM: ``instances = pmus``);
* ``pcu``: ``lanes`` and ``stages`` of a PCU's SIMD pipeline (its systolic MAC rate is the matrix
  unit's ``macs_per_cycle``);
* ``pmu``: ``banks`` of a PMU's SRAM (its capacity is the SRAM level's; the banks and the
  SRAM level's bandwidth are recorded but bound nothing in the cost model: a stage's on-chip
  operands are assumed to keep pace with its PCUs);
* ``ddr``: ``capacity`` and ``bandwidth`` of the DDR tier behind the HBM (the backing level);
* ``kernel_launch``: the time to start one kernel (a fused pipeline or an unfused operator) on
  the RDU — what fusion saves besides the HBM round trips of intermediates;
* ``tiers`` (optional): how weights and KV cache are placed over HBM and DDR: ``fill`` (default:
  HBM first, DDR for what overflows) or ``balance`` (at most the share of each that balances the two
  streams; see ``mappers/tiers.py``).

The cost model that reads this section is ``mappers/rdu.py``; sources in ``docs/devices.md``
(section Dataflow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity
from .sections import TIER_POLICIES, check_section, count, positive

_KEYS = {"pcus", "pmus", "pcu", "pmu", "ddr", "kernel_launch", "tiers"}
_REQUIRED = ["pcus", "pmus", "pcu", "pmu", "ddr", "kernel_launch"]


@dataclass(frozen=True)
class RduSpec:
    """A parsed ``rdu:`` section. Sizes in bytes, bandwidths in bytes/s, times in seconds."""

    pcus: int
    pmus: int
    pcu_lanes: int
    pcu_stages: int
    pmu_banks: int
    ddr_bytes: float
    ddr_Bps: float
    kernel_launch_s: float
    tiers: str = "fill"


def _where(name: str) -> str:
    return f"device {name!r} rdu"


def parse_rdu(d: Any, name: str = "device") -> RduSpec:
    """Parse and validate an ``rdu:`` section (one-line :class:`SpecError` on any bad field)."""
    where = _where(name)
    check_section(d, _KEYS, _REQUIRED, where, "pcus, pmus, pcu, pmu, ddr, kernel_launch")
    check_section(d["pcu"], {"lanes", "stages"}, ["lanes", "stages"], f"{where}.pcu", "lanes and stages")
    check_section(d["pmu"], {"banks"}, ["banks"], f"{where}.pmu", "banks")
    ddr = check_section(d["ddr"], {"capacity", "bandwidth"}, ["capacity", "bandwidth"], f"{where}.ddr",
                        "capacity and bandwidth, e.g. {capacity: 1.5 TB, bandwidth: 200 GB/s}")
    policy = d.get("tiers", "fill")
    if policy not in TIER_POLICIES:
        raise SpecError(f"{where}.tiers: must be {' or '.join(TIER_POLICIES)}, got {policy!r}")
    return RduSpec(
        pcus=count(d, "pcus", where), pmus=count(d, "pmus", where),
        pcu_lanes=count(d["pcu"], "lanes", f"{where}.pcu"), pcu_stages=count(d["pcu"], "stages", f"{where}.pcu"),
        pmu_banks=count(d["pmu"], "banks", f"{where}.pmu"),
        ddr_bytes=positive(parse_quantity(ddr["capacity"], "bytes", f"{where}.ddr.capacity"), f"{where}.ddr.capacity",
                            "'1.5 TB'"),
        ddr_Bps=positive(parse_quantity(ddr["bandwidth"], "bytes_per_s", f"{where}.ddr.bandwidth"),
                          f"{where}.ddr.bandwidth", "'200 GB/s'"),
        kernel_launch_s=positive(parse_quantity(d["kernel_launch"], "seconds", f"{where}.kernel_launch"),
                                  f"{where}.kernel_launch", "'10 us'"),
        tiers=str(policy),
    )


def check_rdu_arch(spec: RduSpec, arch: Any, name: str) -> None:
    """The PCUs are the matrix unit and, in SIMD mode, the vector unit (``lanes x stages`` operations
    per cycle each, what the cost model runs vector work at); the PMUs are the on-chip SRAM level."""
    if arch.matrix.instances != spec.pcus:
        raise SpecError(f"{_where(name)}: matrix.instances ({arch.matrix.instances}) must equal pcus ({spec.pcus})")
    simd = spec.pcu_lanes * spec.pcu_stages
    if arch.vector.instances != spec.pcus or any(v != simd for v in arch.vector.rate_per_cycle.values()):
        raise SpecError(f"{_where(name)}: the vector unit is the PCUs in SIMD mode: vector.instances must equal pcus "
                        f"({spec.pcus}) and every vector.flops_per_cycle pcu.lanes x pcu.stages ({simd})")
    if len(arch.memory) < 2 or arch.memory[1].instances != spec.pmus:
        raise SpecError(f"{_where(name)}: the memory level after the HBM must be the PMUs' SRAM with "
                        f"instances = pmus ({spec.pmus})")


def rdu_spec(arch: Any) -> RduSpec:
    """The :class:`RduSpec` of a dataflow device (stored under ``rules['rdu']`` by the loader)."""
    spec = arch.rules.get("rdu") if isinstance(arch.rules, dict) else None
    if not isinstance(spec, RduSpec):
        raise SpecError(f"device {arch.name!r} is not a dataflow device with an rdu: section (class {arch.device_class!r})")
    return spec


def with_mode(arch: Any, mode: str) -> Any:
    """``arch`` (a dataflow device) running traces in execution ``mode`` (``fused``, ``looped``,
    ``unfused``: see ``mappers/rdu.py``)."""
    import dataclasses

    from ..mappers.rdu import RDU_MODES

    if getattr(arch, "device_class", None) != "dataflow":
        raise SpecError(f"--rdu-mode applies to dataflow devices; {arch.name} is a {arch.device_class} device")
    if mode not in RDU_MODES:
        raise SpecError(f"RDU execution mode {mode!r}: use one of {', '.join(RDU_MODES)}")
    return dataclasses.replace(arch, rules={**arch.rules, "rdu_mode": mode})
