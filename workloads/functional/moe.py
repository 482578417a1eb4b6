"""Numpy reference of a mixture-of-experts MLP: routing, grouped expert execution, dense check.

Routing follows the published routers: scores are the softmax (Mixtral, Qwen-MoE) or the sigmoid
(DeepSeek-V3) of the router logits; each token takes its ``k`` highest-scoring experts (ties to the
lower expert index); with ``norm_topk_prob`` the k weights are renormalised to sum to one. A
capacity factor ``cf > 0`` lets expert ``e`` keep at most ``ceil(cf * m * k / E)`` tokens, the first
ones in token order (GShard/Switch Transformer), and drops the rest (weight 0, the residual path
carries the token).

:func:`experts_grouped` runs each expert on the tokens routed to it (what an engine does);
:func:`experts_dense` runs every expert on every token and weighs by the dense routing matrix
(what no engine does, but what the routed computation must equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Routed:
    """``index`` (m, k) expert of each token's slot, ``weight`` (m, k) its combine weight (0 when
    dropped), ``kept`` (m, k) whether the slot survived the capacity limit."""

    index: np.ndarray
    weight: np.ndarray
    kept: np.ndarray

    def dense(self, n_experts: int) -> np.ndarray:
        """(m, E) combine weight of every token for every expert."""
        out = np.zeros((self.index.shape[0], n_experts))
        np.add.at(out, (np.arange(self.index.shape[0])[:, None], self.index), self.weight)
        return out


def route(logits: np.ndarray, top_k: int, scoring: str = "softmax", norm_topk_prob: bool = True,
          capacity_factor: float = 0.0, routed_scaling: float = 1.0) -> Routed:
    """Top-``k`` routing of (m, E) router logits; the kept weights are scaled by
    ``routed_scaling`` (DeepSeek-V3's ``routed_scaling_factor``)."""
    m, n_exp = logits.shape
    if scoring == "softmax":
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = z / z.sum(axis=1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    index = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    weight = np.take_along_axis(scores, index, axis=1)
    if norm_topk_prob:
        weight = weight / weight.sum(axis=1, keepdims=True)
    kept = np.ones_like(weight, dtype=bool)
    if capacity_factor > 0:
        cap = math.ceil(capacity_factor * m * top_k / n_exp)
        flat = index.reshape(-1)  # token-major order: earlier tokens claim capacity first
        onehot = flat[:, None] == np.arange(n_exp)[None, :]
        rank = np.cumsum(onehot, axis=0)[np.arange(flat.size), flat] - 1
        kept = (rank < cap).reshape(index.shape)
    return Routed(index, np.where(kept, weight * routed_scaling, 0.0), kept)


def expert_mlp(x: np.ndarray, w: dict[str, np.ndarray], e: int, act: Callable[[np.ndarray], np.ndarray],
               gated: bool) -> np.ndarray:
    """Expert ``e``'s MLP on rows ``x`` (t, d); weights stacked (E, out, in) as ``experts.w_*``."""
    if gated:
        h = act(x @ w["w_gate"][e].T) * (x @ w["w_up"][e].T)
        return h @ w["w_down"][e].T
    return act(x @ w["w_fc1"][e].T) @ w["w_fc2"][e].T


def experts_grouped(x: np.ndarray, routed: Routed, w: dict[str, np.ndarray],
                    act: Callable[[np.ndarray], np.ndarray], gated: bool) -> np.ndarray:
    """Sum over each token's kept slots of weight x expert(x), each expert run once on its tokens."""
    out = np.zeros_like(x)
    n_exp = next(iter(w.values())).shape[0]
    for e in range(n_exp):
        tok, slot = np.nonzero((routed.index == e) & routed.kept)
        if tok.size:
            out[tok] += routed.weight[tok, slot][:, None] * expert_mlp(x[tok], w, e, act, gated)
    return out


def experts_dense(x: np.ndarray, routed: Routed, w: dict[str, np.ndarray],
                  act: Callable[[np.ndarray], np.ndarray], gated: bool) -> np.ndarray:
    """Every expert on every token, weighted by the dense (m, E) routing matrix."""
    n_exp = next(iter(w.values())).shape[0]
    dense = routed.dense(n_exp)
    return sum((dense[:, e:e + 1] * expert_mlp(x, w, e, act, gated) for e in range(n_exp)), np.zeros_like(x))
