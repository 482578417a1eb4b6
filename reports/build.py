"""Reports for each entry point, and from a saved result file.

* :func:`simulate_report` — one or several devices running the same step: comparison (several),
  roofline per device, breakdown, timeline, memory, op table;
* :func:`op_report` — one operator: its place on the roofline, cost terms and mapping;
* :func:`explore_report` — a study: Pareto front, history, parallel coordinates, importance;
* :func:`validate_report` — predicted vs measured with the error table.

A saved result (``--save FILE`` or the ``--json`` output) is a JSON object; ``{"report": kind,
...}`` from ``--save``, or a simulation result as ``simulate --json`` prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..files import read_text
from ..sim.result import Result, energy_basis, formats_label, strict_json, throughput_unit
from . import html as H
from . import sim_figures as SF
from . import study_figures as STF


def _header_sim(results: list[Result]) -> dict[str, str]:
    r = results[0]
    return {"device(s)": ", ".join(str(x.inputs.get("arch", "")) for x in results), "model": str(r.inputs.get("model", "")),
            "phase": f"{r.inputs.get('phase', '')} {r.inputs.get('phase_args', {})}"}


def simulate_report(results: list[Result], command: str | None = None) -> str:
    sections: list[tuple[str, str, str]] = []
    if len(results) > 1:
        sections.append(("Comparison", "The same step on each device.", H.figure_html(SF.comparison(results), "cmp")))
    unit = throughput_unit(str(results[0].inputs.get("phase", "")))
    rows = [{"device": r.inputs.get("arch", ""), "latency (ms)": r.latency_s * 1e3, unit: r.tokens_per_s,
             "energy (J)": r.energy_j, "energy basis": energy_basis(r.inputs), "formats (w/a/kv)": formats_label(r.inputs),
             "memory (GiB)": r.memory_bytes / 2**30, "capacity (GiB)": r.capacity_bytes / 2**30,
             "fits": "yes" if r.memory_bytes <= r.capacity_bytes else "EXCEEDS (--ignore-memory)"} for r in results]
    differ = [what for what, label in (("energy bases", energy_basis), ("formats", formats_label))
              if len({label(r.inputs) for r in results}) > 1]
    note = ("Energy basis: 'dynamic + static' adds the static power a device states (an FPGA board's idle and logic "
            "power) to its MACs and data movement; 'dynamic only' counts those alone, a lower bound."
            + (f" The devices' {' and '.join(differ)} differ: their figures are not like for like." if differ else ""))
    sections.append(("Summary", note, H.table_html(rows, list(rows[0]))))
    for i, r in enumerate(results):
        dev = str(r.inputs.get("arch", ""))
        sections.append((f"Roofline — {dev}", "Each op at its arithmetic intensity and achieved throughput; hover for "
                         "details.", H.figure_html(SF.roofline(r), f"roofline{i}")))
        sections.append((f"Breakdown — {dev}", "", H.figure_html(SF.breakdown(r), f"breakdown{i}")))
        sections.append((f"Timeline — {dev}", "Ops in trace order on the resource that bounds them (export all events "
                         "with --trace FILE for Perfetto).", H.figure_html(SF.timeline(r), f"timeline{i}", 380)))
    sections.append(("Memory", "", H.figure_html(SF.memory(results), "memory")))
    fpga = SF.fpga_resources(results)
    if fpga is not None:
        sections.append(("FPGA resources", "What the engine template uses of each part (the estimator of arch/fpga.py); a "
                         "template over a budget is refused before it runs.", H.figure_html(fpga, "fpga")))
    cols = ["block", "name", "kind", "repeat", "latency_s", "flops", "bytes", "intensity", "bound", "utilization"]
    sections.append((f"Ops — {results[0].inputs.get('arch', '')}", "",
                     H.table_html(results[0].ops[cols].to_dict(orient="records"), cols)))
    return H.page(f"xpusim: {results[0].inputs.get('trace', '')}", _header_sim(results), sections, command)


def op_report(out: dict[str, Any], command: str | None = None) -> str:
    """``out``: the dict ``xpusim op --json`` prints; its ``roof`` (:func:`~xpusim.sim.result.roof`)
    draws the roofline (a file saved without one: the device loaded by name, else no roof)."""
    import plotly.graph_objects as go

    from ..dtypes import get_dtype

    flops, lat = float(out["flops"]), float(out["latency_s"])
    moved = out.get("bytes_by_level", {})
    rf = SF.saved_roof(out.get("roof"), str(out["arch"]), lambda arch: get_dtype(str(out["dtype"])).compute)
    memory = rf["memory"] if rf else next(iter(moved), "memory")
    dram = float(moved.get(memory, 0.0)) or 1.0
    fig = go.Figure()
    if rf is not None:
        xs = np.logspace(-1, 4, 100)
        fig.add_trace(go.Scatter(x=xs, y=np.minimum(rf["peak_flops_per_s"], rf["bandwidth_Bps"] * xs), mode="lines",
                                 name=f"roof ({rf['compute']} peak, {memory} bandwidth)", line={"color": "#333"}))
    name = f"gemm {out['m']}x{out['n']}x{out['k']} {out['dtype']}"
    fig.add_trace(go.Scatter(x=[flops / dram], y=[flops / lat], mode="markers", name=name, marker={"size": 14},
                             text=[f"<b>{name}</b><br>latency {lat * 1e6:.4g} us<br>bound: {out['bound']}"],
                             hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(type="log", title=f"FLOP per byte of {memory} traffic")
    fig.update_yaxes(type="log", title="achieved throughput (FLOP/s)")
    SF._style(fig, f"{name} on {out['arch']}")
    levels = go.Figure(go.Bar(x=list(moved), y=[v / 2**20 for v in moved.values()], marker_color=SF.PALETTE[1]))
    levels.update_xaxes(title="memory level")
    levels.update_yaxes(title="bytes moved (MiB)")
    SF._style(levels, "Traffic per memory level")
    keys = ["cycles", "compute_cycles", "stall_cycles", "latency_s", "utilization", "energy_j", "bound"]
    mapping = out.get("mapping") or {}
    sections = [("Roofline", "", H.figure_html(fig, "oproof")), ("Memory traffic", "", H.figure_html(levels, "oplevels")),
                ("Cost", "", H.table_html([{k: out.get(k) for k in keys}], keys)),
                ("Mapping", "", H.table_html([{"field": k, "value": json.dumps(v)} for k, v in mapping.items()],
                                             ["field", "value"]))]
    return H.page(f"xpusim: {name}", {"device": str(out["arch"]), "op": name}, sections, command)


def explore_report(trials: pd.DataFrame, front: pd.DataFrame, objectives: list[str], directions: list[str],
                   knobs: list[str], study: str, space: str, importance: dict[str, float] | None = None,
                   command: str | None = None) -> str:
    from ..explore.space import METRICS

    units = {m: v[1] for m, v in METRICS.items()}
    # a study whose every trial was pruned before scoring has no objective columns: show them empty
    trials = trials.reindex(columns=list(dict.fromkeys([*trials.columns, *knobs, *objectives])))
    front = front.reindex(columns=list(dict.fromkeys([*front.columns, "number", *knobs, *objectives])))
    sections = []
    if trials.empty:
        sections.append(("No trials yet", "The study has no finished trial: run more (--trials, a longer --timeout).", ""))
    elif len(objectives) >= 2:
        fig = STF.pareto(trials, front, objectives, knobs, units)
        sections.append(("Pareto front", "Grey: infeasible designs (a constraint broken); blue: feasible; red: the "
                         "Pareto-optimal designs.", H.figure_html(fig, "pareto", 520)))
    feasible = trials[trials["feasible"]] if len(trials) else trials
    if len(feasible):
        sections.append(("Optimisation history", "", H.figure_html(
            STF.history(trials, objectives[0], directions[0] == "minimize", units), "history")))
        sections.append(("Parallel coordinates", "", H.figure_html(STF.parallel(trials, knobs, objectives[0], units),
                                                                   "parcoords", 480)))
    if importance:
        sections.append(("Parameter importance", "", H.figure_html(STF.importance(importance, objectives[0]), "importance")))
    cols = ["number", *knobs, *objectives]
    sections.append((f"Pareto set ({len(front)} designs)", "", H.table_html(front[cols].to_dict(orient="records")
                                                                          if len(front) else [], cols)))
    header = {"study": study, "space": space, "objectives": ", ".join(f"{o} ({d})" for o, d in zip(objectives, directions,
                                                                                                     strict=True)),
              "trials": f"{len(trials)} finished, {int(trials['feasible'].sum()) if len(trials) else 0} feasible"}
    return H.page(f"xpusim explore: {study}", header, sections, command)


def validate_report(rows: pd.DataFrame, summary: dict[str, dict[str, dict]], command: str | None = None) -> str:
    table = [{"device": d, "kind": k, "N": v["n"], "MAPE %": v["mape_pct"], "max |err| %": v["max_abs_pct_err"]}
             for d, kinds in summary.items() for k, v in kinds.items()]
    sections = [("Predicted vs measured", "Each point is one measured kernel; dotted lines: +-10 %.",
                 H.figure_html(STF.validation_scatter(rows), "validation", 540)),
                ("Error per device and kind", "", H.table_html(table, ["device", "kind", "N", "MAPE %", "max |err| %"])),
                ("Every measurement", "", H.table_html(rows.to_dict(orient="records"), list(rows.columns)))]
    return H.page("xpusim validate", {"device(s)": ", ".join(summary)}, sections, command)


def serve_report(res: Any, summary: dict[str, Any], command: str | None = None) -> str:
    """A serving run: latency distributions, throughput over time, batch composition."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    req = res.requests
    fig = make_subplots(rows=1, cols=3, subplot_titles=("TTFT (ms)", "TPOT (ms)", "end-to-end latency (s)"))
    for i, (col, scale) in enumerate((("ttft_s", 1e3), ("tpot_s", 1e3), ("e2e_s", 1.0)), start=1):
        fig.add_trace(go.Histogram(x=req[col].dropna() * scale, nbinsx=60, marker_color=SF.PALETTE[i - 1], showlegend=False),
                      1, i)
        fig.update_yaxes(title_text="requests", row=1, col=i)
    SF._style(fig, "Request latency distributions")
    tl = res.timeline
    span = float((tl["start_s"] + tl["duration_s"]).max()) if len(tl) else 1.0
    edges = np.linspace(0.0, span, 101)
    width = edges[1] - edges[0]
    comp = go.Figure()
    for col, name, color in (("n_prefill_tokens", "prefill tokens/s", SF.PALETTE[1]), ("n_decode", "decode tokens/s",
                                                                                      SF.PALETTE[0])):
        tokens, _ = np.histogram(tl["start_s"], bins=edges, weights=tl[col])
        comp.add_trace(go.Bar(x=edges[:-1] + width / 2, y=tokens / width, width=width, name=name, marker_color=color))
    comp.update_layout(barmode="stack")
    comp.update_xaxes(title="time (s)")
    comp.update_yaxes(title="tokens processed per second")
    SF._style(comp, "Engine throughput over time (prefill and decode tokens)")
    wanted = ("scheduler", "n_requests", "throughput_tok_s", "throughput_req_s", "goodput_req_s", "ttft_p50_s", "ttft_p99_s",
              "tpot_p50_s", "tpot_p99_s", "e2e_p99_s", "preemptions")
    keys: list[str] = [k for k in wanted if k in summary]
    engine = summary.get("engine") or {}
    sections = [("Latency", "", H.figure_html(fig, "latency")), ("Batches", "", H.figure_html(comp, "batches")),
                ("Summary", "", H.table_html([{k: summary[k] for k in keys}], keys))]
    return H.page("xpusim serve", {"model": str(engine.get("model", "")), "device": str(engine.get("device", "")),
                                   "engine": str(engine.get("plan", "")), "scheduler": str(summary.get("scheduler", ""))},
                  sections, command)


def save(path: str | Path, kind: str, payload: dict[str, Any]) -> Path:
    """Save what a report needs (``--save FILE``)."""
    return H.write(path, strict_json({"report": kind, **payload}))


def report_from_file(path: str | Path, command: str | None = None) -> str:
    """A report from a saved result: ``--save`` files of every kind, or ``simulate --json`` output."""
    try:
        d = json.loads(read_text(path, "a --json or --save file"))
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not JSON ({e.msg} at line {e.lineno}); give a --json or --save file") from None
    if not isinstance(d, dict):
        raise SpecError(f"{path}: expected a JSON object from --json or --save")
    several = isinstance(d.get("results"), list) and all(isinstance(r, dict) and "ops" in r for r in d["results"])
    kind = d.get("report") or ("simulate" if ("ops" in d and "latency_s" in d) or several
                               else "op" if d.get("op") == "gemm" else "")
    try:
        return _report_of(kind, d, path, command)
    except KeyError as e:  # a field the report reads: a file from another version, or edited
        raise SpecError(f"{path}: a saved {kind} result without {e.args[0]!r}; re-save it") from None


#: what a report reads of each saved simulation result, and of each row of a validation
_RESULT_FIELDS = ("ops", "latency_s", "energy_j", "tokens", "weights_bytes", "kv_cache_bytes", "activation_bytes",
                  "capacity_bytes")
_VALIDATE_COLUMNS = ("shape", "measured_s", "predicted_s", "err_pct")


def _table(rows: Any, columns: list[str] | tuple[str, ...], name: str) -> pd.DataFrame:
    """``rows`` (a list of records) as a frame; a KeyError names the first column it lacks
    (an empty table needs none)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise KeyError(name)
    df = pd.DataFrame(rows)
    missing = [c for c in columns if c not in df.columns] if rows else []
    if missing:
        raise KeyError(f"{name}.{missing[0]}")
    return df


def _report_of(kind: str, d: dict[str, Any], path: str | Path, command: str | None) -> str:
    """The report of a saved result ``d`` of ``kind``; a missing field raises KeyError naming it."""
    from ..sim.result import COLUMNS

    if kind == "simulate":
        saved = d.get("results", [d])
        if not isinstance(saved, list) or not saved or not all(isinstance(r, dict) for r in saved):
            raise KeyError("results")
        for r in saved:
            missing = [f for f in _RESULT_FIELDS if f not in r] or ([] if r["ops"] else ["ops"])
            if missing:
                raise KeyError(missing[0])
            _table(r["ops"], COLUMNS, "ops")
        return simulate_report([Result.from_dict(r) for r in saved], command)
    if kind == "op":
        return op_report(d, command)
    if kind == "explore":
        objectives, knobs = list(d["objectives"]), list(d["knobs"])
        trials = _table(d["trials"], ["number", "feasible", *knobs], "trials")  # objectives: absent if none scored
        pareto = _table(d["pareto"], ["number", *knobs], "pareto")
        return explore_report(trials, pareto, objectives, d["directions"], knobs, d["study"], d["space"],
                              d.get("importance"), command)
    if kind == "serve":
        from types import SimpleNamespace

        from ..sim.serving import TIMELINE_COLUMNS

        run = SimpleNamespace(requests=_table(d["requests"], ["ttft_s", "tpot_s", "e2e_s"], "requests"),
                              timeline=_table(d["timeline"], TIMELINE_COLUMNS, "timeline"))
        if not len(run.timeline):
            run.timeline = pd.DataFrame(columns=TIMELINE_COLUMNS)
        return serve_report(run, d["summary"], command)
    if kind == "validate":
        return validate_report(_table(d["rows"], _VALIDATE_COLUMNS, "rows"), d["summary"], command)
    raise SpecError(f"{path}: not a saved xpusim result (expected the output of --save, or of simulate (one or several "
                    "--arch) or op with --json)")
