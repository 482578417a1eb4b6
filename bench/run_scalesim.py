"""Run SCALE-Sim v3 on the reference GEMMs and write its cycle counts to a committed table.

SCALE-Sim is a peer tool, never an xpusim dependency: run this script with a Python that has it
(in its own environment because scalesim 3.0.0 needs ``numpy<2``, which xpusim does not use):

    python -m venv /tmp/scalesim-venv && /tmp/scalesim-venv/bin/pip install 'scalesim==3.0.0' 'numpy<2'
    /tmp/scalesim-venv/bin/python bench/run_scalesim.py [--resume] [--limit-macs N]

It writes ``validation/scalesim/compute_cycles.csv`` (one row per GEMM x array x dataflow that
finished within the timeout); ``tests/test_systolic_scalesim.py`` checks xpusim against it.
SCALE-Sim runs in CALC bandwidth mode (its default), where its compute cycles are its total cycles
minus its stall cycles.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
import time
from pathlib import Path

GEMMS = [(64, 64, 64), (256, 256, 256), (512, 512, 512), (1, 4096, 4096), (128, 4096, 4096), (1024, 1024, 1024)]
ARRAYS = [(32, 32), (128, 128)]
DATAFLOWS = ["ws", "os", "is"]
OUT = Path(__file__).resolve().parent.parent / "validation" / "scalesim" / "compute_cycles.csv"

CONFIG = """[general]
run_name = xpusim_ref

[architecture_presets]
ArrayHeight: {R}
ArrayWidth: {C}
IfmapSramSzkB: 64
FilterSramSzkB: 64
OfmapSramSzkB: 64
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {df}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
FilterCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 1
IfmapSRAMBankPort: 2
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 1
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def run_one(m: int, n: int, k: int, rows: int, cols: int, df: str) -> tuple[int, int, float]:
    """SCALE-Sim's (total cycles, stall cycles, wall seconds) for one GEMM ``name, M, N, K``."""
    from scalesim.scale_sim import scalesim  # type: ignore[import-not-found]  # the peer tool, imported only here

    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "scale.cfg").write_text(CONFIG.format(R=rows, C=cols, df=df))
        (p / "gemm.csv").write_text(f"Layer,M,N,K,\ngemm,{m},{n},{k},\n")
        (p / "layout.csv").write_text("Layer name,a,b,\n")  # 3.0.0 needs a layout file even with custom layouts off
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(save_disk_space=True, verbose=False, config=str(p / "scale.cfg"),
                           topology=str(p / "gemm.csv"), layout=str(p / "layout.csv"), input_type_gemm=True)
            sim.run_scale(top_path=str(p / "out"))
        wall = time.perf_counter() - t
        report = (p / "out" / "xpusim_ref" / "COMPUTE_REPORT.csv").read_text().splitlines()
        fields = [x.strip() for x in report[1].split(",")]
        # 3.0.0: LayerID, Total Cycles (incl. prefetch), Total Cycles, Stall Cycles, ...
        return int(float(fields[2])), int(float(fields[3])), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-macs", type=float, default=float("inf"), help="skip GEMMs with more MACs than this")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the table and run only the missing cases")
    args = ap.parse_args()
    from importlib.metadata import version as installed

    version = installed("scalesim")  # the package has no __version__
    if version != "3.0.0":
        raise SystemExit(f"scalesim {version} is installed; the table and tests/test_systolic_scalesim.py are SCALE-Sim "
                         "3.0.0's: pip install 'scalesim==3.0.0' 'numpy<2'")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows_out: list[dict] = []
    done: set[tuple] = set()
    if args.resume and OUT.exists():  # keep the rows of an earlier (partial) run and add the missing cases
        with OUT.open() as f:
            rows_out = list(csv.DictReader(f))
        done = {(int(r["M"]), int(r["N"]), int(r["K"]), int(r["rows"]), int(r["cols"]), r["dataflow"]) for r in rows_out}
    for (m, n, k) in sorted(GEMMS, key=lambda g: g[0] * g[1] * g[2]):
        if m * n * k > args.limit_macs:
            continue
        for rows, cols in ARRAYS:
            for df in DATAFLOWS:
                if (m, n, k, rows, cols, df) in done:
                    continue
                total, stall, wall = run_one(m, n, k, rows, cols, df)
                rows_out.append({"M": m, "N": n, "K": k, "rows": rows, "cols": cols, "dataflow": df,
                                 "total_cycles": total, "stall_cycles": stall, "compute_cycles": total - stall,
                                 "scalesim_wall_s": round(wall, 3), "scalesim_version": version})
                print(rows_out[-1], flush=True)
                with OUT.open("w", newline="") as f:  # rewritten after every case: partial runs are kept
                    w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
                    w.writeheader()
                    w.writerows(rows_out)


if __name__ == "__main__":
    main()
