"""Iteration-level schedulers of the serving simulator (:mod:`xpusim.sim.serving`, whose docstring
describes the model). One simpy process per engine pool runs iterations back to back; the
iteration time comes from the pool's :class:`StepModel`.

Per-sequence state (``_Seq``): ``gen`` tokens emitted so far, ``ctx`` tokens whose KV is cached in
the pool that holds the request, ``cap`` tokens of KV reserved there (whole blocks), ``todo``
tokens left in the current (re)prefill. A (re)prefill covers ``prompt + gen`` tokens (after a
recompute preemption the prompt and every emitted token) and emits one token; a decode step
processes the last emitted token (context ``ctx + 1``) and emits one. While decoding,
``ctx == prompt + gen - 1``.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import simpy

from ..errors import SpecError
from .serving_requests import Request

SCHEDULERS = ("static", "continuous", "chunked", "disaggregated")


class StepModel(Protocol):
    """What the serving simulator needs to know about a pool of devices running the model."""

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens the pool holds (after weights)."""
        ...

    def iteration_time(self, prefill: Sequence[tuple[int, int]], decode: Sequence[int]) -> float:
        """Seconds for one engine iteration that processes ``prefill`` chunks, each (new tokens,
        tokens already cached for that request), and one decode token for each request in
        ``decode`` (its current context length, the new token included)."""
        ...

    def kv_transfer_time(self, tokens: int) -> float:
        """Seconds to move ``tokens`` tokens of KV cache from a prefill pool to a decode pool."""
        ...


class _Seq:
    __slots__ = ("req", "order", "arrival", "prompt", "out", "gen", "ctx", "cap", "todo", "first", "finish",
                 "scheduled", "preempted", "pf_tokens", "decodes", "batch", "xfer_s")

    def __init__(self, req: Request, order: int) -> None:
        self.req = req
        self.order = order
        self.arrival = req.arrival_s
        self.prompt = req.input_tokens
        self.out = req.output_tokens
        self.gen = 0
        self.ctx = 0
        self.cap = 0
        self.todo = 0
        self.first = -1.0
        self.finish = -1.0
        self.scheduled = -1.0
        self.preempted = 0
        self.pf_tokens = 0
        self.decodes = 0
        self.batch = -1
        self.xfer_s = 0.0


def _order(s: _Seq) -> int:
    return s.order


class _Pool:
    __slots__ = ("name", "step", "bs", "blocks", "free", "iterations", "busy_s")

    def __init__(self, name: str, step: StepModel, block_size: int) -> None:
        self.name = name
        self.step = step
        self.bs = block_size
        self.blocks = int(step.kv_capacity_tokens) // block_size
        self.free = self.blocks
        self.iterations = 0
        self.busy_s = 0.0


class _Signal:
    """A re-armable wake-up for an idle engine (state is re-checked after every wake)."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.ev = env.event()

    def fire(self) -> None:
        if not self.ev.triggered:
            self.ev.succeed()

    def wait(self) -> simpy.Event:
        if self.ev.triggered:
            self.ev = self.env.event()
        return self.ev


class ServingSim:
    """Runs one scheduler over requests; read the ``seqs`` and ``timeline`` after :meth:`run`."""

    def __init__(self, requests: Sequence[Request], scheduler: str, step: StepModel, prefill_step: StepModel | None, *,
                 max_batch: int, max_batched_tokens: int, block_size: int, chunk_size: int,
                 on_finish: Callable[[], Any] | None = None) -> None:
        order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)  # stable: ties keep input order
        self.seqs = [_Seq(requests[i], k) for k, i in enumerate(order)]
        # the clock starts at the first arrival: epoch-second arrivals (1.7e9 s) would leave a clock whose
        # ulp is ~0.2 us and whose arrival tolerance admitted requests 1.7 ms early; results add it back
        self.t0 = self.seqs[0].arrival if self.seqs else 0.0
        for s in self.seqs:
            s.arrival -= self.t0
        self.n = len(self.seqs)
        self.scheduler = scheduler
        self.max_batch = max_batch
        self.max_batched_tokens = max_batched_tokens
        self.chunk_size = chunk_size
        self.on_finish = on_finish
        self.env = simpy.Environment()
        if scheduler == "disaggregated":
            assert prefill_step is not None
            self.pools = [_Pool("prefill", prefill_step, block_size), _Pool("decode", step, block_size)]
        else:
            self.pools = [_Pool("colocated", step, block_size)]
        self.next = 0  # index of the next request to arrive
        self.waiting: deque[_Seq] = deque()  # FCFS; preempted requests go back to the front
        self.running: list[_Seq] = []  # admitted, sorted by arrival order (the last is the preemption victim)
        self.ready: deque[_Seq] = deque()  # disaggregated: prefilled, waiting for decode-pool room
        self.landed: list[_Seq] = []  # disaggregated: KV arrived on the decode pool
        self.in_flight = 0
        self.finished = 0
        self.preemptions = 0
        self.transfers = 0
        self.transfer_s = 0.0
        self.timeline: list[tuple[float, float, str, int, int, int]] = []
        self.all_done = self.env.event()

    # ----------------------------------------------------------------------------- bookkeeping
    def run(self) -> None:
        if self.scheduler == "static":
            self.env.process(self._static())
        elif self.scheduler == "continuous":
            self.env.process(self._continuous())
        elif self.scheduler == "chunked":
            self.env.process(self._chunked())
        else:
            self.link = simpy.Resource(self.env, capacity=1)
            self.pwake = _Signal(self.env)
            self.dwake = _Signal(self.env)
            self.env.process(self._prefill_pool())
            self.env.process(self._decode_pool())
        self.env.run(until=self.all_done)

    def _arrivals(self) -> None:
        now = self.env.now
        lim = now + 4 * math.ulp(max(now, 1.0))  # a timeout to an arrival may land an ulp short of it
        seqs, i = self.seqs, self.next
        while i < self.n and seqs[i].arrival <= lim:
            self.waiting.append(seqs[i])
            i += 1
        self.next = i

    def _until_next_arrival(self) -> simpy.Event:
        """The next request's arrival; after the last one an event that never fires (the run ends
        when every request has finished)."""
        if self.next >= self.n:
            return self.env.event()
        return self.env.timeout(max(0.0, self.seqs[self.next].arrival - self.env.now))

    def _time(self, pool: _Pool, prefill: list[tuple[int, int]], decode: list[int]) -> float:
        t = pool.step.iteration_time(prefill, decode)
        if not (0.0 < t < math.inf):
            raise SpecError(f"step model of the {pool.name} pool returned iteration time {t!r} for {len(prefill)} prefill "
                            f"chunk(s) and {len(decode)} decode(s); it must be a finite number of seconds > 0")
        pool.iterations += 1
        pool.busy_s += t
        self.timeline.append((self.env.now, t, pool.name, sum(k for k, _ in prefill), len(prefill), len(decode)))
        return t

    def _finish(self, s: _Seq, pool: _Pool) -> None:
        s.finish = self.env.now
        pool.free += s.cap // pool.bs
        s.cap = 0
        self.finished += 1
        if self.on_finish is not None:
            self.on_finish()
        if self.finished == self.n:
            self.all_done.succeed()

    def _preempt(self, s: _Seq, pool: _Pool, requeue: deque[_Seq]) -> None:
        """vLLM recompute preemption: free the blocks, forget the KV, re-queue at the front."""
        pool.free += s.cap // pool.bs
        s.cap = s.ctx = s.todo = 0
        s.preempted += 1
        self.preemptions += 1
        requeue.appendleft(s)

    def _add_running(self, s: _Seq) -> None:
        run = self.running
        if not run or run[-1].order < s.order:
            run.append(s)
        else:
            insort(run, s, key=_order)

    def _admit(self, pool: _Pool, limit: int, token_budget: int, partial: bool = False) -> list[_Seq]:
        """Pop waiting requests FCFS (no skipping) whose whole (re)prefill fits the free blocks (they
        are reserved now), at most ``limit`` of them and ``token_budget`` prefill tokens: whole
        prefills (the first one may exceed the budget: a recompute longer than it runs alone), or,
        with ``partial``, while any budget is left (the last one gets a partial chunk)."""
        out: list[_Seq] = []
        waiting, bs, tokens = self.waiting, pool.bs, 0
        while waiting and len(out) < limit:
            s = waiting[0]
            need = s.prompt + s.gen
            blocks = -(-need // bs)
            if blocks > pool.free or (tokens >= token_budget if partial else (out and tokens + need > token_budget)):
                break
            waiting.popleft()
            pool.free -= blocks
            s.cap, s.ctx, s.todo = blocks * bs, 0, need
            if s.scheduled < 0:
                s.scheduled = self.env.now
            tokens += need
            out.append(s)
        return out

    def _done_prefill(self, s: _Seq, k: int) -> bool:
        """Account ``k`` prefill tokens of ``s``; True when its (re)prefill completed (a token out)."""
        s.ctx += k
        s.todo -= k
        s.pf_tokens += k
        if s.todo:
            return False
        s.gen += 1
        if s.first < 0:
            s.first = self.env.now
        return True

    def _reserve_decode_slots(self, pool: _Pool, requeue: deque[_Seq]) -> bool:
        """Give every decoding request room for its next token, preempting the most recently
        arrived running request while no block is free. True if anything was preempted."""
        run, bs = self.running, pool.bs
        hit = False
        i = 0
        while i < len(run):
            s = run[i]
            if s.ctx >= s.cap and not s.todo:
                while pool.free == 0:
                    v = run.pop()
                    self._preempt(v, pool, requeue)
                    hit = True
                    if v is s:
                        return hit
                pool.free -= 1
                s.cap += bs
            i += 1
        return hit

    def _decode_done(self, dec: list[_Seq], pool: _Pool) -> bool:
        any_done = False
        for s in dec:
            s.ctx += 1
            s.gen += 1
            s.decodes += 1
            if s.gen == s.out:
                self._finish(s, pool)
                any_done = True
        return any_done

    def _drop_finished(self) -> None:
        self.running = [s for s in self.running if s.finish < 0]

    # ----------------------------------------------------------------------------- schedulers
    def _static(self) -> Generator[simpy.Event, Any, None]:
        pool = self.pools[0]
        bs, batch_id = pool.bs, 0
        while True:
            self._arrivals()
            if not self.waiting:
                yield self._until_next_arrival()
                continue
            batch: list[_Seq] = []
            blocks = 0
            while self.waiting and len(batch) < self.max_batch:  # reserve each request's whole context up front
                s = self.waiting[0]
                need = -(-(s.prompt + s.out - 1) // bs)
                if batch and blocks + need > pool.free:
                    break
                self.waiting.popleft()
                blocks += need
                s.cap, s.todo, s.batch, s.scheduled = need * bs, s.prompt, batch_id, self.env.now
                batch.append(s)
            pool.free -= blocks
            yield self.env.timeout(self._time(pool, [(s.prompt, 0) for s in batch], []))
            live = []
            for s in batch:
                self._done_prefill(s, s.prompt)
                if s.gen == s.out:
                    self._finish(s, pool)
                else:
                    live.append(s)
            while live:
                yield self.env.timeout(self._time(pool, [], [s.ctx + 1 for s in live]))
                if self._decode_done(live, pool):
                    live = [s for s in live if s.finish < 0]
            batch_id += 1

    def _continuous(self) -> Generator[simpy.Event, Any, None]:
        pool = self.pools[0]
        while True:
            self._arrivals()
            if not self.waiting and not self.running:
                yield self._until_next_arrival()
                continue
            pf = self._admit(pool, self.max_batch - len(self.running), self.max_batched_tokens) if self.waiting else []
            if pf:  # a prefill-only iteration (vLLM without chunked prefill)
                yield self.env.timeout(self._time(pool, [(s.todo, 0) for s in pf], []))
                for s in pf:
                    self._done_prefill(s, s.todo)
                    if s.gen == s.out:
                        self._finish(s, pool)
                    else:
                        self._add_running(s)
                continue
            self._reserve_decode_slots(pool, self.waiting)
            dec = self.running
            yield self.env.timeout(self._time(pool, [], [s.ctx + 1 for s in dec]))
            if self._decode_done(dec, pool):
                self._drop_finished()

    def _chunked(self) -> Generator[simpy.Event, Any, None]:
        pool = self.pools[0]
        while True:
            self._arrivals()
            if not self.waiting and not self.running:
                yield self._until_next_arrival()
                continue
            self._reserve_decode_slots(pool, self.waiting)
            run = self.running
            dec = [s for s in run if not s.todo]
            budget = self.chunk_size - len(dec)  # decodes first: never stalled by a prefill
            chunks: list[tuple[_Seq, int]] = []
            if len(dec) < len(run):
                for s in run:  # partially prefilled requests, oldest first
                    if s.todo and budget > 0:
                        k = min(s.todo, budget)
                        chunks.append((s, k))
                        budget -= k
            if budget > 0 and self.waiting:
                for s in self._admit(pool, self.max_batch - len(run), budget, partial=True):
                    k = min(s.todo, budget)
                    chunks.append((s, k))
                    budget -= k
                    self._add_running(s)
                    if budget <= 0:
                        break
            assert chunks or dec, "chunked scheduler formed an empty iteration"
            yield self.env.timeout(self._time(pool, [(k, s.ctx) for s, k in chunks], [s.ctx + 1 for s in dec]))
            any_done = self._decode_done(dec, pool)
            for s, k in chunks:
                if self._done_prefill(s, k) and s.gen == s.out:
                    self._finish(s, pool)
                    any_done = True
            if any_done:
                self._drop_finished()

    # ----------------------------------------------------------------------------- disaggregated
    def _prefill_pool(self) -> Generator[simpy.Event, Any, None]:
        pool = self.pools[0]
        while True:
            self._arrivals()
            pf = self._admit(pool, self.max_batch, self.max_batched_tokens) if self.waiting else []
            if not pf:  # nothing arrived, or the pool's KV is held by prompts waiting to move
                evs = [self.pwake.wait()]
                if self.next < self.n:
                    evs.append(self._until_next_arrival())
                yield self.env.any_of(evs)
                continue
            yield self.env.timeout(self._time(pool, [(s.todo, 0) for s in pf], []))
            for s in pf:
                self._done_prefill(s, s.todo)
                if s.gen == s.out:
                    self._finish(s, pool)
                else:
                    self.ready.append(s)
            self._pull()

    def _pull(self) -> None:
        """Start KV transfers FCFS for prefilled requests the decode pool has room for."""
        dp = self.pools[1]
        ready = self.ready
        while ready:
            s = ready[0]
            blocks = -(-s.ctx // dp.bs)
            if len(self.running) + len(self.landed) + self.in_flight >= self.max_batch or blocks > dp.free:
                return
            ready.popleft()
            dp.free -= blocks
            self.in_flight += 1
            self.env.process(self._transfer(s, blocks))

    def _transfer(self, s: _Seq, blocks: int) -> Generator[simpy.Event, Any, None]:
        pp, dp = self.pools
        with self.link.request() as req:  # one link, transfers in FIFO order
            yield req
            t = pp.step.kv_transfer_time(s.ctx)
            if not (0.0 <= t < math.inf):
                raise SpecError(f"step model of the prefill pool returned KV transfer time {t!r} for {s.ctx} tokens; "
                                "it must be a finite number of seconds >= 0")
            yield self.env.timeout(t)
        pp.free += s.cap // pp.bs
        s.cap = blocks * dp.bs
        s.xfer_s += t
        self.transfers += 1
        self.transfer_s += t
        self.in_flight -= 1
        self.landed.append(s)
        self.dwake.fire()
        self.pwake.fire()

    def _decode_pool(self) -> Generator[simpy.Event, Any, None]:
        dp = self.pools[1]
        while True:
            if self.landed:
                for s in self.landed:
                    self._add_running(s)
                self.landed.clear()
            if not self.running:
                yield self.dwake.wait()
                continue
            if self._reserve_decode_slots(dp, self.waiting):
                self.pwake.fire()  # preempted requests recompute on the prefill pool
                if not self.running:
                    continue
            dec = self.running
            yield self.env.timeout(self._time(dp, [], [s.ctx + 1 for s in dec]))
            if self._decode_done(dec, dp):
                self._drop_finished()
            self._pull()
