"""``xpusim simulate --system S``: a step or a whole generation of a model on a multi-device
system under a parallel plan (given, or ``--plan auto``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import SpecError
from ..workloads.model import ModelSpec
from ..workloads.phases import make_phase
from .parallel import Plan
from .result import strict_json, throughput_unit
from .result_text import EXCEEDS, fmt_s, print_energy_scope, print_formats


def _plan(a: argparse.Namespace, system, model: ModelSpec, phase, gen: int = 0) -> tuple[Plan, Any]:
    if a.plan == "auto":
        from .planner import plan_auto

        if a.ignore_memory:
            raise SpecError("--plan auto ranks the plans whose step fits the devices; drop --ignore-memory, or give a "
                            "plan (--tp/--pp/--dp) to run one that does not fit")

        return plan_auto(system, model, phase, "throughput" if a.objective == "throughput" else "latency", a.routing,
                         gen=gen)
    if a.microbatches and a.pp == 1:
        raise SpecError(f"--microbatches {a.microbatches} splits a pipeline's batch between its stages; it needs --pp > 1")
    return Plan(tp=a.tp, pp=a.pp, dp=a.dp, ep=a.ep, sp=a.sp, microbatches=a.microbatches or 0), None


def _print_plans(table: Any) -> None:
    """``--plan auto``'s table, and why each infeasible plan cannot run."""
    print(table.drop(columns=["reason"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for _, row in table[~table["feasible"]].iterrows():
        print(f"  {row['plan']}: {row['reason']}")


def _objective(a: argparse.Namespace) -> str:
    """The mapper objective of the simulated steps (``throughput`` only ranks ``--plan auto``'s plans)."""
    return "latency" if a.objective == "throughput" else a.objective


def run(a: argparse.Namespace, model: ModelSpec, results_out) -> int:
    """Returns the exit code; appends the step's Result (not for ``generate``) to ``results_out``."""
    from ..arch.system import load_system
    from .events import simulate_generate, simulate_system

    system = load_system(a.system)
    from .engine import with_engine_formats
    from .format_flags import chosen_formats

    model = with_engine_formats(model, system.device, chosen_formats(a))
    if getattr(a, "rdu_mode", None):
        import dataclasses

        from ..arch.rdu import with_mode

        system = dataclasses.replace(system, device=with_mode(system.device, a.rdu_mode))
    if a.phase == "generate":
        if a.seq is None or a.gen is None:
            raise SpecError("generate needs --seq (prompt tokens) and --gen (tokens generated per sequence)")
        from ..workloads.phases import Prefill

        plan, table = _plan(a, system, model, Prefill(a.batch, a.seq), gen=a.gen)
        out = simulate_generate(system, model, a.batch, a.seq, a.gen, plan, _objective(a), a.routing,
                                check_memory=not a.ignore_memory, mla_form=a.mla_form)
        if table is not None:
            out["plans"] = table.to_dict(orient="records")
        if a.json:
            if a.format_error:
                from ..workloads.functional.numerics import layer_error

                out["format_error"] = layer_error(model)
            print(strict_json(out, 2))
            return 0
        if table is not None:
            _print_plans(table)
        print(f"{model.name} on {system.name} ({plan.describe()}): prefill {a.batch} x {a.seq} tokens, then {a.gen} tokens "
              f"per sequence")
        print_formats(model, a.format_error)
        print(f"TTFT {fmt_s(out['ttft_s'])}   TPOT {fmt_s(out['tpot_s'])}   total {fmt_s(out['latency_s'])}   "
              f"{out['tokens_per_s']:.1f} generated tokens/s")
        gib = 2.0**30
        print(f"busiest device memory at its peak {out['memory_bytes'] / gib:.1f} of {out['capacity_bytes'] / gib:.0f} GiB"
              + ("" if out["fits_memory"] else EXCEEDS))
        return 0
    phase = make_phase(a.phase, a.batch, a.seq, a.context)  # prefill or decode (the CLI checked the phase and flags)
    plan, table = _plan(a, system, model, phase)
    res = simulate_system(system, model, phase, plan, _objective(a), a.routing, a.mla_form, check_memory=not a.ignore_memory)
    if a.format_error:
        from ..workloads.functional.numerics import layer_error

        res.inputs["format_error"] = layer_error(model)
    results_out.append(res)
    if table is not None:
        res.inputs["plans"] = table.to_dict(orient="records")
    if a.json:
        print(res.to_json())
        return 0
    if table is not None:
        _print_plans(table)
    stages = ", ".join(f"{t * 1e3:.3g}" for t in res.inputs["stage_s"])
    print(f"{model.name} {phase.name} {vars(phase)} on {system.name}: plan {plan.describe()} ({plan.devices} of "
          f"{system.n_devices} x {system.device.name}), {res.inputs['microbatches']} micro-batch(es)")
    print_formats(model, getattr(a, "format_error", False))
    sends = ", ".join(f"{t * 1e6:.3g}" for t in res.inputs["send_s"]) or "none"
    print(f"stage times per micro-batch (ms): {stages}; sends between stages (us): {sends}")
    comm = res.ops[res.ops["kind"] == "collective"]
    share = float(comm["total_latency_s"].sum()) / float(res.ops["total_latency_s"].sum()) if len(res.ops) else 0.0
    print(f"latency {fmt_s(res.latency_s)}   throughput {res.tokens_per_s:.1f} {throughput_unit(phase.name)}   energy "
          f"{res.energy_j:.3g} J (every device)   collectives "
          f"{share * 100:.1f} % of a rank's time   busiest device memory {res.memory_bytes / 2**30:.1f} of "
          f"{res.capacity_bytes / 2**30:.0f} GiB" + ("" if res.memory_bytes <= res.capacity_bytes else EXCEEDS))
    print_energy_scope(system.device.static_power_w, res.energy_j, res.latency_s, system.device.tdp_w, plan.devices)
    return 0
