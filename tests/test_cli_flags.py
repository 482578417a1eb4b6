"""``simulate`` flags: each is honoured by the phase and path it is given to, or refused in one line
before anything is simulated; the output files are written wherever a step's result exists."""

import json

import pandas as pd
import pytest
from xpusim.cli import main
from xpusim.cli_flags import PHASE_FLAGS

ARCH = ["--arch", "h100-sxm", "--model", "llama-3-8b"]
SYSTEM = ["--system", "4x-a100-nvlink", "--tp", "4", "--model", "llama-3-8b"]
PIM = ["--arch", "a100-80gb", "--pim", "hbm2-pim", "--model", "llama-3-8b", "--weight-dtype", "fp16", "--act-dtype", "fp16",
       "--kv-dtype", "fp16"]
#: a runnable command line of every phase
BASE = {
    "prefill": [*ARCH, "--phase", "prefill", "--seq", "64"],
    "decode": [*ARCH, "--phase", "decode", "--context", "64"],
    "verify": [*ARCH, "--phase", "verify", "--context", "64", "--draft-tokens", "2"],
    "speculative": [*ARCH, "--phase", "speculative", "--context", "64", "--draft-tokens", "2", "--acceptance", "0.5",
                    "--medusa-heads", "2"],
    "generate": [*SYSTEM, "--phase", "generate", "--seq", "64", "--gen", "2"],
}
VALUES = {"seq": "64", "context": "64", "chunk": "16", "gen": "2", "shared_prefix": "8", "draft_tokens": "2",
          "tree_width": "2", "acceptance": "0.5", "draft_model": "llama-3-8b", "medusa_heads": "2"}


def run(capsys, *argv):
    rc = main(["simulate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def refused(capsys, *argv):
    """The one-line error of a refused command line."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("xpusim: error:") and "Traceback" not in err, (rc, err)
    return err


def flag(dest):
    return "--" + dest.replace("_", "-")


@pytest.mark.parametrize("dest, phase", [(d, p) for d, (takes, _) in PHASE_FLAGS.items() for p in BASE if p not in takes])
def test_a_phase_flag_the_phase_does_not_take_is_refused(capsys, dest, phase):
    err = refused(capsys, *BASE[phase], flag(dest), VALUES[dest])
    assert f"{flag(dest)} " in err and f"--phase {phase} does not take it" in err


def test_every_phase_runs_with_its_base_flags(capsys):
    for phase, argv in BASE.items():
        assert run(capsys, *argv, "--json")[0] == 0, phase


def test_decode_takes_seq_only_as_an_encoder_decoders_source(capsys):
    err = refused(capsys, *BASE["decode"], "--seq", "512")
    assert "llama-3-8b is decoder-only (drop --seq)" in err
    rc, out, _ = run(capsys, "--arch", "h100-sxm", "--model", "t5-base", "--phase", "decode", "--context", "64", "--seq", "512",
                     "--json")
    assert rc == 0 and json.loads(out)["inputs"]["phase_args"]["source"] == 512


def test_verify_honours_tree_width_as_a_full_token_tree(capsys):
    from xpusim.sim.engine import simulate
    from xpusim.sim.steps import tree_parents
    from xpusim.workloads.phases import Verify

    def latency(*extra):
        rc, out, _ = run(capsys, *BASE["verify"], "--batch", "4", *extra, "--json")
        assert rc == 0
        return json.loads(out)["latency_s"]

    parents = tree_parents(2, 3)  # 3 + 9 nodes
    tree = simulate("h100-sxm", "llama-3-8b", Verify(4, 64, len(parents), parents)).latency_s
    assert latency("--tree-width", "3") == pytest.approx(tree)
    assert latency("--tree-width", "3") != pytest.approx(latency())
    assert latency("--tree-width", "1") == pytest.approx(latency())  # width 1: the chain
    err = refused(capsys, *BASE["verify"][:-1], "20", "--tree-width", "8")
    assert "more than 100,000 nodes" in err


@pytest.mark.parametrize("argv, msg", [
    ([*SYSTEM, "--phase", "prefill", "--seq", "256", "--chunk", "64"], "--chunk with --system"),
    ([*SYSTEM, "--phase", "decode", "--batch", "8", "--context", "256", "--shared-prefix", "128"],
     "--shared-prefix with --system"),
    ([*PIM, "--phase", "prefill", "--seq", "256", "--chunk", "64"], "--chunk with --pim"),
    ([*PIM, "--phase", "decode", "--batch", "8", "--context", "256", "--shared-prefix", "128"], "--shared-prefix with --pim"),
    ([*PIM, "--phase", "decode", "--context", "256", "--objective", "energy"], "costed for latency only"),
    (["--arch", "a100-80gb", "--pim", "hbm2-pim", "--model", "deepseek-v3", "--phase", "decode", "--context", "256",
      "--mla-form", "naive"], "--mla-form with --pim"),
    ([*SYSTEM, "--phase", "verify", "--context", "64", "--draft-tokens", "2"], "not verify"),
    (["--system", "dgx-h100", "--model", "llama-3-8b", "--phase", "decode", "--context", "2048", "--plan", "auto", "--tp", "2"],
     "--plan auto searches every plan; drop --tp 2"),
    ([*BASE["decode"], "--objective", "throughput"], "--objective throughput ranks --plan auto"),
    ([*BASE["speculative"], "--save", "s.json"], "--save: speculative decoding prints a summary only"),
    ([*BASE["speculative"], "--csv", "s.csv"], "--csv: speculative decoding"),
    ([*BASE["generate"], "--trace", "g.json"], "--trace: a generation prints a summary only"),
    ([*BASE["generate"], "--report", "g.html"], "--report: a generation"),
])
def test_flags_a_path_cannot_honour_are_refused(tmp_path, monkeypatch, capsys, argv, msg):
    monkeypatch.chdir(tmp_path)
    assert msg in refused(capsys, *argv)
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


@pytest.mark.parametrize("argv", [
    [*SYSTEM, "--phase", "decode", "--batch", "8", "--context", "512"],
    [*PIM, "--phase", "decode", "--batch", "8", "--context", "512"],
])
def test_csv_is_written_for_system_and_pim_steps(tmp_path, capsys, argv):
    path = tmp_path / "ops.csv"
    rc, out, _ = run(capsys, *argv, "--csv", str(path), "--json")
    assert rc == 0
    res = json.loads(out)
    table = pd.read_csv(path)
    assert list(table["name"]) == [op["name"] for op in res["ops"]]
    assert set(table["arch"]) == {res["inputs"]["arch"]}


@pytest.mark.parametrize("argv", [BASE["generate"], [*SYSTEM, "--phase", "decode", "--context", "64"],
                                  [*PIM, "--phase", "decode", "--context", "64"], BASE["speculative"]])
def test_format_error_is_in_every_json(capsys, argv):
    rc, out, _ = run(capsys, *argv, "--format-error", "--json")
    d = json.loads(out)
    assert rc == 0 and 0 < d.get("format_error", d.get("inputs", {}).get("format_error", 0)) < 1


def test_generate_honours_the_mapper_objective_and_reports_formats(capsys):
    lat = {}
    for objective in ("latency", "energy"):
        rc, out, _ = run(capsys, *BASE["generate"], "--objective", objective, "--json")
        assert rc == 0
        lat[objective] = json.loads(out)["latency_s"]
    assert lat["energy"] >= lat["latency"]
    rc, out, _ = run(capsys, *BASE["generate"], "--format-error")
    assert rc == 0 and "formats: weights bf16" in out and "format error" in out


def test_speculative_honours_rdu_mode(capsys):
    argv = ["--arch", "sn40l", "--model", "llama-3-8b", "--phase", "speculative", "--context", "512", "--draft-tokens", "2",
            "--acceptance", "0.5", "--medusa-heads", "2", "--json"]
    step = {}
    for mode in ("looped", "unfused"):
        rc, out, _ = run(capsys, *argv, "--rdu-mode", mode)
        assert rc == 0
        step[mode] = json.loads(out)["verify_s"]
    assert step["looped"] < step["unfused"]


@pytest.mark.parametrize("microbatches, msg", [
    ("3", "--microbatches 3 does not divide the batch 8 per replica; use 1, 2, 4 or 8"),
    ("1000", "--microbatches 1000 exceeds the batch 8 per replica; use 1, 2, 4 or 8"),
])
def test_microbatches_that_do_not_divide_the_batch_are_refused(capsys, microbatches, msg):
    argv = ["--system", "dgx-h100", "--pp", "2", "--model", "llama-3-8b", "--phase", "decode", "--batch", "8",
            "--context", "256", "--json"]
    assert msg in refused(capsys, *argv, "--microbatches", microbatches)
    rc, out, _ = run(capsys, *argv, "--microbatches", "4")
    assert rc == 0 and json.loads(out)["inputs"]["microbatches"] == 4
