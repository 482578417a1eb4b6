"""The serving simulator's step model, calibrated on the hardware simulator.

An engine iteration runs ``m`` tokens through the model: the prefill chunks' new tokens plus one
token per decoding request. Its time is split the way the simulator's ops split it:

* ``L(m)`` — everything but attention (projections, MLP or experts, norms, collectives, head) for
  ``m`` tokens: simulated at a grid of token counts, interpolated linearly in between;
* decode attention — ``a_d x context`` per request (the KV read), plus a part per step and per
  request (``a_d0 + a_d1 x requests``: kernel launches, a wafer's mesh reductions);
* prefill attention — per chunk of ``t`` new tokens over ``p`` cached ones: the longer of
  ``a_p x t x (p + t / 2)`` (the causal score/context work) and ``a_c x (p + t)`` (a short chunk's
  pass over the cache, which few query rows cannot spread over the device).

``a_d``, ``a_p`` and ``a_c`` are fitted by least squares to the simulated attention time of decode
steps, whole prefills and short chunks over long caches, so the step model stays within the
simulator's own numbers while an iteration costs microseconds (a 10,000-request run takes tens of
thousands of iterations). Where a prefill token costs other than a decode token outside attention
— an SSM layer's state is read once per sequence, a wafer's placement differs — a second curve
``L_p(t)`` is simulated on prefills, and an iteration with ``n`` prefill and ``d`` decode tokens costs
``L_p(n) + L(n + d) - L(n)``.
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
#: the midpoints 3 x 2^k; the prefill curve L_p (SSM models, wafer devices) uses it too
TOKEN_GRID = tuple(sorted({2**k for k in range(15)} | {2**k + 1 for k in range(1, 14)} | {3 * 2**k for k in range(13)}))
#: on a GPU also every 128 tokens (and one past) up to 4,096: its wave staircase repeats about every
#: 256 tokens, and between 3 x 2^k points an H100 prefill was off by -17.7 % (now within +-5 %)
GPU_GRID = tuple(sorted(set(TOKEN_GRID) | {s + e for s in range(128, 4097, 128) for e in (0, 1)}))
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
            raise SpecError("a step model needs a system or a device")
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
        grid = [t for t in (GPU_GRID if self.arch.device_class == "gpu" else TOKEN_GRID) if t <= max_tokens]
        self._grid = np.array(grid, dtype=float)
        self._linear = np.array([self._nonattention(t) for t in grid])
        self._prefill_grid: np.ndarray | None = None
        if self.model.ssm_layers or self.arch.device_class == "wafer":
            pgrid = [t for t in TOKEN_GRID if t <= max_tokens]
            self._prefill_grid = np.array(pgrid, dtype=float)
            self._prefill_linear = np.array([self._nonattention_prefill(t) for t in pgrid])
        self.a_decode = self._fit_decode()
        self.a_prefill = self._fit_prefill()
        self.a_chunk = self._fit_chunk()

    def _no_room(self, weights: float, room: float, memory: float) -> str:
        """The error of weights that fill the engine's share of device memory, with its remedies."""
        from ..dtypes import get_dtype
        from .fit_advice import fewest_devices, plan_flags

        split = fewest_devices(self.model, self.plan, 1, 1, room)  # one short sequence's KV cache at least
        remedies = [f"at least {split.devices} devices ({plan_flags(split)} on a --system)" if split is not None
                    else "devices with more memory"]
        from .engine import _resolves

        per_byte = weights / get_dtype(self.model.weight_dtype).bytes
        fits = [f for f in ("int8", "fp8", "int4") if get_dtype(f).bytes < get_dtype(self.model.weight_dtype).bytes
                and per_byte * get_dtype(f).bytes < room  # only a format whose weights leave room ...
                and _resolves(self.arch, f)]  # ... and that the device computes (a PIM's PUs take no int4)
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

    def _nonattention_prefill(self, tokens: int) -> float:
        res = self._step(Prefill(self.plan.dp, tokens))
        return max(res.latency_s - self._attention_s(res), 0.0)

    def _attention_of(self, res, tokens: int) -> float:
        """A step's attention time: its attention rows where ops cost one after another; on a
        dataflow device, whose fused pipeline shares a block's time among its ops in proportion,
        what the step takes beyond the non-attention time ``L`` of its token count."""
        if self.arch.device_class == "dataflow":
            return max(res.latency_s - self.linear_time(tokens), 0.0)
        return self._attention_s(res)

    def _fit_decode(self) -> float:
        """``a_d`` and the per-step and per-sequence parts ``a_d0``, ``a_d1`` of decode attention, by
        non-negative least squares over decode steps whose KV cache the engine can hold (a step beyond
        it would spill, e.g. an FPGA card's weights into its DDR, which serving never does): attention
        of ``b`` sequences of context ``c`` = ``a_d0 + a_d1 b + a_d b c`` (a wafer's mesh reductions
        cost ~25 us a step whatever the context)."""
        rows, ys = [], []
        cap = self.kv_capacity_tokens // self.plan.dp
        for b, c in ((1, 2), (8, 2), (1, 1024), (8, 1024), (32, 2048), (8, 8192)):
            c = max(2, min(c, cap // b))
            res = self._step(Decode(b * self.plan.dp, c))
            rows.append((1.0, b, b * c))
            ys.append(self._attention_of(res, b))
        from scipy.optimize import nnls

        coef, _ = nnls(np.array(rows), np.array(ys))
        self.a_decode0, self.a_decode1 = float(coef[0]), float(coef[1])
        return float(coef[2])

    def _fit_prefill(self) -> float:
        """``a_p`` by least squares over prefills the engine's KV cache can hold."""
        xs, ys = [], []
        cap = self.kv_capacity_tokens // self.plan.dp
        for t in sorted({max(2, min(t, cap)) for t in (512, 2048, 4096)}):
            res = self._step(Prefill(self.plan.dp, t))
            xs.append(t * t / 2)
            ys.append(self._attention_of(res, t))
        return float(np.dot(xs, ys) / np.dot(xs, xs))

    def _fit_chunk(self) -> float:
        """``a_c`` by least squares over short chunks (64 tokens) over long caches the engine can hold."""
        xs, ys = [], []
        cap = self.kv_capacity_tokens // self.plan.dp
        for p in sorted({max(2, min(p, cap - 64)) for p in (4096, 16000)}):
            res = self._step(Prefill(self.plan.dp, 64, p))
            xs.append(p + 64)
            ys.append(self._attention_of(res, 64))
        return float(np.dot(xs, ys) / np.dot(xs, xs))

    # ------------------------------------------------------------------ the serving simulator's interface
    def linear_time(self, tokens: int) -> float:
        """``L``: the non-attention time of ``tokens`` tokens."""
        return _on_curve(tokens, self._grid, self._linear)

    def iteration_time(self, prefill, decode) -> float:
        """Seconds for one iteration: ``prefill`` chunks (new tokens, cached tokens), one decode
        token for each context in ``decode``."""
        n = sum(t for t, _ in prefill)
        m = n + len(decode)
        t = self.linear_time(m)
        if self._prefill_grid is not None and n:  # prefill tokens on their own curve, decode tokens on top
            t += self._prefill_time(n) - self.linear_time(n)
        if decode:
            t += self.a_decode0 + self.a_decode1 * len(decode) + self.a_decode * float(sum(decode))
        t += float(sum(max(self.a_prefill * c * (p + c / 2), self.a_chunk * (p + c)) for c, p in prefill))
        return t

    def _prefill_time(self, tokens: int) -> float:
        """``L_p``: the non-attention time of ``tokens`` prefill tokens."""
        assert self._prefill_grid is not None
        return _on_curve(tokens, self._prefill_grid, self._prefill_linear)

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
                "a_decode_s_per_token": self.a_decode, "a_decode_step_s": self.a_decode0,
                "a_decode_request_s": self.a_decode1, "a_prefill_s": self.a_prefill,
                "a_chunk_s_per_token": self.a_chunk, "prefill_curve": self._prefill_grid is not None,
                "linear_s_at_1": float(self._linear[0]),
                "linear_s_at_max": float(self._linear[-1]), "devices": self.plan.devices}


def _on_curve(tokens: int, grid: np.ndarray, values: np.ndarray) -> float:
    """A curve simulated at ``grid`` token counts: interpolated linearly between its points, and in
    proportion to the last one past it (0 for no tokens)."""
    if tokens <= 0:
        return 0.0
    if tokens <= grid[-1]:
        return float(np.interp(tokens, grid, values))
    return float(values[-1] * tokens / grid[-1])
