"""Die area, leakage and peak dynamic power, and manufacturing cost of a device.

Every coefficient below is a published number or a formula on published numbers; the full
references, derivations and the validation against published die areas are in
``docs/area-power-cost.md``. Short source keys used in the comments:

* [HOR14] M. Horowitz, "Computing's energy problem", ISSCC 2014, Fig. 1.1.9 (area column, 45 nm).
* [SB17] A. Stillmaker, B. Baas, Integration 58 (2017): area scale factors between nodes, as
  tabulated in Accelergy's ``hwcomponents/scaling.py`` (45 nm row).
* [CSET20] S. Khan, A. Mann, "AI Chips: What They Are and Why They Matter", CSET 2020: logic
  transistor density and foundry sale price per 300 mm wafer by node.
* [SRAM] TSMC high-density 6T bitcell areas (40/28/16 nm: WikiChip process tables; 16 nm: Chen et
  al., JSSC 2015; 7 nm: Chang et al., ISSCC 2017; 5 nm: TSMC IEDM 2019, WikiChip IEDM 2022 report).
* [VC22] J. Wuu et al., "3D V-Cache", ISSCC 2022: a 64 MB SRAM die of 41 mm^2 in 7 nm.
* [LLMC24] H. Zhang et al., "LLMCompass", ISCA 2024, and its open cost model
  (``cost_model/cost_model.py``, ``ae/figure6/real_hardware/die_area.csv``): PHY areas and
  controller transistor counts from die photos; the on-chip interconnect of the Aldebaran die.
* [D0] TSMC defect densities reported by AnandTech (2020-08-25): N7 0.09/cm^2, N5 0.10/cm^2;
  [NING23] A. Ning et al., "Supply Chain Aware Computer Architecture", ISCA 2023 (model code):
  40/28 nm 0.05/cm^2, 16/14 nm 0.10/cm^2, negative-binomial clustering alpha = 3.
* [ALAD14] Y. S. Shao et al., "Aladdin", ISCA 2014, 40 nm library (via Accelergy): leakage and
  area of a 32-bit adder and multiplier.

Fitted (one constant): ``CORE_OVERHEAD_MM2_45`` -- see ``validation/fit_area.py``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from ..errors import SpecError
from ..units import parse_quantity
from . import tech
from .spec import Arch

__all__ = ["area_breakdown", "device_cost_usd", "die_area_mm2", "die_cost_usd", "die_yield", "dies_per_wafer",
           "leakage_power_w", "peak_dynamic_power_w"]

# --- technology table ---------------------------------------------------------------------------

#: logic area relative to 45 nm [SB17]; 5 nm = 7 nm x 96.3/138.2 (logic density 7 -> 5 nm, [CSET20]);
#: 12 nm is TSMC's 16 nm-class node, 4 nm (4N) its 5 nm-class node (the tables of arch/tech.py do the same)
AREA_FACTOR = {45: 1.0, 32: 0.46, 20: 0.21, 16: 0.19, 12: 0.19, 10: 0.10, 7: 0.059, 5: 0.059 * 96.3 / 138.2,
               4: 0.059 * 96.3 / 138.2}
#: logic transistor density, million transistors per mm^2 [CSET20] (for coefficients given as transistor counts)
DENSITY_MTR_MM2 = {40: 7.7, 28: 15.3, 16: 28.9, 12: 28.9, 7: 96.3, 5: 138.2, 4: 138.2}
#: high-density 6T SRAM bitcell, um^2 [SRAM]
SRAM_BITCELL_UM2 = {40: 0.242, 28: 0.127, 16: 0.070, 12: 0.070, 7: 0.027, 5: 0.021, 4: 0.021}
#: foundry sale price of a processed 300 mm wafer, USD (2020) [CSET20]
WAFER_COST_USD = {40: 2274.0, 28: 2891.0, 16: 3984.0, 12: 3984.0, 10: 5992.0, 7: 9346.0, 5: 16988.0, 4: 16988.0}
#: random defect density D0, defects per cm^2 ([NING23] for 40/28/16 nm, [D0] for 7/5 nm)
DEFECT_DENSITY_CM2 = {40: 0.05, 28: 0.05, 16: 0.10, 12: 0.10, 7: 0.09, 5: 0.10, 4: 0.10}
#: negative-binomial defect clustering parameter [NING23]
CLUSTER_ALPHA = 3.0
#: lithography reticle limit, mm^2 (26 mm x 33 mm field)
RETICLE_MM2 = 858.0

# --- component coefficients ---------------------------------------------------------------------

#: [HOR14] area of arithmetic units at 45 nm, um^2
HOROWITZ_AREA_45NM = {
    "int8_add": 36.0, "int16_add": 67.0, "int32_add": 137.0, "fp16_add": 1360.0, "fp32_add": 4184.0,
    "int8_mul": 282.0, "int32_mul": 3495.0, "fp16_mul": 1640.0, "fp32_mul": 7700.0,
}
#: SRAM array efficiency (bitcell area / macro area) of [VC22]: 64 MiB of 0.027 um^2 cells in 41 mm^2
SRAM_EFFICIENCY = 64 * 2**20 * 8 * 0.027e-6 / 41.0
#: [LLMC24] PHY area per interface (mm^2, does not scale with node) and controller transistors per interface.
#: HBM: one 1024-bit stack; other DRAM: one 32-bit channel (DDR5 PHY); PCIe: one lane; NVLink, Infinity Fabric: one link
PHY_MM2 = {"hbm": 10.45, "dram": 1.45, "pcie4": 0.48, "pcie5": 0.64, "nvlink3": 1.888, "nvlink4": 0.965,
           "infinity_fabric": 5.69}
CTRL_TRANSISTORS = {"hbm": 552_743_000, "dram": 90_446_400, "pcie4": 3_962_500, "pcie5": 5_372_100,
                    "nvlink3": 74_632_000, "nvlink4": 86_628_000, "infinity_fabric": 348_148_000}
IO_KINDS = ("pcie4", "pcie5", "nvlink3", "nvlink4", "infinity_fabric")
#: peak bandwidth of one DRAM interface, bytes/s: pin rate x width (JEDEC JESD235A/C, JESD238 for HBM2/2e/3;
#: HBM3e 9.6 Gb/s vendor parts; GDDR6 16 Gb/s JESD250; GDDR6X 24 Gb/s Micron; LPDDR4X 4266 MT/s; LPDDR5 6400;
#: DDR4 3200; DDR5 6400 MT/s)
DRAM_INTERFACE_BPS = {
    "hbm2": 2.4e9 * 128, "hbm2e": 3.6e9 * 128, "hbm3": 6.4e9 * 128, "hbm3e": 9.6e9 * 128,
    "gddr6": 16e9 * 4, "gddr6x": 24e9 * 4, "lpddr4": 4.266e9 * 4, "lpddr5": 6.4e9 * 4, "ddr4": 3.2e9 * 4, "ddr5": 6.4e9 * 4,
}
#: on-chip interconnect per core, mm^2 at 6 nm: 33 mm^2 over the 112 CUs of AMD's Aldebaran die (die photo, [LLMC24])
NOC_MM2_PER_CORE_6NM = 33.0 / 112

#: fitted: control, scheduling, special-function and other per-core logic the components above omit, 45 nm-equivalent
#: mm^2 per core (a GPU SM / CU or one matrix unit). Fitted by ``validation/fit_area.py`` on the H100 (814 mm^2) only.
CORE_OVERHEAD_MM2_45 = 79.63

# --- leakage ------------------------------------------------------------------------------------

#: [ALAD14] 40 nm: 32-bit adder 2.4 uW in 278 um^2, 32-bit multiplier 80 uW in 6350 um^2 -> W per mm^2
LEAKAGE_W_MM2_40NM = (2.4e-6 + 80e-6) / ((278.0 + 6350.0) * 1e-6)

# --- cost ---------------------------------------------------------------------------------------

#: DRAM price, USD per GiB: HBM2/2e $7 and DDR/LPDDR $2.4 (DRAMeXchange, Oct 2023, as used by [LLMC24]);
#: GDDR6/6X $3.364 (8 Gb GDDR6 spot, DRAMeXchange June 2023, reported by Tom's Hardware / 3DCenter);
#: HBM3/3e $17.5 (Silicon Analysts H100 bill of materials, Feb 2026: $1.4k of HBM3 for 80 GB)
DRAM_USD_PER_GIB = {"hbm2": 7.0, "hbm2e": 7.0, "hbm3": 17.5, "hbm3e": 17.5, "gddr6": 3.364, "gddr6x": 3.364,
                    "lpddr4": 2.4, "lpddr5": 2.4, "ddr4": 2.4, "ddr5": 2.4}
#: package + assembly, USD: 2.5D interposer package of an HBM device $750 (Silicon Analysts H100, CoWoS-S);
#: flip-chip BGA package $20 + $1 assembly otherwise (Moonwalk, as used by [NING23])
PACKAGE_USD = {"interposer": 750.0, "flip_chip": 21.0}

DRAM_KINDS = tuple(DRAM_INTERFACE_BPS)
ON_CHIP_KINDS = ("sram", "regfile")


def _interp(table: dict[int, float], node: float) -> float:
    """Log-log interpolation of a per-node table (like ``arch/tech.py``)."""
    if node in table:
        return table[int(node)]
    nodes = sorted(table)
    xs, ys = np.log([float(n) for n in nodes]), np.log([table[n] for n in nodes])
    return float(np.exp(np.interp(math.log(node), xs, ys)))


def _check_node(node: Any) -> float:
    lo, hi = min(WAFER_COST_USD), max(WAFER_COST_USD)
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        raise SpecError(f"technology node must be a number of nanometres, got {node!r}")
    if not lo <= node <= hi:
        raise SpecError(f"technology node {node} nm is outside the area/cost table ({lo}-{hi} nm)")
    return float(node)


def _node(arch: Arch) -> float:
    node = arch.meta.get("technology_nm")
    if node is None:
        raise SpecError(f"device {arch.name!r} has no technology_nm; set it (the process node in nm, e.g. 7) "
                        "to estimate area, power and cost")
    return _check_node(node)


def area_factor(node: float) -> float:
    """Logic area at ``node`` relative to 45 nm ([SB17], [CSET20])."""
    return _interp(AREA_FACTOR, _check_node(node))


def sram_mm2_per_byte(node: float) -> float:
    """SRAM macro area per byte at ``node``: bitcell x 8 / array efficiency of [VC22]."""
    return _interp(SRAM_BITCELL_UM2, _check_node(node)) * 8 * 1e-6 / SRAM_EFFICIENCY


def mac_area_um2_45(compute: str) -> float:
    """Area of one MAC lane of a compute class at 45 nm ([HOR14]): a multiplier in the input format
    (scaled by the square of the significand / integer width, as ``tech.mac_energy_pj`` scales energy)
    plus an adder in the accumulator format (fp32 / int32)."""
    h = HOROWITZ_AREA_45NM
    if compute in tech._SIGNIFICAND:
        mul = h["fp32_mul"] if compute == "fp32" else h["fp16_mul"] * (tech._SIGNIFICAND[compute] / 11) ** 2
        return mul + h["fp32_add"]
    if compute in tech._INT_BITS:
        bits = tech._INT_BITS[compute]
        return (h["int32_mul"] if bits == 32 else h["int8_mul"] * (bits / 8) ** 2) + h["int32_add"]
    raise SpecError(f"no MAC area for compute class {compute!r}; known: {', '.join([*tech._SIGNIFICAND, *tech._INT_BITS])}")


def fma_area_um2_45(compute: str) -> float:
    """Area of one vector FMA lane at 45 nm ([HOR14]): multiplier and adder in the lane's own format
    (``exp`` is counted as an fp32 lane, as ``tech.flop_energy_pj`` does)."""
    h = HOROWITZ_AREA_45NM
    compute = "fp32" if compute == "exp" else compute
    if compute == "fp32":
        return h["fp32_mul"] + h["fp32_add"]
    if compute in tech._SIGNIFICAND:
        return h["fp16_mul"] * (tech._SIGNIFICAND[compute] / 11) ** 2 + h["fp16_add"]
    if compute in tech._INT_BITS:
        bits = tech._INT_BITS[compute]
        if bits == 32:
            return h["int32_mul"] + h["int32_add"]
        return h["int8_mul"] * (bits / 8) ** 2 + h["int8_add"] * bits / 8
    raise SpecError(f"no vector lane area for compute class {compute!r}")


# --- physical configuration ---------------------------------------------------------------------

_DIE_KEYS = {"matrix_instances", "vector_instances", "memory", "dram_interfaces", "io", "chiplets", "ref"}


def _pos_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v <= 0:
        raise SpecError(f"{where}: must be a positive integer, got {v!r}")
    return int(v)


def _nonneg_number(v: Any, where: str, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise SpecError(f"{where}: must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
    return float(v)


def _parse_ref(given: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``die.ref`` section (what :func:`die_reference` wrote): positive unit counts, positive level
    capacities (bytes) and instances, a non-negative DRAM bandwidth (bytes/s)."""
    mem = given["memory"]
    if not isinstance(mem, dict):
        raise SpecError(f"{where}.ref.memory: must map level names to {{capacity, instances}}")
    levels = {}
    for name, lv in mem.items():
        if not isinstance(lv, dict) or set(lv) != {"capacity", "instances"}:
            raise SpecError(f"{where}.ref.memory.{name}: must give capacity (bytes) and instances")
        levels[str(name)] = {"capacity": _nonneg_number(lv["capacity"], f"{where}.ref.memory.{name}.capacity", True),
                             "instances": _pos_int(lv["instances"], f"{where}.ref.memory.{name}.instances")}
    return {"matrix_instances": _pos_int(given["matrix_instances"], f"{where}.ref.matrix_instances"),
            "vector_instances": _pos_int(given["vector_instances"], f"{where}.ref.vector_instances"),
            "memory": levels,
            "dram_bandwidth": _nonneg_number(given["dram_bandwidth"], f"{where}.ref.dram_bandwidth", False)}


def parse_die(d: Any, arch: Arch) -> dict[str, Any]:
    """Validate a preset's optional ``die:`` section: the physical die where the device enables fewer units
    (e.g. 128 SMs on the die, 108 enabled). Keeps the enabled values it refers to, so that a variant of the
    device with more or fewer units keeps the same spare fraction. A physical value below the enabled one
    (e.g. a search raised the enabled count past it) means no spares: the die holds what is enabled."""
    where = f"device {arch.name!r} die"
    if not isinstance(d, dict):
        raise SpecError(f"{where}: must be a mapping, e.g. {{matrix_instances: 128}}")
    unknown = sorted(set(d) - _DIE_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(sorted(_DIE_KEYS))}")
    given = d.get("ref")
    if given is not None:  # the enabled values the physical ones refer to, kept by a variant of the device
        if not isinstance(given, dict) or set(given) != {"matrix_instances", "vector_instances", "memory", "dram_bandwidth"}:
            raise SpecError(f"{where}.ref: must be what die_reference() gives (matrix_instances, vector_instances, "
                            "memory, dram_bandwidth)")
        out: dict[str, Any] = {"ref": _parse_ref(given, where)}
    else:
        out = {"ref": {"matrix_instances": arch.matrix.instances, "vector_instances": arch.vector.instances,
                       "memory": {}, "dram_bandwidth": _dram_bandwidth(arch)}}
    for k in ("matrix_instances", "vector_instances", "dram_interfaces", "chiplets"):
        if k in d:
            out[k] = _pos_int(d[k], f"{where}.{k}")
    mem = d.get("memory") or {}
    if not isinstance(mem, dict):
        raise SpecError(f"{where}.memory: must map level names to {{capacity, instances}}")
    out["memory"] = {}
    for name, lv in mem.items():
        level = arch.level(str(name))
        if not isinstance(lv, dict) or not lv or set(lv) - {"capacity", "instances"}:
            raise SpecError(f"{where}.memory.{name}: give capacity and/or instances of the physical level")
        phys: dict[str, float] = {}
        if "capacity" in lv:
            phys["capacity"] = parse_quantity(lv["capacity"], "bytes", f"{where}.memory.{name}.capacity")
            if not phys["capacity"] > 0:
                raise SpecError(f"{where}.memory.{name}.capacity: must be positive")
        if "instances" in lv:
            phys["instances"] = _pos_int(lv["instances"], f"{where}.memory.{name}.instances")
        out["memory"][level.name] = phys
        if given is None:
            out["ref"]["memory"][level.name] = {"capacity": level.capacity_bytes, "instances": level.instances}
        elif level.name not in out["ref"]["memory"]:
            raise SpecError(f"{where}.ref.memory: has no entry for level {level.name!r}")
    io = d.get("io") or {}
    if not isinstance(io, dict) or set(io) - set(IO_KINDS):
        raise SpecError(f"{where}.io: must map I/O kinds ({', '.join(IO_KINDS)}) to lane/link counts")
    out["io"] = {k: _pos_int(v, f"{where}.io.{k}") for k, v in io.items()}
    return out


def die_reference(arch: Arch) -> dict[str, Any]:
    """The enabled values a device's ``die:`` section refers to (``ref``), for a variant built from
    its YAML (a design-space trial) to keep the device's physical/enabled ratios."""
    return copy.deepcopy(arch.meta["die"]["ref"]) if "die" in arch.meta else {}


def _kind(arch: Arch, i: int) -> str:
    """Technology of memory level ``i``: its ``kind``; without one the outermost level is DDR4 DRAM and
    the others SRAM."""
    lv = arch.memory[i]
    kind = tech.level_kind((arch.meta.get("memory_kinds") or {}).get(lv.name), i)
    if kind not in DRAM_KINDS and kind not in ON_CHIP_KINDS:
        raise SpecError(f"device {arch.name!r} level {lv.name!r}: unknown memory kind {kind!r}; "
                        f"use sram, regfile or one of {', '.join(DRAM_KINDS)}")
    return str(kind)


def _dram_bandwidth(arch: Arch) -> float:
    return sum(lv.bandwidth_Bps * lv.instances for i, lv in enumerate(arch.memory) if _kind(arch, i) in DRAM_KINDS)


def _scaled(enabled: float, phys: float | None, ref: float | None) -> float:
    return enabled if phys is None or not ref else enabled * phys / ref


def physical(arch: Arch) -> dict[str, Any]:
    """The physical configuration the area model counts: the enabled units scaled by the ``die:``
    section's physical/enabled ratios (no section: the die holds exactly the enabled units)."""
    die = arch.meta.get("die") or {}
    ref = die.get("ref", {})
    scale = lambda k, n: max(n, round(_scaled(n, die.get(k), ref.get(k))))  # noqa: E731
    levels = []
    for i, lv in enumerate(arch.memory):
        p, r = die.get("memory", {}).get(lv.name, {}), ref.get("memory", {}).get(lv.name, {})
        cap = max(lv.capacity_bytes, _scaled(lv.capacity_bytes, p.get("capacity"), r.get("capacity")))
        n = max(lv.instances, round(_scaled(lv.instances, p.get("instances"), r.get("instances"))))
        levels.append((lv, _kind(arch, i), cap, n))
    bw = _dram_bandwidth(arch)
    dram = []  # (kind, interfaces, bytes) per DRAM level
    for i, (lv, kind, _cap, _n) in enumerate(levels):
        if kind in DRAM_KINDS:
            need = math.ceil(lv.bandwidth_Bps * lv.instances / DRAM_INTERFACE_BPS[kind] - 1e-9)
            if i == 0 and "dram_interfaces" in die and ref.get("dram_bandwidth", 0) > 0:  # never fewer than the bandwidth needs
                need = max(need, math.ceil(die["dram_interfaces"] * bw / ref["dram_bandwidth"] - 1e-9))
            dram.append((kind, max(1, need), lv.capacity_bytes * lv.instances))
    return {"cores": scale("matrix_instances", arch.matrix.instances),
            "vector": scale("vector_instances", arch.vector.instances),
            "levels": [(lv.name, kind, cap, n) for lv, kind, cap, n in levels if kind in ON_CHIP_KINDS],
            "dram": dram, "io": dict(die.get("io", {})), "chiplets": int(die.get("chiplets", 1))}


# --- area ---------------------------------------------------------------------------------------


#: device classes the area and cost model does not cover, and why
NOT_COVERED = {
    "wafer": "a wafer-scale device: the area and cost model covers reticle-sized dies (its published wafer area is "
             "in the preset's die_area_mm2)",
    "fpga": "an FPGA: its die is the part's, and a template's cost is the resources it uses "
            "(xpusim.arch.fpga.estimate_resources), not die area",
    "dataflow": "a dataflow (RDU) device: the area model's per-core overhead is fitted on GPU SMs and does not describe "
                "PCUs and PMUs",
    "pim": "a PIM device: its PUs sit in DRAM dies, which the logic-die area and cost model (fitted per-core overhead, "
           "logic density) does not cover",
}


def matrix_classes(arch: Arch) -> dict[str, float]:
    """The matrix unit's classes with silicon of their own: a class no faster than the vector unit's
    FMAs of the same class runs on those lanes (a GPU's fp32 GEMMs on its CUDA cores), which the vector
    area already counts (a unit's ``runs_as`` classes have no rate entry at all)."""
    per_unit = arch.matrix.instances / max(arch.vector.instances, 1)  # matrix units per vector unit
    vec = arch.vector.rate_per_cycle
    own = {c: r for c, r in arch.matrix.rate_per_cycle.items() if not (c in vec and vec[c] / 2 >= r * per_unit)}
    return own or dict(arch.matrix.rate_per_cycle)


def area_breakdown(arch: Arch) -> dict[str, float]:
    """Die area per component, mm^2 (all chiplets together): ``matrix``, ``vector``, one entry per on-chip
    memory level (``sram:<name>`` / ``regfile:<name>``), ``dram_phy`` (PHYs + controllers), ``noc``, ``io``
    and ``other`` (fitted per-core control logic)."""
    if arch.device_class in NOT_COVERED:
        raise SpecError(f"{arch.name} is {NOT_COVERED[arch.device_class]}")
    node = _node(arch)
    phys, f, dens = physical(arch), area_factor(node), _interp(DENSITY_MTR_MM2, node)
    out = {"matrix": phys["cores"] * f * 1e-6 * max(r * mac_area_um2_45(c) for c, r in matrix_classes(arch).items()),
           "vector": phys["vector"] * f * 1e-6 * max(r / 2 * fma_area_um2_45(c) for c, r in arch.vector.rate_per_cycle.items())}
    for name, kind, cap, n in phys["levels"]:
        out[f"{kind}:{name}"] = cap * n * sram_mm2_per_byte(node)
    out["dram_phy"] = sum(n * (PHY_MM2[_phy(kind)] + CTRL_TRANSISTORS[_phy(kind)] / 1e6 / dens) for kind, n, _ in phys["dram"])
    out["noc"] = phys["cores"] * NOC_MM2_PER_CORE_6NM * f / area_factor(6)
    out["io"] = sum(n * (PHY_MM2[k] + CTRL_TRANSISTORS[k] / 1e6 / dens) for k, n in phys["io"].items())
    out["other"] = phys["cores"] * CORE_OVERHEAD_MM2_45 * f
    return out


def _phy(kind: str) -> str:
    return "hbm" if kind.startswith("hbm") else "dram"


def die_area_mm2(arch: Arch) -> float:
    """Total silicon area of the device's logic die(s), mm^2."""
    return float(sum(area_breakdown(arch).values()))


# --- power --------------------------------------------------------------------------------------


def leakage_power_w(arch: Arch) -> float:
    """Static power, W: die area x the leakage density of [ALAD14]'s 40 nm adder and multiplier, scaled to the
    node as leakage per device (the energy factor of ``arch/tech.py``, as Accelergy scales leakage) over area per
    device ([SB17]). A typical-corner figure: leakage at operating temperature is higher."""
    node = _node(arch)
    per_mm2 = LEAKAGE_W_MM2_40NM * (tech.node_factor(node) / tech.node_factor(40)) / (area_factor(node) / area_factor(40))
    return die_area_mm2(arch) * per_mm2


def _energy(unit_energy: dict[str, float], compute: str, node: float | None, mac: bool) -> float:
    if compute in unit_energy:
        return unit_energy[compute]
    if node is None:
        return 0.0
    return tech.mac_energy_pj(compute, node) if mac else tech.flop_energy_pj(compute, node)


def peak_dynamic_power_w(arch: Arch) -> float:
    """Dynamic power with every enabled MAC and vector lane busy at its most power-hungry compute class and every
    memory level moving data at its peak bandwidth, W: ``sum(rate x instances x clock x pJ) + sum(bandwidth x
    instances x mean(read, write pJ/B))``. Energies are the device's (``arch/tech.py`` fills missing ones)."""
    node = arch.meta.get("technology_nm")
    p = 0.0
    for unit, rates, clock, mac in ((arch.matrix, matrix_classes(arch), arch.matrix_clock_hz, True),
                                    (arch.vector, arch.vector.rate_per_cycle, arch.vector_clock_hz, False)):
        p += max(r * _energy(unit.energy_pj, c, node, mac) for c, r in rates.items()) * unit.instances * clock
    p += sum(lv.bandwidth_Bps * lv.instances * (lv.read_energy_pj_per_byte + lv.write_energy_pj_per_byte) / 2
             for lv in arch.memory)
    return p * 1e-12


# --- yield and cost -----------------------------------------------------------------------------


def _check_area(area_mm2: Any) -> float:
    if isinstance(area_mm2, bool) or not isinstance(area_mm2, int | float) or not (math.isfinite(area_mm2) and area_mm2 > 0):
        raise SpecError(f"die area must be a positive number of mm^2, got {area_mm2!r}")
    return float(area_mm2)


def die_yield(area_mm2: float, node_nm: float) -> float:
    """Fraction of good dies, negative binomial: ``(1 + A * D0 / alpha) ** -alpha`` (A in cm^2, D0 of the node)."""
    a = _check_area(area_mm2) / 100.0
    return float((1.0 + a * _interp(DEFECT_DENSITY_CM2, _check_node(node_nm)) / CLUSTER_ALPHA) ** -CLUSTER_ALPHA)


def dies_per_wafer(area_mm2: float, wafer_mm: float = 300) -> int:
    """Gross dies per wafer: ``pi (d/2)^2 / A - pi d / sqrt(2 A)`` (whole dies only, edge loss included)."""
    a = _check_area(area_mm2)
    if isinstance(wafer_mm, bool) or not isinstance(wafer_mm, int | float) or not (math.isfinite(wafer_mm) and wafer_mm > 0):
        raise SpecError(f"wafer diameter must be a positive number of mm, got {wafer_mm!r}")
    return max(0, math.floor(math.pi * (wafer_mm / 2) ** 2 / a - math.pi * wafer_mm / math.sqrt(2 * a)))


def die_cost_usd(arch: Arch) -> float:
    """Cost of the device's logic silicon: for each of its ``chiplets`` equal dies, the wafer price over the good
    dies per wafer."""
    node, n = _node(arch), physical(arch)["chiplets"]
    area = die_area_mm2(arch) / n
    good = dies_per_wafer(area) * die_yield(area, node)
    if good <= 0:
        raise SpecError(f"device {arch.name!r}: a die of {area:.0f} mm^2 does not fit a 300 mm wafer; split it into chiplets")
    return n * _interp(WAFER_COST_USD, node) / good


def device_cost_usd(arch: Arch) -> float:
    """Manufacturing cost of the device, USD: logic die(s) + DRAM (price per GiB by kind) + package."""
    dram = physical(arch)["dram"]
    mem = sum(DRAM_USD_PER_GIB[kind] * nbytes / 2**30 for kind, _, nbytes in dram)
    package = PACKAGE_USD["interposer" if any(k.startswith("hbm") for k, _, _ in dram) else "flip_chip"]
    return die_cost_usd(arch) + mem + package
