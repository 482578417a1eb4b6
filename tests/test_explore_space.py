"""Space files are checked when they load: knob paths name fields the evaluator sets, ranges and
constraints are well formed, and every objective and constraint is a metric the base device can
score. The study's seed and export directory are checked before it runs, and an unexpected error
inside one trial prunes that trial only."""

import re
import subprocess
import sys

import optuna
import pytest
import yaml
from xpusim.errors import XpusimError
from xpusim.explore import study as study_mod
from xpusim.explore.space import load_space, parse_space
from xpusim.explore.study import run_study, trials_frame

SMALL = {
    "name": "small",
    "base": "systolic-npu",
    "knobs": {"rows": {"path": "device.matrix.array.0", "choices": [32, 64, 128]}},
    "workloads": [{"model": "llama-3-8b", "phase": "decode", "batch": 4, "context": 512}],
    "objectives": ["latency"],
}
SERVING = {
    "system": "dgx-h100", "plan": {"tp": 8},
    "knobs": {"tp": {"path": "plan.tp", "choices": [4, 8]}},
    "workloads": [{"model": "llama-3-70b", "phase": "decode", "batch": 8, "context": 1024}],
    "objectives": ["latency"],
}
SEEDS = 2**32  # the samplers take seeds 0 .. 2**32 - 1
RANGE = {"path": "device.matrix.array.0", "type": "int", "low": 32, "high": 256}


def _knob(**k):
    return {**SMALL, "knobs": {"k": k}}


def _refused(d, message):
    with pytest.raises(XpusimError, match=message) as e:
        parse_space(d, "s.yaml")
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("bad, message", [
    ({**SERVING, "knobs": {"tp": {"path": "plan.tpp", "choices": [4, 8]}}}, r"plan\.tpp is not one of plan\.tp, plan\.pp"),
    (_knob(path="workload.bacth", choices=[1, 64]), r"workload\.bacth is not one of workload\.batch"),
    (_knob(path="workload.weight", choices=[1, 2]), r"workload\.weight is not one of"),
    (_knob(path="mapper.objectiv", choices=["latency"]), r"mapper\.objectiv is not one of mapper\.objective"),
    (_knob(path="mapper.objective", choices=["latency", "speed"]), "mapper.objective choices are latency, energy, edp"),
    (_knob(path="mapper.objective", low=1, high=2), "mapper.objective takes choices"),
    (_knob(path="model.weight_dtyp", choices=["fp8"]), r"not model\.<ModelSpec field> \(did you mean model\.weight_dtype\?\)"),
    (_knob(path="model.weight_dtype.x", choices=["fp8"]), "is not model.<ModelSpec field>"),
    (_knob(**RANGE, step=0.5), "an int knob's step must be a whole number >= 1, got 0.5"),
    (_knob(**{**RANGE, "low": 32.7}), "an int knob's low and high must be whole numbers"),
    (_knob(**{**RANGE, "high": 256.5, "type": "int"}), "an int knob's low and high must be whole numbers"),
    (_knob(path="device.clock", low=0.6, high=1.6, unit="GHz", log="no"), "log must be true or false, got 'no'"),
    (_knob(path="device.clock", choices=[1.0], low=0.6, high=1.6), r"not both \(drop high, low\)"),
    ({**SMALL, "constraints": {"latency": {"maximum": 1}}}, "constraint latency: give a max"),
    ({**SMALL, "constraints": {"latency": {}}}, "constraint latency: give a max"),
    ({**SMALL, "constraints": {"latency": {"max": None}}}, "expected a number, got None"),
    ({**SMALL, "constraints": {"fits_memory": "yes"}}, "fits_memory must be true or false, got 'yes'"),
    ({**SMALL, "constraints": {"latency": {"max": 5, "min": 10}}}, r"min \(10\) is above max \(5\)"),
    ({**SMALL, "mapper": "energy"}, "mapper must be a mapping"),
    ({**SMALL, "mapper": {"objectiv": "energy"}}, "mapper must be a mapping"),
])
def test_space_mistakes_are_refused_at_load(bad, message):
    _refused(bad, message)


def test_well_formed_knobs_and_constraints_load():
    space = parse_space({**SMALL, "knobs": {"k": {**RANGE, "low": 32.0, "step": 32.0},
                                            "b": {"path": "workload.batch", "choices": [1, 8]},
                                            "m": {"path": "mapper.objective", "choices": ["latency", "edp"]},
                                            "w": {"path": "model.kv_dtype", "choices": ["fp8"]}},
                         "constraints": {"latency": {"min": 0.001, "max": 1}, "fits_memory": False, "throughput": 5}})
    assert space.knobs[0].grid() == [32, 64, 96, 128, 160, 192, 224, 256]
    assert [(c.metric, c.min, c.max) for c in space.constraints] == [("latency", 0.001, 1.0), ("throughput", None, 5.0)]
    assert parse_space({**SERVING, "knobs": {"sp": {"path": "plan.sp", "choices": [1, 2]}}}).knobs[0].path == ("plan", "sp")


@pytest.mark.parametrize("base, metric, message", [
    ("hbm2-pim", "power_w", "power_w needs a static power, which hbm2-pim (a PIM device) does not state and the area "
                            "model's leakage does not cover; use energy_per_token"),
    ("hbm2-pim", "perf_per_watt", "perf_per_watt needs a static power"),
    ("hbm2-pim", "area_mm2", "area_mm2 needs the area and cost model, which does not cover hbm2-pim (a PIM device); "
                             "use latency, throughput or energy_per_token"),
    ("wse-3", "cost_usd", "cost_usd needs the area and cost model, which does not cover wse-3 (a wafer-scale device)"),
    ("alveo-u280", "perf_per_dollar", "does not cover alveo-u280 (an FPGA); use dsp_fraction or lut_fraction"),
    ("alveo-u55c", "power_w", "alveo-u55c (an FPGA) does not state and the area model's leakage does not cover; "
                              "use energy_per_token"),
    ("systolic-npu", "dsp_fraction", "dsp_fraction is an FPGA template's share of its part, and systolic-npu (class "
                                     "systolic) is not an FPGA; use area_mm2 or cost_usd"),
    ("hbm2-pim", "lut_fraction", "hbm2-pim (class pim) is not an FPGA; use latency, throughput or energy_per_token"),
    ("versal-vhk158", "lut_fraction", "lut_fraction: the part's LUT count is unpublished"),
])
@pytest.mark.parametrize("as_constraint", [False, True])
def test_metrics_the_device_cannot_score_are_refused_at_load(base, metric, message, as_constraint):
    knobs = {"clock": {"path": "device.clock", "choices": ["200 MHz"]}}
    d = {**SMALL, "base": base, "knobs": knobs}
    d.update({"constraints": {metric: 1e9 if metric != "perf_per_watt" else {"min": 0}}} if as_constraint
             else {"objectives": ["latency", metric]})
    _refused(d, re.escape(message))


def test_metrics_the_device_can_score_load():
    parse_space({**SMALL, "objectives": ["latency", "area_mm2", "power_w", "perf_per_dollar"]})  # an NPU: area model
    fpga = {**SMALL, "base": "alveo-u280", "knobs": {"vpus": {"path": "device.fpga.template.vpus", "choices": [64, 128]}}}
    parse_space({**fpga, "objectives": ["latency", "power_w", "dsp_fraction", "lut_fraction"]})  # a fitted board power
    parse_space({**SMALL, "base": "hbm2-pim", "objectives": ["latency", "power_w"],  # a knob gives the static power
                 "knobs": {"static": {"path": "device.static_power", "choices": ["5 W", "10 W"]}}})
    with pytest.raises(XpusimError, match="perf_per_area needs the area and cost model"):
        parse_space({**SERVING, "system": "sn40l-node", "objectives": ["perf_per_area"]})  # a system's device is checked


def test_the_pim_example_is_refused_with_a_power_budget(tmp_path):
    """One line and exit 2 at load, not a study of pruned trials."""
    d = yaml.safe_load(open(load_space("pim").source))
    path = tmp_path / "pimpow.yaml"
    path.write_text(yaml.safe_dump({**d, "constraints": {"power_w": 60}}))
    db = tmp_path / "p.db"
    out = subprocess.run([sys.executable, "-m", "xpusim", "explore", "--space", str(path), "--trials", "2",
                          "--storage", f"sqlite:///{db}", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "power_w needs a static power" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not db.exists()


def test_an_unexpected_error_prunes_its_trial_only(tmp_path, monkeypatch):
    real = study_mod.evaluate

    def flaky(space, params):
        if params["rows"] == 64:
            raise ZeroDivisionError("division by zero")
        return real(space, params)

    monkeypatch.setattr(study_mod, "evaluate", flaky)
    space = parse_space(SMALL)
    study = run_study(space, 3, "flaky", f"sqlite:///{tmp_path}/f.db", "grid", seed=0, progress=False)
    df = trials_frame(study, space).set_index("rows")
    assert df.loc[64, "state"] == "pruned"
    assert df.loc[64, "reason"] == ("internal error in the simulator, not a property of the design: "
                                    "ZeroDivisionError: division by zero")
    assert (df.drop(index=64)["state"] == "complete").all()


@pytest.mark.parametrize("seed", [-1, SEEDS, 99999999999])
def test_a_seed_outside_the_samplers_range_is_refused_before_the_study(tmp_path, seed):
    db = tmp_path / "s.db"
    with pytest.raises(XpusimError, match=f"--seed {seed}: give a whole number from 0 to 4294967295"):
        run_study(parse_space(SMALL), 1, "s", f"sqlite:///{db}", "random", seed=seed, progress=False)
    assert not db.exists()


def test_the_largest_seed_runs_and_continues(tmp_path):
    """A continued study reseeds with seed + finished trials, and workers with seed + i: both wrap."""
    space = parse_space(SMALL)
    url = f"sqlite:///{tmp_path}/m.db"
    run_study(space, 2, "m", url, "random", seed=SEEDS - 1, progress=False)
    study = run_study(space, 4, "m", url, "random", seed=SEEDS - 1, workers=2, progress=False)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed -1: give a whole number from 0 to 4294967295"),
    (["--export", "{file}"], "is a file; give a directory"),
    (["--export", "{file}/results"], "is a file; give a directory"),
])
def test_explore_refuses_bad_arguments_in_one_line_before_running(tmp_path, args, message):
    file = tmp_path / "o.txt"
    file.write_text("keep")
    db = tmp_path / "c.db"
    out = subprocess.run([sys.executable, "-m", "xpusim", "explore", "--space", "npu", "--trials", "1", "--no-progress",
                          "--storage", f"sqlite:///{db}", *[a.format(file=file) for a in args]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not db.exists() and file.read_text() == "keep"  # refused before the study ran



@pytest.mark.parametrize("knob, message", [
    ({"path": "device.fpga.template.hbm_layout", "choices": ["per_core", "diag"]}, "choice 'diag' is not valid"),
    ({"path": "device.fpga.part.ddr.bandwidth", "low": 0, "high": 40, "unit": "GB/s"}, "must be positive"),
    ({"path": "device.memory.1.capacity", "choices": ["0 KiB", "1 MiB"]}, "must be positive"),
])
def test_a_knob_value_no_device_accepts_is_refused_before_any_trial(knob, message):
    """These were recorded trial by trial as infeasible and the study exited 0."""
    space = {"name": "bad", "base": "alveo-u280", "knobs": {"k": knob},
             "workloads": [{"model": "llama-2-7b", "phase": "decode", "batch": 1, "context": 640}], "objectives": ["latency"]}
    with pytest.raises(XpusimError, match=message):
        parse_space(space)


def test_a_choice_that_only_clashes_with_the_base_is_left_to_the_trials():
    """ddr4 on the U280 clashes with its HBM channels (which another knob could drop), so the trials
    record it; the check once refused it because the clash message echoes the choice."""
    space = {"name": "ok", "base": "alveo-u280", "knobs": {"kind": {"path": "device.memory.0.kind", "choices": ["hbm2", "ddr4"]}},
             "workloads": [{"model": "llama-2-7b", "phase": "decode", "batch": 1, "context": 640}], "objectives": ["latency"]}
    assert parse_space(space).knobs[0].choices == ("hbm2", "ddr4")


def test_a_nonpositive_quantity_in_any_unit_is_refused():
    space = {"name": "bad", "base": "alveo-u280", "workloads": [{"model": "llama-2-7b", "phase": "decode", "batch": 1,
             "context": 640}], "objectives": ["latency"],
             "knobs": {"bw": {"path": "device.memory.0.bandwidth", "choices": ["0 GiB/s", "460 GiB/s"]}}}
    with pytest.raises(XpusimError, match="'0 GiB/s' must be positive"):
        parse_space(space)
