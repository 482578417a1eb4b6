"""Functional reference of the FPGA template's matrix engine (``mappers/fpga.py``), with numpy.

* :func:`packed_chain_dot`: a DSP chain computing two INT8 dot products at once, as FlightLLM and
  AMD's WP486 pack them: each DSP48E2 multiplies one weight ``w`` by the packed operand
  ``a_hi * 2**18 + a_lo`` (two activations sharing the weight) and the chain adds the products in its
  48-bit cascade; the low 18 bits hold the ``a_lo`` sum and the rest the ``a_hi`` sum. With
  symmetric INT8 activations (-127..127, the usual quantisation range) and INT8 weights, 8 products
  stay inside the signed 18-bit low field (8 x 127 x 128 < 2**17); longer chains are split into
  groups of at most ``group`` DSPs whose partial sums are separated (FlightLLM's overflow adjust
  unit, which it skips for chains of at most 8 DSPs) and added.
* :func:`engine_matmul`: a whole INT8-activation x INT8/INT4-weight product run tile by tile as
  the template does (packed row pairs, VPU column tiles, chain steps along K, integer partial sums
  scaled per weight group into fp32).
* :func:`nm_prune` / :func:`sparse_chain_dot`: N:M structured sparsity: of every ``m`` consecutive
  weights along K only ``n`` are kept, stored with their indices; the chain's sparse mux picks the
  matching activations, so it computes ``n`` MACs per group instead of ``m``.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError

LOW_BITS = 18  # the low field of a packed DSP48E2 operand (27-bit A:D port)


def _split(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two signed sums packed in ``hi * 2**18 + lo`` (|lo| < 2**17)."""
    low = packed & ((1 << LOW_BITS) - 1)
    low = np.where(low >= 1 << (LOW_BITS - 1), low - (1 << LOW_BITS), low)
    return (packed - low) >> LOW_BITS, low


def packed_chain_dot(a_hi: np.ndarray, a_lo: np.ndarray, w: np.ndarray, group: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(a_hi . w, a_lo . w)`` along the last axis of INT8 arrays, computed as the packed DSP chain
    does (see the module docstring); exact for INT8 inputs."""
    if not (a_hi.shape == a_lo.shape == w.shape) or group < 1 or group > 8:
        raise ShapeError(f"packed_chain_dot needs equal shapes and 1 <= group <= 8, got {a_hi.shape}, {a_lo.shape}, "
                         f"{w.shape}, group {group}")
    for x, low in ((a_hi, -127), (a_lo, -127), (w, -128)):
        if x.min(initial=0) < low or x.max(initial=0) > 127:
            raise ShapeError("packed_chain_dot takes symmetric INT8 activations (-127..127) and INT8 weights (-128..127)")
    packed = a_hi.astype(np.int64) * (1 << LOW_BITS) + a_lo.astype(np.int64)
    prod = packed * w.astype(np.int64)  # one DSP48E2 multiply each (27 x 18 bits)
    k = prod.shape[-1]
    hi = np.zeros(prod.shape[:-1], dtype=np.int64)
    lo = np.zeros(prod.shape[:-1], dtype=np.int64)
    for start in range(0, k, group):  # cascade groups; the overflow adjust unit separates each group's sum
        h, l_ = _split(prod[..., start:start + group].sum(axis=-1))
        hi += h
        lo += l_
    return hi, lo


def nm_prune(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``n`` largest-magnitude weights of every ``m`` along the last axis (ties: lower index).
    Returns the kept values and their indices within each group, shapes (..., K/m, n)."""
    if m < 1 or not 0 <= n <= m or w.shape[-1] % m:
        raise ShapeError(f"N:M pruning needs 0 <= n <= m and K divisible by m; got n={n}, m={m}, K={w.shape[-1]}")
    g = w.reshape(*w.shape[:-1], w.shape[-1] // m, m)
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")[..., :n]
    idx = np.sort(order, axis=-1)
    return np.take_along_axis(g, idx, axis=-1), idx


def sparse_chain_dot(a: np.ndarray, values: np.ndarray, idx: np.ndarray, m: int) -> np.ndarray:
    """The sparse chain: for each group of ``m`` activations, the mux selects the ``n`` at the kept
    weights' indices; ``n`` MACs per group. ``a``: (..., K); ``values``, ``idx``: (K/m, n)."""
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    picked = np.take_along_axis(groups, np.broadcast_to(idx, groups.shape[:-1] + idx.shape[-1:]), axis=-1)
    return (picked * values).sum(axis=(-1, -2))


def dense_of(values: np.ndarray, idx: np.ndarray, m: int) -> np.ndarray:
    """The pruned weights as a dense row (zeros where pruned)."""
    out = np.zeros(values.shape[:-1] + (m,), dtype=values.dtype)
    np.put_along_axis(out, idx, values, axis=-1)
    return out.reshape(*values.shape[:-2], -1)


def _symmetric_codes(x: np.ndarray, levels: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and scales of ``x`` (rows along the last axis) in symmetric ``levels`` quantisation
    with one scale per ``group`` consecutive elements (the row's length for per-row scales)."""
    rows, k = x.shape
    g = x.reshape(rows, k // group, group)
    scale = np.abs(g).max(axis=-1) / levels
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(g / safe[..., None]), -levels, levels).astype(np.int64)
    return codes.reshape(rows, k), scale


def engine_matmul(x: np.ndarray, w: np.ndarray, weights: str = "int8", chain: int = 16, vpus: int = 8,
                  group: int = 128) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``x @ w.T`` as the FPGA template's matrix engine runs it, tile by tile.

    Activations ``x`` (M x K) are INT8 with one scale per row; weights ``w`` (N x K) are ``int8``
    (one scale per output row) or ``int4`` (one scale per ``group`` of K, levels -7..7). The engine
    packs two activation rows per DSP (:func:`packed_chain_dot`, cascades of at most 8 DSPs), gives
    each of ``vpus`` chains one output column at a time, and walks K in ``chain``-long steps; integer
    partial sums accumulate per weight-scale group and are scaled into fp32 at the group's end.

    Returns (the engine's fp32 result, the integer per-group accumulators it formed, the codes and
    scales), so a caller can check the tiled integer arithmetic exactly and the result against the
    float product within the formats' rounding."""
    m, k = x.shape
    n, kw = w.shape
    if kw != k or m < 1 or n < 1 or weights not in ("int8", "int4") or chain < 1 or vpus < 1:
        raise ShapeError(f"engine_matmul needs x (M x K) and w (N x K) with the same K, weights int8 or int4, "
                         f"chain and vpus >= 1; got {x.shape}, {w.shape}, {weights!r}, chain {chain}, vpus {vpus}")
    g = k if weights == "int8" else group
    if k % g:
        raise ShapeError(f"int4 weights group {g} elements along K; K = {k} is not a multiple")
    qx, sx = _symmetric_codes(np.asarray(x, dtype=np.float64), 127, k)
    qw, sw = _symmetric_codes(np.asarray(w, dtype=np.float64), 127 if weights == "int8" else 7, g)
    acc = np.zeros((m, n, k // g), dtype=np.int64)
    rows = np.arange(0, m, 2)
    for n0 in range(0, n, vpus):  # the VPUs take `vpus` output columns at a time
        cols = slice(n0, min(n0 + vpus, n))
        for r in rows:  # two activation rows share each weight in a DSP
            hi_row, lo_row = qx[r], qx[r + 1] if r + 1 < m else np.zeros_like(qx[r])
            k0 = 0
            while k0 < k:  # one chain step covers up to `chain` K elements, within one weight-scale group
                ks = slice(k0, min(k0 + chain, (k0 // g + 1) * g, k))
                wt = qw[cols, ks]
                hi, lo = packed_chain_dot(np.broadcast_to(hi_row[ks], wt.shape), np.broadcast_to(lo_row[ks], wt.shape), wt)
                gi = k0 // g
                acc[r, cols, gi] += hi
                if r + 1 < m:
                    acc[r + 1, cols, gi] += lo
                k0 = ks.stop
    scaled = (acc.astype(np.float32) * sw[None, :, :].astype(np.float32)).sum(axis=-1, dtype=np.float32)
    y = scaled * sx.astype(np.float32)
    return y, acc, {"qx": qx, "sx": sx[:, 0], "qw": qw, "sw": sw}
