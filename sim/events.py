"""Whole-system time with a simpy event engine: a step of a parallel plan on a multi-device
system, and a whole generation (prefill, then decode steps).

Each pipeline stage is a resource (its tensor-parallel ranks work in lock step, their all-reduces
inside the stage's time, on the critical path as in Megatron inference); each stage boundary is a
link resource. Micro-batches flow through the stages: a stage starts micro-batch ``j`` once it has
finished ``j - 1`` and received ``j`` from the previous stage, and the send of one micro-batch
overlaps the next one's compute; each boundary's send takes its own time (inside a node, or over the
NICs between nodes). The events become per-stage timelines in the ``Result``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import simpy

from ..arch.system import System, load_system
from ..errors import CapacityError, SpecError
from ..workloads.layers import layer_block_map
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Decode, Phase, Prefill
from .engine import model_formats, powered_energy, simulate_trace
from .parallel import Plan, device_trace, local_phase, shard_model, stage_footprints, stage_layers
from .result import Result


def _stage_times(res: Result, model: ModelSpec, plan: Plan) -> tuple[list[float], list[float]]:
    """Compute time of each stage for one micro-batch (layers, embedding on the first stage, head
    on the last) and the send time of each stage boundary."""
    df = res.ops
    per_block = df.groupby("block", sort=False)["latency_s"].sum().to_dict()
    layer_map = layer_block_map(model)
    layer_cost = [per_block.get(b, 0.0) * f for b, f in layer_map]
    send = [float(t) for t in df.loc[df["block"] == "stage_send", "latency_s"]]
    others = {str(b) for b, t in per_block.items() if t > 0} - {b for b, _ in layer_map} - {"embed", "head", "stage_send"}
    if plan.pp == 1:  # one stage runs the whole trace, every block repeat
        return [float(df.loc[df["block"] != "stage_send", "total_latency_s"].sum())], send
    if others:
        raise SpecError(f"{model.name}: pipeline stages over its {', '.join(sorted(others))} blocks are not modelled "
                        "(an encoder-decoder model); use --tp or --dp")
    edges = np.cumsum([0, *stage_layers(model, plan)])
    times = [float(sum(layer_cost[edges[s]:edges[s + 1]])) for s in range(plan.pp)]
    times[0] += float(per_block.get("embed", 0.0))
    times[-1] += float(per_block.get("head", 0.0))
    return times, send


def _group_link_energy(trace: Any, system: System, microbatches: int, plan: Plan) -> float:
    """Link energy of a step: a collective's energy is its whole group's, so each group counts once —
    a tensor-parallel group per data-parallel replica, the expert-parallel all-to-all once (its
    group spans the stage's tp x dp devices), a stage boundary's sends once (every rank's)."""
    from .engine import collective_cost

    per_group = {"tp": plan.dp, "ep": 1, "pp": 1}
    total = 0.0
    for block in trace.blocks:
        for op in block.ops:
            if op.kind == "collective":
                groups = per_group.get(str(op.attrs.get("group")), plan.tp * plan.dp)
                total += collective_cost(op, system).energy_j * block.repeat * microbatches * groups
    return total


def pipeline(stage_s: list[float], send_s: float | list[float], microbatches: int) -> tuple[float, list[dict[str, Any]]]:
    """Run ``microbatches`` through the stages with simpy; ``send_s``: the send time of every stage
    boundary, or one for all. Returns the makespan (s) and the events."""
    sends = list(send_s) if isinstance(send_s, list | tuple) else [send_s] * (len(stage_s) - 1)
    if len(sends) != len(stage_s) - 1:
        raise SpecError(f"pipeline: {len(stage_s)} stages have {len(stage_s) - 1} boundaries, got {len(sends)} send times")
    env = simpy.Environment()
    stages = [simpy.Resource(env, 1) for _ in stage_s]
    links = [simpy.Resource(env, 1) for _ in stage_s[:-1]]
    events: list[dict[str, Any]] = []

    def flow(j: int):
        for s, t in enumerate(stage_s):
            with stages[s].request() as req:
                yield req
                events.append({"device": f"stage {s}", "name": f"micro-batch {j}", "kind": "compute", "start": env.now,
                               "dur": t})
                yield env.timeout(t)
            if s < len(stage_s) - 1 and sends[s] > 0:
                with links[s].request() as req:
                    yield req
                    events.append({"device": f"link {s}->{s + 1}", "name": f"micro-batch {j}", "kind": "send",
                                   "start": env.now, "dur": sends[s]})
                    yield env.timeout(sends[s])

    def start(j: int):  # micro-batches are issued in order
        yield env.timeout(0)
        env.process(flow(j))

    for j in range(microbatches):
        env.process(start(j))
    env.run()
    return float(env.now), sorted(events, key=lambda e: (e["start"], e["device"]))


def _microbatches(phase: Phase, plan: Plan) -> int:
    """Micro-batches of one replica's batch: the plan's, which must divide it, else one per stage
    (the largest divisor of the batch up to ``pp`` when the batch is smaller or does not divide)."""
    local = local_phase(phase, plan).batch  # a one-line error when --dp does not divide the batch
    small = [d for d in range(1, math.isqrt(local) + 1) if local % d == 0]
    divisors = sorted({*small, *(local // d for d in small)})
    if plan.microbatches:
        if local % plan.microbatches:
            verb = "exceeds" if plan.microbatches > local else "does not divide"
            valid = ", ".join(map(str, divisors[:-1])) + (" or " if len(divisors) > 1 else "") + str(divisors[-1])
            raise SpecError(f"--microbatches {plan.microbatches} {verb} the batch {local} per replica; use {valid}")
        return plan.microbatches
    return max(d for d in divisors if d <= plan.pp)


def simulate_system(system: System | str, model: ModelSpec | str, phase: Phase, plan: Plan, objective: str = "latency",
                    routing: str | None = None, mla_form: str | None = None, check_memory: bool = True) -> Result:
    """One step of ``phase`` of ``model`` on ``system`` under ``plan``; the result's ops are one
    tensor-parallel rank's (all layers, collectives included), its latency the pipelined step."""
    system = load_system(system)
    model = load_model(model)
    if system.device.device_class == "wafer":  # its placement on mesh regions and per-core SRAM run per device
        raise SpecError(f"{system.name}: a wafer-scale device is placed on its mesh by `simulate --arch "
                        f"{system.device.name}`; several wafers as a pipeline: --arch {system.device.name} --wafers N")
    if plan.devices > system.n_devices:
        raise SpecError(f"plan {plan.describe()} needs {plan.devices} devices; {system.name} has {system.n_devices}")
    mb = _microbatches(phase, plan)
    from .engine import compiled_phase

    run = compiled_phase(phase, system.device)  # an FPGA prefill runs as its length bucket's program
    # one micro-batch of every replica (device_trace takes one replica's share of it; expert parallelism
    # sees the tokens of all dp replicas, whose experts it spreads over the stage's tp x dp devices)
    mb_phase = dataclasses.replace(local_phase(run, plan), batch=phase.batch // plan.dp // mb * plan.dp)
    trace = device_trace(model, mb_phase, plan, routing, mla_form)
    # memory of the busiest device: its stage's share of the layers, embedding or head, KV cache
    shard = shard_model(model, plan)
    lp = local_phase(phase, plan)
    weights, kv, state = max(stage_footprints(shard, plan, lp.batch, lp.kv_len), key=sum)  # the busiest stage
    res = simulate_trace(trace, system.device, objective, None, system=system, resident=(weights, kv + state))
    stage_s, send_s = _stage_times(res, model, plan)
    makespan, events = pipeline(stage_s, send_s, mb)
    scale = mb * plan.tp * plan.dp  # every micro-batch on every rank
    static_w = system.device.static_power_w
    busy_s = float(res.ops.loc[res.ops["bound"] != "link", "total_latency_s"].sum())
    link_j = float(res.ops.loc[res.ops["bound"] == "link", "total_energy_j"].sum())
    # expert parallelism: the trace is the busiest device's (it sets the time); every device runs its
    # own experts, so the step's expert energy is each EP rank's own (the memo prices the rest once)
    expert_j = _expert_energy(res)
    expert_j_mean = expert_j
    if model.is_moe and plan.ep > 1 and expert_j > 0:
        per_rank = [_expert_energy(simulate_trace(device_trace(model, mb_phase, plan, routing, mla_form, r), system.device,
                                                  objective, None, system=system, resident=(weights, kv + state)))
                    for r in range(plan.ep)]
        expert_j_mean = float(np.mean(per_rank))
    ops_j = (res.energy_j - link_j - expert_j + expert_j_mean) * scale + _group_link_energy(trace, system, mb, plan)
    energy = powered_energy(ops_j, static_w * busy_s * scale, static_w * plan.devices, makespan)
    out = dataclasses.replace(
        res, latency_s=makespan, energy_j=energy, tokens=phase.tokens,
        weights_bytes=weights, kv_cache_bytes=kv, ssm_state_bytes=state,
        inputs={**res.inputs, "system": system.name, "plan": plan.describe(), "devices": plan.devices, "model": model.name,
                "phase": phase.name, "phase_args": dict(vars(phase)), "microbatches": mb, "formats": model_formats(model),
                "stage_s": stage_s, "send_s": send_s},
        timeline=events)
    if check_memory and out.memory_bytes > out.capacity_bytes:
        gib = 2.0**30
        raise CapacityError(
            f"{model.name} {phase.name} under {plan.describe()} needs {out.memory_bytes / gib:.1f} GiB on its busiest "
            f"device but {system.device.name} has {out.capacity_bytes / gib:.1f} GiB; "
            f"{_fit_remedies(system, model, phase, plan, out)}")
    return out


def _expert_energy(res: Result) -> float:
    """Joules of a step's expert ops (every repeat of their blocks)."""
    return float(res.ops.loc[res.ops["name"].str.startswith("expert_"), "total_energy_j"].sum())


def _fit_remedies(system: System, model: ModelSpec, phase: Phase, plan: Plan, out: Result) -> str:
    """What would make a step that overflows its busiest device fit: a plan the system's devices can
    hold (or how many devices one needs), and the changes that alone make it fit."""
    from .fit_advice import fewest_devices, fitting_changes, plan_flags

    lp = local_phase(phase, plan)
    split = fewest_devices(model, plan, lp.batch, lp.kv_len, out.capacity_bytes, reserve=out.activation_bytes)
    n = system.n_devices
    if split is not None and split.devices <= n:
        remedies, lead = [f"{plan_flags(split)} ({split.devices} of its {n} devices)"], ""
    else:
        at = f" at --dp {plan.dp}" if plan.dp > 1 else ""
        lead = f"no tensor/pipeline split of {system.name}'s {n} devices{at} holds it; "
        remedies = [f"a system with more of them ({plan_flags(split)} needs {split.devices})" if split is not None
                    else "devices with more memory"]
        if plan.dp > 1:  # the search keeps the replicas: fewer of them, or experts spread over them, may fit
            remedies.append("fewer replicas (--dp)" + (f" or experts spread over them (--ep {plan.tp * plan.dp})"
                                                        if model.is_moe and plan.ep == 1 else "") + ", or --plan auto")
    remedies += fitting_changes(model, plan, phase, out.memory_bytes, out.capacity_bytes, n,
                                activations=out.activation_bytes, chunkable=False)
    return f"{lead}try {', '.join(remedies)}"


def simulate_generate(system: System | str, model: ModelSpec | str, batch: int, seq: int, gen: int, plan: Plan,
                      objective: str = "latency", routing: str | None = None, points: int = 33,
                      check_memory: bool = True, mla_form: str | None = None) -> dict[str, Any]:
    """Prefill ``batch x seq`` then ``gen - 1`` decode steps (the first token comes from prefill):
    TTFT (the prefill), TPOT (mean decode step) and the total. Decode steps are simulated at up to
    ``points`` contexts spread over the range and linearly interpolated in between (a step's cost
    is linear in its context between those points)."""
    if gen < 1:
        raise SpecError(f"--gen must be >= 1 (tokens generated per sequence), got {gen}")
    model = load_model(model)
    pre = simulate_system(system, model, Prefill(batch, seq), plan, objective, routing, mla_form, check_memory)
    # decode steps attend to the prompt and the tokens so far; an encoder-decoder model's decoder to its
    # own tokens so far, and to the encoded source through cross-attention
    encdec = bool(model.encoder_layers)
    contexts = np.arange(2, gen + 1) if encdec else np.arange(seq + 1, seq + gen)
    if len(contexts):
        grid = np.unique(np.linspace(contexts[0], contexts[-1], min(points, len(contexts))).round().astype(int))
        runs = [simulate_system(system, model, Decode(batch, int(c), seq if encdec else 0), plan, objective, routing,
                                mla_form, check_memory=check_memory and c == grid[-1]) for c in grid]
        lat = [r.latency_s for r in runs]
        last = runs[-1]  # the longest context: the largest footprint of the run
        steps = np.interp(contexts, grid, lat)
        decode_total, tpot = float(steps.sum()), float(steps.mean())
    else:
        decode_total, tpot = 0.0, 0.0
        last = pre
    total = pre.latency_s + decode_total
    peak = max((pre, last), key=lambda r: r.memory_bytes)  # the prefill's activations or the last step's KV cache
    return {"ttft_s": pre.latency_s, "tpot_s": tpot, "latency_s": total, "decode_s": decode_total,
            "tokens": batch * gen, "tokens_per_s": batch * gen / total if total else math.inf,
            "plan": plan.describe(), "devices": plan.devices, "system": load_system(system).name, "model": model.name,
            "batch": batch, "seq": seq, "gen": gen, "decode_points": int(min(points, max(len(contexts), 0))),
            "memory_bytes": peak.memory_bytes, "capacity_bytes": peak.capacity_bytes,
            "fits_memory": bool(peak.memory_bytes <= peak.capacity_bytes)}
