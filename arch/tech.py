"""Technology table: energy per operation and per byte moved, by process node.

Sources (details and ranges in ``docs/devices.md``, section *Energy*):

* 45 nm, 0.9 V operation energies: M. Horowitz, "Computing's energy problem (and what we can do
  about it)", ISSCC 2014, Fig. 1.1.9.
* Node scaling: A. Stillmaker, B. Baas, "Scaling equations for the accurate prediction of CMOS device
  performance from 180 nm to 7 nm", Integration 58 (2017) — energy factors relative to 45 nm at
  0.9 V for 28/16/7 nm; 5 nm from TSMC's N5-vs-N7 "-30 % power at iso-speed".
* DRAM interfaces (pJ/bit): HBM2 3.97 (O'Connor et al., "Fine-Grained DRAM", MICRO 2017);
  GDDR6 7.5 and GDDR6X 7.25 (Micron ultra-bandwidth solutions table); LPDDR4 8 and DDR3 70
  (Accelergy hwcomponents-cacti DRAM table). DDR4, DDR5 and LPDDR5 have no figure in those
  sources: they are derived from DDR3's and LPDDR4's by the square of the JEDEC supply voltage
  (``E ~ C V^2``; :data:`DRAM_SUPPLY_V`), an estimate (docs/devices.md, *Energy*).

Derived quantities (formulas, not measurements):

* A MAC = one multiply in the input format plus one add in the accumulator format. Multiplier
  energy scales with the square of the significand width relative to Horowitz's fp16 (11 bits) or
  int8 (8 bits) multiplier.
* SRAM energy per byte is a power law ``E = a * capacity**b`` fitted through Horowitz's three cache
  points (8 KB, 32 KB, 1 MB per 64-bit access), times the node factor.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from ..errors import SpecError

#: Horowitz ISSCC 2014, 45 nm 0.9 V, pJ per operation
HOROWITZ_45NM = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "int8_mul": 0.2, "int32_mul": 3.1,
    "fp16_add": 0.4, "fp32_add": 0.9, "fp16_mul": 1.1, "fp32_mul": 3.7,
}
#: Horowitz ISSCC 2014: cache read energy per 64-bit access (pJ) by capacity (bytes)
HOROWITZ_SRAM_45NM = {8 * 1024: 10.0, 32 * 1024: 20.0, 1024 * 1024: 100.0}

#: energy relative to 45 nm at 0.9 V (Stillmaker & Baas 2017; 5 nm = 7 nm x 0.70, TSMC N5 claim)
NODE_ENERGY_FACTOR = {45: 1.0, 28: 0.53, 16: 0.17, 12: 0.17, 7: 0.080, 5: 0.056, 4: 0.056}

#: nominal core supply (V) of the DRAM standards derived by voltage scaling, and of the standard each
#: derives from: JEDEC JESD79-3 (DDR3 VDD 1.5 V), JESD79-4 (DDR4 1.2 V), JESD79-5 (DDR5 1.1 V),
#: JESD209-4 (LPDDR4 VDD2 1.1 V), JESD209-5 (LPDDR5 VDD2 1.05 V)
DRAM_SUPPLY_V = {"ddr3": 1.5, "ddr4": 1.2, "ddr5": 1.1, "lpddr4": 1.1, "lpddr5": 1.05}
#: the measured figure each voltage-scaled standard derives from
_DERIVED_FROM = {"ddr4": "ddr3", "ddr5": "ddr3", "lpddr5": "lpddr4"}
#: DRAM interface energy, pJ per bit (device + I/O), node independent: cited figures, and the
#: standards of ``_DERIVED_FROM`` scaled from theirs by (V / V_source)^2
DRAM_PJ_PER_BIT = {
    "hbm2": 3.97, "hbm2e": 3.97, "hbm3": 3.97, "hbm3e": 3.97,  # O'Connor et al. (HBM2); newer stacks no worse
    "gddr6": 7.5, "gddr6x": 7.25, "lpddr4": 8.0,
}
#: DDR3's figure (Accelergy hwcomponents-cacti DRAM table), the source of DDR4's and DDR5's; not a kind
#: of its own (the area model has no DDR3 interface)
DDR3_PJ_PER_BIT = 70.0
DRAM_PJ_PER_BIT.update({k: {**DRAM_PJ_PER_BIT, "ddr3": DDR3_PJ_PER_BIT}[src] * (DRAM_SUPPLY_V[k] / DRAM_SUPPLY_V[src]) ** 2
                        for k, src in _DERIVED_FROM.items()})

#: significand bits (with the hidden bit) of each compute class; integer widths for int classes
_SIGNIFICAND = {"fp32": 24, "tf32": 11, "fp16": 11, "bf16": 8, "fp8": 4, "fp4": 2}
_INT_BITS = {"int8": 8, "int4": 4, "int32": 32}


def node_factor(node_nm: float) -> float:
    """Energy scale factor of a process node relative to 45 nm (log-log between table nodes)."""
    nodes = sorted(NODE_ENERGY_FACTOR)
    if node_nm in NODE_ENERGY_FACTOR:
        return NODE_ENERGY_FACTOR[int(node_nm)]
    if not nodes[0] <= node_nm <= nodes[-1]:
        raise SpecError(f"technology node {node_nm} nm is outside the table ({nodes[0]}-{nodes[-1]} nm)")
    xs = np.log([float(n) for n in nodes])
    ys = np.log([NODE_ENERGY_FACTOR[n] for n in nodes])
    return float(np.exp(np.interp(math.log(node_nm), xs, ys)))


def mac_energy_pj(compute: str, node_nm: float) -> float:
    """Energy of one multiply-accumulate in a compute class (pJ), accumulating in fp32 / int32."""
    h = HOROWITZ_45NM
    if compute in _SIGNIFICAND:
        mul = h["fp32_mul"] if compute == "fp32" else h["fp16_mul"] * (_SIGNIFICAND[compute] / 11) ** 2
        e = mul + h["fp32_add"]
    elif compute in _INT_BITS:
        bits = _INT_BITS[compute]
        mul = h["int32_mul"] if bits == 32 else h["int8_mul"] * (bits / 8) ** 2
        e = mul + h["int32_add"]
    else:
        raise SpecError(f"no MAC energy for compute class {compute!r}")
    return e * node_factor(node_nm)


def flop_energy_pj(compute: str, node_nm: float) -> float:
    """Energy of one vector FLOP (half an FMA) in a compute class (pJ)."""
    if compute == "exp":
        compute = "fp32"
    return 0.5 * mac_energy_pj(compute if compute in _SIGNIFICAND or compute in _INT_BITS else "fp32", node_nm)


@cache
def _sram_fit() -> tuple[float, float]:
    caps = np.log(list(HOROWITZ_SRAM_45NM))
    per_byte = np.log([v / 8.0 for v in HOROWITZ_SRAM_45NM.values()])
    b, a = np.polyfit(caps, per_byte, 1)
    return float(math.exp(a)), float(b)


def sram_energy_pj_per_byte(capacity_bytes: float, node_nm: float) -> float:
    """Read or write energy per byte of an SRAM array of a given capacity (pJ)."""
    a, b = _sram_fit()
    return a * capacity_bytes**b * node_factor(node_nm)


def level_kind(kind: str | None, index: int) -> str:
    """A memory level's technology: its stated ``kind``, else DDR4 DRAM for the outermost level
    (``index`` 0) and SRAM for the others; the rule the energy defaults and the area model share."""
    return str(kind) if kind is not None else ("ddr4" if index == 0 else "sram")


def dram_energy_pj_per_byte(kind: str) -> float:
    if kind not in DRAM_PJ_PER_BIT:
        raise SpecError(f"unknown memory technology {kind!r}; use one of {', '.join(DRAM_PJ_PER_BIT)} or sram")
    return DRAM_PJ_PER_BIT[kind] * 8.0
