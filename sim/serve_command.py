"""``xpusim serve``: request-level serving of a model on a system (or one device), with the
iteration times of :class:`~xpusim.sim.serving_model.SimStepModel`."""

from __future__ import annotations

import argparse
import math

import numpy as np

from ..errors import SpecError
from .format_flags import add_format_arguments, apply_formats, chosen_formats
from .result import strict_json
from .serving_model import MEMORY_UTILIZATION

REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = 1000, "1024,256", "256,64"  # the Poisson stream's defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", help="system preset or YAML (the engine's devices); or --arch for one device")
    p.add_argument("--arch", help="one device preset or YAML")
    p.add_argument("--model", required=True, help="model preset, xpusim YAML or Hugging Face config.json")
    p.add_argument("--rate", type=float, help="Poisson arrival rate (requests/s; inf: all at time 0)")
    p.add_argument("--requests", type=int, help=f"number of requests (Poisson; default {REQUESTS})")
    p.add_argument("--trace", metavar="FILE", help="requests from a CSV/JSONL trace: arrival_s, input_tokens, output_tokens")
    p.add_argument("--input-tokens", help="prompt length (Poisson): N, or MEAN,STD or MEAN,STD,MAX (lognormal; "
                   f"default {INPUT_TOKENS})")
    p.add_argument("--output-tokens", help="output length (Poisson): N, or MEAN,STD or MEAN,STD,MAX (lognormal; "
                   f"default {OUTPUT_TOKENS})")
    p.add_argument("--scheduler", default="continuous", choices=["static", "continuous", "chunked", "disaggregated"],
                   help="batching policy (default continuous)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of an engine (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages of an engine (with --system; default 1)")
    p.add_argument("--prefill-tp", type=int, help="disaggregated: tensor-parallel degree of the prefill engine (default --tp)")
    add_format_arguments(p)
    p.add_argument("--memory-utilization", type=float, default=MEMORY_UTILIZATION,
                   help="fraction of each device's memory for the weights and KV cache, in (0, 1] (default "
                        f"{MEMORY_UTILIZATION}, vLLM's gpu_memory_utilization)")
    p.add_argument("--max-batch", type=int, default=256, help="most sequences an iteration runs (default 256)")
    p.add_argument("--max-batched-tokens", type=int, default=None,
                   help="most prompt tokens a prefill iteration runs, continuous and disaggregated (default 8192)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per paged-KV block (default 16)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="tokens an iteration of the chunked scheduler runs, prompt chunks and decodes together (default 512)")
    p.add_argument("--slo-ttft", type=float, help="TTFT SLO (s) for goodput")
    p.add_argument("--slo-tpot", type=float, help="TPOT SLO (s) for goodput")
    p.add_argument("--seed", type=int, default=None, help="seed of the request stream (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--report", metavar="HTML", help="write an HTML report")
    p.add_argument("--save", metavar="JSON", help="save the run (summary, per-request table, timeline) for `xpusim report`")


def _tokens(spec: str, name: str):
    """A token-count flag: ``N`` (a whole number), ``MEAN,STD`` or ``MEAN,STD,MAX`` (lognormal)."""
    hint = "give N (a whole number of tokens), MEAN,STD or MEAN,STD,MAX"
    try:
        parts = [float(x) for x in spec.split(",")]
    except ValueError:
        raise SpecError(f"--{name} {spec!r}: {hint}") from None
    if not all(math.isfinite(x) and abs(x) < 2**31 for x in parts):
        raise SpecError(f"--{name} {spec!r}: {hint}, each a finite number below 2^31")
    if len(parts) == 1:
        if parts[0] != int(parts[0]) or parts[0] < 1:
            raise SpecError(f"--{name} {spec!r}: {hint}, at least 1")
        return int(parts[0])
    if len(parts) in (2, 3):
        return tuple(parts)
    raise SpecError(f"--{name} {spec!r}: {hint}")


def _describe_workload(w: dict) -> str:
    """One line of the requests served: arrivals, then each length's distribution and drawn mean."""
    def lengths(key: str) -> str:
        drawn = f"mean {w[key + '_mean']:,.0f}"
        if w["arrivals"] == "trace":
            return drawn
        spec = _tokens(w[key], key)
        if isinstance(spec, int):
            return f"{spec} each"
        cap = f" max {spec[2]:g}" if len(spec) == 3 else ""
        return f"lognormal mean {spec[0]:g} std {spec[1]:g}{cap} (drawn {drawn})"

    if w["arrivals"] == "trace":
        head = f"{w['requests']:,} request{'s' if w['requests'] != 1 else ''} from {w['trace']}"
    else:
        rate = "all at time 0" if w["rate_per_s"] is None else f"Poisson at {w['rate_per_s']:g} requests/s"
        head = f"{w['requests']:,} requests, {rate}, seed {w['seed']}"
    return f"{head}; prompts {lengths('input_tokens')}, outputs {lengths('output_tokens')}"


def run(a: argparse.Namespace) -> int:
    from ..arch.system import load_system
    from ..workloads.model import load_model
    from .parallel import Plan
    from .serving import simulate_serving
    from .serving_model import SimStepModel
    from .serving_requests import poisson_requests, read_trace

    if bool(a.system) == bool(a.arch):
        raise SpecError("serve needs --system SYSTEM or --arch DEVICE (one of them)")
    if a.arch:
        from .hetero import load_hetero

        if load_hetero(a.arch) is not None:
            raise SpecError(f"{a.arch} is a host + PIM device: serve runs one device or a system; simulate its steps "
                            f"with xpusim simulate --arch {a.arch}")
    for flag in ("requests", "max_batch", "max_batched_tokens", "block_size", "chunk_size", "tp", "pp", "prefill_tp"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            raise SpecError(f"--{flag.replace('_', '-')} must be an integer >= 1, got {v}")
    if a.rate is not None and not (a.rate > 0):
        raise SpecError(f"--rate must be > 0 requests per second (inf: all at once), got {a.rate}")
    if a.seed is not None and a.seed < 0:
        raise SpecError(f"--seed must be an integer >= 0, got {a.seed}")
    unused = (["--chunk-size (the chunked scheduler's)"] * (a.chunk_size is not None and a.scheduler != "chunked")
              + ["--max-batched-tokens (continuous and disaggregated)"]
              * (a.max_batched_tokens is not None and a.scheduler not in ("continuous", "disaggregated"))
              + ["--seed (of a Poisson stream)"] * (a.seed is not None and bool(a.trace)))
    if unused:
        raise SpecError(f"{', '.join(unused)} does nothing with --scheduler {a.scheduler}"
                        + (" and --trace" if a.trace else "") + ": drop it")
    a.chunk_size = 512 if a.chunk_size is None else a.chunk_size
    a.max_batched_tokens = 8192 if a.max_batched_tokens is None else a.max_batched_tokens
    a.seed = 0 if a.seed is None else a.seed
    if a.prefill_tp and a.scheduler != "disaggregated":
        raise SpecError("--prefill-tp sizes the prefill engine of --scheduler disaggregated; drop it or use that scheduler")
    system = load_system(a.system) if a.system else None
    if system is None and (a.tp > 1 or a.pp > 1 or a.prefill_tp or a.scheduler == "disaggregated"):
        raise SpecError("--tp/--pp/--prefill-tp and the disaggregated scheduler run an engine over several devices: "
                        "give --system (e.g. dgx-h100), not --arch")
    if not 0 < a.memory_utilization <= 1:
        raise SpecError(f"--memory-utilization must be a fraction of device memory in (0, 1], got {a.memory_utilization}")
    stream = [f"--{k.replace('_', '-')}" for k in ("rate", "requests", "input_tokens", "output_tokens")
              if getattr(a, k) is not None]
    if a.trace and stream:
        raise SpecError(f"--trace gives the requests, their arrivals and lengths; drop {', '.join(stream)}")
    if a.trace:
        reqs = read_trace(a.trace)
        workload = {"arrivals": "trace", "trace": a.trace}
    else:
        if a.rate is None:
            raise SpecError("serve needs --rate (requests/s) or --trace FILE")
        spec_in, spec_out = a.input_tokens or INPUT_TOKENS, a.output_tokens or OUTPUT_TOKENS
        reqs = poisson_requests(a.rate, a.requests or REQUESTS, _tokens(spec_in, "input-tokens"),
                                _tokens(spec_out, "output-tokens"), seed=a.seed)
        workload = {"arrivals": "poisson", "rate_per_s": a.rate if math.isfinite(a.rate) else None,
                    "input_tokens": spec_in, "output_tokens": spec_out, "seed": a.seed}
    workload.update(requests=len(reqs), input_tokens_mean=float(np.mean([r.input_tokens for r in reqs])),
                    output_tokens_mean=float(np.mean([r.output_tokens for r in reqs])))
    plan = Plan(tp=a.tp, pp=a.pp)
    if system is not None and plan.devices > system.n_devices:
        raise SpecError(f"an engine of tp {a.tp} x pp {a.pp} needs {plan.devices} devices; {system.name} has "
                        f"{system.n_devices}")
    model = apply_formats(load_model(a.model), a)
    engine = {"memory_utilization": a.memory_utilization, "keep_formats": chosen_formats(a)}
    step = SimStepModel(model, plan, system, a.arch, **engine)
    prefill = None
    if a.scheduler == "disaggregated":
        ptp = a.prefill_tp or a.tp
        if system is not None and ptp * a.pp + plan.devices > system.n_devices:
            raise SpecError(f"disaggregated serving needs {ptp * a.pp} prefill + {plan.devices} decode devices; "
                            f"{system.name} has {system.n_devices}: lower --tp / --prefill-tp")
        prefill = SimStepModel(model, Plan(tp=ptp, pp=a.pp), system, a.arch, **engine)
    res = simulate_serving(reqs, a.scheduler, step, max_batch=a.max_batch, max_batched_tokens=a.max_batched_tokens,
                           block_size=a.block_size, chunk_size=a.chunk_size, prefill_step=prefill, slo_ttft_s=a.slo_ttft,
                           slo_tpot_s=a.slo_tpot, progress=not (a.quiet or a.json))
    summary = {**res.summary(), "workload": workload, "engine": step.describe(),
               "prefill_engine": prefill.describe() if prefill else None}
    if a.report:
        from ..reports.build import serve_report
        from ..reports.html import write

        write(a.report, serve_report(res, summary))
    if a.save:
        from ..reports.build import save

        save(a.save, "serve", {"summary": summary, "requests": res.requests.to_dict(orient="records"),
                               "timeline": res.timeline.to_dict(orient="records")})
    if a.json:
        print(strict_json(summary, 2))
        return 0
    s = summary
    where = system.name if system else a.arch
    f = step.model
    if step.model.kv_bytes_per_token > 0:
        held = f"KV capacity {step.kv_capacity_tokens:,} tokens"
    else:  # a pure SSM: no KV cache, the recurrent states bound the batch
        held = f"no KV cache; at most {step.max_sequences:,} sequences' recurrent state" if step.max_sequences else "no KV cache"
    pre = f", prefill engine {prefill.plan.describe()}" if prefill else ""
    print(f"{f.name} on {where}: scheduler {a.scheduler}, engine {plan.describe()}{pre}, {held} in "
          f"{100 * a.memory_utilization:g} % of device memory")
    print(f"  workload: {_describe_workload(workload)}")
    emb = f", embeddings {f.embedding_dtype}" if f.embedding_dtype != f.weight_dtype else ""
    print(f"  formats: weights {f.weight_dtype}, activations {f.act_dtype}, KV {f.kv_dtype}{emb}")
    for k in ("ttft", "tpot", "e2e"):
        vals = {q: s.get(f"{k}_{q}_s") for q in ("mean", "p50", "p90", "p99")}
        shown = "  ".join(f"{q} {v * 1e3:.1f} ms" for q, v in vals.items() if v is not None)
        print(f"  {k.upper():5} " + (shown or "n/a (one-token outputs)"))
    print(f"  throughput {s['throughput_tok_s']:.0f} tokens/s, {s['throughput_req_s']:.2f} requests/s; goodput "
          f"{s['goodput_req_s']:.2f} requests/s; preemptions {s['preemptions']}")
    return 0
