"""Fused attention kernels on GPUs.

* **Prefill — FlashAttention-2** (Dao, "FlashAttention-2: Faster Attention with Better Parallelism
  and Work Partitioning", 2023): one CTA per (batch, query head, block of ``BM`` queries) streams
  K/V blocks of ``BN`` keys through shared memory, keeps scores and probabilities on chip, and
  writes only O. Causal attention skips the key blocks above the diagonal. Q is read once, O
  written once; K/V come from HBM once per head group (GQA heads of one KV head share them through
  L2) and from L2 once per CTA.
* **Decode — FlashDecoding (split-KV)**: the KV sequence is split into ``splits`` chunks so that
  ``batch x kv_heads x splits`` CTAs fill the SMs; every CTA writes a partial output and its
  log-sum-exp, a combine step reduces them. The split count follows FlashAttention's heuristic:
  among 1..min(SMs, KV blocks, 128) splits, the smallest whose wave efficiency
  ``n_waves / ceil(n_waves)`` is within 85% of the best.

Time = max(tensor-core time, exp time on the special-function units, L2 time, HBM time) + the
launch overhead (and a second launch for the split combine), with the GPU's fitted rules; the L2 and
HBM rates are what the resident CTAs' loads in flight sustain (two K/V blocks each, Little's law).
"""

from __future__ import annotations

import math

from ..arch.gpu import gpu_rules
from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..sim.cost import OpCost, kernel_energy
from ..workloads.einsum import Op
from .gpu import _sustained

BM, BN = 128, 64  # FlashAttention-2 forward blocks for head dim <= 128 on A100/H100
KV_BLOCK = 256  # key block of the split-KV decode kernel
MAX_SPLITS = 128


def flash_splits(work: int, sms: int, kv_blocks: int) -> int:
    """FlashAttention's split-KV heuristic (``num_splits_heuristic``)."""
    if work >= 0.8 * sms:
        return 1
    limit = max(1, min(sms, kv_blocks, MAX_SPLITS))
    effs = []
    for s in range(1, limit + 1):
        waves = work * s / sms
        effs.append(waves / math.ceil(waves))
    best = max(effs)
    return next(s for s, e in enumerate(effs, start=1) if e >= 0.85 * best)


def fused_attention_cost(score: Op, context: Op, arch: Arch, launch_s: float) -> OpCost:
    """Cost of scores -> softmax -> context as one fused kernel on a GPU (``launch_s`` per launch)."""
    rules = gpu_rules(arch.rules, f"device {arch.name!r}")
    sz = score.sizes
    b, h, r, q, s, e = sz["b"], sz["h"], sz["r"], sz["q"], sz["s"], sz["e"]
    causal = bool(score.attrs.get("causal"))
    qd, kd = get_dtype(score.inputs[0].dtype), get_dtype(score.inputs[1].dtype)
    od = get_dtype(context.output.dtype)
    compute = get_dtype(score.compute_dtype).compute
    sms = arch.matrix.instances
    mac_rate = arch.matrix.rate(compute) * sms * arch.matrix_clock_hz * rules.mma_efficiency
    exp_rate = arch.vector.rate_per_cycle.get("exp", arch.vector.rate_per_cycle.get("fp32", 1.0)) * sms * arch.vector_clock_hz
    hbm = arch.backing
    hbm_bw = hbm.bandwidth_Bps * hbm.instances * rules.memory_efficiency
    l2 = next((lv for lv in arch.memory if lv.name == "l2"), None)
    l2_bw = (l2.bandwidth_Bps * l2.instances if l2 else hbm.bandwidth_Bps) * rules.l2_efficiency
    # fraction of the (q x s) score matrix computed: causal prefill skips query blocks' keys above the
    # diagonal, and with a sliding window the keys wholly left of it (the sinks stay)
    frac = score.kept_block_fraction(BM) if causal else 1.0
    ev = context.sizes["e"]  # value head dim (MLA: the latent's first dc features)
    pairs = b * h * r * q * s * frac  # (query, key) pairs computed
    macs = pairs * (e + ev)  # QK^T and PV
    q_bytes = b * h * r * q * e * qd.bytes
    # keys and values; MLA's absorbed form reads its values out of the key rows already on chip
    kv_batch = b if "b" in score.inputs[1].dims else 1  # a shared prefix: one K/V for the whole batch
    kv_bytes = kv_batch * h * s * (e if context.attrs.get("shares_keys") else e + ev) * kd.bytes
    o_bytes = b * h * r * q * ev * od.bytes
    launches = 1
    pairs_run = pairs
    if q == 1 or q * r <= 16:  # decode: split-KV
        work = b * h  # one CTA per (sequence, KV head) covers its r query heads
        splits = flash_splits(work, sms, math.ceil(s / KV_BLOCK))
        partial = b * h * r * q * splits * (ev + 1) * 4.0 if splits > 1 else 0.0  # every query's O and LSE
        launches += 1 if splits > 1 else 0
        hbm_bytes = q_bytes + kv_bytes + o_bytes + 2 * partial
        l2_bytes = hbm_bytes
        ctas = work * splits
        mapping = {"kernel": "flash-decoding", "splits": splits, "ctas": ctas, "kv_block": KV_BLOCK}
    else:
        q_blocks = math.ceil(r * q / BM) if r > 1 and q < BM else math.ceil(q / BM) * r
        ctas = b * h * q_blocks
        hbm_bytes = q_bytes + kv_bytes + o_bytes
        l2_bytes = q_bytes + o_bytes + kv_bytes * q_blocks * frac
        mapping = {"kernel": "flash-attention-2", "block_m": BM, "block_n": BN, "ctas": ctas, "causal": causal}
        # every CTA computes its whole BM-row query block against BN-wide key blocks, padding included
        # (a 33-token prompt's second, nearly empty block costs a full one)
        pairs_run = ctas * BM * math.ceil(s / BN) * BN * frac
    waves = math.ceil(ctas / sms)
    wave_eff = (ctas / sms) / waves
    run = max(pairs_run, pairs)  # (query, key) pairs the MMAs process
    t_mma = run * (e + ev) / mac_rate / wave_eff
    t_exp = run / exp_rate / wave_eff
    # memory-level parallelism (Little's law, as for GEMMs): each resident CTA keeps two K/V blocks in
    # flight; a few CTAs cannot draw the whole bandwidth, which is why split-KV exists
    block = BN * (e + ev) * kd.bytes
    smem = next((lv for lv in arch.memory if lv.name == "smem"), None)
    resident = max(1, int(smem.capacity_bytes // (BM * e * qd.bytes + 2 * block))) if smem else 1
    in_flight = min(ctas, sms * resident) * 2 * block
    t_l2 = l2_bytes / float(_sustained(l2_bw, in_flight, l2.latency_s if l2 and l2.latency_s > 0 else hbm.latency_s))
    t_hbm = hbm_bytes / float(_sustained(hbm_bw, in_flight, hbm.latency_s))
    terms = {"compute": max(t_mma, t_exp), "l2": t_l2, hbm.name: t_hbm}
    bound = max(terms, key=lambda k: terms[k])
    lat = max(terms.values()) + hbm.latency_s + launches * launch_s
    clock = arch.clock_hz
    moved = {lv.name: 0.0 for lv in arch.memory}
    moved[hbm.name] = hbm_bytes
    if l2:
        moved[l2.name] = l2_bytes
    energy = kernel_energy(arch, macs, compute, moved, lat)
    ideal = macs / (arch.matrix.rate(compute) * sms * arch.matrix_clock_hz)
    mapping.update({"waves": waves, "computed_fraction": frac})
    return OpCost(
        cycles=lat * clock, latency_s=lat, compute_cycles=terms["compute"] * clock,
        stall_cycles=max(lat - terms["compute"], 0.0) * clock, energy_j=float(sum(energy.values())),
        utilization=ideal / lat, bound=bound, bytes_by_level=moved, energy_by_component=energy, mapping=mapping,
        detail={"terms_s": terms, "launches": launches},
    )
