"""Parallel-plan search: every (tp, pp, dp, ep) that uses the system's devices and divides the
model and the batch (a pipeline with one micro-batch per stage and with a single one), simulated;
plans whose busiest device runs out of memory are kept in the table as infeasible with the reason;
the best feasible plan by the objective wins.

Tensor parallelism stays inside a node (its all-reduces are on the critical path); pipeline and
data parallelism take the rest.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..arch.system import System, load_system
from ..errors import CapacityError, SpecError, XpusimError
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Phase, Prefill
from .events import simulate_system
from .parallel import Plan

OBJECTIVES = ("latency", "throughput")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_plans(system: System, model: ModelSpec, phase: Phase) -> list[Plan]:
    """Plans over all of the system's devices (tp within a node)."""
    n = system.n_devices
    plans = []
    for tp in _divisors(min(system.devices_per_node, n)):
        for pp in _divisors(n // tp):
            dp = n // tp // pp
            if phase.batch % dp or pp > model.n_layers:
                continue
            eps = [1]
            if model.is_moe and tp * dp > 1 and model.n_experts % (tp * dp) == 0:
                eps.append(tp * dp)
            # micro-batches resolved (one per stage where the batch allows), and one micro-batch as well:
            # a weight-bound step reads each stage's weights once; the same count is one candidate
            from .events import _microbatches

            per_stage = _microbatches(phase, Plan(tp=tp, pp=pp, dp=dp))
            counts = [0] + ([1] if pp > 1 and per_stage != 1 else [])  # 0: the default, one per stage
            plans += [Plan(tp=tp, pp=pp, dp=dp, ep=ep, microbatches=mb) for ep in eps for mb in counts]
    return plans


def plan_auto(system: System | str, model: ModelSpec | str, phase: Phase, objective: str = "latency",
              routing: str | None = None, gen: int = 0) -> tuple[Plan, pd.DataFrame]:
    """The best feasible plan for ``objective`` (step latency, or tokens/s) and the table of all;
    with ``gen`` (a prefill ``phase`` then ``gen`` tokens per sequence) plans are ranked on the whole
    generation (:func:`~xpusim.sim.events.simulate_generate`, decode steps at a few contexts) and must
    hold the KV cache of its last step."""
    if objective not in OBJECTIVES:
        raise SpecError(f"plan objective {objective!r}: use {' or '.join(OBJECTIVES)}")
    system, model = load_system(system), load_model(model)
    if gen and not isinstance(phase, Prefill):
        raise SpecError("a generation is ranked from its prefill: give a Prefill phase with gen")
    rows: list[dict[str, Any]] = []
    candidates = candidate_plans(system, model, phase)
    for plan in candidates:
        from .events import _microbatches

        row: dict[str, Any] = {"plan": plan.describe(), "tp": plan.tp, "pp": plan.pp, "dp": plan.dp, "ep": plan.ep,
                               "microbatches": _microbatches(phase, plan)}  # the count the step runs
        try:
            if gen:
                from .events import simulate_generate

                seq = phase.seq if isinstance(phase, Prefill) else 0
                out = simulate_generate(system, model, phase.batch, seq, gen, plan, routing=routing, points=3)
                row.update(latency_s=out["latency_s"], tokens_per_s=out["tokens_per_s"],
                           memory_gib=out["memory_bytes"] / 2**30, feasible=True, reason="")
            else:
                res = simulate_system(system, model, phase, plan, routing=routing)
                row.update(latency_s=res.latency_s, tokens_per_s=res.tokens_per_s, memory_gib=res.memory_bytes / 2**30,
                           feasible=True, reason="")
        except CapacityError as e:
            row.update(feasible=False, reason=str(e))
        except XpusimError as e:  # a plan the model cannot be split by
            row.update(feasible=False, reason=str(e))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["plan", "tp", "pp", "dp", "ep", "microbatches", "latency_s", "tokens_per_s",
                                        "memory_gib", "feasible", "reason"])  # one order, whichever plan came first
    feasible = table[table["feasible"]] if len(table) else table
    if feasible.empty:
        raise CapacityError(f"no parallel plan of {model.name} fits {system.name} ({system.n_devices} x "
                            f"{system.device.name}); try a system with more devices, fp8/int4 weights or a smaller batch")
    key = "latency_s" if objective == "latency" else "tokens_per_s"
    plan = candidates[int(feasible.sort_values(key, ascending=objective == "latency", kind="stable").index[0])]
    return plan, table.sort_values(["feasible", key], ascending=[False, objective == "latency"])
