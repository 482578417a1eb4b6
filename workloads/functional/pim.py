"""Functional reference of the PIM mapping: a batched GEMV executed the way ``mappers/pim.py``
partitions it, and the counts that layout implies.

``w`` (G, N, K) is laid out over channels x PUs: channels split groups, rows and the reduction
(``split``), each channel's rows are divided between its PUs, and each row's K elements are cut
into input-buffer chunks (``k_chunk``) and packed into column bursts of ``column_bytes``. Every PU
multiplies the bursts of its rows by the broadcast input chunk, lane by lane (``lanes`` partial sums
per output without an adder tree, one with it), and accumulates over the chunks unless its rows
do not fit its accumulators in ``chunk`` order, where the partial sums are read out after every
chunk. Outside the PUs the partial sums (lanes, spilled chunks, K splits) are added into ``y``.

The arrays are padded to the partition and reshaped so that every axis is one level of it
(channel split, PU, row, chunk, lane): the whole execution is a few ``einsum`` and ``sum`` calls,
with no Python loop over banks, rows or commands. Counts come from a mask of the real (unpadded)
elements in the same layout, for the most loaded channel and PU.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np


def _blocks(n: int, parts: int, inner: int) -> tuple[int, int]:
    """(elements per part, padded elements per part) of ``n`` split into ``parts`` and each part
    padded to a multiple of ``inner``."""
    per = math.ceil(n / parts)
    return per, math.ceil(per / inner) * inner


def _layout(a: np.ndarray, axis: int, n: int, parts: int, inner: int) -> np.ndarray:
    """Pad axis ``axis`` (length ``n``) to ``parts`` blocks of ``ceil(n / parts)``, each padded to a
    multiple of ``inner``; returns the array with that axis replaced by (parts, padded block)."""
    per, padded = _blocks(n, parts, inner)
    a = np.moveaxis(a, axis, 0)
    full = np.zeros((parts * per, *a.shape[1:]), dtype=a.dtype)
    full[:n] = a
    full = full.reshape(parts, per, *a.shape[1:])
    out = np.zeros((parts, padded, *a.shape[1:]), dtype=a.dtype)
    out[:, :per] = full
    return np.moveaxis(out, (0, 1), (axis, axis + 1))


def pim_gemv(w: np.ndarray, x: np.ndarray, plan: dict[str, Any], w_bytes: float, x_bytes: float, acc_bytes: float,
             lanes: int, adder_tree: bool) -> tuple[np.ndarray, dict[str, float]]:
    """``y[g, m, n] = sum_k w[g, n, k] x[g, m, k]`` computed as ``plan`` maps it (``plan`` as in
    ``OpCost.mapping`` of a PIM op), and the per-vector counts of the most loaded channel / PU:
    ``bursts_per_pu``, ``rows_per_pu``, ``act_groups`` (lock-step activations of a PU's banks),
    ``input_bytes`` and ``output_bytes`` per channel for one vector."""
    G, N, K = w.shape
    M = x.shape[1]
    pg, pn, pk = plan["split"]["groups"], plan["split"]["rows"], plan["split"]["k"]
    U, b, C, cb = plan["pus_per_channel"], plan["banks_per_pu"], plan["row_columns"], plan["column_bytes"]
    kc, rb = plan["k_chunk"], plan["row_block"]
    k_c, k_pad = _blocks(K, pk, kc)
    chunks = k_pad // kc
    n_c, n_pad = _blocks(N, pn, U)
    n_u = n_pad // U
    L = 1 if adder_tree else lanes

    # layout: groups (pg, g_c), rows (pn, U, n_u), k (pk, chunks, kc)
    mask = np.ones_like(w, dtype=bool)
    wl = [_layout(_layout(_layout(a, 0, G, pg, 1), 2, N, pn, U), 4, K, pk, kc) for a in (w, mask)]
    g_c = wl[0].shape[1]
    W = wl[0].reshape(pg, g_c, pn, U, n_u, pk, chunks, kc)
    real = wl[1].reshape(W.shape)
    X = _layout(_layout(x, 0, G, pg, 1), 3, K, pk, kc).reshape(pg, g_c, M, pk, chunks, kc)
    lane = np.zeros((kc, L))
    lane[np.arange(kc), np.arange(kc) % L] = 1.0  # SIMD lane of each element of a chunk

    # per PU: partial sums of each of its rows, per chunk, vector and lane
    part = np.einsum("agcuiktj,agmktj,jl->agcuiktml", W, X, lane)
    blocks = math.ceil(n_u / rb)
    spill = plan["order"] == "chunk" and blocks > 1 and chunks > 1
    out = part if spill else part.sum(axis=6, keepdims=True)  # read out per chunk, or once
    y = out.sum(axis=(5, 6, 8))  # outside the PUs: K splits, spilled chunks, lanes -> (pg, g_c, pn, U, n_u, M)
    y = y.reshape(pg * g_c, pn, U * n_u, M)[:, :, :n_c].reshape(pg * g_c, pn * n_c, M)[:G, :N]

    # counts from the real elements of the layout (most loaded channel / PU)
    n_real = real.sum(axis=7)  # real elements per (channel split, PU, row, chunk)
    bursts = np.ceil(n_real * w_bytes / cb)  # bursts a row's chunk occupies (packed from byte 0)
    per_group = bursts.sum(axis=(4, 6))  # (pg, g_c, pn, U, pk) bursts a PU streams per group
    rows = np.ceil(per_group / C)
    k_real = real.any(axis=(1, 2, 3, 4)).sum(axis=(2, 3))  # (pg, pk) real k per channel
    g_real = real.any(axis=(2, 3, 4, 5, 6, 7)).sum(axis=1)  # (pg,) real groups per channel
    rows_real = real.any(axis=(0, 1, 5, 6, 7)).sum(axis=(1, 2))  # (pn,) real rows per channel
    rewrite = blocks if (plan["order"] == "row" and chunks > 1) else 1
    inputs = g_real[:, None] * k_real * rewrite * x_bytes
    outputs = g_real[:, None] * rows_real[None, :] * (chunks if spill else 1) * L * acc_bytes
    counts = {
        "bursts_per_pu": float(per_group.sum(axis=1).max()),
        "rows_per_pu": float(rows.sum(axis=1).max()),
        "act_groups": float(np.ceil(rows / b).sum(axis=1).max()),
        "input_bytes": float(inputs.max()),
        "output_bytes": float(outputs.max()),
    }
    return np.moveaxis(y, 2, 1), counts


def _key_of(weight_key: Any, block: str, repeat: int, index: int, name: str) -> str:
    return weight_key(block, repeat, index, name)


def execute_schedule(trace: Any, segments: list[Any], events: list[dict[str, Any]], weights: dict[str, np.ndarray],
                     token_ids: list[np.ndarray], caches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Run a host + PIM schedule functionally: every sub-batch (``stream``) executes ``trace``'s ops
    (the sub-batch's trace) segment by segment, in the order the schedule's ``events`` started them
    (:func:`~xpusim.sim.hetero._interleave`: ``stream``, ``segment``, ``start``), each with its own
    activations and KV cache. Returns each sub-batch's last output (the logits). A schedule that
    started a segment before the one it depends on fails here (its inputs would be missing)."""
    from .reference import _execute_op, weight_key

    ops = {b.name: {op.name: op for op in b.ops} for b in trace.blocks}
    repeats = {b.name: b.repeat for b in trace.blocks}
    envs = [{"token_ids": np.asarray(t).reshape(-1)} for t in token_ids]
    state = [dict(c) for c in caches]
    last: list[Any] = [None] * len(envs)
    for ev in sorted(events, key=lambda e: (e["start"], e["stream"])):
        j = ev["stream"]
        for block, i, names in segments[ev["segment"]].items:
            key = functools.partial(_key_of, weight_key, block, repeats[block], i)
            for name in names:
                last[j] = _execute_op(ops[block][name], envs[j], weights, state[j], key)
    return last
