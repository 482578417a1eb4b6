"""Cost of a contraction on an FPGA LLM-engine template (FlightLLM-style, ``arch/fpga.py``).

The matrix processing engine (MPE) is ``cores x vpus`` DSP chains of ``chain`` DSPs, each DSP
retiring ``macs_per_dsp`` INT8 MACs per cycle. FlightLLM (Zeng et al., FPGA 2024, section 4)
chooses the MPE's parallelism so that the memory time hides the compute time under double
buffering: ``T_mem = (MK + KN + MN) / BW`` against ``T_cmp = MKN / (p_M p_K p_N)``. The model here:

* compute: ``ceil(M / p_M) ceil(G N / p_N) ceil(K / p_K)`` chain steps of one cycle: ``p_N`` = the
  VPUs (one output each; the ``G`` independent products of a batched op, e.g. attention heads,
  share them), ``p_K`` = the chain length (one MAC per DSP per step along K), ``p_M`` =
  ``macs_per_dsp`` (the packed MACs of a DSP share its weight across that many activation rows, so
  a GEMV, ``M = 1``, leaves the second one idle); a Versal DSP58 instead computes a three-element
  INT8 dot product (AMD AM004), so ``p_K`` = chain x ``macs_per_dsp`` and ``p_M`` = 1; with N:M
  sparse weights (``int8-8:16``...) the chain's sparse mux feeds only the kept weights, so K
  shrinks to ``K N / M`` (FlightLLM section 4);
* memory: the stored matrix (the weights, or the KV cache of an attention product) streams from
  HBM once when the activations stay on chip (FlightLLM's always-on-chip decode: its ``MK + MN``
  terms do not reach HBM), else as :func:`buffer_tiling` finds cheapest under the buffers; at the
  template's sustained fraction of the HBM bandwidth (``hbm_efficiency``); on a part with HBM
  pseudo-channels each core's share of the columns streams from where the template's
  ``hbm_layout`` puts it, the busiest channel setting the time (``mappers/fpga_hbm.py``);
* the chains take INT8 operands: integer weights (int8, or int4 unpacked to int8) and int8
  activations; anything else is refused with the formats to give;
* time = max(compute, memory) + the template's launch gap (none: instructions stream from DDR);
* length-adaptive compilation: a prefill runs as the program of its length rounded up to the
  template's prefill bucket (:func:`bucketed_prefill`, every op padded), a decode's attention at
  its context rounded up to the decode bucket (:func:`compiled_lengths`; FlightLLM's artifact
  aligns prefill lengths to 128, decode to 16).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..arch.fpga import Template, fpga_spec
from ..arch.spec import Arch
from ..arch.tech import dram_energy_pj_per_byte
from ..dtypes import get_dtype
from ..errors import DtypeError
from ..sim.cost import OpCost
from ..workloads.einsum import Op
from .fpga_hbm import HbmPlan, channel_fill, hbm_plan
from .pim import Gemv, as_gemv
from .tiers import balanced_share, kv_near, tiers


def template_hbm_plan(arch: Arch) -> HbmPlan | None:
    """The HBM channel plan of an FPGA device's template, or ``None`` when its part gives no channels."""
    spec = fpga_spec(arch)
    if not spec.part.hbm_channels:
        return None
    return hbm_plan(spec.part.hbm_channels, spec.template.cores, spec.template.hbm_layout, spec.part.hbm_remote_efficiency)


def hbm_channel_summary(arch: Arch, stored_bytes: float) -> dict[str, Any] | None:
    """The layout of ``stored_bytes`` (weights and KV cache) over an FPGA device's HBM channels: channels
    per core and the fullest channel's bytes and fill; ``None`` without a channel model."""
    plan = template_hbm_plan(arch)
    if plan is None:
        return None
    return channel_fill(plan, stored_bytes, arch.backing.capacity_bytes * arch.backing.instances / plan.channels)


def with_tiers(arch: Arch, weights_bytes: float, kv_bytes: float) -> Arch:
    """``arch`` with the placement of ``weights_bytes`` and ``kv_bytes`` over its HBM and the card's DDR
    (:func:`xpusim.mappers.tiers.tiers`: the KV cache in HBM when it fits, the weights filling the rest
    and overflowing into DDR, each at most the share the template's ``tiers`` policy allows), which
    the engine's costs read; unchanged on a part without DDR."""
    spec = fpga_spec(arch)
    if not spec.part.ddr_bytes:
        return arch
    hbm = arch.backing.capacity_bytes * arch.backing.instances
    share = balanced_share(arch.backing.bandwidth_Bps * arch.backing.instances, spec.part.ddr_Bps, spec.template.tiers)
    place = tiers(hbm, weights_bytes, kv_bytes, share)
    return dataclasses.replace(arch, rules={**arch.rules, "fpga_tiers": place})


def _ddr_share(op: Op, arch: Arch) -> float:
    """The share of a contraction's stored matrix that streams from the card's DDR under the device's
    placement (``rules['fpga_tiers']``, :func:`with_tiers`)."""
    place = arch.rules.get("fpga_tiers") if isinstance(arch.rules, dict) else None
    if not place:
        return 0.0
    role = op.inputs[1].role
    if role == "weight":
        return 1.0 - float(place["weights_hbm"])
    return 1.0 - kv_near(place) if role in ("kv", "state") else 0.0


def compiled_lengths(op: Op, arch: Arch) -> Op:
    """``op`` at the lengths the engine's instructions were compiled for (FlightLLM's length-adaptive
    compilation groups lengths into buckets). Only attention-shaped ops (with query ``q`` and key
    ``s`` dims: the score and context products, the softmax) change: a step of at most a decode
    bucket of queries (a decode, a short verify) runs its keys at the length rounded up to the
    decode bucket; more queries (a prefill or a chunk) run queries and keys rounded up to the
    prefill bucket. Other ops and templates without buckets are unchanged."""
    sizes = dict(op.dims)
    if "s" not in sizes or "q" not in sizes:
        return op
    pre, dec = fpga_spec(arch).template.length_buckets
    step = pre if sizes["q"] > dec else dec
    padded = ("s", "q") if step == pre else ("s",)
    new = {d: (-(-n // step) * step if d in padded else n) for d, n in sizes.items()}
    if new == sizes:
        return op
    return dataclasses.replace(op, dims=tuple(new.items()))


def bucketed_prefill(phase: Any, arch: Arch) -> Any:
    """The prefill the engine runs for ``phase``: FlightLLM compiles one instruction stream per
    bucket of prompt lengths, so a prompt runs as the stream of its length rounded up to the
    template's prefill bucket, every op at the padded length (the extra rows are computed and
    dropped). Unchanged without buckets or when the length is a multiple."""
    pre = fpga_spec(arch).template.length_buckets[0]
    seq = -(-phase.seq // pre) * pre
    return phase if seq == phase.seq else dataclasses.replace(phase, seq=seq)


def buffer_tiling(g: Gemv, t: Template, out_bytes: float, core_columns: int | None = None) -> dict[str, Any]:
    """HBM bytes of a contraction under the template's on-chip buffers: the cheapest of three loop
    orders over every power-of-two tile. The cores split the ``G x N`` outputs; a core needs the
    ``M x K`` activations of every group (head) its outputs touch:

    * ``rows`` (activations resident): ``tm`` rows whose activations (of the core's groups) fit the
      activation buffer and whose outputs fit the global buffer; the stored matrix streams once per
      row tile. With all M rows resident (a decode's token: FlightLLM's always-on-chip decode) only
      the matrix reaches HBM; otherwise the activations are read and the outputs written once too.
    * ``columns`` (weights resident): ``tn`` output columns whose matrix slice (K x ``tn``) fits the
      weight buffer; the matrix streams once, and unless the core's activations and outputs stay on
      chip, each group's activations are read once per column tile of the group and the outputs
      written once.
    * ``stream``: nothing resident, the matrix re-read for every row.

    ``core_columns``: the outputs of the largest core when the HBM layout splits them unevenly.
    """
    c = t.cores
    act, glob, wbuf = (t.buffers[k] / c for k in ("activations", "global", "weights"))
    n_core = core_columns or -(-g.groups * g.n // c)  # outputs the largest core produces (default: an even split)
    g_core = min(g.groups, -(-n_core // g.n) + (1 if n_core % g.n else 0))  # groups those outputs touch
    matrix = g.groups * g.n * g.k * g.w_bytes
    acts, outs = g.groups * g.m * g.k * g.x_bytes, g.groups * g.m * g.n * out_bytes
    resident = g_core * g.m * g.k * g.x_bytes <= act and g.m * n_core * out_bytes <= glob
    best: dict[str, Any] = {"hbm_bytes": float(matrix * g.m + acts + outs), "order": "stream", "tile": 1,
                            "weight_passes": g.m}
    tm = np.unique(np.minimum(2 ** np.arange(g.m.bit_length() + 1), g.m))  # powers of two up to M, and M
    rows_ok = (tm * g_core * g.k * g.x_bytes <= act) & (tm * n_core * out_bytes <= glob)
    if rows_ok.any():
        tm_best = int(tm[rows_ok].max())
        passes = -(-g.m // tm_best)
        hbm = matrix * passes + (0.0 if passes == 1 else acts + outs)
        if hbm < best["hbm_bytes"]:
            best = {"hbm_bytes": float(hbm), "order": "rows", "tile": tm_best, "weight_passes": passes}
    tn = np.unique(np.minimum(2 ** np.arange(n_core.bit_length() + 1), n_core))
    cols_ok = g.k * tn * g.w_bytes <= wbuf
    if cols_ok.any():
        tn_best = int(tn[cols_ok].max())
        act_passes = -(-min(g.n, n_core) // tn_best)  # column tiles of one group's outputs
        hbm = matrix + (0.0 if resident else acts * act_passes + outs)
        if hbm < best["hbm_bytes"]:
            best = {"hbm_bytes": float(hbm), "order": "columns", "tile": tn_best, "weight_passes": 1}
    return best


def kept_attention(op: Op, arch: Arch) -> float:
    """Share of a causal attention op (scores, softmax, context) the engine computes: with the
    template's ``attention_block`` it skips the score blocks the mask empties (FlightLLM's prefill
    attention runs under block masks; its artifact's blocks are 64 x 64); else the whole plane."""
    b = fpga_spec(arch).template.attention_block
    return op.kept_block_fraction(b, b) if b else 1.0


def fpga_matmul_cost(op: Op, arch: Arch, launch_s: float = 0.0) -> OpCost:
    """Cost of a two-input contraction on the FPGA template's MPE."""
    spec = fpga_spec(arch)
    t = spec.template
    g = as_gemv(op, arch)
    compute = get_dtype(op.inputs[0].dtype).compute
    stored = get_dtype(op.inputs[1].dtype).compute
    if compute not in arch.matrix.rate_per_cycle or stored not in ("int8", "int4"):
        raise DtypeError(f"device {arch.name!r}: the DSP chains take int8 activations and int8/int4 weights; op "
                         f"{op.name!r} has {compute} x {stored} (give --weight-dtype int4-g128 or int8, --act-dtype int8, "
                         "--kv-dtype int8)")
    clock = arch.matrix_clock_hz
    if spec.part.dsp_kind == "dsp58":  # a DSP58 in INT8 mode: a three-element dot product, along K
        p_k, p_m = t.chain * t.macs_per_dsp, 1
    else:  # a DSP48E2: packed MACs share one weight across activation rows, along M
        p_k, p_m = t.chain, t.macs_per_dsp
    density = get_dtype(op.inputs[1].dtype).density
    k_stored = g.k * density  # N:M sparse weights: the chain's mux skips the pruned ones
    columns = g.groups * g.n
    bw = arch.backing.bandwidth_Bps * arch.backing.instances * t.hbm_efficiency
    out_bytes = op.tensor_bytes(op.output) / max(g.groups * g.m * g.n, 1)
    plan = template_hbm_plan(arch)
    channels_used: dict[str, Any] = {}
    split = plan.split(columns) if plan is not None else None
    core_columns = int(split.max()) if split is not None else math.ceil(columns / t.cores)
    tiling = buffer_tiling(g, t, out_bytes, core_columns if split is not None else None)
    # the stored matrix's passes that live in the card's DDR stream from there, at once with the HBM's
    ddr_bytes = g.groups * g.n * g.k * g.w_bytes * tiling["weight_passes"] * _ddr_share(op, arch)
    matrix_bytes = tiling["hbm_bytes"] - ddr_bytes
    if split is None:  # one memory pool: the columns split evenly, the bytes at the pool's rate
        mem_s = matrix_bytes / bw
    else:  # HBM channels: each core's columns (and their bytes) where the layout puts them
        assert plan is not None
        mem_s = plan.seconds(matrix_bytes * split / max(columns, 1), bw / plan.channels)
        channels_used = {"hbm_layout": plan.layout, "core_columns": [int(n) for n in split]}
    ddr_s = ddr_bytes / (spec.part.ddr_Bps * t.hbm_efficiency) if ddr_bytes else 0.0
    far = ddr_s > mem_s
    mem_s = max(mem_s, ddr_s)
    if ddr_bytes:
        channels_used["ddr_bytes"] = float(ddr_bytes)
    kept = kept_attention(op, arch)  # a causal mask's empty score blocks are skipped
    steps = math.ceil(math.ceil(g.m / p_m) * math.ceil(core_columns / t.vpus) * math.ceil(k_stored / p_k) * kept)
    comp_s = steps / clock
    latency = max(comp_s, mem_s) + launch_s
    macs = g.macs * density * kept  # the MACs the chains perform (the pruned weights' are skipped)
    lv = arch.backing
    energy = {"compute": macs * arch.matrix.energy(compute) * 1e-12,
              lv.name: matrix_bytes * lv.read_energy_pj_per_byte * 1e-12, "static": arch.static_power_w * latency}
    if ddr_bytes:
        energy["ddr"] = ddr_bytes * dram_energy_pj_per_byte("ddr4") * 1e-12
    ideal = macs / (arch.matrix.rate(compute) * arch.matrix.instances) / clock
    return OpCost(cycles=latency * arch.clock_hz, latency_s=latency, compute_cycles=comp_s * arch.clock_hz,
                  stall_cycles=max(latency - comp_s, 0.0) * arch.clock_hz, energy_j=float(sum(energy.values())),
                  utilization=ideal / latency if latency else 0.0,
                  bound="compute" if comp_s >= mem_s else "ddr" if far else lv.name,
                  bytes_by_level={lv.name: matrix_bytes, **({"ddr": ddr_bytes} if ddr_bytes else {})},
                  energy_by_component=energy,
                  mapping={"mode": "MV" if g.m == 1 else "MM", "p_M": p_m, "p_N": t.cores * t.vpus, "p_K": p_k,
                           "tiling": tiling["order"], "tile": tiling["tile"], "weight_passes": tiling["weight_passes"],
                           **channels_used},
                  detail={"compute_s": comp_s, "memory_s": mem_s, "sustained_Bps": bw})
