"""Request-level LLM serving simulator: arrivals, an iteration-level scheduler, a paged KV cache
and per-request latency metrics, independent of how one engine iteration is timed.

The time of an iteration comes from a **step model** (:class:`StepModel`): ``iteration_time(prefill,
decode)`` for a batch of prefill chunks ``(new tokens, tokens already cached)`` and decodes (each
request's context length, the new token included), ``kv_transfer_time(tokens)`` for disaggregated
serving, and ``kv_capacity_tokens``, the KV-cache tokens the pool holds after the weights. A step
model stands for a whole pool (one device or a tensor-parallel group); the hardware-backed one
lives elsewhere, any object with these members works.

Requests (:mod:`.serving_requests`): ``Request(id, arrival_s, input_tokens, output_tokens)``,
:func:`poisson_requests` and :func:`read_trace`. A request emits its first output token at the end
of its prefill and one more per decode iteration; it is done after ``output_tokens`` tokens.

**KV cache** (vLLM, Kwon et al., SOSP'23, "Efficient Memory Management for LLM Serving with
PagedAttention"): the pool holds ``kv_capacity_tokens // block_size`` blocks of ``block_size``
tokens. Admission reserves the blocks of the whole prompt; a decode that needs a new block takes
one; a request frees all of its blocks when it finishes. When a decode needs a block and none is
free the scheduler **preempts** (vLLM's recompute policy): the most recently arrived running request
loses its blocks and goes back to the front of the waiting queue; when re-admitted it prefills its
prompt and every token it had emitted (``input + emitted`` tokens, one iteration or chunks) and that
prefill emits its next token, so no token is emitted twice. Admission is FCFS without skipping. A
request whose full context (``input + output - 1`` tokens) cannot fit an empty pool is an error
up front (it could never finish).

**Schedulers** (iteration-level: Yu et al., "Orca", OSDI'22):

* ``static``: when the engine is free it takes up to ``max_batch`` arrived requests in arrival
  order whose whole contexts fit the KV pool (reserved up front, so no preemption), prefills them in
  one iteration, then decodes the batch until its last request finishes (finished requests leave
  the decode batch; no padding cost is charged, so this baseline is optimistic); the next batch
  waits for that. No waiting for a batch to fill. ``max_batched_tokens`` does not apply.
* ``continuous`` (Orca; vLLM's default scheduler without chunked prefill): every iteration first
  admits waiting requests (at most ``max_batch`` running, at most ``max_batched_tokens`` prompt
  tokens per iteration, blocks for each whole prompt free); if any were admitted the iteration is
  prefill-only (their whole prompts), otherwise every running request decodes one token. A prompt
  longer than ``max_batched_tokens`` is an error (use ``chunked``); a recompute longer than it runs
  alone.
* ``chunked`` (Agrawal et al., "Sarathi-Serve", OSDI'24; DeepSpeed-FastGen Dynamic SplitFuse): every
  iteration has a budget of ``chunk_size`` tokens; every decoding request takes one (decodes are
  never stalled, even past the budget), what is left goes to prefill chunks, first of partially
  prefilled requests (oldest first) then of newly admitted ones (blocks for the whole prompt
  reserved at admission, as vLLM does); a chunk attends to the request's cached tokens.
  ``max_batched_tokens`` does not apply (the chunk size is the budget).
* ``disaggregated`` (Zhong et al., "DistServe", OSDI'24; Patel et al., "Splitwise", ISCA'24): a
  prefill pool (``prefill_step``) runs prefill-only iterations (admission as ``continuous``:
  ``max_batch`` prompts, ``max_batched_tokens``, its own KV blocks); a prefilled request keeps its
  blocks there until the decode pool (``step``) has room for its KV (FCFS, at most ``max_batch``
  requests running or arriving there), then its KV moves over one link, transfers one at a time in
  FIFO order, taking ``prefill_step.kv_transfer_time(tokens)`` (not overlapped with compute: a
  conservative choice); the decode pool runs decode-only continuous batching. A request preempted on
  the decode pool re-queues at the front of the prefill pool and recomputes there. Give the two step
  models the devices of each pool; compare against a colocated pool with the same total.

**Metrics** (per request, DataFrame :attr:`ServeResult.requests`): ``ttft_s`` = first output token
time - arrival (the end of the prefill iteration that emits it; on the prefill pool when
disaggregated); ``tpot_s`` = (finish - first token) / (output_tokens - 1), the mean time between
output tokens after the first (NaN for one-token outputs; it includes waiting, preemption and KV
transfer); ``e2e_s`` = finish - arrival; ``queue_s`` = first scheduled - arrival. Aggregates
(:meth:`ServeResult.summary`): mean, p50, p90, p99 (numpy linear interpolation) over requests;
``makespan_s`` = last finish - first arrival; throughput = output tokens / makespan and requests /
makespan; goodput = requests meeting the SLO / makespan, where a request meets it when ``ttft_s <=
slo_ttft_s`` and ``tpot_s <= slo_tpot_s`` (each only if given; one-token outputs meet any TPOT SLO;
no SLO: goodput = request throughput); preemptions; recomputed prefill tokens.

Every run is deterministic: requests are processed in arrival order (ties in input order) and no
randomness is used inside the simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CapacityError, ShapeError, SpecError
from .serving_requests import Request, TokenSpec, poisson_requests, read_trace, sample_tokens
from .serving_sched import SCHEDULERS, ServingSim, StepModel

__all__ = ["Request", "ServeResult", "StepModel", "TokenSpec", "SCHEDULERS", "poisson_requests", "read_trace",
           "sample_tokens", "simulate_serving", "REQUEST_COLUMNS", "TIMELINE_COLUMNS"]

#: columns of :attr:`ServeResult.requests`, one row per request in arrival order
REQUEST_COLUMNS = ["id", "arrival_s", "input_tokens", "output_tokens", "scheduled_s", "first_token_s", "finish_s",
                   "queue_s", "ttft_s", "tpot_s", "e2e_s", "generated_tokens", "decode_steps", "preemptions", "prefill_tokens",
                   "kv_transfer_s", "batch", "meets_slo"]
#: columns of :attr:`ServeResult.timeline`, one row per engine iteration in start order
TIMELINE_COLUMNS = ["start_s", "duration_s", "pool", "n_prefill_tokens", "n_prefill", "n_decode"]


def _stats(x: np.ndarray, name: str) -> dict[str, float | None]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {f"{name}_mean_s": None, f"{name}_p50_s": None, f"{name}_p90_s": None, f"{name}_p99_s": None}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {f"{name}_mean_s": float(x.mean()), f"{name}_p50_s": float(p50), f"{name}_p90_s": float(p90),
            f"{name}_p99_s": float(p99)}


@dataclass
class ServeResult:
    """The outcome of :func:`simulate_serving`.

    ``requests``: one row per request (columns :data:`REQUEST_COLUMNS`; ``batch`` is the static
    batch number, -1 for other schedulers); ``timeline``: one row per engine iteration
    (:data:`TIMELINE_COLUMNS`; ``pool`` is ``colocated``, ``prefill`` or ``decode``);
    ``preemptions``: recompute preemptions in all; ``kv_transfers`` / ``kv_transfer_s``: KV moves of
    a disaggregated run and their summed time; ``config``: the scheduler settings.
    """

    scheduler: str
    requests: pd.DataFrame
    timeline: pd.DataFrame
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    preemptions: int = 0
    kv_transfers: int = 0
    kv_transfer_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def makespan_s(self) -> float:
        """Last finish - first arrival."""
        r = self.requests
        return float(r["finish_s"].max() - r["arrival_s"].min())

    def summary(self) -> dict[str, Any]:
        """Aggregate metrics as a flat, JSON-serialisable dict (``None`` where undefined, e.g. TPOT
        when every output is one token); see the module docstring for definitions."""
        r, tl = self.requests, self.timeline
        span = self.makespan_s
        met = int(r["meets_slo"].sum())
        out: dict[str, Any] = {
            "scheduler": self.scheduler,
            "n_requests": len(r),
            "input_tokens": int(r["input_tokens"].sum()),
            "output_tokens": int(r["output_tokens"].sum()),
            "makespan_s": span,
            "throughput_tok_s": float(r["output_tokens"].sum() / span),
            "throughput_req_s": float(len(r) / span),
            "slo_ttft_s": self.slo_ttft_s,
            "slo_tpot_s": self.slo_tpot_s,
            "slo_met": met,
            "slo_attainment": met / len(r),
            "goodput_req_s": float(met / span),
        }
        for name in ("ttft", "tpot", "e2e", "queue"):
            out.update(_stats(r[f"{name}_s"].to_numpy(dtype=float), name))
        out["preemptions"] = int(self.preemptions)
        out["recomputed_tokens"] = int(r["prefill_tokens"].sum() - r["input_tokens"].sum())
        out["iterations"] = len(tl)
        for pool, g in tl.groupby("pool", sort=True):
            out[f"busy_s_{pool}"] = float(g["duration_s"].sum())
            out[f"iterations_{pool}"] = len(g)
        out["kv_transfers"] = int(self.kv_transfers)
        out["kv_transfer_s"] = float(self.kv_transfer_s)
        out.update({k: v for k, v in self.config.items() if k not in out})
        return out


def _pos_int(name: str, v: Any) -> int:
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
        raise ShapeError(f"{name} {v!r} must be an integer >= 1")
    return int(v)


def _slo(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) or not (0 < v < math.inf):
        raise SpecError(f"{name} {v!r} must be a finite number of seconds > 0, or None for no threshold")
    return float(v)


def _check_step(step: Any, role: str, block_size: int) -> None:
    for m in ("iteration_time", "kv_transfer_time"):
        if not callable(getattr(step, m, None)):
            raise SpecError(f"{role} {type(step).__name__} has no method {m}(); pass a StepModel (kv_capacity_tokens, "
                            "iteration_time(prefill, decode), kv_transfer_time(tokens))")
    cap = getattr(step, "kv_capacity_tokens", None)
    if not isinstance(cap, int | np.integer) or isinstance(cap, bool):
        raise SpecError(f"{role} kv_capacity_tokens {cap!r} must be an integer number of tokens")
    if cap < block_size:
        raise CapacityError(f"{role} holds {int(cap):,} KV tokens, less than one block of {block_size}; "
                            "give the pool more memory or devices, or a smaller block_size")


def simulate_serving(requests: Sequence[Request], scheduler: str, step: StepModel, *, max_batch: int = 256,
                     max_batched_tokens: int = 8192, block_size: int = 16, chunk_size: int = 512,
                     prefill_step: StepModel | None = None, slo_ttft_s: float | None = None,
                     slo_tpot_s: float | None = None, progress: bool = False) -> ServeResult:
    """Serve ``requests`` with ``scheduler`` (``static``, ``continuous``, ``chunked`` or
    ``disaggregated``) on a pool timed by ``step`` (the decode pool when disaggregated;
    ``prefill_step`` is then the prefill pool). ``max_batch``: most running sequences (per pool);
    ``max_batched_tokens``: prompt tokens per prefill iteration (continuous, disaggregated);
    ``block_size``: tokens per KV block; ``chunk_size``: token budget per iteration (chunked);
    ``slo_ttft_s`` / ``slo_tpot_s``: goodput thresholds (optional); ``progress``: a tqdm bar over
    finished requests (silent when stderr is not a terminal). See the module docstring."""
    if scheduler not in SCHEDULERS:
        raise SpecError(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    max_batch = _pos_int("max_batch", max_batch)
    held = getattr(step, "max_sequences", None)  # sequences whose recurrent state (SSM) the memory holds
    if held is not None:
        max_batch = min(max_batch, max(1, int(held)))
    max_batched_tokens = _pos_int("max_batched_tokens", max_batched_tokens)
    block_size = _pos_int("block_size", block_size)
    chunk_size = _pos_int("chunk_size", chunk_size)
    slo_ttft_s = _slo("slo_ttft_s", slo_ttft_s)
    slo_tpot_s = _slo("slo_tpot_s", slo_tpot_s)
    disagg = scheduler == "disaggregated"
    if disagg and prefill_step is None:
        raise SpecError("scheduler 'disaggregated' needs prefill_step, the step model of the prefill pool "
                        "(step is the decode pool)")
    if not disagg and prefill_step is not None:
        raise SpecError(f"prefill_step is only used by scheduler 'disaggregated', not {scheduler!r}; drop it or switch scheduler")
    _check_step(step, "decode pool step model" if disagg else "step model", block_size)
    if prefill_step is not None:
        _check_step(prefill_step, "prefill_step", block_size)
    if isinstance(requests, Request | str | bytes) or not isinstance(requests, Sequence | np.ndarray):
        raise SpecError(f"requests must be a list of Request, not {type(requests).__name__}; build them with "
                        "poisson_requests() or read_trace()")
    reqs = list(requests)
    if not reqs:
        raise SpecError("no requests to serve; pass at least one Request")
    for i, q in enumerate(reqs):
        if not isinstance(q, Request):
            raise SpecError(f"requests[{i}] is a {type(q).__name__}, not a Request; build requests with Request(...), "
                            "poisson_requests() or read_trace()")
    ids = [q.id for q in reqs]
    if len(set(ids)) != len(ids):
        seen: set = set()
        dup = next(x for x in ids if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise SpecError(f"request id {dup!r} repeats; give every request a unique id")
    _check_fits(reqs, scheduler, step, prefill_step, block_size, max_batched_tokens)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(reqs), desc=f"serving ({scheduler})", unit="req", disable=None, leave=False)
    sim = ServingSim(reqs, scheduler, step, prefill_step, max_batch=max_batch, max_batched_tokens=max_batched_tokens,
                     block_size=block_size, chunk_size=chunk_size, on_finish=bar.update if bar is not None else None)
    try:
        sim.run()
    finally:
        if bar is not None:
            bar.close()
    config = {"max_batch": max_batch, "max_batched_tokens": max_batched_tokens, "block_size": block_size,
              "chunk_size": chunk_size}
    for p in sim.pools:
        config[f"kv_blocks_{p.name}"] = p.blocks
    return _result(sim, scheduler, slo_ttft_s, slo_tpot_s, config)


def _check_fits(reqs: list[Request], scheduler: str, step: StepModel, prefill_step: StepModel | None, bs: int,
                max_batched_tokens: int) -> None:
    prompt = np.fromiter((q.input_tokens for q in reqs), dtype=np.int64, count=len(reqs))
    ctx = prompt + np.fromiter((q.output_tokens for q in reqs), dtype=np.int64, count=len(reqs)) - 1
    pools = [("prefill pool", prefill_step), ("decode pool", step)] if prefill_step is not None else [("pool", step)]
    for name, st in pools:
        blocks = int(st.kv_capacity_tokens) // bs
        i = int(np.argmax(ctx))
        if -(-int(ctx[i]) // bs) > blocks:
            q = reqs[i]
            raise CapacityError(f"request {q.id!r} needs {int(ctx[i]):,} KV tokens (input {q.input_tokens:,} + output "
                                f"{q.output_tokens:,} - 1) but the {name} holds {blocks * bs:,} ({blocks:,} blocks of {bs}); "
                                "give it more KV capacity or drop/cap such long requests")
    if scheduler in ("continuous", "disaggregated"):
        i = int(np.argmax(prompt))
        if prompt[i] > max_batched_tokens:
            raise SpecError(f"request {reqs[i].id!r} has a {int(prompt[i]):,}-token prompt, more than max_batched_tokens "
                            f"{max_batched_tokens:,}; raise max_batched_tokens or use scheduler 'chunked'")


def _result(sim: ServingSim, scheduler: str, slo_ttft_s: float | None, slo_tpot_s: float | None,
            config: dict[str, Any]) -> ServeResult:
    seqs = sim.seqs
    n = len(seqs)
    t0 = sim.t0  # the run's clock starts at the first arrival; the table gives the input's times
    arrival = np.fromiter((s.arrival for s in seqs), dtype=float, count=n)
    first = np.fromiter((s.first for s in seqs), dtype=float, count=n)
    finish = np.fromiter((s.finish for s in seqs), dtype=float, count=n)
    out = np.fromiter((s.out for s in seqs), dtype=np.int64, count=n)
    ttft = first - arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), np.nan)
    ok = np.ones(n, dtype=bool)
    if slo_ttft_s is not None:
        ok &= ttft <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= (out == 1) | (tpot <= slo_tpot_s)
    scheduled = np.fromiter((s.scheduled for s in seqs), dtype=float, count=n)
    df = pd.DataFrame({
        "id": [s.req.id for s in seqs],
        "arrival_s": np.fromiter((s.req.arrival_s for s in seqs), dtype=float, count=n),
        "input_tokens": np.fromiter((s.prompt for s in seqs), dtype=np.int64, count=n),
        "output_tokens": out,
        "scheduled_s": scheduled + t0,
        "first_token_s": first + t0,
        "finish_s": finish + t0,
        "queue_s": scheduled - arrival,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_s": finish - arrival,
        "generated_tokens": np.fromiter((s.gen for s in seqs), dtype=np.int64, count=n),
        "decode_steps": np.fromiter((s.decodes for s in seqs), dtype=np.int64, count=n),
        "preemptions": np.fromiter((s.preempted for s in seqs), dtype=np.int64, count=n),
        "prefill_tokens": np.fromiter((s.pf_tokens for s in seqs), dtype=np.int64, count=n),
        "kv_transfer_s": np.fromiter((s.xfer_s for s in seqs), dtype=float, count=n),
        "batch": np.fromiter((s.batch for s in seqs), dtype=np.int64, count=n),
        "meets_slo": ok,
    }, columns=REQUEST_COLUMNS)
    timeline = pd.DataFrame(sim.timeline, columns=TIMELINE_COLUMNS)
    if len(timeline):
        timeline["start_s"] += t0
        timeline = timeline.sort_values("start_s", kind="stable", ignore_index=True)
    return ServeResult(scheduler, df, timeline, slo_ttft_s, slo_tpot_s, sim.preemptions, sim.transfers, sim.transfer_s,
                       config)
