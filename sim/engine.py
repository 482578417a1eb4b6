"""Whole-trace simulation: cost every op (each distinct op signature once), add them up in trace
order with block repeats, and account for memory."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..arch.gpu import gpu_rules
from ..arch.loader import load_arch
from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import CapacityError, DtypeError, SpecError
from ..mappers.fusion import Group, plan
from ..mappers.gpu import gpu_gemm_cost
from ..mappers.gpu_attention import fused_attention_cost
from ..mappers.pim import pim_matmul_cost
from ..mappers.search import search
from ..mappers.wafer import wafer_matmul_cost, wafer_streaming_cost
from ..workloads.builder import build_trace
from ..workloads.einsum import Op
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Phase, Prefill
from ..workloads.trace import Trace
from .cost import OpCost, ideal_compute_cycles
from .dequant import with_dequant
from .problem import problem_from_op
from .result import COLUMNS, Result
from .sparsity import check_sparse_format, check_sparse_trace
from .streaming import streaming_cost

_CACHE: OrderedDict[tuple, tuple[OpCost, dict | None]] = OrderedDict()
_CACHE_SIZE = 4096


def clear_cache() -> None:
    """Forget memoised op costs and wafer layouts (e.g. to time a cold simulation)."""
    from ..mappers.pim import _GEMV
    from ..mappers.wafer import _square_sides, clear_stored

    _CACHE.clear()
    clear_stored()
    _GEMV.clear()
    _square_sides.cache_clear()


def matmul_cost(op: Op, arch: Arch, objective: str = "latency", mapper: str = "default") -> OpCost:
    """Cost of a contraction under the best mapping the chosen mapper finds (``default`` beam
    search, ``exhaustive`` exact branch and bound, ``sampled`` random within one second)."""
    if mapper != "default" and arch.device_class not in ("generic", "systolic"):
        raise SpecError(f"--mapper {mapper} searches the loop nest of generic and systolic devices; {arch.name!r} is a "
                        f"{arch.device_class} device with its own mapper: drop --mapper")
    for t in op.inputs:
        check_sparse_format(t.dtype, arch)
    prob = problem_from_op(op, arch.matrix.accumulator_bits)
    if mapper == "exhaustive":
        from ..mappers.exhaustive import exhaustive_search

        res = exhaustive_search(prob, arch, objective)
    elif mapper == "sampled":
        from ..mappers.exhaustive import sampled_search

        res = sampled_search(prob, arch, objective)
    else:
        res = search(prob, arch, objective)
    c = res.costs
    clock = arch.clock_hz
    names = [lv.name for lv in arch.memory]
    level_cycles = c.level_cycles[0]
    comp = float(c.compute[0])
    worst = int(np.argmax(level_cycles))
    latencies = sum(lv.latency_s for lv in arch.memory) * clock
    # the bound is the branch that set the time: a level's transfers, else compute (with its first fill)
    bound = names[worst] if level_cycles[worst] + latencies >= float(c.cycles[0]) * (1 - 1e-12) else "compute"
    cycles = float(c.cycles[0]) + arch.launch_overhead_s * clock
    latency = cycles / clock
    energy = {"compute": float(c.energy_pj[0] - c.level_energy_pj[0].sum()) * 1e-12}
    energy.update({n: float(e) * 1e-12 for n, e in zip(names, c.level_energy_pj[0], strict=True)})
    energy["static"] = arch.static_power_w * latency
    return OpCost(
        cycles=cycles, latency_s=latency, compute_cycles=comp, stall_cycles=max(cycles - comp, 0.0),
        energy_j=float(sum(energy.values())), utilization=ideal_compute_cycles(arch, prob) / cycles, bound=bound,
        bytes_by_level={n: float(r + w) for n, r, w in zip(names, c.reads[0], c.writes[0], strict=True)},
        energy_by_component=energy, mapping=res.mapping.to_dict(),
        detail={"level_cycles": dict(zip(names, map(float, level_cycles), strict=True)),
                "prologue_cycles": float(c.prologue[0]), "mappings_evaluated": res.evaluated},
    )


def launch_overhead(kind: str, arch: Arch, isolated: bool) -> float:
    """Fixed cost of launching one kernel: in a stream of kernels the device's launch gap; a kernel
    timed alone from the host (``isolated``) pays a GPU's fitted host-side overhead for its kind."""
    if isolated and arch.device_class == "gpu":
        return gpu_rules(arch.rules, f"device {arch.name!r}").launch(kind)
    if isolated and arch.device_class == "dataflow":  # a lone op is a one-stage pipeline: one kernel launch
        from ..arch.rdu import rdu_spec

        return rdu_spec(arch).kernel_launch_s
    return arch.launch_overhead_s


#: side of the (query, key) blocks a causal prefill's attention skips where its mask empties them, on the
#: classes costed op by op without a block of their own (generic, PIM, wafer; a systolic array blocks by
#: its rows); FPGA templates, GPUs' fused kernels and RDUs' PCU lanes set theirs
MASK_BLOCK = 128


def masked_share(op: Op, arch: Arch) -> float:
    """Share of a causal attention op's (query, key) plane a blocked kernel on ``arch`` computes
    (``Op.kept_block_fraction``); 1 for other ops and for classes that handle the mask themselves."""
    if arch.device_class not in ("generic", "systolic", "pim", "wafer") or op.kind not in ("matmul", "softmax"):
        return 1.0
    block = arch.matrix.array[0] if arch.matrix.array else MASK_BLOCK
    return op.kept_block_fraction(block, block) if "s" in dict(op.dims) else 1.0


def op_cost(op: Op, arch: Arch, objective: str = "latency", isolated: bool = False) -> OpCost:
    """Cost of one op on ``arch``, memoised on (op signature, device fingerprint, objective).

    ``isolated``: the op is one host-timed kernel call (as in ``xpusim op`` and the validation
    measurements) rather than one kernel in a stream."""
    if arch.device_class == "fpga":  # the engine runs instructions compiled for bucketed lengths
        from ..mappers.fpga import compiled_lengths

        padded = compiled_lengths(op, arch)
        if padded is not op:  # the cost of the padded op; utilization counts the useful work only
            cost = op_cost(padded, arch, objective, isolated)
            return dataclasses.replace(cost, utilization=cost.utilization * op.flops / padded.flops if padded.flops else 0.0)
    key = (op.signature(), arch.fingerprint(), objective, isolated)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[0]
    share = masked_share(op, arch)
    if share < 1.0:  # a blocked kernel reads and computes only the key blocks the causal mask keeps
        kept = max(1, round(dict(op.dims)["s"] * share))
        reduced = dataclasses.replace(op, dims=tuple((d, kept if d == "s" else n) for d, n in op.dims),
                                      attrs={**op.attrs, "causal": False, "masked_share": share})
        cost = op_cost(reduced, arch, objective, isolated)
        _remember(key, cost)
        return cost
    for t in op.inputs:
        check_sparse_format(t.dtype, arch)
    # expert groups after the first run inside the same grouped-GEMM launch (fused-MoE kernels)
    launch = 0.0 if op.attrs.get("moe_group", 0) > 0 else launch_overhead(op.kind, arch, isolated)
    if op.kind != "matmul" and arch.device_class == "wafer":  # row reductions cross the mesh
        cost = wafer_streaming_cost(op, arch, launch)
    elif op.kind != "matmul" and arch.device_class == "fpga":  # the SFUs skip a causal softmax's empty blocks
        from ..mappers.fpga import kept_attention

        cost = streaming_cost(op, arch, launch, work=kept_attention(op, arch))
    elif op.kind != "matmul":
        cost = streaming_cost(op, arch, launch)
    elif arch.device_class == "gpu" and len(op.inputs) == 2:
        cost = with_dequant(gpu_gemm_cost(problem_from_op(op), arch, launch), op, arch)
    elif arch.device_class == "pim" and len(op.inputs) == 2:  # standalone PIM: contractions in the banks' PUs
        _check_pim_operands(op, arch)
        cost = pim_matmul_cost(op, arch, launch)
    elif arch.device_class == "fpga" and len(op.inputs) == 2:  # FPGA LLM engine: DSP-chain MPE (FlightLLM)
        from ..mappers.fpga import fpga_matmul_cost

        cost = fpga_matmul_cost(op, arch, launch)
    elif arch.device_class == "dataflow" and len(op.inputs) == 2:  # an RDU: the op as a one-stage fused pipeline
        from ..mappers.rdu import rdu_op_cost

        cost = rdu_op_cost(op, arch)
    elif arch.device_class == "wafer" and len(op.inputs) == 2:  # wafer-scale mesh: MeshGEMM / MeshGEMV (WaferLLM)
        cost = with_dequant(wafer_matmul_cost(op, arch, launch, objective=objective), op, arch)
    else:
        cost = with_dequant(matmul_cost(op, arch, objective), op, arch)
    _remember(key, cost)
    return cost


def _remember(key: tuple, cost: OpCost) -> None:
    """Memoise ``cost`` under ``key``, dropping the least recently used entry beyond the cache size."""
    _CACHE[key] = (cost, cost.mapping)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def collective_cost(op: Op, system: Any) -> OpCost:
    """A collective op of a parallel trace on ``system``'s interconnect (``bound`` = ``link``)."""
    if system is None:
        raise SpecError(f"op {op.name!r} is a {op.attrs.get('collective')} between devices: simulate it on a system "
                        "(--system), not a single device")
    from .collectives import collective_time, send_time

    if system.meta.get("ideal_interconnect"):  # a what-if fabric: devices exchange data at no cost
        return OpCost(cycles=0.0, latency_s=0.0, compute_cycles=0.0, stall_cycles=0.0, energy_j=0.0, utilization=0.0,
                      bound="link", bytes_by_level={}, energy_by_component={"link": 0.0},
                      mapping={"algorithm": "ideal", "ranks": op.attrs["ranks"]}, detail={"collective": op.attrs["collective"]})
    kind, nbytes = str(op.attrs["collective"]), op.tensor_bytes(op.inputs[0])
    if kind == "send":  # the one-way sends of a pipeline stage boundary, at their devices (sim/parallel.py)
        c = send_time(system, nbytes, int(op.attrs["ranks"]), int(op.attrs["stride"]), int(op.attrs["first"]))
    else:
        c = collective_time(system, kind, nbytes, int(op.attrs["ranks"]))
    clock = system.device.clock_hz
    return OpCost(cycles=c.time_s * clock, latency_s=c.time_s, compute_cycles=0.0, stall_cycles=c.time_s * clock,
                  energy_j=c.energy_j, utilization=0.0, bound="link", bytes_by_level={},
                  energy_by_component={"link": c.energy_j}, mapping={"algorithm": c.algorithm, "ranks": op.attrs["ranks"],
                                                                     "busbw_GBps": c.busbw_Bps / 1e9},
                  detail={"collective": op.attrs["collective"]})


def group_cost(group: Group, arch: Arch, objective: str = "latency") -> OpCost:
    """Cost of a kernel group (one op, or a fused attention)."""
    if group.kind == "attention":
        score, _, context = group.ops
        key = ("attention", score.signature(), context.signature(), arch.fingerprint())
        hit = _CACHE.get(key)
        if hit is None:
            cost = fused_attention_cost(score, context, arch, launch_overhead("attention", arch, False))
            _remember(key, cost)
            return cost
        return hit[0]
    return op_cost(group.ops[0], arch, objective)


def _trace_reads(trace: Trace) -> tuple[float, float]:
    """(weights, KV) bytes a trace reads: what a device holds when no model says (it misses a mixture
    of experts' idle experts)."""
    return (sum(op.tensor_bytes(t) * b.repeat for b, op in trace.ops() for t in op.inputs if t.role == "weight"),
            sum(op.tensor_bytes(t) * b.repeat for b, op in trace.ops() for t in op.inputs if t.role == "kv"))


def _rdu_rows(trace: Trace, arch: Arch, level_names: list[str], system: Any,
              resident: tuple[float, float] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a trace on a dataflow device: each block's compute ops as one fused pipeline, its
    collectives after it; every op row carries its share of the block's time and energy. The
    device's ``rules['rdu_mode']``: ``fused`` (default: one kernel per pipeline of a block instance), ``looped``
    (kernel looping: a repeated block's instances run as one kernel with a pipelined outer loop,
    so its launch is paid once per step, not once per repeat) or ``unfused`` (kernel by kernel).
    ``resident``: the (weights, KV) bytes the device holds, which decide their tiers (default: what
    the trace reads, which misses a mixture of experts' idle experts)."""
    from ..arch.rdu import rdu_spec
    from ..mappers.rdu import RDU_MODES, block_cost, tiers

    place = tiers(arch, *(resident or _trace_reads(trace)))
    mode = arch.rules.get("rdu_mode", "fused") if isinstance(arch.rules, dict) else "fused"
    if mode not in RDU_MODES:
        raise SpecError(f"RDU execution mode {mode!r}: use one of {', '.join(RDU_MODES)}")
    fused = mode != "unfused"
    launch = rdu_spec(arch).kernel_launch_s
    rows: list[dict[str, Any]] = []
    for block in trace.blocks:
        ops = [op for op in block.ops if op.kind != "collective"]
        bc = block_cost(ops, arch, place, fused) if ops else None
        if bc is not None and mode == "looped" and block.repeat > 1:  # one launch for all the repeats
            saved = bc.launches * launch * (1.0 - 1.0 / block.repeat)  # launches move no bytes: only static energy
            bc = dataclasses.replace(bc, latency_s=bc.latency_s - saved, energy_j=bc.energy_j - arch.static_power_w * saved)
        position = {id(op): i for i, op in enumerate(ops)}
        for op in block.ops:
            if op.kind == "collective":
                c = collective_cost(op, system)
                lat, energy, bound, util = c.latency_s, c.energy_j, "link", 0.0
            else:
                assert bc is not None
                i = position[id(op)]
                lat, energy = bc.latency_s * float(bc.share[i]), bc.energy_j * float(bc.share[i])
                bound, util = bc.bound, bc.utilization
            row = {"block": block.name, "name": op.name, "kind": op.kind, "repeat": block.repeat, "flops": op.useful_flops,
                   "bytes": op.bytes, "intensity": op.flops / op.bytes if op.bytes else 0.0, "cycles": lat * arch.clock_hz,
                   "latency_s": lat, "total_latency_s": lat * block.repeat, "energy_j": energy,
                   "total_energy_j": energy * block.repeat, "bound": bound, "utilization": util}
            for n in level_names:
                row[f"bytes_{n}"] = 0.0
            if bc is not None and op.kind != "collective":  # the op's share of the block's HBM traffic
                row[f"bytes_{level_names[0]}"] = bc.bytes_by_tier["hbm"] * float(bc.byte_share[position[id(op)]])
            rows.append(row)
    mappings = {"rdu": {"tiers": place, "mode": mode}}
    return rows, mappings


def _capacity(arch: Arch) -> float:
    """Bytes of device memory for weights, KV cache and activations: the backing level, and an RDU's or
    an FPGA card's DDR tier."""
    from ..mappers.tiers import far_tier

    far = far_tier(arch)
    return float(arch.backing.capacity_bytes * arch.backing.instances + (far[0] if far else 0.0))


def activation_bytes(trace: Trace, arch: Arch | None = None) -> float:
    """Peak bytes of activations live at one kernel: its non-weight, non-KV operands and result. On a
    device (``arch``) a fused group of ops (e.g. a flash-attention kernel) keeps its intermediates
    (the score matrix) on chip, so only its external inputs and final output count; without one,
    every op's."""
    def live(ops: list[Op]) -> float:
        inner = {op.output.name for op in ops[:-1]}
        seen: dict[str, float] = {}
        for op in ops:
            for t in (*op.inputs, op.output) if op is ops[-1] else op.inputs:
                if t.role in ("activation", "input") and t.name not in inner:
                    seen[t.name] = max(seen.get(t.name, 0.0), op.tensor_bytes(t))
        return sum(seen.values())

    if arch is None:
        return max((live([op]) for _, op in trace.ops()), default=0.0)
    if arch.device_class == "dataflow":  # a block is one fused pipeline: its intermediates stay in the PMUs
        from ..mappers.rdu import on_chip

        return max((live(ops) + on_chip(ops, arch)[3] for block in trace.blocks  # ... but what spills lives in HBM
                    if (ops := [op for op in block.ops if op.kind != "collective"])), default=0.0)
    return max((live(list(group.ops)) for block in trace.blocks for group in plan(block.ops, arch)
                if group.kind != "collective"), default=0.0)


#: the tensor classes of a model's formats: the flag that sets each, and what the class holds
FORMAT_FLAGS = {"weights": ("--weight-dtype", "weights"), "activations": ("--act-dtype", "activations"),
                "kv": ("--kv-dtype", "KV cache"), "embed": ("--embed-dtype", "embeddings and lm_head")}


def _format_class(op: Op, role: str) -> str:
    """The format class (a :data:`FORMAT_FLAGS` key) of an operand of ``op`` with ``role``."""
    if role == "weight":
        return "embed" if op.name == "lm_head" or op.kind == "embedding" else "weights"
    return "kv" if role in ("kv", "state") else "activations"


def _check_pim_operands(op: Op, arch: Arch) -> None:
    """A PIM's PUs compute on operands read straight from the banks (and on the vector its input
    buffer holds), with no conversion pass: every operand must be in the class the PUs run; one-line
    :class:`DtypeError` naming the flag otherwise (a GPU would widen it in the kernel instead)."""
    runs_in = arch.matrix.resolve(get_dtype(op.compute_dtype).compute)
    for t in op.inputs:
        if get_dtype(t.dtype).compute != runs_in:
            flag = FORMAT_FLAGS[_format_class(op, t.role)][0]
            raise DtypeError(f"{arch.name}'s PUs compute {runs_in} on operands read straight from the banks, with no "
                             f"conversion pass: op {op.name!r} has {t.name} in {t.dtype}; store it as {runs_in} "
                             f"({flag} {runs_in} for a model, --dtype {runs_in} for `xpusim op`)")


def _resolves(arch: Arch, fmt: str) -> bool:
    """Whether ``arch``'s matrix unit computes format ``fmt`` (in its class or a wider one it has; a
    PIM's PUs only in their own classes, see :func:`_check_pim_operands`)."""
    if arch.device_class == "pim":
        return get_dtype(fmt).compute in arch.matrix.rate_per_cycle
    try:
        arch.matrix.resolve(get_dtype(fmt).compute)
    except DtypeError:
        return False
    return True


def format_advice(ops: Iterable[Op], arch: Arch, embed_follows: bool = True) -> str | None:
    """One line naming every format class of the contractions among ``ops`` that ``arch``'s matrix
    unit cannot compute (nor a wider class it has), with the flags and formats to give (the preset's
    ``formats:`` where it declares them); None when every class resolves. ``embed_follows``: the
    embeddings and LM head take the weights' format (the model sets no ``embed_dtype``)."""
    bad: dict[str, str] = {}
    for op in ops:
        if op.kind != "matmul" or len(op.inputs) != 2:
            continue
        for t in op.inputs:
            if not _resolves(arch, t.dtype):
                bad.setdefault(_format_class(op, t.role), get_dtype(t.dtype).dense)
    if embed_follows and "weights" in bad and bad.get("embed") == bad["weights"]:  # --weight-dtype sets both
        del bad["embed"]
    if not bad:
        return None
    bad = {k: bad[k] for k in FORMAT_FLAGS if k in bad}
    declared = arch.meta.get("formats", {})
    own = sorted(arch.matrix.rate_per_cycle, key=lambda c: -get_dtype(c).bits)  # the widest the unit has first
    takes = [f for f in ("int4", "int8", "fp4", "fp8", "fp16", "bf16", "fp32") if _resolves(arch, f)]
    fallback = {k: declared.get("weights" if k == "embed" else k, own[0]) for k in FORMAT_FLAGS}
    if "embed" in bad and "weights" in declared:
        fallback["embed"] = get_dtype(declared["weights"]).dense
    held = ", ".join(f"{FORMAT_FLAGS[k][1]} {f}" for k, f in bad.items())
    flags = " ".join(f"{FORMAT_FLAGS[k][0]} {get_dtype(fallback[k]).dense}" for k in bad)
    helper = (" (its preset's engine formats; in Python, xpusim.sim.engine.with_engine_formats(model, arch) "
              "applies them)" if declared else "")
    widened = [f for f in takes if get_dtype(f).compute not in own]
    unit = f"{arch.name}'s matrix unit computes {', '.join(own)} only" + (f" ({', '.join(widened)} widened)" if widened else "")
    return f"{unit}, not this model's {held}: add {flags}{helper}"


def simulate_trace(trace: Trace, arch: Arch | str, objective: str = "latency", model: ModelSpec | None = None,
                   kv_bytes: float = 0.0, system: Any = None, resident: tuple[float, float] | None = None) -> Result:
    """Simulate every op of ``trace`` on ``arch``; memory accounting uses ``model``'s weights and
    ``kv_bytes`` of KV cache if a model is given; ``system`` (a :class:`~xpusim.arch.system.System`)
    costs the trace's collectives on its interconnect; ``resident``: (weights, KV) bytes one device
    holds, for a dataflow device's tier choice (default: the model's, its KV cache with any recurrent
    state, else what the trace reads)."""
    arch = load_arch(arch)
    check_sparse_trace(trace, arch)
    rows: list[dict[str, Any]] = []
    mappings: dict[str, Any] = {}
    level_names = [lv.name for lv in arch.memory]
    if resident is None and model is not None:  # a recurrent state lives with the KV cache (per-sequence memory)
        resident = (model.weights_bytes, kv_bytes + model.ssm_state_bytes(int(trace.meta.get("batch", 0) or 0)))
    if arch.device_class == "dataflow":  # a block is one fused spatial pipeline (mappers/rdu.py)
        rows, mappings = _rdu_rows(trace, arch, level_names, system, resident)
    if arch.device_class == "fpga":  # weights beyond the HBM overflow into the card's DDR (mappers/fpga.py)
        from ..mappers.fpga import with_tiers

        arch = with_tiers(arch, *(resident or _trace_reads(trace)))
    for block in trace.blocks if arch.device_class != "dataflow" else []:
        for group in plan(block.ops, arch):
            try:
                cost = (collective_cost(group.ops[0], system) if group.kind == "collective"
                        else group_cost(group, arch, objective))
            except DtypeError as e:  # every format the device lacks at once, with the flags; else the op's error
                advice = format_advice((op for _, op in trace.ops()), arch, model is None or not model.embed_dtype)
                raise DtypeError(advice or f"{block.name}.{group.name}: {e}") from None
            flops = sum(op.useful_flops for op in group.ops)  # the work the result needs (causal masks skipped)
            if len(group.ops) == 1:
                nbytes = group.ops[0].bytes
            else:  # a fused group reads its external inputs and writes its last output
                inner = {op.output.name for op in group.ops}
                external: dict[str, float] = {}  # a tensor two ops read (MLA's latent) is read once
                for op in group.ops:
                    for t in op.inputs:
                        if t.name not in inner:
                            external[t.name] = max(external.get(t.name, 0.0), op.tensor_bytes(t))
                nbytes = sum(external.values())
                nbytes += group.ops[-1].tensor_bytes(group.ops[-1].output)
            row = {
                "block": block.name, "name": group.name, "kind": group.kind, "repeat": block.repeat, "flops": flops,
                "bytes": nbytes, "intensity": flops / nbytes if nbytes else 0.0, "cycles": cost.cycles,
                "latency_s": cost.latency_s, "total_latency_s": cost.latency_s * block.repeat,
                "energy_j": cost.energy_j, "total_energy_j": cost.energy_j * block.repeat, "bound": cost.bound,
                "utilization": cost.utilization,
            }
            for n in level_names:
                row[f"bytes_{n}"] = cost.bytes_by_level.get(n, 0.0)
            rows.append(row)
            if cost.mapping is not None:
                mappings[f"{block.name}.{group.name}"] = cost.mapping
    df = pd.DataFrame(rows, columns=COLUMNS + [f"bytes_{n}" for n in level_names])
    weights = model.weights_bytes if model is not None else sum(
        op.tensor_bytes(t) * b.repeat for b, op in trace.ops() for t in op.inputs if t.role == "weight")
    kv = kv_bytes if model is not None else 0.0
    result = Result(
        ops=df, latency_s=float(df["total_latency_s"].sum()), energy_j=float(df["total_energy_j"].sum()),
        tokens=trace.tokens, weights_bytes=float(weights), kv_cache_bytes=float(kv),
        activation_bytes=activation_bytes(trace, arch), capacity_bytes=_capacity(arch),
        inputs={"arch": arch.name, "device_class": arch.device_class, "static_power_w": arch.static_power_w,
                "tdp_w": arch.tdp_w, "trace": trace.name, "phase": trace.phase,
                "meta": trace.meta, "objective": objective, "xpusim_version": __version__},
        mappings=mappings,
    )
    if arch.device_class == "fpga":  # what the template uses of the part (arch/fpga.py estimator), the HBM layout
        from ..arch.fpga import part_use
        from ..mappers.fpga import hbm_channel_summary

        result.inputs.update(part_use(arch))
        if "fpga_tiers" in arch.rules:  # where the weights and KV cache live: HBM, the card's DDR
            result.inputs["fpga_tiers"] = dict(arch.rules["fpga_tiers"])
        place = arch.rules.get("fpga_tiers", {"weights_hbm": 1.0, "kv": "hbm"})
        from ..mappers.tiers import kv_near

        in_hbm = result.weights_bytes * place["weights_hbm"] + result.kv_cache_bytes * kv_near(place)
        channels = hbm_channel_summary(arch, in_hbm)
        if channels is not None:
            result.inputs["hbm_channels"] = channels
    return result


def compiled_phase(phase: Phase, arch: Arch) -> Phase:
    """The step a device runs for ``phase``: on an FPGA template with length buckets a prefill runs
    as the program of its bucket (:func:`~xpusim.mappers.fpga.bucketed_prefill`); else ``phase``."""
    if arch.device_class == "fpga" and isinstance(phase, Prefill):
        from ..mappers.fpga import bucketed_prefill

        return bucketed_prefill(phase, arch)
    return phase


def powered_energy(energy_j: float, charged_static_j: float, powered_w: float, wall_s: float) -> float:
    """A step's energy with every device powered for the whole step: the ops' energies less the static
    power they were charged while busy (``charged_static_j``), plus the static power of every device
    (``powered_w`` together) over the step's wall time — a device idling through collectives, pipeline
    bubbles or the other side's work still draws it."""
    return energy_j - charged_static_j + powered_w * wall_s


def check_fits(result: Result, model: ModelSpec, phase: Phase, arch: Arch, plan: Any = None, chunk: int = 0,
               chunkable: bool = True) -> None:
    """Raise :class:`CapacityError` with remedies when the footprint of one device (running ``plan``,
    default one device alone) exceeds its memory: the fewest devices a parallel plan needs to hold it
    (:func:`~xpusim.sim.fit_advice.fewest_devices`), and the changes that alone make it fit (``chunk``:
    the prefill runs in chunks of that many tokens, its activations a chunk's; ``chunkable``: a chunked
    prefill is a remedy on this path)."""
    if result.memory_bytes <= result.capacity_bytes:
        return
    from .fit_advice import fewest_devices, fitting_changes, plan_flags
    from .parallel import Plan

    gib = 2.0**30
    plan = plan or Plan()
    # the step's activations stay on each device, as the system path reserves them
    split = fewest_devices(model, plan, phase.batch, phase.kv_len, result.capacity_bytes, reserve=result.activation_bytes)
    remedies = [f"at least {split.devices} such devices ({plan_flags(split)} on a --system; no split over fewer holds "
                f"the weights, KV cache and activations) or one with more memory" if split else "a device with more memory"]
    remedies += fitting_changes(model, plan, phase, result.memory_bytes, result.capacity_bytes,
                                activations=result.activation_bytes, chunk=chunk, chunkable=chunkable)
    parts = [f"weights {result.weights_bytes / gib:.1f}", f"KV cache {result.kv_cache_bytes / gib:.1f}"]
    if result.ssm_state_bytes:
        parts.append(f"SSM state {result.ssm_state_bytes / gib:.1f}")
    parts.append(f"activations {result.activation_bytes / gib:.1f}")
    raise CapacityError(
        f"{model.name} {phase.name} needs {result.memory_bytes / gib:.1f} GiB ({', '.join(parts)}) but "
        f"{result.inputs.get('arch', arch.name)} "
        f"has {result.capacity_bytes / gib:.1f} GiB; try {', or '.join(remedies)}"
    )


def _kv_bytes(model: ModelSpec, phase: Phase) -> float:
    """KV cache held at the end of the step (an encoder-decoder prefill: one decoder token plus the
    encoded source; its decode: ``context`` decoder tokens plus ``source``)."""
    prefix = getattr(phase, "shared_prefix", 0)
    if model.encoder_layers:
        if isinstance(phase, Prefill):
            return model.kv_cache_bytes(phase.batch, 1, phase.seq)
        # a shared decoder prefix cached once; each sequence's own tokens and its encoded source apart
        own = model.kv_cache_bytes(phase.batch, phase.kv_len - prefix, getattr(phase, "source", 0))
        return own + (model.kv_cache_bytes(1, prefix) if prefix else 0.0)
    if prefix:  # cached once, plus each sequence's own tokens
        return model.kv_cache_bytes(1, prefix) + model.kv_cache_bytes(phase.batch, phase.kv_len - prefix)
    return model.kv_cache_bytes(phase.batch, phase.kv_len)


def _objective_value(r: Result, objective: str) -> float:
    return {"latency": r.latency_s, "energy": r.energy_j}.get(objective, r.latency_s * r.energy_j)


def with_engine_formats(model: ModelSpec, arch: Arch, keep: tuple[str, ...] | set[str] = ()) -> ModelSpec:
    """``model`` in the formats ``arch``'s engine runs (its preset's ``formats:``, e.g. an FPGA
    bitstream built for INT8), except the tensor classes in ``keep`` (``weights``,
    ``activations``, ``kv``, ``embed``: those a user chose); unchanged when the preset declares none."""
    declared = arch.meta.get("formats", {})
    engine = {k: v for k, v in declared.items() if k not in keep}
    out = model.with_formats(engine.get("weights"), engine.get("activations"), engine.get("kv")) if engine else model
    if "weights" in declared and model.embed_dtype and "embed" not in keep:  # the embeddings and LM head run in the
        # engine's weight format, unless the user chose theirs
        out = dataclasses.replace(out, embed_dtype=get_dtype(declared["weights"]).dense)
    return out


def model_formats(model: ModelSpec) -> dict[str, str]:
    """The formats a result records it ran ``model`` in (the embeddings and LM head's too: they follow
    ``--weight-dtype`` unless the model or ``--embed-dtype`` sets them, while a quantised
    checkpoint's config keeps them 16-bit)."""
    return {"weights": model.weight_dtype, "activations": model.act_dtype, "kv": model.kv_dtype,
            "embeddings": model.embedding_dtype}


def _stamped(result: Result, model: ModelSpec, phase: Phase) -> Result:
    """``result`` with its model's recurrent state, name, formats and the phase's arguments."""
    result.ssm_state_bytes = model.ssm_state_bytes(phase.batch)
    result.inputs.update(model=model.name, formats=model_formats(model), phase_args=dict(vars(phase)))
    return result


def simulate(arch: Arch | str, model: ModelSpec | str, phase: Phase, objective: str = "latency",
             check_memory: bool = True, routing: str | None = None, mla_form: str | None = None,
             wafer_options: dict[str, Any] | None = None) -> Result:
    """Simulate one step of ``phase`` of ``model`` on ``arch``; ``routing`` (``balanced``,
    ``zipf:S`` or a per-expert weights file) sizes a mixture-of-experts model's expert GEMMs.
    Multi-head latent attention runs in ``mla_form`` (``naive`` or ``absorbed``); by default both
    are simulated and the one better for ``objective`` is kept (``meta.mla_form``).

    A wafer-scale device places the model on regions of its mesh (``sim/wafer_placement.py``;
    ``wafer_options``: ``wafers``, ``weight_streaming``, ``side``, ``algorithm``).

    Raises :class:`~xpusim.errors.CapacityError` if the weights, KV cache and activations do not
    fit device memory (unless ``check_memory`` is false).
    """
    arch = load_arch(arch)
    model = load_model(model)
    check_sparse_format(model.weight_dtype, arch)
    if wafer_options and arch.device_class != "wafer":
        raise SpecError(f"wafer options ({', '.join(wafer_options)}) apply to wafer-scale devices; {arch.name} is a "
                        f"{arch.device_class} device")
    if arch.device_class == "wafer":  # regions, stages, streaming (sim/wafer_placement.py)
        from .wafer_placement import simulate_wafer

        return _stamped(simulate_wafer(arch, model, phase, objective, check_memory, routing, mla_form,
                                       **(wafer_options or {})), model, phase)
    kv = _kv_bytes(model, phase)
    forms = [mla_form] if mla_form or not model.is_mla else ["naive", "absorbed"]
    run = compiled_phase(phase, arch)
    results = [simulate_trace(build_trace(model, run, routing, f), arch, objective, model, kv_bytes=kv) for f in forms]
    result = min(results, key=lambda r: _objective_value(r, objective))
    if run is not phase:  # the padded rows are computed, not delivered
        result.tokens = phase.tokens
        result.inputs["compiled_seq"] = getattr(run, "seq", None)
    _stamped(result, model, phase)
    if check_memory:
        check_fits(result, model, phase, arch)
    return result
