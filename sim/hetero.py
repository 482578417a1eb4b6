"""Host + PIM heterogeneous execution: a host device (GPU or NPU) whose memory computes.

Every kernel group of the host's plan is costed on both sides (on the PIM op by op) and placed:

* ``auto`` — each group where it runs faster on its own, which sends low-Op/B work (decode
  attention, small-batch GEMV, few-token experts) to the PIM as Duplex places it (Yun et al.,
  MICRO 2024); with interleaved sub-batches the shortest makespan of that choice and the three
  placements below;
* ``attention`` — a generation step's attention on the PIM, everything else (a prefill's attention
  included) on the host (AttAcc, Park et al., ASPLOS 2024);
* ``host`` / ``pim`` — everything on one side (the baselines).

The PIM is the host's memory (``shared``) or extra stacks beside it that hold the KV cache
(``added``, AttAcc); either way no data is copied between the sides. Execution is ``blocked``
(host and PIM alternate: the step is the sum of its placed ops) or ``concurrent`` (NeuPIMs, Heo
et al., ASPLOS 2024: the batch is split in two sub-batches whose host and PIM segments
interleave, so one sub-batch's PIM work overlaps the other's host work; a simpy run of the two
resources gives the step time and the timeline). Overlap needs the two sides to reach memory at
once: added stacks, or dual row buffers in shared memory (NeuPIMs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import simpy
import yaml

from ..arch.loader import load_arch
from ..arch.pim import pim_spec
from ..arch.spec import Arch
from ..errors import CapacityError, DtypeError, SpecError
from ..mappers.fusion import plan
from ..workloads.builder import build_trace
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Phase
from .engine import _kv_bytes, activation_bytes, collective_cost, format_advice, group_cost, model_formats, op_cost
from .parallel import Plan, device_trace
from .result import COLUMNS, Result

PLACEMENTS = ("auto", "attention", "host", "pim")
EXEC_MODES = ("blocked", "concurrent")  # how host and PIM work are scheduled
HETERO_DIR = Path(__file__).resolve().parent.parent / "arch" / "hetero"
_HETERO_KEYS = {"name", "description", "host", "pim", "pim_stacks", "placement", "mode", "memory"}
#: how the PIM stacks relate to the host's memory: ``shared`` (the host's own stacks made PIM: its capacity
#: once) or ``added`` (extra stacks beside the host's memory, e.g. AttAcc's KV-cache stacks: both capacities)
PIM_MEMORY = ("shared", "added")


def list_hetero() -> list[str]:
    """Names of the shipped host + PIM presets (``arch/hetero/*.yaml``)."""
    return sorted(p.stem for p in HETERO_DIR.glob("*.yaml"))


def load_hetero(name: str) -> dict[str, Any] | None:
    """A host + PIM preset (``host``, ``pim``, ``pim_stacks``, ``placement``, ``mode``), or None if
    ``name`` is not one; a malformed preset is a one-line :class:`SpecError`."""
    path = HETERO_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return None
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict) or not {"host", "pim"} <= set(d) or set(d) - _HETERO_KEYS:
        raise SpecError(f"host + PIM preset {name!r}: needs host and pim, and only {', '.join(sorted(_HETERO_KEYS))}")
    if d.get("memory", "shared") not in PIM_MEMORY:
        raise SpecError(f"host + PIM preset {name!r}: memory must be {' or '.join(PIM_MEMORY)}, got {d['memory']!r}")
    stacks = d.get("pim_stacks", 1)
    if isinstance(stacks, bool) or not isinstance(stacks, int) or stacks < 1:
        raise SpecError(f"host + PIM preset {name!r}: pim_stacks must be a whole number >= 1, got {stacks!r}")
    return {"host": d["host"], "pim": d["pim"], "pim_stacks": stacks,
            "placement": d.get("placement", "auto"), "mode": d.get("mode", "blocked"),
            "memory": str(d.get("memory", "shared")), "description": str(d.get("description", ""))}


def _is_attention(group: Any) -> bool:
    """A generation step's attention, fused or one of its unfused parts (a product with the KV cache,
    or the softmax over its scores): what AttAcc moves to the PIM. Attention over several new queries
    per sequence (a prefill, a chunk, a verify step) stays on the host, as AttAcc runs the
    summarization stage on the GPUs."""
    op = group.ops[0]
    if dict(op.dims).get("q", 1) > 1:
        return False
    if group.kind == "attention":
        return True
    return op.kind == "softmax" or (op.kind == "matmul" and any(t.role == "kv" for t in op.inputs))


def _costed_groups(host: Arch, pim: Arch, trace: Any, placement: str, system: Any = None,
                   memory: str = "shared") -> list[dict[str, Any]]:
    """One record per kernel group in trace order with its cost on both sides (``host_s``/``pim_s``;
    the PIM's is infinite where it has no path for a format, and, with ``added`` stacks, which hold
    only the KV cache, for a group that reads weights: those live in the host's memory). Collectives
    run over the system's fabric, on the host side. :func:`_place` chooses the side."""
    rows = []
    for block in trace.blocks:
        for group in plan(block.ops, host):
            if group.kind == "collective":
                c = collective_cost(group.ops[0], system)
                rows.append({"block": block.name, "name": group.name, "kind": group.kind, "repeat": block.repeat,
                             "flops": 0.0, "bytes": group.ops[0].bytes, "intensity": 0.0, "host_s": c.latency_s,
                             "pim_s": float("inf"), "host_j": c.energy_j, "pim_j": 0.0, "host_bound": "link",
                             "host_util": 0.0, "attention": False, "collective": True, "ops": (group.ops[0].name,)})
                continue
            try:
                h = group_cost(group, host)
            except DtypeError as e:  # every format the host lacks at once, with the flags
                advice = format_advice((op for _, op in trace.ops()), host)
                raise DtypeError(advice or f"{block.name}.{group.name}: {e}") from None
            p_lat, p_energy = 0.0, 0.0
            reads_weights = any(t.role == "weight" for op in group.ops for t in op.inputs)
            if memory == "added" and reads_weights and placement == "pim":
                raise SpecError(f"{block.name}.{group.name} reads weights, which added PIM stacks do not hold (they hold "
                                "the KV cache): use --placement attention or auto, or --pim-memory shared")
            try:
                if memory == "added" and reads_weights:  # its weights are in the host's memory, not the PIM's
                    p_lat = float("inf")
                else:
                    for op in group.ops:
                        c = op_cost(op, pim)
                        p_lat += c.latency_s
                        p_energy += c.energy_j
            except DtypeError as e:  # a format the PIM has no path for (N:M sparse weights): the host runs it
                if placement == "pim" or (placement == "attention" and _is_attention(group)):  # unless placed there
                    placed = [op for b in trace.blocks for g in plan(b.ops, host)
                              if placement == "pim" or _is_attention(g) for op in g.ops]
                    raise DtypeError(format_advice(placed, pim) or f"{pim.name}: {e}") from None
                p_lat, p_energy = float("inf"), 0.0
            flops = sum(op.useful_flops for op in group.ops)
            nbytes = sum(op.bytes for op in group.ops)
            rows.append({"block": block.name, "name": group.name, "kind": group.kind, "repeat": block.repeat,
                         "flops": flops, "bytes": nbytes, "intensity": flops / nbytes if nbytes else 0.0,
                         "host_s": h.latency_s, "pim_s": p_lat, "host_j": h.energy_j, "pim_j": p_energy,
                         "host_bound": h.bound, "host_util": h.utilization, "attention": _is_attention(group),
                         "collective": False, "ops": tuple(op.name for op in group.ops)})
    return rows


def _place(costed: list[dict[str, Any]], placement: str, host: Arch) -> list[dict[str, Any]]:
    """The records of :func:`_costed_groups` with each group on the side ``placement`` gives it
    (``auto``: the faster side of each group on its own)."""
    rows = []
    for r in costed:
        if r["collective"]:
            side = "host"
        elif placement == "auto":
            side = "pim" if r["pim_s"] < r["host_s"] else "host"
        elif placement == "attention":
            side = "pim" if r["attention"] else "host"
        else:
            side = placement
        on_pim = side == "pim"
        lat, energy = (r["pim_s"], r["pim_j"]) if on_pim else (r["host_s"], r["host_j"])
        rows.append({**r, "cycles": lat * host.clock_hz, "latency_s": lat, "total_latency_s": lat * r["repeat"],
                     "energy_j": energy, "total_energy_j": energy * r["repeat"],
                     "bound": "pim" if on_pim else r["host_bound"], "utilization": 0.0 if on_pim else r["host_util"],
                     "device": side})
    return rows


def _best_interleaving(costed: list[dict[str, Any]], placement: str, streams: int,
                       host: Arch) -> tuple[str, list[dict[str, Any]], float, list[dict[str, Any]]]:
    """(placement used, rows, makespan, timeline). ``auto`` with interleaved sub-batches takes the
    shortest makespan of the per-group choice and the ``attention``, ``host`` and ``pim``
    placements: the faster side of each group alone can leave one resource idle while the other
    queues (the per-group choice minimises the sum, which is the blocked mode's step)."""
    candidates = ("auto", "attention", "host", "pim") if placement == "auto" and streams > 1 else (placement,)
    best: tuple[str, list[dict[str, Any]], float, list[dict[str, Any]]] | None = None
    for cand in candidates:
        rows = _place(costed, cand, host)
        if cand != placement and any(r["latency_s"] == float("inf") for r in rows):
            continue  # a side that cannot run some group
        makespan, events = _interleave(_segments(rows), streams)
        if best is None or makespan < best[2]:
            best = (cand, rows, makespan, events)
    assert best is not None
    return best


@dataclasses.dataclass
class Segment:
    """A run of consecutive kernel groups on one side: seconds, and the ops it runs as
    ``(block, repeat index, op names)`` items in order."""

    side: str
    seconds: float
    items: list[tuple[str, int, tuple[str, ...]]]


def _segments(rows: list[dict[str, Any]]) -> list[Segment]:
    """The step as alternating host/PIM segments, blocks unrolled by their repeat."""
    segs: list[Segment] = []
    blocks: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault(r["block"], []).append(r)
    for name, block_rows in blocks.items():
        for i in range(block_rows[0]["repeat"]):
            for r in block_rows:
                item = (name, i, tuple(r.get("ops", (r["name"],))))
                if segs and segs[-1].side == r["device"]:
                    segs[-1].seconds += r["latency_s"]
                    segs[-1].items.append(item)
                else:
                    segs.append(Segment(r["device"], r["latency_s"], [item]))
    return segs


def _interleave(segs: list[Segment], streams: int) -> tuple[float, list[dict[str, Any]]]:
    """``streams`` sub-batches each running ``segs`` in order on the host and PIM resources (simpy);
    events name the sub-batch (``stream``) and the segment index each interval runs."""
    env = simpy.Environment()
    res = {"host": simpy.Resource(env, 1), "pim": simpy.Resource(env, 1)}
    events: list[dict[str, Any]] = []

    def run(j: int):
        for k, seg in enumerate(segs):
            with res[seg.side].request() as req:
                yield req
                events.append({"device": seg.side, "name": f"sub-batch {j}", "kind": seg.side, "start": env.now,
                               "dur": seg.seconds, "stream": j, "segment": k})
                yield env.timeout(seg.seconds)

    for j in range(streams):
        env.process(run(j))
    env.run()
    return float(env.now), events


def simulate_hetero(host: Arch | str, pim: Arch | str, model: ModelSpec | str, phase: Phase, placement: str = "auto",
                    mode: str = "blocked", routing: str | None = None, system: Any = None, tp: int = 1,
                    memory: str = "shared", check_memory: bool = True) -> Result:
    """One step of ``model`` on a host with processing-in-memory (see the module docstring).

    With ``tp > 1`` the step is one tensor-parallel rank's (``sim/parallel.py``: its share of heads,
    widths and vocabulary, with the all-reduces) on ``tp`` such devices joined by ``system``'s
    fabric (a system preset whose devices are the hosts, e.g. ``dgx-h100``); the memory figures are
    one device's, the energy every device's (as ``simulate_system`` reports them)."""
    if placement not in PLACEMENTS:
        raise SpecError(f"placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
    if memory not in PIM_MEMORY:
        raise SpecError(f"PIM memory {memory!r}: use {' or '.join(PIM_MEMORY)} (the host's stacks made PIM, or extra stacks)")
    if mode not in EXEC_MODES:
        raise SpecError(f"PIM mode {mode!r}: use {' or '.join(EXEC_MODES)}")
    host, pim, model = load_arch(host), load_arch(pim), load_model(model)
    if pim.device_class != "pim":
        raise SpecError(f"{pim.name} is a {pim.device_class} device, not a PIM: give a class: pim preset (e.g. aim-gddr6)")
    streams = 2 if mode == "concurrent" else 1
    if mode == "concurrent" and memory == "shared" and not pim_spec(pim).dual_row_buffer:
        raise SpecError(f"{pim.name} shares {host.name}'s memory without dual row buffers, so host and PIM work cannot "
                        "overlap: use --pim-mode blocked (or --pim-memory added if its stacks are extra memory)")
    if mode == "concurrent" and phase.batch % 2:
        raise SpecError(f"concurrent host/PIM execution splits the batch in two: give an even batch, not {phase.batch}")
    from .engine import compiled_phase

    sub = dataclasses.replace(compiled_phase(phase, host), batch=phase.batch // streams)  # an FPGA host's prefill bucket
    if tp > 1:
        from ..arch.system import load_system

        if system is None:
            raise SpecError(f"tensor parallelism over {tp} host + PIM devices needs a system for the fabric (e.g. dgx-h100)")
        system = load_system(system)
        if tp > system.n_devices:
            raise SpecError(f"--tp {tp} exceeds the {system.n_devices} devices of {system.name}")
        step_trace = device_trace(model, sub, Plan(tp=tp), routing)
    else:
        step_trace = build_trace(model, sub, routing)
    placed_as, rows, makespan, events = _best_interleaving(
        _costed_groups(host, pim, step_trace, placement, system, memory), placement, streams, host)
    df = pd.DataFrame(rows, columns=[*COLUMNS, "device", "host_s", "pim_s"])
    trace = build_trace(model, phase, routing)
    held = model  # what one device holds: its tensor-parallel shard
    if tp > 1:
        from .parallel import shard_model

        held = shard_model(model, Plan(tp=tp))
    from .engine import powered_energy

    busy = df["bound"] != "link"
    charged = (host.static_power_w * df.loc[busy & (df["device"] == "host"), "total_latency_s"].sum()
               + pim.static_power_w * df.loc[df["device"] == "pim", "total_latency_s"].sum()) * streams * tp
    link = df["bound"] == "link"  # a collective's energy is already its whole tensor-parallel group's
    ops_j = float(df.loc[~link, "total_energy_j"].sum()) * streams * tp + float(df.loc[link, "total_energy_j"].sum()) * streams
    energy = powered_energy(ops_j, float(charged), (host.static_power_w + pim.static_power_w) * tp, makespan)
    capacity = host.backing.capacity_bytes * host.backing.instances
    if memory == "added":
        capacity += pim.backing.capacity_bytes * pim.backing.instances
    result = Result(ops=df, latency_s=makespan, energy_j=energy,
                  tokens=phase.tokens, weights_bytes=held.weights_bytes, kv_cache_bytes=_kv_bytes(held, phase),
                  ssm_state_bytes=held.ssm_state_bytes(phase.batch),
                  activation_bytes=activation_bytes(device_trace(model, phase, Plan(tp=tp), routing) if tp > 1 else trace,
                                                    host),  # one device's share of the whole batch
                  capacity_bytes=capacity,
                  inputs={"arch": f"{host.name} + {pim.name}" + (f" (tp{tp} on {system.name})" if tp > 1 else ""),
                          "device_class": "hetero", "trace": trace.name, "tp": tp, "formats": model_formats(model),
                          "static_power_w": host.static_power_w + pim.static_power_w,
                          "phase": phase.name, "model": model.name, "phase_args": dict(vars(phase)),
                          "placement": placement, "placed_as": placed_as, "mode": mode, "streams": streams, "meta": trace.meta,
                          **_fpga_inputs(host),
                          "pim_share": float(df.loc[df["device"] == "pim", "total_latency_s"].sum()
                                             / max(df["total_latency_s"].sum(), 1e-30))},
                  timeline=events)
    result.inputs["pim_memory"] = memory
    host_bytes = host.backing.capacity_bytes * host.backing.instances
    on_host = result.weights_bytes + result.activation_bytes
    pim_bytes = pim.backing.capacity_bytes * pim.backing.instances
    in_pim = result.kv_cache_bytes + result.ssm_state_bytes
    if check_memory and memory == "added" and in_pim > pim_bytes:
        gib = 2.0**30
        raise CapacityError(f"{model.name}'s KV cache ({in_pim / gib:.1f} GiB per device) exceeds the added PIM stacks' "
                            f"{pim_bytes / gib:.1f} GiB ({pim.name}), which hold it: use more stacks (--pim-stacks), "
                            "a smaller batch, context or --kv-dtype, or --pim-memory shared (--ignore-memory runs it anyway)")
    if check_memory and memory == "added" and on_host > host_bytes:
        gib = 2.0**30
        raise CapacityError(f"{model.name}'s weights and activations ({on_host / gib:.1f} GiB per device) exceed "
                            f"{host.name}'s {host_bytes / gib:.1f} GiB: added PIM stacks hold the KV cache, the host "
                            "holds the weights; use more devices (--system with --tp), smaller weight formats, or "
                            "--pim-memory shared (--ignore-memory runs it anyway)")
    if check_memory:  # one device's weights, KV cache and activations in the host's (and added PIM) memory
        from .engine import check_fits

        try:
            check_fits(result, model, phase, host, Plan(tp=tp), chunkable=False)  # --pim runs no chunked prefill
        except CapacityError as e:
            extra = ("; or, if the PIM stacks are extra memory beside the host's, --pim-memory added"
                     if memory == "shared" else "")
            raise CapacityError(f"{e}{extra} (--ignore-memory runs it anyway)") from None
    return result


def _fpga_inputs(host: Arch) -> dict[str, Any]:
    """An FPGA host's template use of its part (what simulate records), else nothing."""
    if host.device_class != "fpga":
        return {}
    from ..arch.fpga import part_use

    return part_use(host)


def pim_stacks(pim: Arch | str, stacks: int) -> Arch:
    """``stacks`` copies of a PIM device side by side (e.g. every HBM stack of a host made PIM):
    channels, processing units, vector lanes, memory and static power (and TDP) multiplied, timings
    unchanged."""
    pim = load_arch(pim)
    if not isinstance(stacks, int) or isinstance(stacks, bool) or stacks < 1:
        raise SpecError(f"--pim-stacks must be a positive integer, got {stacks!r}")
    if stacks == 1:
        return pim
    spec = pim.rules["pim"]
    mem = tuple(dataclasses.replace(lv, instances=lv.instances * stacks) if i == 0 else lv
                for i, lv in enumerate(pim.memory))
    return dataclasses.replace(
        pim, name=f"{pim.name} x{stacks}", memory=mem, static_power_w=pim.static_power_w * stacks,
        tdp_w=pim.tdp_w * stacks,
        matrix=dataclasses.replace(pim.matrix, instances=pim.matrix.instances * stacks),
        vector=dataclasses.replace(pim.vector, instances=pim.vector.instances * stacks),
        rules={**pim.rules, "pim": dataclasses.replace(spec, channels=spec.channels * stacks)})
