"""One design point: build the trial's device, run every workload through the simulator (the
mapper picks each op's best mapping on that hardware; op costs are memoised across trials by op
signature and device fingerprint), and compute the metrics, constraint violations and, for a
design that cannot be built or run, the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..arch.loader import arch_from_dict
from ..arch.spec import Arch
from ..errors import XpusimError
from ..sim.engine import simulate
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import make_phase
from .space import METRICS, Space, device_dict, plan_values, system_doc

AREA_METRICS = ("area_mm2", "cost_usd", "perf_per_area", "perf_per_dollar", "power_w", "perf_per_watt")


@dataclass
class Evaluation:
    """Metrics of a design (``METRICS`` names), constraint violations (> 0 violates, the amount
    in the metric's unit), and the reason a design was infeasible before it could be measured."""

    metrics: dict[str, float] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def feasible(self) -> bool:
        return not self.reason and all(v <= 0 for v in self.violations.values())


def _model(space: Space, w: dict[str, Any], params: dict[str, Any]) -> ModelSpec:
    m = load_model(w["model"])
    changes = {k.path[1]: params[k.name] for k in space.knobs if k.path[0] == "model" and k.name in params}
    if changes:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(ModelSpec)})
        if unknown:
            raise XpusimError(f"model knob field(s) {unknown} are not ModelSpec fields")
        m = ModelSpec(**{**dataclasses.asdict(m), **changes})
    return m


def _phase(space: Space, w: dict[str, Any], params: dict[str, Any]):
    fields = {k: w.get(k) for k in ("batch", "seq", "context")}
    for k in space.knobs:
        if k.path[0] == "workload" and k.name in params:
            fields[k.path[1]] = params[k.name]
    if str(w["phase"]) == "prefill":  # a context knob sizes the space's decode workloads only
        fields["context"] = None
    return make_phase(str(w["phase"]), 1 if fields["batch"] is None else int(fields["batch"]), fields["seq"],
                      fields["context"])


def build_device(space: Space, params: dict[str, Any]) -> Arch:
    return arch_from_dict(device_dict(space, params), space.base_name)


def evaluate(space: Space, params: dict[str, Any]) -> Evaluation:
    """Evaluate the design ``params`` (knob name -> value) on every workload of ``space``."""
    try:
        mapper_obj = next((params[k.name] for k in space.knobs if k.path == ("mapper", "objective") and k.name in params),
                          space.mapper_objective)
        devices = 1
        runs = []
        if space.system is not None:
            from ..arch.system import system_from_dict
            from ..sim.events import simulate_system
            from ..sim.parallel import Plan

            system = system_from_dict(system_doc(space, params), "system")
            arch = system.device
            plan = Plan(**plan_values(space, params))
            devices = plan.devices
            for w in space.workloads:
                model = _model(space, w, params)
                res = simulate_system(system, model, _phase(space, w, params), plan, str(mapper_obj), w.get("routing"),
                                      check_memory=False)
                runs.append((float(w.get("weight", 1.0)), res, model))
        else:
            arch = build_device(space, params)
            for w in space.workloads:
                model = _model(space, w, params)
                res = simulate(arch, model, _phase(space, w, params), str(mapper_obj), check_memory=False,
                               routing=w.get("routing"))
                runs.append((float(w.get("weight", 1.0)), res, model))
    except XpusimError as e:
        return Evaluation(reason=str(e))
    needed = set(space.objectives) | {c.metric for c in space.constraints}
    try:
        metrics = _metrics(arch, runs, needed, devices)
    except XpusimError as e:
        return Evaluation(reason=str(e))
    ev = Evaluation(metrics)
    for c in space.constraints:
        if c.metric == "fits_memory":
            ev.violations["fits_memory"] = max(0.0, metrics["memory_fraction"] - 1.0)
            continue
        v = metrics[c.metric]
        if c.max is not None:
            ev.violations[f"{c.metric}<={c.max:g}"] = max(0.0, v - c.max)
        if c.min is not None:
            ev.violations[f"{c.metric}>={c.min:g}"] = max(0.0, c.min - v)
    return ev


def _metrics(arch: Arch, runs: list, needed: set[str], devices: int = 1) -> dict[str, float]:
    wsum = sum(w for w, _, _ in runs)
    latency = sum(w * r.latency_s for w, r, _ in runs)
    energy = sum(w * r.energy_j for w, r, _ in runs)
    tokens = sum(w * r.tokens for w, r, _ in runs)
    throughput = tokens / latency if latency > 0 else 0.0
    from ..arch import area

    # static power: a device's own (an FPGA's fitted board power) is in its energy already; else the die
    # model's leakage where it covers the class (none on PIM, wafer and RDU devices: dynamic energy only),
    # so energy_per_token and perf_per_watt rank every design on one basis (perf_per_watt = 1 / it)
    leak = 0.0 if arch.static_power_w or arch.device_class in area.NOT_COVERED else area.leakage_power_w(arch) * devices
    energy += leak * latency
    m: dict[str, float] = {
        "latency": latency / wsum if wsum else latency, "throughput": throughput,
        "energy_per_token": energy / tokens if tokens else 0.0,
        "memory_fraction": max(r.memory_bytes / r.capacity_bytes for _, r, _ in runs),
    }
    area_needed = needed & {"area_mm2", "cost_usd", "perf_per_area", "perf_per_dollar"}
    if area_needed or needed & {"power_w", "perf_per_watt"}:
        m["power_w"] = energy / latency if latency else 0.0
        m["perf_per_watt"] = throughput / m["power_w"] if m["power_w"] else 0.0
        if area_needed:
            m["area_mm2"] = area.die_area_mm2(arch) * devices  # silicon of every device used
            m["cost_usd"] = area.device_cost_usd(arch) * devices
            m["perf_per_area"] = throughput / m["area_mm2"]
            m["perf_per_dollar"] = throughput / m["cost_usd"]
    if needed & {"dsp_fraction", "lut_fraction"}:
        from ..arch.fpga import estimate_resources, fpga_spec

        spec = fpga_spec(arch)
        used = estimate_resources(spec)
        for r in ("dsp", "lut"):  # only what is scored: a part may publish one count and not the other
            if f"{r}_fraction" in needed:
                m[f"{r}_fraction"] = used[r] / spec.part.count(r)
    if "format_error" in needed:
        from ..workloads.functional.numerics import layer_error

        m["format_error"] = max(layer_error(model) for _, _, model in runs)
    return {k: float(v) for k, v in m.items() if k in METRICS}
