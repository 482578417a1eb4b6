"""Functional reference of the wafer-scale algorithms of ``mappers/wafer.py``, executed with numpy.

The mesh is a ``p x p`` grid of blocks held as arrays with two leading grid axes; every step acts on
all blocks at once (``np.roll`` for a shift along a grid axis), never on one core at a time.

* :func:`cannon_matmul`: MeshGEMM's Cannon schedule: skew (row ``i`` of A left by ``i``, column ``j``
  of B up by ``j``), then ``p`` steps of a local block product and a shift of A left and B up by one;
* :func:`mesh_gemv`: MeshGEMV: local block GEMVs, then a K-tree allreduce of the partial sums along
  each row of the grid (groups of ``ceil(p^(1/K))`` roots reduce into their centre member, phase by
  phase, and the total is sent back to every core of the row).
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError


def _blocks(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``x`` zero-padded to ``rows x cols`` blocks, as an array of shape (rows, cols, r, c)."""
    r, c = -(-x.shape[0] // rows), -(-x.shape[1] // cols)
    pad = np.zeros((rows * r, cols * c), dtype=x.dtype)
    pad[: x.shape[0], : x.shape[1]] = x
    return pad.reshape(rows, r, cols, c).swapaxes(1, 2)


def _unblock(b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    g0, g1, r, c = b.shape
    return b.swapaxes(1, 2).reshape(g0 * r, g1 * c)[: shape[0], : shape[1]]


def cannon_matmul(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """``a @ b`` computed by Cannon's algorithm on a ``p x p`` grid of blocks."""
    if p < 1 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"cannon_matmul needs p >= 1 and shapes (m, k) x (k, n), got p={p}, {a.shape} x {b.shape}")
    ab, bb = _blocks(a, p, p), _blocks(b, p, p)
    i, j = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    ab = ab[i, (i + j) % p]  # skew: block (i, j) holds A(i, i + j)
    bb = bb[(i + j) % p, j]  # and B(i + j, j)
    c = np.zeros((p, p, ab.shape[2], bb.shape[3]), dtype=np.result_type(a, b))
    for _ in range(p):  # p shift steps (a loop over steps, every block at once)
        c += np.einsum("ijmk,ijkn->ijmn", ab, bb)
        ab = np.roll(ab, -1, axis=1)
        bb = np.roll(bb, -1, axis=0)
    return _unblock(c, (a.shape[0], b.shape[1]))


def ktree_allreduce(part: np.ndarray, k: int = 2) -> tuple[np.ndarray, list[int]]:
    """Allreduce ``part`` (axis 1: the ``p`` cores of a grid row) by a K-tree: in each phase the live
    roots, in groups of ``g = ceil(p^(1/k))`` consecutive ones, add their values into the group's
    centre member; then the total goes back to every core. Returns the array with every core of a
    row holding the row's sum, and the group size of each phase."""
    p = part.shape[1]
    part = part.copy()
    sizes: list[int] = []
    if p > 1:
        g = max(2, int(np.ceil(round(p ** (1.0 / k), 9))))
        roots = np.arange(p)
        while roots.size > 1:
            ngroups = -(-roots.size // g)
            sizes.append(min(g, roots.size))
            new = []
            for grp in np.array_split(roots, np.arange(g, roots.size, g)):  # a loop over groups of one phase
                centre = grp[(grp.size - 1) // 2]
                part[:, centre] = part[:, grp].sum(axis=1)
                new.append(centre)
            roots = np.array(new)
            assert roots.size == ngroups
        part[:] = part[:, roots[0]][:, None]  # multicast the total back along the row
    return part, sizes


def mesh_gemv(w: np.ndarray, x: np.ndarray, p: int, k: int = 2) -> np.ndarray:
    """``w @ x`` (``w``: n x k, ``x``: k or k x m) by blocked GEMVs and a K-tree allreduce along rows;
    checks every core of a row ends with the same chunk (an allreduce)."""
    xm = x.reshape(x.shape[0], -1)
    if p < 1 or w.ndim != 2 or w.shape[1] != xm.shape[0]:
        raise ShapeError(f"mesh_gemv needs p >= 1 and shapes (n, k) x (k, m), got p={p}, {w.shape} x {x.shape}")
    wb = _blocks(w, p, p)  # (p, p, nt, kt)
    xb = _blocks(xm, p, 1)[:, 0]  # (p, kt, m): chunk j replicated down grid column j
    part = np.einsum("ijnk,jkm->ijnm", wb, xb)
    red, _ = ktree_allreduce(part, k)
    if not np.array_equal(red, np.broadcast_to(red[:, :1], red.shape)):
        raise AssertionError("K-tree allreduce left different values along a row")
    y = red[:, 0].reshape(-1, xm.shape[1])[: w.shape[0]]
    return y.reshape(w.shape[0], *x.shape[1:])
