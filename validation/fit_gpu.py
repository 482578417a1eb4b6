"""Fit the GPU rules on the measured A100 data only, and write them into the A100 preset.

    python -m xpusim.validation.fit_gpu            # fit, print, write arch/presets/a100-80gb.yaml
    python -m xpusim.validation.fit_gpu --dry-run  # fit and print only

Fitted constants (see ``arch/gpu.py``): the tensor-core efficiency of a tuned GEMM main loop, the
achievable fraction of HBM and L2 bandwidth, and the host-side launch + synchronisation overhead
of each op kind as the measuring framework issues it. Everything else comes from the datasheet.
Stages: (1) the HBM ceiling and the launch overhead of a pure streaming kernel (gelu); (2) for each
reduction kind, the on-chip row limit and the pass count (grid) with its launch overhead; (3) the
GEMM tensor-core efficiency, L2 ceiling and launch overhead. Each stage minimises that kind's mean
absolute percentage error (Nelder-Mead).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import numpy as np
from scipy.optimize import minimize  # type: ignore[import-untyped]

from ..arch.loader import PRESETS_DIR, load_arch
from ..sim.engine import clear_cache, op_cost
from .compare import HERE, SHIPPED, measured_op, read_measurements

DEVICE = "a100-80gb"
#: measured kind -> the op kind whose constants it fits
OP_KIND = {"gemm": "matmul", "softmax": "softmax", "layernorm": "norm", "gelu": "activation"}
ROW_KINDS = ("softmax", "layernorm")
ROW_LIMITS = [2.0**p for p in range(8, 18)]  # candidate on-chip row limits: 256 B .. 128 KiB
ROW_PASSES = (2, 3)


def _mape(arch, rows, kind) -> float:
    clear_cache()
    return float(np.mean([abs(op_cost(measured_op(kind, r.shape), arch, isolated=True).latency_s - r.latency_s) / r.latency_s
                          for r in rows])) * 100.0


def _with(rules: dict):
    return dataclasses.replace(load_arch(DEVICE), rules=rules)


def _nm(fun, x0, scale):
    res = minimize(lambda z: fun(np.asarray(z) * scale), np.asarray(x0) / scale, method="Nelder-Mead",
                   options={"maxiter": 800, "xatol": 1e-4, "fatol": 1e-4})
    return np.asarray(res.x) * scale, float(res.fun)


def fit() -> tuple[dict, dict[str, float]]:
    """Staged fit; returns the rules and each kind's MAPE (%)."""
    data = {kind: read_measurements(kind, HERE / rel) for kind, rel in SHIPPED[DEVICE].items()}
    rules: dict = {"mma_efficiency": 1.0, "memory_efficiency": 1.0, "l2_efficiency": 1.0,
                   "launch_overhead": {}, "single_pass_row": {}, "row_passes": {}}
    mape: dict[str, float] = {}

    def launch0(kind):
        return min(r.latency_s for r in data[kind]) * 0.9

    # 1. HBM ceiling and launch overhead from the pure streaming kernel (gelu: one read, one write)
    def f_gelu(x):
        eff, lo = float(np.clip(x[0], 0.05, 1.0)), float(max(x[1], 0.0))
        r = dict(rules, memory_efficiency=eff, launch_overhead={"activation": lo})
        return _mape(_with(r), data["gelu"], "gelu")

    x, mape["gelu"] = _nm(f_gelu, [0.8, launch0("gelu")], np.array([1.0, 1e-5]))
    rules["memory_efficiency"] = float(np.clip(x[0], 0.05, 1.0))
    rules["launch_overhead"]["activation"] = float(max(x[1], 0.0))

    # 2. reductions: on-chip row limit and passes (grid), launch overhead (fitted per candidate)
    for kind in ROW_KINDS:
        op_kind = OP_KIND[kind]
        best = None
        for limit in ROW_LIMITS:
            for n_pass in ROW_PASSES:
                def f_row(x, limit=limit, n_pass=n_pass, op_kind=op_kind, kind=kind):
                    r = dict(rules, launch_overhead={**rules["launch_overhead"], op_kind: float(max(x[0], 0.0))},
                             single_pass_row={op_kind: limit}, row_passes={op_kind: n_pass})
                    return _mape(_with(r), data[kind], kind)

                x, err = _nm(f_row, [launch0(kind)], np.array([1e-5]))
                if best is None or err < best[0]:
                    best = (err, limit, n_pass, float(max(x[0], 0.0)))
        assert best is not None
        mape[kind], limit, n_pass, lo = best
        rules["launch_overhead"][op_kind] = lo
        rules["single_pass_row"][op_kind] = limit
        rules["row_passes"][op_kind] = n_pass

    # 3. GEMM: tensor-core efficiency, L2 ceiling, launch overhead
    def f_gemm(x):
        r = dict(rules, mma_efficiency=float(np.clip(x[0], 0.05, 1.0)), l2_efficiency=float(np.clip(x[1], 0.05, 1.0)),
                 launch_overhead={**rules["launch_overhead"], "matmul": float(max(x[2], 0.0))})
        return _mape(_with(r), data["gemm"], "gemm")

    x, mape["gemm"] = _nm(f_gemm, [0.9, 0.8, launch0("gemm")], np.array([1.0, 1.0, 1e-5]))
    rules["mma_efficiency"] = float(np.clip(x[0], 0.05, 1.0))
    rules["l2_efficiency"] = float(np.clip(x[1], 0.05, 1.0))
    rules["launch_overhead"]["matmul"] = float(max(x[2], 0.0))
    return rules, mape


def write_rules(rules: dict, path: Path) -> None:
    """Replace (or append) the ``rules:`` block of a preset, keeping the rest of the file."""
    lo = "\n".join(f"    {k}: {v * 1e6:.2f} us" for k, v in rules["launch_overhead"].items())
    rows = "\n".join(f"    {k}: {int(v)} B" for k, v in rules["single_pass_row"].items())
    passes = "\n".join(f"    {k}: {v}" for k, v in rules["row_passes"].items())
    block = (
        "rules:                     # fitted by validation/fit_gpu.py on validation/a100/ (do not edit by hand)\n"
        "  fitted_by: validation/fit_gpu.py\n"
        f"  mma_efficiency: {rules['mma_efficiency']:.4f}\n"
        f"  memory_efficiency: {rules['memory_efficiency']:.4f}\n"
        f"  l2_efficiency: {rules['l2_efficiency']:.4f}\n"
        f"  launch_overhead:\n{lo}\n"
        f"  single_pass_row:\n{rows}\n"
        f"  row_passes:\n{passes}\n"
    )
    text = path.read_text()
    text = re.sub(r"(?ms)^rules:.*?(?=^\S|\Z)", "", text).rstrip("\n") + "\n" + block
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    rules, mape = fit()
    print(f"fitted on {DEVICE}: " + ", ".join(f"{k} MAPE {v:.2f}%" for k, v in mape.items()))
    for k, v in rules.items():
        print(f"  {k}: {v}")
    if not args.dry_run:
        path = PRESETS_DIR / f"{DEVICE}.yaml"
        write_rules(rules, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
