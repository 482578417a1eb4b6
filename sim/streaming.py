"""Cost of streaming (vector) operators: norms, softmax, activations, elementwise, RoPE, embedding
gathers, KV-cache appends.

Every tensor streams once between device memory and the vector lanes through every level of the
hierarchy; a reduction whose row does not fit one instance of the innermost level needs a second
pass over its input (statistics first, then normalisation). Time is the slowest of the vector
lanes and each level's transfer; both overlap (streaming is double-buffered).
"""

from __future__ import annotations

from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..workloads.einsum import Op
from .cost import OpCost

#: the dimension each reduction kind normalises over
_ROW_DIM = {"softmax": "s", "norm": "d"}


def passes(op: Op, arch: Arch) -> int:
    """Reads of the input: 1, or more when a reduction row does not stay on chip.

    A GPU uses its fitted rules (the framework kernel's on-chip row limit and pass count per
    kind); other devices keep a row on chip when it fits one instance of the innermost level, and
    otherwise read it twice (statistics, then normalisation)."""
    dim = _ROW_DIM.get(op.kind)
    if dim is None or dim not in op.sizes:
        return 1
    row_bytes = op.sizes[dim] * get_dtype(op.inputs[0].dtype).bytes
    if arch.device_class == "gpu":
        from ..arch.gpu import gpu_rules

        rules = gpu_rules(arch.rules, f"device {arch.name!r}")
        limit = rules.single_pass_row_bytes.get(op.kind)
        if limit is not None:
            return 1 if row_bytes <= limit else rules.row_passes.get(op.kind, 2)
    return 1 if row_bytes <= arch.memory[-1].capacity_bytes else 2


def vector_rate(arch: Arch, dtype: str) -> tuple[float, str]:
    """FLOP/cycle per vector instance for a dtype, falling back to fp32 (upcast) where the unit lacks it."""
    compute = get_dtype(dtype).compute
    table = arch.vector.rate_per_cycle
    if compute in table:
        return table[compute], compute
    if "fp32" in table:
        return table["fp32"], "fp32"
    return arch.vector.rate(compute), compute


def streaming_cost(op: Op, arch: Arch, launch_s: float | None = None, work: float = 1.0) -> OpCost:
    """Cost of one streaming op on ``arch`` (a GPU applies its fitted bandwidth ceiling);
    ``launch_s`` is the fixed cost per op (default: the device's in-stream launch overhead);
    ``work``: the share of the op's elements computed and moved (a causal softmax whose empty
    blocks are skipped)."""
    bw_eff = 1.0
    launch = arch.launch_overhead_s if launch_s is None else launch_s
    if arch.device_class == "gpu":
        from ..arch.gpu import gpu_rules

        bw_eff = gpu_rules(arch.rules, f"device {arch.name!r}").memory_efficiency
    read = sum(op.tensor_bytes(t) for t in op.inputs) * work
    extra = (passes(op, arch) - 1) * op.tensor_bytes(op.inputs[0]) * work
    moved = read + extra + op.tensor_bytes(op.output) * work
    clock = arch.clock_hz
    lv_cycles = {lv.name: moved / (lv.bandwidth_Bps * lv.instances * bw_eff / clock) for lv in arch.memory}
    rate, compute = vector_rate(arch, op.output.dtype)
    comp = op.flops * work / (rate * arch.vector.instances) * (clock / arch.vector_clock_hz)
    prologue = sum(lv.latency_s for lv in arch.memory) * clock
    bound_name, bound_cycles = max(lv_cycles.items(), key=lambda kv: kv[1])
    if comp >= bound_cycles:
        bound_name, bound_cycles = "compute", comp
    cycles = bound_cycles + prologue + launch * clock
    out_b = op.tensor_bytes(op.output) * work
    level_e = {lv.name: ((read + extra) * lv.read_energy_pj_per_byte + out_b * lv.write_energy_pj_per_byte) * 1e-12
               for lv in arch.memory}
    comp_e = op.flops * work * arch.vector.energy(compute) * 1e-12
    latency = cycles / clock
    static_e = arch.static_power_w * latency
    energy = {"compute": comp_e, **level_e, "static": static_e}
    return OpCost(
        cycles=float(cycles), latency_s=float(latency), compute_cycles=float(comp),
        stall_cycles=float(max(cycles - comp, 0.0)), energy_j=float(sum(energy.values())),
        utilization=float(comp / cycles) if cycles else 0.0, bound=bound_name,
        bytes_by_level={lv.name: float(moved) for lv in arch.memory}, energy_by_component=energy,
        detail={"passes": passes(op, arch), "level_cycles": {k: float(v) for k, v in lv_cycles.items()}},
    )
