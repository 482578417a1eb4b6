"""Composition of experts (CoE) serving with an expert cache in device memory.

A CoE (SambaNova's Samba-CoE: a router and many expert models, Prabhakar et al., MICRO 2024) sends
each request to one expert. The experts live in the memory behind the devices (a dataflow node's
DDR tier, a GPU server's host DRAM) and an expert is copied into device memory (HBM) when a request
needs it; device memory keeps the most recently used experts that fit beside the resident router
and the KV cache (least-recently-used replacement, as the SN40L paper describes).

Per request: the router reads the prompt (a prefill of the router model, resident), the expert is
switched in on a miss (:func:`switch_seconds`), then the expert prefills the prompt and decodes the
output tokens (each decode step costed at the mean context). The steps are the system simulator's
(:func:`~xpusim.sim.events.simulate_system`, tensor-parallel over every device); the cache is exact
LRU over a seeded request stream (experts drawn with Zipf popularity ``p_i ~ (i+1)^-skew``). The
loop in :func:`lru_hits` is one dictionary operation per request, never per device or per byte.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arch.system import System, load_system
from ..errors import CapacityError, SpecError
from ..workloads.model import ModelSpec, load_model
from ..workloads.phases import Decode, Prefill


def switch_seconds(system: System, nbytes: float) -> float:
    """Seconds to bring ``nbytes`` of model weights into device memory: a dataflow system copies them
    DDR to HBM on every socket at once (the model split over them); a GPU system over one GPU's host
    link (``host_link``: the host-to-GPU copy rate the SN40L paper compares against)."""
    if system.device.device_class == "dataflow":
        from ..arch.rdu import rdu_spec

        return nbytes / (rdu_spec(system.device).ddr_Bps * system.n_devices)
    link = system.meta.get("host_link_Bps")
    if not link:
        raise SpecError(f"system {system.name!r} gives no host_link bandwidth to load a model over; add "
                        "host_link: (e.g. '63 GB/s', PCIe Gen5 x16) to the system YAML")
    return nbytes / link


def expert_store_bytes(system: System) -> float | None:
    """Bytes of the memory the experts live in: a dataflow node's DDR tier over every socket; ``None``
    (not bounded here) for a GPU server's host DRAM."""
    if system.device.device_class == "dataflow":
        from ..arch.rdu import rdu_spec

        return rdu_spec(system.device).ddr_bytes * system.n_devices
    return None


def expert_stream(experts: int, requests: int, skew: float, seed: int) -> np.ndarray:
    """The expert each of ``requests`` requests goes to: Zipf popularity over ``experts`` ranks
    (``skew`` 0 is uniform), drawn with numpy's seeded generator."""
    p = np.arange(1, experts + 1, dtype=float) ** -skew
    return np.random.default_rng(seed).choice(experts, size=requests, p=p / p.sum())


def lru_hits(stream: np.ndarray, slots: int) -> np.ndarray:
    """For each request, whether its expert is already in a least-recently-used cache of ``slots``
    experts (a miss loads it, evicting the least recently used when full)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = np.zeros(len(stream), dtype=bool)
    for i, e in enumerate(stream.tolist()):
        if e in cache:
            hits[i] = True
            cache.move_to_end(e)
        elif slots > 0:
            if len(cache) >= slots:
                cache.popitem(last=False)
            cache[e] = None
    return hits


@dataclass(frozen=True)
class CoeResult:
    """Mean time per request (s) by part, the cache's slots and hit rate, and the inputs."""

    system: str
    model: str
    experts: int
    requests: int
    slots: int
    hit_rate: float
    expert_bytes: float
    router_s: float
    switch_s: float  # one miss
    prefill_s: float
    decode_step_s: float
    output: int
    batch: int

    @property
    def mean_switch_s(self) -> float:
        return (1.0 - self.hit_rate) * self.switch_s

    @property
    def request_s(self) -> float:
        """Mean seconds per request (a batch of ``batch`` sequences to one expert)."""
        return self.router_s + self.mean_switch_s + self.prefill_s + self.output * self.decode_step_s

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d.update(mean_switch_s=self.mean_switch_s, request_s=self.request_s, requests_per_s=1.0 / self.request_s)
        return d


def cache_slots(system: System, expert: ModelSpec, router: ModelSpec | None, batch: int, tokens: int) -> int:
    """Experts device memory holds beside the resident router and the KV cache of ``batch`` sequences
    of ``tokens`` (the expert's and the router's); :class:`CapacityError` if not even one fits."""
    dev = system.device.backing
    capacity = dev.capacity_bytes * dev.instances * system.n_devices
    reserved = expert.kv_cache_bytes(batch, tokens)
    if router is not None:
        reserved += router.weights_bytes + router.kv_cache_bytes(batch, tokens)
    slots = math.floor((capacity - reserved) / expert.weights_bytes)
    if slots < 1:
        gib = 2.0**30
        raise CapacityError(f"{system.name}'s device memory ({capacity / gib:.0f} GiB) holds the router and KV cache "
                            f"({reserved / gib:.1f} GiB) but not one {expert.name} expert ({expert.weights_bytes / gib:.1f} "
                            "GiB); use a smaller batch, a smaller expert or a system with more device memory")
    return slots


def simulate_coe(system: System | str, model: ModelSpec | str, experts: int, requests: int, prompt: int, output: int,
                 skew: float = 1.0, seed: int = 0, batch: int = 1, router: bool = True,
                 slots: int | None = None) -> CoeResult:
    """Serve ``requests`` requests (each ``batch`` sequences of ``prompt`` tokens, ``output`` generated)
    with ``experts`` experts of ``model`` on ``system`` (tensor-parallel over all its devices),
    experts drawn with Zipf ``skew``; ``router``: a resident router of the same model reads every
    prompt first; ``slots``: the cache size in experts (default: what device memory holds)."""
    from .events import simulate_system
    from .parallel import Plan

    for name, v in (("experts", experts), ("requests", requests), ("prompt", prompt), ("output", output), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"coe: {name} must be a positive integer, got {v!r}")
    if not (isinstance(skew, int | float) and math.isfinite(skew) and skew >= 0):
        raise SpecError(f"coe: skew must be a finite number >= 0 (0: every expert equally popular), got {skew!r}")
    system = load_system(system)
    model = load_model(model)
    store = expert_store_bytes(system)
    if store is not None and experts * model.weights_bytes > store:
        raise CapacityError(f"coe: {experts} experts of {model.weights_bytes / 1e9:.1f} GB need "
                            f"{experts * model.weights_bytes / 1e12:.2f} TB but {system.name}'s DDR holds "
                            f"{store / 1e12:.2f} TB; use at most {int(store // model.weights_bytes)} experts")
    tokens = prompt + output
    if slots is None:
        slots = cache_slots(system, model, model if router else None, batch, tokens)
    elif isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise SpecError(f"coe: slots must be an integer >= 0, got {slots!r}")
    hits = lru_hits(expert_stream(experts, requests, float(skew), seed), slots)
    plan = Plan(tp=system.n_devices)

    def step(phase: Any) -> float:
        return float(simulate_system(system, model, phase, plan, check_memory=False).latency_s)

    prefill = step(Prefill(batch, prompt))
    return CoeResult(system=system.name, model=model.name, experts=experts, requests=requests, slots=int(slots),
                     hit_rate=float(hits.mean()), expert_bytes=float(model.weights_bytes),
                     router_s=prefill if router else 0.0, switch_s=switch_seconds(system, model.weights_bytes),
                     prefill_s=prefill, decode_step_s=step(Decode(batch, prompt + output // 2)), output=output, batch=batch)
