"""A trace: the ordered DAG of operators of one step of a phase, as blocks with repeat counts.

A decoder layer repeated N times is one :class:`Block` with ``repeat=N``, never N copies. Edges are
implied by tensor names: an op consumes the tensor of that name produced by an earlier op of the same
block (or of an earlier block); a name produced nowhere is an external input (weights, KV cache,
token ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from .einsum import Op


@dataclass
class Block:
    """Operators executed in order, the whole block ``repeat`` times."""

    name: str
    ops: list[Op]
    repeat: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.repeat, int) or self.repeat <= 0:
            raise SpecError(f"block {self.name!r}: repeat must be a positive integer, got {self.repeat!r}")


@dataclass
class Trace:
    """One step of a phase (prefill, decode, ...) of a model.

    ``tokens``: tokens this step produces or consumes (prefill: batch x seq; decode: batch), used for
    tokens/s. ``meta`` records what produced the trace (model, phase parameters).
    """

    name: str
    phase: str
    blocks: list[Block]
    tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check unique op names per block and that every consumed view matches its producer's size."""
        produced: dict[str, int] = {}
        for b in self.blocks:
            seen: set[str] = set()
            for op in b.ops:
                if op.name in seen:
                    raise SpecError(f"block {b.name!r}: op name {op.name!r} repeats")
                seen.add(op.name)
                for t in op.inputs:
                    n = op.elements(t)
                    if t.name in produced and produced[t.name] != n and t.role != "kv" and op.kind != "take_last":
                        raise SpecError(
                            f"op {op.name!r} reads {t.name!r} as {n} elements but it was produced with "
                            f"{produced[t.name]}; a view must keep the element count"
                        )
                produced[op.output.name] = op.elements(op.output)

    def ops(self) -> Iterator[tuple[Block, Op]]:
        """Every op with its block, in execution order (each block once)."""
        for b in self.blocks:
            for op in b.ops:
                yield b, op

    @property
    def flops(self) -> float:
        return sum(op.flops * b.repeat for b, op in self.ops())

    @property
    def n_ops(self) -> int:
        return sum(len(b.ops) * b.repeat for b in self.blocks)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "tokens": self.tokens,
            "meta": self.meta,
            "blocks": [{"name": b.name, "repeat": b.repeat, "ops": [o.to_dict() for o in b.ops]} for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        if not isinstance(d, dict) or "blocks" not in d:
            raise SpecError("a trace must be a mapping with 'name', 'phase', 'tokens' and 'blocks'")
        try:
            blocks = [
                Block(str(b["name"]), [Op.from_dict(o) for o in b["ops"]], b.get("repeat", 1)) for b in d["blocks"]
            ]
            tokens = d.get("tokens", 1)
            if not isinstance(tokens, int) or tokens <= 0:
                raise SpecError(f"trace 'tokens' must be a positive integer, got {tokens!r}")
            return cls(str(d.get("name", "trace")), str(d.get("phase", "custom")), blocks, tokens, dict(d.get("meta") or {}))
        except (KeyError, TypeError) as e:
            raise SpecError(f"malformed trace: missing or bad field {e}") from None

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Trace:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SpecError(f"trace JSON is malformed: {e}") from None
