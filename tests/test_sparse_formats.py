"""N:M sparse weight formats (``int8-2:4``...): storage, pruning, which devices compute in them, and a
preset's engine formats (``formats:``) that ``xpusim simulate`` applies unless the user chooses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import simulate
from xpusim.arch import load_arch
from xpusim.dtypes import get_dtype
from xpusim.errors import DtypeError, XpusimError
from xpusim.workloads import Decode, Prefill
from xpusim.workloads.functional.formats import prune_nm, quantize
from xpusim.workloads.model import load_model

FAST = settings(max_examples=40, deadline=None)
NM = st.integers(1, 5).flatmap(lambda e: st.tuples(st.integers(1, 2**e - 1), st.just(2**e)))


@FAST
@given(nm=NM, base=st.sampled_from(["int8", "int4-g128", "fp16", "fp8-e4m3"]))
def test_sparse_bytes_are_the_kept_values_with_their_indices(nm, base):
    n, m = nm
    d, b = get_dtype(f"{base}-{n}:{m}"), get_dtype(base)
    idx_bits = max(1, int(np.ceil(np.log2(m)))) if m > 1 else 0
    assert d.bytes == pytest.approx((n / m) * (b.bits + idx_bits) / 8 + b.scale_bits / b.group / 8)
    assert d.bytes < b.bytes * (1 + idx_bits / b.bits) and d.dense == b.name and d.compute == b.compute


@pytest.mark.parametrize("name", ["int8-3:3", "int8-0:4", "int8-4:2", "int8-2:6", "int8-2:4-1:2", "int8-x:4"])
def test_bad_sparsity_is_a_one_line_error(name):
    with pytest.raises(DtypeError) as e:
        get_dtype(name)
    assert "\n" not in str(e.value)


def test_sparsity_applies_to_weights_only():
    m = load_model("llama-2-7b")
    for kw in ({"activations": "int8-2:4"}, {"kv": "int8-2:4"}):
        with pytest.raises(DtypeError, match="weights only"):
            m.with_formats(**kw)
    sparse = m.with_formats("int8-2:4")
    assert sparse.embedding_dtype == "int8"  # embeddings and LM head stay dense
    emb = m.embedding_params
    assert sparse.weights_bytes == pytest.approx(emb + (m.params - emb) * 0.625)


@FAST
@given(nm=NM, rows=st.integers(1, 4), groups=st.integers(1, 4), seed=st.integers(0, 2**16), axis=st.sampled_from([0, 1]))
def test_pruning_keeps_the_n_largest_of_every_m(nm, rows, groups, seed, axis):
    n, m = nm
    x = np.random.default_rng(seed).normal(size=(groups * m, rows) if axis == 0 else (rows, groups * m))
    p = prune_nm(x, n, m, axis)
    g = np.moveaxis(x, axis, -1).reshape(-1, m)
    pg = np.moveaxis(p, axis, -1).reshape(-1, m)
    assert ((pg != 0).sum(-1) == n).all()
    for row, kept in zip(g, pg, strict=True):
        on = kept != 0
        assert np.array_equal(row[on], kept[on]) and np.abs(row[on]).min() >= np.abs(row[~on]).max(initial=0)
    q = quantize(x, f"int8-{n}:{m}", axis)
    assert np.array_equal(q, quantize(p, "int8", axis))


def test_sparse_weights_need_a_sparse_engine():
    m = load_model("llama-2-7b").with_formats("int8-2:4", "int8", "int8")
    for dev in ("v100s", "mi210", "tpu-v4", "hbm2-pim", "sn40l"):
        with pytest.raises(DtypeError, match="no N:M sparse engine") as e:
            simulate(dev, m, Decode(1, 128))
        assert "\n" not in str(e.value)
    with pytest.raises(DtypeError, match="M dividing 16"):
        simulate("alveo-u280", m.with_formats("int8-2:32"), Decode(1, 128))


def test_the_sparse_chain_skips_pruned_weights_and_their_bytes():
    dense = load_model("llama-2-7b").with_formats("int8", "int8", "int8")
    sparse = dense.with_formats("int8-8:16")
    # prefill: compute-bound chains do half the K steps
    cd, cs = (simulate("alveo-u280", x, Prefill(1, 512)) for x in (dense, sparse))
    qd, qs = (r.ops.set_index("name").loc["q_proj"] for r in (cd, cs))
    assert qd["bound"] == "compute" and qs["latency_s"] == pytest.approx(qd["latency_s"] / 2, rel=0.01)
    # decode: memory-bound, the weight stream shrinks to the kept values and indices (12 of 16 bits per weight)
    dd, ds = (simulate("alveo-u280", x, Decode(1, 128)) for x in (dense, sparse))
    qd, qs = (r.ops.set_index("name").loc["q_proj"] for r in (dd, ds))
    assert qd["bound"] == "hbm" and qs["latency_s"] == pytest.approx(qd["latency_s"] * 0.75, rel=0.01)


def test_engine_formats_apply_unless_the_user_chooses(capsys):
    from xpusim.cli import main

    assert load_arch("alveo-u280").meta["formats"] == {"weights": "int8", "activations": "int8", "kv": "int8"}
    assert main(["simulate", "--arch", "alveo-u280", "h100-sxm", "--model", "llama-2-7b", "--phase", "decode",
                 "--context", "640"]) == 0
    out = capsys.readouterr().out
    assert ("formats: weights int8, activations int8, KV int8 (weights, activations, KV from alveo-u280's engine formats)"
            in out)
    assert "formats: weights fp16, activations fp16, KV fp16\n" in out  # the GPU keeps the model's (fp16)
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "640",
                 "--weight-dtype", "int8-8:16"]) == 0
    out = capsys.readouterr().out
    assert ("formats: weights int8-8:16, activations int8, KV int8, embeddings int8 (activations, KV from alveo-u280's "
            "engine formats)") in out  # the embeddings stay dense
    # --format-error measures the formats that ran
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "64",
                 "--format-error"]) == 0
    assert "layer in weights int8 / activations int8 / KV int8 vs float64" in capsys.readouterr().out


def test_bad_engine_formats_are_one_line_errors():
    import copy

    import yaml
    from xpusim.arch import arch_from_dict
    from xpusim.arch.loader import PRESETS_DIR

    raw = yaml.safe_load((PRESETS_DIR / "alveo-u280.yaml").read_text())
    for bad in ({"weights": "int7"}, {"weight": "int8"}, [], {}):
        d = copy.deepcopy(raw)
        d["formats"] = bad
        with pytest.raises(XpusimError) as e:
            arch_from_dict(d)
        assert "\n" not in str(e.value)


def test_sparse_tensor_cores_double_the_math_rate_of_2_4_weights():
    from xpusim.sim.engine import op_cost
    from xpusim.workloads.einsum import Op, Tensor

    def gemm(wdt):
        return Op("w", "matmul", (("m", 8192), ("n", 8192), ("k", 8192)),
                  (Tensor("x", ("m", "k"), "fp16"), Tensor("wt", ("k", "n"), wdt, "weight")), Tensor("y", ("m", "n"), "fp16"))

    for dev in ("a100-80gb", "h100-sxm", "mi300x"):
        a = load_arch(dev)
        dense, sparse = op_cost(gemm("fp16"), a), op_cost(gemm("fp16-2:4"), a)
        assert dense.bound == "compute"
        # half the MMA time, up to the tile and wave choice the smaller weight stages allow
        assert 0.45 < sparse.detail["terms_s"]["compute"] / dense.detail["terms_s"]["compute"] < 0.55
        assert 1.3 < dense.latency_s / sparse.latency_s <= 2.0  # the operand traffic now bounds part of it
    with pytest.raises(DtypeError, match="2:4 sparsity only"):
        op_cost(gemm("fp16-1:4"), load_arch("h100-sxm"))


def test_sparsity_stays_on_contraction_weights():
    from xpusim.workloads import build_trace
    from xpusim.workloads.einsum import Op, Tensor, gemm_op

    # the GEMM helper keeps its activation and output dense
    op = gemm_op(64, 64, 64, "fp16-2:4")
    assert [t.dtype for t in op.tensors] == ["fp16", "fp16-2:4", "fp16"]
    with pytest.raises(DtypeError, match="weight operand of a contraction"):
        Op("n", "norm", (("m", 4), ("d", 8)), (Tensor("x", ("m", "d"), "fp16"), Tensor("g", ("d",), "fp16-2:4", "weight")),
           Tensor("y", ("m", "d"), "fp16"))
    # norms, conv taps and SSM parameters of a sparse model stay dense
    for name in ("llama-2-7b", "jamba-v0.1"):
        m = load_model(name).with_formats("int8-2:4", "int8", "int8")
        for block in build_trace(m, Decode(1, 64)).blocks:
            for o in block.ops:
                sparse = [t for t in o.inputs if get_dtype(t.dtype).sparse_m]
                assert all(o.kind == "matmul" and t.role == "weight" for t in sparse), o.name


def test_every_mapper_refuses_sparse_weights_without_a_sparse_engine():
    from xpusim.sim.engine import matmul_cost
    from xpusim.workloads.einsum import gemm_op

    for mapper in ("default", "exhaustive", "sampled"):
        with pytest.raises(DtypeError, match="no N:M sparse engine"):
            matmul_cost(gemm_op(64, 64, 64, "fp16-2:4"), load_arch("tpu-v4"), mapper=mapper)


def test_a_pim_without_a_sparse_engine_leaves_sparse_weight_gemms_on_the_host():
    from xpusim.sim.hetero import load_hetero, pim_stacks, simulate_hetero

    combo = load_hetero("attacc-a100")
    m = load_model("gpt3-6.7b").with_formats("fp16-2:4", "fp16", "fp16")
    r = simulate_hetero(combo["host"], pim_stacks(combo["pim"], combo["pim_stacks"]), m, Decode(64, 228), "attention")
    on_pim = r.ops[r.ops["device"] == "pim"]
    assert len(on_pim) and on_pim["kind"].isin(["attention", "matmul", "softmax"]).all()
    auto = simulate_hetero(combo["host"], pim_stacks(combo["pim"], combo["pim_stacks"]), m, Decode(64, 228), "auto")
    assert not auto.ops.loc[auto.ops["name"] == "q_proj", "device"].eq("pim").any()
    with pytest.raises(DtypeError):
        simulate_hetero(combo["host"], pim_stacks(combo["pim"], combo["pim_stacks"]), m, Decode(64, 228), "pim")


def test_sparse_utilization_and_energy_count_the_performed_macs():
    from xpusim.sim.engine import op_cost
    from xpusim.workloads.einsum import gemm_op

    a = load_arch("alveo-u280")
    dense, sparse = op_cost(gemm_op(4096, 4096, 4096, "int8"), a), op_cost(gemm_op(4096, 4096, 4096, "int8-2:4"), a)
    assert 0.9 < sparse.utilization <= 1.0 and 0.9 < dense.utilization <= 1.0
    assert sparse.energy_by_component["compute"] == pytest.approx(dense.energy_by_component["compute"] / 2)
    h = load_arch("h100-sxm")
    gd, gs = op_cost(gemm_op(8192, 8192, 8192, "fp16"), h), op_cost(gemm_op(8192, 8192, 8192, "fp16-2:4"), h)
    assert gs.energy_by_component["compute"] == pytest.approx(gd.energy_by_component["compute"] / 2)


def test_engine_formats_reach_speculation_serving_and_embeddings(capsys):
    from xpusim.cli import main

    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "speculative", "--context", "512",
                 "--draft-tokens", "4", "--acceptance", "0.7", "--medusa-heads", "4"]) == 0
    assert main(["serve", "--arch", "alveo-u280", "--model", "llama-2-7b", "--requests", "4", "--rate", "1",
                 "--input-tokens", "128", "--output-tokens", "16"]) == 0
    assert main(["simulate", "--arch", "alveo-u280", "--model", "bitnet-b1.58-2b4t", "--phase", "decode",
                 "--context", "64"]) == 0  # its bf16 embeddings run in the engine's INT8 too
    assert main(["simulate", "--arch", "alveo-u280", "--model", "bitnet-b1.58-2b4t", "--phase", "decode",
                 "--context", "64", "--weight-dtype", "int4-g128"]) == 0  # also when the user picks the weights
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "speculative", "--context", "640",
                 "--draft-tokens", "4", "--acceptance", "0.7", "--draft-model", "llama-2-7b"]) == 0  # the drafter too
    capsys.readouterr()


@pytest.mark.parametrize("name, fmt", [("mamba-2.8b", "fp16-2:4"), ("jamba-v0.1", "fp16-2:4"), ("t5-base", "fp16-2:4")])
def test_every_model_family_runs_with_sparse_weights_on_a_sparse_engine(name, fmt):
    """Every family's weight GEMMs take the sparse format (SSM projections, a hybrid's experts, an
    encoder-decoder's cross-attention), so the step moves fewer weight bytes and runs faster than dense."""
    from xpusim.workloads import build_trace

    m = load_model(name).with_formats(fmt, "fp16", "fp16")
    dense = load_model(name).with_formats("fp16", "fp16", "fp16")
    phase = Decode(1, 64, source=32 if m.encoder_layers else 0)
    r = simulate("h100-sxm", m, phase, check_memory=False)
    d = simulate("h100-sxm", dense, phase, check_memory=False)
    weights = [op.inputs[1] for _, op in build_trace(m, phase).ops()
               if op.kind == "matmul" and len(op.inputs) == 2 and op.inputs[1].role == "weight"]
    assert weights and all(t.dtype == fmt for t in weights if not t.name.startswith(("embed", "lm_head")))
    assert r.weights_bytes < d.weights_bytes and r.latency_s < d.latency_s


def test_host_pim_json_is_strict(capsys):
    import json

    from xpusim.cli import main

    assert main(["simulate", "--arch", "attacc-a100", "--model", "gpt3-6.7b", "--phase", "decode", "--batch", "8",
                 "--context", "128", "--weight-dtype", "fp16-2:4", "--act-dtype", "fp16", "--kv-dtype", "fp16",
                 "--json"]) == 0

    def refuse(c):
        raise ValueError(c)

    json.loads(capsys.readouterr().out, parse_constant=refuse)


@pytest.mark.parametrize("name", ["int8-\u00b2:4", "int8-\u0663:4"])
def test_non_ascii_digits_are_a_one_line_error(name):
    with pytest.raises(DtypeError):
        get_dtype(name.encode().decode("unicode_escape"))


def test_every_simulate_path_prints_its_formats_and_format_error(capsys):
    from xpusim.cli import main

    runs = [["--system", "dgx-a100", "--tp", "2", "--model", "llama-3-8b", "--phase", "decode", "--context", "128"],
            ["--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "speculative", "--context", "640",
             "--draft-tokens", "4", "--acceptance", "0.7", "--medusa-heads", "4"],
            ["--arch", "a100-80gb", "--pim", "hbm2-pim", "--pim-stacks", "5", "--model", "llama-3-8b",
             "--weight-dtype", "fp16", "--act-dtype", "fp16", "--kv-dtype", "fp16", "--phase", "decode", "--context", "128"]]
    for args in runs:
        assert main(["simulate", *args, "--format-error"]) == 0
        out = capsys.readouterr().out
        assert "formats: weights" in out and "format error" in out, args
