"""The units a wafer placement packs and what each costs a core: the trace's blocks unrolled into
units (the embedding, each layer, the head) with their weight and KV bytes, the padded tiles their
contractions store on a region (the fullest core's bytes, :func:`unit_core_bytes`), and the working
buffers the largest contraction reserves per core (:func:`largest_buffers`). Used by
:mod:`~xpusim.sim.wafer_placement`, which packs the units into stages and regions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..arch.spec import Arch
from ..arch.wafer import wafer_spec
from ..dtypes import get_dtype
from ..mappers.pim import Gemv
from ..mappers.wafer import (
    MESH_ALGORITHMS,
    as_gemv,
    parallelism,
    square_sides,
    stored_copies,
    stored_square,
    stored_tile_bytes,
    working_bytes,
)
from ..workloads.trace import Trace


@dataclass(frozen=True)
class Unit:
    """One placed piece of the model: a block instance (``block`` index ``i`` of its repeats)."""

    block: str
    index: int
    weight_bytes: float
    kv_bytes: float


def _is_moe(block: Any) -> bool:
    return any(op.attrs.get("moe_group") is not None or op.name.startswith("expert") for op in block.ops)


def units_of(trace: Trace, weights_total: float, kv_total: float, embedding_bytes: float = 0.0) -> list[Unit]:
    """The trace's blocks unrolled into units with their weight and KV bytes. An embedding gather
    reads a few rows; its unit holds the whole input table (``embedding_bytes``: the token and any
    learned-position table, :attr:`~xpusim.workloads.model.ModelSpec.input_embedding_params`; the
    LM head is the head block's own weight, and a tied model's token table lives there). A mixture of
    experts' trace reads only the routed experts: the weights it still misses (``weights_total`` less
    the rest) are added to its MoE blocks, evenly per instance; a model without MoE blocks has its
    units scaled to ``weights_total`` (a no-op when the trace holds every parameter)."""
    rows = []
    for b in trace.blocks:
        w = sum(op.tensor_bytes(t) for op in b.ops for t in op.inputs if t.role == "weight")
        if embedding_bytes and any(op.kind == "embedding" for op in b.ops):
            w += embedding_bytes - sum(op.tensor_bytes(t) for op in b.ops if op.kind == "embedding"
                                       for t in op.inputs if t.role == "weight")
        kv = sum(1 for op in b.ops for t in op.inputs if t.role == "kv")
        rows.append((b, w, kv))
    w_sum = sum(w * b.repeat for b, w, _ in rows)
    kv_sum = sum(kv * b.repeat for b, _, kv in rows) or 1.0
    moe_instances = sum(b.repeat for b, _, _ in rows if _is_moe(b))
    missing = max(0.0, weights_total - w_sum)
    extra = missing / moe_instances if moe_instances else 0.0
    scale = weights_total / w_sum if (w_sum and not moe_instances) else 1.0
    return [Unit(b.name, i, w * scale + (extra if _is_moe(b) else 0.0), kv * kv_total / kv_sum)
            for b, w, kv in rows for i in range(b.repeat)]


def model_units(model: Any, trace: Trace, kv_total: float) -> list[Unit]:
    """:func:`units_of` for ``model``'s trace: the embedding unit holds the input tables
    (``input_embedding_params``; a tied model's token table is its LM head's weight, in the head unit)."""
    tables = model.input_embedding_params - (model.vocab_size * model.d_model if model.tied_embeddings else 0)
    return units_of(trace, model.weights_bytes, kv_total, tables * get_dtype(model.embedding_dtype).bytes)


def stored_matrices(block: Any, arch: Arch) -> dict[str, tuple[str, list[tuple[Any, Gemv, int]], float]]:
    """The matrices a block's contractions keep stored (a weight or the KV cache: ``as_gemv``'s
    matrix operand): per tensor name, its role, the ``(op, gemv, copies)`` that store it
    (:func:`~xpusim.mappers.wafer.stored_copies`: every expert of a mixture) and the bytes those
    copies hold. A tensor two ops read (MLA's latent) is stored once."""
    out: dict[str, tuple[str, list[tuple[Any, Gemv, int]], float]] = {}
    for op in block.ops:
        if op.kind != "matmul" or len(op.inputs) != 2:
            continue
        g = as_gemv(op, arch)
        copies = stored_copies(op, g)
        if copies is None:
            continue
        role, users, held = out.get(g.matrix, (next(t.role for t in op.inputs if t.name == g.matrix), [], 0.0))
        out[g.matrix] = (role, users + [(op, g, copies)], max(held, copies * g.n * g.k * g.w_bytes))
    return out


def _tile(op: Any, g: Gemv, copies: int, region: Arch, mapping: dict[str, Any] | None, objective: str) -> float:
    """A stored matrix's bytes on the fullest core of ``region``'s mesh: at the square and algorithm
    ``mapping`` ran, else at the square the mapper picks with nothing else resident
    (:func:`~xpusim.mappers.wafer.stored_square`; on the placed region the op may only take squares
    that store no more), else (no mapping fits the bare mesh) the largest any candidate stores."""
    spec = wafer_spec(region)
    w, h = spec.width, spec.height
    if mapping and "p" in mapping:
        return stored_tile_bytes(g, w, h, int(mapping["p"]), copies, mapping.get("algorithm"))
    home = stored_square(op, region, objective)
    if home is not None:
        return stored_tile_bytes(g, w, h, home, copies)
    return max(stored_tile_bytes(g, w, h, p, copies) for p in square_sides(g, w, h))


def unit_core_bytes(units: list[Unit], trace: Trace, region: Arch, mappings: dict[str, Any] | None = None,
                    objective: str = "latency") -> list[tuple[float, float]]:
    """Per unit, the (weight, KV) bytes the fullest core of ``region`` (:func:`region_arch`, or the
    whole mesh) holds: every matrix its block's contractions store, as the ceil-padded tiles of their
    layout (:func:`~xpusim.mappers.wafer.stored_tile_bytes`: the region's origin core holds a full tile
    of each) at the squares ``mappings`` (``block.op``) ran them on, else where the mapper stores them
    (:func:`_tile`); the rest of the unit's bytes (norm gains, the embedding table) spread evenly over
    the region's cores. A forced naive baseline is placed as the mesh-aware mappings store."""
    if forced_algorithm(region) == "naive":
        region = dataclasses.replace(region, rules={k: v for k, v in region.rules.items() if k != "wafer_algorithm"})
    spec = wafer_spec(region)
    cores = spec.width * spec.height
    per_block: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for b in trace.blocks:
        tiles, held = {"weight": 0.0, "kv": 0.0}, {"weight": 0.0, "kv": 0.0}
        for role, users, nbytes in stored_matrices(b, region).values():
            tiles[role] += max(_tile(op, g, c, region, (mappings or {}).get(f"{b.name}.{op.name}"), objective)
                               for op, g, c in users)
            held[role] += nbytes
        per_block[b.name] = (tiles, held)
    out = []
    for u in units:
        tiles, held = per_block[u.block]
        out.append((tiles["weight"] + max(0.0, u.weight_bytes - held["weight"]) / cores,
                    tiles["kv"] + max(0.0, u.kv_bytes - held["kv"]) / cores))
    return out


def largest_buffers(trace: Trace, arch: Arch, w: int, h: int) -> tuple[float, str, Gemv | None]:
    """Per-core working buffers the largest contraction needs at least on a ``w x h`` region (its
    widest squares; the smaller of MeshGEMM's and MeshGEMV's, or the forced one's): activation
    tiles, received partial sums and accumulators (the stored tile is counted with the units), that
    op's name and its shape (None: no contraction). The mapper then fits every op within what the
    fullest stage leaves (``region_arch``'s ``buffer_limit``). The naive baseline runs on the regions
    of this placement; its all-gathered activations are not reserved (on fp16 Llama-3-8B at 4096 tokens
    of context up to 32 KB per core: it would need three WSE-2s)."""
    worst: tuple[float, str, Gemv | None] = (0.0, "", None)
    for _, op in trace.ops():
        if op.kind == "matmul" and len(op.inputs) == 2:
            g = as_gemv(op, arch)
            if (need := least_buffers(g, arch, w, h)) > worst[0]:
                worst = (need, op.name, g)
    return worst


def least_buffers(g: Gemv, arch: Arch, w: int, h: int) -> float:
    """The working buffers per core of ``g`` on its widest squares of a ``w x h`` region: the smaller of
    MeshGEMM's and MeshGEMV's (or the forced algorithm's)."""
    forced = forced_algorithm(arch)
    work = working_bytes(g, parallelism(g, w, h))
    return work[forced] if forced in MESH_ALGORITHMS else min(work[a] for a in MESH_ALGORITHMS)


def buffer_bytes(trace: Trace, arch: Arch, side: int) -> float:
    """The working buffers :func:`largest_buffers` reserves per core on a ``side x side`` region."""
    return largest_buffers(trace, arch, side, side)[0]


def forced_algorithm(arch: Arch) -> str | None:
    """The contraction algorithm forced on ``arch`` (``algorithm=``), if any."""
    return arch.rules.get("wafer_algorithm") if isinstance(arch.rules, dict) else None
