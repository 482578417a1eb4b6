"""An operator reduced to what the loop-nest cost model needs.

Dimensions that every tensor indexes alike (same relevance signature) are merged into one, so a
GEMM-like Einsum is seen as few dimensions (e.g. attention scores: batch=(b,h), m=(r,q), n=s, k=e).
Tensors are the op's inputs followed by its output (last).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import get_dtype
from ..workloads.einsum import Op


@dataclass(frozen=True)
class Problem:
    """``sizes``: (D,) merged dimension sizes; ``rel``: (T, D) whether tensor t indexes dim d;
    ``elem_bytes``: (T,) bytes per element; ``acc_bytes``: bytes of a partial sum;
    ``groups``: the op dimensions merged into each canonical dimension."""

    name: str
    dims: tuple[str, ...]
    sizes: np.ndarray
    rel: np.ndarray
    elem_bytes: np.ndarray
    acc_bytes: float
    groups: tuple[tuple[str, ...], ...]
    macs: int
    compute_dtype: str = "bf16"
    density: float = 1.0  # stored fraction of the second operand (N/M of N:M sparse weights)

    @property
    def n_dims(self) -> int:
        return len(self.dims)

    @property
    def n_tensors(self) -> int:
        return self.rel.shape[0]

    def tensor_elems(self) -> np.ndarray:
        """(T,) elements of each tensor."""
        return np.array([int(np.prod(self.sizes[r])) for r in self.rel], dtype=np.int64)


def problem_from_op(op: Op, accumulator_bits: int | None = None) -> Problem:
    """Merge an op's dimensions by relevance signature (order of first appearance kept).

    ``accumulator_bits``: width of a partial sum where the device fixes it (else the dtype's
    accumulation type)."""
    tensors = op.tensors
    sig: dict[tuple[bool, ...], list[str]] = {}
    for d in op.dim_names:
        key = tuple(d in t.dims for t in tensors)
        sig.setdefault(key, []).append(d)
    groups = tuple(tuple(v) for v in sig.values())
    sizes = np.array([int(np.prod([op.sizes[d] for d in g])) for g in groups], dtype=np.int64)
    rel = np.array([[g[0] in t.dims for g in groups] for t in tensors], dtype=bool)
    elem = np.array([get_dtype(t.dtype).bytes for t in tensors], dtype=np.float64)
    acc = accumulator_bits / 8 if accumulator_bits else get_dtype(get_dtype(op.compute_dtype).accum).bytes
    dims = tuple("".join(g) if len(g) > 1 else g[0] for g in groups)
    density = get_dtype(op.inputs[1].dtype).density if len(op.inputs) > 1 else 1.0
    return Problem(op.name, dims, sizes, rel, elem, acc, groups, op.macs, op.compute_dtype, density)


def gemm_problem(m: int, n: int, k: int, dtype: str = "bf16") -> Problem:
    """A plain GEMM C[m,n] = A[m,k] @ B[k,n] as a :class:`Problem` (for tests and ``xpusim op``)."""
    from ..workloads.einsum import gemm_op  # noqa: PLC0415

    return problem_from_op(gemm_op(m, n, k, dtype))
