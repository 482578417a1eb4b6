"""``xpusim coe``: composition-of-experts serving on a system, with the expert cache in device memory
(:mod:`xpusim.sim.coe`), optionally against a second system."""

from __future__ import annotations

import argparse

from .format_flags import add_format_arguments, apply_formats, chosen_formats
from .result import strict_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True, help="system preset or YAML")
    p.add_argument("--model", required=True, help="the experts' (and the router's) model")
    p.add_argument("--experts", type=int, default=150, help="experts in the composition (default 150, as Samba-CoE)")
    p.add_argument("--requests", type=int, default=1000, help="requests in the stream")
    p.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of expert popularity (0: uniform)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--output", type=int, default=20, help="generated tokens per request")
    p.add_argument("--batch", type=int, default=1, help="sequences per request (all to the same expert)")
    p.add_argument("--tp", type=int, help="devices that run each expert, tensor-parallel, and load its shares when it "
                   "is switched in (default: every device of the system)")
    add_format_arguments(p)
    p.add_argument("--no-router", action="store_true", help="requests name their expert (no router prefill)")
    p.add_argument("--slots", type=int, help="experts the cache holds (default: what device memory holds)")
    p.add_argument("--vs", metavar="SYSTEM", help="also serve the same stream on SYSTEM and print the speedup")
    p.add_argument("--vs-tp", type=int, help="devices per expert on the --vs system (default: all of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request stream (default 0)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")


def run(a: argparse.Namespace) -> int:
    from ..arch.system import load_system
    from ..workloads.model import load_model
    from .coe import simulate_coe
    from .engine import with_engine_formats
    from .result_text import fmt_b, fmt_s

    given = chosen_formats(a)
    model = apply_formats(load_model(a.model), a)
    kw = dict(experts=a.experts, requests=a.requests, prompt=a.prompt, output=a.output, skew=a.skew, seed=a.seed,
              batch=a.batch, router=not a.no_router, slots=a.slots)
    if a.vs_tp is not None and not a.vs:
        from ..errors import SpecError

        raise SpecError("--vs-tp sizes the experts of the --vs system; give --vs SYSTEM or drop it")
    results = []
    for name, tp in [(a.system, a.tp)] + ([(a.vs, a.vs_tp)] if a.vs else []):
        system = load_system(name)
        results.append(simulate_coe(system, with_engine_formats(model, system.device, given), tp=tp, **kw))
    if a.json:
        out: dict[str, object] = {"runs": [r.as_dict() for r in results]}
        if a.vs:
            out["speedup"] = results[1].request_s / results[0].request_s
        print(strict_json(out, 2))
        return 0
    r0 = results[0]
    print(f"xpusim coe: {a.experts} experts of {r0.model} ({fmt_b(r0.expert_bytes)} each on {r0.system}), {a.requests} requests "
          f"(batch {a.batch}, prompt {a.prompt}, output {a.output}), Zipf skew {a.skew:g}, seed {a.seed}"
          + ("" if a.no_router else f"; a resident {r0.model} router reads each prompt"))
    for r in results:
        print(f"{r.system} (tp {r.tp}): cache room for {r.slots} experts (LRU), hit rate {100 * r.hit_rate:.1f} %, "
              f"a miss switches in {fmt_s(r.switch_s)}; per request: router {fmt_s(r.router_s)} "
              f"+ switch {fmt_s(r.mean_switch_s)} (mean) + prefill {fmt_s(r.prefill_s)} "
              f"+ decode {r.output - 1} x {fmt_s(r.decode_step_s)} = {fmt_s(r.request_s)}; {1 / r.request_s:.2f} requests/s")
    if a.vs:
        print(f"{results[0].system} over {results[1].system}: {results[1].request_s / results[0].request_s:.2f}x per request")
    return 0
