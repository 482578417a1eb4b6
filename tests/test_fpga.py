"""FPGA class (issue 12): part and template, the resource estimator and fit check, the MPE cost, and
the functional references of the packed INT8 and N:M sparse DSP chains."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import simulate
from xpusim.arch import arch_from_dict, load_arch
from xpusim.arch.fpga import estimate_resources, fpga_spec
from xpusim.arch.loader import PRESETS_DIR
from xpusim.errors import CapacityError, SpecError, XpusimError
from xpusim.workloads import Decode, Prefill, build_trace
from xpusim.workloads.functional.fpga import dense_of, nm_prune, packed_chain_dot, sparse_chain_dot
from xpusim.workloads.model import load_model

RAW = yaml.safe_load((PRESETS_DIR / "alveo-u280.yaml").read_text())
FAST = settings(max_examples=40, deadline=None)
W4A8 = ("int4-g128", "int8", "int8")


def assert_refused(mutate, msg, error=SpecError):
    """The U280 preset changed by ``mutate`` fails to load with a one-line ``error`` matching ``msg``."""
    d = copy.deepcopy(RAW)
    mutate(d)
    with pytest.raises(error, match=msg) as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)


def variant(**template):
    d = copy.deepcopy(RAW)
    d["fpga"]["template"].update(template)
    t = d["fpga"]["template"]
    d["matrix"]["instances"] = t["cores"] * t["vpus"]
    d["matrix"]["macs_per_cycle"] = {"int8": t["chain"] * t["macs_per_dsp"]}
    d["vector"]["instances"] = d["memory"][1]["instances"] = t["cores"]  # an SFU and a buffer per core
    return arch_from_dict(d)


def test_u280_part_and_template():
    a = load_arch("alveo-u280")
    s = fpga_spec(a)
    assert (s.part.dsp, s.part.bram, s.part.uram, s.part.lut, s.part.ff, s.part.slrs) == (9024, 2016, 960, 1303680, 2607360, 3)
    used = estimate_resources(s)
    assert used["dsp"] == 6144 <= 6345  # the MPE's share of the DSPs FlightLLM reports
    assert a.peak_flops("int8") == pytest.approx(2 * 6144 * 2 * 225e6)


@pytest.mark.parametrize("change, resource", [({"vpus": 256}, "DSP"), ({"buffers": {"weights": "40 MiB", "activations": "1 MiB",
                                                                                  "global": "1 MiB"}}, "URAM")])
def test_a_template_that_does_not_fit_names_the_resource(change, resource):
    with pytest.raises(CapacityError, match=resource) as e:
        variant(**change)
    assert "\n" not in str(e.value) and "fewer cores" in str(e.value)


def test_fit_is_exact_at_the_budget():
    d = copy.deepcopy(RAW)
    d["fpga"]["part"]["dsp"] = 9000  # budget 0.8 x 9,000 = 7,200 = 3 cores x 150 VPUs x 16 DSPs exactly
    d["fpga"]["template"]["vpus"] = 150
    d["matrix"]["instances"] = 450
    arch_from_dict(d)  # equality fits
    d["fpga"]["part"]["dsp"] = 8999  # budget 7,199
    with pytest.raises(CapacityError, match="DSP"):
        arch_from_dict(d)


def test_cores_must_fit_their_slr():
    with pytest.raises(CapacityError, match="SLR"):
        variant(cores=4, vpus=80)  # 5,120 DSPs fit the part's 7,219, but two 1,280-DSP cores overflow an SLR's 2,406
    with pytest.raises(CapacityError, match="SLR"):
        variant(cores=1, vpus=256)  # one 4,096-DSP core is more than one SLR holds


def test_fp8_weights_are_refused_on_int8_chains():
    m = load_model("llama-2-7b").with_formats("fp8-e4m3", "int8", "int8")
    with pytest.raises(XpusimError, match=r"computes int8 only \(int4 widened\), not this model's weights fp8-e4m3"):
        simulate("alveo-u280", m, Decode(1, 128))


def test_batched_attention_shares_the_vpus():
    from xpusim.mappers.fpga import fpga_matmul_cost

    m = load_model("llama-3-8b").with_formats("int8", "int8", "int8")
    ops = {o.name: o for b in build_trace(m, Decode(4, 1024)).blocks for o in b.ops}
    c = fpga_matmul_cost(ops["attn_context"], load_arch("alveo-u280"))
    assert c.bound == "hbm"  # the KV cache streams; 4 x 8 x 4 heads' outputs fill the 384 VPUs together


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["fpga"]["part"].update(dsp_kind="dsp99"), "dsp_kind"),
    (lambda d: d["fpga"]["template"].update(sparsity_m=12), "power of two"),
    (lambda d: d["fpga"]["template"].update(hbm_efficiency=1.5), "hbm_efficiency"),
    (lambda d: d["fpga"].pop("estimate"), "missing"),
    (lambda d: d["matrix"].update(instances=126), "template's VPUs"),
    (lambda d: d.update({"class": "generic"}), "go together"),
    (lambda d: d["fpga"]["template"].update(length_buckets={"prefill": 0, "decode": 16}), "length_buckets.prefill"),
    (lambda d: d["fpga"]["template"].update(length_buckets={"decode": 16}), "missing prefill"),
    (lambda d: d["fpga"]["part"].update(dsp="lots"), "'unpublished' where no source gives it"),
    (lambda d: d["fpga"]["part"].update(slrs="unpublished"), "slrs: must be a positive integer"),
])
def test_bad_fpga_sections_are_one_line_errors(mutate, msg):
    assert_refused(mutate, msg)


def test_decode_streams_weights_at_the_sustained_hbm_bandwidth():
    m = load_model("llama-2-7b").with_formats(*W4A8)
    r = simulate("alveo-u280", m, Decode(1, 640))
    s = fpga_spec(load_arch("alveo-u280"))
    bw = 460e9 * s.template.hbm_efficiency
    assert r.latency_s >= 0.95 * r.weights_bytes / bw  # all but the embedding table stream every step
    mm = r.ops[r.ops["kind"] == "matmul"]
    assert set(mm["bound"]) == {"hbm"}


def test_prefill_is_compute_bound_and_more_vpus_help():
    m = load_model("llama-2-7b").with_formats(*W4A8)
    small, big = (simulate(variant(vpus=v), m, Prefill(1, 512)).latency_s for v in (64, 128))
    assert big < small < 2.05 * big


def test_bf16_models_need_integer_formats_with_a_clear_error():
    with pytest.raises(XpusimError, match="int8") as e:
        simulate("alveo-u280", "llama-2-7b", Decode(1, 128))
    assert "\n" not in str(e.value)


def test_cli_simulate_on_u280(capsys):
    from xpusim.cli import main

    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "640",
                 "--weight-dtype", "int4-g128", "--act-dtype", "int8", "--kv-dtype", "int8"]) == 0
    assert "latency" in capsys.readouterr().out


# --- functional references -----------------------------------------------------------------------------


@FAST
@given(k=st.integers(1, 70), group=st.integers(1, 8), seed=st.integers(0, 999))
def test_packed_int8_chain_equals_two_dot_products(k, group, seed):
    r = np.random.default_rng(seed)
    a_hi, a_lo = r.integers(-127, 128, (50, k)), r.integers(-127, 128, (50, k))
    w = r.integers(-128, 128, (50, k))
    hi, lo = packed_chain_dot(a_hi, a_lo, w, group)
    np.testing.assert_array_equal(hi, (a_hi * w).sum(-1))
    np.testing.assert_array_equal(lo, (a_lo * w).sum(-1))


def test_packing_is_exact_at_the_extremes_and_needs_the_overflow_adjust_beyond_8():
    worst = np.full((1, 8), -127)
    hi, lo = packed_chain_dot(worst, worst, np.full((1, 8), -128))
    assert hi[0] == lo[0] == 8 * 127 * 128
    with pytest.raises(XpusimError):
        packed_chain_dot(worst, worst, np.full((1, 8), -128), group=9)


@FAST
@given(n=st.sampled_from([0, 1, 2, 4]), groups=st.integers(1, 8), rows=st.integers(1, 5), seed=st.integers(0, 999))
def test_nm_sparse_chain_equals_the_dense_product_of_the_pruned_weights(n, groups, rows, seed):
    m = 4
    r = np.random.default_rng(seed)
    w = r.standard_normal(groups * m)
    values, idx = nm_prune(w, n, m)
    dense = dense_of(values, idx, m)
    assert (np.count_nonzero(dense.reshape(groups, m), axis=-1) <= n).all()
    x = r.standard_normal((rows, groups * m))
    np.testing.assert_allclose(sparse_chain_dot(x, values, idx, m), x @ dense, atol=1e-12)


def test_u55c_is_the_u280_engine_with_twice_the_hbm():
    a, b = load_arch("alveo-u280"), load_arch("alveo-u55c")
    assert dataclasses.replace(fpga_spec(a).part, ddr_bytes=0.0, ddr_Bps=0.0) == fpga_spec(b).part  # the U55C has no DDR
    assert fpga_spec(a).template == fpga_spec(b).template
    assert b.backing.capacity_bytes == 2 * a.backing.capacity_bytes and b.backing.bandwidth_Bps == a.backing.bandwidth_Bps
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    u280 = simulate("alveo-u280", m, Decode(4, 4096))  # 7B int8 weights + a long KV cache overflow the U280's 8 GB HBM
    u55c = simulate("alveo-u55c", m, Decode(4, 4096))  # the U55C's 16 GB hold them
    assert u280.inputs["fpga_tiers"]["weights"] == "hbm+ddr" and "fpga_tiers" not in u55c.inputs
    assert u280.latency_s > 1.5 * u55c.latency_s  # the weights in the card's DDR stream at 38.5 GB/s


def test_vck190_dsp58_chains_take_a_three_element_dot_product_along_k():
    a = load_arch("versal-vck190")
    s = fpga_spec(a)
    assert (s.part.dsp, s.part.bram, s.part.uram, s.part.lut, s.part.dsp_kind) == (1968, 967, 463, 899840, "dsp58")
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    r = simulate(a, m, Prefill(1, 512))
    q = r.ops.set_index("name").loc["q_proj"]
    t = s.template
    steps = 512 * -(-m.d_model // (t.cores * t.vpus)) * -(-m.d_model // (t.chain * t.macs_per_dsp))  # p_M = 1
    assert q["bound"] == "compute" and q["latency_s"] == pytest.approx(steps / 225e6, rel=1e-9)
    # a GEMV keeps every DSP58 MAC busy (p_M = 1), where a DSP48E2 leaves its second packed row idle
    maps = {k.split(".")[-1]: v for k, v in simulate(a, m, Decode(1, 128)).mappings.items()}
    u280 = {k.split(".")[-1]: v for k, v in simulate("alveo-u280", m, Decode(1, 128)).mappings.items()}
    assert (maps["q_proj"]["p_M"], maps["q_proj"]["p_K"]) == (1, 48) and (u280["q_proj"]["p_M"], u280["q_proj"]["p_K"]) == (2, 16)


def test_length_adaptive_compilation_runs_attention_at_the_bucket_length():
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")

    def attn(arch, phase):
        return simulate(arch, m, phase).ops.set_index("name").loc["attn_score", "latency_s"]

    # decode buckets of 16: 641..656 run as 656, 657 starts the next bucket
    assert attn("alveo-u280", Decode(1, 640)) < attn("alveo-u280", Decode(1, 641)) == attn("alveo-u280", Decode(1, 656))
    assert attn("alveo-u280", Decode(1, 656)) < attn("alveo-u280", Decode(1, 657))
    # prefill buckets of 128: a 129-token prompt's attention costs a 256-token one's
    assert attn("alveo-u280", Prefill(1, 129)) == attn("alveo-u280", Prefill(1, 256)) > attn("alveo-u280", Prefill(1, 128))
    # without buckets every length is its own
    d = copy.deepcopy(RAW)
    del d["fpga"]["template"]["length_buckets"]
    plain = arch_from_dict(d)
    assert attn(plain, Decode(1, 641)) < attn(plain, Decode(1, 656))


def test_short_multi_query_steps_use_the_decode_bucket_and_padding_is_not_useful_work():
    from xpusim.workloads.phases import Verify

    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    verify = simulate("alveo-u280", m, Verify(1, 640, 4)).ops.set_index("name")
    decode = simulate("alveo-u280", m, Decode(1, 641)).ops.set_index("name")
    # 4 queries over 644 keys run at 656 keys (the decode bucket), not at a 128-query prefill bucket
    assert verify.loc["attn_score", "latency_s"] < 8 * decode.loc["attn_score", "latency_s"]
    padded = simulate("alveo-u280", m, Decode(1, 641)).ops.set_index("name")  # keys run at 656
    exact = simulate("alveo-u280", m, Decode(1, 656)).ops.set_index("name")
    assert padded.loc["attn_score", "utilization"] == pytest.approx(exact.loc["attn_score", "utilization"] * 641 / 656)
    # a prefill runs as the program of its bucket: 129 prompt tokens cost what 256 do, 129 are delivered
    p129, p256 = simulate("alveo-u280", m, Prefill(1, 129)), simulate("alveo-u280", m, Prefill(1, 256))
    assert p129.latency_s == pytest.approx(p256.latency_s) and p129.tokens == 129 and p129.inputs["compiled_seq"] == 256
    # MLA's latent up-projections (no query dim) keep their length
    from xpusim.mappers.fpga import compiled_lengths
    from xpusim.workloads import build_trace

    ds = load_model("deepseek-v3").with_formats("int8", "int8", "int8")
    ops = [o for b in build_trace(ds, Prefill(1, 129), mla_form="naive").blocks for o in b.ops if o.name in ("k_up", "v_up")]
    assert ops and all(compiled_lengths(o, load_arch("alveo-u280")) is o for o in ops)


@settings(max_examples=300, deadline=None)
@given(groups=st.integers(1, 64), m=st.integers(1, 2048), n=st.integers(1, 8192), k=st.integers(1, 8192),
       kib=st.integers(1, 4096), grow=st.integers(2, 8))
def test_buffer_tiling_never_beats_the_compulsory_traffic_and_more_buffer_never_hurts(groups, m, n, k, kib, grow):
    import dataclasses

    from xpusim.mappers.fpga import buffer_tiling
    from xpusim.mappers.pim import Gemv

    g = Gemv(groups, m, n, k, 1.0, 1.0, 4.0, "int8", "w")
    t = fpga_spec(load_arch("alveo-u280")).template
    small = dataclasses.replace(t, buffers={b: kib * 1024.0 for b in t.buffers})
    big = dataclasses.replace(t, buffers={b: kib * 1024.0 * grow for b in t.buffers})
    a, b = buffer_tiling(g, small, 1.0), buffer_tiling(g, big, 1.0)
    assert b["hbm_bytes"] <= a["hbm_bytes"]
    # compulsory: the matrix once, plus the activations and outputs unless a core's share of them fits
    per_core = kib * 1024 / t.cores
    n_core = -(-groups * n // t.cores)
    heads = min(groups, -(-n_core // n) + (1 if n_core % n else 0))
    fits = heads * m * k <= per_core and m * n_core <= per_core
    assert a["hbm_bytes"] >= groups * n * k + (0 if fits else groups * m * k + groups * m * n)
    if fits:
        assert a["hbm_bytes"] == groups * n * k  # everything on chip: only the matrix streams, once


def test_decode_keeps_activations_on_chip_and_small_buffers_make_prefill_stream_more():
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    dec = simulate("alveo-u280", m, Decode(1, 640))
    for key, mp in dec.mappings.items():
        if "tiling" in mp:
            assert (mp["tiling"], mp["weight_passes"]) == ("rows", 1), key
    d = copy.deepcopy(RAW)
    d["fpga"]["template"]["buffers"] = {"weights": "96 KiB", "activations": "96 KiB", "global": "96 KiB"}
    d["memory"][1]["capacity"] = "96 KiB"
    tiny = arch_from_dict(d)
    full, cramped = (simulate(a, m, Prefill(1, 512)).ops.set_index("name") for a in ("alveo-u280", tiny))
    assert cramped.loc["gate_proj", "bytes_hbm"] > 1.5 * full.loc["gate_proj", "bytes_hbm"]


@FAST
@given(m=st.integers(1, 5), n=st.integers(1, 20), groups=st.integers(1, 3), chain=st.sampled_from([5, 8, 16, 24]),
       vpus=st.integers(1, 9), weights=st.sampled_from(["int8", "int4"]), seed=st.integers(0, 999))
def test_the_tiled_mixed_precision_engine_computes_the_quantised_product(m, n, groups, chain, vpus, weights, seed):
    from xpusim.workloads.functional.fpga import engine_matmul

    r = np.random.default_rng(seed)
    k = 32 * groups
    x, w = r.standard_normal((m, k)), r.standard_normal((n, k))
    y, acc, c = engine_matmul(x, w, weights, chain=chain, vpus=vpus, group=32)
    g = k if weights == "int8" else 32
    # the tiled, packed integer arithmetic equals the direct integer dot products of every group
    direct = np.einsum("mgk,ngk->mng", c["qx"].reshape(m, k // g, g), c["qw"].reshape(n, k // g, g))
    np.testing.assert_array_equal(acc, direct)
    # the fp32 result is the product of the dequantised operands...
    xq = c["qx"] * c["sx"][:, None]
    wq = (c["qw"].reshape(n, k // g, g) * c["sw"][..., None]).reshape(n, k)
    np.testing.assert_allclose(y, xq @ wq.T, rtol=1e-5, atol=1e-5 * np.abs(xq).sum() * np.abs(wq).max())
    # ...within half a quantisation step per operand of the float product
    dx = np.broadcast_to(c["sx"][:, None] / 2, x.shape)
    dw = np.repeat(c["sw"] / 2, g, axis=1)
    assert (np.abs(x - xq) <= dx * (1 + 1e-12)).all() and (np.abs(w - wq) <= dw * (1 + 1e-12)).all()
    bound = np.abs(x) @ dw.T + dx @ np.abs(w).T + dx @ dw.T
    assert (np.abs(y - x @ w.T) <= bound * (1 + 1e-4) + 1e-4).all()


def test_results_and_reports_show_what_the_template_uses_of_the_part(capsys):
    from xpusim.cli import main
    from xpusim.reports.build import simulate_report

    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    r = simulate("alveo-u280", m, Decode(1, 128))
    spec = fpga_spec(load_arch("alveo-u280"))
    used = estimate_resources(spec)
    assert r.inputs["fpga_resources"]["dsp"] == {"used": used["dsp"], "available": 9024}
    assert set(r.inputs["fpga_resources"]) == {"dsp", "bram", "uram", "lut", "ff"}
    g = simulate("h100-sxm", m.with_formats("fp16", "fp16", "fp16"), Decode(1, 128))
    fpga_page, gpu_page = simulate_report([r]), simulate_report([g])
    assert "FPGA resources" in fpga_page and "FPGA resources" not in gpu_page
    assert fpga_page.count('<div class="figure"') == gpu_page.count('<div class="figure"') + 1
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "64"]) == 0
    assert f"FPGA resources: DSP {used['dsp']:,} of 9,024" in capsys.readouterr().out


def test_a_system_of_fpgas_runs_the_same_bucketed_prefill(tmp_path):
    from xpusim.sim.events import simulate_system
    from xpusim.sim.parallel import Plan

    p = tmp_path / "2x-u280.yaml"
    p.write_text("name: 2x-u280\ndevice: alveo-u280\ndevices_per_node: 2\nnodes: 1\n"
                 "intra: {topology: switch, bandwidth: 12.5 GB/s, latency: 1 us}\n")
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    one = simulate("alveo-u280", m, Prefill(1, 100))
    sys1 = simulate_system(str(p), m, Prefill(1, 100), Plan(tp=1))
    assert sys1.latency_s == pytest.approx(one.latency_s) and sys1.tokens == 100
    assert sys1.inputs["fpga_resources"] == one.inputs["fpga_resources"]


def test_op_defaults_to_the_engine_format(capsys):
    import json

    from xpusim.cli import main

    assert main(["op", "gemm", "--m", "1", "--n", "4096", "--k", "4096", "--arch", "alveo-u280", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dtype"] == "int8" and out["mapping"]["mode"] == "MV"
    assert main(["op", "gemm", "--m", "64", "--n", "64", "--k", "64", "--arch", "h100-sxm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "bf16"


# --- HBM pseudo-channel assignment (mappers/fpga_hbm.py) -------------------------------------------------------------

from xpusim.mappers.fpga_hbm import core_channels, hbm_plan  # noqa: E402
from xpusim.workloads.einsum import gemm_op  # noqa: E402


def hbm_variant(part=None, **template):
    d = copy.deepcopy(RAW)
    d["fpga"]["part"].update(part or {})
    d["fpga"]["template"].update(template)
    t = d["fpga"]["template"]
    d["matrix"]["instances"] = t["cores"] * t["vpus"]
    d["vector"]["instances"] = d["memory"][1]["instances"] = t["cores"]
    return arch_from_dict(d)


@FAST
@given(channels=st.integers(1, 64), cores=st.integers(1, 8), columns=st.integers(1, 100_000),
       layout=st.sampled_from(["per_core", "striped"]), remote=st.floats(0.05, 1.0),
       nbytes=st.floats(1.0, 1e10))
def test_channel_plans_deal_out_every_column_and_never_beat_the_aggregate_bandwidth(channels, cores, columns, layout,
                                                                                   remote, nbytes):
    if layout == "per_core" and channels < cores:
        return
    plan = hbm_plan(channels, cores, layout, remote)
    assert sum(plan.local) == channels and max(plan.local) - min(plan.local) <= 1
    split = plan.split(columns)
    assert split.sum() == columns and np.all(split >= 0)
    assert np.all(np.abs(split - np.asarray(plan.share) * columns) < 1.0)  # whole columns, in proportion
    rate = 1e9
    t = plan.seconds(nbytes * split / columns, rate)
    assert t >= nbytes / (channels * rate) * (1 - 1e-12)  # no layout beats every channel busy
    if layout == "per_core" and channels % cores == 0 and columns % cores == 0:
        assert t == pytest.approx(nbytes / (channels * rate))  # even groups, even shares: every channel busy


def test_per_core_groups_are_contiguous_and_as_even_as_the_counts_allow():
    assert core_channels(32, 3) == (11, 11, 10)
    assert core_channels(32, 1) == (32,)
    assert core_channels(32, 4) == (8, 8, 8, 8)


def test_u280_per_core_layout_loses_nothing_to_uneven_groups_and_striping_pays_the_switch():
    a = load_arch("alveo-u280")
    s = fpga_spec(a)
    assert (s.part.hbm_channels, s.part.hbm_remote_efficiency, s.template.hbm_layout) == (32, 0.5, "per_core")
    op = gemm_op(1, 11008, 4096, dtype="int8", name="up")  # a decode GEMV: weight streaming
    pooled = 4096 * 11008 / (460e9 * s.template.hbm_efficiency)  # the bytes over the whole HBM's sustained rate
    from xpusim.sim.engine import op_cost

    per_core = op_cost(op, a)
    assert per_core.detail["memory_s"] == pytest.approx(pooled, rel=1e-3)  # 11/11/10 groups take 11/11/10 shares
    assert per_core.mapping["core_columns"] == [3784, 3784, 3440]
    striped = op_cost(op, hbm_variant(hbm_layout="striped"))
    # every channel serves each core a third of its bytes, two thirds of them through the switch at half rate
    assert striped.detail["memory_s"] == pytest.approx(pooled * (1 + 2 / 0.5) / 3, rel=1e-3)
    assert striped.mapping["core_columns"] == [3670, 3669, 3669]
    no_switch = op_cost(op, hbm_variant(part={"hbm_remote_efficiency": 1.0}, hbm_layout="striped"))
    assert no_switch.detail["memory_s"] == pytest.approx(pooled, rel=1e-3)


def test_striping_evens_the_compute_of_a_compute_bound_prefill():
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    per_core = simulate("alveo-u280", m, Prefill(1, 512))
    striped = simulate(hbm_variant(hbm_layout="striped"), m, Prefill(1, 512))
    assert striped.latency_s < per_core.latency_s < 1.05 * striped.latency_s  # 11/32 of the columns vs a third
    decode_per_core = simulate("alveo-u280", m, Decode(1, 512))
    decode_striped = simulate(hbm_variant(hbm_layout="striped"), m, Decode(1, 512))
    assert decode_striped.latency_s > 1.5 * decode_per_core.latency_s  # memory-bound decode pays the switch


def test_results_report_the_fullest_channel(capsys):
    from xpusim.cli import main

    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    r = simulate("alveo-u280", m, Decode(1, 512))
    hc = r.inputs["hbm_channels"]
    stored = r.weights_bytes + r.kv_cache_bytes
    assert hc["channels_per_core"] == [11, 11, 10] and hc["channel_capacity_bytes"] == 2**33 / 32
    assert hc["fullest_channel_bytes"] == pytest.approx(stored / 32)
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "512"]) == 0
    assert "HBM channels: per_core layout over 32 pseudo-channels" in capsys.readouterr().out
    assert "hbm_channels" not in simulate("versal-vck190", m, Decode(1, 512), check_memory=False).inputs


def test_the_largest_cores_outputs_decide_what_stays_on_chip():
    from xpusim.sim.engine import op_cost

    a = load_arch("alveo-u280")
    glob = fpga_spec(a).template.buffers["global"] / 3  # one core's global buffer, 1 MiB
    c = op_cost(gemm_op(1024, 3072, 1024, dtype="int8"), a)
    assert c.mapping["core_columns"] == [1056, 1056, 960]
    assert 1024 * 1056 > glob >= 1024 * 1024  # an even third's outputs would fit, the largest core's do not
    assert c.mapping["tiling"] != "rows" or c.mapping["weight_passes"] > 1


@pytest.mark.parametrize("part, template, msg", [
    ({"hbm_remote_efficiency": None}, {}, "go together"),
    ({"hbm_channels": None}, {}, "go together"),
    ({"hbm_channels": None, "hbm_remote_efficiency": None}, {"hbm_layout": "striped"}, "needs the part's hbm_channels"),
    ({"hbm_channels": 4096}, {}, "at most 1024"),
    ({"hbm_channels": 2}, {}, "a channel per core"),
    ({}, {"hbm_layout": "diagonal"}, "per_core or striped"),
    ({"hbm_remote_efficiency": 0.0}, {}, "hbm_remote_efficiency"),
])
def test_bad_hbm_channel_fields_are_one_line_errors(part, template, msg):
    d = copy.deepcopy(RAW)
    for k, v in part.items():
        if v is None:
            d["fpga"]["part"].pop(k)
        else:
            d["fpga"]["part"][k] = v
    d["fpga"]["template"].update(template)
    with pytest.raises(SpecError, match=msg) as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)


def test_hbm_channels_need_an_hbm_backing_level():
    d = copy.deepcopy(RAW)
    d["memory"][0]["kind"] = "ddr4"
    with pytest.raises(SpecError, match="describes HBM") as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)


# --- board power (fpga.power, validation/fit_fpga_power.py) --------------------------------------------------------------


def test_the_preset_power_is_the_fit():
    from xpusim.validation.fit_fpga_power import fit

    p, s = fit(), fpga_spec(load_arch("alveo-u280")).power
    assert s.board_idle_w == pytest.approx(p["board_idle_w"], rel=1e-3)
    assert s.dsp_j == pytest.approx(p["dsp_j"], rel=1e-3) and s.lut_j == pytest.approx(p["lut_j"], rel=1e-3)
    assert 0.7 < p["e1_dsp_j"] / p["dsp_j"] < 1.3  # another design's DSP category agrees within 30 %


def test_running_power_is_the_idle_board_and_the_templates_logic_and_memory_traffic_on_top():
    a = load_arch("alveo-u280")
    s = fpga_spec(a)
    used = estimate_resources(s)
    logic = 225e6 * (s.power.dsp_j * used["dsp"] + s.power.lut_j * used["lut"])
    assert a.static_power_w == pytest.approx(s.power.board_idle_w + logic)
    assert a.matrix.energy("int8") == 0.0  # the MACs' switching is in the logic power
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    r = simulate(a, m, Decode(1, 640))
    traffic = float((r.ops["bytes_hbm"] * r.ops["repeat"]).sum()) * a.backing.read_energy_pj_per_byte * 1e-12
    assert r.energy_j == pytest.approx(a.static_power_w * r.latency_s + traffic, rel=0.02)
    assert r.inputs["fpga_power"]["running_w"] == pytest.approx(a.static_power_w)
    smaller = variant(vpus=64)  # half the DSPs and LUTs: less logic power
    assert smaller.static_power_w < a.static_power_w


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["fpga"]["power"].update(board_idle="-3 W"), "board_idle: must be positive"),
    (lambda d: d["fpga"]["power"].update(dsp_energy="3 pW"), "not a joules unit"),
    (lambda d: d["fpga"]["power"].pop("lut_energy"), "missing lut_energy"),
    (lambda d: d.update(static_power="30 W"), "not both"),
    (lambda d: d["fpga"].update(power=None), "power: must be a mapping"),
    (lambda d: d["fpga"]["power"].update(lut_energy="1e6 J"), "at most 1e-09 J"),
    (lambda d: d["matrix"].update(energy_pj_per_mac={"int8": 0.2}), "energy_pj_per_mac or fpga.power"),
    (lambda d: d["fpga"]["part"].update(dsp_fmax=775), "with its unit"),
])
def test_bad_power_sections_are_one_line_errors(mutate, msg):
    assert_refused(mutate, msg)


def test_cli_prints_the_board_power(capsys):
    from xpusim.cli import main

    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "640"]) == 0
    out = capsys.readouterr().out
    assert "board power: 26.9 W idle + 7.3 W engine logic" in out


def test_a_clock_above_the_parts_dsp_maximum_does_not_close():
    d = copy.deepcopy(RAW)
    d["clock"] = "775 MHz"  # exactly the DSP48E2's maximum at -2 (AMD DS923): allowed
    arch_from_dict(d)
    d["clock"] = "800 MHz"
    with pytest.raises(CapacityError, match="exceeds the part's DSP maximum of 775 MHz") as e:
        arch_from_dict(d)
    assert "\n" not in str(e.value)
    d["fpga"]["part"].pop("dsp_fmax")  # a part without the data-sheet figure is not checked
    arch_from_dict(d)


def test_every_board_of_a_system_draws_its_power_for_the_whole_step(tmp_path):
    """Static power over the wall time: a pipeline of four boards pays four boards' idle and logic power
    for the whole step, while the dynamic energy (the weights streamed once) stays one board's."""
    from xpusim.arch.system import load_system
    from xpusim.sim.events import simulate_system
    from xpusim.sim.parallel import Plan

    (tmp_path / "u280x4.yaml").write_text("name: u280x4\ndevice: alveo-u280\ndevices_per_node: 4\nnodes: 1\n"
                                          "intra: {topology: ring, bandwidth: 12.5 GB/s, latency: 2 us}\n")
    system = load_system(str(tmp_path / "u280x4.yaml"))
    watts = system.device.static_power_w
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    one = simulate_system(system, m, Decode(1, 640), Plan(), check_memory=False)
    for plan in (Plan(pp=4), Plan(tp=4)):
        r = simulate_system(system, m, Decode(1, 640), plan, check_memory=False)
        dynamic = r.energy_j - watts * 4 * r.latency_s
        assert dynamic > 0
        if plan.pp == 4:  # one micro-batch: the same weight traffic as one board
            assert dynamic == pytest.approx(one.energy_j - watts * one.latency_s, rel=0.01)


def test_an_fpga_host_draws_its_power_while_the_pim_works():
    from xpusim.sim.hetero import simulate_hetero

    host = load_arch("alveo-u280")
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    d = yaml.safe_load((PRESETS_DIR / "aim-gddr6.yaml").read_text())
    d["matrix"]["macs_per_cycle"]["int8"] = d["matrix"]["macs_per_cycle"]["bf16"]  # an int8 variant: PUs take operands as stored
    r = simulate_hetero(host, arch_from_dict(d), m, Decode(1, 640), "pim", "blocked")
    assert (r.ops["device"] == "pim").all()
    assert r.energy_j >= host.static_power_w * r.latency_s  # the board idles, powered, through the PIM's step
    assert r.inputs["fpga_power"]["running_w"] == pytest.approx(host.static_power_w)


# --- the card's DDR behind the HBM (fpga.part.ddr, mappers/tiers.py) ------------------------------------------------------


def test_weights_beyond_the_hbm_stream_from_the_cards_ddr_at_once_with_it():
    a = load_arch("alveo-u280")
    s = fpga_spec(a)
    m = load_model("gpt3-13b").with_formats("int8", "int8", "int8")
    r = simulate(a, m, Decode(1, 640))
    place = r.inputs["fpga_tiers"]
    hbm = a.backing.capacity_bytes
    assert place["kv"] == "hbm" and place["weights_hbm"] == pytest.approx((hbm - r.kv_cache_bytes) / r.weights_bytes)
    ddr_rate = s.part.ddr_Bps * s.template.hbm_efficiency
    in_ddr = r.weights_bytes * (1 - place["weights_hbm"])
    assert r.latency_s >= 0.95 * in_ddr / ddr_rate  # the DDR's share streams every step (all but the embeddings)
    assert r.latency_s < 1.05 * in_ddr / ddr_rate + 0.05  # and the HBM's share streams at the same time
    assert set(r.ops.loc[r.ops["kind"] == "matmul", "bound"]) >= {"ddr"}
    small = simulate(a, load_model("llama-2-7b").with_formats("int8", "int8", "int8"), Decode(1, 640))
    assert small.inputs["fpga_tiers"]["weights"] == "hbm"  # a model the HBM holds never touches the DDR


def test_a_model_beyond_hbm_and_ddr_does_not_fit():
    m = load_model("llama-3-70b").with_formats("int8", "int8", "int8")
    with pytest.raises(CapacityError) as e:
        simulate("alveo-u280", m, Decode(1, 640))
    assert "\n" not in str(e.value)


def _ddr_backed(d):
    d["memory"][0]["kind"] = "ddr4"
    for k in ("hbm_channels", "hbm_remote_efficiency"):
        d["fpga"]["part"].pop(k)
    d["fpga"]["template"].pop("hbm_layout")


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["fpga"]["part"].update(ddr={"capacity": "32 GiB"}), "missing bandwidth"),
    (lambda d: d["fpga"]["part"].update(ddr={"capacity": "0 GiB", "bandwidth": "38 GB/s"}), "ddr.capacity"),
    (lambda d: _ddr_backed(d), "behind an HBM"),
])
def test_bad_ddr_tiers_are_one_line_errors(mutate, msg):
    """A malformed ddr section, or one on a part whose backing memory is already DDR."""
    assert_refused(mutate, msg)


# --- a part whose resource counts are unpublished (versal-vhk158) ----------------------------------------


def test_vhk158_engine_matches_flightllm_s_configuration_and_its_fit_is_not_checked():
    a = load_arch("versal-vhk158")
    s = fpga_spec(a)
    assert set(s.part.unpublished) == {"dsp", "bram", "uram", "lut", "ff"}
    assert s.template.dsps == 2 * 16 * 128  # the artifact's MM parallelism, in DSP58s
    assert a.backing.capacity_bytes == 32 * 2**30 and a.backing.bandwidth_Bps == pytest.approx(819.2e9)
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    r = simulate(a, m, Decode(1, 640))
    assert all(v["available"] is None and v["used"] > 0 for v in r.inputs["fpga_resources"].values())
    # decode streams the INT8 weights at the profiler's 70 % of 819.2 GB/s
    assert 1 / r.latency_s == pytest.approx(0.7 * 819.2e9 / r.ops["bytes_hbm"].mul(r.ops["repeat"]).sum(), rel=0.1)
    with pytest.raises(SpecError, match="DSP count is unpublished"):
        s.part.count("dsp")


def test_an_unpublished_count_skips_only_its_own_check():
    d = copy.deepcopy(RAW)
    d["fpga"]["part"]["lut"] = "unpublished"
    d["fpga"]["template"]["vpus"] = 256  # 12,288 DSPs: over the U280's 9,024, which are published
    d["matrix"]["instances"] = 3 * 256
    with pytest.raises(CapacityError, match="DSP"):
        arch_from_dict(d)
    d["fpga"]["part"]["dsp"] = "unpublished"
    a = arch_from_dict(d)  # nothing published left to overflow
    assert fpga_spec(a).part.unpublished == ("dsp", "lut")


def test_a_search_scoring_an_unpublished_resource_is_refused_in_one_line():
    from xpusim import XpusimError
    from xpusim.explore.space import parse_space

    knobs = {"vpus": {"path": "device.fpga.template.vpus", "choices": [32, 64]},
             **{k: {"path": f"model.{k}", "choices": ["int8"]} for k in ("weight_dtype", "act_dtype", "kv_dtype")}}
    with pytest.raises(XpusimError, match="dsp_fraction: the part's DSP count is unpublished") as e:
        parse_space({"name": "t", "base": "versal-vhk158", "knobs": knobs, "workloads": [
            {"model": "llama-2-7b", "phase": "decode", "batch": 1, "context": 128}], "objectives": ["latency", "dsp_fraction"]})
    assert "\n" not in str(e.value)


def test_causal_prefill_skips_the_empty_64x64_score_blocks():
    """FlightLLM's prefill attention runs under block masks (64 x 64 in its artifact): a causal 2,048-token
    prefill computes 33 of every 64 score blocks, on the DSP chains (scores, context) and the SFUs (softmax)."""
    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    skip = simulate("alveo-u280", m, Prefill(1, 2048)).ops.set_index("name")
    d = copy.deepcopy(RAW)
    del d["fpga"]["template"]["attention_block"]
    full = simulate(arch_from_dict(d), m, Prefill(1, 2048)).ops.set_index("name")
    for name in ("attn_score", "softmax", "attn_context"):
        assert skip.loc[name, "latency_s"] / full.loc[name, "latency_s"] == pytest.approx(33 / 64, rel=0.01)
    assert skip.loc["q_proj", "latency_s"] == full.loc["q_proj", "latency_s"]  # nothing else changes


def test_a_chunked_prefill_never_beats_the_whole_prompt_on_the_engine():
    from xpusim.sim.steps import simulate_chunked_prefill

    m = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    whole = simulate("alveo-u280", m, Prefill(1, 2048)).latency_s
    for chunk in (256, 1024):
        assert simulate_chunked_prefill("alveo-u280", m, 1, 2048, chunk).latency_s >= whole


@pytest.mark.parametrize("value", [0, -64, 2.5, "big"])
def test_a_bad_attention_block_is_a_one_line_error(value):
    assert_refused(lambda d: d["fpga"]["template"].update(attention_block=value), "attention_block")


def test_the_sfu_lanes_set_the_vector_rate_in_presets_and_searches():
    # an sfu_lanes knob once added BRAM but left the softmax rate unchanged
    from xpusim.explore.space import device_dict, parse_space

    assert_refused(lambda d: d["fpga"]["template"].update(sfu_lanes=32), "vector must be the template's SFUs")
    knobs = {"lanes": {"path": "device.fpga.template.sfu_lanes", "choices": [16, 64]}}
    space = parse_space({"name": "s", "base": "alveo-u280", "knobs": knobs, "objectives": ["latency"],
                         "workloads": [{"model": "llama-2-7b", "phase": "decode", "batch": 1, "context": 640}]})
    d = device_dict(space, {"lanes": 64})
    assert d["vector"]["flops_per_cycle"] == {"fp16": 64, "fp32": 64}
    a = arch_from_dict(d)
    assert estimate_resources(fpga_spec(a))["bram"] == 3 * 64


def test_balanced_tiers_on_a_card_never_make_a_larger_hbm_slower():
    """The U280 with weights filled into HBM (FlightLLM's design) was 7.4 % slower than a card with
    7 GiB of HBM that streams the rest from DDR at once; ``tiers: balance`` never is."""
    from xpusim.sim.engine import with_engine_formats

    d0 = yaml.safe_load((PRESETS_DIR / "alveo-u280.yaml").read_text())
    prev = float("inf")
    for cap in ("4 GiB", "6 GiB", "7 GiB", "8 GiB", "16 GiB"):
        d = copy.deepcopy(d0)
        d["memory"][0]["capacity"] = cap
        d["fpga"]["template"]["tiers"] = "balance"
        a = arch_from_dict(d, "u280-balance")
        t = simulate(a, with_engine_formats(load_model("llama-3-8b"), a), Decode(1, 1024), check_memory=False).latency_s
        assert t <= prev * (1 + 1e-12), cap
        prev = t
    fill = load_arch("alveo-u280")
    r = simulate(fill, with_engine_formats(load_model("llama-3-8b"), fill), Decode(1, 1024))
    assert r.inputs["fpga_tiers"]["weights"] == "hbm"  # the shipped design keeps what fits in HBM
    assert prev < r.latency_s
    d = copy.deepcopy(d0)
    d["fpga"]["template"]["tiers"] = "spread"
    with pytest.raises(SpecError, match="template.tiers: must be fill or balance"):
        arch_from_dict(d)


def test_a_uram_overflow_suggests_smaller_buffers():
    d = yaml.safe_load((PRESETS_DIR / "alveo-u280.yaml").read_text())
    d["fpga"]["template"]["buffers"]["weights"] = "64 MiB"
    with pytest.raises(CapacityError, match="URAM .*use smaller buffers"):
        arch_from_dict(d)
