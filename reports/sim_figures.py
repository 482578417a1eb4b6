"""Figures of simulated steps: roofline, latency/energy breakdowns, timeline, memory footprint,
and a side-by-side comparison of devices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..arch.loader import load_arch
from ..errors import XpusimError
from ..sim.result import Result, roof, step_compute_class
from ..workloads.model import load_model

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
def kind_color(kind: str) -> str:
    """One colour per op kind in every figure (the order of the Einsum IR's kinds)."""
    from ..workloads.einsum import KINDS

    order = ["matmul", "attention", *[k for k in KINDS if k != "matmul"], "repeat"]
    return PALETTE[order.index(kind) % len(PALETTE)] if kind in order else "#999999"


AXIS = {"showline": True, "linecolor": "#444", "mirror": True, "gridcolor": "#e5e5e5"}


def _style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", margin={"l": 70, "r": 20, "t": 50, "b": 60},
                      font={"size": 12}, legend={"orientation": "h", "y": -0.18})
    fig.update_xaxes(**AXIS)
    fig.update_yaxes(**AXIS)
    return fig


def saved_roof(saved: dict[str, Any] | None, arch_name: str, compute) -> dict[str, Any] | None:
    """The roof a result stored (:func:`~xpusim.sim.result.roof`); for a file saved without one,
    that of the device loaded by name (``compute(arch)`` gives the class); None when no device of
    that name loads."""
    if saved:
        return saved
    try:
        arch = load_arch(arch_name)
        return roof(arch, compute(arch))
    except XpusimError:
        return None


def _stacked_pair(fig: go.Figure, left: tuple[str, str], right: tuple[str, str]) -> None:
    """Stacked bars in two side-by-side panels with their (x, y) axis titles."""
    fig.update_layout(barmode="stack")
    for col, (x, y) in ((1, left), (2, right)):
        fig.update_xaxes(title_text=x, row=1, col=col)
        fig.update_yaxes(title_text=y, row=1, col=col)


def roofline(res: Result) -> go.Figure:
    """Every op at (arithmetic intensity, achieved FLOP/s) under the device's compute and memory
    roofs; hover shows the op, FLOPs, bytes, intensity, bound and latency."""
    df = res.ops[(res.ops["flops"] > 0) & (res.ops["bytes"] > 0) & (res.ops["latency_s"] > 0)].copy()
    df["achieved"] = df["flops"] / df["latency_s"]
    fig = go.Figure()
    arch_name = str(res.inputs.get("arch", ""))
    x_lo = max(1e-2, float(df["intensity"].min()) / 3) if len(df) else 1e-2
    x_hi = max(1e3, float(df["intensity"].max()) * 3) if len(df) else 1e4
    rf = saved_roof(res.inputs.get("roof"), arch_name, lambda arch: step_compute_class(res.inputs, arch))
    if rf is not None:  # a file saved without a roof, of a device no longer there: ops only
        peak = rf["peak_flops_per_s"]
        xs = np.logspace(math.log10(x_lo), math.log10(x_hi), 200)
        fig.add_trace(go.Scatter(x=xs, y=np.minimum(peak, rf["bandwidth_Bps"] * xs), mode="lines",
                                 name=f"roof ({rf['compute']} peak, {rf['memory']} bandwidth)",
                                 line={"color": "#333", "width": 2}, hoverinfo="skip"))
        fig.add_annotation(x=math.log10(x_hi), y=math.log10(peak), text=f"{peak / 1e12:.0f} TFLOP/s", showarrow=False,
                           xanchor="right", yanchor="bottom")
    for kind, g in df.groupby("kind", sort=True):
        text = [f"<b>{n}</b> ({b})<br>FLOPs {f:.3g}<br>bytes {by:.3g}<br>intensity {it:.3g} FLOP/B<br>bound: {bd}"
                f"<br>latency {lat * 1e6:.3g} us" for n, b, f, by, it, bd, lat in
                zip(g["name"], g["block"], g["flops"], g["bytes"], g["intensity"], g["bound"], g["latency_s"], strict=True)]
        fig.add_trace(go.Scatter(x=g["intensity"], y=g["achieved"], mode="markers", name=kind,
                                 marker={"size": 9, "color": kind_color(str(kind)), "line": {"width": 0.5, "color": "#222"}},
                                 text=text, hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(type="log", title="arithmetic intensity (FLOP/byte)")
    fig.update_yaxes(type="log", title="achieved throughput (FLOP/s)")
    return _style(fig, f"Roofline: {res.inputs.get('trace', '')} on {arch_name}")


def breakdown(res: Result) -> go.Figure:
    """Stacked latency and energy of the step, per block (layer type) and op kind."""
    df = res.ops.groupby(["block", "kind"], sort=False)[["total_latency_s", "total_energy_j"]].sum().reset_index()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("latency per block (ms)", "energy per block (J)"))
    for kind in df["kind"].unique():
        g = df[df["kind"] == kind]
        color = kind_color(str(kind))
        fig.add_trace(go.Bar(x=g["block"], y=g["total_latency_s"] * 1e3, name=kind, marker_color=color, legendgroup=kind,
                             hovertemplate=f"{kind}<br>%{{x}}: %{{y:.4g}} ms<extra></extra>"), 1, 1)
        fig.add_trace(go.Bar(x=g["block"], y=g["total_energy_j"], name=kind, marker_color=color, legendgroup=kind,
                             showlegend=False, hovertemplate=f"{kind}<br>%{{x}}: %{{y:.4g}} J<extra></extra>"), 1, 2)
    _stacked_pair(fig, ("block (x repeat)", "latency (ms)"), ("block (x repeat)", "energy (J)"))
    inp = res.inputs or {}
    scope = ""  # what the op rows are when they are not the whole step
    if inp.get("system"):
        mb = inp.get("microbatches", 1)
        scope = f": one device's ops{', one of ' + str(mb) + ' micro-batches' if mb and mb > 1 else ''} (the step's " \
                f"totals count every device and micro-batch)"
    elif inp.get("streams", 1) > 1:
        scope = f": one of the {inp['streams']} interleaved sub-batches (the step's totals count both)"
    return _style(fig, "Where the time and energy go (per block and op kind)" + scope)


def timeline_events(res: Result, max_repeats: int = 2) -> list[dict[str, Any]]:
    """Ops in trace order as (name, resource, start, duration) events, seconds; a block repeated
    N times shows its first ``max_repeats`` repetitions and one summary bar for the rest. A result
    of several steps (a chunked prefill's ``step`` column) runs them one after the other."""
    events: list[dict[str, Any]] = []
    t = 0.0
    steps = "step" in res.ops.columns
    for key, g in res.ops.groupby(["step", "block"] if steps else "block", sort=False):
        parts = key if isinstance(key, tuple) else (key,)
        block = f"step {parts[0]!s} {parts[1]!s}" if steps else str(parts[0])
        rep = int(g["repeat"].iloc[0])
        for r in range(min(rep, max_repeats)):
            for _, op in g.iterrows():
                events.append({"name": str(op["name"]), "block": f"{block}[{r}]", "resource": str(op["bound"]),
                               "kind": str(op["kind"]), "start": t, "dur": float(op["latency_s"])})
                t += float(op["latency_s"])
        if rep > max_repeats:
            rest = float(g["latency_s"].sum()) * (rep - max_repeats)
            events.append({"name": f"{block} x{rep - max_repeats} more", "block": str(block), "resource": "(repeats)",
                           "kind": "repeat", "start": t, "dur": rest})
            t += rest
    return events


def timeline(res: Result) -> go.Figure:
    """Gantt chart of the step: one row per device (pipeline stages and links, from a system
    simulation's event engine), else one row per bounding resource of a single device."""
    if res.timeline:
        ev = pd.DataFrame(res.timeline).rename(columns={"device": "resource"})
        ev["block"] = ev["name"]
        fig = go.Figure()
        for kind, g in ev.groupby("kind", sort=False):
            fig.add_trace(go.Bar(y=g["resource"], x=g["dur"] * 1e3, base=g["start"] * 1e3, orientation="h", name=kind,
                                 marker_color=PALETTE[0] if kind == "compute" else PALETTE[1], text=g["name"],
                                 textposition="inside", hovertemplate="<b>%{text}</b><br>start %{base:.4g} ms<br>"
                                                                      "%{x:.4g} ms<extra></extra>"))
        fig.update_layout(barmode="overlay")
        fig.update_xaxes(title="time (ms)")
        fig.update_yaxes(title="device", categoryorder="category descending")
        inp = res.inputs or {}
        where = (f"{inp['system']} ({inp.get('plan', '')})" if inp.get("system")
                 else f"{inp.get('arch', '')} ({inp.get('placement', '')} placement, {inp.get('mode', '')})")
        return _style(fig, f"Timeline of one step on {where}")
    ev = pd.DataFrame(timeline_events(res))
    fig = go.Figure()
    for kind, g in ev.groupby("kind", sort=False):
        fig.add_trace(go.Bar(y=g["resource"], x=g["dur"] * 1e3, base=g["start"] * 1e3, orientation="h", name=kind,
                             marker_color=kind_color(str(kind)), text=g["name"], textposition="none",
                             customdata=np.stack([g["block"], g["dur"] * 1e6], axis=1),
                             hovertemplate="<b>%{text}</b> %{customdata[0]}<br>start %{base:.4g} ms<br>"
                                           "%{customdata[1]:.3g} us<extra></extra>"))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="time (ms)")
    fig.update_yaxes(title="bounding resource", categoryorder="category ascending")
    return _style(fig, "Timeline of one step (first repetitions of each block)")


def _system_events(res: Result) -> list[dict[str, Any]]:
    """A system step's events (:attr:`Result.timeline`) as :func:`timeline_events` gives them, the
    stage or link that runs each as its resource."""
    return [{"name": str(e["name"]), "block": str(e["name"]), "resource": str(e["device"]), "kind": str(e["kind"]),
             "start": float(e["start"]), "dur": float(e["dur"])} for e in res.timeline]


def chrome_trace(results: Result | list[Result]) -> dict[str, Any]:
    """The timelines as Chrome/Perfetto trace-event JSON (microseconds): one process per result (a
    device of a side-by-side run), one thread per resource — per pipeline stage and link for a
    system step (its :attr:`Result.timeline`)."""
    out: list[dict[str, Any]] = []
    for pid, res in enumerate(results if isinstance(results, list) else [results], start=1):
        ev = _system_events(res) if res.timeline else timeline_events(res, max_repeats=10**9)
        tids = {r: i for i, r in enumerate(sorted({e["resource"] for e in ev}))}
        out += [{"name": e["name"], "cat": e["kind"], "ph": "X", "ts": e["start"] * 1e6, "dur": e["dur"] * 1e6, "pid": pid,
                 "tid": tids[e["resource"]], "args": {"block": e["block"]}} for e in ev]
        out += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": t, "args": {"name": r}} for r, t in tids.items()]
        name = res.inputs.get("system") or res.inputs.get("arch", "")
        out.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": str(name)}})
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def memory(results: list[Result]) -> go.Figure:
    """Footprint per device (weights, KV cache, SSM state, activations) against capacity, and the
    KV cache's growth over decode steps."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("footprint vs capacity (GiB)", "footprint over context (GiB)"))
    gib = 2.0**30
    names = [str(r.inputs.get("arch", "")) for r in results]
    parts = (("weights", "weights_bytes"), ("KV cache", "kv_cache_bytes"), ("SSM state", "ssm_state_bytes"),
             ("activations", "activation_bytes"))
    for i, (label, attr) in enumerate(parts):
        fig.add_trace(go.Bar(x=names, y=[getattr(r, attr) / gib for r in results], name=label,
                             marker_color=PALETTE[i], hovertemplate=f"{label}: %{{y:.3g}} GiB<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=names, y=[r.capacity_bytes / gib for r in results], mode="markers", name="capacity",
                             marker={"symbol": "line-ew-open", "size": 40, "color": "#d62728", "line": {"width": 3}}), 1, 1)
    r = results[0]
    args = r.inputs.get("phase_args", {})
    try:
        model = load_model(str(r.inputs.get("model", "")))
        batch = int(args.get("batch", 1))
        top = int(args.get("context") or args.get("seq") or 1) * 2
        ctx = np.unique(np.linspace(1, max(top, 2), 60).astype(int))
        kv = np.array([model.kv_cache_bytes(batch, int(c)) for c in ctx])
        fig.add_trace(go.Scatter(x=ctx, y=(r.weights_bytes + kv) / gib, mode="lines", name=f"weights + KV (batch {batch})",
                                 line={"color": PALETTE[1]}), 1, 2)
        fig.add_trace(go.Scatter(x=ctx, y=np.full(ctx.shape, r.capacity_bytes / gib), mode="lines", name="capacity",
                                 line={"color": "#d62728", "dash": "dash"}, showlegend=False), 1, 2)
        fig.update_xaxes(title_text="context (tokens per sequence)", row=1, col=2)
    except XpusimError:
        pass
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="memory (GiB)", row=1, col=1)
    fig.update_yaxes(title_text="memory (GiB)", row=1, col=2)
    return _style(fig, "Memory footprint")


def fpga_resources(results: list[Result]) -> go.Figure | None:
    """Share of each FPGA part's DSP, BRAM, URAM, LUT and FF the engine template uses (one bar group
    per FPGA device); None when no result is on an FPGA."""
    fpgas = [r for r in results if r.inputs.get("fpga_resources")]
    if not fpgas:
        return None
    fig = go.Figure()
    for i, r in enumerate(fpgas):
        table = r.inputs["fpga_resources"]
        known = {k: v for k, v in table.items() if v["available"]}  # unpublished counts have no share
        names = [k.upper() for k in known]
        share = [100.0 * v["used"] / v["available"] for v in known.values()]
        text = [f"{v['used']:,} of {v['available']:,}" for v in known.values()]
        fig.add_trace(go.Bar(x=names, y=share, name=str(r.inputs.get("arch", "")), marker_color=PALETTE[i % len(PALETTE)],
                             text=text, hovertemplate="%{x}: %{text} (%{y:.1f} %)<extra></extra>"))
    fig.update_yaxes(title_text="share of the part (%)", range=[0, 100])
    return _style(fig, "FPGA resources used by the engine template")


def comparison(results: list[Result]) -> go.Figure:
    """Devices side by side: step latency per op kind, and throughput."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("step latency per op kind (ms)", "throughput (tokens/s)"))
    names = [str(r.inputs.get("arch", "")) for r in results]
    kinds = sorted({k for r in results for k in r.ops["kind"].unique()})
    for kind in kinds:
        ys = [float(r.ops.loc[r.ops["kind"] == kind, "total_latency_s"].sum()) * 1e3 for r in results]
        fig.add_trace(go.Bar(x=names, y=ys, name=kind, marker_color=kind_color(str(kind))), 1, 1)
    fig.add_trace(go.Bar(x=names, y=[r.tokens_per_s for r in results], name="tokens/s", marker_color="#444",
                         showlegend=False), 1, 2)
    _stacked_pair(fig, ("device", "latency (ms)"), ("device", "tokens/s"))
    return _style(fig, "Device comparison")
