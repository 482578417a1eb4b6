"""Dequantisation work of a contraction whose operands are stored narrower than the format it
computes in: weight-only quantisation (int4/fp8/ternary weights with bf16 activations) and formats
the device has no matrix throughput for (fp8 on A100: both operands widened to fp16).

Each narrow element is converted and scaled (:data:`DEQUANT_FLOPS`) once per reuse tile: a
weight-only GEMM kernel reloads and re-dequantises its weight tile for every :data:`ROW_TILE`
rows of activations (one threadblock row of tiles). The conversion runs on the vector units
inside the same kernel, overlapped with the matrix work and the memory traffic: the op takes the
longer of its time and the dequantisation time.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..workloads.einsum import Op
from .cost import OpCost

DEQUANT_FLOPS = 2.0  # convert to the compute format, multiply by the group scale
ROW_TILE = 128  # rows of the reusing operand per reloaded tile (the largest threadblock tile)


def dequant_flops(op: Op, arch: Arch) -> tuple[float, str]:
    """(vector FLOPs spent widening operands, the class the op computes in)."""
    runs_in = arch.matrix.resolve(get_dtype(op.compute_dtype).compute)
    flops = 0.0
    for t in op.inputs:
        if get_dtype(t.dtype).compute == runs_in:
            continue
        n = op.elements(t)
        reuse = op.points / n / math.prod(op.sizes[d] for d in op.reduce_dims if d not in t.dims)
        stored = n * get_dtype(t.dtype).density  # an N:M sparse operand widens only its kept values
        flops += DEQUANT_FLOPS * stored * max(1, math.ceil(reuse / ROW_TILE))
    return flops, runs_in


def with_dequant(cost: OpCost, op: Op, arch: Arch) -> OpCost:
    """``cost`` with the dequantisation overlapped (longer of the two) and its vector FLOPs' energy
    (component ``dequant``, at the fp32 FLOP energy); the static energy follows the longer time.
    Unchanged when no operand needs widening."""
    flops, runs_in = dequant_flops(op, arch)
    if not flops:
        return cost
    rate = arch.vector.fp32_rate()
    t = flops / (rate * arch.vector.instances * arch.vector_clock_hz)
    detail = {**cost.detail, "computes_in": runs_in, "dequant_s": t, "dequant_flops": flops}
    energy = {**cost.energy_by_component, "dequant": flops * arch.vector.energy("fp32") * 1e-12}
    if t <= cost.latency_s:
        return replace(cost, detail=detail, energy_by_component=energy, energy_j=float(sum(energy.values())))
    energy["static"] = arch.static_power_w * t
    cycles = t * arch.clock_hz
    return replace(cost, cycles=cycles, latency_s=t, stall_cycles=cycles - cost.compute_cycles,
                   utilization=cost.utilization * cost.latency_s / t, bound="dequant", detail=detail,
                   energy_by_component=energy, energy_j=float(sum(energy.values())))
