"""Systolic GEMMs: xpusim against SCALE-Sim, side by side.

    python bench/bench_systolic.py [--scalesim-python /path/to/venv/bin/python] [--live-max-macs 2e7]

For every GEMM x array x dataflow of ``validation/scalesim/compute_cycles.csv`` it times xpusim
(median of 5, op memo cleared: mapper search included) and prints xpusim's compute cycles next to
SCALE-Sim's. With ``--scalesim-python`` (an environment with ``scalesim==3.0.0`` and ``numpy<2``),
SCALE-Sim is run live in that interpreter for the cases up to ``--live-max-macs`` MACs; larger
cases show SCALE-Sim's wall time recorded in the table by ``bench/run_scalesim.py`` (marked *).
Target (issue 4): identical compute cycles and >= 1000x less wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from xpusim.arch import load_arch
from xpusim.cli import _override_array
from xpusim.sim.engine import clear_cache, op_cost
from xpusim.validation.compare import measured_op

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "validation" / "scalesim" / "compute_cycles.csv"

LIVE = """
import json, sys
sys.path.insert(0, {bench!r})
from run_scalesim import run_one
print(json.dumps(run_one({m}, {n}, {k}, {r}, {c}, {df!r})))
"""


def xpusim_time(m: int, n: int, k: int, r: int, c: int, df: str) -> tuple[float, float]:
    arch = _override_array(load_arch("systolic-npu"), r, c, df)
    op = measured_op("gemm", (m, n, k))
    times = []
    for _ in range(5):
        clear_cache()
        t = time.perf_counter()
        cost = op_cost(op, arch, isolated=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times), cost.compute_cycles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scalesim-python", help="interpreter with scalesim 3.0.0 for live runs")
    ap.add_argument("--live-max-macs", type=float, default=2e7)
    args = ap.parse_args()
    rows = list(csv.DictReader(TABLE.open()))
    print(f"{'GEMM (M,N,K)':<20}{'array':>9}{'df':>4}{'SCALE-Sim cyc':>15}{'xpusim cyc':>12}"
          f"{'equal':>7}{'SCALE-Sim s':>13}{'xpusim s':>10}{'speed-up':>11}")
    ratios, equal = [], 0
    for row in rows:
        m, n, k, r, c, df = (int(row["M"]), int(row["N"]), int(row["K"]), int(row["rows"]), int(row["cols"]),
                             row["dataflow"])
        ref_cycles, ref_wall, mark = int(row["compute_cycles"]), float(row["scalesim_wall_s"]), "*"
        if args.scalesim_python and m * n * k <= args.live_max_macs:
            code = LIVE.format(bench=str(ROOT / "bench"), m=m, n=n, k=k, r=r, c=c, df=df)
            out = subprocess.run([args.scalesim_python, "-c", code], capture_output=True, text=True, check=True)
            total, stall, ref_wall = json.loads(out.stdout.strip().splitlines()[-1])
            ref_cycles, mark = total - stall, ""
        t, cycles = xpusim_time(m, n, k, r, c, df)
        same = int(cycles) == ref_cycles
        equal += same
        ratios.append(ref_wall / t)
        print(f"{str((m, n, k)):<20}{f'{r}x{c}':>9}{df:>4}{ref_cycles:>15}{int(cycles):>12}{str(same):>7}"
              f"{ref_wall:>12.3f}{mark:1}{t:>10.5f}{ref_wall / t:>10.0f}x")
    print(f"compute cycles equal in {equal}/{len(rows)} cases; speed-up median {statistics.median(ratios):.0f}x, "
          f"min {min(ratios):.0f}x (* = SCALE-Sim wall time recorded by bench/run_scalesim.py)")
    if equal != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
