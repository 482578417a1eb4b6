"""Whole-step invariants across device classes: a decode step never gets faster when the batch or
the context grows, nor a prefill when the prompt grows (the mappers' searches must not miss the
mapping a smaller step uses)."""

import pytest
from xpusim import simulate
from xpusim.arch import load_arch
from xpusim.sim.engine import with_engine_formats
from xpusim.workloads import Decode, Prefill, load_model

# (device, model, formats, wafer options): one per device class, and the two steps that once broke
# the rule (Mamba-2.8B on a TPU v5e: a 32-row GEMM dearer than a 48-row one; Mixtral on WSE-3s:
# two experts' squares that did not tile the wafer)
CASES = [
    ("h100-sxm", "llama-3-8b", None, None),
    ("tpu-v5e", "mamba-2.8b", "bf16", None),
    ("systolic-npu", "mixtral-8x7b", None, None),
    ("alveo-u280", "llama-2-7b", None, None),
    ("aim-gddr6", "llama-3-8b", None, None),
    ("sn40l", "llama-3-8b", None, None),
    ("wse-3", "mixtral-8x7b", None, {"wafers": 4}),
]


def _run(arch, model, fmt, wafer, phase):
    a = load_arch(arch)
    m = with_engine_formats(load_model(model), a)
    if fmt:
        m = m.with_formats(fmt, fmt, fmt)
    if wafer is None:
        return simulate(a, m, phase, check_memory=False).latency_s
    res = simulate(a, m, phase, wafer_options=wafer)  # placed on the wafers (an unplaced run would not compare)
    assert res.inputs["wafer_plan"] is not None
    return res.latency_s


@pytest.mark.parametrize("arch,model,fmt,wafer", CASES, ids=[c[0] for c in CASES])
def test_larger_steps_never_run_faster(arch, model, fmt, wafer):
    by_batch = [_run(arch, model, fmt, wafer, Decode(batch=b, context=1024)) for b in (1, 2, 4, 8, 16, 32, 64)]
    by_context = [_run(arch, model, fmt, wafer, Decode(batch=4, context=c)) for c in (256, 1024, 4096)]
    by_prompt = [_run(arch, model, fmt, wafer, Prefill(batch=1, seq=s)) for s in (128, 512, 2048)]
    for series in (by_batch, by_context, by_prompt):
        assert all(b >= a * (1 - 1e-9) for a, b in zip(series[:-1], series[1:], strict=True)), series


@pytest.mark.parametrize("arch,model,fmt,wafer", CASES, ids=[c[0] for c in CASES])
def test_a_chunked_prefill_never_beats_the_whole_prompt(arch, model, fmt, wafer):
    """Chunks see only the keys before them and re-read the weights, so chunking can only add work
    (every class's causal attention skips the blocks its mask empties, the one-shot prompt's too)."""
    from xpusim.sim.steps import simulate_chunked_prefill

    a = load_arch(arch)
    m = with_engine_formats(load_model(model), a)
    if fmt:
        m = m.with_formats(fmt, fmt, fmt)
    whole = _run(arch, model, fmt, wafer, Prefill(batch=1, seq=1024))
    for chunk in (256, 512):
        res = simulate_chunked_prefill(a, m, 1, 1024, chunk, check_memory=wafer is not None,
                                       **({"wafer_options": wafer} if wafer else {}))
        assert res.latency_s >= whole * (1 - 1e-9), (chunk, res.latency_s, whole)


@pytest.mark.parametrize("arch,model,batch,seq", [("tpu-v4", "llama-3-8b", 1, 9000), ("wse-3", "llama-3-8b", 1, 9000),
                                                  ("tpu-v4", "mistral-7b", 4, 3000), ("hbm2-pim", "llama-2-7b", 1, 2048)])
def test_a_long_prompt_in_two_chunks_is_not_cheaper(arch, model, batch, seq):
    """Long prompts, where a whole causal plane costed unmasked made two chunks up to 26 % cheaper."""
    from xpusim.sim.steps import simulate_chunked_prefill

    whole = simulate(arch, model, Prefill(batch, seq), check_memory=False).latency_s
    halves = simulate_chunked_prefill(arch, model, batch, seq, seq // 2 + 1, check_memory=False).latency_s
    assert halves >= whole * (1 - 1e-9)


def test_wafer_stages_are_balanced_so_a_shorter_context_is_not_slower():
    """Greedy packing filled the first stage to the brim at short contexts ([9, 9, 9, 7] units), leaving
    its cores too little room for MeshGEMV's buffers: Mixtral at batch 32 ran 9x slower at context 768
    than at 1024 on four WSE-2s. Balanced stages give every context the most room."""
    m = load_model("mixtral-8x7b")
    short, longer = (simulate("wse-2", m, Decode(32, c), wafer_options={"wafers": 4}) for c in (768, 1024))
    assert short.latency_s <= longer.latency_s
    assert max(short.inputs["wafer_plan"]["units_per_stage"]) - min(short.inputs["wafer_plan"]["units_per_stage"]) <= 1


def test_an_overflowing_wafer_step_is_costed_on_the_tightest_layout():
    """With memory ignored, a step that fits no layout is placed on the layout that overflows least
    (it used to run unplaced on the whole mesh, 8x faster than a smaller step that fits)."""
    m = load_model("mixtral-8x7b")
    runs = [simulate("wse-2", m, Decode(32, c), check_memory=False, wafer_options={"wafers": 4}) for c in (2048, 4096, 8192)]
    assert [r.inputs["wafer_plan"]["mode"] for r in runs] == ["resident", "overflow", "overflow"]
    assert runs[0].latency_s <= runs[1].latency_s * 1.001 and runs[1].latency_s <= runs[2].latency_s * 1.001


def test_a_dataflow_prefill_never_reports_more_than_full_utilization():
    """The RDU skips a causal mask's empty tiles; its utilization counts the work it does, not the whole plane."""
    r = simulate("sn40l", "llama-3-8b", Prefill(4, 4096), check_memory=False)
    assert 0.0 < r.ops["utilization"].max() <= 1.0


def test_more_mac_lanes_per_pim_unit_are_never_slower():
    """Without an adder tree a PU keeps a partial sum per busy lane, and only as many lanes as a column
    burst feeds can be busy: doubling the lanes beyond that must not add read-out traffic."""
    import copy

    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("hbm2-pim")
    m = load_model("llama-3-8b").with_formats("fp16", "fp16", "fp16")
    base = simulate(arch_from_dict(copy.deepcopy(d), "a"), m, Decode(1, 1024), check_memory=False).latency_s
    d["matrix"]["macs_per_cycle"] = {k: 2 * v for k, v in d["matrix"]["macs_per_cycle"].items()}
    wide = simulate(arch_from_dict(d, "b"), m, Decode(1, 1024), check_memory=False).latency_s
    assert wide <= base


def test_twice_the_arrays_never_slow_a_bandwidth_bound_step():
    """The loop-nest mapper also tries half the instances at each level: spreading N over two
    scratchpads fetched the shared input twice from HBM (NeuPIMs' NPU with 16 arrays: +2.1 %)."""
    import copy

    from xpusim.arch.loader import arch_dict, arch_from_dict

    d, _ = arch_dict("neupims-npu")
    m = load_model("mixtral-8x7b").with_formats("fp16", "fp16", "fp16")
    base = simulate(arch_from_dict(copy.deepcopy(d), "a"), m, Prefill(1, 1024), check_memory=False).latency_s
    d["matrix"]["instances"] *= 2
    for lv in d["memory"][1:]:
        lv["instances"] = lv.get("instances", 1) * 2
    wide = simulate(arch_from_dict(d, "b"), m, Prefill(1, 1024), check_memory=False).latency_s
    assert wide <= base * 1.001


def test_one_more_prompt_token_never_speeds_up_a_dataflow_pipeline():
    """A 513-token prompt's last tile holds one row, not a full tile's share of the pipeline."""
    steps = [simulate("sn40l", "llama-3-8b", Prefill(2, s), check_memory=False).latency_s for s in (511, 512, 513)]
    assert steps[0] <= steps[1] <= steps[2]


@pytest.mark.parametrize("arch", ["v100s", "a100-80gb", "rtx-4090", "h100-sxm"])
def test_gpu_prefill_attention_is_never_faster_with_more_tokens_or_kv_heads(arch):
    """FlashAttention-2 computes whole 128-row query blocks: a 33-token prompt's second, nearly empty
    block cost nothing, so one more token made attention 42 % faster on a V100S and twice the KV
    heads 26 % faster on an RTX 4090."""
    import dataclasses

    from xpusim import simulate
    from xpusim.workloads import Prefill, load_model

    def attention(model, seq):
        r = simulate(arch, model, Prefill(1, seq), check_memory=False)
        return float(r.ops.loc[r.ops["kind"] == "attention", "latency_s"].iloc[0])

    m = load_model("llama-3-8b")
    prev = 0.0
    for seq in (16, 30, 32, 33, 64, 65, 127, 128, 129, 256, 257):
        t = attention(m, seq)
        assert t >= prev * (1 - 1e-12), seq
        prev = t
    assert attention(dataclasses.replace(m, n_kv_heads=16, name="kv16"), 30) >= attention(m, 30) * (1 - 1e-12)
