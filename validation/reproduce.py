"""Paper reproductions: a published result xpusim can reproduce, shipped as a runnable case.

A case is ``validation/reproductions/<name>.yaml``::

    name: duplex-opb-gqa-attention
    paper: "Duplex (Yun et al., MICRO 2024)"
    claim: "GQA decode attention of Llama-3-70B runs at 4-8 Op/B"
    claimed_range: [4, 8]          # or claimed: 2.4 with tolerance_pct: 25
    kind: op_per_byte              # a function of CASE_KINDS below
    params: {...}                  # its inputs

``xpusim reproduce --list`` names every case; ``xpusim reproduce NAME`` runs one; ``--all --json``
prints a list of objects with ``name, paper, claim, claimed, simulated, tolerance_pct, passed``.
A case passes when the simulated value is within ``tolerance_pct`` of ``claimed``, or inside
``claimed_range`` (a bound may be null: open) widened by ``tolerance_pct`` on both sides, and, with
``beats: X``, only above ``X`` (a claim that one system beats another, ``beats: 1``, is not reproduced
by a ratio below 1, whatever the tolerance). A case
the model does not reproduce yet carries ``known_gap: "<why>"``: it runs and reports its value as
GAP (not a failure of the command) and records what it simulates as ``gap_value``; the tests require
it still to miss and to simulate ``gap_value`` within 2 %, so the marker goes when the model
reproduces the claim and a change to the gap shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import PresetNotFound, SpecError

CASES_DIR = Path(__file__).parent / "reproductions"
CASE_KINDS: dict[str, Callable[[dict[str, Any]], float]] = {}


def case_kind(name: str) -> Callable[[Callable[[dict[str, Any]], float]], Callable[[dict[str, Any]], float]]:
    """Register a function ``params -> simulated value`` as a case kind."""
    def register(fn: Callable[[dict[str, Any]], float]) -> Callable[[dict[str, Any]], float]:
        CASE_KINDS[name] = fn
        return fn
    return register


def _kernel_by_kernel(arch: Any) -> Any:
    """A dataflow device that runs every op as its own kernel (no spatial fusion)."""
    from ..arch.loader import load_arch
    from ..arch.rdu import with_mode

    return with_mode(load_arch(arch), "unfused")


def _step(spec: dict[str, Any]):
    """Simulate one step from a spec: ``arch`` or ``system`` (+ ``tp``/``pp``/``dp``/``ep``),
    ``model``, ``phase`` (prefill/decode), ``batch``, ``seq``/``context``, optional formats and, on a
    wafer-scale device, ``wafer`` placement options (``side``, ``algorithm``, ``wafers``)."""
    from ..sim.engine import simulate
    from ..workloads.model import load_model
    from ..workloads.phases import make_phase

    model = load_model(spec["model"])
    fmts = {k: spec.get(k) for k in ("weights", "activations", "kv")}
    if any(fmts.values()):
        model = model.with_formats(fmts["weights"], fmts["activations"], fmts["kv"])
    phase = make_phase(spec["phase"], int(spec.get("batch", 1)), spec.get("seq"), spec.get("context"))
    if "system" in spec:
        from ..sim.events import simulate_system
        from ..sim.parallel import Plan

        plan = Plan(tp=int(spec.get("tp", 1)), pp=int(spec.get("pp", 1)), dp=int(spec.get("dp", 1)), ep=int(spec.get("ep", 1)))
        system: Any = spec["system"]
        if spec.get("fused") is False:
            import dataclasses

            from ..arch.system import load_system

            system = load_system(system)
            system = dataclasses.replace(system, device=_kernel_by_kernel(system.device))
        return simulate_system(system, model, phase, plan, routing=spec.get("routing"), check_memory=False)
    arch: Any = spec["arch"]
    if spec.get("fused") is False:
        arch = _kernel_by_kernel(arch)
    return simulate(arch, model, phase, routing=spec.get("routing"), check_memory=False,
                    wafer_options=spec.get("wafer"))


@case_kind("op_per_byte")
def op_per_byte(p: dict[str, Any]) -> float:
    """Op/B of the ops of one kind in a step as the PIM papers count it: the FLOPs of their matrix
    products (2 per multiply-accumulate; a fused attention's softmax excluded) per byte of
    operands the op reads and writes; ``stat`` min or max over the matching ops."""
    res = _step(p["step"])
    ops = res.ops[res.ops["kind"] == p["op_kind"]]
    if "name_contains" in p:
        ops = ops[ops["name"].str.contains(str(p["name_contains"]), regex=False)]
    if ops.empty:
        raise SpecError(f"case: no {p['op_kind']} op in the step")
    flops = ops["flops"]
    if p["op_kind"] == "attention":  # the two GEMMs: the fused group also counts its softmax (5 FLOPs per score)
        from ..workloads.model import load_model
        from ..workloads.opkit import SOFTMAX_FLOPS

        e = float(load_model(p["step"]["model"]).head_dim)
        flops = flops * (4 * e) / (4 * e + SOFTMAX_FLOPS)
    values = flops / ops["bytes"]
    return float(values.max() if p.get("stat", "min") == "max" else values.min())


@case_kind("latency_ratio")
def latency_ratio(p: dict[str, Any]) -> float:
    """Latency of the ``baseline`` step over that of the ``design`` step (a speedup); a list of
    baselines is compared through its fastest member (the best baseline configuration)."""
    base = p["baseline"] if isinstance(p["baseline"], list) else [p["baseline"]]
    return min(_step(b).latency_s for b in base) / _step(p["design"]).latency_s


@case_kind("tokens_per_s")
def tokens_per_s(p: dict[str, Any]) -> float:
    """Tokens per second of one step (per request at batch 1: the inverse of the time per token)."""
    return _step(p["step"]).tokens_per_s


def _op(spec: dict[str, Any]):
    """Cost one GEMM/GEMV timed alone (as ``xpusim op``): ``arch``, ``m``, ``n``, ``k``, ``dtype``."""
    from ..sim.engine import op_cost
    from ..workloads.einsum import gemm_op

    op = gemm_op(int(spec["m"]), int(spec["n"]), int(spec["k"]), str(spec.get("dtype", "fp16")))
    from ..arch.loader import load_arch

    return op_cost(op, load_arch(spec["arch"]), isolated=True)


def _op_pair(p: dict[str, Any]):
    """The op on the ``baseline`` and the ``design`` device; shape keys shared unless overridden."""
    shape: dict[str, Any] = {k: p[k] for k in ("m", "n", "k", "dtype") if k in p}
    return _op({**shape, **p["baseline"]}), _op({**shape, **p["design"]})


@case_kind("op_speedup")
def op_speedup(p: dict[str, Any]) -> float:
    """Latency of one op on the ``baseline`` device over its latency on the ``design`` device."""
    base, design = _op_pair(p)
    return base.latency_s / design.latency_s


@case_kind("op_energy_ratio")
def op_energy_ratio(p: dict[str, Any]) -> float:
    """Energy of one op on the ``baseline`` device over its energy on the ``design`` device
    (energy efficiency: the same work, so the ratio of joules is the ratio of FLOP/J). With
    ``energy: tdp`` each side's energy is its preset's ``tdp`` x the op's latency (the board-power
    accounting papers use when they compare whole devices); otherwise the modelled energy."""
    base, design = _op_pair(p)
    if p.get("energy") == "tdp":
        from ..arch.loader import load_arch

        watts = [load_arch(p[side]["arch"]).tdp_w for side in ("baseline", "design")]
        if not all(watts):
            raise SpecError("energy: tdp needs a tdp in both devices' presets")
        return watts[0] * base.latency_s / (watts[1] * design.latency_s)
    return base.energy_j / design.energy_j


def _model(p: dict[str, Any]):
    from ..workloads.model import load_model

    model = load_model(p["model"])
    fmts = {k: p.get(k) for k in ("weights", "activations", "kv")}
    return model.with_formats(fmts["weights"], fmts["activations"], fmts["kv"]) if any(fmts.values()) else model


def _side_step(side: dict[str, Any], model: Any, phase: Any) -> float:
    """Seconds of one step on a case side (:func:`_side_result`)."""
    return float(_side_result(side, model, phase).latency_s)


@case_kind("continuous_batching_speedup")
def continuous_batching_speedup(p: dict[str, Any]) -> float:
    """Serving throughput of ``design`` over ``baseline`` under continuous batching in steady state,
    ``stat`` (max or mean) over every batch x (input, output length) pair: an iteration decodes one
    token of each of ``batch`` requests at the mean context ``lin + lout / 2`` and prefills the
    ``batch / lout`` requests that join per iteration, so throughput = batch / (decode step +
    (batch / lout) x prefill of one ``lin``-token prompt)."""
    from ..workloads.phases import Decode, Prefill

    model = _model(p)
    ratios = []
    for batch in p["batches"]:
        for lin in p["lin"]:
            for lout in p["lout"]:
                t = {}
                for side in ("baseline", "design"):
                    dec = _side_step(p[side], model, Decode(int(batch), int(lin + lout // 2)))
                    pre = _side_step(p[side], model, Prefill(1, int(lin)))
                    t[side] = dec + pre * batch / lout
                ratios.append(t["baseline"] / t["design"])
    return float(max(ratios) if p.get("stat", "max") == "max" else sum(ratios) / len(ratios))


def _system(side: dict[str, Any]) -> Any:
    """A side's system: the preset, with its devices replaced by ``device`` when given (the fabric of
    one system with another device, e.g. AttAcc's A100 with HBM3 on a DGX A100's NVLink)."""
    if side.get("interconnect", "ideal") != "ideal":
        raise SpecError(f"case: interconnect {side['interconnect']!r}: only 'ideal' (collectives at no cost) may be given")
    if "system" not in side:
        return None
    import dataclasses

    from ..arch.system import load_system

    system = load_system(side["system"])
    if "device" in side:
        from ..arch.loader import load_arch

        system = dataclasses.replace(system, device=load_arch(side["device"]))
    if side.get("interconnect") == "ideal":  # the paper's simulator models no inter-device communication
        system = dataclasses.replace(system, meta={**system.meta, "ideal_interconnect": True})
    return system


def _side_result(side: dict[str, Any], model: Any, phase: Any) -> Any:
    """The step's Result on a case side: ``hetero`` (a host + PIM preset, optionally ``tp`` over a
    ``system``; ``placement``/``mode`` override the preset's), ``system`` with ``tp`` (and an optional
    ``device``), or ``arch``. Energy is every device's."""
    tp = int(side.get("tp", 1))
    if "hetero" in side:
        from ..sim.hetero import load_hetero, pim_stacks, simulate_hetero

        combo = load_hetero(side["hetero"])
        if combo is None:
            raise SpecError(f"case: {side['hetero']!r} is not a host + PIM preset")
        return simulate_hetero(combo["host"], pim_stacks(combo["pim"], combo["pim_stacks"]), model, phase,
                               side.get("placement", combo["placement"]), side.get("mode", combo["mode"]),
                               system=_system(side), tp=tp, memory=combo["memory"], check_memory=False)
    if "system" in side:
        from ..sim.events import simulate_system
        from ..sim.parallel import Plan

        return simulate_system(_system(side), model, phase, Plan(tp=tp), check_memory=False)
    from ..sim.engine import simulate

    if "interconnect" in side:
        raise SpecError("case: interconnect applies to a side with a system (collectives between its devices)")
    return simulate(side["arch"], model, phase, check_memory=False)


def max_batch(side: dict[str, Any], model: Any, tokens: int) -> int:
    """Largest batch whose KV cache at ``tokens`` per request fits the side's ``kv_capacity``
    (bytes or e.g. '640 GiB'), less the weights when ``kv_capacity_holds_weights``."""
    from ..units import parse_quantity

    cap = parse_quantity(side["kv_capacity"], "bytes", "case kv_capacity")
    if side.get("kv_capacity_holds_weights", False):
        cap -= model.weights_bytes
    b = int(cap // model.kv_cache_bytes(1, tokens))
    if b < 1:
        raise SpecError(f"case: {model.name} does not fit {side['kv_capacity']} with one request of {tokens} tokens")
    return b


def _generation(p: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """Each side at its largest batch (capacity-limited), one generation step at the mean context."""
    from ..workloads.phases import Decode

    model = _model(p)
    lin, lout = int(p["lin"]), int(p["lout"])
    out = {}
    for side in ("baseline", "design"):
        b = max_batch(p[side], model, lin + lout)
        out[side] = (b, _side_result(p[side], model, Decode(b, lin + lout // 2)))
    return out


@case_kind("generation_throughput_ratio")
def generation_throughput_ratio(p: dict[str, Any]) -> float:
    """Generation throughput (batch / step time, prefill excluded, as AttAcc's simulator reports it) of
    ``design`` over ``baseline``, each at the largest batch its KV capacity holds for ``lin + lout``
    tokens per request, the step at the mean context ``lin + lout / 2``."""
    g = _generation(p)
    (bb, rb), (bd, rd) = g["baseline"], g["design"]
    return (bd / rd.latency_s) / (bb / rb.latency_s)


@case_kind("generation_energy_ratio")
def generation_energy_ratio(p: dict[str, Any]) -> float:
    """Energy per generated token of ``baseline`` over ``design`` (energy efficiency), as
    :func:`generation_throughput_ratio` runs them (modelled dynamic energy of every device)."""
    g = _generation(p)
    (bb, rb), (bd, rd) = g["baseline"], g["design"]
    return (rb.energy_j / bb) / (rd.energy_j / bd)


@case_kind("decode_throughput_ratio")
def decode_throughput_ratio(p: dict[str, Any]) -> float:
    """Decode throughput of ``design`` over ``baseline`` at the same batch (the ratio of step times),
    averaged (``stat: mean``, default) or maximised over ``models`` x ``batches``, each step at the mean
    context ``lin + lout / 2`` of the requests."""
    from ..workloads.phases import Decode

    ratios = []
    for name in p["models"]:
        model = _model({**p, "model": name})
        for batch in p["batches"]:
            phase = Decode(int(batch), int(p["lin"] + p["lout"] // 2))
            ratios.append(_side_step(p["baseline"], model, phase) / _side_step(p["design"], model, phase))
    return float(max(ratios) if p.get("stat", "mean") == "max" else sum(ratios) / len(ratios))


def _decode_results(p: dict[str, Any], side: dict[str, Any]) -> list[Any]:
    """A side's batch-1 decode step for each ``[lin, lout]`` of ``p["cases"]``: ``lout`` tokens over
    ``lout`` steps whose time is linear in the context, so their mean is the step at the mean context
    ``lin + lout / 2``. The side's ``weights``/``activations``/``kv`` formats override the case's."""
    from ..workloads.phases import Decode

    if not p["cases"]:
        raise SpecError("case: cases must list at least one [prompt, output] pair")
    model = _model({**p, **{k: side[k] for k in ("weights", "activations", "kv") if k in side}})
    return [_side_result(side, model, Decode(1, int(lin) + int(lout) // 2)) for lin, lout in p["cases"]]


def _decode_tokens_per_s(p: dict[str, Any], side: dict[str, Any]) -> list[float]:
    """A side's batch-1 decode tokens/s for each case (:func:`_decode_results`)."""
    return [1.0 / float(r.latency_s) for r in _decode_results(p, side)]


def _geomean(values: list[float]) -> float:
    import math

    return math.exp(sum(math.log(v) for v in values) / len(values))


@case_kind("decode_tokens_per_s")
def decode_tokens_per_s(p: dict[str, Any]) -> float:
    """Geometric mean over ``cases`` ([prompt, output] lengths) of the batch-1 decode tokens/s of ``step``
    (a side: ``arch`` and formats)."""
    return _geomean(_decode_tokens_per_s(p, p["step"]))


@case_kind("decode_board_power_w")
def decode_board_power_w(p: dict[str, Any]) -> float:
    """Mean power (W) of ``step`` (a side: ``arch`` and formats) decoding at batch 1, geometric mean over
    ``cases`` ([prompt, output] lengths; each case's step at its mean context): the step's energy over
    its time, i.e. the device's power model (an FPGA's ``fpga.power``) with its memory traffic."""
    return _geomean([r.energy_j / r.latency_s for r in _decode_results(p, p["step"])])


@case_kind("decode_efficiency_ratio")
def decode_efficiency_ratio(p: dict[str, Any]) -> float:
    """``metric`` of ``design`` over ``baseline``, geometric mean over ``cases`` ([prompt, output]
    lengths) of batch-1 decode: ``throughput`` (tokens/s), ``energy_efficiency`` (tokens/s per watt of
    the side's ``power_w``, the board power the paper measured and cites) or ``cost_efficiency``
    (tokens/s per dollar of the side's ``price_usd``)."""
    metric = p["metric"]
    if metric not in ("throughput", "energy_efficiency", "cost_efficiency"):
        raise SpecError(f"case: metric {metric!r} is not throughput, energy_efficiency or cost_efficiency")
    per = {"throughput": None, "energy_efficiency": "power_w", "cost_efficiency": "price_usd"}[metric]
    ratios = []
    for d, b in zip(_decode_tokens_per_s(p, p["design"]), _decode_tokens_per_s(p, p["baseline"]), strict=True):
        ratio = d / b
        if per:
            vals = [float(p[side][per]) for side in ("baseline", "design")]
            if min(vals) <= 0:
                raise SpecError(f"case: {per} must be positive on both sides, got {vals}")
            ratio *= vals[0] / vals[1]
        ratios.append(ratio)
    return _geomean(ratios)


def _unfused(side: dict[str, Any]) -> dict[str, Any]:
    return {**side, "fused": False}


@case_kind("fusion_speedup")
def fusion_speedup(p: dict[str, Any]) -> float:
    """Step time of the unfused (kernel by kernel) over the fused (spatial pipeline) execution on a
    dataflow system, ``stat`` (min or max) over ``workloads`` (each a step spec without the device)."""
    ratios = []
    for w in p["workloads"]:
        fused = _step({**w, **p["device"]})
        unfused = _step({**w, **p["device"], "fused": False})
        ratios.append(unfused.latency_s / fused.latency_s)
    return float(min(ratios) if p.get("stat", "min") == "min" else max(ratios))


def _switch_s(side: dict[str, Any], nbytes: float) -> float:
    """Seconds to bring a model of ``nbytes`` into the memory of the side's ``tp`` devices that run it
    (:func:`~xpusim.sim.coe.switch_seconds`)."""
    from ..sim.coe import switch_seconds

    system = _system(side)
    if system is None:
        raise SpecError("case: a model switch needs a system on each side")
    return switch_seconds(system, nbytes, int(side.get("tp", 1)))


@case_kind("model_switch_speedup")
def model_switch_speedup(p: dict[str, Any]) -> float:
    """Time to switch in a model (its weights from host/DDR memory into HBM) on ``baseline`` over ``design``."""
    nbytes = _model(p).weights_bytes
    return _switch_s(p["baseline"], nbytes) / _switch_s(p["design"], nbytes)


@case_kind("coe_speedup")
def coe_speedup(p: dict[str, Any]) -> float:
    """Composition of experts, one request after another, every request to an expert not in HBM: switch the
    expert in, prefill ``prompt`` tokens (the first output token), decode the other ``output - 1`` (at
    the mean context), ``batch`` sequences at a time; the time per request of ``baseline`` over ``design``."""
    from ..workloads.phases import Decode, Prefill

    model = _model(p)
    b, prompt, out = int(p.get("batch", 1)), int(p["prompt"]), int(p["output"])
    t = {}
    for side in ("baseline", "design"):
        pre = _side_step(p[side], model, Prefill(b, prompt))
        dec = _side_step(p[side], model, Decode(b, prompt + out // 2))
        t[side] = _switch_s(p[side], model.weights_bytes) + pre + (out - 1) * dec
    return t["baseline"] / t["design"]


@case_kind("attention_memory_growth")
def attention_memory_growth(p: dict[str, Any]) -> float:
    """How the on-chip intermediates of ``form`` attention grow with the sequence length, measured by
    the functional execution (:mod:`xpusim.workloads.functional.rdu`) over ``lengths``: ``growth:
    constant`` gives the largest over the smallest element count (1.0: constant); ``growth: linear``
    the largest over the smallest increment per added token between consecutive lengths (1.0: linear)."""
    import numpy as np

    from ..workloads.functional.rdu import naive_attention_with_peak, streaming_attention

    rng = np.random.default_rng(int(p.get("seed", 0)))
    d, rows, tile = int(p["head_dim"]), int(p["rows"]), int(p["kv_tile"])
    lengths = [int(n) for n in p["lengths"]]
    counts = []
    for n in lengths:
        q, k, v = (rng.standard_normal((r, d)) for r in (rows, n, n))
        ref, naive_peak = naive_attention_with_peak(q, k, v)
        if p["form"] == "streaming":
            out, peak = streaming_attention(q, k, v, tile)
            if not np.allclose(out, ref, atol=1e-10):
                raise SpecError("case: the streamed attention differs from the reference")
        else:
            peak = naive_peak
        counts.append(peak)
    if p["growth"] == "constant":
        return float(max(counts) / min(counts))
    slopes = [(b - a) / (m - n) for a, b, n, m in zip(counts, counts[1:], lengths, lengths[1:], strict=False)]
    return float(max(slopes) / min(slopes))


def list_cases() -> list[str]:
    return sorted(f.stem for f in CASES_DIR.glob("*.yaml"))


def load_case(name: str) -> dict[str, Any]:
    path = CASES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PresetNotFound(f"unknown reproduction {name!r}; cases: {', '.join(list_cases()) or 'none'}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"reproduction {name}: malformed YAML ({str(e).splitlines()[0]}); fix {path.name}") from None
    if not isinstance(d, dict):
        raise SpecError(f"reproduction {name}: must be a mapping with name, paper, claim, kind, params")
    for k in ("name", "paper", "claim", "kind", "params"):
        if k not in d:
            raise SpecError(f"reproduction {name}: missing {k!r}")
    if d["kind"] not in CASE_KINDS:
        raise SpecError(f"reproduction {name}: unknown kind {d['kind']!r}; kinds: {', '.join(sorted(CASE_KINDS))}")
    if ("claimed" in d) == ("claimed_range" in d):
        raise SpecError(f"reproduction {name}: give claimed (with tolerance_pct) or claimed_range")
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    rng = d.get("claimed_range")
    if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(v is None or number(v) for v in rng)):
        raise SpecError(f"reproduction {name}: claimed_range must be [low, high] (numbers, or null for open), got {rng!r}")
    if "claimed" in d and not number(d["claimed"]):
        raise SpecError(f"reproduction {name}: claimed must be a number, got {d['claimed']!r}")
    if bool(d.get("known_gap")) != ("gap_value" in d) or ("gap_value" in d and not (number(d["gap_value"])
                                                                                  and math.isfinite(d["gap_value"]))):
        raise SpecError(f"reproduction {name}: a known_gap case records the value it simulates as gap_value (a number), "
                        "and only such a case")
    if not number(d.get("tolerance_pct", 0)):
        raise SpecError(f"reproduction {name}: tolerance_pct must be a number, got {d['tolerance_pct']!r}")
    if "beats" in d and not number(d["beats"]):
        raise SpecError(f"reproduction {name}: beats must be a number (the value the claim says it exceeds), got "
                        f"{d['beats']!r}")
    return d


def run_case(name: str) -> dict[str, Any]:
    """Run one case: claimed vs simulated and whether it passes."""
    d = load_case(name)
    try:
        sim = float(CASE_KINDS[d["kind"]](d["params"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SpecError(f"reproduction {name}: malformed params for kind {d['kind']} ({type(e).__name__}: {e}); "
                        f"see the kind's docstring in validation/reproduce.py") from None
    out: dict[str, Any] = {"name": d["name"], "paper": d["paper"], "claim": d["claim"], "simulated": sim}
    if "claimed_range" in d:
        lo, hi = d["claimed_range"]
        tol = float(d.get("tolerance_pct", 0.0)) / 100.0  # "inside the range +-tol": the bounds widened by tol
        out.update(claimed=[lo, hi], tolerance_pct=tol * 100.0,
                   passed=(lo is None or sim >= lo * (1 - tol)) and (hi is None or sim <= hi * (1 + tol)))
    else:
        tol = float(d.get("tolerance_pct", 0.0))
        out.update(claimed=float(d["claimed"]), tolerance_pct=tol,
                   passed=abs(sim - d["claimed"]) <= tol / 100.0 * abs(d["claimed"]))
    if "beats" in d:  # the claim's direction: above this, whatever the tolerance allows
        out["passed"] = out["passed"] and sim > float(d["beats"])
    out["note"] = str(d.get("note", ""))
    out["known_gap"] = str(d.get("known_gap", ""))
    if "gap_value" in d:
        out["gap_value"] = float(d["gap_value"])
    return out
