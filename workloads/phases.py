"""Inference phases: what one simulated step processes.

* :class:`Prefill` — ``seq`` new prompt tokens per sequence after ``prefix`` tokens already cached
  (``prefix`` > 0 is one chunk of a chunked prefill, or a prompt extending a shared prefix);
* :class:`Decode` — one new token per sequence attending to ``context`` tokens;
* :class:`Verify` — speculative decoding's verification: ``draft`` drafted tokens (a chain, or the
  nodes of a token tree) plus the last accepted token, scored in one forward pass with logits at
  every position.

A chunked prefill of a prompt is the sequence :func:`chunk_steps` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ShapeError, SpecError


def _positive(name: str, v: object, zero_ok: bool = False) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and not zero_ok):
        raise ShapeError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} integer, got {v!r}")
    return v


@dataclass(frozen=True)
class Prefill:
    """Process ``seq`` prompt tokens of each of ``batch`` sequences (causal attention) after
    ``prefix`` tokens already in the cache."""

    batch: int
    seq: int
    prefix: int = 0

    def __post_init__(self) -> None:
        _positive("batch", self.batch)
        _positive("seq", self.seq)
        _positive("prefix", self.prefix, zero_ok=True)

    name = "prefill"
    logits_all = False

    @property
    def q_len(self) -> int:
        return self.seq

    @property
    def kv_len(self) -> int:
        return self.prefix + self.seq

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@dataclass(frozen=True)
class Decode:
    """Generate one token for each of ``batch`` sequences attending to ``context`` cached tokens
    (the new token's K/V included); ``source``: encoded tokens an encoder-decoder model's
    cross-attention reads; ``shared_prefix``: leading context tokens every sequence shares, cached
    once and attended as one GEMM across the batch (Hydragen, Juravsky et al., arXiv:2402.05099)."""

    batch: int
    context: int
    source: int = 0
    shared_prefix: int = 0

    def __post_init__(self) -> None:
        _positive("batch", self.batch)
        _positive("context", self.context)
        _positive("source", self.source, zero_ok=True)
        _positive("shared_prefix", self.shared_prefix, zero_ok=True)
        if self.shared_prefix >= self.context:
            raise SpecError(f"shared_prefix ({self.shared_prefix}) must be shorter than the context ({self.context}): "
                            "each sequence needs its own new token")

    name = "decode"
    logits_all = False

    @property
    def q_len(self) -> int:
        return 1

    @property
    def kv_len(self) -> int:
        return self.context

    @property
    def tokens(self) -> int:
        return self.batch


@dataclass(frozen=True)
class Verify:
    """Score ``draft`` drafted tokens plus the last accepted one for each of ``batch`` sequences
    whose cache holds ``context`` tokens before them. ``parents`` makes the drafts a token tree:
    ``parents[i]`` is the index of node ``i + 1``'s parent (0 = the last accepted token), nodes in
    topological order; empty means a chain (node ``i``'s parent is ``i - 1``)."""

    batch: int
    context: int
    draft: int
    parents: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        _positive("batch", self.batch)
        _positive("context", self.context)
        _positive("draft", self.draft)
        if self.parents:
            if len(self.parents) != self.draft:
                raise SpecError(f"a token tree of {self.draft} drafted tokens needs {self.draft} parents, "
                                f"got {len(self.parents)}")
            for i, p in enumerate(self.parents, start=1):
                if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < i:
                    raise SpecError(f"token tree: node {i}'s parent must be an earlier node 0..{i - 1}, got {p!r}")

    name = "verify"
    logits_all = True

    @property
    def q_len(self) -> int:
        return self.draft + 1

    @property
    def kv_len(self) -> int:
        return self.context + self.draft + 1

    @property
    def tokens(self) -> int:
        return self.batch

    @property
    def tree_parents(self) -> tuple[int, ...]:
        """Parent of every node after the root (chain when no tree was given)."""
        return self.parents or tuple(range(self.draft))


Phase = Prefill | Decode | Verify


def is_causal(phase: Phase) -> bool:
    """Whether the step's new tokens attend to each other under a causal (or tree) mask."""
    return not isinstance(phase, Decode)


def position_attrs(phase: Phase) -> dict[str, object]:
    """Op attributes that place the step's new tokens: ``offset`` of the first one and, for a
    token tree, ``tree`` (parents) — node i then sits at ``offset + depth(i)`` and attends to the
    cache and its ancestors only."""
    attrs: dict[str, object] = {"offset": phase.kv_len - phase.q_len}
    if isinstance(phase, Verify) and phase.parents:
        attrs["tree"] = phase.parents
    return attrs


def chunk_steps(batch: int, seq: int, chunk: int) -> list[Prefill]:
    """The steps of a prefill of ``seq`` tokens processed ``chunk`` tokens at a time."""
    _positive("seq", seq)
    _positive("chunk", chunk)
    return [Prefill(batch, min(chunk, seq - start), start) for start in range(0, seq, chunk)]


def make_phase(name: str, batch: int, seq: int | None = None, context: int | None = None) -> Phase:
    """Build a phase from CLI-style arguments (decode takes ``seq`` as an encoder-decoder model's
    source length)."""
    if name == "prefill":
        if seq is None:
            raise SpecError("prefill needs --seq (prompt tokens per sequence)")
        if context is not None:
            raise SpecError("--context is a decode's attended tokens; a prefill takes --seq only (for a prompt after "
                            "cached tokens use --chunk, or decode with --context)")
        return Prefill(batch, seq)
    if name == "decode":
        if context is None:
            raise SpecError("decode needs --context (tokens attended per sequence)")
        return Decode(batch, context, seq or 0)
    raise SpecError(f"unknown phase {name!r}; use prefill or decode")
