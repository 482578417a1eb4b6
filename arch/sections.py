"""Validation shared by the device-class sections of a preset (``pim:``, ``wafer:``, ``rdu:``, ``fpga:``)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import SpecError

#: how a device with HBM and DDR tiers places weights and KV cache over them
#: (:func:`xpusim.mappers.tiers.balanced_share`)
TIER_POLICIES = ("fill", "balance")

def check_section(d: Any, allowed: set[str], required: list[str], where: str, shape: str) -> dict[str, Any]:
    """``d`` as a mapping with only ``allowed`` keys and every ``required`` one; one-line
    :class:`SpecError` otherwise (``shape`` describes what the mapping holds)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: must be a mapping with {shape}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in d]
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    return d


def positive(v: float, where: str, example: str) -> float:
    """``v`` if finite and > 0, else a one-line :class:`SpecError` with an ``example``."""
    if not (math.isfinite(v) and v > 0):
        raise SpecError(f"{where}: must be positive, e.g. {example}")
    return v


def count(d: Any, key: str, where: str, limit: int | None = None) -> int:
    """``d[key]`` as a positive whole number (an int, or a float without a fraction), at most ``limit``;
    one-line :class:`SpecError` otherwise, a missing key included."""
    if not isinstance(d, dict) or key not in d:
        raise SpecError(f"{where}: missing {key!r}")
    v = d[key]
    if (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v <= 0
            or (limit is not None and v > limit)):
        bound = f" up to {limit:,}" if limit is not None else ""
        raise SpecError(f"{where}.{key}: must be a positive integer{bound}, got {v!r}")
    return int(v)
