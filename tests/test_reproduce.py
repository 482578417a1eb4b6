"""Paper reproductions: every shipped case runs and passes; the CLI lists and reports them."""

import json

import pytest
from xpusim.cli import main
from xpusim.errors import XpusimError
from xpusim.validation.reproduce import list_cases, load_case, run_case


@pytest.mark.parametrize("name", list_cases())
def test_case_passes(name):
    r = run_case(name)
    assert r["passed"], r
    assert {"name", "paper", "claim", "claimed", "simulated", "tolerance_pct", "passed"} <= set(r)


def test_cli_all_json(capsys):
    assert main(["reproduce", "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out] == list_cases() and all(r["passed"] for r in out)
    assert main(["reproduce", "--list"]) == 0
    assert "duplex" in capsys.readouterr().out


def test_unknown_case_is_a_clear_error():
    with pytest.raises(XpusimError, match="unknown reproduction"):
        load_case("no-such-case")
