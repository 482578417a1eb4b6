"""PIM device class: the ``pim:`` section of a bank-level DRAM processing-in-memory preset.

A PIM device is DRAM whose banks feed processing units (PUs) next to them. The section describes

* the DRAM organisation: ``channels`` that compute (pseudo-channels of HBM, channels of GDDR6),
  ``bank_groups`` and ``banks`` per channel, the ``row`` (page) of a bank and the ``column`` access
  (bytes one column command moves out of one bank);
* ``timing``: tCK (a time or the command clock frequency), tRCD, tRP, tRAS, tCCD_S, tCCD_L, tRRD,
  tFAW, tREFI, tRFC, each a time (``"14 ns"``), a count of clocks (``"4 tCK"``) or a plain number
  of clocks; optionally
  ``column_period`` (interval of the all-bank PIM column commands; default tCCD_L) and
  ``command_period`` (one command per channel per period on the command bus; default tCK);
* ``pu``: PUs per channel (each serves ``banks / per_channel`` banks), the bytes of input vector
  a PU holds (``input_buffer``, filled by one broadcast write per channel), how many output
  partial sums it accumulates at once (``accumulators``) and whether an adder tree reduces its
  SIMD lanes to one sum (``adder_tree``; without one every output leaves the PU as one partial sum
  per lane);
* ``mode``: ``all_bank`` (one PIM column command makes every PU of a channel compute on its own
  bank) or ``per_bank`` (a column command drives one bank); ``all_bank_activate``: one ACT opens
  the row in every bank of the channel (tRRD/tFAW do not apply to it);
* ``location``: ``bank`` (PUs on the DRAM dies next to their banks, the default) or ``logic_die``
  (PUs on the HBM base die, as Duplex's Logic-PIM: each channel's PU is fed through the TSVs by the
  banks it reads at once; ``column`` is then the bytes one column period brings down the TSVs to the
  PU, so ``column / column_period`` per channel is the TSV bandwidth);
* ``internal_read_energy`` (optional, pJ per bit): energy of a read that stays inside the DRAM
  (bank to its PU) instead of the memory level's interface energy (which includes the I/O);
* ``dual_row_buffer`` (default false): each bank has a second row buffer for the PUs, so the host
  reads and writes the same banks while the PUs compute (NeuPIMs); without it, host and PIM work on
  shared memory cannot overlap (``--pim-mode concurrent`` is refused there).

The PU count, MACs per cycle and PU clock are the preset's ``matrix`` unit (instances = channels x
PUs per channel); the external interface is the backing memory level's bandwidth. The cost model
that reads this section is ``mappers/pim.py``; sources of every preset number are in
``docs/devices.md`` (section PIM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity
from .sections import check_section, count

_KEYS = {"channels", "bank_groups", "banks", "row", "column", "timing", "pu", "mode", "all_bank_activate", "location",
         "internal_read_energy", "dual_row_buffer"}
LOCATIONS = ("bank", "logic_die")
_TIMING = ("tCK", "tRCD", "tRP", "tRAS", "tCCD_S", "tCCD_L", "tRRD", "tFAW", "tREFI", "tRFC")
_TIMING_OPT = ("column_period", "command_period")
_PU = {"per_channel", "input_buffer", "accumulators", "adder_tree"}
COMMAND_MODES = ("all_bank", "per_bank")  # how a column command drives the banks


@dataclass(frozen=True)
class PimSpec:
    """A parsed ``pim:`` section. Times in seconds, sizes in bytes, counts per channel."""

    channels: int
    bank_groups: int
    banks: int
    row_bytes: int
    column_bytes: int
    tCK: float
    tRCD: float
    tRP: float
    tRAS: float
    tCCD_S: float
    tCCD_L: float
    tRRD: float
    tFAW: float
    tREFI: float
    tRFC: float
    column_period: float
    command_period: float
    pu_per_channel: int
    input_buffer_bytes: int
    accumulators: int
    adder_tree: bool
    mode: str = "all_bank"
    all_bank_activate: bool = True
    location: str = "bank"
    internal_read_energy_pj_per_bit: float | None = None
    dual_row_buffer: bool = False

    @property
    def banks_per_pu(self) -> int:
        return self.banks // self.pu_per_channel

    @property
    def row_columns(self) -> int:
        """Column accesses (bursts) per DRAM row."""
        return self.row_bytes // self.column_bytes

    @property
    def pus(self) -> int:
        return self.channels * self.pu_per_channel

    @property
    def refresh_factor(self) -> float:
        """Time stretch from all-bank refresh: the banks are unavailable tRFC in every tREFI."""
        return 1.0 / (1.0 - self.tRFC / self.tREFI)

    def internal_bandwidth(self) -> float:
        """Bytes/s all PUs read from their banks in all-bank mode (one column each per column period)."""
        return self.pus * self.column_bytes / self.column_period


def _where(name: str) -> str:
    return f"device {name!r} pim"


def _bytes(d: dict[str, Any], key: str, where: str) -> int:
    if key not in d:
        raise SpecError(f"{where}: missing {key!r}")
    v = parse_quantity(d[key], "bytes", f"{where}.{key}")
    if not (v > 0 and v == int(v)):
        raise SpecError(f"{where}.{key}: must be a positive whole number of bytes, e.g. '1 KiB', got {d[key]!r}")
    return int(v)


def _time(v: Any, tck: float | None, where: str) -> float:
    """A timing value: a time with a unit, ``N tCK`` / ``N nCK``, or a plain number of clocks."""
    given = v
    if isinstance(v, str) and v.strip().endswith(("tCK", "nCK")):
        n = v.strip()[:-3].strip()
        try:
            cycles = float(n)
        except ValueError:
            raise SpecError(f"{where}: cannot read {v!r}; write e.g. '4 tCK' or '14 ns'") from None
        v = cycles
    if isinstance(v, bool):
        raise SpecError(f"{where}: must be a time like '14 ns' or a number of clocks like '4 tCK', got {v!r}")
    if isinstance(v, int | float):
        if tck is None:
            raise SpecError(f"{where}: tCK must be a time or a clock frequency with a unit, e.g. '0.833 ns' or '1.2 GHz'")
        s = float(v) * tck
    elif tck is None and isinstance(v, str) and v.strip().endswith("Hz"):
        f = parse_quantity(v, "hz", where)
        s = 1.0 / f if f > 0 else -1.0
    else:
        s = parse_quantity(v, "seconds", where)
    if not (math.isfinite(s) and s > 0):
        raise SpecError(f"{where}: must be a positive time, e.g. '14 ns' or '4 tCK', got {given!r}")
    return s


def parse_pim(d: Any, name: str = "device") -> PimSpec:
    """Parse and validate a ``pim:`` section (one-line :class:`SpecError` on any bad field)."""
    where = _where(name)
    check_section(d, _KEYS, [], where, "channels, banks, row, column, timing, pu")
    channels, groups, banks = (count(d, k, where) for k in ("channels", "bank_groups", "banks"))
    row, column = _bytes(d, "row", where), _bytes(d, "column", where)
    if banks % groups:
        raise SpecError(f"{where}: banks ({banks}) must be a multiple of bank_groups ({groups})")
    if row % column:
        raise SpecError(f"{where}: row ({row} B) must be a whole number of columns ({column} B)")
    t = d.get("timing")
    if not isinstance(t, dict):
        raise SpecError(f"{where}.timing: must map {', '.join(_TIMING)} to times ('14 ns') or clocks ('4 tCK')")
    unknown = sorted(set(t) - set(_TIMING) - set(_TIMING_OPT))
    if unknown:
        raise SpecError(f"{where}.timing: unknown field(s) {unknown}; allowed: {', '.join(_TIMING + _TIMING_OPT)}")
    missing = [k for k in _TIMING if k not in t]
    if missing:
        raise SpecError(f"{where}.timing: missing {', '.join(missing)}")
    tck = _time(t["tCK"], None, f"{where}.timing.tCK")
    times = {k: _time(t[k], tck, f"{where}.timing.{k}") for k in _TIMING[1:]}
    if times["tRAS"] < times["tRCD"]:
        raise SpecError(f"{where}.timing: tRAS ({times['tRAS'] * 1e9:g} ns) must be at least tRCD ({times['tRCD'] * 1e9:g} ns)")
    if times["tRFC"] >= times["tREFI"]:
        raise SpecError(f"{where}.timing: tRFC must be shorter than tREFI (the banks would never be available)")
    col = _time(t.get("column_period", t["tCCD_L"]), tck, f"{where}.timing.column_period")
    cmd = _time(t["command_period"], tck, f"{where}.timing.command_period") if "command_period" in t else tck
    pu = d.get("pu")
    if not isinstance(pu, dict):
        raise SpecError(f"{where}.pu: must be a mapping with per_channel, input_buffer, accumulators, adder_tree")
    unknown = sorted(set(pu) - _PU)
    if unknown:
        raise SpecError(f"{where}.pu: unknown field(s) {unknown}; allowed: {', '.join(sorted(_PU))}")
    per_channel = count(pu, "per_channel", f"{where}.pu")
    if banks % per_channel:
        raise SpecError(f"{where}.pu.per_channel ({per_channel}) must divide the banks per channel ({banks})")
    tree = pu.get("adder_tree")
    if not isinstance(tree, bool):
        raise SpecError(f"{where}.pu.adder_tree: must be true or false, got {tree!r}")
    mode = d.get("mode", "all_bank")
    if mode not in COMMAND_MODES:
        raise SpecError(f"{where}.mode: must be all_bank or per_bank, got {mode!r}")
    ire = d.get("internal_read_energy")
    if ire is not None and (isinstance(ire, bool) or not isinstance(ire, int | float) or not math.isfinite(ire) or ire <= 0):
        raise SpecError(f"{where}.internal_read_energy: must be a positive number of pJ per bit, got {ire!r}")
    location = d.get("location", "bank")
    if location not in LOCATIONS:
        raise SpecError(f"{where}.location: must be bank or logic_die, got {location!r}")
    aba = d.get("all_bank_activate", True)
    if not isinstance(aba, bool):
        raise SpecError(f"{where}.all_bank_activate: must be true or false, got {aba!r}")
    dual = d.get("dual_row_buffer", False)
    if not isinstance(dual, bool):
        raise SpecError(f"{where}.dual_row_buffer: must be true or false, got {dual!r}")
    return PimSpec(
        channels=channels, bank_groups=groups, banks=banks, row_bytes=row, column_bytes=column, tCK=tck, **times,
        column_period=col, command_period=cmd, pu_per_channel=per_channel,
        input_buffer_bytes=_bytes(pu, "input_buffer", f"{where}.pu"),
        accumulators=count(pu, "accumulators", f"{where}.pu"), adder_tree=tree, mode=str(mode),
        all_bank_activate=aba, location=str(location),
        internal_read_energy_pj_per_bit=float(ire) if ire is not None else None, dual_row_buffer=dual,
    )


def check_pim_arch(spec: PimSpec, matrix_instances: int, name: str) -> None:
    """The PUs are the matrix unit: its instance count must be channels x PUs per channel."""
    if matrix_instances != spec.pus:
        raise SpecError(
            f"{_where(name)}: matrix.instances ({matrix_instances}) must equal channels x pu.per_channel "
            f"({spec.channels} x {spec.pu_per_channel} = {spec.pus}): the matrix unit is the PUs"
        )


def pim_spec(arch: Any) -> PimSpec:
    """The :class:`PimSpec` of a PIM device (stored under ``rules['pim']`` by the loader)."""
    spec = arch.rules.get("pim") if isinstance(arch.rules, dict) else None
    if not isinstance(spec, PimSpec):
        raise SpecError(f"device {arch.name!r} is not a PIM device with a pim: section (class {arch.device_class!r})")
    return spec
