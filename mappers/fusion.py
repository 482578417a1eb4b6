"""Fusion: which consecutive ops of a block run as one kernel on a device.

On a GPU, ``scores -> softmax -> context`` (the attention of a layer) runs as one fused kernel
(FlashAttention-2 in prefill, FlashDecoding in decode) instead of three kernels that write the
score matrix to device memory. Every other op is its own kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch.spec import Arch
from ..workloads.einsum import Op

ATTENTION_DIMS = {"b", "h", "r", "q", "s", "e"}


@dataclass(frozen=True)
class Group:
    """Ops executed as one kernel; ``kind`` is the op kind, or ``attention`` for a fused attention."""

    name: str
    kind: str
    ops: tuple[Op, ...]


def _is_attention(a: Op, b: Op, c: Op) -> bool:
    return (a.kind == "matmul" and b.kind == "softmax" and c.kind == "matmul"
            and set(a.dim_names) >= ATTENTION_DIMS
            and b.inputs[0].name == a.output.name and c.inputs[0].name == b.output.name)


def plan(ops: list[Op], arch: Arch) -> list[Group]:
    """Group a block's ops into kernels for ``arch``."""
    out: list[Group] = []
    i = 0
    while i < len(ops):
        if arch.device_class == "gpu" and i + 2 < len(ops) and _is_attention(ops[i], ops[i + 1], ops[i + 2]):
            out.append(Group(ops[i].name.replace("attn_score", "attention"), "attention", (ops[i], ops[i + 1], ops[i + 2])))
            i += 3
            continue
        out.append(Group(ops[i].name, ops[i].kind, (ops[i],)))
        i += 1
    return out
