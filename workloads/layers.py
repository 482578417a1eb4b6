"""Decoder layers of every kind and their grouping into repeated blocks.

A layer is a mixer (attention, MLA or an SSM) and a feed-forward part (dense MLP, mixture of
experts, or none), each pre-normed with a residual add. Consecutive layers of one kind form a
block with a repeat count (``layer`` x 32). A hybrid whose kinds repeat with a period (Jamba:
8 layers, one of them attention, every other one MoE) becomes one ``period`` block repeated, with
each sub-layer's ops, weights and caches prefixed ``L<j>.``; anything else becomes one block per
run of equal kinds.
"""

from __future__ import annotations

from dataclasses import replace

from .attention import attention_ops
from .einsum import Op, Tensor
from .ffn import mlp_ops, moe_ops
from .mla import mla_ops
from .model import ModelSpec
from .opkit import add, norm
from .phases import Phase
from .routing import Routing
from .ssm import ssm_ops
from .trace import Block

BLOCK_NAMES = {("attn", "mlp"): "layer", ("attn", "moe"): "moe_layer", ("attn", "none"): "attn_layer",
               ("ssm", "none"): "ssm_layer", ("ssm", "mlp"): "ssm_mlp_layer", ("ssm", "moe"): "ssm_moe_layer"}
MAX_RUN_BLOCKS = 4  # more runs than this and a periodic pattern is written as one period block


def layer_ops(model: ModelSpec, phase: Phase, kind: tuple[str, str], routing: Routing,
              form: str) -> tuple[list[Op], dict[str, int | str]]:
    """Ops of one layer of ``kind`` (mixer, feed-forward) reading and writing ``x``."""
    m = phase.batch * phase.q_len
    d, adt = model.d_model, model.act_dtype
    mixer, ffn = kind
    if mixer == "ssm":
        mix, mix_out = ssm_ops(model, phase), "ssm_out"
    else:
        mix, mix_out = (mla_ops(model, phase, m, form) if model.is_mla else attention_ops(model, phase, m)), "attn_out"
    first = "x1" if ffn != "none" else "x"
    ops = [norm("attn_norm", model, m, "x", "xn", "attn_norm"), *mix, add("residual_attn", m, d, "x", mix_out, first, adt)]
    meta: dict[str, int | str] = {}
    if ffn == "none":
        return ops, meta
    ops.append(norm("mlp_norm", model, m, "x1", "xn2", "mlp_norm"))
    if ffn == "moe":
        moe, meta = moe_ops(model, m, routing)
        ops += moe
    else:
        ops += mlp_ops(model, m)
    ops.append(add("residual_mlp", m, d, "x1", "mlp_out", "x", adt))
    return ops, meta


def _prefixed(ops: list[Op], prefix: str) -> list[Op]:
    """Rename ops, and the weights, caches and states they own, apart within a period block."""
    def t(x: Tensor) -> Tensor:
        return replace(x, name=prefix + x.name) if x.role in ("weight", "kv", "state") else x

    out = []
    for op in ops:
        attrs = dict(op.attrs)
        if "state" in attrs:
            attrs["state"] = prefix + attrs["state"]
        if "weights" in attrs:
            attrs["weights"] = tuple(prefix + w for w in attrs["weights"])
        out.append(replace(op, name=prefix + op.name, inputs=tuple(t(x) for x in op.inputs), output=t(op.output),
                           attrs=attrs))
    return out


def period_of(kinds: list[tuple[str, str]]) -> int:
    n = len(kinds)
    return next(p for p in range(1, n + 1) if n % p == 0 and kinds == kinds[:p] * (n // p))


def _runs(kinds: list[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    runs: list[tuple[tuple[str, str], int]] = []
    for k in kinds:
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1] + 1)
        else:
            runs.append((k, 1))
    return runs


def layer_block_map(model: ModelSpec) -> list[tuple[str, float]]:
    """For each layer, the block that holds it and its share of one repetition of that block
    (1, or 1 / period for a period block): how pipeline stages take their layers from a trace."""
    kinds = model.layer_kinds()
    runs = _runs(kinds)
    period = period_of(kinds)
    if len(runs) > MAX_RUN_BLOCKS and period < len(kinds):
        return [("period", 1.0 / period)] * len(kinds)
    out: list[tuple[str, float]] = []
    seen: dict[str, int] = {}
    for k, count in runs:
        base = BLOCK_NAMES[k]
        seen[base] = seen.get(base, 0) + 1
        out += [(base if seen[base] == 1 else f"{base}_{seen[base]}", 1.0)] * count
    return out


def layer_blocks(model: ModelSpec, phase: Phase, routing: Routing, form: str) -> tuple[list[Block], dict[str, int | str]]:
    """The model's layers as blocks with repeat counts, and the MoE routing facts."""
    kinds = model.layer_kinds()
    runs = _runs(kinds)
    meta: dict[str, int | str] = {}
    period = period_of(kinds)
    if len(runs) > MAX_RUN_BLOCKS and period < len(kinds):
        ops: list[Op] = []
        for j, k in enumerate(kinds[:period]):
            sub, sub_meta = layer_ops(model, phase, k, routing, form)
            ops += _prefixed(sub, f"L{j}.")
            meta.update(sub_meta)
        return [Block("period", ops, len(kinds) // period)], meta
    blocks: list[Block] = []
    seen: dict[str, int] = {}
    for k, count in runs:
        base = BLOCK_NAMES[k]
        seen[base] = seen.get(base, 0) + 1
        sub, sub_meta = layer_ops(model, phase, k, routing, form)
        meta.update(sub_meta)
        blocks.append(Block(base if seen[base] == 1 else f"{base}_{seen[base]}", sub, count))
    return blocks, meta
