"""Compute-leaf rules: how many cycles the MAC lanes of a device need for a mapped op.

* Throughput units (GPU tensor cores, vector/FPGA MAC arrays): every lane retires one MAC per
  cycle; the busiest lane's padded step count is the compute time.
* Systolic arrays: a fold (one tile of the array's row and column dimensions) streams ``T``
  operands through an R x C array and pays fill and drain: ``2R + C + T - 2`` cycles per fold
  (Samajdar et al., "A Systematic Methodology for Characterizing Scalability of DNN Accelerators
  using SCALE-Sim", ISPASS 2020, eq. for the scale-up array).
"""

from __future__ import annotations

import numpy as np

from ..arch.spec import Arch
from .problem import Problem


def lanes(arch: Arch, compute: str) -> int:
    """MAC lanes below one innermost-level instance for a compute class."""
    per_unit = int(arch.matrix.rate(compute))
    return per_unit * (arch.matrix.instances // arch.memory[-1].instances)


def systolic_roles(prob: Problem, dataflow: str) -> tuple[int, int, int]:
    """(row dim, col dim, streamed dim) of a GEMM-like problem for a dataflow.

    Canonical roles: ``m`` indexes input 0 and the output, ``n`` input 1 and the output, ``k``
    both inputs. WS keeps the K x N filter in the array (rows k, cols n, streams m); OS keeps the
    M x N output (rows m, cols n, streams k); IS keeps the M x K input (rows k, cols m, streams n).
    """
    m, n, k = gemm_roles(prob)
    return {"ws": (k, n, m), "os": (m, n, k), "is": (k, m, n)}[dataflow]


def gemm_roles(prob: Problem) -> tuple[int, int, int]:
    """Indices of the m, n, k dimensions of a two-input contraction (batch dims excluded)."""
    rel = prob.rel
    if rel.shape[0] != 3:
        raise ValueError("a GEMM role assignment needs exactly two inputs")
    a, b, o = rel
    find = {"m": a & ~b & o, "n": ~a & b & o, "k": a & b & ~o}
    idx = {}
    for role, mask in find.items():
        hits = np.flatnonzero(mask)
        idx[role] = int(hits[0]) if hits.size else -1
    return idx["m"], idx["n"], idx["k"]


def compute_cycles(arch: Arch, prob: Problem, tiles: np.ndarray, steps: np.ndarray, stream_dim: int | None) -> np.ndarray:
    """Cycles of the MAC lanes on the busiest instance for each candidate (C,)."""
    if arch.matrix.array is None:
        return steps.astype(np.float64)
    rows, cols = arch.matrix.array
    L = tiles.shape[1] - 1
    if stream_dim is None or stream_dim < 0:
        return steps.astype(np.float64) + 2 * rows + cols - 2
    stream = tiles[:, L - 1, stream_dim]
    folds = -(-steps // np.maximum(stream, 1))
    return (folds * (2 * rows + cols + stream - 2)).astype(np.float64)
