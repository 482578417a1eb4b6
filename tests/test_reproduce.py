"""Paper reproductions: every shipped case runs and passes; the CLI lists and reports them."""

import json

import pytest
from xpusim.cli import main
from xpusim.errors import XpusimError
from xpusim.validation.reproduce import list_cases, load_case, run_case


@pytest.mark.parametrize("name", list_cases())
def test_case_passes_or_its_known_gap_still_stands(name):
    r = run_case(name)
    assert {"name", "paper", "claim", "claimed", "simulated", "tolerance_pct", "passed", "known_gap"} <= set(r)
    assert r["simulated"] == r["simulated"] and r["simulated"] > 0  # finite, positive
    if r["known_gap"]:
        assert not r["passed"], f"{name} now reproduces its claim: remove known_gap from its YAML"
        assert r["simulated"] == pytest.approx(r["gap_value"], rel=0.02), f"{name}: update gap_value and the docs"
    else:
        assert r["passed"], r


def test_cli_all_json(capsys):
    assert main(["reproduce", "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out] == list_cases() and all(r["passed"] or r["known_gap"] for r in out)
    assert main(["reproduce", "--list"]) == 0
    assert "duplex" in capsys.readouterr().out


def test_unknown_case_is_a_clear_error():
    with pytest.raises(XpusimError, match="unknown reproduction"):
        load_case("no-such-case")


def test_malformed_case_yaml_is_a_one_line_error(tmp_path, monkeypatch):
    import xpusim.validation.reproduce as rep

    (tmp_path / "broken.yaml").write_text("name: broken\nparams: {a: b: c}\n")
    monkeypatch.setattr(rep, "CASES_DIR", tmp_path)
    with pytest.raises(XpusimError, match="malformed YAML") as e:
        rep.load_case("broken")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("body, msg", [
    ("name: b\npaper: p\nclaim: c\nkind: latency_ratio\nclaimed: 2\nparams: {baseline: {arch: a100-80gb}}\n", "malformed params"),
    ("name: b\npaper: p\nclaim: c\nkind: latency_ratio\nclaimed_range: [1, 2, 3]\nparams: {}\n", "claimed_range"),
    ("name: b\npaper: p\nclaim: c\nkind: latency_ratio\nclaimed: lots\nparams: {}\n", "claimed must be a number"),
    ("name: b\npaper: p\nclaim: c\nkind: decode_efficiency_ratio\nclaimed: 2\nparams: {metric: speed}\n", "metric 'speed'"),
    ("name: b\npaper: p\nclaim: c\nkind: latency_ratio\nclaimed: 2\nknown_gap: why\nparams: {}\n", "gap_value"),
    ("name: b\npaper: p\nclaim: c\nkind: latency_ratio\nclaimed: 2\nknown_gap: why\ngap_value: .nan\nparams: {}\n",
     "gap_value"),
    ("name: b\npaper: p\nclaim: c\nkind: decode_tokens_per_s\nclaimed: 2\nparams: {model: llama-2-7b, cases: [], step: {}}\n",
     "at least one"),
])
def test_bad_cases_are_one_line_errors(tmp_path, monkeypatch, body, msg):
    import xpusim.validation.reproduce as rep

    (tmp_path / "b.yaml").write_text(body)
    monkeypatch.setattr(rep, "CASES_DIR", tmp_path)
    with pytest.raises(XpusimError, match=msg) as e:
        rep.run_case("b")
    assert "\n" not in str(e.value)


def test_an_ideal_interconnect_makes_collectives_free():
    from xpusim.validation.reproduce import _model, _side_result
    from xpusim.workloads.phases import Decode

    m, phase = _model({"model": "gpt3-6.7b"}), Decode(64, 228)
    real = _side_result({"system": "dgx-a100", "tp": 4}, m, phase)
    ideal = _side_result({"system": "dgx-a100", "tp": 4, "interconnect": "ideal"}, m, phase)
    coll = real.ops["kind"] == "collective"
    assert coll.any() and (real.ops.loc[coll, "total_latency_s"] > 0).all()
    assert (ideal.ops.loc[ideal.ops["kind"] == "collective", "total_latency_s"] == 0).all()
    rest = ~coll
    assert ideal.ops.loc[rest, "total_latency_s"].sum() == pytest.approx(real.ops.loc[rest, "total_latency_s"].sum())
    with pytest.raises(XpusimError, match="only 'ideal'"):
        _side_result({"system": "dgx-a100", "tp": 4, "interconnect": "fast"}, m, phase)
