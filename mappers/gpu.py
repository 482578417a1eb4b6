"""GPU GEMM mapper: the kernel configuration a tuned library (cuBLAS/CUTLASS) would pick.

For a (batched) GEMM it enumerates threadblock (CTA) tiles ``BM x BN x BK``, split-K factors and
pipeline stages bounded by shared memory, and costs every configuration at once with numpy:

* **waves**: ``T = batch x ceil(M/BM) x ceil(N/BN) x split`` CTAs run ``ceil(T / SMs)`` waves; each
  CTA's tensor-core work is its padded tile, so partial tiles and the last partial wave cost full
  time (the wave-quantisation sawtooth);
* **L2**: every CTA streams its A and B panels (``(BM + BN) x K/split``) through L2;
* **HBM with L2 reuse under rasterisation**: CTAs are launched band by band so that a band of B
  column panels (or A row panels) stays in L2 while the other operand streams past it; the operand
  that streams is read from HBM once per band. Operands that fit L2 together are read once;
* **split-K**: partial sums (fp32) of ``split`` slices are written to a workspace and reduced by a
  second kernel (its launch included);
* **stream-K** (Osama et al., PPoPP 2023): one persistent CTA per SM takes an even share of all
  tiles' K iterations (no wave quantisation); tiles split between two SMs exchange fp32 partial
  tiles through L2;
* **memory-level parallelism** (Little's law): the resident CTAs keep ``stages - 1`` pipeline
  stages of loads in flight, so the bandwidth they can draw is bytes in flight over the latency
  of the level (the preset's measured pointer-chase latency), at most the level's bandwidth;
* time = max(tensor-core time + pipeline fill (the first stage of each CTA of the first wave) +
  epilogue (the last wave's tiles), L2 time + latency, HBM time + latency) + launch overhead, the
  fill and epilogue at each CTA's share of the HBM bandwidth (a memory-bound kernel's L2/HBM time
  already holds their bytes), with the efficiency ceilings and launch overheads of
  :class:`~xpusim.arch.gpu.GpuRules`; the bound is the branch that set the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch.gpu import GpuRules, gpu_rules
from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import MappingError, SpecError
from ..sim.compute import gemm_roles
from ..sim.cost import OpCost, kernel_energy
from ..sim.problem import Problem

CTA_M = np.array([16, 32, 64, 128, 256])
CTA_N = np.array([32, 64, 128, 256])
CTA_K = np.array([32, 64])
SPLITS = np.array([0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32])  # 0: stream-K
MAX_STAGES = 4


@dataclass(frozen=True)
class GemmShape:
    """A batched GEMM C[b, M, N] = A[b, M, K] @ B[b, K, N] with operand bytes per element;
    ``shared_b``: B is the same for every batch (a weight)."""

    batch: int
    m: int
    n: int
    k: int
    a_bytes: float
    b_bytes: float
    out_bytes: float
    shared_b: bool = True

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.n * self.k


def gemm_shape(prob: Problem) -> GemmShape:
    """The (batch, M, N, K) view of a two-input contraction."""
    mi, ni, ki = gemm_roles(prob)
    size = lambda i: int(prob.sizes[i]) if i >= 0 else 1  # noqa: E731
    batch_dims = [d for d in range(prob.n_dims) if prob.rel[:, d].all()]
    batch = int(np.prod([prob.sizes[d] for d in batch_dims])) if batch_dims else 1
    # B is shared across the batch when it does not index a batch dim
    shared = not any(prob.rel[1, d] for d in batch_dims) if batch_dims else True
    return GemmShape(batch, size(mi), size(ni), size(ki), float(prob.elem_bytes[0]), float(prob.elem_bytes[1]),
                     float(prob.elem_bytes[2]), shared)


def _sustained(bandwidth: float, in_flight: np.ndarray | float, latency_s: float) -> np.ndarray:
    """Bandwidth (bytes/s) that ``in_flight`` outstanding bytes sustain over ``latency_s`` (Little's
    law), at most the level's; a level without a latency figure is not limited."""
    if latency_s <= 0:
        return np.full(np.shape(in_flight), bandwidth)
    return np.minimum(bandwidth, in_flight / latency_s)


def _level(arch: Arch, name: str):
    for lv in arch.memory:
        if lv.name == name:
            return lv
    return None


def gpu_gemm_cost(prob: Problem, arch: Arch, launch_s: float, cta: tuple[int, int, int] | None = None,
                  splits: tuple[int, ...] | None = None) -> OpCost:
    """Cost of the best kernel configuration for a GEMM-like contraction on a GPU; ``launch_s`` is
    the fixed cost of each kernel launch (a split-K reduction is a second kernel). ``cta`` and
    ``splits`` restrict the configurations (to study one kernel)."""
    rules: GpuRules = gpu_rules(arch.rules, f"device {arch.name!r}")
    g = gemm_shape(prob)
    compute = get_dtype(prob.compute_dtype).compute
    sms = arch.matrix.instances
    # MACs / matrix-clock cycle / SM; 2:4 sparse weights double it on sparse tensor cores (sim/sparsity.py)
    rate = arch.matrix.rate(compute) / prob.density
    f_m = arch.matrix_clock_hz
    smem, l2, rf, hbm = _level(arch, "smem"), _level(arch, "l2"), _level(arch, "rf"), arch.backing
    if smem is None or rf is None:
        raise SpecError(f"device {arch.name!r}: the GPU kernel model needs levels named smem and rf")
    smem_cap, rf_cap = smem.capacity_bytes, rf.capacity_bytes
    # operands are reused in the largest on-chip cache (L2, or an Infinity Cache/LLC above it)
    caches = [lv for lv in arch.memory[1:] if lv.name not in ("smem", "rf")]
    l2_cap = max((lv.capacity_bytes * lv.instances for lv in caches), default=0.0)
    l2_bw = (l2.bandwidth_Bps * l2.instances if l2 else hbm.bandwidth_Bps) * rules.l2_efficiency
    hbm_bw = hbm.bandwidth_Bps * hbm.instances * rules.memory_efficiency

    bm, bn, bk, sp = (a.reshape(-1) for a in np.meshgrid(CTA_M, CTA_N, CTA_K, SPLITS, indexing="ij"))
    streamk = sp == 0  # stream-K: persistent CTAs share the tiles' K iterations evenly
    sp = np.where(streamk, 1, sp)
    stage = (bm * g.a_bytes + bn * g.b_bytes) * bk
    stages = np.minimum(smem_cap // stage, MAX_STAGES)
    kc = -(-g.k // sp)  # K per split slice
    ok = (stages >= 2) & (bm * bn * 4 <= rf_cap / 2) & ((sp == 1) | (kc >= bk))
    # a library does not launch tiles far larger than the problem
    ok &= (bm <= max(16, 1 << int(np.ceil(np.log2(g.m))))) & (bn <= max(32, 1 << int(np.ceil(np.log2(g.n)))))
    if cta is not None:
        ok = (stages >= 2) & (bm == cta[0]) & (bn == cta[1]) & (bk == cta[2]) & ((sp == 1) | (kc >= bk))
    if splits is not None:
        ok &= np.isin(np.where(streamk, 0, sp), splits)
    if not arch.features.get("stream_k", 0):  # the device's GEMM library has no stream-K kernels
        ok &= ~streamk
    if not ok.any():
        raise MappingError(f"no GPU kernel configuration fits {g}: a tile needs two pipeline stages in shared memory "
                           f"({smem_cap:.0f} B) and its fp32 accumulators in half the register file ({rf_cap:.0f} B); "
                           "check the restriction, or enlarge the device's smem or rf")
    bm, bn, bk, sp, stages, kc, stage, streamk = (a[ok] for a in (bm, bn, bk, sp, stages, kc, stage, streamk))
    mt, nt = -(-g.m // bm), -(-g.n // bn)
    ksteps = -(-kc // bk)
    tiles = g.batch * mt * nt
    ctas = np.where(streamk, np.minimum(sms, tiles * ksteps), tiles * sp)
    waves = -(-ctas // sms)
    iter_s = (bm * bn * bk) / rate / (f_m * rules.mma_efficiency)  # one K step of one tile on one SM
    # stream-K: every SM runs ceil(iterations / SMs) K steps, no wave quantisation
    mma_s = np.where(streamk, -(-(tiles * ksteps) // sms) * iter_s, waves * ksteps * iter_s)
    # memory-level parallelism (Little's law): the CTAs resident at once keep (stages - 1) stages of
    # loads in flight each; fewer than that cannot sustain the bandwidth whatever the link offers
    resident = np.maximum(1, np.minimum(smem_cap // (stages * stage), rf_cap // (2 * bm * bn * 4)))
    in_flight = np.minimum(ctas, sms * resident) * (stages - 1) * stage

    # a thread-block cluster loads an A tile once from L2 and multicasts it to its CTAs
    cluster = arch.features.get("cluster_multicast", 1)
    l2_read = tiles * sp * (bm * g.a_bytes / cluster + bn * g.b_bytes) * ksteps * bk  # every tile's K panels
    a_bytes = g.batch * g.m * g.k * g.a_bytes
    b_bytes = (1 if g.shared_b else g.batch) * g.k * g.n * g.b_bytes
    out_bytes = g.batch * g.m * g.n * g.out_bytes
    # L2 reuse under banded rasterisation (per batch entry)
    a1, b1 = a_bytes / g.batch, b_bytes / (1 if g.shared_b else g.batch)
    band_n = np.clip(l2_cap // np.maximum(g.k * bn * g.b_bytes, 1), 1, nt)
    band_m = np.clip(l2_cap // np.maximum(g.k * bm * g.a_bytes, 1), 1, mt)
    stream_a = a1 * -(-nt // band_n) + b1  # B band resident, A re-streamed per band
    stream_b = b1 * -(-mt // band_m) + a1
    per_batch = np.where(a1 + b1 <= l2_cap, a1 + b1, np.minimum(stream_a, stream_b))
    hbm_read = g.batch * per_batch
    if g.shared_b and g.batch > 1:  # a shared operand that stays in L2 is read once
        hbm_read = hbm_read - (g.batch - 1) * b1 * (a1 + b1 <= l2_cap)
    # split-K: the main kernel writes fp32 partials, a second kernel reduces them
    partials = np.where(sp > 1, g.batch * g.m * g.n * 4.0 * sp, 0.0)
    main_out = np.where(sp > 1, partials, out_bytes)
    part_hbm = np.where(partials > l2_cap, partials, 0.0)  # partials spill to HBM when L2 cannot hold them
    hbm_total = hbm_read + np.where(sp > 1, part_hbm, out_bytes)
    # stream-K fix-up: tiles shared by two SMs exchange fp32 partial tiles through L2 (written, read)
    fixup = np.where(streamk & (tiles * ksteps % sms != 0), 2.0 * np.minimum(sms, tiles) * bm * bn * 4.0, 0.0)
    l2_total = l2_read + main_out + fixup
    l2_s = l2_total / _sustained(l2_bw, in_flight, l2.latency_s if l2 and l2.latency_s > 0 else hbm.latency_s)
    hbm_s = hbm_total / _sustained(hbm_bw, in_flight, hbm.latency_s)
    reduce_s = np.where(sp > 1, np.maximum(partials / l2_bw, (part_hbm + out_bytes) / hbm_bw) + launch_s, 0.0)
    # pipeline fill (the first stage of every CTA of the first wave: compute starts when it lands, the
    # later stages load behind it) and epilogue (the last wave's tiles written), each CTA with its
    # share of the bandwidth
    per_sm_bw = hbm_bw / np.minimum(ctas, sms)
    fill_s = hbm.latency_s + stage / per_sm_bw
    epi_s = bm * bn * g.out_bytes / per_sm_bw
    # the fill and the epilogue expose their transfers before and after the main loop; a memory-bound
    # kernel's L2/HBM time already holds those bytes, so they are not charged twice
    total = np.maximum.reduce([mma_s + fill_s + epi_s, l2_s + hbm.latency_s, hbm_s + hbm.latency_s]) + launch_s + reduce_s
    # among configurations within 0.1 % of the fastest, a library-like choice moves the fewest bytes
    near = np.flatnonzero(total <= total.min() + 0.001 * abs(total.min()))
    best = int(near[np.lexsort((sp[near], l2_total[near]))[0]])

    clock = arch.clock_hz
    lat = float(total[best])
    terms = {"compute": mma_s[best], "l2": l2_s[best], arch.backing.name: hbm_s[best]}
    # the bound is the branch of the time formula that set it: the main loop with its fill and epilogue, or a level
    branch = {"compute": mma_s[best] + fill_s[best] + epi_s[best], "l2": l2_s[best] + hbm.latency_s,
              arch.backing.name: hbm_s[best] + hbm.latency_s}
    bound = max(branch, key=lambda k: branch[k])
    comp_cycles = float(mma_s[best] * clock)
    ideal_s = g.macs / (rate * sms * f_m)
    names = [lv.name for lv in arch.memory]
    moved = {n: 0.0 for n in names}
    moved[arch.backing.name] = float(hbm_total[best] + (out_bytes + part_hbm[best] if sp[best] > 1 else 0.0))
    if l2:
        moved[l2.name] = float(l2_total[best] + partials[best])
    if smem:
        moved[smem.name] = float(l2_read[best])
    energy = kernel_energy(arch, g.macs * prob.density, compute, moved, lat)  # sparse tensor cores skip pruned MACs
    mapping = {"kernel": "gemm-stream-k" if streamk[best] else "gemm", "cta_tile": [int(bm[best]), int(bn[best]), int(bk[best])],
               "split_k": int(sp[best]), "stages": int(stages[best]), "ctas": int(ctas[best]),
               "waves": int(waves[best]), "sms": sms, "batch": g.batch, "m": g.m, "n": g.n, "k": g.k}
    return OpCost(
        cycles=lat * clock, latency_s=lat, compute_cycles=comp_cycles, stall_cycles=max(lat * clock - comp_cycles, 0.0),
        energy_j=float(sum(energy.values())), utilization=ideal_s / lat, bound=bound, bytes_by_level=moved,
        energy_by_component=energy, mapping=mapping,
        detail={"terms_s": {k: float(v) for k, v in terms.items()}, "fill_s": float(fill_s[best]),
                "epilogue_s": float(epi_s[best]), "launch_s": launch_s, "splitk_reduce_s": float(reduce_s[best]),
                "configs": int(total.size)},
    )
