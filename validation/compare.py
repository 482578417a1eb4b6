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


def _num(text: str, path: Path, line: int) -> float:
    t = text.strip().lower()
    for suffix, f in (("tflops", 1.0), ("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], f
            break
    else:
        scale = 1.0
    try:
        v = float(t) * scale
    except ValueError:
        raise SpecError(f"{path}:{line}: cannot read number {text.strip()!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise SpecError(f"{path}:{line}: values must be positive, got {text.strip()!r}")
    return v


def read_measurements(kind: str, path: str | Path) -> list[Measurement]:
    """Rows of a measured file of ``kind`` (see ``validation/README.md`` for the columns)."""
    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    out = []
    for i, row in enumerate(csv.reader(lines), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        need = {"gemm": 4, "softmax": 3, "layernorm": 3, "gelu": 2}[kind]
        if len(row) < need:
            raise SpecError(f"{path}:{i}: a {kind} row needs {need} columns, got {len(row)} (see validation/README.md)")
        if kind == "gemm":
            m, n, k = (int(_num(x, path, i)) for x in row[:3])
            lat = _num(row[3], path, i)
            if not row[3].strip().lower().endswith(("ms", "us", "s")):
                lat = lat  # plain seconds
            out.append(Measurement(kind, (m, n, k), lat))
        elif kind == "gelu":
            n = int(_num(row[0], path, i))
            out.append(Measurement(kind, (n,), n / (_num(row[1], path, i) * 1e9)))
        else:
            m, n = int(_num(row[0], path, i)), int(_num(row[1], path, i))
            out.append(Measurement(kind, (m, n), m * n / (_num(row[2], path, i) * 1e9)))
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
