"""GPU model behaviours that any tuned-library GPU shows."""

import pytest
from xpusim import MappingError
from xpusim.arch import list_archs, load_arch
from xpusim.arch.gpu import gpu_rules
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
    # a large GEMM runs near the tensor-core peak (on H100 PCIe its operand traffic leaves the
    # fitted L2 ceiling within a few per cent of the main loop)
    assert big.bound in ("compute", "l2") and big.utilization > 0.85


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
    over its latency, so the mapper splits K (split-K or stream-K) to occupy more SMs; many CTAs are
    not limited."""
    for name in ("a100-80gb", "h100-sxm"):
        arch = load_arch(name)
        prob = gemm_problem(16, 512, 16384)
        best = gpu_gemm_cost(prob, arch, 5e-6)
        unsplit = gpu_gemm_cost(prob, arch, 5e-6, splits=(1,))
        split = best.mapping["split_k"] > 1 or best.mapping["kernel"] == "gemm-stream-k"  # K shared by more CTAs
        assert split and best.mapping["ctas"] > unsplit.mapping["ctas"]
        assert best.latency_s < 0.6 * unsplit.latency_s
        hbm = arch.backing
        assert unsplit.latency_s > unsplit.bytes_by_level[hbm.name] / (hbm.bandwidth_Bps * hbm.instances)
        # the split kernel's loads in flight sustain the fitted HBM ceiling
        rules = gpu_rules(arch.rules, name)
        ceiling = best.bytes_by_level[hbm.name] / (hbm.bandwidth_Bps * hbm.instances * rules.memory_efficiency)
        assert best.detail["terms_s"][hbm.name] == pytest.approx(ceiling, rel=0.05)


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


def test_split_kv_beats_one_split_on_a_long_batch_one_decode(monkeypatch):
    """8 CTAs (one per KV head) cannot keep enough K/V in flight to draw the HBM bandwidth; the
    split-KV heuristic's CTAs can, which is why FlashDecoding exists."""
    import xpusim.mappers.gpu_attention as ga

    def attention_s():
        clear_cache()
        r = simulate("h100-sxm", load_model("llama-3-8b"), Decode(1, 32768))
        return float(r.ops[r.ops.kind == "attention"].latency_s.iloc[0])

    split = attention_s()
    monkeypatch.setattr(ga, "flash_splits", lambda work, sms, kv_blocks: 1)
    unsplit = attention_s()
    clear_cache()
    assert split < 0.7 * unsplit


def test_verifying_more_drafted_tokens_never_runs_faster():
    from xpusim.workloads.phases import Verify

    model, prev = load_model("llama-3-8b"), 0.0
    for drafts in range(1, 10):
        r = simulate("h100-sxm", model, Verify(1, 8192, drafts), check_memory=False)
        att = float(r.ops[r.ops.kind == "attention"].latency_s.iloc[0])
        assert att >= prev * 0.999
        prev = att


@pytest.mark.parametrize("name, shape", [("h100-sxm", (3000, 5000, 700)), ("mi300x", (3000, 5000, 700)),
                                         ("a100-80gb", (2048, 128, 8192))])
def test_more_shared_memory_never_slows_a_gemm(name, shape):
    """A larger SMEM only allows deeper pipelines, which a library may or may not use."""
    import dataclasses

    arch, prev = load_arch(name), float("inf")
    smem = next(lv for lv in arch.memory if lv.name == "smem")
    for f in (0.5, 0.75, 1.0, 1.25):
        lv = dataclasses.replace(smem, capacity_bytes=smem.capacity_bytes * f)
        a = dataclasses.replace(arch, memory=tuple(lv if x.name == "smem" else x for x in arch.memory))
        t = gpu_gemm_cost(gemm_problem(*shape), a, 5e-6).latency_s
        assert t <= prev * 1.001
        prev = t


@pytest.mark.parametrize("line, message", [("launch_overhead: -50 us", "launch_overhead must be"),
                                           ("static_power: -300 W", "static_power must be"),
                                           ("tdp: -1 W", "tdp must be")])
def test_negative_device_quantities_are_refused(line, message):
    from xpusim import SpecError
    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("h100-sxm")
    key, value = line.split(": ")
    d[key] = value
    with pytest.raises(SpecError, match=message):
        arch_from_dict(d, "bad")


@pytest.mark.parametrize("clock", ["0 GHz", "-1 GHz"])
def test_a_unit_clock_must_be_positive(clock):
    from xpusim import SpecError
    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("h100-sxm")
    d["matrix"]["clock"] = clock
    with pytest.raises(SpecError, match="matrix.clock must be a positive frequency"):
        arch_from_dict(d, "bad")


def test_op_sizes_beyond_exact_counting_are_refused():
    from xpusim import ShapeError
    from xpusim.workloads.einsum import gemm_op

    gemm_op(2**17, 2**18, 2**18)  # 2^53 points: still exact
    with pytest.raises(ShapeError, match="2\\^53"):
        gemm_op(2**17 + 1, 2**18, 2**18)


def test_split_kv_partials_count_every_query():
    """Under split-KV every query writes its own partial output and log-sum-exp: verifying q tokens
    moves q times the partials of one."""
    from xpusim.mappers.gpu_attention import fused_attention_cost
    from xpusim.workloads import build_trace
    from xpusim.workloads.phases import Verify

    def hbm_bytes(q):
        phase = Verify(1, 8192, q - 1) if q > 1 else Decode(1, 8192)
        ops = {op.name: op for _, op in build_trace(load_model("llama-3-8b"), phase).ops()}
        c = fused_attention_cost(ops["attn_score"], ops["attn_context"], load_arch("h100-sxm"), 0.0)
        assert c.mapping["kernel"] == "flash-decoding"
        return c.bytes_by_level["hbm"], c.mapping["splits"]

    (b1, s1), (b4, s4) = hbm_bytes(1), hbm_bytes(4)
    m = load_model("llama-3-8b")
    qkvo = lambda q: (2 * q * m.n_heads * m.head_dim + 2 * 8192 * m.n_kv_heads * m.head_dim) * 2  # noqa: E731
    per_query_partials = m.n_heads * (m.head_dim + 1) * 4.0 * 2  # written and read
    assert b1 == pytest.approx(qkvo(1) + s1 * per_query_partials, rel=0.02)
    assert b4 == pytest.approx(qkvo(4) + 4 * s4 * per_query_partials, rel=0.02)


def test_a_partial_rules_section_keeps_the_fitted_rules_it_does_not_name():
    from xpusim.arch.gpu import gpu_rules

    base = gpu_rules({})
    own = gpu_rules({"launch_overhead": {"matmul": "30 us"}, "fitted_by": "me"})
    assert own.launch("matmul") == pytest.approx(30e-6) and own.launch("softmax") == base.launch("softmax")
    assert (own.mma_efficiency, own.memory_efficiency, own.l2_efficiency) == (
        base.mma_efficiency, base.memory_efficiency, base.l2_efficiency)
    assert own.single_pass_row_bytes == base.single_pass_row_bytes and own.row_passes == base.row_passes
    assert gpu_rules({"mma_efficiency": 0.5}).mma_efficiency == 0.5


def test_a_gpu_without_its_named_levels_is_refused():
    from xpusim import SpecError
    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("h100-sxm")
    d["memory"][1]["name"] = "L2"
    with pytest.raises(SpecError, match="l2"):
        arch_from_dict(d, "renamed")


def test_a_bandwidth_in_bytes_per_cycle_follows_the_clock():
    """h100-sxm states its SMEM and register-file bandwidth per SM per cycle: a design-space clock
    knob scales them with the SMs (they stayed at the 1.98 GHz values before)."""
    from xpusim import SpecError
    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("h100-sxm")
    base = {lv.name: lv.bandwidth_Bps for lv in arch_from_dict(d, "a").memory}
    assert base["smem"] == pytest.approx(128 * 1.98e9) and base["rf"] == pytest.approx(1536 * 1.98e9)
    d["clock"] = "1.2 GHz"
    slow = {lv.name: lv.bandwidth_Bps for lv in arch_from_dict(d, "b").memory}
    assert slow["smem"] == pytest.approx(128 * 1.2e9) and slow["hbm"] == base["hbm"]
    d["memory"][2]["bandwidth"] = "128 B/fortnight"
    with pytest.raises(SpecError, match="bandwidth"):
        arch_from_dict(d, "c")
