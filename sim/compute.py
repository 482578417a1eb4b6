"""Compute-leaf rules: how many cycles the MAC lanes of a device need for a mapped op.

* Throughput units (GPU tensor cores, vector/FPGA MAC arrays): every lane retires one MAC per
  cycle; the busiest lane's padded step count is the compute time.
* Systolic arrays: SCALE-Sim v3's compute cycles, in closed form (see
  :func:`systolic_compute_cycles`): a fold streams the whole temporal dimension through the array
  and pays fill and drain (Samajdar et al., "A Systematic Methodology for Characterizing
  Scalability of DNN Accelerators using SCALE-Sim", ISPASS 2020; SCALE-Sim v3 code, see
  docs/cost-model.md). The memory levels' transfer time beyond it is stall time.
"""

from __future__ import annotations

import functools

import numpy as np

from ..arch.spec import Arch
from ..dtypes import get_dtype
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
    if prob.rel.shape[0] != 3:
        raise ValueError("a GEMM role assignment needs exactly two inputs")
    return _roles_of(np.asarray(prob.rel, dtype=bool).tobytes(), prob.rel.shape[1])


@functools.lru_cache(maxsize=1024)
def _roles_of(rel_bytes: bytes, n_dims: int) -> tuple[int, int, int]:
    """:func:`gemm_roles` of a (3, n_dims) relevance matrix given as bytes (memoised: the mapper
    asks for the roles of one problem thousands of times)."""
    a, b, o = np.frombuffer(rel_bytes, dtype=bool).reshape(3, n_dims)
    find = {"m": a & ~b & o, "n": ~a & b & o, "k": a & b & ~o}
    idx = {}
    for role, mask in find.items():
        hits = np.flatnonzero(mask)
        idx[role] = int(hits[0]) if hits.size else -1
    return idx["m"], idx["n"], idx["k"]


def systolic_fold_cycles(rows: int, cols: int, stream: int, dataflow: str, preload: bool = False) -> int:
    """Cycles of one fold as SCALE-Sim v3 builds its demand matrices: ``T + R + C - 2`` for
    output-stationary, ``2R + C + T - 2`` for weight- and input-stationary (an extra R cycles to
    load the stationary operand; hidden behind the previous fold when the array ``preload``s it).
    A partial fold is padded to the full array and costs the same."""
    return stream + rows + cols - 2 + (rows if dataflow in ("ws", "is") and not preload else 0)


def packing(arch: Arch, compute: str) -> int:
    """MACs each PE of a systolic array retires per cycle in a compute class (``macs_per_cycle`` over
    rows x cols, a whole number: tpu-v5e's int8 runs two per PE): they serve that many columns of the
    column dim in one fold."""
    rows, cols = arch.matrix.array or (1, 1)
    return max(1, int(arch.matrix.rate(compute)) // (rows * cols))


def array_extents(arch: Arch, compute: str) -> tuple[int, int]:
    """(rows, columns) of the row and column dims one fold covers: the array's, the columns times
    :func:`packing`."""
    rows, cols = arch.matrix.array or (1, 1)
    return rows, cols * packing(arch, compute)


def systolic_compute_cycles(prob: Problem, rows: int, cols: int, dataflow: str, arrays: int = 1,
                            preload: bool = False, folds: int | None = None) -> int:
    """Compute cycles of a GEMM-like problem on an R x C array, exactly as SCALE-Sim v3 reports
    them for a GEMM row ``M, N, K`` (its total minus stall cycles): ``Fr * Fc * D - 1`` with
    ``Fr = ceil(Sr / R)``, ``Fc = ceil(Sc / C)``, ``D`` the fold cycles of the streamed extent ``T``
    (the whole dimension: buffer limits become stalls, not extra folds). Batch dims repeat the GEMM;
    a device with several arrays deals the folds out to them (``arrays`` = 1 is SCALE-Sim's case).
    ``preload``: the stationary operand of every fold but the first loads during the previous one.
    ``folds``: the folds a mapping executes when its tiles split the array's dims into more than
    ``Fr * Fc`` (see :func:`executed_folds`)."""
    rd, cd, sd = systolic_roles(prob, dataflow)
    size = lambda i: int(prob.sizes[i]) if i >= 0 else 1  # noqa: E731
    batch = int(np.prod([prob.sizes[d] for d in range(prob.n_dims) if prob.rel[:, d].all()])) or 1
    if folds is None:
        folds = -(-size(rd) // rows) * -(-size(cd) // cols)
    per_array = -(-(batch * folds) // arrays)
    first = rows if preload and dataflow in ("ws", "is") else 0
    return per_array * systolic_fold_cycles(rows, cols, size(sd), dataflow, preload) + first - 1


def executed_folds(size: int, tiles: np.ndarray, extent: int) -> np.ndarray:
    """(C,) array passes a dim of ``size`` takes when each candidate's storage levels cut it into
    tiles ``tiles`` (C, levels), outermost first: every level splits each piece into whole tiles and
    a remainder, and an innermost piece of ``f`` elements takes ``ceil(f / extent)`` passes. Equals
    ``ceil(size / extent)`` when every tile is a multiple of ``extent`` (or the whole dim). The pieces
    of :func:`_first_instance_pieces` with no spatial split."""
    C, levels = tiles.shape
    cut = np.concatenate([np.full((C, 1), size, dtype=np.int64), np.maximum(tiles, 1)], axis=1)[:, :, None]
    x, n = _first_instance_pieces(cut, np.ones((C, levels, 1), dtype=np.int64), levels)
    return (n[:, 0] * -(-x[:, 0] // extent)).sum(axis=1)


def min_tile(prob: Problem, arch: Arch) -> np.ndarray:
    """(D,) smallest tile any storage level may hold: on a systolic array a fold needs a whole
    array's worth of its row and column dims (or the whole dim when it is smaller), so every
    level holds at least that; 1 elsewhere."""
    out = np.ones(prob.n_dims, dtype=np.int64)
    if arch.matrix.array is None:
        return out
    rd, cd, _ = systolic_roles(prob, arch.matrix.dataflow or "ws")
    for d, extent in zip((rd, cd), array_extents(arch, get_dtype(prob.compute_dtype).compute), strict=True):
        if d >= 0:
            out[d] = min(int(prob.sizes[d]), extent)
    return out


def fold_aligned(prob: Problem, arch: Arch, d: int, values: np.ndarray) -> np.ndarray:
    """Tile sizes of dim ``d`` rounded up to whole folds on a systolic array (multiples of the
    array's extent along ``d``, or the whole dim): tiles that split no fold. Unchanged elsewhere."""
    if arch.matrix.array is None:
        return values
    rd, cd, _ = systolic_roles(prob, arch.matrix.dataflow or "ws")
    ext = dict(zip((rd, cd), array_extents(arch, get_dtype(prob.compute_dtype).compute), strict=True)).get(d)
    if ext is None or d < 0:
        return values
    return np.unique(np.minimum(-(-np.asarray(values) // ext) * ext, int(prob.sizes[d])))


#: the operand a dataflow keeps in the array (its tensor index: filter, output, input 0)
STATIONARY = {"ws": 1, "os": 2, "is": 0}


def _first_instance_pieces(tiles: np.ndarray, spatial: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The pieces of every dim instance 0 of each split holds at storage ``level``: sizes and counts,
    both (C, D, P). At each level above, an extent ``x`` splits into ``x // step`` full chunks (where
    instance 0 holds the child's whole tile) and a remainder (where it holds ``min(remainder, child)``),
    ``step`` being the spatial split times the child tile."""
    x = tiles[:, 0, :, None]
    n = np.ones_like(x)
    for lv in range(level):
        child = tiles[:, lv + 1, :, None]
        step = spatial[:, lv, :, None] * child
        full, rem = x // step, x % step
        x = np.concatenate([np.broadcast_to(child, x.shape), np.minimum(rem, child)], axis=2)
        n = np.concatenate([n * full, n * (rem > 0)], axis=2)
    return x, n


def compute_cycles(arch: Arch, prob: Problem, tiles: np.ndarray, steps: np.ndarray,
                   spatial: np.ndarray | None = None, stationary_fills: np.ndarray | None = None) -> np.ndarray:
    """Cycles of the MAC lanes on the busiest instance for each candidate (C,). On a systolic array the
    busiest innermost-level instance (instance 0 of every split above it) runs the folds of its pieces
    of the row and column dims on its arrays; each fold streams its share of the temporal dimension
    and pays SCALE-Sim's fill and drain. A mapping that cuts the streamed dimension above the array
    re-enters each fold once per chunk: the stationary operand's elements delivered into the array
    (``stationary_fills``, the nest's fills of the leaf) over its size and over the instances that
    split the stream give those re-entries ``r``; a fold then runs ``r`` times on ``T / r`` each
    (``r`` = 1: SCALE-Sim's one pass per fold). ``spatial`` (C, L, D): the mapping's splits (None:
    one innermost instance takes everything)."""
    if arch.matrix.array is None:
        return steps.astype(np.float64)
    dataflow = arch.matrix.dataflow or "ws"
    rows, cols = array_extents(arch, get_dtype(prob.compute_dtype).compute)
    phys_rows, phys_cols = arch.matrix.array
    rd, cd, sd = systolic_roles(prob, dataflow)
    C, L, D = tiles.shape[0], tiles.shape[1] - 1, prob.n_dims
    if spatial is None:
        spatial = np.ones((C, L, D), dtype=np.int64)
    x, n = _first_instance_pieces(tiles, spatial, L - 1)

    def passes(d: int, extent: int) -> np.ndarray:
        return (n[:, d] * -(-x[:, d] // extent)).sum(axis=1) if d >= 0 else np.ones(C, np.int64)

    def extent(d: int) -> np.ndarray:
        return (n[:, d] * x[:, d]).sum(axis=1) if d >= 0 else np.ones(C, np.int64)

    batch = np.prod([extent(d) for d in range(D) if prob.rel[:, d].all()] or [np.ones(C, np.int64)], axis=0)
    folds = batch * passes(rd, rows) * passes(cd, cols)
    stream = extent(sd).astype(np.float64)
    reentries = np.ones(C)
    if stationary_fills is not None and sd >= 0:
        held = float(np.prod(prob.sizes[prob.rel[STATIONARY[dataflow]]]))
        active = np.minimum(spatial[:, : L - 1, sd], -(-tiles[:, : L - 1, sd] // tiles[:, 1:L, sd]))
        copies = active.prod(axis=1)  # instances holding the same stationary block, each its share of the stream
        reentries = np.maximum(np.asarray(stationary_fills, dtype=np.float64) / (held * copies), 1.0)
    per_inst = arch.matrix.instances // arch.memory[-1].instances
    over = systolic_fold_cycles(phys_rows, phys_cols, 0, dataflow, arch.matrix.preload)  # fill and drain of a pass
    per_array = np.ceil(np.ceil(folds * reentries - 1e-9) / per_inst)
    busy = per_array * stream / reentries  # the busiest array's passes at the mean pass length
    if sd >= 0:  # every stream piece its own pass: an array streams at least the longest piece
        longest = np.where(n[:, sd] > 0, x[:, sd], 0).max(axis=1)
        busy = np.where(reentries >= n[:, sd].sum(axis=1) - 1e-9, np.maximum(busy, longest), busy)
    busy = np.minimum(busy, folds * stream)  # and no more than all the instance's passes
    first = phys_rows if arch.matrix.preload and dataflow in ("ws", "is") else 0
    return per_array * over + busy + first - 1
