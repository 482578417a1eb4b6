"""Multi-device simulation: parallel plans, the pipeline event engine, the planner, generation and
serving on real systems."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim import CapacityError, SpecError
from xpusim.arch.system import load_system
from xpusim.cli import main
from xpusim.sim.events import pipeline, simulate_generate, simulate_system
from xpusim.sim.parallel import Plan, device_trace, shard_model
from xpusim.sim.planner import plan_auto
from xpusim.workloads import Decode, Prefill, load_model


@settings(max_examples=60, deadline=None)
@given(stages=st.lists(st.floats(1e-4, 1e-2), min_size=1, max_size=6), send=st.floats(0, 1e-3), mb=st.integers(1, 8))
def test_pipeline_makespan_bounds(stages, send, mb):
    """simpy pipeline: at least the classic bubble bound, at most every micro-batch run serially."""
    makespan, events = pipeline(stages, send, mb)
    crit = sum(stages) + send * (len(stages) - 1)
    bottleneck = max(max(stages), send if len(stages) > 1 else 0.0)  # one stage has no link to wait for
    assert makespan >= crit + (mb - 1) * bottleneck - 1e-12
    assert makespan <= mb * crit + 1e-12
    if send == 0:  # no link: the textbook (stages + micro-batches - 1) x stage time for equal stages
        eq, _ = pipeline([stages[0]] * len(stages), 0.0, mb)
        assert eq == pytest.approx((len(stages) + mb - 1) * stages[0])
    per_stage = [e for e in events if e["device"] == "stage 0"]
    assert len(per_stage) == mb
    assert all(b["start"] >= a["start"] + a["dur"] - 1e-15 for a, b in zip(per_stage, per_stage[1:], strict=False))


def test_tensor_parallel_shards_and_collectives():
    m = load_model("llama-3-70b")
    shard = shard_model(m, Plan(tp=8))
    assert shard.n_heads == 8 and shard.n_kv_heads == 1 and shard.d_ff == m.d_ff // 8
    trace = device_trace(m, Decode(16, 1024), Plan(tp=8))
    layer = next(b for b in trace.blocks if b.name == "layer")
    ars = [op for op in layer.ops if op.kind == "collective"]
    assert [op.attrs["collective"] for op in ars] == ["all_reduce", "all_reduce"]  # after o_proj and down_proj
    assert ars[0].tensor_bytes(ars[0].inputs[0]) == 16 * m.d_model * 2
    sp = device_trace(m, Decode(16, 1024), Plan(tp=8, sp=True))
    kinds = [op.attrs["collective"] for op in next(b for b in sp.blocks if b.name == "layer").ops if op.kind == "collective"]
    assert kinds == ["reduce_scatter", "all_gather"] * 2
    with pytest.raises(SpecError, match="does not divide"):
        shard_model(m, Plan(tp=3))


def test_allreduce_share_of_decode_grows_with_tp():
    m = load_model("llama-3-70b")
    shares = []
    for tp in (2, 4, 8):
        res = simulate_system("dgx-h100", m, Decode(32, 2048), Plan(tp=tp), check_memory=False)
        ops = res.ops
        shares.append(float(ops.loc[ops["kind"] == "collective", "total_latency_s"].sum() / ops["total_latency_s"].sum()))
    assert shares[0] < shares[1] < shares[2]


def test_pipeline_parallel_fills_with_microbatches():
    m = load_model("llama-3-70b")
    one = simulate_system("dgx-a100", m, Prefill(8, 1024), Plan(tp=4, pp=2, microbatches=1), check_memory=False)
    four = simulate_system("dgx-a100", m, Prefill(8, 1024), Plan(tp=4, pp=2, microbatches=4), check_memory=False)
    assert four.latency_s < one.latency_s  # the second stage works while the first takes the next micro-batch
    assert {e["device"] for e in four.timeline} >= {"stage 0", "stage 1", "link 0->1"}
    assert len([e for e in four.timeline if e["device"] == "stage 1"]) == 4


def test_planner_and_memory():
    m = load_model("llama-3-70b")
    plan, table = plan_auto("dgx-h100", m, Decode(64, 4096))
    assert plan.devices == 8 and table["feasible"].any()
    best = table[table["feasible"]]["latency_s"].min()
    chosen = simulate_system("dgx-h100", m, Decode(64, 4096), plan).latency_s
    assert chosen == pytest.approx(best)
    assert not table[table["plan"] == "tp1 pp1 dp8"]["feasible"].any()  # 140 GB of weights on each device
    with pytest.raises(CapacityError, match="busiest device"):
        simulate_system("4x-a100-nvlink", "gpt3-175b", Prefill(8, 2048), Plan(tp=4))
    with pytest.raises(SpecError, match="needs 16 devices"):
        simulate_system("dgx-h100", m, Decode(8, 128), Plan(tp=8, pp=2))


def test_generate_matches_step_sums():
    m = load_model("llama-3-8b")
    out = simulate_generate("dgx-a100", m, 4, 512, 65, Plan(tp=2), points=65)
    pre = simulate_system("dgx-a100", m, Prefill(4, 512), Plan(tp=2))
    steps = [simulate_system("dgx-a100", m, Decode(4, c), Plan(tp=2)).latency_s for c in range(513, 577)]
    assert out["ttft_s"] == pytest.approx(pre.latency_s)
    assert out["latency_s"] == pytest.approx(pre.latency_s + sum(steps), rel=1e-9)
    coarse = simulate_generate("dgx-a100", m, 4, 512, 65, Plan(tp=2), points=5)
    assert coarse["latency_s"] == pytest.approx(out["latency_s"], rel=0.01)  # interpolated decode steps


def test_generate_cli_json(capsys):
    rc = main(["simulate", "--system", "4x-a100-nvlink", "--model", "gpt3-175b", "--tp", "4", "--phase", "generate",
               "--batch", "8", "--seq", "2048", "--gen", "1024", "--json", "--ignore-memory"])
    import json

    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["ttft_s"] > 0 and d["tpot_s"] > 0
    assert d["latency_s"] == pytest.approx(d["ttft_s"] + 1023 * d["tpot_s"], rel=1e-9)


def test_serve_on_a_system_deterministic(capsys):
    import json

    args = ["serve", "--system", "dgx-h100", "--model", "llama-3-8b", "--tp", "2", "--rate", "10", "--requests", "300",
            "--scheduler", "chunked", "--slo-tpot", "0.05", "--json"]
    assert main(args) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b and a["n_requests"] == 300 and math.isfinite(a["tpot_p99_s"])
    sys_ = load_system("dgx-h100")
    assert sys_.n_devices == 8 and np.isfinite(a["goodput_req_s"])


@pytest.fixture(scope="module")
def h100_engines():
    from xpusim.sim.serving_model import SimStepModel

    sys_ = load_system("dgx-h100")
    return SimStepModel("llama-3-8b", Plan(tp=1), sys_), SimStepModel("llama-3-8b", Plan(tp=2), sys_)


def test_chunked_prefill_cuts_the_tpot_tail_on_h100(h100_engines):
    """With the hardware-calibrated step model: long prompts at high load stall decodes under plain
    continuous batching (prefill-only iterations); chunking bounds every iteration."""
    from xpusim.sim.serving import simulate_serving
    from xpusim.sim.serving_requests import poisson_requests

    one, _ = h100_engines
    reqs = poisson_requests(6, 600, (4096, 512), (128, 32), seed=1)
    cont = simulate_serving(reqs, "continuous", one, max_batched_tokens=16384).summary()
    chunk = simulate_serving(reqs, "chunked", one, chunk_size=1024).summary()
    assert chunk["tpot_p99_s"] < 0.8 * cont["tpot_p99_s"]


def test_disaggregation_raises_goodput_under_tight_tpot_slo(h100_engines):
    """Two H100s: one prefill + one decode engine beat one TP=2 engine doing both when the TPOT SLO
    is tight (decode iterations no longer wait behind prefills)."""
    from xpusim.sim.serving import simulate_serving
    from xpusim.sim.serving_requests import poisson_requests

    one, two = h100_engines
    reqs = poisson_requests(14, 600, (2048, 512), (256, 64), seed=2)
    colocated = simulate_serving(reqs, "continuous", two, max_batched_tokens=16384, slo_tpot_s=0.02, slo_ttft_s=2).summary()
    split = simulate_serving(reqs, "disaggregated", one, prefill_step=one, max_batched_tokens=16384, slo_tpot_s=0.02,
                             slo_ttft_s=2).summary()
    assert split["goodput_req_s"] > 1.5 * colocated["goodput_req_s"]


# --- expert parallelism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tp,dp", [(8, 1), (1, 8), (2, 4)])
def test_expert_parallelism_holds_whole_experts_one_ep_th_of_them(tp, dp):
    """Under --ep every device of a stage holds E / ep whole experts at full width (an expert is not
    split), beside its tensor-parallel share of everything else; its step runs its experts' GEMMs at
    full width on the tokens of every data-parallel replica routed to them."""
    from xpusim.sim.parallel import held_weights_bytes

    m = load_model("mixtral-8x7b")
    plan = Plan(tp=tp, dp=dp, ep=8)
    shard = shard_model(m, plan)
    expert = 3 * m.d_model * m.expert_ff * 2  # one bf16 expert of one layer
    dense = shard_model(m, Plan(tp=tp)).weights_bytes - m.moe_layers * m.n_experts * expert / tp  # without experts
    assert held_weights_bytes(shard, plan) == pytest.approx(dense + m.moe_layers * m.n_experts / 8 * expert)
    batch = 64 * dp  # 64 sequences per replica
    trace = device_trace(m, Decode(batch, 2048), plan)
    gemm = next(op for _, op in trace.ops() if op.name == "expert_gate.0")
    sizes = gemm.sizes
    assert sizes["x"] == 1 and sizes["n"] == m.expert_ff  # one whole expert per device
    # 64 // tp tokens per rank of each replica, all dp replicas' tokens routed, top-2 over 8 experts
    assert sizes["m"] == 64 * dp * m.experts_per_token // 8


def test_data_parallel_replicas_can_share_their_experts():
    # --dp 8 --ep 8 once failed: the step dropped dp and then found ep larger than a stage
    r = simulate_system("dgx-h100", "mixtral-8x7b", Decode(512, 2048), Plan(dp=8, ep=8))
    assert r.inputs["plan"] == "tp1 pp1 dp8 ep8" and r.memory_bytes < r.capacity_bytes
    with pytest.raises(SpecError, match="drop --ep, or give a stage 8 devices"):
        Plan(ep=8)


def test_expert_parallel_devices_share_a_small_steps_active_experts():
    """Four DeepSeek-V3 tokens pick 32 of 256 experts; dealt round-robin from the hottest, the 8
    devices hold 4 active experts each (contiguous slices once put all 32 on one device)."""
    from xpusim.workloads.routing import Routing, local_counts

    counts, _ = local_counts(Routing(ep_ranks=8, ep_tokens=4), 4, 256, 8)
    assert counts.size == 32 and int((counts > 0).sum()) == 4 and int(counts.sum()) == 4
    skewed, _ = local_counts(Routing("zipf", 1.2, ep_ranks=8, ep_tokens=64), 64, 256, 8)
    whole, _ = local_counts(Routing("zipf", 1.2), 64, 256, 8)
    assert int(skewed.sum()) <= int(whole.sum()) // 8 + int(whole.max())  # the hottest experts are spread


@pytest.mark.parametrize("name", ["llama-3-8b", "t5-base", "jamba-v0.1", "mamba-2.8b", "mixtral-8x7b"])
def test_a_one_device_plan_is_the_single_device_step(name):
    """Plan() on a system runs exactly what one device runs (an encoder-decoder's encoder and decoder
    blocks were once dropped, making t5-base 53x too fast)."""
    from xpusim import simulate

    m = load_model(name)
    for phase in (Prefill(1, 512), Decode(8, 64, 512 if m.encoder_layers else 0)):
        one = simulate("a100-80gb", m, phase, check_memory=False)
        sys1 = simulate_system("dgx-a100", m, phase, Plan(), check_memory=False)
        assert sys1.latency_s == pytest.approx(one.latency_s, rel=1e-9)
        assert sys1.energy_j == pytest.approx(one.energy_j, rel=1e-9)
    from contextlib import nullcontext

    with pytest.raises(SpecError, match="pipeline stages") if m.encoder_layers else nullcontext():
        simulate_system("dgx-a100", m, Decode(8, 64, 512 if m.encoder_layers else 0), Plan(pp=2), check_memory=False)


def test_a_collectives_link_energy_counts_once_per_group():
    """A collective's energy is its whole group's: a tensor-parallel step's link energy is its
    all-reduces' once per replica, not once per rank."""
    from xpusim.sim.collectives import collective_time

    m = load_model("llama-3-8b")
    r = simulate_system("dgx-a100", m, Prefill(8, 1024), Plan(tp=8))
    links = r.ops[r.ops["bound"] == "link"]
    compute = r.ops[r.ops["bound"] != "link"]
    ar = collective_time(load_system("dgx-a100"), "all_reduce", 8 * 1024 * m.d_model * 2, 8).energy_j
    n_ar = int(links.loc[links["name"].str.endswith(".ar"), "repeat"].sum())
    assert r.energy_j == pytest.approx(compute["total_energy_j"].sum() * 8 + links["total_energy_j"].sum(), rel=1e-6)
    assert links.loc[links["name"].str.endswith(".ar"), "total_energy_j"].sum() == pytest.approx(n_ar * ar, rel=1e-6)


def test_generate_plan_auto_ranks_whole_generations_and_their_memory():
    # the prefill alone once chose tp2 dp4, which then ran out of memory as the KV cache grew
    from xpusim.sim.planner import plan_auto

    plan, table = plan_auto("dgx-a100", "llama-3-70b", Prefill(64, 2048), gen=4096)
    assert plan.describe() == "tp8 pp1 dp1"
    assert not table.loc[table["plan"] == "tp2 pp1 dp4", "feasible"].iloc[0]


def test_an_encoder_decoder_generates_on_a_system():
    """On one device of a system a T5 generation is the single-device prefill then decode steps
    that cross-attend to the whole source (a longer source makes every step dearer)."""
    import xpusim
    from xpusim.workloads import Prefill

    out = simulate_generate("dgx-a100", "t5-base", 4, 512, 16, Plan())
    assert out["fits_memory"]
    dev = load_system("dgx-a100").device
    assert out["ttft_s"] == pytest.approx(xpusim.simulate(dev, "t5-base", Prefill(4, 512)).latency_s, rel=1e-6)
    first = xpusim.simulate(dev, "t5-base", Decode(4, 2, 512)).latency_s
    assert out["tpot_s"] >= first * (1 - 1e-9)
    longer = simulate_generate("dgx-a100", "t5-base", 4, 2048, 16, Plan())
    assert longer["tpot_s"] > out["tpot_s"]


def test_pipeline_stages_hold_their_own_layers_kv_and_embeddings():
    """A stage holds its layers' weights, KV cache and state: Jamba's attention layers (one in eight)
    put a whole layer's KV cache on every other stage at pp 8, and a tied embedding needs a copy on
    both the first and the last stage."""
    from xpusim.sim.parallel import stage_footprints

    jamba = load_model("jamba-v0.1")
    fp = stage_footprints(shard_model(jamba, Plan(pp=8)), Plan(pp=8), 16, 65536)
    layer_kv = jamba.kv_cache_bytes(16, 65536) / jamba.attention_layers
    assert sorted({round(kv / layer_kv, 6) for _, kv, _ in fp}) == [0.0, 1.0]
    r = simulate_system("dgx-a100", jamba, Decode(16, 65536), Plan(pp=8), check_memory=False)
    assert r.kv_cache_bytes == pytest.approx(layer_kv)
    bitnet = load_model("bitnet-b1.58-2b4t")
    assert bitnet.tied_embeddings
    fp = stage_footprints(shard_model(bitnet, Plan(pp=8)), Plan(pp=8), 1, 1)
    table = bitnet.vocab_size * bitnet.d_model * 2  # bf16 embedding table
    assert fp[0][0] > table and fp[-1][0] > table and all(w < table for w, _, _ in fp[1:-1])
    dense = load_model("llama-3-8b")
    fp = stage_footprints(shard_model(dense, Plan(pp=4)), Plan(pp=4), 8, 2048)
    assert sum(w for w, _, _ in fp) == pytest.approx(dense.weights_bytes)
    assert sum(kv for _, kv, _ in fp) == pytest.approx(dense.kv_cache_bytes(8, 2048))


def test_shared_experts_stay_tensor_parallel_under_expert_parallelism():
    # every rank runs the shared experts: without splitting them each would compute all of their work
    m = load_model("deepseek-v3")
    shared = {p.describe(): next(op for _, op in device_trace(m, Decode(4, 2048), p).ops() if op.name == "shared_gate_proj")
              for p in (Plan(tp=8), Plan(tp=8, ep=8))}
    assert shared["tp8 pp1 dp1"].sizes["n"] == shared["tp8 pp1 dp1 ep8"].sizes["n"] == m.expert_ff * m.n_shared_experts // 8


def test_microbatches_must_divide_a_replicas_batch_and_default_to_one_per_stage():
    m = load_model("llama-3-8b")
    for mb, verb in ((3, "does not divide"), (16, "exceeds")):
        with pytest.raises(SpecError, match=f"--microbatches {mb} {verb} the batch 8 per replica; use 1, 2, 4 or 8"):
            simulate_system("dgx-h100", m, Decode(16, 256), Plan(pp=2, dp=2, microbatches=mb))
    given = simulate_system("dgx-h100", m, Decode(16, 256), Plan(pp=2, dp=2, microbatches=8))
    assert given.inputs["microbatches"] == 8
    # not given: one per stage, or the largest divisor of the replica's batch below that
    assert simulate_system("dgx-h100", m, Decode(8, 256), Plan(pp=4)).inputs["microbatches"] == 4
    assert simulate_system("dgx-h100", m, Decode(6, 256), Plan(pp=4)).inputs["microbatches"] == 3
    assert simulate_system("dgx-h100", m, Decode(2, 256), Plan(pp=4)).inputs["microbatches"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--tp", "2", "--ep", "2"], "--ep 2: llama-3-8b has no routed experts; drop --ep"),
    (["--dp", "2", "--ep", "2"], "--ep 2: llama-3-8b has no routed experts; drop --ep"),
    (["--sp"], "--sp splits the tensor-parallel collectives, which --tp 1 has none of"),
])
def test_plan_flags_that_change_nothing_are_refused(capsys, flags, message):
    rc = main(["simulate", "--system", "dgx-a100", "--model", "llama-3-8b", "--phase", "decode", "--batch", "8",
               "--context", "128", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_stage_sends_between_nodes_take_the_network():
    """tp 4 pp 4 on two DGX A100s: the stage 1 -> 2 boundary leaves the node (a NIC per rank, 176 pJ/B),
    the others stay on NVLink; a send is one way (S per rank)."""
    import dataclasses

    from xpusim.sim.collectives import send_time

    two = dataclasses.replace(load_system("dgx-a100"), nodes=2)
    m = load_model("llama-3-8b")
    res = simulate_system(two, m, Prefill(4, 512), Plan(tp=4, pp=4), check_memory=False)
    S = 512 * m.d_model * 2  # one micro-batch: one sequence of 512 bf16 tokens
    sends = res.inputs["send_s"]
    assert sends == pytest.approx([send_time(two, S, 4, 4, first=s * 4).time_s for s in range(3)])
    assert sends[0] == sends[2] and sends[1] > 3 * sends[0]
    assert send_time(two, S, 4, 4, first=4).energy_j == pytest.approx(4 * S * 176e-12)
    assert send_time(two, S, 4, 4).energy_j == pytest.approx(4 * S * 88e-12)
    assert res.timeline and {e["dur"] for e in res.timeline if e["device"] == "link 1->2"} == {sends[1]}


def test_plan_auto_also_tries_a_single_micro_batch():
    """A weight-bound pipelined decode re-reads each stage's weights per micro-batch: the planner
    considers one micro-batch as well, and never returns a plan slower than that fixed plan."""
    from xpusim.sim.planner import plan_auto

    plan, table = plan_auto("dgx-h100", "mamba-2.8b", Decode(3, 2048))
    one = simulate_system("dgx-h100", "mamba-2.8b", Decode(3, 2048), Plan(pp=8, microbatches=1))
    best = simulate_system("dgx-h100", "mamba-2.8b", Decode(3, 2048), plan)
    assert best.latency_s <= one.latency_s * (1 + 1e-9) and (table["microbatches"] == 1).any()


def test_expert_parallel_energy_counts_each_rank_its_own_experts():
    """Under skewed routing the busiest EP rank sets the time, but every device was charged its
    expert work (Mixtral prefill, tp8 ep8, zipf:1.2: 24.3 J against 13.0 J balanced for the same
    FLOPs); each rank's own experts are now costed, and the ranks' expert FLOPs add up to the step's."""
    from xpusim.sim.events import simulate_system
    from xpusim.sim.parallel import Plan, device_trace
    from xpusim.workloads import Prefill, load_model

    bal = simulate_system("dgx-h100", "mixtral-8x7b", Prefill(8, 256), Plan(tp=8, ep=8), routing="balanced")
    skew = simulate_system("dgx-h100", "mixtral-8x7b", Prefill(8, 256), Plan(tp=8, ep=8), routing="zipf:1.2")
    assert skew.latency_s > bal.latency_s  # the hottest rank waits longest
    assert skew.energy_j == pytest.approx(bal.energy_j, rel=0.05)
    m = load_model("mixtral-8x7b")

    def flops(tr):
        return sum(op.flops * b.repeat for b in tr.blocks for op in b.ops if op.name.startswith("expert_"))

    ranks = sum(flops(device_trace(m, Prefill(8, 256), Plan(tp=8, ep=8), "zipf:1.2", None, r)) for r in range(8))
    whole = flops(device_trace(m, Prefill(8, 256), Plan(tp=8), "zipf:1.2")) * 8  # every tp rank's expert share
    assert ranks == pytest.approx(whole, rel=0.01)


def test_system_review_fixes(capsys):
    """A quoted energy number is pJ like a plain one (it was read as joules: 10^12 x); a wafer device
    in a system points to --wafers (the system path skipped its placement); --plan auto with
    --ignore-memory and --microbatches without a pipeline are refused; a fit failure at --dp names
    the replicas and expert parallelism."""
    import yaml
    from xpusim.arch.system import SYSTEMS_DIR, system_from_dict

    d = yaml.safe_load((SYSTEMS_DIR / "dgx-h100.yaml").read_text())
    d["intra"]["energy_per_byte"] = "88"
    assert system_from_dict(d, "q").intra.energy_pj_per_byte == 88.0
    d2 = yaml.safe_load((SYSTEMS_DIR / "dgx-h100.yaml").read_text())
    d2["device"] = "wse-3"
    with pytest.raises(SpecError, match="--wafers N"):
        simulate_system(system_from_dict(d2, "wafers"), "llama-3-8b", Decode(1, 512), Plan())
    assert main(["simulate", "--system", "dgx-h100", "--model", "llama-3-8b", "--phase", "decode", "--batch", "8",
                 "--context", "128", "--plan", "auto", "--ignore-memory"]) == 2  # a model that fits: only the flags
    assert "drop --ignore-memory" in capsys.readouterr().err
    assert main(["simulate", "--system", "dgx-h100", "--model", "llama-3-8b", "--phase", "decode", "--batch", "8",
                 "--context", "128", "--microbatches", "2"]) == 2
    assert "needs --pp > 1" in capsys.readouterr().err
    assert main(["simulate", "--system", "dgx-h100", "--model", "mixtral-8x7b", "--phase", "decode", "--batch", "16",
                 "--context", "512", "--dp", "8"]) == 2
    err = capsys.readouterr().err
    assert "at --dp 8" in err and "--ep 8" in err



def test_plan_auto_lists_each_plan_once_with_the_micro_batches_it_ran():
    """A pipeline whose default micro-batch count is already one was listed (and simulated) twice."""
    plan, table = plan_auto("dgx-h100", "mamba-2.8b", Decode(1, 1024))
    assert not table.duplicated(["tp", "pp", "dp", "ep", "microbatches"]).any()
    assert (table["microbatches"] >= 1).all()  # the count each step ran, not 0 for "default"
    assert plan.describe() in set(table["plan"])
