"""Remedies a memory-fit error offers, each checked against the per-device footprint the parallel
code holds (:func:`~xpusim.sim.parallel.stage_footprints`): the fewest devices a model splits over,
and the format, batch and context changes that alone make the step fit."""

from __future__ import annotations

from collections.abc import Callable

from ..dtypes import get_dtype
from ..errors import SpecError
from ..workloads.model import ModelSpec
from ..workloads.phases import Phase, Prefill
from .parallel import Plan, shard_model, stage_footprints


def device_bytes(model: ModelSpec, plan: Plan, batch: int, kv_len: int) -> float:
    """Weight, KV-cache and SSM-state bytes of the busiest device under ``plan`` (``batch``: one
    replica's sequences)."""
    return max(map(sum, stage_footprints(shard_model(model, plan), plan, batch, kv_len)))


def plan_flags(plan: Plan) -> str:
    """``plan`` as the simulate flags that give it."""
    return " ".join(f"--{k} {getattr(plan, k)}" for k in ("tp", "pp", "dp", "ep") if getattr(plan, k) > 1) or "--tp 1"


def fewest_devices(model: ModelSpec, like: Plan, batch: int, kv_len: int, capacity: float, reserve: float = 0.0) -> Plan | None:
    """The tp x pp plan (``like``'s dp, experts spread as ``like`` spreads them) with the fewest devices,
    then the widest tp, whose busiest device holds its weights, KV cache and state plus ``reserve``
    bytes in ``capacity``; None when no split does."""
    best: Plan | None = None
    heads = max(model.n_heads, 1)
    for tp in (t for t in range(1, heads + 1) if heads % t == 0):
        for pp in range(1, model.n_layers + 1):
            if best is not None and tp * pp * like.dp > best.devices:
                break
            try:
                cand = Plan(tp=tp, pp=pp, dp=like.dp, ep=tp * like.dp if like.ep > 1 else 1)
                held = device_bytes(model, cand, batch, kv_len)
            except SpecError:  # a degree the model's sizes do not divide by
                break
            if held + reserve <= capacity:
                if best is None or (cand.devices, -cand.tp) < (best.devices, -best.tp):
                    best = cand
                break
    return best


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest ``n`` in ``[low, high]`` with ``fits(n)`` (``fits`` monotone), else ``low - 1``."""
    best = low - 1
    while low <= high:
        mid = (low + high) // 2
        if fits(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def fitting_changes(model: ModelSpec, plan: Plan, phase: Phase, memory: float, capacity: float,
                    devices: int = 0, activations: float = 0.0, chunkable: bool = True, chunk: int = 0) -> list[str]:
    """The changes that alone bring a device holding ``memory`` bytes under ``capacity``: an fp8 KV
    cache, narrower weights (with another split of up to ``devices`` devices where ``plan``'s is not
    enough), a smaller batch, a shorter context, and for a prefill a chunked one (``--chunk``); each
    estimated from the footprint difference it makes. The step's ``activations`` (bytes, part of
    ``memory``) scale with the tokens a step processes: the batch, and a prefill's prompt or chunk
    (offered where ``chunkable``: a single-device prefill; ``chunk``: the chunk the step already runs)."""
    batch, kv_len = phase.batch // plan.dp, phase.kv_len
    base = device_bytes(model, plan, batch, kv_len)
    prefill = isinstance(phase, Prefill)
    seq = phase.seq if isinstance(phase, Prefill) else 0
    prefix = kv_len - seq
    step = min(chunk or seq, seq) if prefill else 1  # prompt tokens per sequence one step processes

    def fits(m: ModelSpec = model, b: int = batch, n: int = kv_len, per_step: int = step) -> bool:
        """``per_step``: prompt tokens per sequence a step processes (a chunk's)."""
        act = activations * b / batch * (min(n - prefix, per_step) / step if prefill else 1.0)
        return memory - activations - base + device_bytes(m, plan, b, n) + act <= capacity

    def split(m: ModelSpec) -> str | None:
        """The format change as a remedy: alone, or with the smallest split of ``devices`` that holds it."""
        if fits(m):
            return ""
        alt = fewest_devices(m, plan, batch, kv_len, capacity, reserve=memory - base) if devices else None
        return f" with {plan_flags(alt)}" if alt is not None and alt.devices <= devices else None

    out = []
    exact = not model.encoder_layers and not getattr(phase, "shared_prefix", 0)  # footprints as stage_footprints counts
    if get_dtype(model.kv_dtype).bytes > 1 and (how := split(model.with_formats(kv="fp8"))) is not None:
        out.append(f"an fp8 KV cache (--kv-dtype fp8{how})")
    for f in ("fp8", "int4"):
        if get_dtype(f).bytes < get_dtype(model.weight_dtype).bytes and (how := split(model.with_formats(weights=f))) is not None:
            out.append(f"{f} weights (--weight-dtype {f}{how})")
            break
    flag, given = ("--seq", phase.seq) if isinstance(phase, Prefill) else ("--context", getattr(phase, "context", 0))
    if not exact:
        return [*out, "a smaller batch" if batch > 1 else f"a smaller {flag}"]
    smaller = _largest(1, batch - 1, lambda b: fits(b=b))
    if smaller >= 1:
        out.append(f"a batch of {smaller * plan.dp} or less")
    shorter = _largest(kv_len - given + 1, kv_len - 1, lambda n: fits(n=n))
    if shorter >= kv_len - given + 1:
        out.append(f"{flag} {shorter - (kv_len - given)} or less")
    if chunkable and prefill and step > 1 and activations:  # the whole prompt cached, one chunk's activations at a time
        smaller_chunk = _largest(1, step - 1, lambda c: fits(per_step=c))
        if smaller_chunk >= 1:
            out.append(f"{'a smaller --chunk' if chunk else 'a chunked prefill (--chunk'} {smaller_chunk} or less"
                       f"{'' if chunk else ')'}")
    return out
