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


@pytest.mark.parametrize("kind, text, message", [
    ("gelu", None, "a gelu row has 2 columns, got 5; 5 columns is a gemm file"),  # the shipped matmul.csv
    ("softmax", "4096, 32, 9.99, 1\n", "a softmax row has 3 columns, got 4"),
    ("gemm", "64.7, 128, 128, 0.1ms\n", "M must be a whole number, got '64.7'"),
    ("gemm", "64, 128, 128kb, 0.1ms\n", "K must be a whole number, got '128kb'"),
    ("layernorm", "4096, 32.5, 2.4\n", "N must be a whole number"),
    ("gemm", "64, 128, 128, 101.7Tflops\n", "column 4 is a latency (seconds, or a number with ms, us or ns), got '101.7Tflops'"),
    ("gelu", "1024, 0.02ms\n", "column 2 is a throughput in 1e9 elements/s (a plain number), got '0.02ms'"),
    ("softmax", "4096, 32, 9.99Tflops\n", "column 3 is a throughput in 1e9 elements/s"),
    ("gemm", "64, 128, 128, 0.1ms, 0.5ms\n", "column 5 is a throughput in TFLOP/s"),
    ("gemm", "4096, 4096, 4096, 0.60ms, 101.7Tflops\n", "disagrees with 2*M*N*K / latency = 229.1 TFLOP/s"),
])
def test_malformed_rows_are_refused_naming_the_column(tmp_path, kind, text, message):
    from xpusim.validation.compare import HERE

    p = HERE / "a100" / "matmul.csv"
    if text is not None:
        p = tmp_path / "bad.csv"
        p.write_text(text)
    with pytest.raises(SpecError) as e:
        read_measurements(kind, p)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_latency_units_and_the_throughput_column():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ok.csv"
        p.write_text("64, 128, 256, 0.002\n64, 128, 256, 2ms\n64, 128, 256, 2000us\n64, 128, 256, 2000000ns\n"
                     "4096, 4096, 4096, 0.60ms, 229.06\n")
        rows = read_measurements("gemm", p)
    assert [r.latency_s for r in rows[:4]] == pytest.approx([0.002] * 4)
    assert rows[4].shape == (4096, 4096, 4096) and rows[4].latency_s == pytest.approx(6e-4)


def test_the_cli_table_columns_never_run_together(tmp_path, capsys):
    p = tmp_path / "g.csv"
    p.write_text("64, 128, 128, 1e9\n")  # an absurd latency: a 100 % error
    assert main(["validate", "--arch", "systolic-npu", "--kind", "gemm", "--csv", str(p), "--quiet"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["device", "kind"] and row.split() == ["systolic-npu", "gemm", "1", "100.00", "100.00"]
    assert len(header) == len(row)  # right-aligned numbers end under their headings
    assert main(["validate", "--arch", "a100-80gb", "--kind", "gelu", "--csv", str(p), "--quiet"]) == 2
