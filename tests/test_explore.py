"""Design-space exploration: spaces parse and reject bad input in one line, a study finds the grid
optimum, workers share a study without losing or duplicating trials, a killed study resumes, and
the same works against a PostgreSQL server."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from xpusim.errors import XpusimError
from xpusim.explore.evaluate import evaluate
from xpusim.explore.space import load_space, parse_space
from xpusim.explore.study import FINISHED, run_study, trials_frame

SMALL = {
    "name": "small",
    "base": "systolic-npu",
    "knobs": {
        "rows": {"path": "device.matrix.array.0", "choices": [32, 64, 128]},
        "gbuf": {"path": "device.memory.gbuf.capacity", "choices": [1, 4, 16], "unit": "MiB"},
    },
    "workloads": [{"model": "llama-3-8b", "phase": "decode", "batch": 4, "context": 512}],
    "objectives": ["latency"],
}


def _study_counts(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    return study, trials


def test_grid_optimum_is_found(tmp_path):
    space = parse_space(SMALL)
    url = f"sqlite:///{tmp_path}/s.db"
    grid = run_study(space, 9, "grid", url, "grid", seed=0, progress=False)
    tpe = run_study(space, 9, "tpe", url, "tpe", seed=1, progress=False)
    best_grid = min(t.value for t in grid.trials)
    assert len({tuple(sorted(t.params.items())) for t in grid.trials}) == 9  # the grid covers every design
    assert min(t.value for t in tpe.trials) == pytest.approx(best_grid)
    brute = min(evaluate(space, {"rows": r, "gbuf": g}).metrics["latency"] for r in (32, 64, 128) for g in (1, 4, 16))
    assert best_grid == pytest.approx(brute)


def test_same_seed_same_study(tmp_path):
    space = parse_space(SMALL)
    a = run_study(space, 6, "a", f"sqlite:///{tmp_path}/a.db", "random", seed=5, progress=False)
    b = run_study(space, 6, "b", f"sqlite:///{tmp_path}/b.db", "random", seed=5, progress=False)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.value for t in a.trials] == [t.value for t in b.trials]


def test_a_continued_study_draws_new_designs_and_keeps_its_objectives(tmp_path):
    """Continuing a study with the same seed once replayed its first designs (10 + 10 trials, 10
    distinct); a space with other objectives is refused."""
    space = parse_space(SMALL)
    url = f"sqlite:///{tmp_path}/c.db"
    run_study(space, 6, "c", url, "random", seed=5, progress=False)
    study = run_study(space, 12, "c", url, "random", seed=5, progress=False)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 12 and params[6:] != params[:6]  # not the first six replayed
    other = parse_space({**SMALL, "objectives": ["energy_per_token"]})  # the same direction, another metric
    assert other.directions == space.directions
    with pytest.raises(XpusimError, match="exists with objectives"):
        run_study(other, 14, "c", url, "random", seed=5, progress=False)


def test_workers_share_a_study_without_losing_trials(tmp_path):
    space = parse_space(SMALL)
    url = f"sqlite:///{tmp_path}/w.db"
    run_study(space, 14, "w", url, "random", seed=0, workers=2, progress=False)
    study, trials = _study_counts(url, "w")
    assert len(trials) == 14 and all(t.state in FINISHED for t in trials)
    assert sorted(t.number for t in trials) == list(range(14))
    assert len({t._trial_id for t in trials}) == 14
    assert {t.user_attrs["worker"] for t in trials}.__len__() == 2  # both processes worked
    run_study(space, 20, "w", url, "random", seed=0, workers=2, progress=False)  # resume: 6 more
    assert len(optuna.load_study(study_name="w", storage=url).trials) == 20


def test_killed_study_resumes_consistently(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({**SMALL, "knobs": {**SMALL["knobs"],
                                          "clock": {"path": "device.clock", "low": 0.5, "high": 1.5, "unit": "GHz"}}}))
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "xpusim", "explore", "--space", str(space_file), "--trials", "60", "--study", "k",
           "--storage", url, "--sampler", "random", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and done < 5:
        time.sleep(0.3)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    done = con.execute("select count(*) from trials where state in ('COMPLETE','PRUNED')").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 5 <= done < 60
    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    _, trials = _study_counts(url, "k")
    finished = [t for t in trials if t.state in FINISHED]
    assert summary["finished_trials"] == len(finished) == 60
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # failed stale trials kept, numbered


def test_infeasible_designs_are_recorded_with_reasons(tmp_path):
    d = {**SMALL, "knobs": {"gbuf": {"path": "device.memory.gbuf.capacity", "choices": [0.0001, 4], "unit": "MiB"}},
         "constraints": {"fits_memory": True}}
    space = parse_space(d)
    study = run_study(space, 4, "inf", f"sqlite:///{tmp_path}/i.db", "grid", seed=0, progress=False)
    df = trials_frame(study, space)
    bad = df[df["gbuf"] == 0.0001]  # 104 B: no tile fits
    assert not bad.empty and (bad["state"] == "pruned").all() and bad["reason"].str.contains("gbuf").all()
    ok = df[df["gbuf"] == 4]
    # Llama-3-8B (16 GB) does not fit the 4 GiB NPU: measured, then marked infeasible by the constraint
    assert (ok["state"] == "complete").all() and not ok["feasible"].any() and ok["reason"].str.contains("fits_memory").all()


@pytest.mark.parametrize("bad, message", [
    ({**SMALL, "objectives": ["speed"]}, "unknown objective 'speed'"),
    ({**SMALL, "knobs": {"x": {"path": "chip.clock", "low": 1, "high": 2}}}, "path must start with one of"),
    ({**SMALL, "knobs": {"x": {"path": "device.clock", "low": 2, "high": 1}}}, "must be below high"),
    ({**SMALL, "workloads": []}, "workloads must be a non-empty list"),
    ({**SMALL, "workloads": [{"model": "llama-9b", "phase": "decode", "batch": 1, "context": 64}]}, "unknown model"),
    ({**SMALL, "workloads": [{"model": "llama-3-8b", "phase": "decod", "batch": 1, "context": 64}]}, "use prefill or decode"),
    ({**SMALL, "base": "no-such-device"}, "unknown device"),
    ({**SMALL, "constraints": {"speed": 3}}, "unknown constraint"),
    ({**SMALL, "knobs": {"gbuf": {"path": "device.memory.gbuf.capacity", "choices": [-1, 4], "unit": "MiB"}}},
     "'-1 MiB' must be positive"),
    ({**SMALL, "objectives": []}, "non-empty list of distinct metrics"),
    ({**SMALL, "knobs": {"arr": {"path": "device.matrix.array", "choices": [[128, 128], [64, 256]]}}},
     "choices must be numbers, strings or booleans"),
])
def test_bad_spaces_are_one_line_errors(bad, message):
    with pytest.raises(XpusimError, match=message) as e:
        parse_space(bad)
    assert "\n" not in str(e.value)


def test_example_spaces_parse():
    for name in ("npu", "gpu-chip", "llm-serving", "pim", "wafer", "rdu", "fpga"):
        space = load_space(name)
        assert space.knobs and space.workloads and space.objectives


PG_URL = os.environ.get("XPUSIM_TEST_PG_URL", "")


def _pg_ready() -> str:
    if not PG_URL:
        return "no PostgreSQL server: set XPUSIM_TEST_PG_URL (.ci/run starts one from Debian's packages)"
    try:
        import sqlalchemy

        sqlalchemy.create_engine(PG_URL).connect().close()
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL at XPUSIM_TEST_PG_URL is not reachable: {str(e).splitlines()[0]}"
    return ""


@pytest.mark.skipif(bool(_pg_ready()), reason=_pg_ready() or "ready")
def test_postgresql_multi_worker_study():
    space = parse_space(SMALL)
    name = f"pg-{os.getpid()}-{int(time.time())}"
    run_study(space, 12, name, PG_URL, "random", seed=0, workers=2, progress=False)
    _, trials = _study_counts(PG_URL, name)
    assert len(trials) == 12 and all(t.state in FINISHED for t in trials)
    assert sorted(t.number for t in trials) == list(range(12))
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_system_space_counts_every_device():
    from xpusim.arch import area, load_arch

    space = load_space("llm-serving")
    base = {"pp": 1, "batch": 64, "weights": "fp8-e4m3", "kv": "fp8-e4m3"}
    eight = evaluate(space, {**base, "tp": 8})
    four = evaluate(space, {**base, "tp": 4})
    assert eight.metrics["cost_usd"] == pytest.approx(8 * area.device_cost_usd(load_arch("h100-sxm")))
    assert eight.metrics["cost_usd"] == pytest.approx(2 * four.metrics["cost_usd"])
    assert eight.metrics["latency"] < four.metrics["latency"]
    one = evaluate(space, {**base, "tp": 1, "weights": "bf16", "kv": "bf16"})
    assert one.violations["fits_memory"] > 0  # 140 GB of weights on one 80 GB GPU
    too_many = evaluate(space, {**base, "tp": 8, "pp": 2})
    assert "needs 16 devices" in too_many.reason


def test_pim_space_units_follow_the_pus():
    from xpusim.explore.evaluate import build_device

    space = load_space("pim")
    fmt = {"weights": "fp16", "activations": "fp16", "kv": "fp16"}
    dev = build_device(space, {**fmt, "pus_per_channel": 4, "pu_lanes": 16, "pu_clock_mhz": 300})
    assert dev.matrix.instances == 16 * 4 and dev.vector.instances == 16 * 4
    fast = evaluate(space, {**fmt, "pus_per_channel": 16, "pu_lanes": 32, "pu_clock_mhz": 600})
    slow = evaluate(space, {**fmt, "pus_per_channel": 2, "pu_lanes": 8, "pu_clock_mhz": 200})
    assert fast.metrics["latency"] < slow.metrics["latency"]


def test_wafer_space_units_follow_the_mesh():
    from xpusim.explore.evaluate import build_device

    space = load_space("wafer")
    dev = build_device(space, {"side": 448, "sram": "24 KiB", "link_bpc": 4, "clock_ghz": 1.0})
    assert dev.matrix.instances == 448 * 448 == dev.memory[0].instances
    assert dev.memory[0].capacity_bytes == 24 * 1024
    small = evaluate(space, {"side": 448, "sram": "24 KiB", "link_bpc": 4, "clock_ghz": 1.0})
    assert small.violations["fits_memory"] > 0  # 200k cores x 24 KiB cannot hold 16 GB of weights


def test_rdu_space_units_follow_the_pcu_pmu_pairs():
    from xpusim.explore.evaluate import build_device

    space = load_space("rdu")
    params = {"units": 640, "pmu_sram": "1 MiB", "hbm_tbs": 3.0, "ddr_gbs": 200, "sockets": 8}
    dev = build_device(space, params)
    spec = dev.rules["rdu"]
    assert spec.pcus == spec.pmus == dev.matrix.instances == dev.vector.instances == dev.memory[1].instances == 640
    assert dev.memory[1].capacity_bytes == 2**20 and dev.backing.bandwidth_Bps == 3.0e12 and spec.ddr_Bps == 200e9
    fast = evaluate(space, params)
    slow = evaluate(space, {**params, "hbm_tbs": 1.0, "sockets": 2})
    assert fast.feasible and fast.metrics["latency"] < slow.metrics["latency"]


def test_fpga_space_records_templates_that_do_not_fit_with_the_resource():
    space = load_space("fpga")
    base = {"chain": 16, "cores": 3, "wbuf": "6 MiB", "clock_mhz": 225.0, "wdt": "int4-g128", "adt": "int8", "kvdt": "int8"}
    ok = evaluate(space, {**base, "vpus": 128})
    assert ok.feasible and ok.metrics["dsp_fraction"] == pytest.approx(6144 / 9024)
    big = evaluate(space, {**base, "vpus": 224})  # 3 x 224 x 16 = 10,752 DSPs > 0.8 x 9,024
    assert not big.feasible and "DSP" in big.reason
    faster = evaluate(space, {**base, "vpus": 128, "clock_mhz": 300.0})
    assert faster.metrics["latency"] < ok.metrics["latency"]
    # sparse INT8 weights: faster than dense INT8 (fewer bytes and chain steps), at a format-error cost
    dense, sparse = (evaluate(space, {**base, "vpus": 128, "wdt": w}) for w in ("int8", "int8-8:16"))
    assert sparse.metrics["latency"] < dense.metrics["latency"]
    assert sparse.metrics["format_error"] > dense.metrics["format_error"]


def test_an_fpga_with_a_board_power_model_scores_power_without_the_area_model():
    # power_w once went through the die-area model, which refuses FPGAs: every U280 trial was pruned
    from xpusim.explore.evaluate import evaluate

    knobs = {"vpus": {"path": "device.fpga.template.vpus", "choices": [64, 128]},
             **{k: {"path": f"model.{k}", "choices": ["int8"]} for k in ("weight_dtype", "act_dtype", "kv_dtype")}}
    space = parse_space({"name": "p", "base": "alveo-u280", "knobs": knobs, "objectives": ["latency", "power_w"],
                         "workloads": [{"model": "llama-2-7b", "phase": "decode", "batch": 1, "context": 640}]})
    ev = evaluate(space, {"vpus": 128, "weight_dtype": "int8", "act_dtype": "int8", "kv_dtype": "int8"})
    assert not ev.reason and 40 < ev.metrics["power_w"] < 47  # the board's fitted 26.9 W idle + logic + HBM traffic


def test_energy_per_token_and_perf_per_watt_count_the_same_static_power():
    """Both carry the area model's leakage over the step time, so one is the inverse of the other and
    a device with a stated static power (an FPGA board) is ranked on the same basis."""
    from xpusim.explore.evaluate import evaluate
    from xpusim.explore.space import load_space

    sp = load_space("npu")
    sp.objectives, sp.constraints = ["energy_per_token", "perf_per_watt", "power_w"], []
    params = {"rows": 128, "cols": 128, "dataflow": "ws", "gbuf_mib": 8, "gbuf_gbs": 2000, "dram_gib": 16,
              "dram_gbs": 800, "clock_ghz": 1.0}
    ev = evaluate(sp, params)
    m = ev.metrics
    assert m["perf_per_watt"] == pytest.approx(1.0 / m["energy_per_token"], rel=1e-9)
    # the energy is the simulated (dynamic) energy plus the die's leakage over the step time
    from xpusim import simulate
    from xpusim.arch import area
    from xpusim.explore.evaluate import _model, _phase, build_device

    dev = build_device(sp, params)
    leak = area.leakage_power_w(dev)
    assert leak > 0
    energy = latency = tokens = 0.0
    for w in sp.workloads:
        r = simulate(dev, _model(sp, w, params), _phase(sp, w, params), check_memory=False)
        k = float(w.get("weight", 1.0))
        energy, latency, tokens = energy + k * r.energy_j, latency + k * r.latency_s, tokens + k * r.tokens
    assert m["energy_per_token"] == pytest.approx((energy + leak * latency) / tokens, rel=1e-6)


def test_a_study_whose_every_trial_was_pruned_still_reports(tmp_path):
    """Every trial pruned before scoring (a template over its part): --report crashed with a KeyError
    and the saved study was refused by `xpusim report`."""
    from xpusim.cli import main

    out = tmp_path / "s.json"
    assert main(["explore", "--space", "fpga", "--trials", "3", "--seed", "1", "--workers", "1",
                 "--report", str(tmp_path / "s.html"), "--save", str(out)]) == 0
    assert main(["report", str(out), "-o", str(tmp_path / "again.html")]) == 0


def test_a_knob_path_the_base_device_lacks_is_refused_when_the_space_loads():
    """device.clok loaded and pruned every trial, exiting 0 with 'relax the constraints'."""
    d = {**SMALL, "knobs": {"clk": {"path": "device.clok", "low": 0.5, "high": 1.5, "unit": "GHz"}}}
    with pytest.raises(XpusimError, match="unknown field"):
        parse_space(d)
