"""Design spaces: a base device, knobs over the device, the models and the workloads, weighted
workloads, objectives and constraints, read from YAML.

A knob names what it sets with a ``path``:

* ``device.<field>...`` — a field of the base device's YAML (``device.clock``,
  ``device.matrix.array.0``, ``device.memory.<level name>.capacity``); a value with a ``unit`` is
  written as a quantity (``"4 MiB"``);
* ``model.<field>`` — a :class:`~xpusim.workloads.model.ModelSpec` field of every workload's model
  (``model.weight_dtype``, ``model.kv_dtype``);
* ``workload.<field>`` — a phase field of every workload (``batch``, ``seq``, ``context``);
* ``mapper.objective`` — what the inner mapper optimises (``choices`` of latency, energy, edp);
* with a ``system:`` base (a multi-device system preset instead of ``base:``): ``system.<field>``
  edits the system's YAML (``system.nodes``, ``system.intra.bandwidth``) and ``device.<field>``
  its device's; ``plan.tp`` / ``plan.pp`` / ``plan.dp`` / ``plan.ep`` / ``plan.sp`` set the
  parallel plan (defaults from the space's ``plan:``).

Each knob has ``choices`` or a ``low``/``high`` range (``type`` int or float, optional ``step``,
``log``). When a knob changes a systolic array's shape, its MACs per cycle scale with rows x cols.
Everything but device and system paths is checked when the space loads, and so is every metric
the space scores against what the base device can provide.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch.loader import arch_dict
from ..errors import SpecError, XpusimError
from ..files import load_yaml, read_text

#: metric name -> (direction, unit, meaning)
METRICS: dict[str, tuple[str, str, str]] = {
    "latency": ("minimize", "s", "weighted mean of the workloads' step latencies"),
    "throughput": ("maximize", "tokens/s", "weighted tokens over weighted time"),
    "energy_per_token": ("minimize", "J/token", "weighted energy over weighted tokens"),
    "power_w": ("minimize", "W", "average power over the workloads (dynamic + leakage)"),
    "area_mm2": ("minimize", "mm^2", "modelled die area"),
    "cost_usd": ("minimize", "USD", "modelled device cost (die with yield + memory)"),
    "perf_per_area": ("maximize", "tokens/s/mm^2", "throughput / area"),
    "perf_per_watt": ("maximize", "tokens/J", "throughput / power"),
    "perf_per_dollar": ("maximize", "tokens/s/USD", "throughput / cost"),
    "format_error": ("minimize", "", "relative L2 error of a reduced layer in the model's formats"),
    "memory_fraction": ("minimize", "", "footprint / device memory of the largest workload"),
    "dsp_fraction": ("minimize", "", "an FPGA template's DSPs over the part's (arch/fpga.py estimator)"),
    "lut_fraction": ("minimize", "", "an FPGA template's LUTs over the part's"),
}
KNOB_ROOTS = ("device", "model", "workload", "mapper", "system", "plan")
WORKLOAD_FIELDS = ("model", "phase", "batch", "seq", "context", "weight", "routing")
PHASE_KNOBS = ("batch", "seq", "context")  # the workload fields a knob may set
PLAN_FIELDS = ("tp", "pp", "dp", "ep", "sp")
MAPPER_OBJECTIVES = ("latency", "energy", "edp")
AREA_METRICS = ("area_mm2", "cost_usd", "perf_per_area", "perf_per_dollar")  # need the area and cost model
POWER_METRICS = ("power_w", "perf_per_watt")  # need a static power, or the area model's leakage
FPGA_METRICS = ("dsp_fraction", "lut_fraction")  # need an FPGA template


@dataclass(frozen=True)
class Knob:
    """One searched parameter."""

    name: str
    path: tuple[str, ...]
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    type: str = "float"
    step: float | None = None
    log: bool = False
    unit: str = ""
    also: tuple[tuple[str, ...], ...] = ()  # further device paths set to the same value

    def grid(self) -> list[Any]:
        """Every value of the knob (choices, or the stepped range); grid search needs them."""
        if self.choices:
            return list(self.choices)
        if self.step is None:
            raise SpecError(f"knob {self.name!r}: grid search needs choices or a step")
        n = int(round((self.high - self.low) / self.step))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in vals] if self.type == "int" else vals


@dataclass(frozen=True)
class Constraint:
    """``metric <= max`` and/or ``metric >= min``; ``fits_memory`` requires every workload to fit."""

    metric: str
    max: float | None = None
    min: float | None = None


@dataclass
class Space:
    """A parsed design space."""

    name: str
    base: dict[str, Any]
    base_name: str
    knobs: list[Knob]
    workloads: list[dict[str, Any]]
    objectives: list[str]
    constraints: list[Constraint] = field(default_factory=list)
    sampler: str = "auto"
    mapper_objective: str = "latency"
    source: str = ""
    system: dict[str, Any] | None = None  # a multi-device system's YAML (its device is ``base``)
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def directions(self) -> list[str]:
        return [METRICS[o][0] for o in self.objectives]


def _fail(where: str, msg: str) -> SpecError:
    return SpecError(f"space {where}: {msg}")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _fail(where, f"expected a number, got {v!r}")
    return float(v)


def _check_path(name: str, path: tuple[str, ...], where: str) -> None:
    """A model, workload, mapper or plan knob names one field the evaluator sets (device and system
    paths are checked against the YAML when a trial applies them)."""
    root = path[0]
    if root == "model":
        import dataclasses
        import difflib

        from ..workloads.model import ModelSpec

        fields = [f.name for f in dataclasses.fields(ModelSpec)]
        if len(path) != 2 or path[1] not in fields:
            near = difflib.get_close_matches(path[-1], fields, 1)
            raise _fail(where, f"knob {name!r}: {'.'.join(path)} is not model.<ModelSpec field>"
                               f"{f' (did you mean model.{near[0]}?)' if near else ' (e.g. model.weight_dtype)'}")
        return
    allowed = {"workload": PHASE_KNOBS, "mapper": ("objective",), "plan": PLAN_FIELDS}.get(root)
    if allowed is not None and (len(path) != 2 or path[1] not in allowed):
        raise _fail(where, f"knob {name!r}: {'.'.join(path)} is not one of "
                           f"{', '.join(f'{root}.{f}' for f in allowed)}")


def _knob(name: str, d: Any, where: str) -> Knob:
    if not isinstance(d, dict):
        raise _fail(where, f"knob {name!r} must be a mapping with path and choices or low/high")
    unknown = sorted(set(d) - {"path", "choices", "low", "high", "type", "step", "log", "unit"})
    if unknown:
        raise _fail(where, f"knob {name!r}: unknown field(s) {unknown}")
    raw = d.get("path", "")
    paths = [tuple(str(x).split(".")) for x in (raw if isinstance(raw, list) and raw else [raw])]
    path = paths[0]
    if path[0] not in KNOB_ROOTS or len(path) < 2:
        raise _fail(where, f"knob {name!r}: path must start with one of {', '.join(KNOB_ROOTS)} (e.g. device.clock), "
                           f"got {d.get('path')!r}")
    if len(paths) > 1 and any(q[0] != "device" or len(q) < 2 for q in paths):
        raise _fail(where, f"knob {name!r}: a list of paths must name device fields only")
    _check_path(name, path, where)
    also = tuple(paths[1:])
    if "choices" in d:
        ch = d["choices"]
        if not isinstance(ch, list) or not ch:
            raise _fail(where, f"knob {name!r}: choices must be a non-empty list")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in ch):
            raise _fail(where, f"knob {name!r}: choices must be numbers, strings or booleans (a list or mapping cannot be "
                               f"a trial's value; give one knob per element), got {ch!r}")
        ranged = sorted(set(d) & {"low", "high", "type", "step", "log"})
        if ranged:
            raise _fail(where, f"knob {name!r}: give choices or a low/high range, not both (drop {', '.join(ranged)})")
        if path[0] == "mapper" and set(map(str, ch)) - set(MAPPER_OBJECTIVES):
            raise _fail(where, f"knob {name!r}: mapper.objective choices are {', '.join(MAPPER_OBJECTIVES)}, got {ch}")
        return Knob(name, path, tuple(ch), unit=str(d.get("unit", "")), also=also)
    if path[0] == "mapper":
        raise _fail(where, f"knob {name!r}: mapper.objective takes choices ({', '.join(MAPPER_OBJECTIVES)})")
    if "low" not in d or "high" not in d:
        raise _fail(where, f"knob {name!r}: give choices, or low and high")
    typ = str(d.get("type", "int" if isinstance(d["low"], int) and isinstance(d["high"], int) else "float"))
    if typ not in ("int", "float"):
        raise _fail(where, f"knob {name!r}: type must be int or float")
    low, high = _number(d["low"], f"{where} knob {name!r} low"), _number(d["high"], f"{where} knob {name!r} high")
    step = _number(d["step"], f"{where} knob {name!r} step") if "step" in d else None
    log = d.get("log", False)
    if not isinstance(log, bool):
        raise _fail(where, f"knob {name!r}: log must be true or false, got {log!r}")
    if typ == "int" and not (low.is_integer() and high.is_integer()):
        raise _fail(where, f"knob {name!r}: an int knob's low and high must be whole numbers, got {low:g} and {high:g}")
    if typ == "int" and step is not None and not (step.is_integer() and step >= 1):
        raise _fail(where, f"knob {name!r}: an int knob's step must be a whole number >= 1, got {step:g}")
    if not low < high:
        raise _fail(where, f"knob {name!r}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise _fail(where, f"knob {name!r}: a log-scale range must be positive")
    if step is not None and (step <= 0 or log):
        raise _fail(where, f"knob {name!r}: step must be positive and cannot be combined with log")
    return Knob(name, path, (), low, high, typ, step, log, str(d.get("unit", "")), also)


def _constraints(d: Any, where: str) -> list[Constraint]:
    if d is None:
        return []
    if not isinstance(d, dict):
        raise _fail(where, "constraints must be a mapping: metric: max, metric: {min: x}, fits_memory: true")
    out = []
    for k, v in d.items():
        if k == "fits_memory":
            if not isinstance(v, bool):
                raise _fail(where, f"constraint fits_memory must be true or false, got {v!r}")
            if v:
                out.append(Constraint("fits_memory"))
            continue
        if k not in METRICS and k != "latency_s":
            raise _fail(where, f"unknown constraint {k!r}; use one of {', '.join(METRICS)} or fits_memory")
        k = "latency" if k == "latency_s" else k
        if isinstance(v, dict):
            if not v or set(v) - {"min", "max"}:
                raise _fail(where, f"constraint {k}: give a max ({k}: x) or a mapping of min and/or max, got {v!r}")
            lo = _number(v["min"], f"{where} {k}.min") if "min" in v else None
            hi = _number(v["max"], f"{where} {k}.max") if "max" in v else None
            if lo is not None and hi is not None and lo > hi:
                raise _fail(where, f"constraint {k}: min ({lo:g}) is above max ({hi:g}), so no design can meet it")
            out.append(Constraint(k, hi, lo))
        else:
            out.append(Constraint(k, _number(v, f"{where} {k}")))
    return out


def parse_space(d: Any, where: str = "<dict>") -> Space:
    """Validate a space mapping (see the module docstring)."""
    if not isinstance(d, dict):
        raise _fail(where, "expected a mapping with base, knobs, workloads, objectives")
    unknown = sorted(set(d) - {"name", "base", "knobs", "workloads", "objectives", "constraints", "sampler", "mapper",
                               "description", "system", "plan"})
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}")
    system = None
    if "system" in d:
        from ..arch.system import system_dict

        system, _, _ = system_dict(d["system"]) if isinstance(d["system"], str) else (d["system"], "", None)
        if not isinstance(system, dict) or not isinstance(system.get("device"), str):
            raise _fail(where, "system must name a system preset or YAML whose device is a preset name")
        d = {**d, "base": d.get("base", system["device"])}
    for k in ("base", "knobs", "workloads", "objectives"):
        if k not in d:
            raise _fail(where, f"missing {k!r}")
    base, base_name = arch_dict(d["base"]) if isinstance(d["base"], str) else (d["base"], "device")
    plan = d.get("plan") or {}
    if not isinstance(plan, dict) or set(plan) - {"tp", "pp", "dp", "ep", "sp"}:
        raise _fail(where, "plan must be a mapping of tp, pp, dp, ep, sp")
    if plan and system is None:
        raise _fail(where, "a plan needs a system: add system: <preset>")
    if not isinstance(d["knobs"], dict) or not d["knobs"]:
        raise _fail(where, "knobs must be a non-empty mapping name: {path, choices | low/high}")
    knobs = [_knob(str(n), k, where) for n, k in d["knobs"].items()]
    wls = d["workloads"]
    if not isinstance(wls, list) or not wls:
        raise _fail(where, "workloads must be a non-empty list of {model, phase, batch, seq|context, weight}")
    for w in wls:
        if not isinstance(w, dict) or "model" not in w or "phase" not in w:
            raise _fail(where, f"each workload needs model and phase, got {w!r}")
        bad = sorted(set(w) - set(WORKLOAD_FIELDS))
        if bad:
            raise _fail(where, f"workload field(s) {bad} unknown; use {', '.join(WORKLOAD_FIELDS)}")
        if _number(w.get("weight", 1.0), f"{where} workload weight") <= 0:
            raise _fail(where, "workload weights must be positive")
        if str(w["phase"]) not in ("prefill", "decode"):
            raise _fail(where, f"workload phase {w['phase']!r}: use prefill or decode")
        from ..workloads.model import load_model

        load_model(str(w["model"]))  # an unknown model is a one-line error now, not a space of pruned trials
    objs = d["objectives"] if isinstance(d["objectives"], list) else [d["objectives"]]
    if not objs or len(set(map(str, objs))) != len(objs):
        raise _fail(where, f"objectives must be a non-empty list of distinct metrics, got {d['objectives']!r}")
    for o in objs:
        if o not in METRICS:
            raise _fail(where, f"unknown objective {o!r}; use {', '.join(METRICS)}")
    mapper = d.get("mapper", {})
    if not isinstance(mapper, dict) or set(mapper) - {"objective"}:
        raise _fail(where, f"mapper must be a mapping {{objective: {' | '.join(MAPPER_OBJECTIVES)}}}, got {mapper!r}")
    obj = mapper.get("objective", "latency")
    if obj not in MAPPER_OBJECTIVES:
        raise _fail(where, f"mapper.objective must be {', '.join(MAPPER_OBJECTIVES)}, got {obj!r}")
    sampler = str(d.get("sampler", "auto"))
    if system is None and any(k.path[0] in ("system", "plan") for k in knobs):
        raise _fail(where, "system.* and plan.* knobs need a system: add system: <preset>")
    space = Space(str(d.get("name", Path(where).stem)), base, base_name, knobs, [dict(w) for w in wls], list(objs),
                  _constraints(d.get("constraints"), where), sampler, obj, where, system, dict(plan))
    check_sampler(space, sampler)
    _check_metrics(space, where)
    _check_choices(space, where)
    return space


#: kinds of quantity no device section accepts at zero or below (sizes, bandwidths, frequencies, times)
_POSITIVE_KINDS = ("bytes", "bytes_per_s", "bits_per_s", "hz", "seconds")


def _nonpositive_quantity(text: Any) -> bool:
    """Whether ``text`` reads as a size, bandwidth, frequency or time (any prefix: ``GiB/s``, ``Bps``,
    ``MHz``...) at or below zero."""
    from ..units import parse_quantity

    if not isinstance(text, str) or len(text.split()) < 2:  # a number with its unit
        return False
    for kind in _POSITIVE_KINDS:
        try:
            return parse_quantity(text, kind, "knob") <= 0
        except SpecError:
            continue
    return False



def _check_choices(space: Space, where: str) -> None:
    """Refuse device knob values that are wrong whatever the other knobs are, before any trial runs:
    a size, bandwidth or frequency at or below zero, and a choice the base device rejects by name
    (e.g. ``hbm_layout: diag``; a choice that only clashes with the base's other values is left to
    the trials, which record it as infeasible)."""
    from ..arch.loader import arch_from_dict

    for k in space.knobs:
        if k.path[0] != "device":
            continue
        first = k.choices[0] if k.choices else (int(k.low) if k.type == "int" else k.low)
        try:  # a path the base device lacks (a typo such as device.clok) would prune every trial
            arch_from_dict(device_dict(space, {k.name: first}), space.base_name)
        except (TypeError, ValueError) as e:  # e.g. a quoted number where the device computes with it
            raise _fail(where, f"knob {k.name!r}: value {first!r} is not of the kind {'.'.join(k.path)} takes ({e})") from None
        except XpusimError as e:
            if "the base device has no" in str(e) or "unknown field" in str(e):
                raise _fail(where, f"knob {k.name!r} ({'.'.join(k.path)}): {e}") from None
        values = list(k.choices) if k.choices else [k.low, k.high]
        for v in values:
            text = f"{v} {k.unit}" if k.unit else v
            if _nonpositive_quantity(text):
                raise _fail(where, f"knob {k.name!r}: {text!r} must be positive")
            if not k.choices or not isinstance(v, str):
                continue
            try:
                arch_from_dict(device_dict(space, {k.name: v}), space.base_name)
            except XpusimError as e:  # a clash with the base's other values is a trial's to record
                msg = str(e)
                if repr(v) in msg and any(w in msg for w in ("must be", "is not one of", "unknown")):
                    raise _fail(where, f"knob {k.name!r}: choice {v!r} is not valid: {e}") from None


def _check_metrics(space: Space, where: str) -> None:
    """Refuse objectives and constraints the base device cannot score: the area and cost model's
    metrics on the classes it does not cover (``arch.area.NOT_COVERED``), ``power_w`` there unless
    the device states a static power, and FPGA resource shares on a device without a template."""
    needed = set(space.objectives) | {c.metric for c in space.constraints}
    if not needed & {*AREA_METRICS, *POWER_METRICS, *FPGA_METRICS}:
        return
    from ..arch.area import NOT_COVERED
    from ..arch.fpga import fpga_spec
    from ..arch.loader import arch_from_dict

    arch = arch_from_dict(device_dict(space, {}), space.base_name)
    cls = arch.device_class
    what = f"{arch.name} ({NOT_COVERED[cls].split(':')[0]})" if cls in NOT_COVERED else ""
    scores = "dsp_fraction or lut_fraction" if cls == "fpga" else "latency, throughput or energy_per_token"
    static_knob = any(p[:2] == ("device", "static_power") for k in space.knobs for p in (k.path, *k.also))
    for m in sorted(needed):
        if m in AREA_METRICS and what:
            raise _fail(where, f"{m} needs the area and cost model, which does not cover {what}; use {scores}")
        if m in POWER_METRICS and what and not arch.static_power_w and not static_knob:
            raise _fail(where, f"{m} needs a static power, which {what} does not state and the area model's leakage "
                               "does not cover; use energy_per_token (dynamic energy only there), or give the device a "
                               "static_power")
        if m in FPGA_METRICS:
            try:
                spec = fpga_spec(arch)
            except SpecError:
                raise _fail(where, f"{m} is an FPGA template's share of its part, and {arch.name} (class {cls}) is not an "
                                   f"FPGA; use {scores if what else 'area_mm2 or cost_usd'}") from None
            try:
                spec.part.count(m.split("_")[0])
            except SpecError as e:
                raise _fail(where, f"{m}: {e}") from None


SAMPLERS = ("auto", "tpe", "nsga2", "cmaes", "random", "grid")


def check_sampler(space: Space, sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise SpecError(f"sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if sampler == "cmaes" and len(space.objectives) > 1:
        raise SpecError("sampler cmaes optimises one objective; use nsga2 or tpe for several")
    if sampler == "grid":
        for k in space.knobs:
            k.grid()


def load_space(path: str | Path) -> Space:
    """Read a space YAML file (or a shipped example name under ``explore/spaces/``)."""
    p = Path(path)
    if not p.is_file():
        cand = Path(__file__).parent / "spaces" / f"{path}.yaml"
        if not cand.is_file():
            raise SpecError(f"space {str(path)!r} not found; give a YAML file or one of {', '.join(list_spaces())}")
        p = cand
    data = load_yaml(read_text(p, "a design-space YAML"), p)
    return parse_space(data, str(p))


def list_spaces() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "spaces").glob("*.yaml"))


# ---------------------------------------------------------------------------------------- applying
def _set(doc: Any, path: tuple[str, ...], value: Any, knob: str) -> None:
    node = doc
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if key.isdigit():
                idx = int(key)
            else:  # a memory level by name
                idx = next((j for j, lv in enumerate(node) if isinstance(lv, dict) and lv.get("name") == key), -1)
            if not 0 <= idx < len(node):
                raise SpecError(f"knob {knob!r}: the base device has no {'.'.join(path[:i + 1])}")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if key not in node:
                    raise SpecError(f"knob {knob!r}: the base device has no {'.'.join(path[:i + 1])}")
                node = node[key]
        else:
            raise SpecError(f"knob {knob!r}: {'.'.join(path[:i])} is not a mapping or list")


def device_dict(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """The base device with the trial's device knobs applied (a systolic array's MAC rates follow
    its shape; a PIM's, a wafer's and an RDU's unit counts follow their sections)."""
    doc = copy.deepcopy(space.base)
    for k in space.knobs:
        if k.path[0] != "device" or k.name not in params:
            continue
        v = params[k.name]
        for path in (k.path, *k.also):
            _set(doc, path[1:], f"{v} {k.unit}" if k.unit else v, k.name)
    pim = doc.get("pim")
    if isinstance(pim, dict) and isinstance(pim.get("pu"), dict):  # a PIM's units follow its PUs per channel
        pus = int(pim.get("channels", 0)) * int(pim["pu"].get("per_channel", 0))
        for unit in ("matrix", "vector"):
            if isinstance(doc.get(unit), dict):
                doc[unit]["instances"] = pus
    wafer = doc.get("wafer")
    if isinstance(wafer, dict):  # a wafer's units follow its mesh; a knob's per-core value replaces the total
        w, h = wafer.get("mesh", [0, 0])
        if space.base.get("wafer", {}).get("mesh") != [w, h]:
            n = int(w) * int(h)
            wafer["cores"] = n
            for unit in ("matrix", "vector"):
                doc[unit]["instances"] = n
            doc["memory"][0]["instances"] = n
        for knob, total in (("core_sram", "sram_total"), ("link_bandwidth", "fabric_bandwidth")):
            if knob in wafer and total in wafer and any(k.path[1:] == ("wafer", knob) for k in space.knobs):
                del wafer[total]
        if "core_sram" in wafer and isinstance(doc["memory"][0], dict):
            doc["memory"][0]["capacity"] = wafer["core_sram"]
    fpga = doc.get("fpga")
    tpl = fpga.get("template") if isinstance(fpga, dict) else None
    if isinstance(tpl, dict):  # an FPGA engine's units are its template's: VPUs, SFUs and buffers per core
        cores = int(tpl.get("cores", 0))
        doc["matrix"]["instances"] = cores * int(tpl.get("vpus", 0))
        doc["matrix"]["macs_per_cycle"] = {"int8": int(tpl.get("chain", 0)) * int(tpl.get("macs_per_dsp", 0))}
        doc["vector"]["instances"] = cores
        rates = doc["vector"].get("flops_per_cycle", {})
        for c in ("fp16", "fp32"):  # an SFU's lanes: its softmax and norm rate follows them
            if c in rates:
                rates[c] = int(tpl.get("sfu_lanes", 0))
        if isinstance(doc.get("memory"), list) and len(doc["memory"]) > 1 and cores > 0:
            doc["memory"][1]["instances"] = cores
            bufs = tpl.get("buffers", {})
            if isinstance(bufs, dict) and bufs:
                from ..units import parse_quantity

                buf_bytes = sum(parse_quantity(v, "bytes", "fpga buffers") for v in bufs.values())
                doc["memory"][1]["capacity"] = int(buf_bytes // cores)
    rdu = doc.get("rdu")
    if isinstance(rdu, dict) and isinstance(doc.get("memory"), list) and len(doc["memory"]) > 1:
        for unit in ("matrix", "vector"):  # an RDU's PCUs are its matrix and vector units
            doc[unit]["instances"] = rdu.get("pcus")
        pcu = rdu.get("pcu")
        if isinstance(pcu, dict) and isinstance(doc["vector"].get("flops_per_cycle"), dict):  # SIMD mode: lanes x stages
            simd = int(pcu.get("lanes", 0)) * int(pcu.get("stages", 0))
            doc["vector"]["flops_per_cycle"] = {c: simd for c in doc["vector"]["flops_per_cycle"]}
        doc["memory"][1]["instances"] = rdu.get("pmus")  # and its PMUs the SRAM level
    if isinstance(doc.get("die"), dict) and "ref" not in doc["die"]:  # the die keeps the base device's spare fractions
        from ..arch.area import die_reference
        from ..arch.loader import arch_from_dict

        doc["die"]["ref"] = die_reference(arch_from_dict(copy.deepcopy(space.base), str(space.base.get("name", "base"))))
    base_arr = space.base.get("matrix", {}).get("array")
    arr = doc.get("matrix", {}).get("array")
    if base_arr and arr and list(arr) != list(base_arr):
        scale = (arr[0] * arr[1]) / (base_arr[0] * base_arr[1])
        rates = space.base["matrix"].get("macs_per_cycle", {})
        doc["matrix"]["macs_per_cycle"] = {c: v * scale for c, v in rates.items()}
    return doc


def system_doc(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """The space's system YAML with the trial's system knobs applied and its device built from
    ``device_dict`` (an inline device)."""
    doc = copy.deepcopy(space.system or {})
    for k in space.knobs:
        if k.path[0] == "system" and k.name in params:
            v = params[k.name]
            _set(doc, k.path[1:], f"{v} {k.unit}" if k.unit else v, k.name)
    doc["device"] = {**device_dict(space, params), "name": space.base_name}
    return doc


def plan_values(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    out = dict(space.plan)
    for k in space.knobs:
        if k.path[0] == "plan" and k.name in params:
            out[k.path[1]] = params[k.name]
    return out
