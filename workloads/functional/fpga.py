"""Functional reference of the FPGA template's matrix engine (``mappers/fpga.py``), with numpy.

* :func:`packed_chain_dot`: a DSP chain computing two INT8 dot products at once, as FlightLLM and
  AMD's WP486 pack them: each DSP48E2 multiplies one weight ``w`` by the packed operand
  ``a_hi * 2**18 + a_lo`` (two activations sharing the weight) and the chain adds the products in its
  48-bit cascade; the low 18 bits hold the ``a_lo`` sum and the rest the ``a_hi`` sum. With
  symmetric INT8 activations (-127..127, the usual quantisation range) and INT8 weights, 8 products
  stay inside the signed 18-bit low field (8 x 127 x 128 < 2**17); longer chains are split into
  groups of at most ``group`` DSPs whose partial sums are separated (FlightLLM's overflow adjust
  unit, which it skips for chains of at most 8 DSPs) and added.
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
