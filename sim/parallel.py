"""Parallel plans: the per-device trace of a model under tensor, pipeline, expert and data
parallelism, with the collectives each implies.

* **Tensor parallelism** (Megatron-LM, Shoeybi et al. 2019): attention heads, the MLP
  intermediate, routed experts' intermediates (without EP) and the vocabulary are split over
  ``tp`` devices (column-parallel Q/K/V, up/gate; row-parallel output and down projections); the
  row-parallel outputs are all-reduced (two all-reduces per layer), or, with sequence parallelism,
  reduce-scattered and all-gathered (same bytes on the wire; the norms and residual adds between
  them still run on every token of each rank: the smaller activations and work sequence
  parallelism brings are not modelled).
  KV heads are split when there are at least ``tp`` of them, otherwise replicated.
* **Pipeline parallelism**: ``pp`` stages of consecutive layers; activations pass between stages
  (one-way sends from each rank of a stage to its counterpart in the next, over the links between
  their devices); micro-batches fill the pipeline (see :mod:`xpusim.sim.events`).
* **Expert parallelism** (GShard; DeepSeek-V3 inference): over the ``tp x dp`` devices of a stage,
  each holds ``E / ep`` whole experts; routed tokens travel by all-to-all (dispatch and combine).
* **Data parallelism**: ``dp`` replicas each serve ``batch / dp`` sequences.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..dtypes import get_dtype
from ..errors import SpecError
from ..workloads.builder import build_trace
from ..workloads.einsum import Op, Tensor
from ..workloads.model import ModelSpec
from ..workloads.phases import Decode, Phase, Prefill, Verify
from ..workloads.routing import parse_routing
from ..workloads.trace import Block, Trace

#: tensors whose producing op ends a row-parallel section: all-reduced (or reduce-scattered) over TP
ROW_PARALLEL_OUTPUTS = ("attn_out", "ssm_out", "mlp_out", "out", "self_out", "cross_out")


@dataclass(frozen=True)
class Plan:
    """Degrees of parallelism; devices used = ``tp * pp * dp``; ``ep`` (1 or ``tp * dp``) spreads
    experts; ``sp``: sequence parallelism (reduce-scatter + all-gather instead of all-reduce)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    sp: bool = False
    microbatches: int = 0  # pipeline micro-batches (0: one per stage, at least one)

    def __post_init__(self) -> None:
        for f in ("tp", "pp", "dp", "ep"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"--{f} must be a positive integer, got {v!r}")
        if self.ep > 1 and self.ep != self.tp * self.dp:
            stage = self.tp * self.dp
            grow = (f"give a stage {self.ep} devices (--dp {self.ep // self.tp} with --tp {self.tp})"
                    if self.ep % self.tp == 0 else f"give a stage {self.ep} devices (--tp x --dp = {self.ep})")
            keep = f"use --ep {stage}" if stage > 1 else "drop --ep"
            raise SpecError(f"expert parallelism spreads experts over the tp x dp = {stage} devices of a stage; "
                            f"{keep}, or {grow}")
        if self.sp and self.tp == 1:
            raise SpecError("--sp splits the tensor-parallel collectives, which --tp 1 has none of; give --tp > 1 or drop --sp")

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        return (f"tp{self.tp} pp{self.pp} dp{self.dp}" + (f" ep{self.ep}" if self.ep > 1 else "") + (" sp" if self.sp else "")
                + (f" mb{self.microbatches}" if self.microbatches else ""))


def _split(value: int, parts: int, what: str, model: ModelSpec) -> int:
    if value % parts:
        raise SpecError(f"{model.name}: {what} ({value}) does not divide by {parts}; choose a degree that divides it")
    return value // parts


def shard_model(model: ModelSpec, plan: Plan) -> ModelSpec:
    """The model as one tensor-/expert-parallel rank sees it: every layer, each with its share of
    heads, widths, experts and vocabulary (pipeline stages take their layers from it)."""
    tp = plan.tp
    if plan.ep > 1 and not model.is_moe:
        raise SpecError(f"--ep {plan.ep}: {model.name} has no routed experts; drop --ep")
    if tp > 1 and model.ssm_kind:
        raise SpecError(f"{model.name}: tensor parallelism of SSM layers is not modelled; use --pp or --dp")
    if plan.pp > model.n_layers:
        raise SpecError(f"{model.name} has {model.n_layers} layers: --pp {plan.pp} leaves stages empty")
    changes: dict = {"name": f"{model.name}[{plan.describe()}]"}
    if tp > 1:
        changes["n_heads"] = _split(model.n_heads, tp, "attention heads", model)
        changes["n_kv_heads"] = _split(model.n_kv_heads, tp, "KV heads", model) if model.n_kv_heads >= tp else 1
        changes["d_ff"] = _split(model.d_ff, tp, "the MLP width", model) if model.d_ff else 0
        changes["vocab_size"] = math.ceil(model.vocab_size / tp)
        if model.is_moe and plan.ep == 1:
            changes["d_ff_expert"] = _split(model.expert_ff, tp, "the expert width", model)
    if model.is_moe and plan.ep > 1:  # whole experts, E / ep on each device (its trace's routing picks them)
        _split(model.n_experts, plan.ep, "the routed experts", model)
        changes["d_ff_expert"] = model.expert_ff  # at full width: expert parallelism does not split an expert
        if tp > 1 and model.n_shared_experts:  # the shared experts, on every rank, stay tensor-parallel
            changes["d_ff_shared"] = _split(model.shared_ff, tp, "the shared expert width", model)
    return dataclasses.replace(model, **changes)


def held_weights_bytes(shard: ModelSpec, plan: Plan) -> float:
    """Weight bytes one device of a pipeline-less stage holds: the shard's, of whose routed experts
    expert parallelism keeps ``1 / ep`` (the shard counts every expert, as its trace's routing needs
    them all to choose the device's)."""
    if not shard.is_moe or plan.ep == 1:
        return shard.weights_bytes
    mlp = (3 if shard.gated_mlp else 2) * shard.d_model
    routed = shard.moe_layers * shard.n_experts * mlp * shard.expert_ff * get_dtype(shard.weight_dtype).bytes
    return shard.weights_bytes - routed * (1.0 - 1.0 / plan.ep)


def stage_footprints(shard: ModelSpec, plan: Plan, batch: int, kv_len: int) -> list[tuple[float, float, float]]:
    """(weight, KV-cache, SSM-state) bytes one device of each pipeline stage holds: its layers' own
    (an attention layer's KV cache, an SSM layer's state, a MoE layer's E/ep experts), the token
    embedding (and learned positions) on the first stage and the head, or a tied embedding's copy,
    on the last; one stage holds everything."""
    wb, kb = get_dtype(shard.weight_dtype).bytes, get_dtype(shard.kv_dtype).bytes
    held = held_weights_bytes(shard, plan)
    emb = shard.embedding_params * get_dtype(shard.embedding_dtype).bytes
    tokens = shard.kv_tokens(kv_len)
    if plan.pp == 1:
        return [(held, shard.kv_cache_bytes(batch, kv_len), shard.ssm_state_bytes(batch))]
    mlp = (3 if shard.gated_mlp else 2) * shard.d_model
    routed = shard.n_experts * mlp * shard.expert_ff * (1.0 - 1.0 / plan.ep) if shard.is_moe else 0.0
    hyena = shard.hyena_order * shard.ssm_inner if shard.ssm_kind == "hyena" else 0
    layers = []
    for mixer, ffn in shard.layer_kinds():
        w = (shard.kind_params(mixer, ffn) - (routed if ffn == "moe" else 0.0)) * wb
        per_token = shard.kv_elements_per_token if mixer == "attn" else hyena
        state = batch * shard.ssm_state_elements * kb if mixer == "ssm" else 0.0
        layers.append((w, per_token * kb * batch * tokens, state))
    edges = np.cumsum([0, *stage_layers(shard, plan)])
    out = [tuple(float(sum(x[i] for x in layers[edges[s]:edges[s + 1]])) for i in range(3)) for s in range(plan.pp)]
    table = shard.vocab_size * shard.d_model * get_dtype(shard.embedding_dtype).bytes
    rest = held - emb - sum(x[0] for x in layers)  # final norm
    out[0] = (out[0][0] + emb - (0.0 if shard.tied_embeddings else table), out[0][1], out[0][2])
    out[-1] = (out[-1][0] + table + rest, out[-1][1], out[-1][2])
    return out  # type: ignore[return-value]


def local_phase(phase: Phase, plan: Plan) -> Phase:
    """The step one data-parallel replica runs."""
    if phase.batch % plan.dp:
        raise SpecError(f"batch {phase.batch} does not divide over --dp {plan.dp}; use a multiple")
    return dataclasses.replace(phase, batch=phase.batch // plan.dp)


def _collective(name: str, kind: str, rows: int, d: int, dtype: str, ranks: int, group: str, **where: int) -> Op:
    return Op(name, "collective", (("m", rows), ("d", d)), (Tensor(f"{name}_in", ("m", "d"), dtype),),
              Tensor(f"{name}_out", ("m", "d"), dtype), 0.0, {"collective": kind, "ranks": ranks, "group": group, **where})


def device_trace(model: ModelSpec, phase: Phase, plan: Plan, routing: str | None = None,
                 mla_form: str | None = None, ep_rank: int = -1) -> Trace:
    """The trace of one tensor-parallel rank through every layer, with its collectives (ops of kind
    ``collective``); pipeline stages take their share of its layer blocks (:mod:`xpusim.sim.events`).
    With expert parallelism its experts are the most loaded device's, or device ``ep_rank``'s."""
    shard = shard_model(model, plan)
    lp = local_phase(phase, plan)
    r = parse_routing(routing)
    m_local = lp.batch * lp.q_len
    if model.is_moe and plan.ep > 1:
        r = dataclasses.replace(r, ep_ranks=plan.ep, ep_tokens=m_local * plan.dp, ep_rank=ep_rank)
    trace = build_trace(shard, lp, r, mla_form)
    d, adt = model.d_model, model.act_dtype
    blocks = []
    for b in trace.blocks:
        ops: list[Op] = []
        for op in b.ops:
            ops.append(op)
            rows = op.sizes.get("m", m_local)
            if plan.tp > 1 and op.output.name in ROW_PARALLEL_OUTPUTS and op.kind != "collective":
                if plan.sp:
                    ops.append(_collective(f"{op.name}.rs", "reduce_scatter", rows, d, adt, plan.tp, "tp"))
                    ops.append(_collective(f"{op.name}.ag", "all_gather", rows, d, adt, plan.tp, "tp"))
                else:
                    ops.append(_collective(f"{op.name}.ar", "all_reduce", rows, d, adt, plan.tp, "tp"))
            if plan.ep > 1 and op.kind in ("gather", "combine") and op.attrs is not None:
                k = model.experts_per_token
                share = max(1, rows * k // plan.tp)  # each TP rank sends its share of the replicated tokens
                name = "dispatch.a2a" if op.kind == "gather" else "combine.a2a"
                a2a = _collective(name, "all_to_all", share, d, adt, plan.ep, "ep")
                if op.kind == "gather":
                    ops.append(a2a)
                else:
                    ops.insert(len(ops) - 1, a2a)
        if b.name == "head" and plan.tp > 1:  # vocabulary-parallel logits gathered for sampling
            last = b.ops[-1]
            ops.append(_collective("logits.ag", "all_gather", last.sizes["m"], last.sizes["n"] * plan.tp, adt,
                                   plan.tp, "tp"))
        blocks.append(Block(b.name, ops, b.repeat))
    if plan.pp > 1:  # activations leave a stage for the next: each of its tp x dp ranks (stage s on devices
        # s g .. (s + 1) g - 1) sends one way to the rank g devices on, across a node when they are in different ones
        g = plan.tp * plan.dp
        sends = [_collective(f"stage.send{s}", "send", m_local, d, adt, g, "pp", stride=g, first=s * g)
                 for s in range(plan.pp - 1)]
        blocks.insert(len(blocks) - 1, Block("stage_send", sends, 1))
    meta = {**trace.meta, "plan": plan.describe(), "devices": plan.devices}
    return Trace(trace.name, trace.phase, blocks, tokens=phase.tokens, meta=meta)


def stage_layers(model: ModelSpec, plan: Plan) -> list[int]:
    """Layers per pipeline stage (the first stages take the remainder)."""
    base, extra = divmod(model.n_layers, plan.pp)
    return [base + (1 if s < extra else 0) for s in range(plan.pp)]


def is_generation_phase(phase: Phase) -> bool:
    return isinstance(phase, Decode | Prefill | Verify)
