"""GPU model behaviours that any tuned-library GPU shows."""

import pytest
from xpusim import MappingError
from xpusim.arch import list_archs, load_arch
from xpusim.mappers.gpu import gpu_gemm_cost
from xpusim.mappers.gpu_attention import flash_splits
from xpusim.sim.engine import clear_cache, simulate
from xpusim.sim.problem import gemm_problem
from xpusim.workloads import Decode, Prefill, load_model

GPUS = [a for a in list_archs() if load_arch(a).device_class == "gpu"]


def test_wave_quantisation_sawtooth():
    """One CTA per 128x128 tile of a compute-bound GEMM (12 tile rows): latency is flat while the
    tiles fit one wave of 108 SMs, steps up when they pass it, and is flat again up to two waves."""
    arch = load_arch("a100-80gb")
    assert arch.matrix.instances == 108

    def lat(tile_cols):
        prob = gemm_problem(128 * 12, 128 * tile_cols, 8192)
        return gpu_gemm_cost(prob, arch, 0.0, cta=(128, 128, 64), splits=(1,)).latency_s

    one_wave = [lat(c) for c in (5, 7, 9)]  # 60, 84, 108 tiles
    two_waves = [lat(c) for c in (10, 14, 18)]  # 120, 168, 216 tiles
    assert max(one_wave) / min(one_wave) < 1.1
    assert max(two_waves) / min(two_waves) < 1.1
    assert min(two_waves) > 1.7 * max(one_wave)


@pytest.mark.parametrize("name", GPUS)
def test_decode_gemv_memory_bound_prefill_gemm_compute_bound(name):
    arch = load_arch(name)
    gemv = gpu_gemm_cost(gemm_problem(1, 8192, 8192, "fp16"), arch, 0.0)
    big = gpu_gemm_cost(gemm_problem(8192, 8192, 8192, "fp16"), arch, 0.0)
    assert gemv.bound == arch.backing.name
    assert big.bound == "compute"


def test_split_k_beats_no_split_for_skinny_gemm():
    """(M=16, N=4096, K=16384) with a 64x128 tensor-core tile fills 32 of 108 SMs; the mapper's
    split-K choice fills the GPU and beats the unsplit kernel, reduction kernel included."""
    arch = load_arch("a100-80gb")
    prob = gemm_problem(16, 4096, 16384)
    best = gpu_gemm_cost(prob, arch, 5e-6, cta=(64, 128, 64))
    no_split = gpu_gemm_cost(prob, arch, 5e-6, cta=(64, 128, 64), splits=(1,))
    assert best.mapping["split_k"] > 1
    assert best.latency_s < no_split.latency_s
    # and the unrestricted mapper is never worse than either
    assert gpu_gemm_cost(prob, arch, 5e-6).latency_s <= best.latency_s * 1.01


@pytest.mark.parametrize("phase", [Prefill(2, 2048), Decode(16, 4096)])
def test_fused_attention_moves_fewer_hbm_bytes(phase):
    arch = load_arch("h100-sxm")
    clear_cache()
    res = simulate(arch, load_model("llama-3-8b"), phase)
    fused = res.ops[res.ops["kind"] == "attention"]
    assert len(fused) == 1
    # the same attention unfused on a GPU-like generic device: three kernels, scores through HBM
    generic = load_arch("systolic-npu")
    unfused = simulate(generic, load_model("llama-3-8b"), phase, check_memory=False).ops
    unfused_bytes = unfused[unfused["name"].isin(["attn_score", "softmax", "attn_context"])]["bytes"].sum()
    assert fused["bytes_hbm"].iloc[0] < unfused_bytes


def test_flash_decoding_split_heuristic_fills_the_gpu():
    assert flash_splits(work=8, sms=108, kv_blocks=64) > 1
    assert flash_splits(work=512, sms=108, kv_blocks=64) == 1
    s = flash_splits(work=8, sms=132, kv_blocks=16)
    assert 1 < s <= 16


def test_few_ctas_cannot_saturate_hbm_so_the_mapper_splits_k():
    """Little's law: 8 CTAs (M=16, N=512) keep too few bytes in flight to draw the HBM bandwidth
    over its latency, so the mapper splits K to occupy more SMs; many CTAs are not limited."""
    for name in ("a100-80gb", "h100-sxm"):
        arch = load_arch(name)
        prob = gemm_problem(16, 512, 16384)
        best = gpu_gemm_cost(prob, arch, 5e-6)
        unsplit = gpu_gemm_cost(prob, arch, 5e-6, splits=(1,))
        assert best.mapping["ctas"] >= 64 and best.latency_s < 0.6 * unsplit.latency_s
        hbm = arch.backing
        assert unsplit.latency_s > unsplit.bytes_by_level[hbm.name] / (hbm.bandwidth_Bps * hbm.instances)


def test_stream_k_removes_wave_quantisation_on_hopper_only():
    """3000^3 with 256x128 tiles is 12 x 24 = 288 tiles: 2.2 waves on 132 SMs. Stream-K shares the
    K iterations evenly and beats the data-parallel schedule; Ampere presets do not offer it."""
    h100 = load_arch("h100-sxm")
    prob = gemm_problem(3000, 3000, 3000)
    dp = gpu_gemm_cost(prob, h100, 5e-6, cta=(256, 128, 32), splits=(1,))
    sk = gpu_gemm_cost(prob, h100, 5e-6, cta=(256, 128, 32), splits=(0,))
    assert sk.mapping["kernel"] == "gemm-stream-k" and sk.latency_s < dp.latency_s
    with pytest.raises(MappingError):
        gpu_gemm_cost(prob, load_arch("a100-80gb"), 5e-6, splits=(0,))
