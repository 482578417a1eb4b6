"""Requests for the serving simulator (:mod:`xpusim.sim.serving`): the :class:`Request` record,
Poisson arrivals with sampled token counts, and trace files.

Token-count specs accepted by :func:`poisson_requests` (``input_tokens`` / ``output_tokens``):

* an ``int``: every request has that many tokens;
* a ``tuple`` ``(mean, std)`` or ``(mean, std, max)``: a lognormal with that mean and standard
  deviation (``sigma^2 = ln(1 + std^2/mean^2)``, ``mu = ln(mean) - sigma^2/2``), rounded to an
  integer and clipped to ``[1, max]`` (no upper clip without ``max``); ``std = 0`` is the constant;
* a ``list`` (or 1-D numpy array) of ints: an empirical distribution, sampled uniformly with
  replacement (e.g. the prompt lengths of a real trace).

A tuple is always a parametric spec and a list always a sample, so ``(128, 32)`` is a lognormal and
``[128, 32]`` draws 128 or 32 with equal odds.

Trace files (:func:`read_trace`): CSV (``.csv``) with a header row, or JSON lines (``.jsonl`` /
``.ndjson``, one object a line), with columns ``arrival_s``, ``input_tokens``, ``output_tokens`` and
an optional ``id`` (unique; the 0-based row number otherwise). Unsorted arrivals are **sorted**
(stably: equal arrival times keep file order), since merged traces are often unsorted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShapeError, SpecError

TokenSpec = int | tuple[float, ...] | Sequence[int] | np.ndarray


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request: ``id`` (int or str), ``arrival_s`` (seconds, >= 0), ``input_tokens``
    (prompt length, >= 1) and ``output_tokens`` (tokens to generate, >= 1; the first comes out of
    the prefill)."""

    id: int | str
    arrival_s: float
    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if not (_is_int(self.id) or isinstance(self.id, str)):
            raise SpecError(f"request id {self.id!r} is a {type(self.id).__name__}; use an int or a str")
        if not _is_real(self.arrival_s) or not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise SpecError(f"request {self.id!r}: arrival_s {self.arrival_s!r} must be a finite number of seconds >= 0")
        for name in ("input_tokens", "output_tokens"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ShapeError(f"request {self.id!r}: {name} {v!r} must be an integer >= 1")
            object.__setattr__(self, name, int(v))
        object.__setattr__(self, "arrival_s", float(self.arrival_s))
        if _is_int(self.id):
            object.__setattr__(self, "id", int(self.id))


def sample_tokens(spec: TokenSpec, n: int, rng: np.random.Generator, name: str = "tokens") -> np.ndarray:
    """``n`` token counts (int64, each >= 1) drawn from ``spec`` (see the module docstring)."""
    if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
        if int(spec) < 1:
            raise ShapeError(f"{name} {spec!r} must be >= 1 token")
        return np.full(n, int(spec), dtype=np.int64)
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3) or not all(_is_real(v) and math.isfinite(v) for v in spec):
            raise SpecError(f"{name} {spec!r}: a tuple must be (mean, std) or (mean, std, max) with finite numbers; "
                            "pass a list to sample from values")
        mean, std = float(spec[0]), float(spec[1])
        hi = float(spec[2]) if len(spec) == 3 else math.inf
        if mean < 1 or std < 0 or hi < 1:
            raise SpecError(f"{name} {spec!r}: need mean >= 1, std >= 0 and max >= 1")
        if std == 0:
            vals = np.full(n, mean)
        else:
            s2 = math.log1p((std / mean) ** 2)
            vals = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)
        return np.clip(np.rint(vals), 1, hi).astype(np.int64)
    if isinstance(spec, list | np.ndarray):
        arr = np.asarray(spec)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or (arr < 1).any():
            raise SpecError(f"{name}: a list to sample from must be a non-empty flat list of integers >= 1")
        return rng.choice(arr.astype(np.int64), n)
    raise SpecError(f"{name} {spec!r} is a {type(spec).__name__}; use an int, a (mean, std[, max]) tuple or a list of ints")


def poisson_requests(rate_per_s: float, n: int, input_tokens: TokenSpec, output_tokens: TokenSpec,
                     seed: int = 0, *, start_s: float = 0.0) -> list[Request]:
    """``n`` requests with Poisson arrivals at ``rate_per_s`` (exponential gaps, the first one
    after ``start_s``; ``rate_per_s=inf`` puts every arrival at ``start_s``: an offline batch) and
    token counts drawn from ``input_tokens`` / ``output_tokens`` (int, ``(mean, std[, max])``
    lognormal or a list to sample; see the module docstring). Ids are 0..n-1. The same arguments
    and ``seed`` give the same requests."""
    if not _is_real(rate_per_s) or not rate_per_s > 0:
        raise SpecError(f"rate_per_s {rate_per_s!r} must be > 0 requests per second (inf for all at once)")
    if not _is_int(n) or n < 1:
        raise ShapeError(f"n {n!r} must be an integer >= 1 requests")
    if not _is_real(start_s) or not math.isfinite(start_s) or start_s < 0:
        raise SpecError(f"start_s {start_s!r} must be a finite number of seconds >= 0")
    rng = np.random.default_rng(seed)
    if math.isinf(rate_per_s):
        arrivals = np.full(n, float(start_s))
    else:
        arrivals = start_s + np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    ins = sample_tokens(input_tokens, n, rng, "input_tokens")
    outs = sample_tokens(output_tokens, n, rng, "output_tokens")
    return [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, ins, outs, strict=True))]


_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


def _show(v: Any) -> str:
    return repr(v.item() if isinstance(v, np.generic) else v)


def read_trace(path: str | Path) -> list[Request]:
    """Requests from a CSV or JSON-lines trace (columns ``arrival_s``, ``input_tokens``,
    ``output_tokens``, optional ``id``), sorted by arrival (stable). Errors name the file, the
    row (1-based data row) and the fix."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"trace file {str(p)!r} does not exist; pass the path of a .csv or .jsonl trace")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(p, skipinitialspace=True, index_col=False)
        elif suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(p, lines=True, dtype=False)
        else:
            raise SpecError(f"trace file {p.name!r} has suffix {suffix!r}; use .csv (with a header row) or .jsonl "
                            "(one object a line)")
    except SpecError:
        raise
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"trace file {p.name!r} cannot be parsed ({first}); write a CSV with a header row or "
                        "one JSON object a line") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        has = ", ".join(map(str, df.columns)) or "none"
        raise SpecError(f"trace file {p.name!r} lacks column(s) {', '.join(missing)} (has {has}); "
                        "it needs arrival_s, input_tokens, output_tokens")
    if len(df) == 0:
        raise SpecError(f"trace file {p.name!r} has no requests; add one row per request")
    cols: dict[str, np.ndarray] = {}
    for c in _COLUMNS:
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(num) | np.array([isinstance(v, bool | np.bool_) for v in raw.tolist()], dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            v = raw.iloc[i]
            what = "is missing" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{_show(v)} is not a finite number"
            raise SpecError(f"trace file {p.name!r} row {i + 1}: {c} {what}; fix or drop that row")
        neg = num < 0
        if neg.any():
            i = int(np.argmax(neg))
            err = SpecError if c == "arrival_s" else ShapeError
            bound = ">= 0 seconds" if c == "arrival_s" else "an integer >= 1"
            raise err(f"trace file {p.name!r} row {i + 1}: {c} {_show(raw.iloc[i])} is negative; it must be {bound}")
        if c != "arrival_s":
            frac = (num != np.round(num)) | (num < 1)
            if frac.any():
                i = int(np.argmax(frac))
                raise ShapeError(f"trace file {p.name!r} row {i + 1}: {c} {_show(raw.iloc[i])} must be an integer >= 1 token")
        cols[c] = num
    if "id" in df.columns:
        ids = [v.item() if isinstance(v, np.generic) else v for v in df["id"].tolist()]
        ids = [int(v) if isinstance(v, float) and v.is_integer() else v for v in ids]
        for i, v in enumerate(ids):
            if not (_is_int(v) or isinstance(v, str)):
                raise SpecError(f"trace file {p.name!r} row {i + 1}: id {_show(v)} must be an integer or a string")
        seen: set = set()
        for i, v in enumerate(ids):
            if v in seen:
                raise SpecError(f"trace file {p.name!r} row {i + 1}: id {v!r} repeats; ids must be unique "
                                "(or drop the id column)")
            seen.add(v)
    else:
        ids = list(range(len(df)))
    order = np.argsort(cols["arrival_s"], kind="stable")
    return [Request(ids[i], float(cols["arrival_s"][i]), int(cols["input_tokens"][i]), int(cols["output_tokens"][i]))
            for i in order]
