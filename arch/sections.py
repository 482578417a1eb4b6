"""Validation shared by the device-class sections of a preset (``pim:``, ``wafer:``, ``rdu:``)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import SpecError


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
