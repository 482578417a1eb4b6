"""Reports rebuilt from what a run keeps: the roofline of the device that ran (never one loaded
again by name), the system's timeline in its trace, one-line errors for incomplete files, an empty
study, and a chunked prefill described and drawn as the whole prompt."""

import json
from pathlib import Path

import pytest
from xpusim.arch.loader import PRESETS_DIR, load_arch
from xpusim.arch.system import load_system
from xpusim.cli import main
from xpusim.reports.build import op_report
from xpusim.reports.sim_figures import chrome_trace, roofline, timeline_events
from xpusim.sim.result import Result
from xpusim.sim.steps import simulate_chunked_prefill


def run(*args):
    try:
        return main(list(args))
    except SystemExit as e:
        return e.code


def _roof_peak(fig) -> float:
    """The compute roof's height in a roofline figure (its flat part)."""
    line = next(t for t in fig.data if t.name.startswith("roof"))
    return float(max(line.y))


@pytest.fixture
def big_npu(tmp_path) -> Path:
    """The systolic-npu preset with four times its MAC rate, under the preset's own name."""
    text = (PRESETS_DIR / "systolic-npu.yaml").read_text()
    assert "{bf16: 16384, int8: 16384}" in text
    path = tmp_path / "big.yaml"
    path.write_text(text.replace("{bf16: 16384, int8: 16384}", "{bf16: 65536, int8: 65536}"))
    return path


def test_yaml_device_roof_is_the_device_that_ran(big_npu, tmp_path):
    saved = tmp_path / "big.json"
    assert run("simulate", "--arch", str(big_npu), "--model", "llama-3-8b", "--phase", "decode", "--context", "128",
               "--ignore-memory", "--save", str(saved), "--quiet") == 0
    res = Result.from_dict(json.loads(saved.read_text())["results"][0])
    arch = load_arch(str(big_npu))
    assert res.inputs["arch"] == "systolic-npu"  # named like the preset, four times as fast
    assert res.inputs["roof"]["peak_flops_per_s"] == pytest.approx(arch.peak_flops("bf16"))
    assert res.inputs["roof"]["bandwidth_Bps"] == pytest.approx(arch.backing.bandwidth_Bps * arch.backing.instances)
    assert _roof_peak(roofline(res)) == pytest.approx(arch.peak_flops("bf16"))
    assert arch.peak_flops("bf16") == pytest.approx(4 * load_arch("systolic-npu").peak_flops("bf16"))
    assert run("report", str(saved), "-o", str(tmp_path / "big.html")) == 0


def test_old_file_without_roof_falls_back_to_the_preset_or_none(tmp_path):
    assert run("simulate", "--arch", "h100-sxm", "--model", "llama-3-8b", "--phase", "decode", "--context", "128",
               "--save", str(tmp_path / "h.json"), "--quiet") == 0
    d = json.loads((tmp_path / "h.json").read_text())["results"][0]
    del d["inputs"]["roof"]
    assert _roof_peak(roofline(Result.from_dict(d))) == pytest.approx(load_arch("h100-sxm").peak_flops("bf16"))
    d["inputs"]["arch"] = "no-such-device"
    assert not [t for t in roofline(Result.from_dict(d)).data if t.name.startswith("roof")]  # ops only


def test_op_report_of_an_overridden_or_yaml_device(big_npu, tmp_path, capsys):
    saved = tmp_path / "op.json"
    assert run("op", "gemm", "--m", "512", "--n", "512", "--k", "512", "--arch", "systolic-npu", "--rows", "32", "--cols",
               "32", "--dataflow", "os", "--report", str(tmp_path / "op.html"), "--save", str(saved)) == 0
    assert run("report", str(saved), "-o", str(tmp_path / "op2.html")) == 0
    mine = big_npu.with_name("my.yaml")
    mine.write_text(big_npu.read_text().replace("name: systolic-npu", "name: my-npu"))
    assert run("op", "gemm", "--m", "512", "--n", "512", "--k", "512", "--arch", str(mine), "--report",
               str(tmp_path / "op3.html")) == 0
    assert "error" not in capsys.readouterr().err
    out = json.loads(saved.read_text())
    out["arch"], out["roof"] = "my-npu", {"compute": "int8", "peak_flops_per_s": 5e14, "memory": "dram",
                                          "bandwidth_Bps": 1e11}
    html = op_report(out)  # drawn from the stored roof: no device named my-npu is loaded
    assert "roof (int8 peak, dram bandwidth)" in html and "FLOP per byte of dram traffic" in html


def test_system_trace_is_the_system_timeline(tmp_path):
    trace, saved = tmp_path / "sys.trace.json", tmp_path / "sys.json"
    assert run("simulate", "--system", "dgx-h100", "--tp", "2", "--pp", "4", "--model", "llama-3-70b", "--phase", "decode",
               "--batch", "8", "--context", "4096", "--trace", str(trace), "--save", str(saved), "--quiet") == 0
    res = Result.from_dict(json.loads(saved.read_text())["results"][0])
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert len(spans) == len(res.timeline) and len(res.timeline) > 4
    assert threads == {str(e["device"]) for e in res.timeline} >= {"stage 0", "stage 3", "link 0->1"}
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(res.latency_s * 1e6)  # ends with the step
    assert chrome_trace(res) == json.loads(trace.read_text())
    device = load_system("dgx-h100").device
    assert res.inputs["roof"]["peak_flops_per_s"] == pytest.approx(device.peak_flops("bf16"))


BAD = [({"report": "simulate", "results": [{}]}, "ops"), ({"report": "op"}, "flops"),
       ({"report": "explore"}, "objectives"), ({"ops": [], "latency_s": 1}, "energy_j"),
       ({"report": "simulate", "results": []}, "results"),
       ({"report": "validate", "rows": [{"shape": "1x1"}], "summary": {}}, "rows.measured_s"),
       ({"report": "explore", "trials": [{"number": 0}], "pareto": [], "objectives": ["latency_s"],
         "directions": ["minimize"], "knobs": [], "study": "s", "space": "npu"}, "trials.feasible")]


@pytest.mark.parametrize(("saved", "field"), BAD)
def test_incomplete_file_is_a_one_line_error(tmp_path, capsys, saved, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(saved))
    assert run("report", str(path), "-o", str(tmp_path / "b.html")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(path) in err and f"'{field}'" in err and "re-save it" in err


def test_empty_study_reports_no_trials(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"report": "explore", "trials": [], "pareto": [], "objectives": ["latency_s", "area_mm2"],
                                "directions": ["minimize", "minimize"], "knobs": ["rows"], "study": "s", "space": "npu"}))
    assert run("report", str(path), "-o", str(tmp_path / "e.html")) == 0
    html = (tmp_path / "e.html").read_text()
    assert "No trials yet" in html and "0 finished, 0 feasible" in html
    assert 'class="figure"' not in html


@pytest.mark.parametrize("timeout", ["0", "-5", "nan"])
def test_explore_refuses_a_timeout_that_is_not_positive(tmp_path, capsys, timeout):
    assert run("explore", "--space", "npu", "--trials", "1", "--timeout", timeout, "--storage",
               f"sqlite:///{tmp_path}/s.db", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert "--timeout" in err and "\n" not in err
    assert not (tmp_path / "s.db").exists()


def test_chunked_prefill_describes_and_draws_the_whole_prompt():
    res = simulate_chunked_prefill("h100-sxm", "llama-3-8b", 1, 2048, 512)
    assert res.inputs["phase_args"] == {"batch": 1, "seq": 2048, "prefix": 0, "chunk": 512}
    events = timeline_events(res, max_repeats=10**9)
    steps = [int(e["block"].split()[1]) for e in events]
    assert steps == sorted(steps) and set(steps) == {0, 1, 2, 3}  # chunk after chunk
    firsts = [e["name"] for i, e in enumerate(events) if i == 0 or steps[i - 1] != steps[i]]
    assert firsts == ["embed"] * 4  # each chunk runs embed ... head before the next starts
    assert sum(e["dur"] for e in events) == pytest.approx(res.latency_s)
