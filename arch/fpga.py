"""FPGA device class: the ``fpga:`` section — a part's resources and the accelerator template built on it.

An FPGA preset is a **part** (what the chip offers) plus a **template configuration** (the LLM
engine synthesised on it, after FlightLLM, Zeng et al., FPGA 2024). The section describes

* ``part``: ``dsp``, ``bram`` (36 Kb blocks), ``uram`` (288 Kb blocks), ``lut``, ``ff``, ``slrs``
  (super logic regions) and ``dsp_kind`` (``dsp48e2`` or ``dsp58``); a resource count its vendor's
  readable sources do not give is ``unpublished`` (the fit check then skips it and says so, and a
  search that scores it refuses); on an HBM part optionally
  ``hbm_channels`` (pseudo-channels) with ``hbm_remote_efficiency`` (the rate of an access through
  the HBM switch to a channel outside a port's group, relative to a direct one); optionally
  ``dsp_fmax``, the DSP's maximum clock with every pipeline register used at the part's speed grade
  (its data sheet), above which no template clock closes; optionally ``ddr: {capacity, bandwidth}``,
  a card's DDR behind its HBM (weights that do not fit the HBM overflow into it);
* ``template``: the matrix processing engine — ``cores`` (spread evenly over the SLRs; one per SLR
  in FlightLLM's U280), each with
  ``vpus`` vector processing units, each a DSP chain of ``chain`` DSPs; ``macs_per_dsp`` INT8 MACs a
  DSP retires per cycle (two packed, sharing a weight, on a DSP48E2; a three-element dot product on
  a DSP58); ``sparsity_m`` (the M of N:M sparsity the chain's
  sparse mux supports; 1 for dense); the special-function unit's ``sfu_lanes`` per core; on-chip
  ``buffers`` (bytes: weights, activations, global) mapped to URAM; ``clock`` (the template's closed
  timing); ``hbm_efficiency`` (the sustained fraction of the HBM bandwidth); optional ``hbm_layout``
  (``per_core`` or ``striped``: where the stored matrices live, ``mappers/fpga_hbm.py``); optional
  ``length_buckets: {prefill, decode}`` (length-adaptive compilation: one instruction stream per
  bucket of lengths, so attention runs at the length rounded up to the bucket); optional
  ``attention_block`` (the side of the score blocks a causal mask lets the engine skip whole, as
  FlightLLM's block-sparse attention masks do); optional ``tiers`` (on a card with DDR: ``fill``,
  the default, puts weights and KV cache in HBM first; ``balance`` at most the share of each that
  balances the HBM and DDR streams, ``mappers/tiers.py``);
* ``power`` (optional): the board's power while the engine runs — ``board_idle`` (the board with the
  design loaded and clocked, not computing), ``dsp_energy`` per DSP per cycle and ``lut_energy`` per
  LUT (with its registers) per cycle of the template's logic, activity-independent as a vectorless
  estimate (fitted by ``validation/fit_fpga_power.py``); HBM traffic is counted per byte as on every
  device;
* ``estimate``: the resource estimator's per-unit costs: ``lut_per_dsp`` and ``ff_per_dsp`` (control,
  muxes and adders around each DSP), ``lut_fixed`` / ``ff_fixed`` (schedulers, memory controllers,
  the SFUs), ``max_utilisation`` of each resource a placed-and-routed design reaches.

:func:`estimate_resources` maps a template to DSP/BRAM/URAM/LUT/FF; :func:`check_fits` rejects a
template that does not fit its part (or one SLR's share), naming the overflowing resource. The
preset's ``matrix`` unit must be the template's VPUs (the loader checks instances and INT8 rate);
the ``vector`` unit is the cores' SFUs. Sources in ``docs/devices.md`` (section FPGA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import CapacityError, SpecError
from ..units import parse_quantity
from .sections import TIER_POLICIES, check_section, count, positive

_PART = ("dsp", "bram", "uram", "lut", "ff", "slrs", "dsp_kind")
_PART_HBM = ("hbm_channels", "hbm_remote_efficiency")
_PART_OPTIONAL = _PART_HBM + ("dsp_fmax", "ddr")
_TEMPLATE = ("cores", "vpus", "chain", "macs_per_dsp", "sparsity_m", "sfu_lanes", "buffers", "hbm_efficiency")
_OPTIONAL = ("length_buckets", "hbm_layout", "attention_block", "tiers")
_ESTIMATE = ("lut_per_dsp", "ff_per_dsp", "lut_fixed", "ff_fixed", "max_utilisation")
#: on-chip memory block: URAM 4K x 72 bits (AMD UltraScale+ and Versal)
URAM_BYTES = 288 * 1024 // 8
#: where a template keeps its stored matrices on the HBM channels (mappers/fpga_hbm.py)
HBM_LAYOUTS = ("per_core", "striped")
RESOURCES = ("dsp", "bram", "uram", "lut", "ff")
#: HBM parts have 16 to 64 pseudo-channels; more is refused rather than arrayed per op
MAX_HBM_CHANNELS = 1024


@dataclass(frozen=True)
class Part:
    dsp: int
    bram: int
    uram: int
    lut: int
    ff: int
    slrs: int
    dsp_kind: str
    hbm_channels: int = 0  # HBM pseudo-channels (0: no channel model, the memory is one pool)
    hbm_remote_efficiency: float = 1.0  # rate through the HBM switch to another port group's channel
    dsp_fmax_hz: float = 0.0  # the DSP's maximum clock at the part's speed grade (data sheet); 0: not checked
    ddr_bytes: float = 0.0  # a card's DDR behind its HBM (0: none): capacity, bytes
    ddr_Bps: float = 0.0  # and bandwidth, bytes/s
    unpublished: tuple[str, ...] = ()  # resources whose counts no cited source gives (their fields hold 0)

    def count(self, resource: str) -> int:
        """The part's count of ``resource``; :class:`SpecError` when it is unpublished."""
        if resource in self.unpublished:
            raise SpecError(f"the part's {resource.upper()} count is unpublished (fpga.part.{resource}); give the count "
                            "from the part's data sheet to use it")
        return int(getattr(self, resource))


@dataclass(frozen=True)
class Template:
    cores: int
    vpus: int
    chain: int
    macs_per_dsp: int
    sparsity_m: int
    sfu_lanes: int
    buffers: dict[str, float]
    hbm_efficiency: float
    length_buckets: tuple[int, int] = (1, 1)  # (prefill, decode): the token multiples instructions are compiled for
    hbm_layout: str = "per_core"  # where the stored matrices live on the HBM channels (mappers/fpga_hbm.py)
    attention_block: int = 0  # side of the score blocks a causal mask can skip whole (0: the full q x s plane)
    tiers: str = "fill"  # weights and KV over HBM and the card's DDR: fill (HBM first) or balance (mappers/tiers.py)

    @property
    def dsps(self) -> int:
        return self.cores * self.vpus * self.chain

    @property
    def macs_per_cycle(self) -> int:
        """Dense INT8 MACs per cycle of the whole engine."""
        return self.dsps * self.macs_per_dsp


@dataclass(frozen=True)
class Estimate:
    lut_per_dsp: float
    ff_per_dsp: float
    lut_fixed: float
    ff_fixed: float
    max_utilisation: float


@dataclass(frozen=True)
class Power:
    board_idle_w: float
    dsp_j: float  # per DSP per cycle
    lut_j: float  # per LUT (with its registers) per cycle


@dataclass(frozen=True)
class FpgaSpec:
    part: Part
    template: Template
    estimate: Estimate
    power: Power | None = None


def _where(name: str) -> str:
    return f"device {name!r} fpga"


_LIMIT = 10**9  # no FPGA resource count or template size comes near this
_int = partial(count, limit=_LIMIT)  # a resource count or template size


def _num(d: dict[str, Any], key: str, where: str, low: float = 0.0, high: float = 1e7) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and low <= v <= high):
        raise SpecError(f"{where}.{key}: must be a number in [{low:g}, {high:g}], got {v!r}")
    return float(v)


def parse_fpga(d: Any, name: str = "device") -> FpgaSpec:
    """Parse and validate an ``fpga:`` section (one-line :class:`SpecError` on any bad field)."""
    where = _where(name)
    check_section(d, {"part", "template", "estimate", "power"}, ["part", "template", "estimate"], where,
                  "part, template, estimate; optional power")
    p = check_section(d["part"], set(_PART + _PART_OPTIONAL), list(_PART), f"{where}.part",
                      ", ".join(_PART) + "; optional hbm_channels with hbm_remote_efficiency, dsp_fmax, ddr")
    if p["dsp_kind"] not in ("dsp48e2", "dsp58"):
        raise SpecError(f"{where}.part.dsp_kind: must be dsp48e2 or dsp58, got {p['dsp_kind']!r}")
    for k in RESOURCES:
        if isinstance(p[k], str) and p[k] != "unpublished":
            raise SpecError(f"{where}.part.{k}: must be a positive count, or 'unpublished' where no source gives it, "
                            f"got {p[k]!r}")
    unpublished = tuple(k for k in RESOURCES if p[k] == "unpublished")
    counts = {k: 0 if k in unpublished else _int(p, k, f"{where}.part") for k in _PART[:-1]}
    if ("hbm_channels" in p) != ("hbm_remote_efficiency" in p):
        raise SpecError(f"{where}.part: hbm_channels and hbm_remote_efficiency go together (the pseudo-channels and "
                        "the relative rate through the HBM switch)")
    hbm = ((_int(p, "hbm_channels", f"{where}.part"), _num(p, "hbm_remote_efficiency", f"{where}.part", 1e-3, 1.0))
           if "hbm_channels" in p else (0, 1.0))
    if hbm[0] > MAX_HBM_CHANNELS:
        raise SpecError(f"{where}.part.hbm_channels: at most {MAX_HBM_CHANNELS} pseudo-channels, got {hbm[0]:,}")
    part = Part(dsp=counts["dsp"], bram=counts["bram"], uram=counts["uram"], lut=counts["lut"], ff=counts["ff"],
                slrs=counts["slrs"], dsp_kind=str(p["dsp_kind"]), hbm_channels=hbm[0], hbm_remote_efficiency=hbm[1],
                dsp_fmax_hz=_fmax(p, where), unpublished=unpublished, **_ddr(p, where))
    t = check_section(d["template"], set(_TEMPLATE + _OPTIONAL), list(_TEMPLATE), f"{where}.template",
                      ", ".join(_TEMPLATE) + "; optional " + ", ".join(_OPTIONAL))
    lb = check_section(t.get("length_buckets", {"prefill": 1, "decode": 1}), {"prefill", "decode"}, ["prefill", "decode"],
                       f"{where}.template.length_buckets", "prefill, decode (token multiples)")
    buckets = (_int(lb, "prefill", f"{where}.template.length_buckets"), _int(lb, "decode", f"{where}.template.length_buckets"))
    bufs = check_section(t["buffers"], {"weights", "activations", "global"}, ["weights", "activations", "global"],
                         f"{where}.template.buffers", "weights, activations, global (bytes)")
    buffers = {k: positive(parse_quantity(v, "bytes", f"{where}.template.buffers.{k}"),
                           f"{where}.template.buffers.{k}", "'2 MiB'") for k, v in bufs.items()}
    layout = t.get("hbm_layout", "per_core")
    if layout not in HBM_LAYOUTS:
        raise SpecError(f"{where}.template.hbm_layout: must be per_core or striped, got {layout!r}")
    if "hbm_layout" in t and not part.hbm_channels:
        raise SpecError(f"{where}.template.hbm_layout: needs the part's hbm_channels (an HBM part's pseudo-channels)")
    policy = t.get("tiers", "fill")
    if policy not in TIER_POLICIES:
        raise SpecError(f"{where}.template.tiers: must be {' or '.join(TIER_POLICIES)}, got {policy!r}")
    m = _int(t, "sparsity_m", f"{where}.template")
    if m & (m - 1):
        raise SpecError(f"{where}.template.sparsity_m: must be a power of two (N:M sparsity), got {m}")
    template = Template(cores=_int(t, "cores", f"{where}.template"), vpus=_int(t, "vpus", f"{where}.template"),
                        chain=_int(t, "chain", f"{where}.template"), macs_per_dsp=_int(t, "macs_per_dsp", f"{where}.template"),
                        sparsity_m=m, sfu_lanes=_int(t, "sfu_lanes", f"{where}.template"), buffers=buffers,
                        hbm_efficiency=_num(t, "hbm_efficiency", f"{where}.template", 1e-3, 1.0), length_buckets=buckets,
                        hbm_layout=str(layout), tiers=str(policy),
                        attention_block=_int(t, "attention_block", f"{where}.template") if "attention_block" in t else 0)
    if part.hbm_channels and layout == "per_core" and part.hbm_channels < template.cores:
        raise SpecError(f"{where}: a per_core HBM layout needs a channel per core, but {template.cores} cores share "
                        f"{part.hbm_channels} channels; use hbm_layout: striped or fewer cores")
    e = check_section(d["estimate"], set(_ESTIMATE), list(_ESTIMATE), f"{where}.estimate", ", ".join(_ESTIMATE))
    per = {k: _num(e, k, f"{where}.estimate") for k in _ESTIMATE[:-1]}
    est = Estimate(lut_per_dsp=per["lut_per_dsp"], ff_per_dsp=per["ff_per_dsp"], lut_fixed=per["lut_fixed"],
                   ff_fixed=per["ff_fixed"], max_utilisation=_num(e, "max_utilisation", f"{where}.estimate", 0.01, 1.0))
    return FpgaSpec(part=part, template=template, estimate=est, power=_power(d, where))


#: upper bounds of the power fields (a board draws at most kilowatts; a DSP or LUT cycle costs nanojoules at most)
_POWER_LIMITS = {"board_idle": 1e4, "dsp_energy": 1e-9, "lut_energy": 1e-9}


def _power(d: dict[str, Any], where: str) -> Power | None:
    if "power" not in d:
        return None
    keys = ["board_idle", "dsp_energy", "lut_energy"]
    pw = check_section(d["power"], set(keys), keys, f"{where}.power", "board_idle (W), dsp_energy (J per DSP-cycle), "
                       "lut_energy (J per LUT-cycle)")
    vals = {k: parse_quantity(pw[k], "watts" if k == "board_idle" else "joules", f"{where}.power.{k}") for k in keys}
    for k, v in vals.items():
        if not (0 < v <= _POWER_LIMITS[k]):
            unit = "W" if k == "board_idle" else "J"
            raise SpecError(f"{where}.power.{k}: must be positive and at most {_POWER_LIMITS[k]:g} {unit}, got {pw[k]!r}")
    return Power(board_idle_w=vals["board_idle"], dsp_j=vals["dsp_energy"], lut_j=vals["lut_energy"])


def engine_power_w(spec: FpgaSpec, clock_hz: float) -> dict[str, float] | None:
    """Board power of the running engine (W): the idle board, the template's logic (its DSPs and LUTs
    from :func:`estimate_resources`, each switching every cycle), their sum; ``None`` without a
    ``power`` section."""
    if spec.power is None:
        return None
    used = estimate_resources(spec)
    logic = clock_hz * (spec.power.dsp_j * used["dsp"] + spec.power.lut_j * used["lut"])
    return {"board_idle_w": spec.power.board_idle_w, "logic_w": logic, "running_w": spec.power.board_idle_w + logic}


def estimate_resources(spec: FpgaSpec, template: Template | None = None) -> dict[str, int]:
    """DSP, BRAM, URAM, LUT and FF a template uses: one DSP per chain position; its buffers in URAM
    (whole 288 Kb blocks, per core); LUTs and FFs per DSP plus a fixed part; BRAM for the SFUs'
    line buffers (one 36 Kb block per lane per core)."""
    t = template or spec.template
    e = spec.estimate
    uram = t.cores * sum(math.ceil(b / t.cores / URAM_BYTES) for b in t.buffers.values())
    return {"dsp": t.dsps, "bram": t.cores * t.sfu_lanes, "uram": uram,
            "lut": math.ceil(e.lut_per_dsp * t.dsps + e.lut_fixed), "ff": math.ceil(e.ff_per_dsp * t.dsps + e.ff_fixed)}


def _ddr(p: dict[str, Any], where: str) -> dict[str, float]:
    """The card's DDR tier behind its HBM (``ddr: {capacity, bandwidth}``), if given."""
    if "ddr" not in p:
        return {}
    ddr = check_section(p["ddr"], {"capacity", "bandwidth"}, ["capacity", "bandwidth"], f"{where}.part.ddr",
                        "capacity, bandwidth (e.g. {capacity: 32 GiB, bandwidth: 38.5 GB/s})")
    return {"ddr_bytes": positive(parse_quantity(ddr["capacity"], "bytes", f"{where}.part.ddr.capacity"),
                                  f"{where}.part.ddr.capacity", "'32 GiB'"),
            "ddr_Bps": positive(parse_quantity(ddr["bandwidth"], "bytes_per_s", f"{where}.part.ddr.bandwidth"),
                                f"{where}.part.ddr.bandwidth", "'38.5 GB/s'")}


def _fmax(p: dict[str, Any], where: str) -> float:
    """The part's ``dsp_fmax`` in Hz (0 when absent): a frequency of 1 MHz to 10 GHz."""
    if "dsp_fmax" not in p:
        return 0.0
    f = parse_quantity(p["dsp_fmax"], "hz", f"{where}.part.dsp_fmax")
    if not 1e6 <= f <= 1e10:
        raise SpecError(f"{where}.part.dsp_fmax: must be a frequency from 1 MHz to 10 GHz with its unit, e.g. "
                        f"'775 MHz', got {p['dsp_fmax']!r}")
    return f


def check_clock(spec: FpgaSpec, name: str, clock_hz: float) -> None:
    """:class:`CapacityError` when the template's clock exceeds the part's DSP maximum (``dsp_fmax``):
    the DSP chains are the engine's critical primitive, and no routing closes above their data-sheet
    limit."""
    fmax = spec.part.dsp_fmax_hz
    if fmax and clock_hz > fmax:
        raise CapacityError(f"device {name!r}: the template's clock {clock_hz / 1e6:.6g} MHz exceeds the part's DSP maximum "
                            f"of {fmax / 1e6:.6g} MHz (its speed grade's data sheet); choose a clock up to {fmax / 1e6:.6g} MHz")


#: what shrinks each resource's use in :func:`estimate_resources`
_REMEDY = {"dsp": "use fewer cores, VPUs or shorter chains", "lut": "use fewer cores, VPUs or shorter chains",
           "ff": "use fewer cores, VPUs or shorter chains", "uram": "use smaller buffers (or fewer cores: buffers round "
           "up to whole URAM blocks per core)", "bram": "use fewer SFU lanes or cores"}


def check_fits(spec: FpgaSpec, name: str, template: Template | None = None) -> dict[str, int]:
    """The resources of the template; :class:`CapacityError` naming the first resource over the part's
    budget (its count x ``max_utilisation``), or over one SLR's share of it: the cores are spread
    evenly over the SLRs and a core does not straddle two (FlightLLM's per-die cores). Unpublished
    counts are not checked."""
    t = template or spec.template
    used = estimate_resources(spec, t)
    per_slr = math.ceil(t.cores / spec.part.slrs)
    for r in RESOURCES:
        if r in spec.part.unpublished:  # nothing to check against (the result says so)
            continue
        have = getattr(spec.part, r)
        budget = math.floor(have * spec.estimate.max_utilisation + 1e-9)  # no rounding below an exact budget
        if used[r] > budget:
            raise CapacityError(f"device {name!r}: the template needs {used[r]:,} {r.upper()} but the part allows "
                                f"{budget:,} ({have:,} x {spec.estimate.max_utilisation:g} utilisation); "
                                f"{_REMEDY[r]}")
        slr_budget = math.floor(have / spec.part.slrs * spec.estimate.max_utilisation + 1e-9)  # 1000 / 3 x 0.3 = 99.99..
        slr_used = math.ceil(used[r] / t.cores) * per_slr
        if slr_used > slr_budget:
            raise CapacityError(f"device {name!r}: {per_slr} core(s) per SLR need {slr_used:,} {r.upper()} but one of "
                                f"the {spec.part.slrs} SLRs allows {slr_budget:,}; use fewer or smaller cores")
    return used


def resource_table(arch: Any) -> dict[str, dict[str, int | None]]:
    """``{resource: {"used": n, "available": n}}`` of an FPGA device's template on its part
    (``available`` None where the part's count is unpublished)."""
    spec = fpga_spec(arch)
    used = estimate_resources(spec)
    return {r: {"used": int(used[r]), "available": None if r in spec.part.unpublished else int(getattr(spec.part, r))}
            for r in RESOURCES}


def part_use(arch: Any) -> dict[str, Any]:
    """What a result records of an FPGA device: the template's use of its part (``fpga_resources``) and,
    with a ``power`` section, the running board's power split (``fpga_power``)."""
    power = engine_power_w(fpga_spec(arch), arch.matrix_clock_hz)
    return {"fpga_resources": resource_table(arch), **({"fpga_power": power} if power else {})}


def fpga_spec(arch: Any) -> FpgaSpec:
    """The :class:`FpgaSpec` of an FPGA device (stored under ``rules['fpga']`` by the loader)."""
    spec = arch.rules.get("fpga") if isinstance(arch.rules, dict) else None
    if not isinstance(spec, FpgaSpec):
        raise SpecError(f"device {arch.name!r} is not an FPGA device with an fpga: section (class {arch.device_class!r})")
    return spec
