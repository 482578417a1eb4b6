"""xpusim's systolic compute cycles equal SCALE-Sim v3's, case by case.

The reference table ``validation/scalesim/compute_cycles.csv`` is SCALE-Sim's own output, written by
``bench/run_scalesim.py``; nothing in it is derived from xpusim.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from xpusim.arch import load_arch
from xpusim.cli import _override_array
from xpusim.sim.engine import op_cost
from xpusim.validation.compare import measured_op, scalesim_device

TABLE = Path(__file__).resolve().parent.parent / "validation" / "scalesim" / "compute_cycles.csv"
ROWS = list(csv.DictReader(TABLE.open()))
REQUIRED = {(64, 64, 64), (256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (1, 4096, 4096), (128, 4096, 4096)}


def test_table_covers_the_reference_gemms() -> None:
    """Every required GEMM is in the table on both arrays with all three dataflows."""
    have = {(int(r["M"]), int(r["N"]), int(r["K"]), int(r["rows"]), int(r["cols"]), r["dataflow"]) for r in ROWS}
    for g in REQUIRED:
        for arr in ((32, 32), (128, 128)):
            for df in ("ws", "os", "is"):
                assert (*g, *arr, df) in have, f"SCALE-Sim table lacks {g} on {arr} {df}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['M']}x{r['N']}x{r['K']}-{r['rows']}x{r['cols']}-{r['dataflow']}")
def test_compute_cycles_equal_scalesim(row: dict) -> None:
    m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
    arch = scalesim_device(int(row["rows"]), int(row["cols"]), row["dataflow"])
    cost = op_cost(measured_op("gemm", (m, n, k)), arch, isolated=True)
    assert int(cost.compute_cycles) == int(row["compute_cycles"])


def test_a_buffer_too_small_for_the_stream_reenters_the_folds() -> None:
    """On the preset's 4 MiB gbuf the best os mapping of 128 x 4096 x 4096 cuts k into chunks and
    re-enters every fold per chunk: its compute exceeds SCALE-Sim's one pass per fold, by each
    re-entry's fill and drain."""
    row = next(r for r in ROWS if (r["M"], r["N"], r["K"], r["rows"], r["dataflow"]) == ("128", "4096", "4096", "128", "os"))
    arch = _override_array(load_arch("systolic-npu"), 128, 128, "os")
    cost = op_cost(measured_op("gemm", (128, 4096, 4096)), arch, isolated=True)
    assert cost.compute_cycles > int(row["compute_cycles"])
