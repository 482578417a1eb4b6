"""Functional reference of the dataflow (RDU) execution forms of ``mappers/rdu.py``, with numpy.

* :func:`streaming_attention`: attention in the reordered (online-softmax) form a spatial pipeline
  streams: key/value tiles flow past the queries; each tile updates a running maximum, a running
  sum of exponentials and a rescaled accumulator, so the on-chip intermediates are one tile of
  scores plus the running statistics whatever the sequence length;
* :func:`naive_attention`: the textbook form, which materialises every score of a query row
  before the softmax (intermediates linear in the sequence length);
* :func:`attention_intermediate_bytes`: the bytes each form keeps on chip, the same formula the
  cost model uses;
* :func:`row_tiled`: a fused pipeline's execution of a block, row tile after row tile;
* :func:`token_tiled`: the same along one sequence's tokens, each tile's causal attention reading
  the cache the earlier tiles wrote (the tiles ``mappers/rdu.py`` streams are a block's tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ShapeError


def naive_attention_with_peak(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                              causal_offset: int | None = None) -> tuple[np.ndarray, int]:
    """``softmax(q k^T / sqrt(d)) v`` with every score materialised; ``q``: (rows, d), ``k``, ``v``:
    (n, d); ``causal_offset``: query ``i`` sees keys ``<= causal_offset + i`` (None: all). Returns
    the output and the intermediate elements held at once (every score of the rows, their maximum
    and sum, the output accumulator), counted as :func:`streaming_attention` counts its own."""
    s = q @ k.T / np.sqrt(q.shape[-1])
    if causal_offset is not None:
        mask = np.arange(k.shape[0])[None, :] > (causal_offset + np.arange(q.shape[0]))[:, None]
        s = np.where(mask, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)  # replaces the scores (same storage)
    total = p.sum(axis=-1, keepdims=True)
    out = (p / total) @ v
    return out, s.size + m.size + total.size + out.size


def naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal_offset: int | None = None) -> np.ndarray:
    """The output of :func:`naive_attention_with_peak` (the reference)."""
    return naive_attention_with_peak(q, k, v, causal_offset)[0]


def streaming_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_tile: int,
                        causal_offset: int | None = None) -> tuple[np.ndarray, int]:
    """The reordered form: key/value tiles of ``kv_tile`` rows stream past the queries (a loop over
    tiles, every query at once). Returns the output and the largest number of intermediate elements
    held at once (one tile of scores, the running max and sum, the accumulator)."""
    if kv_tile < 1 or q.ndim != 2 or k.ndim != 2 or v.ndim != 2 or k.shape[0] != v.shape[0] or k.shape[1] != q.shape[1]:
        raise ShapeError(f"streaming_attention needs kv_tile >= 1 and q (rows, d), k and v (n, d); got {kv_tile}, "
                         f"{q.shape}, {k.shape}, {v.shape}")
    rows, d = q.shape
    m = np.full((rows, 1), -np.inf)
    s_sum = np.zeros((rows, 1))
    acc = np.zeros((rows, v.shape[1]))
    peak = 0
    for start in range(0, k.shape[0], kv_tile):
        kt, vt = k[start:start + kv_tile], v[start:start + kv_tile]
        s = q @ kt.T / np.sqrt(d)
        if causal_offset is not None:
            keys = start + np.arange(kt.shape[0])
            s = np.where(keys[None, :] > (causal_offset + np.arange(rows))[:, None], -np.inf, s)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        scale = np.where(np.isfinite(m), np.exp(m - m_new), 0.0)
        p = np.where(np.isfinite(s), np.exp(s - m_new), 0.0)
        s_sum = s_sum * scale + p.sum(axis=-1, keepdims=True)
        acc = acc * scale + p @ vt
        m = m_new
        peak = max(peak, s.size + m.size + s_sum.size + acc.size)
    return acc / s_sum, peak


def attention_intermediate_bytes(form: str, rows: int, kv_len: int, head_dim: int, kv_tile: int,
                                 score_bytes: float = 4.0) -> float:
    """On-chip intermediates of one head's attention for ``rows`` queries over ``kv_len`` keys:
    ``naive`` keeps every score of its rows (``rows x kv_len``); ``streaming`` one tile of scores,
    the running max and sum and the accumulator (``rows x (min(kv_tile, kv_len) + 2 + head_dim)``)."""
    if form == "naive":
        return float(rows * kv_len * score_bytes)
    if form == "streaming":
        return float(rows * (min(kv_tile, kv_len) + 2 + head_dim) * score_bytes)
    raise ShapeError(f"attention form {form!r}: use naive or streaming")


def row_tiled(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int) -> np.ndarray:
    """A fused pipeline's execution of a row-wise block ``fn``: ``tile`` rows at a time through every
    stage, the tiles' outputs in order."""
    if tile < 1:
        raise ShapeError(f"row tile must be >= 1, got {tile}")
    return np.concatenate([fn(x[i:i + tile]) for i in range(0, x.shape[0], tile)], axis=0)


def token_tiled(fn: Callable[[np.ndarray, int, Any], tuple[np.ndarray, Any]], tokens: np.ndarray, tile: int,
                state: Any = None) -> np.ndarray:
    """A fused pipeline streaming a sequence's ``tokens`` (batch, length) through every stage
    ``tile`` tokens at a time, in order: ``fn(tile_tokens, start, state) -> (output, state)`` runs
    one tile after the ``start`` tokens before it, ``state`` carrying what the earlier tiles left
    (their KV cache). Returns the last tile's output."""
    if tile < 1:
        raise ShapeError(f"token tile must be >= 1, got {tile}")
    out = None
    for start in range(0, tokens.shape[1], tile):
        out, state = fn(tokens[:, start:start + tile], start, state)
    return np.asarray(out)
