"""Tokens per expert of a mixture-of-experts layer, from a routing distribution.

The simulator sizes expert GEMMs by how many tokens each expert receives in one step. A step with
``m`` tokens and top-``k`` routing makes ``m * k`` assignments, and no expert receives a token
twice, so every count lies in ``0..m``. The distributions:

* ``balanced`` — every expert equally likely (an ideally load-balanced router);
* ``zipf:S`` — expert ``i`` (1-based, hottest first) has weight ``i ** -S`` (skewed routers);
* a file — per-expert weights measured elsewhere (JSON list, or one number per line), any scale.

Counts are the deterministic largest-remainder apportionment of the ``m * k`` assignments to the
weights, capped at ``m`` per expert with the excess passed on to the others (water filling), so
the same inputs always give the same GEMMs. With a capacity factor ``cf > 0`` an expert takes at
most ``ceil(cf * m * k / E)`` tokens and the rest are dropped (counted, not re-routed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..files import read_text


@dataclass(frozen=True)
class Routing:
    """A routing distribution: ``kind`` balanced, zipf or file; ``skew`` the Zipf exponent;
    ``weights`` per-expert weights from a file; with expert parallelism, ``ep_ranks`` devices hold
    ``E / ep_ranks`` experts each and receive the assignments of ``ep_tokens`` tokens; a trace is
    device ``ep_rank``'s (-1: the most loaded one, which sets a step's time)."""

    kind: str = "balanced"
    skew: float = 0.0
    weights: tuple[float, ...] = ()
    ep_ranks: int = 1  # expert parallelism: experts split evenly over this many devices
    ep_tokens: int = 0  # tokens routed across those devices in one step (0: the step's own)
    ep_rank: int = -1  # the device whose experts a trace runs (-1: the most loaded)

    def describe(self) -> str:
        return {"balanced": "balanced", "zipf": f"zipf:{self.skew:g}"}.get(self.kind, f"file ({len(self.weights)} experts)")

    def expert_weights(self, n_experts: int) -> np.ndarray:
        """(E,) relative probability of each expert."""
        if self.kind == "balanced":
            return np.ones(n_experts)
        if self.kind == "zipf":
            return np.arange(1, n_experts + 1, dtype=float) ** -self.skew
        if len(self.weights) != n_experts:
            raise SpecError(f"routing file gives {len(self.weights)} expert weights; the model has {n_experts} experts")
        return np.asarray(self.weights, dtype=float)


def parse_routing(spec: str | Routing | None) -> Routing:
    """``balanced``, ``zipf:S`` (S >= 0) or the path of a per-expert weights file."""
    if spec is None:
        return Routing()
    if isinstance(spec, Routing):
        return spec
    if spec == "balanced":
        return Routing()
    if spec.startswith("zipf"):
        try:
            s = float(spec.split(":", 1)[1]) if ":" in spec else 1.0
        except ValueError:
            raise SpecError(f"routing {spec!r}: write zipf:S with a number S >= 0, e.g. zipf:1.2") from None
        if not (math.isfinite(s) and s >= 0):
            raise SpecError(f"routing {spec!r}: the Zipf exponent must be a finite number >= 0")
        return Routing("zipf", s)
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"routing {spec!r}: use balanced, zipf:S or the path of a per-expert weights file")
    text = read_text(path, "a routing file (a JSON list or one number per line)")
    try:
        vals = json.loads(text) if text.lstrip().startswith("[") else [float(x) for x in text.split()]
        w = tuple(float(x) for x in vals)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise SpecError(f"routing file {spec}: expected a JSON list or one number per line") from None
    if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise SpecError(f"routing file {spec}: weights must be finite, >= 0 and not all zero")
    return Routing("file", 0.0, w)


def _apportion(total: int, weights: np.ndarray, cap: int) -> np.ndarray:
    """Integers summing to ``total`` (<= cap * len) proportional to ``weights``, each <= cap."""
    counts = np.zeros(weights.size, dtype=np.int64)
    free = weights > 0
    left = total
    while left > 0:
        w = np.where(free, weights, 0.0)
        if w.sum() <= 0:
            raise SpecError("routing: the experts with non-zero weight cannot take every assignment "
                            "(each expert takes a token at most once); give more experts weight")
        share = w / w.sum() * left
        base = np.floor(share).astype(np.int64)
        rem = left - int(base.sum())
        order = np.lexsort((np.arange(w.size), -(share - base)))  # largest remainder, then lowest index
        base[order[:rem]] += 1
        room = cap - counts
        take = np.minimum(base, room)
        counts += take
        left -= int(take.sum())
        free &= counts < cap
    return counts


def expert_counts(routing: Routing, tokens: int, n_experts: int, top_k: int,
                  capacity_factor: float = 0.0) -> tuple[np.ndarray, int]:
    """(tokens per expert (E,), dropped assignments) for one step of ``tokens`` tokens."""
    counts = _apportion(tokens * top_k, routing.expert_weights(n_experts), tokens)
    dropped = 0
    if capacity_factor > 0:
        cap = math.ceil(capacity_factor * tokens * top_k / n_experts)
        dropped = int(np.maximum(counts - cap, 0).sum())
        counts = np.minimum(counts, cap)
    return counts, dropped


def count_groups(counts: np.ndarray) -> list[tuple[int, int]]:
    """(tokens per expert, number of experts) for each distinct non-zero count, largest first:
    experts with equal counts run as one batched GEMM."""
    vals, n = np.unique(counts[counts > 0], return_counts=True)
    return [(int(v), int(c)) for v, c in sorted(zip(vals, n, strict=True), reverse=True)]


def local_counts(routing: Routing, tokens: int, n_experts: int, top_k: int,
                 capacity_factor: float = 0.0) -> tuple[np.ndarray, int]:
    """Tokens per expert on one device: all experts without expert parallelism; with it, the
    experts of the most loaded of the ``ep_ranks`` devices (or of device ``ep_rank``), counted over the ``ep_tokens`` tokens
    routed across them. The experts are dealt to the devices round-robin from the hottest (expert
    ``i`` on device ``i mod ep_ranks``), as a load-balancing placement spreads the popular ones;
    contiguous slices would put a balanced step's few active experts all on one device."""
    if routing.ep_ranks <= 1:
        return expert_counts(routing, tokens, n_experts, top_k, capacity_factor)
    if n_experts % routing.ep_ranks:
        raise SpecError(f"expert parallelism over {routing.ep_ranks} devices needs the {n_experts} experts to divide "
                        "evenly; choose an ep that divides the expert count")
    counts, dropped = expert_counts(routing, routing.ep_tokens or tokens, n_experts, top_k, capacity_factor)
    slices = counts.reshape(-1, routing.ep_ranks).T  # row r: experts r, r + ep, r + 2 ep, ...
    row = int(np.argmax(slices.sum(axis=1))) if routing.ep_rank < 0 else routing.ep_rank % routing.ep_ranks
    return slices[row], dropped
