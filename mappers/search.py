"""The default mapper: a level-by-level beam search over tilings, loop orders and spatial splits,
evaluated in bulk with numpy.

From the outermost level inwards, every kept partial mapping is extended by the tiles of the next
level (powers of two and halvings of the dimension, filtered by capacity), the loop order of the
level above (all-relevant "batch" dimensions outermost, the rest permuted) and a spatial split over
the child instances (the split that covers the chunks in the fewest waves). Once a level's children
are fixed its traffic is exact, so the partial cost is a lower bound of any completion; the ``beam``
best partial mappings survive. Systolic arrays fix the last spatial split and stream dimension by
their dataflow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import MappingError
from ..sim.compute import compute_cycles, fold_aligned, lanes, min_tile, systolic_roles  # noqa: F401
from ..sim.cost import LevelArrays, NestCosts, evaluate, fits, footprint, keep_mask
from ..sim.nest import unique_rows
from ..sim.problem import Problem
from .mapping import Mapping

OBJECTIVES = ("latency", "energy", "edp")


def tile_values(n: int, max_values: int = 12) -> np.ndarray:
    """Candidate tile sizes of a dimension of size n: powers of two below n, halvings of n, and n,
    thinned to the ones nearest (in log scale) to ``max_values`` sizes spread evenly in log scale
    from 1 to n, so every magnitude keeps a candidate."""
    vals = {n}
    p = 1
    while p < n:
        vals.add(p)
        p *= 2
    h = n
    while h > 1:
        h = -(-h // 2)
        vals.add(h)
    v = np.array(sorted(vals), dtype=np.int64)
    if v.size > max_values:
        targets = np.log(np.geomspace(1, n, max_values))
        nearest = np.abs(np.log(v)[None, :] - targets[:, None]).argmin(axis=1)
        v = v[np.union1d(nearest, [v.size - 1])]
    return v


def _orders(prob: Problem) -> np.ndarray:
    """Loop orders (rank per dim): all-relevant dims outermost, the others in every order."""
    D = prob.n_dims
    batch = [d for d in range(D) if prob.rel[:, d].all()]
    rest = [d for d in range(D) if d not in batch]
    out = []
    for perm in itertools.permutations(rest):
        seq = batch + list(perm)
        rank = np.empty(D, dtype=np.int64)
        rank[seq] = np.arange(D)
        out.append(rank)
    return np.array(out)


def _spatial_split(chunks: np.ndarray, fanout: int, prefs: list[tuple[int, ...]]) -> np.ndarray:
    """For each row of chunk counts (K, D), the spatial factors (product <= fanout) that cover
    the chunks in the fewest waves; ties go to the earlier preference order."""
    K, D = chunks.shape
    best = np.ones((K, D), dtype=np.int64)
    best_w = np.full(K, np.iinfo(np.int64).max)
    for perm in prefs:
        s = np.ones((K, D), dtype=np.int64)
        rem = np.full(K, fanout, dtype=np.int64)
        for d in perm:
            s[:, d] = np.maximum(np.minimum(chunks[:, d], rem), 1)
            rem = rem // s[:, d]
        s = -(-chunks // (-(-chunks // s)))  # same waves with fewer idle instances
        w = (-(-chunks // s)).prod(axis=1)
        better = w < best_w
        best[better] = s[better]
        best_w = np.minimum(best_w, w)
    return best


@dataclass
class SearchResult:
    mapping: Mapping
    costs: NestCosts  # arrays of length 1
    evaluated: int


def _score(obj: str, cycles: np.ndarray, energy: np.ndarray) -> np.ndarray:
    if obj == "latency":
        return cycles + energy * 1e-12  # energy breaks ties
    if obj == "energy":
        return energy + cycles * 1e-12
    return cycles * energy


def _leaf_order(prob: Problem, stream: int | None) -> np.ndarray:
    """Loop order at the innermost storage level: the systolic stream dim innermost, or for
    throughput lanes the reduction dims innermost (partial sums stay in the lanes' registers)."""
    D = prob.n_dims
    if stream is not None:
        inner = [stream]
    else:
        inner = [d for d in range(D) if not prob.rel[-1, d]]
    batch = [d for d in range(D) if prob.rel[:, d].all() and d not in inner]
    rest = [d for d in range(D) if d not in inner and d not in batch]
    seq = batch + rest + inner
    rank = np.empty(D, dtype=np.int64)
    rank[seq] = np.arange(D)
    return rank


def _greedy_tiles(prob: Problem, arch: Arch, parent: np.ndarray, level: int, keep: np.ndarray) -> np.ndarray:
    """Balanced largest tiles under ``parent`` that fit ``level``: double every dim in turn while
    the tile fits (vectorised over rows of ``parent``)."""
    K, D = parent.shape
    t = np.minimum(min_tile(prob, arch)[None, :], parent)
    probe = np.zeros((K, level + 1, D), dtype=np.int64)
    changed = True
    while changed:
        changed = False
        for d in range(D):
            cand = t.copy()
            cand[:, d] = np.minimum(cand[:, d] * 2, parent[:, d])
            grow = cand[:, d] > t[:, d]
            if not grow.any():
                continue
            probe[:, level] = cand
            ok = grow & fits(prob, arch, probe, keep, level)
            if ok.any():
                t[ok] = cand[ok]
                changed = True
    return t


def _near_maximal(prob: Problem, arch: Arch, grid: np.ndarray, level: int, keep: np.ndarray, slack: int) -> np.ndarray:
    """Tiles of ``grid`` that fit ``level`` and fill at least 1/2**slack of what it can usefully hold:
    its capacity, or the whole problem's footprint when that is smaller (bigger tiles reuse more),
    plus the whole problem and the tiles within 2**slack of the smallest tile's footprint (one
    systolic fold: a short first load and parallelism), which a larger level keeps as well."""
    probe = np.zeros((grid.shape[0], level + 1, grid.shape[1]), dtype=np.int64)
    probe[:, level] = grid
    ok = fits(prob, arch, probe, keep, level)
    lv = arch.memory[level]
    scale = 2.0 if lv.double_buffer else 1.0
    fp = footprint(prob, probe, keep, level).sum(axis=1) * scale
    whole = np.zeros((1, level + 1, grid.shape[1]), dtype=np.int64)
    whole[0, level] = prob.sizes
    cap = lv.capacity_bytes if not lv.partitions else sum(lv.partitions.values())
    cap = min(cap, float(footprint(prob, whole, keep, level).sum()) * scale)
    big = fp >= cap / 2**slack
    full = (grid == prob.sizes[None, :]).all(axis=1)
    low = np.zeros((1, level + 1, grid.shape[1]), dtype=np.int64)
    low[0, level] = np.minimum(min_tile(prob, arch), prob.sizes)
    near_min = fp <= float(footprint(prob, low, keep, level).sum()) * scale * 2**slack  # one fold: a short first load
    sel = ok & (big | full | near_min)
    if not sel.any():
        sel = ok
    return grid[sel]


def search(prob: Problem, arch: Arch, objective: str = "latency", beam: int = 8, max_values: int = 12,
           slack: int = 5) -> SearchResult:
    """Best mapping found for ``prob`` on ``arch`` under ``objective`` (latency, energy or edp).

    Level by level from the outside in, each kept partial mapping is extended by every near-maximal
    tile of the next level (bounded by its parent), every loop order of the level above and the
    best-covering spatial split; each extension is completed greedily (largest balanced tiles,
    reduction loops innermost) and costed in full, and the ``beam`` best survive.
    """
    if objective not in OBJECTIVES:
        raise MappingError(f"unknown mapper objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    L, D = len(arch.memory), prob.n_dims
    compute = get_dtype(prob.compute_dtype).compute
    n_lanes = lanes(arch, compute)
    fan = arch.fanouts()
    keep = keep_mask(prob, arch)
    lv = LevelArrays.of(arch)
    orders = _orders(prob)
    red = [d for d in range(D) if not prob.rel[-1, d]]
    # spatial preference: split output dims before reduction dims (no partial-sum traffic)
    prefs = sorted(itertools.permutations(range(D)), key=lambda p: [-p.index(d) for d in red])[:24]
    systolic = arch.matrix.array is not None
    stream = None
    if systolic:
        rows_d, cols_d, stream = systolic_roles(prob, arch.matrix.dataflow or "ws")
        if min(rows_d, cols_d, stream) < 0:
            raise MappingError(f"op {prob.name!r} is not a GEMM-like contraction; a systolic array cannot run it")
    leaf_order = _leaf_order(prob, stream)
    default_order = _leaf_order(prob, None)
    values = [fold_aligned(prob, arch, d, tile_values(int(n), max_values)) for d, n in enumerate(prob.sizes)]
    if stream is not None:  # the stream in 2, 3 or 4 balanced chunks: each chunk re-enters every fold
        n_s = int(prob.sizes[stream])
        values[stream] = np.union1d(values[stream], [-(-n_s // j) for j in (2, 3, 4)])
    grid = np.array(np.meshgrid(*values, indexing="ij")).reshape(D, -1).T  # (G, D)
    grid = unique_rows(np.maximum(grid, min_tile(prob, arch)[None, :]))  # whole folds on a systolic array
    cands = {c: _near_maximal(prob, arch, grid, c, keep, slack) for c in range(1, L)}
    for c, g in cands.items():
        if g.size == 0:
            raise MappingError(
                f"op {prob.name!r}: no tile fits level {arch.memory[c].name!r} "
                f"({arch.memory[c].capacity_bytes:.0f} B per instance); enlarge it or use a smaller dtype"
            )

    def complete(tiles: np.ndarray, spatial: np.ndarray, order: np.ndarray, c: int) -> None:
        """Fill levels below ``c`` greedily and the compute leaf, in place."""
        for lvl in range(c + 1, L):
            parents, inv = unique_rows(tiles[:, lvl - 1], return_inverse=True)
            tiles[:, lvl] = _greedy_tiles(prob, arch, parents, lvl, keep)[inv.reshape(-1)]
            order[:, lvl - 1] = default_order
            chunks = -(-tiles[:, lvl - 1] // tiles[:, lvl])
            spatial[:, lvl - 1] = _spatial_split(chunks, fan[lvl - 1], prefs) if fan[lvl - 1] > 1 else 1
        order[:, L - 1] = leaf_order
        if systolic:
            spatial[:, L - 1] = 1
            rows, cols = arch.matrix.array or (1, 1)
            spatial[:, L - 1, rows_d], spatial[:, L - 1, cols_d] = rows, cols
        else:
            spatial[:, L - 1] = _spatial_split(tiles[:, L - 1], n_lanes, prefs)

    tiles = np.zeros((1, L + 1, D), dtype=np.int64)
    tiles[0, 0] = prob.sizes
    tiles[0, L] = 1
    spatial = np.ones((1, L, D), dtype=np.int64)
    order = np.zeros((1, L, D), dtype=np.int64)
    evaluated = 0
    if L == 1:  # otherwise every level is set by the loop below
        complete(tiles, spatial, order, 0)
    for c in range(1, L):
        parent = tiles[:, c - 1, :]  # (B, D)
        B = parent.shape[0]
        child = np.minimum(cands[c][None, :, :], parent[:, None, :]).reshape(-1, D)
        bi = np.repeat(np.arange(B), cands[c].shape[0])
        uniq = unique_rows(np.concatenate([bi[:, None], child], axis=1))
        bi, child = uniq[:, 0], uniq[:, 1:]
        n_o = orders.shape[0]
        new_tiles = np.repeat(tiles[bi], n_o, axis=0)
        new_tiles[:, c] = np.repeat(child, n_o, axis=0)
        new_order = np.repeat(order[bi], n_o, axis=0)
        new_order[:, c - 1] = np.tile(orders, (bi.size, 1))
        new_spatial = np.repeat(spatial[bi], n_o, axis=0)
        parent_of = np.repeat(bi, n_o)
        chunks = -(-new_tiles[:, c - 1] // new_tiles[:, c])
        new_spatial[:, c - 1] = _spatial_split(chunks, fan[c - 1], prefs) if fan[c - 1] > 1 else 1
        # also on half the instances and on one: a bandwidth-bound op may gain by not splitting a shared
        # operand, and a small one by loading one first tile instead of one per instance
        for share in sorted({fan[c - 1] // 2, 1} - {fan[c - 1]}, reverse=True) if fan[c - 1] > 1 else ():
            fewer = _spatial_split(chunks, share, prefs)
            base = new_spatial[: len(chunks), c - 1]
            differs = (fewer != base).any(axis=1)
            if differs.any():
                extra = new_spatial[: len(chunks)][differs].copy()
                extra[:, c - 1] = fewer[differs]
                new_tiles = np.concatenate([new_tiles, new_tiles[: len(chunks)][differs]])
                new_order = np.concatenate([new_order, new_order[: len(chunks)][differs]])
                new_spatial = np.concatenate([new_spatial, extra])
                parent_of = np.concatenate([parent_of, parent_of[: len(chunks)][differs]])
        # loops of one trip do not matter: keep one order per class of equivalent orders
        single = new_tiles[:, c - 1] <= new_spatial[:, c - 1] * new_tiles[:, c]
        canon = np.argsort(np.argsort(np.where(single, D + np.arange(D), new_order[:, c - 1]), axis=1), axis=1)
        new_order[:, c - 1] = canon
        rows = np.concatenate([parent_of[:, None], new_tiles[:, c], canon, new_spatial[:, c - 1]], axis=1)
        _, first = unique_rows(rows, return_index=True)
        first = np.sort(first)
        new_tiles, new_order, new_spatial = new_tiles[first], new_order[first], new_spatial[first]
        K = first.size
        complete(new_tiles, new_spatial, new_order, c)
        evaluated += K
        costs = evaluate(prob, arch, new_tiles, new_spatial, new_order, keep, lv, exact=False)
        score = _score(objective, costs.cycles, costs.energy_pj)
        keep_idx = np.argsort(score, kind="stable")[:beam]
        tiles, spatial, order = new_tiles[keep_idx], new_spatial[keep_idx], new_order[keep_idx]
        costs = NestCosts(*(getattr(costs, f)[keep_idx] for f in NestCosts.__dataclass_fields__))
    if L == 1 or costs.padded.any():  # exact counts for the finalists (padded ones were an upper bound)
        costs = evaluate(prob, arch, tiles, spatial, order, keep, lv)
    best = int(np.argmin(_score(objective, costs.cycles, costs.energy_pj)))
    names = tuple(x.name for x in arch.memory) + ("lanes",)
    mapping = Mapping.from_arrays(prob.dims, names, tiles[best], spatial[best], order[best], keep,
                                  arch.matrix.dataflow if systolic else None)
    one = NestCosts(*(getattr(costs, f)[best : best + 1] for f in NestCosts.__dataclass_fields__))
    return SearchResult(mapping, one, evaluated)


def replay_costs(prob: Problem, arch: Arch, mapping: Mapping) -> NestCosts:
    """Cost of one given mapping (e.g. read back from a saved result)."""
    tiles, spatial, order, keep = (a[None] for a in mapping.arrays())
    return evaluate(prob, arch, tiles, spatial, order, keep[0])


__all__ = ["OBJECTIVES", "SearchResult", "compute_cycles", "replay_costs", "search", "tile_values"]
