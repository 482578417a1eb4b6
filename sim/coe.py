"""Composition of experts (CoE) serving with an expert cache in device memory.

A CoE (SambaNova's Samba-CoE: a router and many expert models, Prabhakar et al., MICRO 2024) sends
each request to one expert. The experts live in the memory behind the devices (a dataflow node's
DDR tier, a GPU server's host DRAM) and an expert is copied into device memory (HBM) when a request
needs it; device memory keeps the most recently used experts that fit beside the resident router
and the KV cache (least-recently-used replacement, as the SN40L paper describes).

Per request: the router reads the prompt (a prefill of the router model, resident), the expert is
switched in on a miss (:func:`switch_seconds`), then the expert prefills the prompt and decodes the
output tokens (each decode step costed at the mean context). The steps are the system simulator's
(:func:`~xpusim.sim.events.simulate_system`, tensor-parallel over the group of devices that serves
the experts, by default all; each device loads its share of a switched-in expert); the cache is exact
LRU over a seeded request stream (experts drawn with Zipf popularity ``p_i ~ (i+1)^-skew``), from an
empty cache (the hit rate includes the first requests' compulsory misses). The
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


def switch_seconds(system: System, nbytes: float, devices: int) -> float:
    """Seconds to bring ``nbytes`` of model weights into the memory of the ``devices`` devices that run
    the model (its tensor-parallel group), each loading its share at once: a dataflow socket from its
    DDR tier into its HBM; a GPU over its own host link (``host_link``: PCIe to host DRAM; a model on
    one GPU loads over that GPU's link alone, as the SN40L paper compares)."""
    if not 1 <= devices <= system.n_devices:
        raise SpecError(f"a model switch on {system.name} runs on 1 to {system.n_devices} devices, got {devices}")
    if system.device.device_class == "dataflow":
        from ..arch.rdu import rdu_spec

        return nbytes / (rdu_spec(system.device).ddr_Bps * devices)
    link = system.meta.get("host_link_Bps")
    if not link:
        raise SpecError(f"system {system.name!r} gives no host_link bandwidth to load a model over; add "
                        "host_link: (e.g. '63 GB/s', PCIe Gen5 x16) to the system YAML")
    return nbytes / (link * devices)


def expert_store_bytes(system: System, devices: int) -> float | None:
    """Bytes of the memory the experts live in: the DDR tier of a dataflow group's ``devices`` sockets;
    ``None`` (not bounded here) for a GPU server's host DRAM."""
    if system.device.device_class == "dataflow":
        from ..arch.rdu import rdu_spec

        return rdu_spec(system.device).ddr_bytes * devices
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
    tp: int
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
        """Mean seconds per request (a batch of ``batch`` sequences to one expert): the router, the
        switch, the prefill (which gives the first output token) and ``output - 1`` decode steps."""
        return self.router_s + self.mean_switch_s + self.prefill_s + (self.output - 1) * self.decode_step_s

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d.update(mean_switch_s=self.mean_switch_s, request_s=self.request_s, requests_per_s=1.0 / self.request_s)
        return d


def cache_slots(system: System, expert: ModelSpec, router: ModelSpec | None, devices: int, batch: int, prompt: int,
                output: int) -> int:
    """Experts the memory of ``devices`` devices holds beside the resident router (its weights and the
    KV of the prompt it reads) and the expert's KV cache of ``batch`` sequences of ``prompt + output``
    tokens; :class:`CapacityError` if not even one fits."""
    dev = system.device.backing
    capacity = dev.capacity_bytes * dev.instances * devices
    reserved = expert.kv_cache_bytes(batch, prompt + output)
    if router is not None:
        reserved += router.weights_bytes + router.kv_cache_bytes(batch, prompt)
    slots = math.floor((capacity - reserved) / expert.weights_bytes)
    if slots < 1:
        gib = 2.0**30
        raise CapacityError(f"the memory of {devices} {system.device.name} device(s) ({capacity / gib:.0f} GiB) holds the "
                            f"router and KV cache ({reserved / gib:.1f} GiB) but not one {expert.name} expert "
                            f"({expert.weights_bytes / gib:.1f} GiB); use more devices (--tp), a smaller batch or a "
                            "smaller expert")
    return slots


#: the most experts a composition may have (the request stream draws over an array of this length)
MAX_EXPERTS = 1_000_000


def simulate_coe(system: System | str, model: ModelSpec | str, experts: int, requests: int, prompt: int, output: int,
                 skew: float = 1.0, seed: int = 0, batch: int = 1, router: bool = True, tp: int | None = None,
                 slots: int | None = None) -> CoeResult:
    """Serve ``requests`` requests (each ``batch`` sequences of ``prompt`` tokens, ``output`` generated)
    with ``experts`` experts of ``model`` on ``tp`` devices of ``system`` (default: all; the expert
    runs tensor-parallel over them and each loads its share when switched in), experts drawn with
    Zipf ``skew``; ``router``: a resident router of the same model reads every prompt first;
    ``slots``: the cache size in experts (default and most: what those devices' memory holds)."""
    from .events import simulate_system
    from .parallel import Plan

    for name, v in (("experts", experts), ("requests", requests), ("prompt", prompt), ("output", output), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"coe: {name} must be a positive integer, got {v!r}")
    if experts > MAX_EXPERTS:
        raise SpecError(f"coe: at most {MAX_EXPERTS:,} experts, got {experts:,}")
    if not (isinstance(skew, int | float) and math.isfinite(skew) and skew >= 0):
        raise SpecError(f"coe: skew must be a finite number >= 0 (0: every expert equally popular), got {skew!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"coe: seed must be an integer >= 0, got {seed!r}")
    system = load_system(system)
    model = load_model(model)
    tp = system.n_devices if tp is None else tp
    if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= system.n_devices:
        raise SpecError(f"coe: tp must be 1 to {system.n_devices} (the devices of {system.name}), got {tp!r}")
    store = expert_store_bytes(system, tp)
    if store is not None and experts * model.weights_bytes > store:
        raise CapacityError(f"coe: {experts} experts of {model.weights_bytes / 1e9:.1f} GB need "
                            f"{experts * model.weights_bytes / 1e12:.2f} TB but the DDR of {tp} {system.device.name} "
                            f"socket(s) holds {store / 1e12:.2f} TB; use at most {int(store // model.weights_bytes)} experts")
    most = cache_slots(system, model, model if router else None, tp, batch, prompt, output)
    if slots is None:
        slots = most
    elif isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= most:
        raise SpecError(f"coe: slots must be an integer from 0 to {most} (the experts device memory holds beside the "
                        f"router and KV cache), got {slots!r}")
    hits = lru_hits(expert_stream(experts, requests, float(skew), seed), slots)
    plan = Plan(tp=tp)

    def step(phase: Any) -> float:
        return float(simulate_system(system, model, phase, plan, check_memory=False).latency_s)

    prefill = step(Prefill(batch, prompt))
    return CoeResult(system=system.name, model=model.name, experts=experts, requests=requests, tp=tp, slots=int(slots),
                     hit_rate=float(hits.mean()), expert_bytes=float(model.weights_bytes),
                     router_s=prefill if router else 0.0, switch_s=switch_seconds(system, model.weights_bytes, tp),
                     prefill_s=prefill, decode_step_s=step(Decode(batch, prompt + output // 2)), output=output, batch=batch)
