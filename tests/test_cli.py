import json

import pytest
import yaml
from xpusim.cli import main


def run(capsys, *args):
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_simulate_json(capsys):
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode",
                     "--batch", "8", "--context", "4096", "--json")
    assert rc == 0
    d = json.loads(out)
    for k in ("latency_s", "energy_j", "tokens_per_s", "memory_bytes", "ops"):
        assert k in d
    assert d["latency_s"] > 0 and d["tokens_per_s"] > 0
    for op in d["ops"]:
        for k in ("name", "kind", "latency_s", "cycles", "bound"):
            assert k in op


def test_op_json(capsys):
    rc, out, _ = run(capsys, "op", "gemm", "--m", "256", "--n", "256", "--k", "256", "--arch", "systolic-npu", "--json")
    assert rc == 0
    d = json.loads(out)
    for k in ("cycles", "latency_s", "compute_cycles", "stall_cycles", "utilization", "energy_j", "bound"):
        assert k in d
    # the closed form the docs give for a weight-stationary 128 x 128 array: 2 x 2 folds of T + 2R + C - 2
    assert d["compute_cycles"] == 2 * 2 * (256 + 2 * 128 + 128 - 2) - 1
    assert d["cycles"] >= d["compute_cycles"] and 0 < d["utilization"] <= 1


@pytest.mark.parametrize("args", [
    ["simulate", "--arch", "nope", "--model", "llama-3-8b", "--phase", "decode", "--context", "8"],
    ["simulate", "--arch", "h100-sxm", "--model", "nope", "--phase", "decode", "--context", "8"],
    ["simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode"],
    ["simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode", "--context", "0"],
    ["op", "gemm", "--m", "-3", "--n", "4", "--k", "4", "--arch", "h100-sxm"],
    ["op", "gemm", "--m", "3", "--n", "4", "--k", "4", "--arch", "h100-sxm", "--dtype", "fp13"],
    ["op", "gemm", "--m", "1", "--n", "1024", "--k", "1024", "--arch", "wse-2", "--mapper", "exhaustive"],
    ["op", "gemm", "--m", "256", "--n", "256", "--k", "256", "--arch", "h100-sxm", "--mapper", "sampled"],
    ["op", "gemm", "--m", "1", "--n", "4096", "--k", "4096", "--arch", "alveo-u280", "--mapper", "sampled"],
    ["op", "gemm", "--m", "1", "--n", "100000000", "--k", "64", "--arch", "zigzag-tpu-like", "--dtype", "int8"],
    ["simulate", "--arch", "h100-sxm", "--model", "llama-3-70b", "--phase", "decode", "--context", "8192",
     "--batch", "64"],
])
def test_bad_input_one_line_exit_2(capsys, args):
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("xpusim: error:")
    assert "Traceback" not in err


def test_workload_options(capsys):
    rc, out, _ = run(capsys, "simulate", "--arch", "h200", "--model", "qwen3-30b-a3b", "--phase", "decode", "--batch", "16",
                     "--context", "2048", "--routing", "zipf:1.5", "--json")
    d = json.loads(out)
    assert rc == 0 and d["inputs"]["meta"]["routing"] == "zipf:1.5" and d["inputs"]["meta"]["active_experts"] < 128
    assert {"weights_bytes", "kv_cache_bytes", "activation_bytes", "ssm_state_bytes"} <= set(d)
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "prefill", "--seq", "4096",
                     "--chunk", "1024", "--json")
    assert rc == 0 and json.loads(out)["inputs"]["steps"] == 4
    # an h200: the fp8 70B target (65.7 GiB) and its bf16 8B drafter (15 GiB) together exceed an H100's 80 GiB
    rc, out, _ = run(capsys, "simulate", "--arch", "h200", "--model", "llama-3-70b", "--phase", "speculative",
                     "--context", "1024", "--draft-tokens", "4", "--acceptance", "0.8", "--draft-model", "llama-3-8b",
                     "--weight-dtype", "fp8", "--json")
    spec = json.loads(out)
    assert rc == 0 and spec["expected_tokens"] == pytest.approx((1 - 0.8**5) / 0.2) and spec["speedup"] > 1
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "mamba-2.8b", "--phase", "decode",
                     "--context", "100000", "--format-error")
    assert rc == 0 and "SSM state" in out and "format error" in out


@pytest.mark.parametrize("args, message", [
    (["--model", "deepseek-v3", "--phase", "decode", "--context", "4096"], "at least 8 such devices"),
    (["--model", "t5-base", "--phase", "decode", "--context", "16"], "source length (--seq)"),
    (["--model", "llama-3-8b", "--phase", "prefill", "--seq", "64", "--shared-prefix", "8"], "applies to decode"),
    (["--model", "llama-3-8b", "--phase", "speculative", "--context", "64"], "needs --context, --draft-tokens"),
    (["--model", "mixtral-8x7b", "--phase", "decode", "--context", "64", "--routing", "zipf:-2"], "Zipf exponent"),
    (["--system", "dgx-a100", "--model", "llama-3-8b", "--phase", "decode", "--context", "64"], "drop --arch h100-sxm"),
])
def test_workload_errors_are_one_line(capsys, args, message):
    rc, out, err = run(capsys, "simulate", "--arch", "h100-sxm", *args)
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, msg", [
    (["--arch", "h100-sxm", "--tp", "2", "--phase", "decode", "--context", "64"], "--tp 2 split a model"),
    (["--arch", "h100-sxm", "--phase", "prefill", "--seq", "64", "--context", "8"], "prefill does not take it (drop --context)"),
    (["--arch", "duplex", "h100-sxm", "--phase", "decode", "--context", "64"], "runs alone"),
    (["--arch", "h100-sxm", "--phase", "decode", "--context", "64", "--routing", "zipf:1.2"], "has no experts"),
    (["--arch", "h100-sxm", "--phase", "decode", "--context", "64", "--mla-form", "naive"], "standard attention"),
])
def test_flags_that_do_not_apply_are_one_line_errors(argv, msg, capsys):
    from xpusim.cli import main

    assert main(["simulate", "--model", "llama-3-8b", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_a_multi_device_json_makes_a_report_and_energy_states_its_scope(tmp_path, capsys):
    from xpusim.cli import main

    assert main(["simulate", "--arch", "h100-sxm", "a100-80gb", "--model", "llama-3-8b", "--phase", "decode",
                 "--context", "64", "--json"]) == 0
    (tmp_path / "r.json").write_text(capsys.readouterr().out)
    assert main(["report", str(tmp_path / "r.json"), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1000
    capsys.readouterr()
    assert main(["simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode", "--context", "64"]) == 0
    assert "energy: dynamic only" in capsys.readouterr().out


def test_generate_reports_memory_it_was_told_to_ignore(capsys):
    from xpusim.cli import main

    assert main(["simulate", "--system", "4x-a100-nvlink", "--model", "gpt3-175b", "--tp", "4", "--phase", "generate",
                 "--batch", "8", "--seq", "2048", "--gen", "4", "--ignore-memory"]) == 0
    assert "EXCEEDS" in capsys.readouterr().out



def test_the_lm_heads_format_is_named_and_can_be_chosen(capsys):
    from xpusim.cli import main

    argv = ["simulate", "--arch", "edge-npu", "--model", "bitnet-b1.58-2b4t", "--phase", "decode", "--context", "64",
            "--weight-dtype", "int8", "--act-dtype", "int8", "--kv-dtype", "int8"]
    assert main([*argv, "--embed-dtype", "bf16"]) == 2  # the int8 engine computes no bf16 LM head
    err = capsys.readouterr().err
    assert "lm_head bf16" in err and "--embed-dtype int8" in err
    assert main(argv) == 0  # the engine's weight format sets the LM head's
    assert main([*argv, "--embed-dtype", "int8"]) == 0
    assert main([*argv, "--embed-dtype", "int7"]) == 2


def test_a_directory_is_a_model_with_its_config_json_and_never_a_device(tmp_path, capsys):
    import shutil

    from xpusim.workloads.model import MODELS_DIR

    shutil.copy(MODELS_DIR / "llama-3-8b.json", tmp_path / "config.json")
    assert main(["simulate", "--arch", "h100-sxm", "--model", str(tmp_path), "--phase", "decode", "--context", "8"]) == 0
    capsys.readouterr()
    assert main(["simulate", "--arch", str(tmp_path), "--model", "llama-3-8b", "--phase", "decode", "--context", "8"]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [
    (["--system", "dgx-h100", "--placement", "auto"], "for one device (--arch) only"),
    (["--arch", "h100-sxm", "--pim-mode", "blocked"], "only for a host with PIM"),
])
def test_device_flags_that_would_be_ignored_are_refused(argv, msg, capsys):
    assert main(["simulate", *argv, "--model", "llama-3-8b", "--phase", "decode", "--context", "8"]) == 2
    assert msg in capsys.readouterr().err


def test_a_wafer_step_that_could_not_be_placed_says_so(capsys):
    base = ("simulate", "--arch", "wse-3", "--model", "mixtral-8x7b", "--phase", "decode", "--batch", "64",
            "--context", "1024")
    rc, out, err = run(capsys, *base)
    assert rc == 2 and "wafers" in err  # does not fit: the remedies
    rc, out, _ = run(capsys, *base, "--ignore-memory")
    assert rc == 0 and "wafer placement: overflow" in out and "fits no layout (memory ignored)" in out
    rc, out, _ = run(capsys, "simulate", "--arch", "wse-3", "--model", "llama-3-8b", "--phase", "decode", "--context", "1024")
    assert rc == 0 and "not placed" not in out and "wafer placement: resident" in out


def test_power_above_the_devices_tdp_is_flagged(capsys):
    """edge-npu's modelled dynamic power alone exceeds its 2 W: said, with the average in --json; a step
    well under its tdp (h100-sxm) keeps the lower-bound note."""
    args = ("simulate", "--arch", "edge-npu", "--model", "bitnet-b1.58-2b4t", "--phase", "prefill", "--batch", "1",
            "--seq", "512")
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "above the device's tdp of 2 W" in out and "lower bound" not in out
    rc, out, _ = run(capsys, *args, "--json")
    d = json.loads(out)
    assert d["average_power_w"] == pytest.approx(d["energy_j"] / d["latency_s"]) and d["average_power_w"] > d["inputs"]["tdp_w"]
    rc, out, _ = run(capsys, "simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode",
                     "--context", "1024")
    assert rc == 0 and "tdp" not in out and "lower bound" in out


def test_a_device_without_energies_says_none_is_counted(capsys, tmp_path):
    dev = {"name": "bare", "class": "generic", "clock": "1 GHz",
           "matrix": {"instances": 4, "macs_per_cycle": {"fp16": 64}}, "vector": {"instances": 1, "flops_per_cycle": {"fp32": 8}},
           "memory": [{"name": "dram", "capacity": "1 GiB", "bandwidth": "8 GB/s"},
                      {"name": "sram", "capacity": "64 KiB", "bandwidth": "64 GB/s"}]}
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump(dev))
    rc, out, _ = run(capsys, "simulate", "--arch", str(path), "--model", "llama-2-7b", "--phase", "decode",
                     "--context", "256", "--ignore-memory")
    assert rc == 0 and "energy: none counted" in out
