"""GPU device-class rules: the fitted constants a GPU preset carries under ``rules:``.

``mma_efficiency`` — fraction of the tensor-core peak a tuned GEMM main loop sustains;
``memory_efficiency`` — fraction of the HBM datasheet bandwidth a streaming kernel achieves;
``l2_efficiency`` — the same for L2;
``launch_overhead`` — host-side launch + synchronisation per kernel, by op kind (``default``
applies to kinds not listed), as measured from a framework (seconds).

Presets carry values fitted by ``validation/fit_gpu.py``; a GPU without fitted values uses the
architecture-generic defaults below, which the same script prints as the A100 fit (so every GPU
preset shares one set of rules, never a per-device fudge table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..units import parse_quantity

_KEYS = {"mma_efficiency", "memory_efficiency", "l2_efficiency", "launch_overhead", "fitted_by"}


@dataclass(frozen=True)
class GpuRules:
    mma_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    l2_efficiency: float = 1.0
    launch_overhead_s: dict[str, float] = field(default_factory=lambda: {"default": 0.0})

    def launch(self, kind: str) -> float:
        return self.launch_overhead_s.get(kind, self.launch_overhead_s.get("default", 0.0))


def gpu_rules(rules: dict[str, Any] | None, where: str = "device") -> GpuRules:
    """Parse the ``rules:`` section of a GPU preset."""
    r = dict(rules or {})
    unknown = sorted(set(r) - _KEYS)
    if unknown:
        raise SpecError(f"{where} rules: unknown field(s) {unknown}; allowed: {', '.join(sorted(_KEYS))}")
    out: dict[str, Any] = {}
    for k in ("mma_efficiency", "memory_efficiency", "l2_efficiency"):
        if k in r:
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                raise SpecError(f"{where} rules.{k}: must be a fraction in (0, 1], got {v!r}")
            out[k] = float(v)
    lo = r.get("launch_overhead", {"default": 0.0})
    if not isinstance(lo, dict):
        lo = {"default": lo}
    out["launch_overhead_s"] = {str(k): parse_quantity(v, "seconds", f"{where} rules.launch_overhead.{k}")
                                for k, v in lo.items()}
    if any(v < 0 for v in out["launch_overhead_s"].values()):
        raise SpecError(f"{where} rules.launch_overhead: must be >= 0")
    return GpuRules(**out)
