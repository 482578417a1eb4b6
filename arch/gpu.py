"""GPU device-class rules: the fitted constants a GPU preset carries under ``rules:``.

* ``mma_efficiency`` — fraction of the tensor-core peak a tuned GEMM main loop sustains;
* ``memory_efficiency`` — fraction of the HBM datasheet bandwidth a streaming kernel achieves;
* ``l2_efficiency`` — the same for L2;
* ``launch_overhead`` — host-side launch + synchronisation per kernel, by op kind (``default``
  for kinds not listed), as the measuring framework issues them (seconds);
* ``single_pass_row`` — the longest reduction row (bytes) the framework's kernel of a kind keeps
  on chip; a longer row is read ``row_passes`` times from device memory.

The values are fitted by ``validation/fit_gpu.py`` on the A100 measurements and written into the
A100 preset. Every other GPU preset uses the same rules (the A100's; a preset's own ``rules:`` replace
them field by field, a per-kind table key by key): the rules describe the software stack and the
architecture family, not one chip, so there is no per-device fudge table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity

_KEYS = {"mma_efficiency", "memory_efficiency", "l2_efficiency", "launch_overhead", "single_pass_row", "row_passes",
         "fitted_by"}
CALIBRATION_DEVICE = "a100-80gb"


@dataclass(frozen=True)
class GpuRules:
    mma_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    l2_efficiency: float = 1.0
    launch_overhead_s: dict[str, float] = field(default_factory=lambda: {"default": 0.0})
    single_pass_row_bytes: dict[str, float] = field(default_factory=dict)
    row_passes: dict[str, int] = field(default_factory=dict)

    def launch(self, kind: str) -> float:
        return self.launch_overhead_s.get(kind, self.launch_overhead_s.get("default", 0.0))


def _fraction(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise SpecError(f"{where}: must be a fraction in (0, 1], got {v!r}")
    return float(v)


def parse_gpu_rules(rules: dict[str, Any] | None, where: str = "device") -> GpuRules:
    """Parse a ``rules:`` section of a GPU preset (values as written by the fitting script)."""
    r = dict(rules or {})
    unknown = sorted(set(r) - _KEYS)
    if unknown:
        raise SpecError(f"{where} rules: unknown field(s) {unknown}; allowed: {', '.join(sorted(_KEYS))}")
    out: dict[str, Any] = {}
    for k in ("mma_efficiency", "memory_efficiency", "l2_efficiency"):
        if k in r:
            out[k] = _fraction(r[k], f"{where} rules.{k}")
    for key, name, kind in (("launch_overhead", "launch_overhead_s", "seconds"),
                            ("single_pass_row", "single_pass_row_bytes", "bytes")):
        v = r.get(key, {})
        if not isinstance(v, dict):
            v = {"default": v}
        vals = {str(k): parse_quantity(x, kind, f"{where} rules.{key}.{k}") for k, x in v.items()}
        if any(x < 0 for x in vals.values()):
            raise SpecError(f"{where} rules.{key}: values must be >= 0")
        out[name] = vals
    passes = r.get("row_passes", {})
    if not isinstance(passes, dict) or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                           for x in passes.values()):
        raise SpecError(f"{where} rules.row_passes: must map op kinds to whole numbers >= 1")
    out["row_passes"] = {str(k): int(x) for k, x in passes.items()}
    out.setdefault("launch_overhead_s", {"default": 0.0})
    return GpuRules(**out)


@lru_cache(maxsize=1)
def _calibrated() -> GpuRules:
    from .loader import load_arch

    return parse_gpu_rules(load_arch(CALIBRATION_DEVICE).rules, f"device {CALIBRATION_DEVICE!r}")


def gpu_rules(rules: dict[str, Any] | None, where: str = "device") -> GpuRules:
    """The rules of a GPU: those fitted on the calibration device, with the fields its own ``rules:``
    give replacing them (a per-kind table key by key)."""
    if not rules:
        return _calibrated()
    own = parse_gpu_rules(rules, where)
    base = _calibrated()
    merged: dict[str, Any] = {}
    for key, name in (("mma_efficiency", "mma_efficiency"), ("memory_efficiency", "memory_efficiency"),
                      ("l2_efficiency", "l2_efficiency"), ("launch_overhead", "launch_overhead_s"),
                      ("single_pass_row", "single_pass_row_bytes"), ("row_passes", "row_passes")):
        mine, theirs = getattr(own, name), getattr(base, name)
        if key not in rules:
            merged[name] = theirs
        elif isinstance(mine, dict):
            merged[name] = {**theirs, **mine}
        else:
            merged[name] = mine
    return GpuRules(**merged)
