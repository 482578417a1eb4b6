"""What the command line tells a user: memory-fit remedies that hold when followed, one format error
naming every flag, comparisons that say when they are not like for like, one time formatter,
over-capacity marks and throughput units per phase."""

import math
import re
import types

import pytest
import xpusim
from xpusim.arch.loader import load_arch
from xpusim.cli import main
from xpusim.errors import CapacityError, DtypeError, SpecError
from xpusim.sim.engine import simulate, with_engine_formats
from xpusim.sim.events import simulate_system
from xpusim.sim.fit_advice import device_bytes
from xpusim.sim.parallel import Plan
from xpusim.sim.result_text import fmt_s
from xpusim.workloads.model import load_model
from xpusim.workloads.phases import Decode

GIB = 2.0**30


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------ memory-fit remedies


def test_the_device_count_is_the_fewest_split_that_holds_the_per_rank_footprint(capsys):
    rc, _, err = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "deepseek-v3", "--phase", "decode", "--batch", "8",
                     "--context", "4096")
    assert rc == 2 and err.count("\n") == 1
    assert "at least 9 such devices (--pp 9 on a --system" in err
    # what every rank replicates (the MLA latent cache, 2.1 GiB at batch 8) keeps 8 devices from holding it, however split
    m, cap = load_model("deepseek-v3"), 80 * GIB
    eight = [Plan(tp=tp, pp=8 // tp) for tp in (1, 2, 4, 8)]
    assert all(device_bytes(m, p, 8, 4096) > cap for p in eight)
    assert device_bytes(m, Plan(pp=9), 8, 4096) <= cap


def test_a_system_whose_devices_are_all_used_is_not_told_to_grow_tp(capsys):
    rc, _, err = run(capsys, "simulate", "--system", "dgx-h100", "--model", "deepseek-v3", "--tp", "8", "--phase", "decode",
                     "--batch", "8", "--context", "4096")
    assert rc == 2 and err.count("\n") == 1
    assert "larger --tp" not in err and "no tensor/pipeline split of dgx-h100's 8 devices holds it" in err
    assert "--kv-dtype fp8" not in err  # a replicated 2.1 GiB cache: fp8 alone does not make it fit
    batch = int(re.search(r"a batch of (\d+) or less", err).group(1))
    context = int(re.search(r"--context (\d+) or less", err).group(1))
    simulate_system("dgx-h100", "deepseek-v3", Decode(batch, 4096), Plan(tp=8))  # the advice, followed, fits
    simulate_system("dgx-h100", "deepseek-v3", Decode(8, context), Plan(tp=8))
    with pytest.raises(CapacityError):
        simulate_system("dgx-h100", "deepseek-v3", Decode(batch + 1, 4096), Plan(tp=8))
    with pytest.raises(CapacityError):
        simulate_system("dgx-h100", "deepseek-v3", Decode(8, context + 1), Plan(tp=8))


def test_a_split_the_system_can_take_is_offered_and_fits():
    with pytest.raises(CapacityError) as e:
        simulate_system("dgx-h100", "llama-3-70b", Decode(8, 4096), Plan(tp=1))
    flags = re.search(r"try (--tp \d+(?: --pp \d+)?) \((\d+) of its 8 devices\)", str(e.value))
    assert flags, str(e.value)
    tp, pp = (int(re.search(rf"--{k} (\d+)", flags.group(1)).group(1)) if f"--{k}" in flags.group(1) else 1
              for k in ("tp", "pp"))
    assert tp * pp == int(flags.group(2))
    simulate_system("dgx-h100", "llama-3-70b", Decode(8, 4096), Plan(tp=tp, pp=pp))


def test_format_changes_are_offered_only_when_they_fit():
    with pytest.raises(CapacityError) as e:  # a KV cache of 80 GiB beside 15 GiB of weights
        simulate("h100-sxm", "llama-3-8b", Decode(20, 32768))
    msg = str(e.value)
    assert "--kv-dtype fp8" in msg and "--weight-dtype" not in msg  # narrower weights alone leave it over 80 GiB
    simulate("h100-sxm", load_model("llama-3-8b").with_formats(kv="fp8"), Decode(20, 32768))
    batch = int(re.search(r"a batch of (\d+) or less", msg).group(1))
    simulate("h100-sxm", "llama-3-8b", Decode(batch, 32768))
    with pytest.raises(CapacityError):
        simulate("h100-sxm", "llama-3-8b", Decode(batch + 1, 32768))


# ------------------------------------------------------------------ unsupported formats


def test_one_error_names_every_format_an_int8_engine_lacks_with_its_flags():
    with pytest.raises(DtypeError) as e:
        xpusim.simulate("edge-npu", "llama-3-8b", Decode(1, 512))
    msg = str(e.value)
    assert "edge-npu's matrix unit computes int8 only (int4 widened)" in msg and "\n" not in msg
    assert "add --weight-dtype int8 --act-dtype int8 --kv-dtype int8" in msg and "--embed-dtype" not in msg
    assert "xpusim.sim.engine.with_engine_formats" in msg
    with pytest.raises(DtypeError) as e:
        xpusim.simulate("alveo-u280", "llama-2-7b", Decode(1, 512))
    assert "add --weight-dtype int8 --act-dtype int8 --kv-dtype int8" in str(e.value) and "with_engine_formats" in str(e.value)
    arch = load_arch("edge-npu")  # followed: the model runs (bitnet fits the 4 GiB), or fails on memory alone
    assert simulate(arch, with_engine_formats(load_model("bitnet-b1.58-2b4t"), arch), Decode(1, 64)).latency_s > 0
    with pytest.raises(CapacityError):
        simulate(arch, with_engine_formats(load_model("llama-3-8b"), arch), Decode(1, 512))


def test_the_edge_npu_runs_its_engine_formats_and_names_only_what_the_user_changed(capsys):
    argv = ["simulate", "--arch", "edge-npu", "--model", "llama-3-8b", "--phase", "decode", "--context", "512"]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "needs 7.5 GiB" in err  # int8 by default: straight to the memory fit
    rc, _, err = run(capsys, *argv, "--act-dtype", "bf16")
    assert rc == 2 and err.count("\n") == 1
    assert "not this model's activations bf16: add --act-dtype int8" in err and "--weight-dtype" not in err


# ------------------------------------------------------------------ comparisons and reports


def test_a_comparison_says_when_energy_bases_and_formats_differ(tmp_path, capsys):
    report = tmp_path / "r.html"
    rc, out, _ = run(capsys, "simulate", "--arch", "alveo-u280", "h100-sxm", "--model", "llama-2-7b", "--phase", "prefill",
                     "--seq", "128", "--report", str(report))
    line = next(x for x in out.splitlines() if x.startswith("comparison:"))
    assert rc == 0 and "energy bases differ: alveo-u280 dynamic + static, h100-sxm dynamic only" in line
    assert "formats differ: alveo-u280 int8/int8/int8, h100-sxm fp16/fp16/fp16" in line
    html = report.read_text()
    assert "energy basis" in html and "dynamic + static" in html and "dynamic only" in html
    assert "formats (w/a/kv)" in html and "not like for like" in html and "prompt tokens/s" in html
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "a100-80gb", "--model", "llama-3-8b", "--phase", "decode",
                     "--context", "64")
    assert rc == 0 and "not like for like" not in out and re.search(r"comparison: h100-sxm \S+ ms \S+ J", out)


# ------------------------------------------------------------------ formatting, marks and units


def test_times_print_with_three_significant_digits_and_one_unit():
    assert fmt_s(1.0004e-3) == "1.00 ms" and fmt_s(0.99997e-3) == "1.00 ms"
    assert fmt_s(123.4e-6) == "123 us" and fmt_s(3.65e-3) == "3.65 ms" and fmt_s(math.inf) == "-"


def test_the_host_and_pim_table_has_the_columns_of_every_other_path(capsys):
    rc, out, _ = run(capsys, "simulate", "--arch", "a100-80gb", "--pim", "hbm2-pim", "--pim-stacks", "5", "--placement",
                     "attention", "--model", "llama-2-7b", "--phase", "decode", "--context", "2048")
    header = out.splitlines()[0].split()
    assert rc == 0 and header == ["block", "name", "kind", "repeat", "device", "host", "pim", "latency", "x", "repeat",
                                  "bound", "utilization", "FLOP/B", "share"]
    assert "e+" not in out and "_s " not in out
    assert re.search(r"latency \d\S* (ms|us|s), PIM share", out) and "generated tokens/s" in out


def test_an_ignored_memory_overflow_is_marked_on_one_device_and_in_the_report(tmp_path, capsys):
    report = tmp_path / "r.html"
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-70b", "--phase", "decode", "--context",
                     "64", "--ignore-memory", "--report", str(report))
    memory = next(x for x in out.splitlines() if x.startswith("memory "))
    assert rc == 0 and "EXCEEDS the device's memory (simulated because of --ignore-memory)" in memory
    assert "EXCEEDS (--ignore-memory)" in report.read_text()


@pytest.mark.parametrize("args, unit", [
    (["--arch", "h100-sxm", "--phase", "prefill", "--seq", "128"], "prompt tokens/s"),
    (["--arch", "h100-sxm", "--phase", "decode", "--context", "128"], "generated tokens/s"),
    (["--arch", "h100-sxm", "--phase", "verify", "--context", "128", "--draft-tokens", "4"], "verified sequences/s"),
    (["--system", "dgx-h100", "--tp", "2", "--phase", "prefill", "--seq", "128"], "prompt tokens/s"),
])
def test_throughput_is_labelled_by_what_the_phase_counts(capsys, args, unit):
    rc, out, _ = run(capsys, "simulate", "--model", "llama-3-8b", *args)
    assert rc == 0 and re.search(rf"throughput [\d.]+ {unit}", out)


def test_a_pim_placement_names_only_the_formats_its_placed_ops_need():
    from xpusim.sim.hetero import pim_stacks, simulate_hetero

    with pytest.raises(DtypeError) as e:  # attention on fp16-only PIM: the KV cache and activations, not the weights
        simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), "llama-3-8b", Decode(1, 256), "attention")
    assert str(e.value).endswith("not this model's activations bf16, KV cache bf16: add --act-dtype fp16 --kv-dtype fp16")
    fp16 = load_model("llama-3-8b").with_formats(activations="fp16", kv="fp16")
    assert simulate_hetero("a100-80gb", pim_stacks("hbm2-pim", 5), fp16, Decode(1, 256), "attention").latency_s > 0


# ------------------------------------------------------------------ notes on what ran


def test_a_gemm_timed_alone_names_its_launch_overhead(capsys):
    rc, out, _ = run(capsys, "op", "gemm", "--m", "1024", "--n", "1024", "--k", "1024", "--arch", "h100-sxm")
    launch = load_arch("h100-sxm")
    from xpusim.sim.engine import launch_overhead

    assert rc == 0 and f"of which launch {fmt_s(launch_overhead('matmul', launch, True))}" in out
    rc, out, _ = run(capsys, "op", "gemm", "--m", "64", "--n", "64", "--k", "64", "--arch", "h100-sxm", "--json")
    import json

    assert json.loads(out)["launch_s"] == pytest.approx(launch_overhead("matmul", launch, True))


def test_a_step_says_when_its_contractions_run_in_a_wider_class(capsys):
    rc, out, _ = run(capsys, "simulate", "--arch", "v100s", "--model", "llama-3-8b", "--phase", "decode", "--context", "512")
    assert rc == 0 and "has no bf16 rate; the contractions compute in fp32" in out
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode", "--context", "512")
    assert rc == 0 and "contractions compute in" not in out


def test_a_context_beyond_the_trained_length_is_noted(capsys):
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode",
                     "--context", "100000")
    assert rc == 0 and "100,000 tokens exceed llama-3-8b's trained context of 8,192" in out
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode",
                     "--context", "8000")
    assert "trained context" not in out


def test_embed_dtype_is_honoured_on_a_system_as_on_one_device(capsys, tmp_path):
    """The user's --embed-dtype must not be replaced by a device's engine format on either path."""
    import json

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
                               "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
                               "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 8192,
                               "hidden_act": "silu", "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                               "tie_word_embeddings": False, "torch_dtype": "bfloat16"}))
    system = tmp_path / "npu2.yaml"
    system.write_text("name: npu2\ndevice: edge-npu\ndevices_per_node: 2\nnodes: 1\n"
                      "intra: {topology: switch, bandwidth: 16 GB/s, latency: 2 us, energy_per_byte: 10}\n")
    args = ("--model", str(cfg), "--phase", "decode", "--context", "128", "--embed-dtype", "fp16")
    rc1, _, err1 = run(capsys, "simulate", "--arch", "edge-npu", *args)
    rc2, _, err2 = run(capsys, "simulate", "--system", str(system), *args)
    assert rc1 == rc2 == 2 and "embeddings and lm_head fp16" in err1 and "embeddings and lm_head fp16" in err2


# ------------------------------------------------------------------ review 39: fit checks of multi-step phases


def _remedy_batch(msg: str) -> int:
    found = re.search(r"a batch of (\d+) or less", msg)
    assert found, msg
    return int(found.group(1))


def test_speculative_decoding_checks_the_target_and_drafter_together():
    from xpusim.sim.steps import speculate

    target = load_model("llama-3-70b").with_formats("fp8")
    with pytest.raises(CapacityError, match=r"llama-3-70b with llama-3-8b needs 13\d\.\d GiB"):
        speculate("h200", target, 16, 8192, 4, 0.7, "llama-3-8b")  # each fits alone (105.8 and 31.0 GiB)
    with pytest.raises(CapacityError, match=r"with medusa x3 needs 82\.\d GiB"):  # the heads' 3 GiB of weights count
        speculate("h100-sxm", "llama-3-8b", 64, 8192, 3, 0.7, medusa_heads=3)
    ok = speculate("h200", target, 4, 8192, 4, 0.7, "llama-3-8b")
    assert ok.speedup > 1 and ok.drafter_formats == "bf16/bf16/bf16"
    assert speculate("h200", target, 16, 8192, 4, 0.7, "llama-3-8b", check_memory=False).step_s > 0


def test_chunked_prefill_fit_error_is_the_whole_prompts_and_its_remedies_fit():
    from xpusim.sim.steps import simulate_chunked_prefill

    with pytest.raises(CapacityError, match=r"KV cache 96\.0") as e:
        simulate_chunked_prefill("h100-sxm", "llama-3-8b", 24, 32768, 4096)
    batch = _remedy_batch(str(e.value))
    assert simulate_chunked_prefill("h100-sxm", "llama-3-8b", batch, 32768, 4096).memory_bytes <= 80 * GIB
    with pytest.raises(CapacityError):
        simulate_chunked_prefill("h100-sxm", "llama-3-8b", batch + 1, 32768, 4096)
    found = re.search(r"--seq (\d+) or less", str(e.value))
    assert found, e.value
    seq = int(found.group(1))
    simulate_chunked_prefill("h100-sxm", "llama-3-8b", 24, seq, 4096)
    with pytest.raises(CapacityError):
        simulate_chunked_prefill("h100-sxm", "llama-3-8b", 24, seq + 1, 4096)


def test_activation_bound_prefill_is_offered_a_smaller_batch_and_a_chunked_prefill_that_fit():
    from xpusim.sim.steps import simulate_chunked_prefill
    from xpusim.workloads.phases import Prefill

    with pytest.raises(CapacityError) as e:
        simulate("tpu-v5e", "mamba-2.8b", Prefill(8, 32768))
    msg = str(e.value)
    batch = _remedy_batch(msg)
    found = re.search(r"--chunk (\d+) or less", msg)
    assert found, msg
    chunk = int(found.group(1))
    simulate("tpu-v5e", "mamba-2.8b", Prefill(batch, 32768))
    simulate_chunked_prefill("tpu-v5e", "mamba-2.8b", 8, 32768, chunk)
    with pytest.raises(CapacityError):
        simulate_chunked_prefill("tpu-v5e", "mamba-2.8b", 8, 32768, chunk + 1)


# ------------------------------------------------------------------ review 39: files, flags, JSON, quantities


def test_binary_inputs_and_unwritable_outputs_are_one_line_errors(capsys, tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 3)
    folder = tmp_path / "d.yaml"
    folder.mkdir()
    step = ("simulate", "--arch", "h100-sxm", "--model", "llama-2-7b", "--phase", "decode", "--context", "64")
    for args in (("simulate", "--arch", str(binary), "--model", "llama-3-8b", "--phase", "decode", "--context", "64"),
                 ("explore", "--space", str(binary), "--trials", "1"),
                 ("validate", "--arch", "a100-80gb", "--kind", "gemm", "--csv", str(binary)),
                 ("report", str(binary), "-o", str(tmp_path / "x.html")),
                 (*step, "--save", str(folder)), ("report", str(binary), "-o", str(folder))):
        rc, _, err = run(capsys, *args)
        assert rc == 2 and len(err.strip().splitlines()) == 1, (args, err)
    rc, _, err = run(capsys, *step, "--csv", str(tmp_path / "new" / "x.csv"), "--trace", str(tmp_path / "new2" / "t.json"))
    assert rc == 0 and (tmp_path / "new" / "x.csv").is_file() and (tmp_path / "new2" / "t.json").is_file()


def test_one_host_with_pim_and_reproduce_flag_clashes_are_refused(capsys):
    rc, _, err = run(capsys, "simulate", "--arch", "h100-sxm", "a100-80gb", "--pim", "hbm2-pim", "--model", "llama-2-7b",
                     "--weight-dtype", "fp16", "--act-dtype", "fp16", "--kv-dtype", "fp16", "--phase", "decode",
                     "--batch", "8", "--context", "1024")
    assert rc == 2 and "--pim runs one host" in err
    for args in (("reproduce", "nonexistent", "--all"), ("reproduce", "nonexistent", "--list")):
        rc, _, err = run(capsys, *args)
        assert rc == 2 and "not both" in err
    rc, out, _ = run(capsys, "reproduce", "--list", "--json")
    assert rc == 0 and {"name", "paper", "claim"} <= set(__import__("json").loads(out)[0])


def _strict(text: str):
    import json

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_every_json_output_is_strict(capsys, tmp_path):
    rc, out, _ = run(capsys, "simulate", "--system", "dgx-h100", "--model", "llama-3-70b", "--phase", "generate", "--batch",
                     "8", "--seq", "512", "--gen", "4", "--plan", "auto", "--json")
    assert rc == 0 and _strict(out)
    saved = tmp_path / "dx.json"
    rc, out, _ = run(capsys, "simulate", "--arch", "duplex", "--model", "mixtral-8x7b", "--weight-dtype", "fp8",
                     "--act-dtype", "fp16", "--kv-dtype", "fp16", "--phase", "decode", "--batch", "32", "--context",
                     "4096", "--json", "--save", str(saved))
    assert rc == 0 and _strict(out) and _strict(saved.read_text())


def test_op_refuses_operands_beyond_memory_on_every_class(capsys):
    for arch in ("h100-sxm", "alveo-u280", "hbm2-pim", "tpu-v4"):
        rc, _, err = run(capsys, "op", "gemm", "--m", "200000", "--n", "200000", "--k", "200000", "--arch", arch)
        assert rc == 2 and "memory holds" in err, arch


def test_fractional_prefixes_on_bytes_and_malformed_per_cycle_bandwidths_are_refused():
    from xpusim.arch.loader import _bandwidth
    from xpusim.errors import SpecError
    from xpusim.units import parse_quantity

    with pytest.raises(SpecError, match="did you mean MB/s"):
        parse_quantity("1200 mB/s", "bytes_per_s", "bandwidth")
    with pytest.raises(SpecError, match="not a finite quantity"):
        parse_quantity("1e308 TB", "bytes", "capacity")
    assert parse_quantity("5 \u03bcs", "seconds", "t") == parse_quantity("5 \u00b5s", "seconds", "t") == pytest.approx(5e-6)
    with pytest.raises(SpecError, match="cannot read quantity"):
        _bandwidth("1.536.0 B/cycle", 1e9, "bandwidth")
    assert _bandwidth("128 B/cycle", 1e9, "bandwidth") == 128e9


def test_unknown_device_suggests_close_names_and_repeated_yaml_keys_are_refused(capsys, tmp_path):
    rc, _, err = run(capsys, "simulate", "--arch", "duplx", "--model", "llama-3-8b", "--phase", "decode", "--context", "10")
    assert rc == 2 and "did you mean duplex" in err and "host + PIM presets" in err
    from xpusim.arch.loader import PRESETS_DIR

    twice = tmp_path / "twice.yaml"
    twice.write_text((PRESETS_DIR / "h100-sxm.yaml").read_text() + "\nclock: 0.5 GHz\n")
    rc, _, err = run(capsys, "op", "gemm", "--m", "64", "--n", "64", "--k", "64", "--arch", str(twice))
    assert rc == 2 and "key 'clock' given twice" in err


def test_encoder_decoder_shared_prefix_is_cached_once():
    from xpusim.workloads.phases import Decode as D

    plain = simulate("h100-sxm", "t5-base", D(8, 64, source=512))
    shared = simulate("h100-sxm", "t5-base", D(8, 64, source=512, shared_prefix=32))
    model = load_model("t5-base")
    assert plain.kv_cache_bytes - shared.kv_cache_bytes == pytest.approx(7 * model.kv_cache_bytes(1, 32))


def test_over_tdp_is_per_device():
    from xpusim.sim.result_text import over_tdp
    # 8 devices, 8 kJ in 1 s: 1000 W each, over a 700 W tdp; 4 kJ: 500 W each, under it
    assert over_tdp(8000.0, 1.0, 700.0, devices=8) == pytest.approx(1000.0)
    assert over_tdp(4000.0, 1.0, 700.0, devices=8) == 0.0


def test_a_fractional_prefix_on_bits_per_s_is_refused():
    from xpusim.units import parse_quantity
    with pytest.raises(SpecError, match="did you mean Mb/s"):
        parse_quantity("100 mb/s", "bits_per_s", "link")
    assert parse_quantity("100 Mb/s", "bits_per_s", "link") == 1e8


def test_an_output_path_that_is_a_directory_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "d.json"
    folder.mkdir()
    import xpusim.cli as cli
    monkeypatch.setattr(cli, "_cmd_simulate", lambda a: (_ for _ in ()).throw(AssertionError("work started")))
    rc = main(["simulate", "--arch", "h100-sxm", "--model", "llama-2-7b", "--phase", "decode", "--context", "64",
               "--save", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a directory; give a file path" in err


def test_a_model_yaml_with_a_repeated_key_is_refused(tmp_path):
    from xpusim.workloads.model import MODELS_DIR, load_model
    p = tmp_path / "twice.yaml"
    p.write_text((MODELS_DIR / "gpt3-13b.yaml").read_text() + "\nn_layers: 2\n")
    with pytest.raises(SpecError, match="key 'n_layers' given twice"):
        load_model(p)


def test_an_activation_bound_prefill_is_offered_the_longest_prompt_that_fits():
    from xpusim import simulate
    from xpusim.workloads.phases import Prefill
    with pytest.raises(CapacityError) as e:
        simulate("tpu-v5e", "mamba-2.8b", Prefill(8, 32768))
    msg = str(e.value)
    seq = int(re.search(r"--seq (\d+) or less", msg).group(1))
    chunk = int(re.search(r"--chunk (\d+) or less", msg).group(1))
    assert seq == chunk  # no KV cache: a step's activations follow its tokens, whether a shorter prompt or a chunk
    simulate("tpu-v5e", "mamba-2.8b", Prefill(8, seq))
    with pytest.raises(CapacityError):
        simulate("tpu-v5e", "mamba-2.8b", Prefill(8, seq + 1))


def test_the_larger_activations_of_a_target_and_drafter_count():
    from xpusim.sim.steps import _check_pair_fits
    gib = 2.0**30
    verify = types.SimpleNamespace(memory_bytes=60 * gib, activation_bytes=2 * gib, capacity_bytes=70 * gib)
    target, arch = types.SimpleNamespace(name="t"), types.SimpleNamespace(name="d")
    _check_pair_fits(verify, 5 * gib, 2 * gib, target, "drafter", arch)  # 60 + 5 = 65 GiB fits
    with pytest.raises(CapacityError, match=r"needs 73\.0 GiB"):  # 60 + 5 + (10 - 2) = 73 GiB
        _check_pair_fits(verify, 5 * gib, 10 * gib, target, "drafter", arch)


def test_drafter_formats_are_weights_activations_kv():
    from xpusim.sim.steps import speculate
    from xpusim.workloads.model import load_model
    target = load_model("llama-3-70b").with_formats("fp8")
    s = speculate("h200", target, 4, 8192, 4, 0.7, load_model("llama-3-8b").with_formats(kv="fp8"))
    assert s.drafter_formats == "bf16/bf16/fp8-e4m3"  # weights/activations/KV of the drafter


def test_merge_keys_load_as_safe_load_does():
    from xpusim.files import load_yaml

    text = "a: &x {k: 1, j: 3}\nb:\n  <<: *x\n  k: 2\n"
    assert load_yaml(text, "f.yaml") == {"a": {"k": 1, "j": 3}, "b": {"k": 2, "j": 3}}


def test_an_unhashable_key_is_a_one_line_error():
    from xpusim.files import load_yaml

    with pytest.raises(SpecError):
        load_yaml("? [1, 2]\n: 3\n", "f.yaml")


def test_host_pim_prefill_remedies_do_not_offer_chunk(capsys):
    rc = main(["simulate", "--arch", "a100-40gb", "--pim", "hbm2-pim", "--model", "llama-3-8b", "--phase", "prefill",
               "--batch", "4", "--seq", "32768"])
    err = capsys.readouterr().err
    assert rc == 2
    m = re.search(r"--chunk (\d+)", err)
    if m:  # the remedy must work
        rc = main(["simulate", "--arch", "a100-40gb", "--pim", "hbm2-pim", "--model", "llama-3-8b", "--phase",
                   "prefill", "--batch", "4", "--seq", "32768", "--chunk", m.group(1)])
        assert rc == 0, capsys.readouterr().err


def test_a_no_fit_error_offers_weight_streaming_only_when_it_fits():
    ph = Decode(1, 131072)
    with pytest.raises(CapacityError) as e:
        simulate("wse-2", "llama-3-8b", ph)
    if "--weight-streaming" in str(e.value):
        simulate("wse-2", "llama-3-8b", ph, wafer_options={"weight_streaming": True})  # raises today: 72,259 B per core


def test_kib_per_cycle_is_parsed_or_refused_with_a_true_message():
    from xpusim.arch.loader import _bandwidth

    try:
        assert _bandwidth("1 KiB/cycle", 1e9, "bandwidth") == pytest.approx(1024e9)
    except SpecError as e:
        assert "'Ki' is not a bytes unit" not in str(e), str(e)
