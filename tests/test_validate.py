"""Predictions against measured A100 kernels (LLMCompass artifact data) meet the stated targets."""

import json

import pytest
from xpusim.cli import main
from xpusim.errors import SpecError
from xpusim.validation.compare import read_measurements, validate_shipped

TARGET_MAPE = {"gemm": 5.0, "softmax": 10.0, "layernorm": 10.0, "gelu": 10.0}


def test_a100_targets():
    summary, rows = validate_shipped(["a100-80gb"])
    a100 = summary["a100-80gb"]
    assert set(a100) == set(TARGET_MAPE)
    for kind, target in TARGET_MAPE.items():
        assert a100[kind]["n"] >= 20
        assert a100[kind]["mape_pct"] <= target, (kind, a100[kind])


def test_validate_cli_json(capsys):
    assert main(["validate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a100-80gb"]["gemm"]["mape_pct"] <= TARGET_MAPE["gemm"]


def test_user_csv(tmp_path, capsys):
    p = tmp_path / "mine.csv"
    p.write_text("4096, 4096, 4096, 0.60ms, 229Tflops\n8192, 8192, 8192, 4.1ms, 268Tflops\n")
    assert main(["validate", "--arch", "a100-80gb", "--kind", "gemm", "--csv", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a100-80gb"]["gemm"]["n"] == 2


@pytest.mark.parametrize("text", ["1, 2\n", "a, b, c, d\n", "64, 64, 64, -1ms\n", ""])
def test_bad_csv_is_a_clear_error(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(SpecError):
        read_measurements("gemm", p)
