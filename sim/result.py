"""The result of a simulation: one row per op, totals, memory footprint, and the inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: columns of :attr:`Result.ops` (bytes per memory level follow as ``bytes_<level>``)
COLUMNS = ["block", "name", "kind", "repeat", "flops", "bytes", "intensity", "cycles", "latency_s",
           "total_latency_s", "energy_j", "total_energy_j", "bound", "utilization"]


def _finite(v: Any) -> Any:
    """``v`` with every non-finite float (numpy ones included) replaced by None, recursively."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, float | np.floating) and not np.isfinite(v):
        return None
    return v


def strict_json(obj: Any, indent: int | None = None, default: Any = float) -> str:
    """JSON every parser accepts: non-finite numbers (a side that cannot run an op: inf; an
    infeasible plan: NaN) become null."""
    return json.dumps(_finite(obj), indent=indent, default=default, allow_nan=False)


def roof(arch: Any, compute: str) -> dict[str, Any]:
    """What a roofline needs of device ``arch`` for work of class ``compute``: the class it runs in,
    its peak FLOP/s, and its backing memory with the bandwidth of every instance (kept in a result
    so a report never reloads the device)."""
    from ..errors import DtypeError

    try:
        cls = arch.matrix.resolve(compute)
        peak = arch.peak_flops(cls)
    except DtypeError:  # an RDU runs a class its systolic mode lacks (fp32) in SIMD mode, on the vector unit's rate
        if arch.device_class != "dataflow" or compute not in arch.vector.rate_per_cycle:
            raise
        cls, peak = compute, arch.vector.rate_per_cycle[compute] * arch.vector.instances * arch.vector_clock_hz
    return {"compute": cls, "peak_flops_per_s": peak, "memory": arch.backing.name,
            "bandwidth_Bps": arch.backing.bandwidth_Bps * arch.backing.instances}


def step_compute_class(inputs: dict[str, Any], arch: Any) -> str:
    """The matrix class a step's GEMMs run in on ``arch``: the widest of its weight and activation
    formats (those ``inputs`` recorded, else its model's); bf16 (else the fastest class) when
    neither is known."""
    from ..dtypes import get_dtype
    from ..errors import XpusimError
    from ..workloads.model import load_model

    try:
        f = inputs.get("formats") or {}
        if f.get("weights") and f.get("activations"):
            fmts = (f["weights"], f["activations"])
        else:
            model = load_model(str(inputs.get("model", "")))
            fmts = (model.weight_dtype, model.act_dtype)
        return arch.matrix.resolve(get_dtype(max(fmts, key=lambda x: get_dtype(x).bits)).compute)
    except XpusimError:
        rates = arch.matrix.rate_per_cycle
        return "bf16" if "bf16" in rates else max(rates, key=lambda c: rates[c])


def energy_basis(inputs: dict[str, Any]) -> str:
    """What a step's energy counts: ``dynamic + static`` where its device states a static power (an
    FPGA board's idle and logic power), else ``dynamic only`` (MACs and data movement: a lower
    bound); ``unknown`` for a result saved without it."""
    w = inputs.get("static_power_w")
    return "unknown" if w is None else "dynamic + static" if w > 0 else "dynamic only"


def formats_label(inputs: dict[str, Any]) -> str:
    """The formats a step ran in (``weights/activations/KV``, ``+embeddings`` where those differ from the
    weights), or ``unknown``."""
    f = inputs.get("formats") or {}
    if not f:
        return "unknown"
    emb = f"+{f['embeddings']} embeddings" if f.get("embeddings", f.get("weights")) != f.get("weights") else ""
    return "/".join(str(f.get(k, "?")) for k in ("weights", "activations", "kv")) + emb


#: what a step's tokens are, by phase: the unit of its throughput
THROUGHPUT_UNITS = {"prefill": "prompt tokens/s", "decode": "generated tokens/s", "verify": "verified sequences/s"}


def throughput_unit(phase: str) -> str:
    """The unit of a step's ``tokens_per_s`` for ``phase`` (a verify step counts one per sequence)."""
    return THROUGHPUT_UNITS.get(phase, "tokens/s")


@dataclass
class Result:
    """A simulated step.

    ``ops``: DataFrame, one row per op of the trace (``repeat`` = how many times its block runs;
    ``total_*`` = per-op value x repeat); ``latency_s``, ``energy_j``: the whole step;
    ``tokens_per_s``: tokens of the step over its latency; memory in bytes (weights, KV cache,
    SSM recurrent state, peak activations); ``inputs``: what was
    simulated (device, model, phase, options, and the device's ``roof``: :func:`roof`) so a
    report can be rebuilt from the result.
    """

    ops: pd.DataFrame
    latency_s: float
    energy_j: float
    tokens: int
    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    capacity_bytes: float
    inputs: dict[str, Any] = field(default_factory=dict)
    mappings: dict[str, Any] = field(default_factory=dict)
    ssm_state_bytes: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)  # system events: device, name, kind, start, dur (s)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.latency_s if self.latency_s > 0 else float("inf")

    @property
    def memory_bytes(self) -> float:
        return self.weights_bytes + self.kv_cache_bytes + self.ssm_state_bytes + self.activation_bytes

    @property
    def flops(self) -> float:
        return float((self.ops["flops"] * self.ops["repeat"]).sum())

    def summary(self) -> dict[str, Any]:
        return {
            "latency_s": self.latency_s,
            "energy_j": self.energy_j,
            "average_power_w": self.energy_j / self.latency_s if self.latency_s else 0.0,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "flops": self.flops,
            "achieved_flops_per_s": self.flops / self.latency_s if self.latency_s else 0.0,
            "memory_bytes": self.memory_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "ssm_state_bytes": self.ssm_state_bytes,
            "activation_bytes": self.activation_bytes,
            "capacity_bytes": self.capacity_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        ops = self.ops.to_dict(orient="records")
        return {**self.summary(), "inputs": self.inputs, "ops": ops, "mappings": self.mappings, "timeline": self.timeline}

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: non-finite numbers (a side that cannot run an op: inf) become null."""
        return strict_json(self.to_dict(), indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        return cls(
            ops=pd.DataFrame(d["ops"]), latency_s=d["latency_s"], energy_j=d["energy_j"], tokens=d["tokens"],
            weights_bytes=d["weights_bytes"], kv_cache_bytes=d["kv_cache_bytes"],
            activation_bytes=d["activation_bytes"], capacity_bytes=d["capacity_bytes"],
            inputs=d.get("inputs", {}), mappings=d.get("mappings", {}), ssm_state_bytes=d.get("ssm_state_bytes", 0.0),
            timeline=d.get("timeline", []),
        )
