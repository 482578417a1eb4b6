"""PIM device class (bank-level DRAM processing-in-memory): the pim: section, the GEMV mapper, its
functional reference, and the presets hbm2-pim (Samsung HBM-PIM) and aim-gddr6 (SK hynix AiM)."""

import copy
import math
import time

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import simulate
from xpusim.arch import arch_from_dict, load_arch
from xpusim.arch.loader import PRESETS_DIR
from xpusim.arch.pim import pim_spec
from xpusim.errors import CapacityError, DtypeError, SpecError, XpusimError
from xpusim.mappers.pim import as_gemv, candidates, counts, evaluate, pim_matmul_cost
from xpusim.sim.engine import clear_cache, op_cost
from xpusim.sim.hetero import pim_stacks
from xpusim.workloads.einsum import Op, Tensor, gemm_op
from xpusim.workloads.functional.pim import pim_gemv
from xpusim.workloads.model import load_model
from xpusim.workloads.phases import Decode

PRESETS = {"hbm2-pim": "fp16", "aim-gddr6": "bf16"}
RAW = {n: yaml.safe_load((PRESETS_DIR / f"{n}.yaml").read_text()) for n in PRESETS}
FAST = settings(max_examples=25, deadline=None)


def variant(name, **pim):
    """A preset with some pim: fields replaced (and the matrix/vector units resized to match)."""
    d = copy.deepcopy(RAW[name])
    for k, v in pim.items():
        if k == "pu":
            d["pim"]["pu"].update(v)
        else:
            d["pim"][k] = v
    n = d["pim"]["channels"] * d["pim"]["pu"]["per_channel"]
    d["matrix"]["instances"] = d["vector"]["instances"] = n
    return arch_from_dict(d)


def batched_gemv(g, m, n, k, dtype):
    """y[g, m, n] = sum_k x[g, m, k] w[g, n, k] with w a weight."""
    dims = (("g", g), ("m", m), ("n", n), ("k", k))
    return Op("gemv", "matmul", dims, (Tensor("x", ("g", "m", "k"), dtype), Tensor("w", ("g", "n", "k"), dtype, "weight")),
              Tensor("y", ("g", "m", "n"), dtype))


# --- presets and the pim: section -----------------------------------------------------------------


def test_presets_match_published_peaks_and_bandwidth_ratios():
    """HBM-PIM: 1.2 TFLOPS, 4x the off-chip bandwidth; AiM: 1 TFLOPS, 16x (docs/devices.md, PIM)."""
    hbm, aim = load_arch("hbm2-pim"), load_arch("aim-gddr6")
    assert hbm.peak_flops("fp16") == pytest.approx(1.2e12, rel=0.03)
    assert aim.peak_flops("bf16") == pytest.approx(1.0e12, rel=0.03)
    assert pim_spec(hbm).internal_bandwidth() / hbm.backing.bandwidth_Bps == pytest.approx(4.0)
    assert pim_spec(aim).internal_bandwidth() / aim.backing.bandwidth_Bps == pytest.approx(16.0)
    # the PUs consume exactly what the all-bank column stream delivers (one burst per PU cycle)
    for arch, dtype in ((hbm, "fp16"), (aim, "bf16")):
        spec = pim_spec(arch)
        burst_elems = spec.column_bytes / 2
        assert burst_elems / arch.matrix.rate(dtype) / arch.matrix_clock_hz == pytest.approx(spec.column_period)


BAD = [
    (lambda d: d["pim"].pop("timing"), "timing"),
    (lambda d: d["pim"]["timing"].pop("tRCD"), "tRCD"),
    (lambda d: d["pim"]["timing"].update(tRP="14 furlongs"), "tRP"),
    (lambda d: d["pim"]["timing"].update(tRAS="-3 ns"), "tRAS"),
    (lambda d: d["pim"]["timing"].update(tCK=1), "tCK"),
    (lambda d: d["pim"]["timing"].update(tRFC="5 us"), "tRFC"),
    (lambda d: d["pim"]["timing"].update(tRAS="1 ns"), "tRAS"),
    (lambda d: d["pim"]["timing"].update(tFAW="x tCK"), "tFAW"),
    (lambda d: d["pim"]["timing"].update(tWTR="3 ns"), "tWTR"),
    (lambda d: d["pim"].update(banks=0), "banks"),
    (lambda d: d["pim"].update(banks=10), "bank_groups"),
    (lambda d: d["pim"].update(row="1000 B"), "row"),
    (lambda d: d["pim"].update(column="1.5 B"), "column"),
    (lambda d: d["pim"].update(mode="some_banks"), "mode"),
    (lambda d: d["pim"].update(all_bank_activate="yes"), "all_bank_activate"),
    (lambda d: d["pim"].update(ranks=2), "ranks"),
    (lambda d: d["pim"]["pu"].update(per_channel=3), "per_channel"),
    (lambda d: d["pim"]["pu"].update(adder_tree=1), "adder_tree"),
    (lambda d: d["pim"]["pu"].pop("accumulators"), "accumulators"),
    (lambda d: d["pim"].update(pu=[8]), "pu"),
    (lambda d: d.update(pim=[1, 2]), "pim"),
    (lambda d: d["matrix"].update(instances=64), "matrix.instances"),
    (lambda d: d.pop("pim"), "pim: section"),
    (lambda d: d.update({"class": "systolic"}), "class: pim"),
]


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("mutate,field", BAD)
def test_bad_pim_sections_raise_one_line_spec_errors(name, mutate, field):
    d = copy.deepcopy(RAW[name])
    mutate(d)
    with pytest.raises(SpecError) as e:
        arch_from_dict(d)
    msg = str(e.value)
    assert "\n" not in msg and field in msg


def test_timing_accepts_times_clocks_and_frequencies():
    d = copy.deepcopy(RAW["hbm2-pim"])
    d["pim"]["timing"].update(tCK="0.8333333333333334 ns", tCCD_L=4, tRCD="16.8 tCK")
    spec = pim_spec(arch_from_dict(d))
    ref = pim_spec(load_arch("hbm2-pim"))
    assert spec.tCCD_L == pytest.approx(ref.tCCD_L)
    assert spec.tRCD == pytest.approx(14e-9)


# --- functional reference: the mapping computes y = W x, and its layout implies the mapper's counts ---


def _check_functional(arch, dtype, g, m, n, k, rng, pick=None):
    op = batched_gemv(g, m, n, k, dtype)
    gemv = as_gemv(op, arch)
    spec = pim_spec(arch)
    w = rng.standard_normal((g, n, k))
    x = rng.standard_normal((g, m, k))
    lanes = arch.matrix.rate(dtype)
    if pick is None:
        cost = pim_matmul_cost(op, arch)
        plan = cost.mapping
        expect = {"bursts_per_pu": cost.detail["bursts_per_pu"], "rows_per_pu": cost.detail["rows_per_pu"],
                  "act_groups": cost.detail["activations_per_channel"],
                  "input_bytes": cost.detail["input_bytes_per_channel"] / m,
                  "output_bytes": cost.detail["output_bytes_per_channel"] / m}
    else:  # any candidate mapping, not only the chosen one
        cand = candidates(gemv, spec)
        i = pick % len(cand["pg"])
        c = counts(gemv, spec, lanes, cand)
        if not c["valid"][i]:
            return
        from xpusim.mappers.pim import plan_of

        plan = plan_of(cand, c, i, spec)
        expect = {"bursts_per_pu": c["bursts_per_pu"][i], "rows_per_pu": c["rows_per_pu"][i],
                  "act_groups": c["act_groups"][i], "input_bytes": c["input_bytes"][i], "output_bytes": c["output_bytes"][i]}
    y, got = pim_gemv(w, x, plan, gemv.w_bytes, gemv.x_bytes, gemv.acc_bytes, int(lanes), spec.adder_tree)
    np.testing.assert_allclose(y, np.einsum("gnk,gmk->gmn", w, x), rtol=1e-9, atol=1e-9)
    for key, v in expect.items():
        assert got[key] == pytest.approx(float(v)), key


@FAST
@given(st.sampled_from(list(PRESETS)), st.integers(1, 3), st.integers(1, 4), st.integers(1, 60), st.integers(1, 400),
       st.integers(0, 10_000))
def test_functional_pim_gemv_equals_numpy_and_the_mapper_counts(name, g, m, n, k, seed):
    rng = np.random.default_rng(seed)
    arch = load_arch(name)
    _check_functional(arch, PRESETS[name], g, m, n, k, rng)
    _check_functional(arch, PRESETS[name], g, m, n, k, rng, pick=seed)


@FAST
@given(st.integers(1, 24), st.integers(1025, 2600), st.integers(1, 3), st.integers(0, 10_000))
def test_functional_reference_with_chunked_reduction_on_aim(n, k, m, seed):
    """K beyond AiM's 2 KiB global buffer: chunks, spilled partial sums, rewritten inputs."""
    rng = np.random.default_rng(seed)
    arch = load_arch("aim-gddr6")
    _check_functional(arch, "bf16", 1, m, n, k, rng)
    _check_functional(arch, "bf16", 1, m, n, k, rng, pick=seed)


# --- cost properties ---------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(list(PRESETS)), st.integers(1, 4), st.integers(1, 20_000), st.integers(1, 20_000),
       st.integers(1, 8192), st.integers(1, 8192))
def test_time_never_falls_as_n_or_k_grow(name, m, n1, n2, k1, k2):
    arch, dtype = load_arch(name), PRESETS[name]
    t = lambda n, k: pim_matmul_cost(gemm_op(m, n, k, dtype), arch).latency_s  # noqa: E731
    n1, n2, k1, k2 = min(n1, n2), max(n1, n2), min(k1, k2), max(k1, k2)
    assert t(n1, k1) <= t(n2, k1) * (1 + 1e-12)
    assert t(n1, k1) <= t(n1, k2) * (1 + 1e-12)


@FAST
@given(st.integers(1, 3), st.integers(1, 16_384), st.integers(1, 8192), st.integers(1, 4))
def test_more_banks_computing_in_all_bank_mode_is_never_slower(b, n, k, m):
    """More banks (each with its PU) per channel, all-bank mode: never slower; the per-bank mode
    (one bank per column command) never beats the all-bank mode of the same device."""
    op = gemm_op(m, n, k, "bf16")
    t = [pim_matmul_cost(op, variant("aim-gddr6", banks=banks, pu={"per_channel": banks // b})).latency_s
         for banks in (4 * b, 8 * b, 16 * b) if banks // b >= 1]
    assert all(t[i + 1] <= t[i] * (1 + 1e-12) for i in range(len(t) - 1))
    for name, dtype in PRESETS.items():
        op = gemm_op(m, n, k, dtype)
        per_bank = pim_matmul_cost(op, variant(name, mode="per_bank")).latency_s
        assert per_bank >= pim_matmul_cost(op, load_arch(name)).latency_s * (1 - 1e-12)


def _candidate_time(arch, n, k):
    """The time of one mapping worked out by hand for an M = 1 GEMV with N a multiple of the PUs:
    rows split over the channels, the input chunk outer; the mapper's best is never slower."""
    s = pim_spec(arch)
    U, b, C = s.pu_per_channel, s.banks_per_pu, s.row_columns
    e = 2.0
    kc = min(k, int(s.input_buffer_bytes // e))
    chunks = math.ceil(k / kc)
    n_u = n // s.pus
    bursts = n_u * ((chunks - 1) * math.ceil(kc * e / s.column_bytes) + math.ceil((k - (chunks - 1) * kc) * e / s.column_bytes))
    groups = math.ceil(math.ceil(bursts / C) / b)
    stream = bursts * s.column_period
    act = groups * (s.tRCD + s.tRP)
    act += max(groups * (s.tRAS + s.tRP) - act - stream, 0.0)
    spill = chunks if n_u > s.accumulators else 1
    partials = 1 if s.adder_tree else arch.matrix.rate("bf16" if "bf16" in arch.matrix.rate_per_cycle else "fp16")
    io_bytes = k * e + n_u * U * spill * partials * 2.0
    adds = (spill * partials - 1) * n
    bw_ch = arch.backing.bandwidth_Bps / s.channels
    vec = max(arch.vector.rate_per_cycle.values()) * arch.vector.instances * arch.vector_clock_hz
    return s.refresh_factor * (act + stream + io_bytes / bw_ch + adds / vec)


@FAST
@given(st.sampled_from(list(PRESETS)), st.integers(1, 64), st.sampled_from([1024, 2048, 4096, 8192, 14336]))
def test_pim_gemv_beats_streaming_it_through_the_external_interface(name, rows_per_pu, k):
    """The reason PIM exists: a decode GEMV (M = 1) reads its weights at the internal all-bank
    bandwidth. streamed = bytes / external bandwidth; the ratio streamed / PIM is at most
    internal / external (scaled by the vector and output bytes the streamed version also moves),
    and at least streamed over the hand-derived time of one particular mapping."""
    arch, dtype = load_arch(name), PRESETS[name]
    spec = pim_spec(arch)
    n = rows_per_pu * spec.pus
    cost = pim_matmul_cost(gemm_op(1, n, k, dtype), arch)
    ext = arch.backing.bandwidth_Bps
    w = n * k * 2.0
    streamed = (w + k * 2.0 + n * 2.0) / ext
    assert cost.detail["streamed_s"] == pytest.approx(streamed)
    ratio = streamed / cost.latency_s
    t_hand = _candidate_time(arch, n, k)
    assert ratio >= streamed / t_hand * (1 - 1e-9)
    assert ratio <= spec.internal_bandwidth() / ext * (w + k * 2.0 + n * 2.0) / w * (1 + 1e-9)
    assert ratio > 1.0


def test_decode_gemv_ratios_of_the_presets():
    """Llama-3-8B's gate projection at M = 1: HBM-PIM ~3x and AiM ~10x faster than streaming the
    weights over their external interfaces (4x and 16x bandwidth, less the row activations that a
    lock-step all-bank row switch exposes and refresh)."""
    ratios = {}
    for name, dtype in PRESETS.items():
        arch = load_arch(name)
        spec = pim_spec(arch)
        cost = pim_matmul_cost(gemm_op(1, 14336, 4096, dtype), arch)
        ratio = ratios[name] = cost.detail["streamed_s"] / cost.latency_s
        peak = spec.internal_bandwidth() / arch.backing.bandwidth_Bps
        act = (spec.tRCD + spec.tRP) / (spec.banks_per_pu * spec.row_columns * spec.column_period)
        expect = peak / (spec.refresh_factor * (1 + act))
        # the rest is the IO (input chunks in, partial sums out); HBM-PIM's 256 B input buffer costs the most
        io = cost.detail["io_s"] / cost.latency_s
        assert expect * (1 - io) * (1 - 1e-3) <= ratio <= expect
        assert cost.bound in ("activation", "column", "compute")
    assert ratios["aim-gddr6"] > ratios["hbm2-pim"] > 1  # 16x vs 4x the external bandwidth inside


def test_batched_gemv_reuse_is_limited_by_the_pu():
    """M > 1 reuses a weight burst for up to ``accumulators`` vectors: AiM (one MAC register per
    bank) streams the weights once per vector; HBM-PIM's PCU is already fed at its MAC rate, so
    reuse cannot make a pass cheaper than its MACs."""
    aim = load_arch("aim-gddr6")
    one = pim_matmul_cost(gemm_op(1, 4096, 4096, "bf16"), aim)
    four = pim_matmul_cost(gemm_op(4, 4096, 4096, "bf16"), aim)
    assert four.detail["passes"] == 4 and four.latency_s == pytest.approx(4 * one.latency_s, rel=0.05)
    hbm = load_arch("hbm2-pim")
    c = pim_matmul_cost(gemm_op(8, 4096, 4096, "fp16"), hbm)
    macs = 8 * 4096 * 4096
    assert c.latency_s >= macs / (hbm.matrix.rate("fp16") * hbm.matrix.instances * hbm.matrix_clock_hz)
    assert 0 < c.utilization <= 1


def test_attention_products_map_the_kv_cache_as_the_matrix():
    model = load_model("llama-3-8b")
    from xpusim.workloads.builder import build_trace

    trace = build_trace(model, Decode(batch=2, context=1024))
    ops = {op.name: op for _, op in trace.ops()}
    arch = load_arch("aim-gddr6")
    score, context = as_gemv(ops["attn_score"], arch), as_gemv(ops["attn_context"], arch)
    assert (score.groups, score.m, score.n, score.k) == (2 * 8, 4, 1024, 128)  # b x kv heads, GQA group, s, e
    assert (context.groups, context.m, context.n, context.k) == (2 * 8, 4, 128, 1024)
    assert score.matrix == "k_cache" and context.matrix == "v_cache"


def test_same_inputs_give_identical_results():
    arch = load_arch("hbm2-pim")
    op = gemm_op(3, 5000, 3000, "fp16")
    a, b = pim_matmul_cost(op, arch), pim_matmul_cost(op, load_arch("hbm2-pim"))
    assert a.to_dict() == b.to_dict() and a.detail == b.detail


# --- whole decode steps -------------------------------------------------------------------------------


def test_llama3_8b_decode_step_on_aim_is_gemv_bound_in_the_banks():
    clear_cache()
    t0 = time.perf_counter()
    r = simulate("aim-gddr6", "llama-3-8b", Decode(batch=1, context=2048), check_memory=False)
    wall = time.perf_counter() - t0
    assert wall < 5.0  # a loose guard against pathological slowdowns; bench/bench_simulate.py holds the 0.2 s target
    mm = r.ops[r.ops["kind"] == "matmul"]
    assert set(mm["bound"]) <= {"activation", "column", "compute"}
    assert r.latency_s > 0 and math.isfinite(r.energy_j)
    # the weights alone, read at the internal bandwidth, bound the step from below
    spec = pim_spec(load_arch("aim-gddr6"))
    assert r.latency_s >= r.weights_bytes / spec.internal_bandwidth()
    # one 1 GiB chip cannot hold the 16 GB of bf16 weights: the memory check says so
    with pytest.raises(CapacityError):
        simulate("aim-gddr6", "llama-3-8b", Decode(batch=1, context=2048))


def test_hbm_pim_runs_fp16_models_and_names_the_format_for_bf16():
    model = load_model("llama-3-8b").with_formats(weights="fp16", activations="fp16", kv="fp16")
    r = simulate("hbm2-pim", model, Decode(batch=1, context=1024), check_memory=False)
    assert set(r.ops[r.ops["kind"] == "matmul"]["bound"]) <= {"activation", "column", "compute"}
    with pytest.raises(DtypeError) as e:
        op_cost(gemm_op(1, 4096, 4096, "bf16"), load_arch("hbm2-pim"))
    assert "fp16" in str(e.value) and "\n" not in str(e.value)
    assert issubclass(DtypeError, XpusimError)


def test_evaluate_costs_every_candidate_and_keeps_the_fastest():
    arch = load_arch("hbm2-pim")
    op = gemm_op(2, 3000, 700, "fp16")
    g = as_gemv(op, arch)
    cand = candidates(g, pim_spec(arch))
    _, times = evaluate(g, arch, cand)
    assert len(times["total"]) == len(cand["pg"]) > 1
    assert pim_matmul_cost(op, arch).latency_s == pytest.approx(float(np.min(times["total"])))


@pytest.mark.parametrize("name", list(PRESETS))
def test_functional_reference_covers_spilled_partials_and_rewritten_inputs(name):
    """Every candidate of two shapes whose rows exceed the accumulators and whose K exceeds the
    input buffer: both loop orders, partial sums read per chunk, inputs written per row block."""
    arch, dtype = load_arch(name), PRESETS[name]
    seen = set()
    for g, m, n, k in ((2, 3, 60, 400), (1, 2, 24, 2600)):
        gemv = as_gemv(batched_gemv(g, m, n, k, dtype), arch)
        spec = pim_spec(arch)
        cand = candidates(gemv, spec)
        c = counts(gemv, spec, arch.matrix.rate(dtype), cand)
        for i in np.flatnonzero(c["valid"]):
            key = (int(cand["order"][i]), bool(c["readouts"][i] > 1), bool(c["input_writes"][i] > 1))
            if key not in seen:
                seen.add(key)
                _check_functional(arch, dtype, g, m, n, k, np.random.default_rng(int(i)), pick=int(i))
    assert {(0, True, False), (1, False, True)} <= seen


def test_host_plus_pim_placement_and_interleaving():
    """Duplex-style placement never loses to either side alone (blocked), AttAcc-style places the
    attention on the PIM, and NeuPIMs-style sub-batches overlap host and PIM work in time."""
    from xpusim.sim.hetero import pim_stacks, simulate_hetero
    from xpusim.workloads import Decode, load_model

    pim = pim_stacks("hbm2-pim", 5)
    model = load_model("llama-3-8b").with_formats("fp16", "fp16", "fp16")
    phase = Decode(32, 4096)
    host = simulate_hetero("a100-80gb", pim, model, phase, "host")
    only_pim = simulate_hetero("a100-80gb", pim, model, phase, "pim")
    auto = simulate_hetero("a100-80gb", pim, model, phase, "auto")
    assert auto.latency_s <= min(host.latency_s, only_pim.latency_s) + 1e-12
    assert (auto.ops["latency_s"] <= auto.ops[["host_s", "pim_s"]].min(axis=1) + 1e-15).all()
    att = simulate_hetero("a100-80gb", pim, model, phase, "attention")
    assert set(att.ops.loc[att.ops["kind"] == "attention", "device"]) == {"pim"}
    assert set(att.ops.loc[att.ops["kind"] == "matmul", "device"]) == {"host"}
    with pytest.raises(SpecError, match="without dual row buffers"):  # shared banks: no overlap
        simulate_hetero("a100-80gb", pim, model, phase, "attention", "concurrent")
    conc = simulate_hetero("a100-80gb", pim, model, phase, "attention", "concurrent", memory="added")
    ev = [(e["device"], e["start"], e["start"] + e["dur"]) for e in conc.timeline]
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in ev for b in ev)  # host and PIM busy at once
    assert pim_stacks("hbm2-pim", 5).matrix.instances == 5 * 128


def test_added_pim_stacks_must_hold_the_kv_cache():
    """With added stacks the KV cache lives in the PIM: more than its capacity is refused even when
    the host has room left (it was accepted by borrowing the host's memory)."""
    from xpusim.errors import CapacityError
    from xpusim.sim.hetero import simulate_hetero

    ok = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), "gpt3-6.7b", Decode(100, 1000), "attention",
                         memory="added")
    assert ok.kv_cache_bytes <= 5 * load_arch("attacc-hbm3-pim").backing.capacity_bytes
    with pytest.raises(CapacityError, match="KV cache .* exceeds the added PIM stacks"):
        simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), "gpt3-6.7b", Decode(300, 1000), "attention",
                        memory="added")
    big = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), "gpt3-6.7b", Decode(300, 1000), "attention",
                          memory="added", check_memory=False)
    assert big.kv_cache_bytes > 5 * load_arch("attacc-hbm3-pim").backing.capacity_bytes


def test_pim_stacks_multiply_static_power():
    d = yaml.safe_load((PRESETS_DIR / "duplex-logic-pim.yaml").read_text())
    d["static_power"] = "10 W"
    d["tdp"] = "20 W"
    one = arch_from_dict(d)
    assert pim_stacks(one, 5).static_power_w == pytest.approx(50.0)
    assert pim_stacks(one, 5).tdp_w == pytest.approx(100.0)


def test_concurrent_auto_is_never_slower_than_any_fixed_placement():
    """Interleaved sub-batches: the per-group faster side can unbalance the two resources (NeuPIMs
    at batch 256 took 72.7 ms with it against 49.3 ms with attention on the PIM); auto now takes
    the shortest makespan."""
    from xpusim.sim.hetero import simulate_hetero

    phase = Decode(256, 1024)
    runs = {p: simulate_hetero("neupims-npu", "neupims-pim", "gpt3-6.7b", phase, p, "concurrent", check_memory=False)
            for p in ("auto", "attention", "host", "pim")}
    assert runs["auto"].latency_s <= min(r.latency_s for r in runs.values()) * (1 + 1e-12)
    assert runs["auto"].inputs["placed_as"] in ("auto", "attention", "host", "pim")


# --- logic-die PIM and the shipped host + PIM presets -------------------------------------------------------


def test_duplex_logic_pim_has_four_times_the_stack_bandwidth_at_8_flop_per_byte():
    a = load_arch("duplex-logic-pim")
    s = pim_spec(a)
    assert s.location == "logic_die"
    tsv = s.internal_bandwidth()
    assert tsv / a.backing.bandwidth_Bps == pytest.approx(4.0, rel=0.01)  # 4x the TSVs (Duplex section IV)
    assert a.peak_flops("fp16") == pytest.approx(21.3e12, rel=0.01)  # 32 x 512 MACs x 2 x 650 MHz
    assert a.peak_flops("fp16") / tsv == pytest.approx(8.0, rel=0.01)  # its Op/B


def test_location_is_validated():
    d = yaml.safe_load((PRESETS_DIR / "duplex-logic-pim.yaml").read_text())
    d["pim"]["location"] = "interposer"
    with pytest.raises(SpecError, match="location"):
        arch_from_dict(d)


def test_logic_die_pim_speeds_up_mixtral_decode_below_its_bandwidth_ceiling():
    from xpusim.sim.hetero import pim_stacks, simulate_hetero

    m = load_model("mixtral-8x7b").with_formats("fp16", "fp16", "fp16")
    host = simulate("h100-sxm", m, Decode(64, 4096), check_memory=False)
    duplex = simulate_hetero("h100-sxm", pim_stacks("duplex-logic-pim", 5), m, Decode(64, 4096), "auto", "blocked",
                             check_memory=False)  # fp16 Mixtral (87 GiB) beyond one device's 80 GB, as the host run
    speedup = host.latency_s / duplex.latency_s
    assert 1.0 < speedup < 4.0  # never slower; never above the 4x TSV bandwidth ceiling
    assert duplex.inputs["pim_share"] > 0.5  # the experts and the GQA attention go to the base dies


@pytest.mark.parametrize("name", ["duplex", "neupims", "attacc-a100"])
def test_host_plus_pim_presets_simulate_from_the_cli(name, capsys):
    from xpusim.cli import main
    from xpusim.sim.hetero import list_hetero, load_hetero

    assert name in list_hetero()
    combo = load_hetero(name)
    assert combo is not None and load_arch(combo["pim"]).device_class == "pim"
    assert main(["simulate", "--arch", name, "--model", "llama-2-7b", "--phase", "decode", "--batch", "8",
                 "--context", "512", "--weight-dtype", "fp16", "--act-dtype", "fp16", "--kv-dtype", "fp16"]) == 0
    out = capsys.readouterr().out
    assert f"({combo['placement']} placement, {combo['mode']})" in out
    assert main(["simulate", "--arch", name, "--pim-mode", "blocked", "--model", "llama-2-7b", "--phase", "decode",
                 "--batch", "8", "--context", "512", "--weight-dtype", "fp16", "--act-dtype", "fp16", "--kv-dtype", "fp16"]) == 0
    assert ", blocked)" in capsys.readouterr().out  # a flag overrides the preset's policy


def test_neupims_subbatch_interleaving_pays_only_at_large_batch():
    # NeuPIMs (ASPLOS 2024, Fig. 13): sub-batch interleaving hurts at small batches and helps at >= 256,
    # where the NPU's share is compute-bound and halving the batch does not double its time
    from xpusim.sim.hetero import simulate_hetero

    m = load_model("llama-2-7b").with_formats("fp16", "fp16", "fp16")

    def ratio(batch):
        b = simulate_hetero("neupims-npu", "neupims-pim", m, Decode(batch, 512), "attention", "blocked", check_memory=False)
        c = simulate_hetero("neupims-npu", "neupims-pim", m, Decode(batch, 512), "attention", "concurrent",
                            check_memory=False)  # batch 512's KV cache is beyond one device: the timing is the point
        return b.latency_s / c.latency_s

    assert ratio(16) < 1.0 < ratio(512)


def test_host_plus_pim_refuses_what_its_memory_cannot_hold(capsys):
    """Shared memory: the PIM stacks are the host's own (capacity once); added: extra stacks beside it."""
    from xpusim.cli import main
    from xpusim.errors import CapacityError
    from xpusim.sim.hetero import pim_stacks, simulate_hetero

    m = load_model("mixtral-8x7b").with_formats("fp16", "fp16", "fp16")  # 87 GiB of weights
    with pytest.raises(CapacityError, match="a100-80gb \\+ hbm2-pim x5 has 80.0 GiB") as e:
        simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), m, Decode(1, 4096), "attention")
    assert "\n" not in str(e.value)
    with pytest.raises(CapacityError, match="added PIM stacks hold the KV cache, the host holds the weights"):
        simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), m, Decode(1, 4096), "attention", memory="added")
    small = load_model("llama-3-8b").with_formats("fp16", "fp16", "fp16")  # 15 GiB of weights, 74 GiB of KV cache
    with pytest.raises(CapacityError, match="has 80.0 GiB"):
        simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), small, Decode(19, 32768), "attention")
    with pytest.raises(CapacityError, match="exceeds the added PIM stacks' 30.0 GiB"):  # the KV cache is in the stacks
        simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), small, Decode(19, 32768), "attention", memory="added")
    added = simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), small, Decode(7, 32768), "attention", memory="added")
    assert added.capacity_bytes == pytest.approx(80 * 2**30 + 5 * load_arch("hbm2-pim").backing.capacity_bytes)
    assert main(["simulate", "--arch", "duplex", "--model", "mixtral-8x7b", "--phase", "decode", "--batch", "4096",
                 "--context", "32768"]) == 2
    assert "needs" in capsys.readouterr().err


def test_attention_placement_moves_only_the_attention_to_the_pim():
    from xpusim.sim.hetero import pim_stacks, simulate_hetero

    m = load_model("llama-2-7b").with_formats("fp16", "fp16", "fp16")
    r = simulate_hetero("a100-80gb", "hbm2-pim", m, Decode(8, 512), "attention", "blocked")
    assert set(r.ops.loc[r.ops["device"] == "pim", "name"]) == {"attention"}  # the fused kernel on a GPU host
    r = simulate_hetero("neupims-npu", "neupims-pim", m, Decode(8, 512), "attention", "blocked")
    assert set(r.ops.loc[r.ops["device"] == "pim", "name"]) == {"attn_score", "softmax", "attn_context"}  # unfused parts
    # a prefill's attention stays on the host (AttAcc runs the summarization stage on the GPUs): on the
    # PIM it would be 8x slower
    from xpusim.workloads import Prefill

    r = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), m, Prefill(1, 512), "attention", "blocked")
    att = r.ops.set_index("name").loc["attention"]
    assert att["device"] == "host" and att["pim_s"] > 5 * att["host_s"]


def test_interleaved_subbatch_schedule_computes_what_the_blocked_step_computes():
    # NeuPIMs' dual row buffers let one sub-batch's PIM attention run while the other's NPU GEMMs do:
    # executing the simulator's interleaved schedule functionally gives the blocked step's logits
    from xpusim.sim.hetero import _costed_groups, _interleave, _place, _segments
    from xpusim.workloads import ModelSpec, Prefill, build_trace
    from xpusim.workloads.functional.pim import execute_schedule
    from xpusim.workloads.functional.reference import execute, init_weights

    tiny = ModelSpec(name="tiny-gpt", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256,
                     vocab_size=97, max_seq_len=64, activation="gelu", gated_mlp=False, norm="layernorm",
                     position="learned", tied_embeddings=True, weight_dtype="fp16", act_dtype="fp16", kv_dtype="fp16")
    batch, ctx = 4, 6
    r = np.random.default_rng(3)
    prompt, nxt = r.integers(0, 97, (batch, ctx)), r.integers(0, 97, (batch, 1))
    w = init_weights(build_trace(tiny, Decode(batch, ctx + 1)), seed=1)
    _, cache = execute(build_trace(tiny, Prefill(batch, ctx)), w, prompt)
    blocked, _ = execute(build_trace(tiny, Decode(batch, ctx + 1)), w, nxt, cache)

    half = batch // 2
    sub = build_trace(tiny, Decode(half, ctx + 1))
    host = load_arch("neupims-npu")
    rows = _place(_costed_groups(host, load_arch("neupims-pim"), sub, "attention"), "attention", host)
    segs = _segments(rows)
    makespan, events = _interleave(segs, 2)
    assert {e["device"] for e in events} == {"host", "pim"} and len(events) == 2 * len(segs)
    busy = sum(e["dur"] for e in events)
    assert makespan < busy  # the two sub-batches overlapped somewhere
    caches = [execute(build_trace(tiny, Prefill(half, ctx)), w, prompt[j * half:(j + 1) * half])[1] for j in range(2)]
    out = execute_schedule(sub, segs, events, w, [nxt[:half], nxt[half:]], caches)
    np.testing.assert_allclose(np.concatenate(out), blocked, rtol=1e-10, atol=1e-12)
    # the same ops in an order that breaks a dependency do not run
    bad = [dict(e, start=-e["start"]) for e in events]
    with pytest.raises((KeyError, XpusimError)):
        execute_schedule(sub, segs, bad, w, [nxt[:half], nxt[half:]], caches)


def test_host_pim_link_energy_counts_once_per_group_and_ssm_state_is_memory():
    """A collective's energy is its whole group's: a tensor-parallel host + PIM step with everything on
    the host costs what the same system's step does; a Mamba step holds its recurrent state."""
    from xpusim.sim.events import simulate_system
    from xpusim.sim.hetero import pim_stacks, simulate_hetero
    from xpusim.sim.parallel import Plan
    from xpusim.workloads import Decode

    m = load_model("llama-3-70b").with_formats("fp16", "fp16", "fp16")
    h = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), m, Decode(32, 2048), "host", "blocked",
                        system="dgx-a100", tp=8, check_memory=False)
    s = simulate_system("dgx-a100", m, Decode(32, 2048), Plan(tp=8), check_memory=False)
    links = lambda r: float(r.ops.loc[r.ops["bound"] == "link", "total_energy_j"].sum())  # noqa: E731
    assert links(h) == pytest.approx(links(s), rel=1e-6)
    mamba = load_model("mamba-2.8b").with_formats("fp16", "fp16", "fp16")
    r = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), mamba, Decode(64, 2048), "host", "blocked")
    assert r.ssm_state_bytes == pytest.approx(mamba.ssm_state_bytes(64)) and r.ssm_state_bytes > 0


@pytest.mark.parametrize("stacks", [2.7, 0, "two"])
def test_a_bad_pim_stacks_in_a_preset_is_a_one_line_error(tmp_path, monkeypatch, stacks):
    import xpusim.sim.hetero as H

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"host": "a100-hbm3", "pim": "attacc-hbm3-pim", "pim_stacks": stacks}))
    monkeypatch.setattr(H, "HETERO_DIR", tmp_path)
    with pytest.raises(SpecError, match="pim_stacks must be a whole number"):
        H.load_hetero("bad")


def test_more_banks_per_pu_never_open_banks_without_data():
    """In all-bank mode without a one-command activate a group opens only the banks that hold its
    rows: a GEMV of one DRAM row per PU once paid 63 staggered activations on a 64-bank variant
    (562 ns against 305 ns with 32 banks)."""
    from xpusim.mappers.pim import pim_matmul_cost
    from xpusim.workloads.einsum import gemm_op

    d = yaml.safe_load((PRESETS_DIR / "neupims-pim.yaml").read_text())
    base = arch_from_dict(copy.deepcopy(d), "neupims-pim")
    d["pim"]["banks"] = 2 * d["pim"]["banks"]
    wide = arch_from_dict(d, "wide")
    op = gemm_op(1, 1024, 128, "fp16")
    assert pim_matmul_cost(op, wide).latency_s <= pim_matmul_cost(op, base).latency_s * (1 + 1e-9)


def test_a_tensor_parallel_host_pim_footprint_is_one_devices_activations():
    # the footprint once took the unsharded model's activations (8.7 MB) for each of 8 devices (1.6 MB)
    from xpusim.sim.engine import activation_bytes
    from xpusim.sim.hetero import pim_stacks, simulate_hetero
    from xpusim.sim.parallel import Plan, device_trace
    from xpusim.workloads import Decode, build_trace

    m = load_model("llama-3-70b").with_formats("fp16", "fp16", "fp16")
    r = simulate_hetero("a100-hbm3", pim_stacks("attacc-hbm3-pim", 5), m, Decode(32, 2048), "attention", "blocked",
                        system="dgx-a100", tp=8, check_memory=False)
    host = load_arch("a100-hbm3")
    assert r.activation_bytes == activation_bytes(device_trace(m, Decode(32, 2048), Plan(tp=8)), host)
    assert r.activation_bytes < activation_bytes(build_trace(m, Decode(32, 2048)), host) / 4


@pytest.mark.parametrize("preset", ["hbm2-pim", "attacc-hbm3-pim", "neupims-pim"])
def test_a_larger_input_buffer_never_makes_a_gemv_slower(preset):
    """Chunks rounded down to whole column bursts are candidates too: a buffer whose chunk padded
    its last burst made ops up to 24 % slower than a smaller buffer (attacc-hbm3-pim 128 -> 200 B)."""
    d0 = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())
    dt = next(iter(d0["matrix"]["macs_per_cycle"]))
    for m, n, k in [(1, 4096, 14336), (4, 128, 2048), (3, 777, 128)]:
        prev = math.inf
        for buf in (32, 64, 100, 128, 200, 256, 300, 512):
            d = copy.deepcopy(d0)
            d["pim"]["pu"]["input_buffer"] = f"{buf} B"
            t = pim_matmul_cost(gemm_op(m, n, k, dt), arch_from_dict(d)).latency_s
            assert t <= prev * (1 + 1e-9), (preset, (m, n, k), buf)
            prev = t


def test_pim_refuses_operands_its_pus_cannot_take_without_conversion():
    """The PUs read the matrix straight from the banks: bf16 weights on an fp16-only PIM were run
    through a GPU-style dequantisation (25.9 ms against 17.7 ms, same energy); now refused."""
    m = load_model("llama-3-8b").with_formats("bf16", "fp16", "fp16")
    with pytest.raises(DtypeError, match="computes fp16 only, not this model's weights bf16: add --weight-dtype fp16"):
        simulate("hbm2-pim", m, Decode(1, 2048), check_memory=False)
    w8 = load_model("llama-3-8b").with_formats("int8", "fp16", "fp16")
    with pytest.raises(DtypeError, match="weights int8: add --weight-dtype fp16"):  # no in-bank dequantisation either
        simulate("hbm2-pim", w8, Decode(1, 2048), check_memory=False)
    fp16 = load_model("llama-3-8b").with_formats("fp16", "fp16", "fp16")
    assert simulate("hbm2-pim", fp16, Decode(1, 2048), check_memory=False).latency_s > 0


@pytest.mark.parametrize("preset", ["neupims-pim", "hbm2-pim", "aim-gddr6"])
def test_more_banks_per_pu_never_make_a_gemv_slower(preset):
    """Without all-bank activation the ACT stagger is charged per ACT issued (neupims-pim with 64
    banks charged whole bank groups and ran a batched GEMV 7.8 % slower than with 32); every preset
    is run without all-bank activation, where the stagger applies."""
    raw = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())
    raw["pim"]["all_bank_activate"] = False
    dt = next(iter(raw["matrix"]["macs_per_cycle"]))
    for g, m, n, k in [(64, 8, 777, 128), (1, 4, 14336, 4096), (32, 4, 128, 2048)]:
        op = Op("gemv", "matmul", (("g", g), ("m", m), ("n", n), ("k", k)),
                (Tensor("x", ("g", "m", "k"), dt), Tensor("w", ("g", "n", "k"), dt, "weight")), Tensor("y", ("g", "m", "n"), dt))
        prev = math.inf
        for mult in (1, 2, 4):
            d = copy.deepcopy(raw)
            d["pim"]["banks"] = raw["pim"]["banks"] * mult
            t = pim_matmul_cost(op, arch_from_dict(d)).latency_s
            assert t <= prev * (1 + 1e-9), (preset, (g, m, n, k), mult)
            prev = t


def test_a_host_pim_preset_with_another_pim_is_named_as_such(capsys):
    from xpusim.cli import main

    assert main(["simulate", "--arch", "duplex", "--pim", "hbm2-pim", "--model", "llama-3-8b", "--phase", "decode"]) == 2
    err = capsys.readouterr().err
    assert "duplex is a host + PIM preset with its own PIM device; drop --pim" in err and "unknown device" not in err


def test_added_stacks_run_no_weight_gemms():
    """Added stacks hold the KV cache and the host's memory the weights: auto put q_proj and fc1 on
    the PIM as if it streamed weights it does not hold (1.18 ms for a step whose weights take 4 ms to
    stream from the host's HBM)."""
    from xpusim.sim.hetero import simulate_hetero

    pim = pim_stacks("attacc-hbm3-pim", 5)
    for mode in ("blocked", "concurrent"):
        r = simulate_hetero("a100-hbm3", pim, "gpt3-6.7b", Decode(2, 1000), "auto", mode, memory="added")
        on_pim = r.ops[r.ops["device"] == "pim"]
        weight_gemms = {"q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "fc1", "fc2", "lm_head"}
        assert not on_pim.empty and not set(on_pim["name"]) & weight_gemms
        assert r.latency_s >= r.weights_bytes / load_arch("a100-hbm3").backing.bandwidth_Bps
    with pytest.raises(SpecError, match="added PIM stacks do not hold"):
        simulate_hetero("a100-hbm3", pim, "gpt3-6.7b", Decode(2, 1000), "pim", memory="added")


def test_burst_aligned_chunks_count_fractional_element_bytes():
    """Group-scaled int4 is 0.5625 B per element: 512 elements fill 9 bursts of 32 B exactly; the
    chunk rounded to whole elements per burst padded one (320 B of buffer was 1.3 % slower than 288 B)."""
    d0 = yaml.safe_load((PRESETS_DIR / "hbm2-pim.yaml").read_text())
    d0["matrix"]["macs_per_cycle"] = {"int4": 32}  # an int4 variant of the PUs
    prev = math.inf
    for buf in (256, 288, 320, 512, 1024):
        d = copy.deepcopy(d0)
        d["pim"]["pu"]["input_buffer"] = f"{buf} B"
        t = pim_matmul_cost(gemm_op(1, 4096, 4096, "int4-g32"), arch_from_dict(d)).latency_s
        assert t <= prev * (1 + 1e-12), buf
        prev = t



def test_pim_io_energy_is_written_bytes_at_write_energy_and_read_outs_at_read_energy():
    """The input vectors are writes into the PUs' buffers and the partial sums reads out of them (both
    were charged the mean of the two energies)."""
    d = yaml.safe_load((PRESETS_DIR / "hbm2-pim.yaml").read_text())
    d["memory"][0]["read_energy_pj_per_byte"] = 1.0
    d["memory"][0]["write_energy_pj_per_byte"] = 5.0
    arch = arch_from_dict(d)
    c = pim_matmul_cost(gemm_op(4, 4096, 4096, "fp16"), arch)
    spec = pim_spec(arch)
    written = c.detail["input_bytes_per_channel"] * spec.channels
    read_out = c.detail["output_bytes_per_channel"] * spec.channels
    internal = c.detail["passes"] * 4096 * 4096 * 2.0
    assert written > 0 and read_out > 0
    assert c.energy_by_component["dram"] == pytest.approx((internal * 1 + written * 5 + read_out * 1) * 1e-12, rel=1e-9)
