"""The serving simulator's step model, calibrated on the hardware simulator.

An engine iteration runs ``m`` tokens through the model: the prefill chunks' new tokens plus one
token per decoding request. Its time is split the way the simulator's ops split it:

* ``L(m)`` — everything but attention (projections, MLP or experts, norms, collectives, head) for
  ``m`` tokens: simulated at a grid of token counts, interpolated linearly in between;
* decode attention — per request, linear in its context: ``a_d x context`` (the KV read);
* prefill attention — per chunk of ``t`` new tokens over ``p`` cached ones:
  ``a_p x t x (p + t / 2)`` (the causal score/context work).

``a_d`` and ``a_p`` are fitted by least squares to the simulated attention time of decode steps and
prefills at several sizes, so the step model stays within the simulator's own numbers while an
iteration costs microseconds (10,000-request runs need hundreds of thousands of iterations).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CapacityError, SpecError
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Decode, Prefill
from .parallel import Plan, shard_model, stage_footprints

#: token counts L(m) is simulated at: powers of two, one token past each (a new tile or wave starts
#: there: interpolating from below would miss the step, -23 % at 513 prefill tokens on an H100) and
#: the midpoints 3 x 2^k (worst interpolation error of a prefill's time on an H100 now -7 %)
TOKEN_GRID = tuple(sorted({2**k for k in range(15)} | {2**k + 1 for k in range(1, 14)} | {3 * 2**k for k in range(13)}))
MEMORY_UTILIZATION = 0.9  # fraction of device memory an engine plans with (vLLM's default gpu_memory_utilization)


class SimStepModel:
    """Iteration times and KV capacity of one engine (``plan`` over ``system``'s devices, or one
    device ``arch`` when ``system`` is None). The weights and KV cache share ``memory_utilization``
    of each device's memory; the model runs in the device's engine formats except the tensor
    classes in ``keep_formats`` (see :func:`~xpusim.sim.engine.with_engine_formats`)."""

    def __init__(self, model: ModelSpec | str, plan: Plan | None = None, system: Any = None, arch: Any = None,
                 max_tokens: int = 16384, memory_utilization: float = MEMORY_UTILIZATION,
                 keep_formats: tuple[str, ...] | set[str] = ()) -> None:
        if isinstance(memory_utilization, bool) or not isinstance(memory_utilization, int | float) \
                or not 0 < memory_utilization <= 1:
            raise SpecError(f"memory utilization {memory_utilization!r} must be a fraction of device memory in (0, 1]")
        self.memory_utilization = float(memory_utilization)
        self.model = load_model(model)
        plan = plan or Plan()
        if plan.dp > 1:  # one engine's iterations: data-parallel replicas are separate engines
            raise SpecError(f"a serving step model prices one engine's iterations; {plan.describe()} has {plan.dp} "
                            "data-parallel replicas: model one replica (dp 1) and scale the request rate by the replicas")
        self.plan, self.system = plan, system
        if system is None and arch is None:
            raise CapacityError("a step model needs a system or a device")
        from ..arch.loader import load_arch

        self.arch = system.device if system is not None else load_arch(arch)
        from .engine import with_engine_formats

        self.model = with_engine_formats(self.model, self.arch, keep_formats)  # e.g. an FPGA's INT8
        shard = shard_model(self.model, plan)
        memory = self.arch.backing.capacity_bytes * self.arch.backing.instances
        room = self.memory_utilization * memory
        stages = stage_footprints(shard, plan, 1, 1)  # per stage: weights, KV bytes per cached token
        weights = max(w for w, _, _ in stages)
        if room - weights <= 0:
            raise CapacityError(self._no_room(weights, room, memory))
        tokens = [int((room - w) // kv) for w, kv, _ in stages if kv > 0]  # the stage that fills first bounds it
        self.kv_capacity_tokens = min(tokens) * plan.dp if tokens else 10**12
        # a recurrent state (Mamba, Jamba) per running sequence: the sequences whose state fits beside the
        # weights bound the batch (the KV pool does not reserve it)
        states = [int((room - w) // st) for w, _, st in stages if st > 0]
        self.max_sequences = min(states) * plan.dp if states else None
        self.kv_bytes_per_token = self.model.kv_bytes_per_token
        grid = [t for t in TOKEN_GRID if t <= max_tokens]
        self._grid = np.array(grid, dtype=float)
        self._linear = np.array([self._nonattention(t) for t in grid])
        self.a_decode = self._fit_decode()
        self.a_prefill = self._fit_prefill()

    def _no_room(self, weights: float, room: float, memory: float) -> str:
        """The error of weights that fill the engine's share of device memory, with its remedies."""
        from ..dtypes import get_dtype
        from .fit_advice import fewest_devices, plan_flags

        split = fewest_devices(self.model, self.plan, 1, 1, room)  # one short sequence's KV cache at least
        remedies = [f"at least {split.devices} devices ({plan_flags(split)} on a --system)" if split is not None
                    else "devices with more memory"]
        per_byte = weights / get_dtype(self.model.weight_dtype).bytes
        fits = [f for f in ("fp8", "int4") if get_dtype(f).bytes < get_dtype(self.model.weight_dtype).bytes
                and per_byte * get_dtype(f).bytes < room]  # only a format whose weights leave room
        if fits:
            remedies.append(f"{fits[0]} weights (--weight-dtype {fits[0]})")
        if self.memory_utilization < 1 and weights < memory:  # only when all of memory would hold the weights
            remedies.append("a larger --memory-utilization")
        return (f"{self.model.name}'s weights ({weights / 2**30:.1f} GiB per device under {self.plan.describe()}) leave "
                f"no room for a KV cache in {100 * self.memory_utilization:g} % of {self.arch.name}'s "
                f"{memory / 2**30:.1f} GiB ({room / 2**30:.1f} GiB, --memory-utilization); use "
                + " or ".join(filter(None, (", ".join(remedies[:-1]), remedies[-1]))))

    # ------------------------------------------------------------------ calibration on the simulator
    def _step(self, phase) -> Any:
        if self.system is not None:
            from .events import simulate_system

            return simulate_system(self.system, self.model, phase, self.plan, check_memory=False)
        from .engine import simulate

        return simulate(self.arch, self.model, phase, check_memory=False)

    @staticmethod
    def _attention_s(res) -> float:
        """Seconds of a step's attention: a GPU's fused kernels, or the score and context products and
        the softmax other devices run as separate ops."""
        ops = res.ops
        parts = ops["name"].str.endswith(("attn_score", "attn_context"))
        attention = ops["kind"].isin(("attention", "softmax")) | ((ops["kind"] == "matmul") & parts)
        return float(ops.loc[attention, "total_latency_s"].sum())

    def _nonattention(self, tokens: int) -> float:
        res = self._step(Decode(tokens * self.plan.dp, 2))
        return max(res.latency_s - self._attention_s(res), 0.0)

    def _attention_of(self, res, tokens: int) -> float:
        """A step's attention time: its attention rows where ops cost one after another; on a
        dataflow device, whose fused pipeline shares a block's time among its ops in proportion,
        what the step takes beyond the non-attention time ``L`` of its token count."""
        if self.arch.device_class == "dataflow":
            return max(res.latency_s - self.linear_time(tokens), 0.0)
        return self._attention_s(res)

    def _fit_decode(self) -> float:
        """``a_d`` by least squares over decode steps whose KV cache the engine can hold (a step
        beyond it would spill, e.g. an FPGA card's weights into its DDR, which serving never does)."""
        xs, ys = [], []
        cap = self.kv_capacity_tokens // self.plan.dp
        for b, c in ((8, 1024), (32, 2048), (8, 8192)):
            c = max(2, min(c, cap // b))
            res = self._step(Decode(b * self.plan.dp, c))
            xs.append(b * c)
            ys.append(self._attention_of(res, b))
        return float(np.dot(xs, ys) / np.dot(xs, xs))

    def _fit_prefill(self) -> float:
        """``a_p`` by least squares over prefills the engine's KV cache can hold."""
        xs, ys = [], []
        cap = self.kv_capacity_tokens // self.plan.dp
        for t in sorted({max(2, min(t, cap)) for t in (512, 2048, 4096)}):
            res = self._step(Prefill(self.plan.dp, t))
            xs.append(t * t / 2)
            ys.append(self._attention_of(res, t))
        return float(np.dot(xs, ys) / np.dot(xs, xs))

    # ------------------------------------------------------------------ the serving simulator's interface
    def linear_time(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return float(np.interp(tokens, self._grid, self._linear, right=np.nan)) if tokens <= self._grid[-1] else \
            float(self._linear[-1] * tokens / self._grid[-1])

    def iteration_time(self, prefill, decode) -> float:
        """Seconds for one iteration: ``prefill`` chunks (new tokens, cached tokens), one decode
        token for each context in ``decode``."""
        m = sum(t for t, _ in prefill) + len(decode)
        t = self.linear_time(m)
        t += self.a_decode * float(sum(decode))
        t += self.a_prefill * float(sum(n * (p + n / 2) for n, p in prefill))
        return t

    def kv_transfer_time(self, tokens: int) -> float:
        """Moving ``tokens`` of KV cache from a prefill engine to a decode engine over the system's
        fabric (each tensor-parallel rank sends its share in parallel)."""
        nbytes = tokens * self.kv_bytes_per_token
        if self.system is None:
            return nbytes / (self.arch.backing.bandwidth_Bps * self.arch.backing.instances)
        link = self.system.inter if self.system.nodes > 1 and self.system.inter is not None else self.system.intra
        return link.latency_s + nbytes / (link.bandwidth_Bps * self.plan.tp)

    def describe(self) -> dict[str, Any]:
        from .engine import model_formats

        return {"model": self.model.name, "device": self.arch.name, "plan": self.plan.describe(),
                "formats": model_formats(self.model),
                "memory_utilization": self.memory_utilization, "kv_capacity_tokens": self.kv_capacity_tokens,
                "a_decode_s_per_token": self.a_decode, "a_prefill_s": self.a_prefill, "linear_s_at_1": float(self._linear[0]),
                "linear_s_at_max": float(self._linear[-1]), "devices": self.plan.devices}


def scaled(model: SimStepModel, **changes: Any) -> SimStepModel:
    """A copy with some attributes changed (tests)."""
    out = SimStepModel.__new__(SimStepModel)
    out.__dict__.update({**model.__dict__, **changes})
    return out

