"""Vectorised loop-nest analysis: data moved at every memory level by a batch of mappings.

A mapping of a :class:`~xpusim.sim.problem.Problem` onto ``L`` storage levels (0 = outermost) and
the compute leaf (index ``L``) is given as arrays over ``C`` candidate mappings:

* ``tiles``  (C, L+1, D): tile held by one instance of each level (``tiles[:, 0] == sizes``;
  ``tiles[:, L]`` is the leaf's tile, e.g. 1 per MAC lane);
* ``spatial`` (C, L, D): spatial factor below level ``l`` (children instances used per dim);
* ``order``  (C, L, D): rank of each dim's temporal loop at level ``l`` (0 = outermost);
* ``keep``   (L, T): level ``l`` stores tensor ``t`` (level 0 stores all; the others may bypass).

Semantics (what :mod:`xpusim.workloads.functional.tiled` executes and counts): level ``l`` iterates
its tile in chunks of ``spatial*tiles[l+1]`` (temporal loops, in ``order``), each chunk split over
``spatial`` child instances. Chunks are exact (the last one is the remainder; no padding is moved).
A child re-fetches a tensor's tile at every iteration of the loops down to the innermost loop that
indexes the tensor and has more than one trip (its *stationarity* point); loops inside it reuse the
tile. Partial sums start at zero in a child and are accumulated into the parent on eviction
(read-modify-write except on the first update of a parent tile visit); a multicast-capable parent
serves children that need the same data with one read and reduces partial sums on the way up.
Partial sums travel in the accumulator format; the final value of each output element is written to
level 0 in the output format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .problem import Problem


@dataclass
class NestTraffic:
    """Element and byte counts per candidate. ``reads``/``writes``: (C, L) bytes per storage level;
    ``fills``: (C, T, L+1) elements delivered into each level (and to the leaf at index L)."""

    reads: np.ndarray
    writes: np.ndarray
    fills: np.ndarray
    used: np.ndarray  # (C, L+1) instances of each level in use
    steps: np.ndarray  # (C,) leaf steps on the busiest lane (padded)
    padded: np.ndarray  # (C,) counts padded: ``exact=False`` on a candidate with a remainder chunk


def unique_rows(a: np.ndarray, return_index: bool = False, return_inverse: bool = False) -> Any:
    """``np.unique(a, axis=0, ...)`` for a 2-D array of non-negative integers, in the same
    (lexicographic) order and with the same first-occurrence indices, by sorting one mixed-radix key
    per row (a 1-D sort; ``axis=0`` sorts a structured view, several times slower). Falls back to
    ``np.unique`` when the key would not fit in 62 bits."""
    if a.size == 0 or not np.issubdtype(a.dtype, np.integer) or a.min() < 0:
        radix = None
    else:
        radix = a.max(axis=0) + 1
    if radix is None or float(np.prod(radix.astype(np.float64))) >= 2.0**62:
        out, index, inverse = np.unique(a, axis=0, return_index=True, return_inverse=True)
    else:
        weights = np.concatenate([np.cumprod(radix[::-1])[::-1][1:], [1]]).astype(np.int64)
        _, index, inverse = np.unique(a @ weights, return_index=True, return_inverse=True)
        out = a[index]
    if not (return_index or return_inverse):
        return out
    return (out,) + ((index,) if return_index else ()) + ((inverse,) if return_inverse else ())


def _ceil_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return -(-a // b)


def _chunk_tables(sizes: np.ndarray, tiles: np.ndarray, spatial: np.ndarray, depth: int,
                  excl_spatial_from: int | None = None, exact: bool = True,
                  divisible: np.ndarray | None = None) -> np.ndarray:
    """Chunk counts of every dimension for every stationarity cut.

    Returns ``R`` of shape (C, depth+1, depth+1, D): ``R[:, j, c, d]`` is the number of distinct
    (chunk, instance) pairs of dim ``d`` seen by level ``c`` when the temporal loops of levels
    ``< j`` are re-iterated (included) and those of levels ``>= j`` keep the tile (excluded). With
    ``excl_spatial_from=p``, spatial splits below levels ``>= p`` are shared (multicast), i.e.
    excluded as well. Chains whose every split is exact (:func:`_products_exact`) are products of
    trip counts; the others are propagated exactly as (extent, count) pairs, unless ``exact`` is false: then every chunk
    counts as full (padded counts, an upper bound used to rank many candidates quickly).
    ``divisible``: :func:`_products_exact` of these tiles, when the caller has it.
    """
    C, _, D = tiles.shape
    steps = spatial * tiles[:, 1:]
    if divisible is None:
        divisible = _products_exact(tiles, steps)
    trips = -(-tiles[:, :depth] // steps)
    active = np.minimum(spatial, -(-tiles[:, :depth] // tiles[:, 1:]))
    if excl_spatial_from is not None:
        active[:, excl_spatial_from:] = 1
    ones = np.ones((C, 1, D), dtype=np.int64)
    cp_t = np.concatenate([ones, np.cumprod(trips, axis=1)], axis=1)  # (C, depth+1, D)
    cp_s = np.concatenate([ones, np.cumprod(active, axis=1)], axis=1)
    out = cp_t[:, _cuts(depth)] * cp_s[:, None]
    if exact:
        for d in np.flatnonzero(~divisible.all(axis=0)):
            idx = np.flatnonzero(~divisible[:, d])
            out[idx, :, :, d] = _chunk_table_exact(int(sizes[d]), tiles[idx, :, d], spatial[idx, :, d], depth,
                                                   excl_spatial_from)
    return out


def _products_exact(tiles: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(C, D) whether a dim's chunk counts are products of trip counts and active instances: at
    every level the tile is whole chunks (``tile % (spatial * child tile) == 0``), or one chunk of
    whole child tiles (``tile <= spatial * child tile`` and ``tile % child tile == 0``)."""
    t = tiles[:, :-1]
    return np.all((t % steps == 0) | ((t <= steps) & (t % tiles[:, 1:] == 0)), axis=1)


def _cuts(depth: int) -> np.ndarray:
    """(depth+1, depth+1) ``[j, c] -> min(j, c)``: the temporal levels a cut ``j`` re-iterates as
    seen from level ``c``."""
    return np.minimum.outer(np.arange(depth + 1), np.arange(depth + 1))


def _chunk_table_exact(n: int, tiles_d: np.ndarray, spatial_d: np.ndarray, depth: int,
                       excl_spatial_from: int | None) -> np.ndarray:
    """One dimension of :func:`_chunk_tables` by propagating (extent, count) pairs through every split, all cuts
    ``j`` at once (rows ordered cut-major)."""
    C = tiles_d.shape[0]
    J = depth + 1
    cut = np.repeat(np.arange(J), C)  # (J*C,) the cut of each row
    tl = np.tile(tiles_d, (J, 1))
    sp = np.tile(spatial_d, (J, 1))
    ext = np.full((J * C, 1), n, dtype=np.int64)
    cnt = np.ones((J * C, 1), dtype=np.int64)
    out = np.ones((J * C, J), dtype=np.int64)
    for lv in range(depth):
        for step, include in ((sp[:, lv] * tl[:, lv + 1], cut > lv),
                              (tl[:, lv + 1], np.full(J * C, excl_spatial_from is None or lv < excl_spatial_from))):
            s = step[:, None]
            q, r = np.divmod(ext, s)
            inc_ext = np.concatenate([s, r], axis=1)
            inc_cnt = np.concatenate([(cnt * q).sum(axis=1, keepdims=True), cnt * (r > 0)], axis=1)
            exc_ext = np.concatenate([np.minimum(ext, s), s], axis=1)
            exc_cnt = np.concatenate([cnt, np.zeros_like(s)], axis=1)
            inc = include[:, None]
            ext = np.where(inc, inc_ext, exc_ext)
            cnt = np.where(inc, inc_cnt, exc_cnt)
        out[:, lv + 1] = cnt.sum(axis=1)
    return out.reshape(J, C, J).transpose(1, 0, 2)


def busiest_lane_steps(tiles: np.ndarray, spatial: np.ndarray) -> np.ndarray:
    """(C,) leaf tiles the busiest leaf instance computes, remainder chunks at their real size (the
    ``steps`` of :func:`analyse` count every chunk as full). The busiest is instance 0 of every
    spatial split: it takes a share of every chunk, the largest. Per dimension, a level's extent ``x``
    splits into ``x // step`` full chunks, where instance 0 holds the child's whole tile, and one
    remainder ``x % step``, where it holds ``min(remainder, child tile)``; the dimensions' counts
    multiply (the leaf tiles form a Cartesian product). ``2^L`` array evaluations for ``L`` levels."""
    L = tiles.shape[1] - 1
    step = spatial * tiles[:, 1:, :]

    def count(lv: int, x: np.ndarray) -> np.ndarray:
        if lv == L:
            return np.ones_like(x)
        child = tiles[:, lv + 1, :]
        full, rem = x // step[:, lv, :], x % step[:, lv, :]
        out = full * count(lv + 1, child)
        if (rem > 0).any():
            out = out + np.where(rem > 0, count(lv + 1, np.minimum(np.maximum(rem, 1), child)), 0)
        return out

    return count(0, tiles[:, 0, :]).prod(axis=1)


def analyse(prob: Problem, tiles: np.ndarray, spatial: np.ndarray, order: np.ndarray,
            keep: np.ndarray, multicast: np.ndarray, exact: bool = True, forward_leaf: bool = False) -> NestTraffic:
    """Count fills, reads and writes at every level for each candidate mapping (see module doc).

    ``exact=False`` counts remainder chunks as full ones (padded counts; faster, an upper bound).
    ``forward_leaf``: the leaf's spatial split is a systolic array, which forwards operands between
    its PEs and reduces partial sums along them: the split shares one read of its source whatever
    the source's ``multicast`` flag (an operand that bypasses the innermost buffer still flows
    through the array)."""
    C, Lp1, D = tiles.shape
    L = Lp1 - 1
    T = prob.n_tensors
    out_t = T - 1
    sizes = prob.sizes
    steps_t = spatial * tiles[:, 1:, :]  # (C, L, D) temporal step at each level
    nondeg = tiles[:, :L, :] > steps_t  # loop has more than one trip
    pos = np.arange(L)[None, :, None] * (D + 1) + order  # flattened loop position

    products = _products_exact(tiles, steps_t)  # (C, D): where chunk counts are products of trip counts
    tables = _chunk_tables(sizes, tiles, spatial, L, None, exact, products)  # (C, L+1, L+1, D)
    mc_tables: dict[int, np.ndarray] = {}

    def mc_table(p: int) -> np.ndarray:
        if p not in mc_tables:
            mc_tables[p] = _chunk_tables(sizes, tiles, spatial, L, p, exact, products)
        return mc_tables[p]

    fills = np.zeros((C, T, L + 1), dtype=np.float64)
    src_reads = np.zeros((C, T, L + 1), dtype=np.float64)
    rows = np.arange(C)[:, None]
    for t in range(T):
        rel = prob.rel[t]
        rel_elems = float(np.prod(sizes[rel]))
        other = np.flatnonzero(~rel)
        kept = [lv for lv in range(L) if keep[lv, t]]
        for c in range(1, L + 1):
            if c < L and not keep[c, t]:
                continue
            src = max(lv for lv in kept if lv < c)
            if other.size == 0:
                fills[:, t, c] = src_reads[:, t, c] = rel_elems
                continue
            mask = rel[None, None, :] & nondeg[:, :c, :]
            pstar = np.where(mask, pos[:, :c, :], -1).max(axis=(1, 2))  # (C,)
            j = (pos[:, :c, other] <= pstar[:, None, None]).sum(axis=1)  # (C, |other|) temporal levels re-iterated
            f = tables[rows, j, c, other[None, :]].astype(np.float64)
            share = src if multicast[src] else L - 1 if forward_leaf and c == L else None
            g = mc_table(share)[rows, j, c, other[None, :]].astype(np.float64) if share is not None else f
            fills[:, t, c] = rel_elems * f.prod(axis=1)
            src_reads[:, t, c] = rel_elems * g.prod(axis=1)

    reads = np.zeros((C, L))
    writes = np.zeros((C, L))
    eb, ab = prob.elem_bytes, prob.acc_bytes
    n_out = float(np.prod(sizes[prob.rel[out_t]]))
    for t in range(T):
        chain = [lv for lv in range(L) if keep[lv, t]] + [L]
        for p, c in zip(chain[:-1], chain[1:], strict=True):
            if t != out_t:
                reads[:, p] += src_reads[:, t, c] * eb[t]
                if c < L:
                    writes[:, c] += fills[:, t, c] * eb[t]
                continue
            upd = src_reads[:, t, c]
            v_p = n_out if p == 0 else fills[:, t, p]
            if p == 0:
                writes[:, p] += (upd - n_out) * ab + n_out * eb[t]
            else:
                writes[:, p] += upd * ab
            reads[:, p] += (upd - v_p) * ab
            if c < L:
                reads[:, c] += fills[:, t, c] * ab

    active = np.minimum(spatial, _ceil_div(tiles[:, :L, :], tiles[:, 1:, :])).prod(axis=2)  # (C, L)
    used = np.concatenate([np.ones((C, 1), dtype=np.int64), np.cumprod(active, axis=1)], axis=1)
    steps = _ceil_div(tiles[:, :L, :], steps_t).prod(axis=(1, 2))
    padded = np.zeros(C, dtype=bool) if exact else np.asarray(~products.all(axis=1))
    return NestTraffic(reads, writes, fills, used, steps, padded)
