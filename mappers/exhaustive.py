"""Exact mapper: exhaustive search of the whole mapspace with provable pruning.

The mapspace of an Einsum on the hierarchy: at every level, a tile per dimension (every integer
from 1 to the parent's extent — all factorisations and padded non-divisors — or only divisors),
the loop order of the level above, the spatial split over its children (every vector within the
fan-out) and, optionally, which levels bypass which tensors. The search goes level by level from
the outside in and keeps a partial mapping only if a lower bound of every completion can still
beat the best complete mapping found so far (branch and bound, seeded with the default mapper's
result). Pruning that never loses the optimum:

* **capacity** — a tile that does not fit its level is infeasible, and so is every completion;
* **symmetry** — loop orders that differ only in loops of one trip are the same nest; a spatial
  factor larger than the number of child chunks leaves instances idle and equals the capped one;
* **bound** — once a level's children are fixed its traffic is exact (see ``sim/nest.py``), so the
  partial cycles (slowest complete level, the compute lower bound) and partial energy only grow
  as the mapping is completed.

``mode='sampled'`` draws random complete mappings within a time budget instead, for spaces too
large to enumerate.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import MappingError
from ..sim.compute import lanes, min_tile, systolic_roles
from ..sim.cost import LevelArrays, NestCosts, evaluate, fits, ideal_compute_cycles, keep_mask
from ..sim.nest import analyse
from ..sim.problem import Problem
from .mapping import Mapping
from .search import OBJECTIVES, SearchResult, _score, search


def _tile_options(parent: int, divisors_only: bool, low: int = 1) -> np.ndarray:
    """Tiles of a dim under a parent tile: 1..parent (or its divisors), none below ``low``."""
    vals = np.arange(min(low, parent), parent + 1)
    return vals[parent % vals == 0] if divisors_only else vals


def _spatial_options(chunks: np.ndarray, fanout: int) -> np.ndarray:
    """Every spatial vector s with 1 <= s_d <= chunks_d and prod(s) <= fanout."""
    ranges = [range(1, int(min(c, fanout)) + 1) for c in chunks]
    out = [s for s in itertools.product(*ranges) if math.prod(s) <= fanout]
    return np.array(out, dtype=np.int64).reshape(-1, len(chunks))


def _canonical_orders(D: int) -> np.ndarray:
    out = []
    for perm in itertools.permutations(range(D)):
        rank = np.empty(D, dtype=np.int64)
        rank[list(perm)] = np.arange(D)
        out.append(rank)
    return np.array(out)


def _keep_options(prob: Problem, arch: Arch, bypass: bool) -> list[list[np.ndarray]]:
    """Per level, the keep rows to try: the level's served operands, or with ``bypass`` every
    subset of them."""
    mask = keep_mask(prob, arch)
    if not bypass:
        return [[row] for row in mask]
    return [[np.array(k, dtype=bool) for k in itertools.product([True, False], repeat=prob.n_tensors)
             if not np.any(np.array(k) & ~row)] for row in mask]


def _expand(states: list[tuple], c: int, L: int, D: int, prob: Problem, arch: Arch, keep_opts, fan, leaf_fan,
            orders, divisors_only, systolic, rows_cols, max_states: int = 2_000_000
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All children of the partial mappings ``states`` at depth ``c`` (tile of level c, order and
    spatial split of level c-1, keep row of level c), capacity- and symmetry-pruned. Raises before
    enumerating when the tile choices alone exceed ``max_states``."""
    T_list, S_list, O_list, K_list = [], [], [], []
    low = min_tile(prob, arch)
    if c < L:
        n_tiles = sum(math.prod(len(_tile_options(int(p), divisors_only, int(lo))) for p, lo in zip(t[c - 1], low, strict=True))
                      for t, *_ in states)
        if n_tiles * len(keep_opts[c]) > max_states:
            raise MappingError(f"mapspace too large to enumerate (over {n_tiles * len(keep_opts[c]):.3g} tilings at level "
                               f"{arch.memory[c].name!r}); use the default or sampled mapper, or divisor-only tiles")
    for tiles, spatial, order, keep in states:
        parent = tiles[c - 1]
        if c < L:
            child_opts = np.array(list(itertools.product(*[_tile_options(int(p), divisors_only, int(lo))
                                                             for p, lo in zip(parent, low, strict=True)])))
        else:
            child_opts = np.ones((1, D), dtype=np.int64)
        krows = keep_opts[c] if c < L else [np.ones(prob.n_tensors, dtype=bool)]
        for krow in krows:
            kk = keep.copy()
            if c < L:
                kk[c] = krow
                probe = np.zeros((child_opts.shape[0], c + 1, D), dtype=np.int64)
                probe[:, c] = child_opts
                ok = fits(prob, arch, probe, kk, c)
                childs = child_opts[ok]
            else:
                childs = child_opts
            for child in childs:
                chunks = -(-parent // child)
                if c == L and systolic:
                    sp_opts = np.ones((1, D), dtype=np.int64)
                    rd, cd = rows_cols[0]
                    sp_opts[0, rd], sp_opts[0, cd] = rows_cols[1]
                else:
                    f = fan[c - 1] if c < L else leaf_fan
                    sp_opts = _spatial_options(chunks, f)
                for sp in sp_opts:
                    single = parent <= sp * child
                    seen = set()
                    for o in orders:
                        key = tuple(np.where(single, -1, o))
                        if key in seen:
                            continue
                        seen.add(key)
                        t2, s2, o2 = tiles.copy(), spatial.copy(), order.copy()
                        t2[c] = child
                        s2[c - 1] = sp
                        o2[c - 1] = o
                        T_list.append(t2)
                        S_list.append(s2)
                        O_list.append(o2)
                        K_list.append(kk)
    if not T_list:
        return (np.zeros((0, L + 1, D), np.int64),) * 3 + (np.zeros((0, L, prob.n_tensors), bool),)
    return np.array(T_list), np.array(S_list), np.array(O_list), np.array(K_list)


def exhaustive_search(prob: Problem, arch: Arch, objective: str = "latency", divisors_only: bool = False,
                      bypass: bool = False, max_states: int = 2_000_000) -> SearchResult:
    """The optimal mapping of ``prob`` on ``arch`` (exact within the mapspace; see module doc)."""
    if objective not in OBJECTIVES:
        raise MappingError(f"unknown mapper objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    L, D, T = len(arch.memory), prob.n_dims, prob.n_tensors
    lv = LevelArrays.of(arch)
    fan = arch.fanouts()
    leaf_fan = lanes(arch, get_dtype(prob.compute_dtype).compute)
    systolic = arch.matrix.array is not None
    rows_cols = None
    stream = None
    if systolic:
        rd, cd, stream = systolic_roles(prob, arch.matrix.dataflow or "ws")
        rows_cols = ((rd, cd), arch.matrix.array)
    orders = _canonical_orders(D)
    keep_opts = _keep_options(prob, arch, bypass)
    incumbent = search(prob, arch, objective)
    inc_score = float(_score(objective, incumbent.costs.cycles, incumbent.costs.energy_pj)[0])
    if divisors_only:  # the seed bounds the search only if it lies in the restricted mapspace
        t = np.array(incumbent.mapping.tiles)
        if np.any(t[:-2] % np.maximum(t[1:-1], 1)):
            inc_score = math.inf
    ideal = ideal_compute_cycles(arch, prob)
    mac_e = arch.matrix.energy(get_dtype(prob.compute_dtype).compute) * prob.macs

    tiles0 = np.zeros((L + 1, D), dtype=np.int64)
    tiles0[0] = prob.sizes
    tiles0[L] = 1
    states = [(tiles0, np.ones((L, D), np.int64), np.zeros((L, D), np.int64), np.ones((L, T), bool))]
    evaluated = 0
    best = None
    for c in range(1, L + 1):
        tiles, spatial, order, keep = _expand(states, c, L, D, prob, arch, keep_opts, fan, leaf_fan, orders,
                                              divisors_only, systolic, rows_cols, max_states)
        K = tiles.shape[0]
        evaluated += K
        if K > max_states:
            raise MappingError(f"mapspace too large to enumerate ({K} partial mappings at level {c}); "
                               "use the default or sampled mapper")
        if K == 0:
            break
        if c == L:
            score = np.empty(K)
            by_keep: dict[bytes, list[int]] = {}
            for i in range(K):
                by_keep.setdefault(keep[i].tobytes(), []).append(i)
            for idx in by_keep.values():
                ix = np.array(idx)
                cst = evaluate(prob, arch, tiles[ix], spatial[ix], order[ix], keep[ix[0]], lv)
                score[ix] = _score(objective, cst.cycles, cst.energy_pj)
            i = int(np.argmin(score))
            if score[i] <= inc_score:
                best = (tiles[i], spatial[i], order[i], keep[i])
            break
        # lower bound of every completion of each partial mapping
        lb_c = np.empty(K)
        lb_e = np.empty(K)
        groups: dict[bytes, list[int]] = {}
        for i in range(K):
            groups.setdefault(keep[i].tobytes(), []).append(i)
        for idx in groups.values():
            ix = np.array(idx)
            kk = keep[ix[0]]
            tr = analyse(prob, tiles[ix, : c + 1], spatial[ix, :c], order[ix, :c], kk[:c], lv.multicast[:c])
            lcyc = (tr.reads + tr.writes) / (lv.bw_bytes_per_cycle[None, :c] * tr.used[:, :c])
            below = math.prod(fan[c:-1]) * leaf_fan
            comp = tr.steps * -(-np.prod(tiles[ix, c], axis=1) // below)
            lb_c[ix] = np.maximum.reduce([lcyc.max(axis=1), comp.astype(float), np.full(ix.size, ideal)])
            lb_e[ix] = (tr.reads * lv.read_pj[None, :c] + tr.writes * lv.write_pj[None, :c]).sum(axis=1) + mac_e
        alive = _score(objective, lb_c, lb_e) <= inc_score * (1 + 1e-12)
        states = [(tiles[i], spatial[i], order[i], keep[i]) for i in np.flatnonzero(alive)]
        if not states:
            break
    if best is None and math.isinf(inc_score):
        raise MappingError(f"op {prob.name!r}: no mapping of the restricted mapspace fits {arch.name!r}")
    if best is None:  # the incumbent is optimal
        return SearchResult(incumbent.mapping, incumbent.costs, evaluated + incumbent.evaluated)
    t, sp_, o, k = best
    names = tuple(x.name for x in arch.memory) + ("lanes",)
    mapping = Mapping.from_arrays(prob.dims, names, t, sp_, o, k, arch.matrix.dataflow if systolic else None)
    cost = evaluate(prob, arch, t[None], sp_[None], o[None], k, lv)
    return SearchResult(mapping, cost, evaluated + incumbent.evaluated)


def brute_force(prob: Problem, arch: Arch, objective: str = "latency", divisors_only: bool = False,
                bypass: bool = False) -> tuple[float, int]:
    """Reference for tests: cost every mapping of the mapspace without any pruning but capacity;
    returns (best score, number of complete mappings)."""
    L, D, T = len(arch.memory), prob.n_dims, prob.n_tensors
    lv = LevelArrays.of(arch)
    fan = arch.fanouts()
    leaf_fan = lanes(arch, get_dtype(prob.compute_dtype).compute)
    orders = _canonical_orders(D)
    keep_opts = _keep_options(prob, arch, bypass)
    low = min_tile(prob, arch)
    tiles0 = np.zeros((L + 1, D), dtype=np.int64)
    tiles0[0] = prob.sizes
    tiles0[L] = 1
    states = [(tiles0, np.ones((L, D), np.int64), np.zeros((L, D), np.int64), np.ones((L, T), bool))]
    for c in range(1, L + 1):
        new = []
        for tiles, spatial, order, keep in states:
            parent = tiles[c - 1]
            childs = [np.ones(D, np.int64)] if c == L else [np.array(x) for x in itertools.product(
                *[_tile_options(int(p), divisors_only, int(lo)) for p, lo in zip(parent, low, strict=True)])]
            for krow in (keep_opts[c] if c < L else [None]):
                kk = keep.copy()
                if krow is not None:
                    kk[c] = krow
                for child in childs:
                    if c < L:
                        probe = np.zeros((1, c + 1, D), np.int64)
                        probe[0, c] = child
                        if not fits(prob, arch, probe, kk, c)[0]:
                            continue
                    f = fan[c - 1] if c < L else leaf_fan
                    ranges = [range(1, f + 1)] * D
                    if c == L and arch.matrix.array is not None:  # the array fixes the leaf split
                        rd, cd, _ = systolic_roles(prob, arch.matrix.dataflow or "ws")
                        ranges = [range(1, 2)] * D
                        ranges[rd], ranges[cd] = [range(x, x + 1) for x in arch.matrix.array]
                    for sp in itertools.product(*ranges):
                        if math.prod(sp) > f:
                            continue
                        for o in orders:
                            t2, s2, o2 = tiles.copy(), spatial.copy(), order.copy()
                            t2[c], s2[c - 1], o2[c - 1] = child, sp, o
                            new.append((t2, s2, o2, kk))
        states = new
    groups: dict[bytes, list[int]] = {}
    for i, st in enumerate(states):
        groups.setdefault(st[3].tobytes(), []).append(i)
    best = math.inf
    for idx in groups.values():
        tl = np.array([states[i][0] for i in idx])
        spl = np.array([states[i][1] for i in idx])
        od = np.array([states[i][2] for i in idx])
        cost = evaluate(prob, arch, tl, spl, od, np.asarray(states[idx[0]][3]), lv)
        best = min(best, float(_score(objective, cost.cycles, cost.energy_pj).min()))
    return best, len(states)


def sampled_search(prob: Problem, arch: Arch, objective: str = "latency", budget_s: float = 1.0,
                   seed: int = 0) -> SearchResult:
    """Random complete mappings (tiles, orders, spatial splits) drawn in batches until ``budget_s``
    seconds have passed; the best of them and of the default mapper's result. Deterministic for a
    seed up to the number of batches the budget allows."""
    rng = np.random.default_rng(seed)
    best = search(prob, arch, objective)
    best_score = float(_score(objective, best.costs.cycles, best.costs.energy_pj)[0])
    L, D = len(arch.memory), prob.n_dims
    lv = LevelArrays.of(arch)
    fan = arch.fanouts()
    leaf_fan = lanes(arch, get_dtype(prob.compute_dtype).compute)
    keep = keep_mask(prob, arch)
    start, evaluated, n = time.perf_counter(), best.evaluated, 4096
    while time.perf_counter() - start < budget_s:
        tiles = np.zeros((n, L + 1, D), dtype=np.int64)
        tiles[:, 0] = prob.sizes
        tiles[:, L] = 1
        spatial = np.ones((n, L, D), dtype=np.int64)
        order = np.argsort(rng.random((n, L, D)), axis=2).argsort(axis=2)
        low = min_tile(prob, arch)[None, :]
        for c in range(1, L):
            lo = np.minimum(low, tiles[:, c - 1])
            tiles[:, c] = lo + np.floor(rng.random((n, D)) * (tiles[:, c - 1] - lo + 1)).astype(np.int64)
        for c in range(L):
            f = fan[c] if c < L - 1 else leaf_fan
            chunks = -(-tiles[:, c] // np.maximum(tiles[:, c + 1], 1))
            budget = np.full(n, f)
            for d in rng.permutation(D):
                s = 1 + np.floor(rng.random(n) * np.minimum(chunks[:, d], budget)).astype(np.int64)
                spatial[:, c, d] = s
                budget = np.maximum(budget // s, 1)
        if arch.matrix.array is not None:
            rd, cd, _ = systolic_roles(prob, arch.matrix.dataflow or "ws")
            spatial[:, L - 1] = 1
            spatial[:, L - 1, rd], spatial[:, L - 1, cd] = arch.matrix.array
        ok = np.ones(n, dtype=bool)
        for c in range(1, L):
            ok &= fits(prob, arch, tiles, keep, c)
        if ok.any():
            costs = evaluate(prob, arch, tiles[ok], spatial[ok], order[ok], keep, lv)
            score = _score(objective, costs.cycles, costs.energy_pj)
            i = int(np.argmin(score))
            evaluated += int(ok.sum())
            if score[i] < best_score:
                best_score = float(score[i])
                idx = np.flatnonzero(ok)[i]
                names = tuple(x.name for x in arch.memory) + ("lanes",)
                m = Mapping.from_arrays(prob.dims, names, tiles[idx], spatial[idx], order[idx], keep,
                                        arch.matrix.dataflow)
                best = SearchResult(m, NestCosts(*(getattr(costs, f)[i:i + 1] for f in NestCosts.__dataclass_fields__)),
                                    evaluated)
    return SearchResult(best.mapping, best.costs, evaluated)
