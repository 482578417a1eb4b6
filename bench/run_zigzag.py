"""Run ZigZag on the reference GEMMs on its bundled ``tpu_like`` accelerator and record its results.

ZigZag is a peer tool, never an xpusim dependency: run this script with a Python that has it (the
own environment; zigzag-dse 3.9.1 imports ``six`` without declaring it):

    python -m venv /tmp/zz-venv && /tmp/zz-venv/bin/pip install 'zigzag-dse==3.9.1' six
    /tmp/zz-venv/bin/python bench/run_zigzag.py [--resume]

For every GEMM (``M, N, K``: ZigZag layer ``O[b][k] += I[b][c] * W[c][k]`` with B = M, C = K,
K = N) and objective (latency, energy) it runs ZigZag's API with the ``tpu_like`` hardware and its
default spatial mapping (D1: K 32, D2: C 32, i.e. weight-stationary: reduction down the rows,
outputs across the columns), and writes ZigZag's latency (cycles), energy (pJ), its split into
MAC and memory energy, and its wall time to ``validation/zigzag/tpu_like.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import tempfile
import time
from pathlib import Path

GEMMS = [(64, 64, 64), (256, 256, 256), (512, 512, 512), (1, 4096, 4096), (128, 4096, 4096), (1024, 1024, 1024)]
OBJECTIVES = ["latency", "energy"]
OUT = Path(__file__).resolve().parent.parent / "validation" / "zigzag" / "tpu_like.csv"

WORKLOAD = """- id: 0
  name: gemm
  operator_type: Gemm
  equation: O[b][k]+=I[b][c]*W[c][k]
  loop_dims: [B, C, K]
  loop_sizes: [{m}, {k}, {n}]
  operand_precision:
    W: 8
    I: 8
    O: 16
    O_final: 8
  operand_source:
    I: 0
"""

MAPPING = """- name: default
  spatial_mapping:
    D1:
      - K, 32
    D2:
      - C, 32
  memory_operand_links:
    O: O
    W: I2
    I: I1
"""


def run_one(m: int, n: int, k: int, objective: str) -> dict:
    """ZigZag's latency (cycles), energy (pJ) and wall time (s) for one GEMM on ``tpu_like``."""
    import zigzag  # type: ignore[import-not-found]  # the peer tool, imported only here
    from zigzag.api import get_hardware_performance_zigzag  # type: ignore[import-not-found]

    hardware = Path(zigzag.__file__).parent / "inputs" / "hardware" / "tpu_like.yaml"
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "gemm.yaml").write_text(WORKLOAD.format(m=m, n=n, k=k))
        (p / "mapping.yaml").write_text(MAPPING)
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            energy, latency, cmes = get_hardware_performance_zigzag(
                str(p / "gemm.yaml"), str(hardware), str(p / "mapping.yaml"), opt=objective,
                dump_folder=str(p / "out"), loma_show_progress_bar=False)
        wall = time.perf_counter() - t
    cme = cmes[0][1][0][0]
    return {"energy_pj": float(energy), "latency_cycles": float(latency), "mac_energy_pj": float(cme.mac_energy),
            "mem_energy_pj": float(cme.mem_energy), "ideal_cycles": float(cme.ideal_cycle),
            "zigzag_wall_s": round(wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the table and run only the missing cases")
    args = ap.parse_args()
    from importlib.metadata import version

    zz_version = version("zigzag-dse")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.resume and OUT.exists():
        with OUT.open() as f:
            rows = list(csv.DictReader(f))
    done = {(int(r["M"]), int(r["N"]), int(r["K"]), r["objective"]) for r in rows}
    for (m, n, k) in sorted(GEMMS, key=lambda g: g[0] * g[1] * g[2]):
        for obj in OBJECTIVES:
            if (m, n, k, obj) in done:
                continue
            rows.append({"M": m, "N": n, "K": k, "objective": obj, **run_one(m, n, k, obj), "zigzag_version": zz_version})
            print(rows[-1], flush=True)
            with OUT.open("w", newline="") as f:  # rewritten after every case: partial runs are kept
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)


if __name__ == "__main__":
    main()
