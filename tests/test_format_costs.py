"""Number formats in the simulator: bytes follow the format, devices without a format compute in a
wider one with the dequantisation counted, and the emulated numerical error orders the formats."""

import pytest
import xpusim
from xpusim import DtypeError
from xpusim.arch import load_arch
from xpusim.sim.dequant import dequant_flops
from xpusim.workloads import Decode, Prefill, load_model
from xpusim.workloads.einsum import gemm_op
from xpusim.workloads.functional.numerics import layer_error, reduced


def test_fp8_on_a100_runs_in_fp16_with_dequantisation():
    a100, h100 = load_arch("a100-80gb"), load_arch("h100-sxm")
    assert a100.matrix.resolve("fp8") == "fp16" and h100.matrix.resolve("fp8") == "fp8"
    op = gemm_op(4096, 4096, 4096, "fp8")
    cost = xpusim.op_cost(op, a100)
    assert cost.detail["computes_in"] == "fp16" and cost.detail["dequant_flops"] > 0
    bf16 = xpusim.op_cost(gemm_op(4096, 4096, 4096, "bf16"), a100)
    assert cost.latency_s >= 0.9 * bf16.latency_s  # fp16 tensor-core rate: only the smaller bytes help
    assert xpusim.op_cost(op, h100).latency_s < 0.7 * xpusim.op_cost(gemm_op(4096, 4096, 4096, "bf16"), h100).latency_s


def test_weight_only_quantisation_reads_fewer_bytes_and_pays_dequant():
    m = load_model("llama-3-8b")
    base = xpusim.simulate("h100-sxm", m, Decode(1, 1024))
    w4 = xpusim.simulate("h100-sxm", m.with_formats(weights="int4-g128"), Decode(1, 1024))
    assert w4.weights_bytes == pytest.approx(base.weights_bytes * (4 + 16 / 128) / 16, rel=1e-9)
    assert w4.latency_s < 0.5 * base.latency_s  # decode is weight-bandwidth bound
    # dequantisation work: each int4 weight widened once per 128-row tile of activations
    op = gemm_op(512, 4096, 4096, "bf16")
    w4_op = xpusim.Op(op.name, op.kind, op.dims, (op.inputs[0], xpusim.Tensor("b", ("k", "n"), "int4-g128", "weight")),
                      op.output)
    flops, runs_in = dequant_flops(w4_op, load_arch("h100-sxm"))
    assert runs_in == "bf16" and flops == 2.0 * 4096 * 4096 * 4


def test_unsupported_everywhere_is_a_clear_error():
    npu = load_arch("edge-npu")  # an int8-only array: nothing wider to run bf16 in
    assert set(npu.matrix.rate_per_cycle) == {"int8"}
    with pytest.raises(DtypeError, match="no bf16 throughput nor a wider class"):
        npu.matrix.resolve("bf16")
    assert npu.matrix.resolve("int4") == "int8"  # int4 weights widen to int8


def test_emulated_error_orders_the_formats():
    m = load_model("llama-3-8b")
    err = {f: layer_error(m.with_formats(weights=f, activations=a, kv=a)) for f, a in
           (("fp32", "fp32"), ("bf16", "bf16"), ("fp8-e4m3", "fp8-e4m3"), ("int4-g128", "bf16"), ("ternary", "bf16"))}
    assert err["fp32"] < 1e-6 < err["bf16"] < 0.02 < err["fp8-e4m3"] < err["int4-g128"] < err["ternary"]
    assert layer_error(m) == layer_error(m)  # deterministic in the seed
    small = reduced(load_model("deepseek-v3"))
    assert small.n_layers == 2 and small.first_dense_layers == 1 and small.d_model == 256
    assert small.kv_lora_rank % 128 == 0 and small.d_ff_expert % 128 == 0


def test_prefill_fp8_faster_on_h100():
    m = load_model("llama-3-8b")
    bf16 = xpusim.simulate("h100-sxm", m, Prefill(1, 4096))
    fp8 = xpusim.simulate("h100-sxm", m.with_formats(weights="fp8", activations="fp8"), Prefill(1, 4096))
    assert fp8.latency_s < 0.75 * bf16.latency_s


@pytest.mark.parametrize("arch_name, weights", [("neupims-npu", "int4"), ("h100-sxm", "int4"), ("a100-80gb", "fp8")])
def test_dequantisation_is_charged_energy_and_static_power_covers_its_time(arch_name, weights):
    """The conversion's vector FLOPs cost energy, and the static energy is the static power over the op's
    whole time, the dequantisation included where it binds."""
    import dataclasses

    from xpusim.sim.engine import clear_cache, op_cost
    from xpusim.workloads import build_trace

    arch = dataclasses.replace(load_arch(arch_name), static_power_w=100.0)
    model = load_model("llama-2-7b").with_formats(weights, None, None)
    clear_cache()
    ops = [op for _, op in build_trace(model, Decode(4, 512)).ops() if op.kind == "matmul" and dequant_flops(op, arch)[0]]
    assert ops
    for op in ops:
        c = op_cost(op, arch)
        flops, _ = dequant_flops(op, arch)
        assert c.energy_by_component["dequant"] == pytest.approx(flops * arch.vector.energy("fp32") * 1e-12)
        assert c.energy_by_component["static"] == pytest.approx(100.0 * c.latency_s)
        assert c.energy_j == pytest.approx(sum(c.energy_by_component.values()))
    res = xpusim.simulate(arch, model, Decode(4, 512), check_memory=False)
    assert res.energy_j >= 100.0 * res.latency_s
