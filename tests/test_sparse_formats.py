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
    for dev in ("v100s", "mi300x", "tpu-v4", "hbm2-pim", "sn40l"):
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
    assert "formats: weights int8, activations int8, KV int8 (alveo-u280's engine formats)" in out
    assert "formats: weights fp16, activations fp16, KV fp16\n" in out  # the GPU keeps the model's (fp16)
    assert main(["simulate", "--arch", "alveo-u280", "--model", "llama-2-7b", "--phase", "decode", "--context", "640",
                 "--weight-dtype", "int8-8:16"]) == 0
    assert "formats: weights int8-8:16, activations int8, KV int8" in capsys.readouterr().out


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

    for dev in ("a100-80gb", "h100-sxm"):
        a = load_arch(dev)
        dense, sparse = op_cost(gemm("fp16"), a), op_cost(gemm("fp16-2:4"), a)
        assert dense.bound == "compute"
        # half the MMA time, up to the tile and wave choice the smaller weight stages allow
        assert 0.45 < sparse.detail["terms_s"]["compute"] / dense.detail["terms_s"]["compute"] < 0.55
        assert 1.3 < dense.latency_s / sparse.latency_s <= 2.0  # the operand traffic now bounds part of it
    with pytest.raises(DtypeError, match="2:4 sparsity only"):
        op_cost(gemm("fp16-1:4"), load_arch("h100-sxm"))
