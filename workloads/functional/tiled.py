"""Tile-by-tile execution of a mapped Einsum, counting the bytes every memory level moves.

This executes the loop nest that a mapping describes (see :mod:`xpusim.sim.nest` for the
semantics): per level, temporal loops in the mapping's order, then a spatial split over child
instances; each instance holds one tile per tensor in a buffer tagged by the indices of the loops
the tile depends on, and re-fetches when the tag changes. Output partial sums live in buffers that
are flushed (accumulated into the parent) when their tag changes and at the end. The result is
computed from the buffers' real contents, so a wrong schedule gives a wrong answer.

Inputs are plain arrays: ``sizes`` (D,), ``rel`` (T, D) bool (inputs then output), ``operands`` the
input arrays laid out in dimension order. Meant for small problems (tests), not for speed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TiledRun:
    """Result of a tiled execution: the output array and bytes read/written per storage level;
    ``peak_bytes`` (L, T): the most bytes of each tensor one instance of each level held at once
    (inputs at their element size, outputs as partial sums at ``acc_bytes``) and ``peak_total`` (L,):
    the most of all tensors together, both measured on the executed buffers (level 0, the backing
    store, is not measured); ``leaf_visits``: leaf tiles computed by the busiest leaf instance."""

    output: np.ndarray
    reads: np.ndarray
    writes: np.ndarray
    macs: int = 0
    fetches: dict[tuple[int, int], int] = field(default_factory=dict)
    peak_bytes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    peak_total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    leaf_visits: int = 0


def _loops(tiles: np.ndarray, spatial: np.ndarray, order: np.ndarray) -> list[tuple[str, int, int]]:
    """Flattened loops outer to inner: ('t', level, dim) temporal, ('s', level, dim) spatial."""
    L, D = spatial.shape
    out: list[tuple[str, int, int]] = []
    for lv in range(L):
        out += [("t", lv, int(d)) for d in np.argsort(order[lv], kind="stable")]
        out += [("s", lv, d) for d in range(D)]
    return out


def execute_tiled(sizes, rel, elem_bytes, acc_bytes, operands, tiles, spatial, order, keep, multicast,
                  forward_leaf: bool = False) -> TiledRun:
    """Run the loop nest; see the module docstring. Shapes as in :func:`xpusim.sim.nest.analyse`
    for one candidate (no leading C axis). ``forward_leaf``: the leaf's split is a systolic array,
    whose PEs share one read of their source (operands forwarded, partial sums reduced in the array)."""
    sizes = np.asarray(sizes)
    rel = np.asarray(rel, dtype=bool)
    tiles, spatial, order = np.asarray(tiles), np.asarray(spatial), np.asarray(order)
    keep = np.asarray(keep, dtype=bool)
    T, D = rel.shape
    L = spatial.shape[0]
    out_t = T - 1
    loops = _loops(tiles, spatial, order)
    pos_of = {(k, lv, d): i for i, (k, lv, d) in enumerate(loops)}
    step = spatial * tiles[1:]  # temporal step per level

    # stationarity point of tensor t at level c: innermost temporal loop (levels < c) over a dim
    # t indexes with more than one trip
    pstar = np.full((T, L + 1), -1)
    for t, c in itertools.product(range(T), range(1, L + 1)):
        cands = [pos_of[("t", lv, d)] for lv in range(c) for d in range(D) if rel[t, d] and tiles[lv, d] > step[lv, d]]
        pstar[t, c] = max(cands, default=-1)
    chains = [[lv for lv in range(L) if keep[lv, t]] + [L] for t in range(T)]
    src_of = {(t, c): ch[i - 1] for t, ch in enumerate(chains) for i, c in enumerate(ch) if i > 0}

    reads = np.zeros(L)
    writes = np.zeros(L)
    out_shape = tuple(sizes[rel[out_t]])
    total_red = int(np.prod(sizes[~rel[out_t]]))
    result = np.zeros(out_shape)
    done = np.zeros(out_shape, dtype=np.int64)  # reduction points already in level 0's value
    updates0 = np.zeros(out_shape, dtype=np.int64)  # updates each element of level 0 received
    held: dict[tuple[int, int, tuple], tuple] = {}  # (t, c, instance) -> tag of the held tile
    served: set = set()
    obuf: dict[tuple[int, tuple], dict] = {}  # (level, instance) -> output buffer of the current visit
    reduced: set = set()
    fetches: dict[tuple[int, int], int] = {}
    macs = 0
    peak = np.zeros((L, T))
    peak_total = np.zeros(L)
    visits: dict[tuple, int] = {}

    def shared_from(p: int, c: int) -> int | None:
        """The level below which children of source ``p`` share one read (None: each reads its own):
        ``p`` when it multicasts, the array's split when level ``c`` is a forwarding leaf."""
        return p if multicast[p] else L - 1 if forward_leaf and c == L else None

    def region_slices(ranges: list[tuple[int, int]], t: int) -> tuple[slice, ...]:
        return tuple(slice(*ranges[d]) for d in range(D) if rel[t, d])

    def deliver(c: int, inst: tuple, buf: dict) -> None:
        """Accumulate a flushed output tile of level c into its source level."""
        p = src_of[(out_t, c)]
        lo, hi = buf["box"]
        n = int(np.prod([b - a for a, b in zip(lo, hi, strict=True)]))
        share = shared_from(p, c)
        key = (c, buf["tag"], inst[:p if share is None else share], lo, hi)
        if share is not None and key in reduced:
            merged = True
        else:
            merged = False
            reduced.add(key)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if p == 0:
            if not merged:
                updates0[sl] += 1
            result[sl] += buf["data"]
            done[sl] += buf["count"]
            return
        parent = obuf[(p, inst[:p])]
        plo = parent["box"][0]
        psl = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, plo, strict=True))
        if not merged:
            touched = parent["touched"][psl]
            reads[p] += np.count_nonzero(touched) * acc_bytes
            writes[p] += n * acc_bytes
            touched[...] = True
        parent["data"][psl] += buf["data"]
        parent["count"][psl] += buf["count"]

    def flush(c: int, inst: tuple) -> None:
        # descendants still holding partial sums of this tile go first (innermost first)
        for cc in range(L, c, -1):
            for key in sorted((k for k in obuf if k[0] == cc and k[1][:c] == inst), key=str):
                flush(*key)
        buf = obuf.pop((c, inst), None)
        if buf is None:
            return
        if c < L:
            reads[c] += buf["data"].size * acc_bytes
        deliver(c, inst, buf)

    def visit(ranges_by_level, tidx, inst):
        nonlocal macs
        # evictions of outputs whose tag changed, innermost first
        tags = {}
        for c in range(L, 0, -1):
            if c < L and not keep[c, out_t]:
                continue
            ci = inst[:c]
            tag = tuple(tidx[i] for i in range(pstar[out_t, c] + 1) if loops[i][0] == "t")
            lo = tuple(r[0] for d, r in enumerate(ranges_by_level[c]) if rel[out_t, d])
            hi = tuple(r[1] for d, r in enumerate(ranges_by_level[c]) if rel[out_t, d])
            tags[c] = (tag, lo, hi)
            if (c, ci) in obuf and (obuf[(c, ci)]["tag"], *obuf[(c, ci)]["box"]) != (tag, lo, hi):
                flush(c, ci)
        for c in range(1, L + 1):
            if c in tags and (c, inst[:c]) not in obuf:
                tag, lo, hi = tags[c]
                shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
                obuf[(c, inst[:c])] = {"tag": tag, "box": (lo, hi), "data": np.zeros(shape),
                                       "count": np.zeros(shape, dtype=np.int64), "touched": np.zeros(shape, bool)}
        # input fetches
        for t in range(T - 1):
            for c in chains[t][1:]:
                ci = inst[:c]
                tag = tuple(tidx[i] for i in range(pstar[t, c] + 1) if loops[i][0] == "t")
                box = tuple(ranges_by_level[c][d] for d in range(D) if rel[t, d])
                if held.get((t, c, ci)) == (tag, box):
                    continue
                held[(t, c, ci)] = (tag, box)
                n = int(np.prod([b - a for a, b in box]))
                fetches[(t, c)] = fetches.get((t, c), 0) + n
                if c < L:
                    writes[c] += n * elem_bytes[t]
                p = src_of[(t, c)]
                share = shared_from(p, c)
                key = (t, c, tag, inst[:p if share is None else share], box)
                if not (share is not None and key in served):
                    reads[p] += n * elem_bytes[t]
                    served.add(key)
        # what each instance of this visit's levels holds now: its input tiles and its output buffer
        for c in range(1, L):
            now = np.zeros(T)
            for t in range(T - 1):
                box = held.get((t, c, inst[:c]))
                if keep[c, t] and box is not None:
                    now[t] = int(np.prod([b - a for a, b in box[1]])) * elem_bytes[t]
            ob = obuf.get((c, inst[:c]))
            if ob is not None:
                now[out_t] = ob["data"].size * acc_bytes
            peak[c] = np.maximum(peak[c], now)
            peak_total[c] = max(peak_total[c], now.sum())
        visits[inst] = visits.get(inst, 0) + 1
        # compute the leaf tile
        leaf = ranges_by_level[L]
        args = []
        for t in range(T - 1):
            args.append(operands[t][region_slices(leaf, t)])
        letters = "abcdefghijklmnopqrstuvwxyz"
        subs = ",".join("".join(letters[d] for d in range(D) if rel[t, d]) for t in range(T - 1))
        outs = "".join(letters[d] for d in range(D) if rel[out_t, d])
        part = np.einsum(f"{subs}->{outs}", *args)
        buf = obuf[(L, inst)]
        lo = buf["box"][0]
        olo = tuple(leaf[d][0] for d in range(D) if rel[out_t, d])
        ohi = tuple(leaf[d][1] for d in range(D) if rel[out_t, d])
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(olo, ohi, lo, strict=True))
        buf["data"][sl] += part
        red = int(np.prod([leaf[d][1] - leaf[d][0] for d in range(D) if not rel[out_t, d]]))
        buf["count"][sl] += red
        macs += int(np.prod([r[1] - r[0] for r in leaf]))

    # instances are identified by the spatial indices of every boundary above a level
    def walk_with_inst(i, ranges, levels, tidx, inst):
        if i == len(loops):
            visit(levels + [list(ranges)], tidx, tuple(inst))
            return
        kind, lv, d = loops[i]
        if kind == "t" and (i == 0 or loops[i - 1][0] == "s"):
            levels = levels + [list(ranges)]
        a, b = ranges[d]
        st = int(step[lv, d]) if kind == "t" else int(tiles[lv + 1, d])
        for j, lo in enumerate(range(a, b, st)):
            nr = list(ranges)
            nr[d] = (lo, min(lo + st, b))
            if kind == "t":
                walk_with_inst(i + 1, nr, levels, tidx + [j], inst)
            else:
                # spatial index of boundary lv accumulates into the instance id of level lv+1
                new_inst = list(inst)
                new_inst[lv] = new_inst[lv] + (j,)
                walk_with_inst(i + 1, nr, levels, tidx + [None], new_inst)

    walk_with_inst(0, [(0, int(n)) for n in sizes], [], [], [()] * L)
    for c in range(L, 0, -1):
        for key in sorted([k for k in obuf if k[0] == c], key=str):
            flush(*key)
    if not np.all(done == total_red):
        raise AssertionError("tiled execution did not accumulate every reduction point exactly once")
    extra = float((updates0 - 1).sum())
    reads[0] += extra * acc_bytes
    writes[0] += extra * acc_bytes + updates0.size * elem_bytes[out_t]
    return TiledRun(result, reads, writes, macs, fetches, peak, peak_total, max(visits.values(), default=0))
