"""A mapping of one operator onto a device's hierarchy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Mapping:
    """Tiles, spatial factors, loop orders and bypass of one op on one device.

    ``dims``: the op's canonical (merged) dimensions; ``levels``: memory level names, outermost
    first, then ``"lanes"`` for the compute leaf; ``tiles[l][d]``: tile of dim d held by one
    instance of level l; ``spatial[l][d]``: child instances used per dim below level l;
    ``order[l][d]``: rank of dim d's temporal loop at level l (0 = outermost); ``keep[l][t]``:
    level l stores tensor t (inputs then output); ``dataflow``: systolic dataflow, if any.
    """

    dims: tuple[str, ...]
    levels: tuple[str, ...]
    tiles: tuple[tuple[int, ...], ...]
    spatial: tuple[tuple[int, ...], ...]
    order: tuple[tuple[int, ...], ...]
    keep: tuple[tuple[bool, ...], ...]
    dataflow: str | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tiles, spatial, order, keep) as numpy arrays, for the cost model and the replay."""
        return (np.array(self.tiles, dtype=np.int64), np.array(self.spatial, dtype=np.int64),
                np.array(self.order, dtype=np.int64), np.array(self.keep, dtype=bool))

    @classmethod
    def from_arrays(cls, dims, levels, tiles, spatial, order, keep, dataflow=None) -> Mapping:
        def tup(a):
            return tuple(tuple(x.item() for x in row) for row in np.asarray(a))

        return cls(tuple(dims), tuple(levels), tup(tiles), tup(spatial), tup(order), tup(keep), dataflow)

    def to_dict(self) -> dict[str, Any]:
        """Readable form: per level, the tile, spatial split and loop order (outer to inner)."""
        out = []
        for i, name in enumerate(self.levels):
            row: dict[str, Any] = {"level": name, "tile": dict(zip(self.dims, self.tiles[i], strict=True))}
            if i < len(self.spatial):
                row["spatial"] = {d: s for d, s in zip(self.dims, self.spatial[i], strict=True) if s > 1}
                row["loop_order"] = [self.dims[d] for d in np.argsort(self.order[i], kind="stable")]
            out.append(row)
        return {"dims": list(self.dims), "dataflow": self.dataflow, "levels": out}
