"""Fit the collective rules on published DGX A100 all-reduce measurements only, and write them into
the DGX A100 system preset.

    python -m xpusim.validation.fit_nccl            # fit, print, write arch/systems/dgx-a100.yaml
    python -m xpusim.validation.fit_nccl --dry-run  # fit and print only
    python -m xpusim.validation.fit_nccl --table    # print predicted vs published busbw of every file

Fitted constants (see ``sim/collectives.py``): for each of NCCL's protocols (``ll``: low latency,
``ll128``: near-bulk bandwidth at low latency on NVLink, ``simple``: bulk), a fixed latency per
collective (``base_latency``: kernel launch, synchronisation and pipeline fill as nccl-tests times
them) and the achievable fraction of the intra-node link bandwidth (``efficiency``): six numbers.
Everything else (link bandwidths, per-hop latencies, NCCL's NVLS ratio) comes from datasheets and
NCCL's source. The fit minimises the mean absolute log error of the all-reduce time over every
point of ``validation/nccl/a100_8gpu_allreduce.csv`` (Nelder-Mead from several starts); the DGX
H100 and HGX H200 files are never seen by it: they are the validation.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize  # type: ignore[import-untyped]

from ..arch.system import SYSTEMS_DIR, System, load_system
from ..errors import SpecError
from ..sim.collectives import bus_factor, collective_time

HERE = Path(__file__).parent / "nccl"
SYSTEM = "dgx-a100"
#: published all-reduce files: file -> (system preset, ranks, role, algorithm the run forced or None for
#: NCCL's own choice); the DGX H100 points were run with NCCL_ALGO=RING
FILES: dict[str, tuple[str, int, str, str | None]] = {
    "a100_8gpu_allreduce.csv": ("dgx-a100", 8, "fit", None),
    "h100_8gpu_allreduce.csv": ("dgx-h100", 8, "validation", "ring"),
    "h200_8gpu_allreduce.csv": ("hgx-h200", 8, "validation", None),
}
#: sizes from which each file's published curve is bandwidth-bound (busbw within ~10 % of its plateau)
BANDWIDTH_BOUND_FROM = 256 * 2**20
#: sizes up to which a curve is latency-bound (time within 1.5x of the smallest message's)
LATENCY_BOUND_UPTO = 64 * 2**10
#: size bands of the error report: (label, smallest, largest) in bytes
BANDS = (("<= 64 KiB", 0, LATENCY_BOUND_UPTO), ("128 KiB - 128 MiB", 128 * 2**10, 128 * 2**20),
         (">= 256 MiB", BANDWIDTH_BOUND_FROM, 2**63))


@dataclass(frozen=True)
class Point:
    size_bytes: int
    busbw_GBps: float
    time_s: float | None
    source: str

    def measured_time(self, ranks: int) -> float | None:
        """The published time, else size x bus factor / busbw (None when busbw was rounded to 0)."""
        if self.time_s is not None:
            return self.time_s
        if self.busbw_GBps <= 0:
            return None
        return self.size_bytes * bus_factor("all_reduce", ranks) / (self.busbw_GBps * 1e9)


def read_points(name: str) -> list[Point]:
    """Rows of a published file of ``validation/nccl/`` (columns size_bytes, busbw_GBps, time_us, source)."""
    path = HERE / name
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            size, bw = int(row["size_bytes"]), float(row["busbw_GBps"])
            t = float(row["time_us"]) * 1e-6 if row.get("time_us") else None
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"{path}:{i}: expected size_bytes, busbw_GBps, time_us, source; got {row!r}") from None
        if size <= 0 or bw < 0 or (t is not None and t <= 0):
            raise SpecError(f"{path}:{i}: sizes and times must be positive, busbw >= 0")
        out.append(Point(size, bw, t, str(row.get("source", ""))))
    return out


def _with_rules(system: System, rules: dict) -> System:
    return dataclasses.replace(system, meta={**system.meta, "rules": rules})


#: order of the fitted vector: (base_latency, efficiency) per protocol
_ORDER = ("ll", "ll128", "simple")
#: scale of each fitted number (seconds, fraction), so that Nelder-Mead moves them alike
_SCALE = np.array([1e-5, 0.1, 1e-5, 0.1, 1e-4, 1.0])
#: starting points (us, fraction per protocol): NCCL's ordering, LL slowest and cheapest to start
_STARTS = ([30, 0.15, 40, 0.6, 100, 0.8], [25, 0.3, 50, 0.5, 60, 0.75], [30, 0.1, 35, 0.7, 150, 0.85],
           [20, 0.2, 60, 0.4, 120, 0.8])


def _rules(x) -> dict:
    v = [float(a) for a in x]
    return {"protocols": {p: {"base_latency": max(v[2 * i], 0.0), "efficiency": float(np.clip(v[2 * i + 1], 1e-3, 1.0))}
                          for i, p in enumerate(_ORDER)}}


def _log_errors(system: System, points: list[Point], ranks: int) -> list[float]:
    errs = []
    for p in points:
        t = p.measured_time(ranks)
        if t is None:
            continue
        errs.append(abs(np.log(collective_time(system, "all_reduce", p.size_bytes, ranks).time_s / t)))
    return errs


def band_errors(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """(lowest, highest) error in % of published busbw per size band (BANDS) of a compare() table."""
    out = {}
    for label, lo, hi in BANDS:
        errs = [r["error_pct"] for r in rows if lo <= r["size_bytes"] <= hi]
        if errs:
            out[label] = (min(errs), max(errs))
    return out


def fit() -> tuple[dict, dict[str, float]]:
    """Fit the protocol constants on the A100 file; returns the rules and the fit's errors."""
    base = load_system(SYSTEM)
    _, ranks, _, _ = FILES["a100_8gpu_allreduce.csv"]
    points = read_points("a100_8gpu_allreduce.csv")

    def loss(z):
        x = np.asarray(z) * _SCALE
        if any(x[i] < 0 for i in (0, 2, 4)) or any(not 0 < x[i] <= x[5] <= 1 for i in (1, 3, 5)):
            return 1e9  # outside what a rules block may hold (no protocol more efficient than simple)
        return float(np.mean(_log_errors(_with_rules(base, _rules(x)), points, ranks)))

    best = None
    for x0 in _STARTS:
        z0 = np.array(x0, dtype=float) * np.array([1e-6, 1, 1e-6, 1, 1e-6, 1]) / _SCALE
        for _ in range(3):  # restart from the optimum: Nelder-Mead's simplex collapses on this piecewise loss
            res = minimize(loss, z0, method="Nelder-Mead", options={"maxiter": 3000, "xatol": 1e-5, "fatol": 1e-7})
            z0 = res.x
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    rules = _rules(np.asarray(best.x) * _SCALE)
    fitted = _with_rules(base, rules)
    table = compare(fitted, "a100_8gpu_allreduce.csv")
    bw = [abs(r["error_pct"]) for r in table if r["size_bytes"] >= BANDWIDTH_BOUND_FROM]
    return rules, {"mean_abs_log": float(best.fun), "mape_all_pct": float(np.mean([abs(r["error_pct"]) for r in table])),
                   "max_bw_bound_pct": float(max(bw))}


def compare(system: System | str, name: str, algorithm: str | None = None) -> list[dict]:
    """Predicted vs published busbw of every usable point of a file (errors in % of published), with
    the algorithm the published run forced (FILES) unless ``algorithm`` is given."""
    system = load_system(system)
    _, ranks, _, forced = FILES[name]
    algorithm = algorithm or forced
    out = []
    for p in read_points(name):
        t = p.measured_time(ranks)
        if t is None:
            continue
        c = collective_time(system, "all_reduce", p.size_bytes, ranks, algorithm)
        meas = p.size_bytes * bus_factor("all_reduce", ranks) / t / 1e9
        pred = c.busbw_Bps / 1e9
        out.append({"size_bytes": p.size_bytes, "source": p.source, "published_GBps": meas, "predicted_GBps": pred,
                    "error_pct": (pred - meas) / meas * 100.0, "algorithm": c.algorithm, "protocol": c.protocol,
                    "published_us": t * 1e6, "predicted_us": c.time_s * 1e6})
    return out


def write_rules(rules: dict, fit_error: dict[str, float], path: Path) -> None:
    """Replace (or append) the ``rules:`` block of a system preset, keeping the rest of the file."""
    pr = rules["protocols"]
    block = (
        "rules:                     # fitted by validation/fit_nccl.py on validation/nccl/a100_8gpu_allreduce.csv "
        "(do not edit by hand)\n"
        "  fitted_by: validation/fit_nccl.py\n"
        f"  fit_error: {{mape_pct: {fit_error['mape_all_pct']:.1f}, max_bandwidth_bound_pct: "
        f"{fit_error['max_bw_bound_pct']:.1f}}}\n"
        "  protocols:\n"
        + "".join(f"    {p}: {{base_latency: {pr[p]['base_latency'] * 1e6:.2f} us, efficiency: {pr[p]['efficiency']:.4f}}}\n"
                  for p in _ORDER if p in pr)
    )
    text = path.read_text()
    text = re.sub(r"(?ms)^rules:.*?(?=^\S|\Z)", "", text).rstrip("\n") + "\n" + block
    path.write_text(text)


def _print_table(name: str) -> None:
    sysname, ranks, role, forced = FILES[name]
    rows = compare(sysname, name)
    print(f"{name} on {sysname} ({ranks} ranks, {role}{', NCCL_ALGO=' + forced if forced else ''}):")
    for r in rows:
        print(f"  {r['size_bytes']:>12d}  published {r['published_GBps']:8.2f}  predicted {r['predicted_GBps']:8.2f} GB/s"
              f"  {r['error_pct']:+7.1f} %  {r['algorithm']:<16s} {r['protocol']:<7s} {r['source']}")
    for source in sorted({r["source"] for r in rows}):
        bands = band_errors([r for r in rows if r["source"] == source])
        print(f"  {source}: " + "; ".join(f"{k} {lo:+.1f} % .. {hi:+.1f} %" for k, (lo, hi) in bands.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="fit and print, do not write the preset")
    ap.add_argument("--table", action="store_true", help="only print predicted vs published busbw of every file")
    args = ap.parse_args()
    if args.table:
        for name in FILES:
            _print_table(name)
        return
    rules, err = fit()
    print(f"fitted on {SYSTEM}: mean |log error| {err['mean_abs_log']:.4f}, MAPE {err['mape_all_pct']:.1f} %, "
          f"max error from {BANDWIDTH_BOUND_FROM >> 20} MiB {err['max_bw_bound_pct']:.1f} %")
    for p, v in rules["protocols"].items():
        print(f"  {p}: base_latency {v['base_latency'] * 1e6:.2f} us, efficiency {v['efficiency']:.4f}")
    rows = compare(_with_rules(load_system(SYSTEM), rules), "a100_8gpu_allreduce.csv")
    for source in sorted({r["source"] for r in rows}):
        bands = band_errors([r for r in rows if r["source"] == source])
        print(f"  {source}: " + "; ".join(f"{k} {lo:+.1f} % .. {hi:+.1f} %" for k, (lo, hi) in bands.items()))
    if not args.dry_run:
        path = SYSTEMS_DIR / f"{SYSTEM}.yaml"
        write_rules(rules, err, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
