"""Compare predictions with measured kernel latencies (the formats of ``validation/README.md``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..arch.loader import load_arch
from ..arch.spec import Arch
from ..errors import SpecError
from ..files import read_text
from ..sim.engine import op_cost
from ..workloads.einsum import Op, Tensor

HERE = Path(__file__).parent
KINDS = ("gemm", "softmax", "layernorm", "gelu")
#: measured files shipped with xpusim: device preset -> kind -> file (relative to validation/)
SHIPPED: dict[str, dict[str, str]] = {
    "a100-80gb": {"gemm": "a100/matmul.csv", "softmax": "a100/softmax.csv", "layernorm": "a100/layernorm.csv",
                  "gelu": "a100/gelu.csv"},
}
#: the dtype each file format was measured in
DTYPES = {"gemm": "bf16", "softmax": "fp16", "layernorm": "fp16", "gelu": "fp16"}


@dataclass(frozen=True)
class Measurement:
    kind: str
    shape: tuple[int, ...]
    latency_s: float


#: columns of a row of each kind (a gemm row may add its achieved throughput)
COLUMNS = {"gemm": (4, 5), "softmax": (3,), "layernorm": (3,), "gelu": (2,)}
_TIME = (("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9), ("s", 1.0))  # longest suffix first: "ms" before "s"
#: a gemm's stated throughput may differ this much from 2*M*N*K / latency (rounding), no more
THROUGHPUT_TOLERANCE = 0.05


def _value(text: str, where: str, what: str, suffixes: tuple[tuple[str, float], ...] = ()) -> float:
    """A positive finite number, optionally with one of ``suffixes`` (unit, scale); ``what`` names the column."""
    t, scale = text.strip().lower(), 1.0
    for suffix, f in suffixes:
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], f
            break
    try:
        v = float(t) * scale
    except ValueError:
        raise SpecError(f"{where}: {what}, got {text.strip()!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise SpecError(f"{where}: {what} must be positive, got {text.strip()!r}")
    return v


def _dim(text: str, where: str, name: str) -> int:
    """A dimension: a positive whole number, no unit."""
    v = _value(text, where, f"{name} must be a whole number")
    if not v.is_integer():
        raise SpecError(f"{where}: {name} must be a whole number, got {text.strip()!r}")
    return int(v)


def read_measurements(kind: str, path: str | Path) -> list[Measurement]:
    """Rows of a measured file of ``kind`` (see ``validation/README.md`` for the columns): exactly
    the kind's columns, whole-number dimensions, a gemm latency in s (or with ms/us/ns) and its
    optional throughput in TFLOP/s (checked against the latency), and the other kinds' throughput
    as a plain number of 1e9 elements/s."""
    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    path = Path(path)
    lines = read_text(path, "a CSV of measurements").splitlines()
    rate = "column {} is a throughput in 1e9 elements/s (a plain number)"
    out = []
    for i, row in enumerate(csv.reader(lines), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        where = f"{path}:{i}"
        if len(row) not in COLUMNS[kind]:
            other = [k for k, n in COLUMNS.items() if len(row) in n]
            hint = f"; {len(row)} columns is a {' or '.join(other)} file" if other else ""
            raise SpecError(f"{where}: a {kind} row has {' or '.join(map(str, COLUMNS[kind]))} columns, got {len(row)}"
                            f"{hint} (see validation/README.md)")
        if kind == "gemm":
            m, n, k = (_dim(x, where, name) for x, name in zip(row[:3], "MNK", strict=True))
            lat = _value(row[3], where, "column 4 is a latency (seconds, or a number with ms, us or ns)", _TIME)
            if len(row) == 5:
                tflops = _value(row[4], where, "column 5 is a throughput in TFLOP/s (a number, optionally with Tflops)",
                                (("tflops", 1.0),))
                implied = 2.0 * m * n * k / lat / 1e12
                if abs(tflops / implied - 1.0) > THROUGHPUT_TOLERANCE:
                    raise SpecError(f"{where}: the throughput {tflops:g} TFLOP/s disagrees with 2*M*N*K / latency = "
                                    f"{implied:.4g} TFLOP/s")
            out.append(Measurement(kind, (m, n, k), lat))
        elif kind == "gelu":
            n = _dim(row[0], where, "N")
            out.append(Measurement(kind, (n,), n / (_value(row[1], where, rate.format(2)) * 1e9)))
        else:
            m, n = _dim(row[0], where, "M"), _dim(row[1], where, "N")
            out.append(Measurement(kind, (m, n), m * n / (_value(row[2], where, rate.format(3)) * 1e9)))
    if not out:
        raise SpecError(f"{path}: no measurements found")
    return out


def measured_op(kind: str, shape: tuple[int, ...]) -> Op:
    """The operator a measurement ran, as an xpusim Op."""
    dt = DTYPES[kind]
    if kind == "gemm":
        m, n, k = shape
        return Op("gemm", "matmul", (("m", m), ("n", n), ("k", k)),
                  (Tensor("A", ("m", "k"), dt), Tensor("B", ("k", "n"), dt)), Tensor("C", ("m", "n"), dt))
    if kind == "softmax":
        m, n = shape
        return Op("softmax", "softmax", (("m", m), ("s", n)), (Tensor("x", ("m", "s"), dt),), Tensor("y", ("m", "s"), dt),
                  5.0, {"scale": 1.0})
    if kind == "layernorm":
        m, n = shape
        return Op("layernorm", "norm", (("m", m), ("d", n)),
                  (Tensor("x", ("m", "d"), dt), Tensor("w", ("d",), dt, "weight"), Tensor("b", ("d",), dt, "weight")),
                  Tensor("y", ("m", "d"), dt), 7.0, {"type": "layernorm", "eps": 1e-5})
    (n,) = shape
    return Op("gelu", "activation", (("n", n),), (Tensor("x", ("n",), dt),), Tensor("y", ("n",), dt), 8.0,
              {"function": "gelu", "gated": False})


def compare(arch: Arch | str, kind: str, path: str | Path, progress: bool = False) -> pd.DataFrame:
    """One row per measurement: shape, measured and predicted latency, signed % error
    (``progress``: a progress bar on a terminal)."""
    from tqdm import tqdm

    arch = load_arch(arch)
    rows: list[dict[str, Any]] = []
    for ms in tqdm(read_measurements(kind, path), desc=f"{arch.name} {kind}", unit="kernel", leave=False,
                   disable=None if progress else True):
        pred = op_cost(measured_op(kind, ms.shape), arch, isolated=True).latency_s
        rows.append({"kind": kind, "shape": "x".join(map(str, ms.shape)), "measured_s": ms.latency_s,
                     "predicted_s": pred, "err_pct": (pred - ms.latency_s) / ms.latency_s * 100.0})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> dict[str, float]:
    err = df["err_pct"].abs()
    return {"n": int(len(df)), "mape_pct": float(err.mean()), "max_abs_pct_err": float(err.max())}


def validate_shipped(devices: list[str] | None = None, progress: bool = False) -> tuple[dict[str, dict[str, dict]], pd.DataFrame]:
    """Compare every shipped measured file; returns the summary ``{device: {kind: {...}}}`` and all rows."""
    summary: dict[str, dict[str, dict]] = {}
    frames = []
    for dev, files in SHIPPED.items():
        if devices and dev not in devices:
            continue
        summary[dev] = {}
        for kind, rel in files.items():
            df = compare(dev, kind, HERE / rel, progress)
            df.insert(0, "device", dev)
            frames.append(df)
            summary[dev][kind] = summarise(df)
    return summary, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: the on-chip buffer of the SCALE-Sim comparison device: large enough that every GEMM of
#: ``validation/scalesim/compute_cycles.csv`` streams each fold's whole temporal dimension once
SCALESIM_GBUF_BYTES = 16 * 2**20


def scalesim_device(rows: int, cols: int, dataflow: str) -> Arch:
    """The device xpusim's compute cycles are compared with SCALE-Sim v3's on: systolic-npu with an
    ``rows`` x ``cols`` array running ``dataflow`` and a 16 MiB gbuf. SCALE-Sim's compute cycles are
    those of one pass per fold streaming its whole temporal dimension (its SRAM sizes only add
    stalls); xpusim costs the schedule a mapping runs, and on the preset's 4 MiB gbuf the best
    mapping of 128 x 4096 x 4096 (os, is) on 128 x 128 re-enters its folds (8 k-chunks) to keep
    DRAM traffic down. With a buffer that holds the streams the mapper runs SCALE-Sim's schedule."""
    from dataclasses import replace

    from ..arch.spec import with_array

    arch = with_array(load_arch("systolic-npu"), rows, cols, dataflow)
    gbuf = replace(arch.memory[1], capacity_bytes=float(SCALESIM_GBUF_BYTES))
    return replace(arch, name=f"{arch.name}-16MiB-gbuf", memory=(arch.memory[0], gbuf, *arch.memory[2:]))
