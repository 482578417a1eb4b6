"""Inference phases: what one simulated step processes."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ShapeError


def _positive(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ShapeError(f"{name} must be a positive integer, got {v!r}")
    return v


@dataclass(frozen=True)
class Prefill:
    """Process ``seq`` prompt tokens of each of ``batch`` sequences (causal attention)."""

    batch: int
    seq: int

    def __post_init__(self) -> None:
        _positive("batch", self.batch)
        _positive("seq", self.seq)

    name = "prefill"

    @property
    def q_len(self) -> int:
        return self.seq

    @property
    def kv_len(self) -> int:
        return self.seq

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@dataclass(frozen=True)
class Decode:
    """Generate one token for each of ``batch`` sequences attending to ``context`` cached tokens
    (the new token's K/V included)."""

    batch: int
    context: int

    def __post_init__(self) -> None:
        _positive("batch", self.batch)
        _positive("context", self.context)

    name = "decode"

    @property
    def q_len(self) -> int:
        return 1

    @property
    def kv_len(self) -> int:
        return self.context

    @property
    def tokens(self) -> int:
        return self.batch


Phase = Prefill | Decode


def make_phase(name: str, batch: int, seq: int | None = None, context: int | None = None) -> Phase:
    """Build a phase from CLI-style arguments."""
    from ..errors import SpecError

    if name == "prefill":
        if seq is None:
            raise SpecError("prefill needs --seq (prompt tokens per sequence)")
        return Prefill(batch, seq)
    if name == "decode":
        if context is None:
            raise SpecError("decode needs --context (tokens attended per sequence)")
        return Decode(batch, context)
    raise SpecError(f"unknown phase {name!r}; use prefill or decode")
