"""Figures of design-space studies (from the trials table, so a saved study renders too) and of
validation runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .sim_figures import PALETTE, _style


def _label(metric: str, units: dict[str, str]) -> str:
    u = units.get(metric, "")
    return f"{metric} ({u})" if u else metric


def pareto(trials: pd.DataFrame, front: pd.DataFrame, objectives: list[str], knobs: list[str],
           units: dict[str, str]) -> go.Figure:
    """Every finished trial (feasible, infeasible) and the Pareto front: 2-D for two objectives,
    3-D for three or more."""
    def hover(df: pd.DataFrame) -> list[str]:
        return ["<br>".join([f"trial {int(r['number'])}"] + [f"{k} = {r[k]}" for k in knobs if k in r]
                            + [f"{o} = {r[o]:.4g}" for o in objectives if o in r and pd.notna(r[o])])
                for _, r in df.iterrows()]

    groups = [("infeasible", trials[~trials["feasible"]].dropna(subset=objectives), "#bbbbbb", 6),
              ("feasible", trials[trials["feasible"]], PALETTE[0], 7), ("Pareto front", front, "#d62728", 11)]
    fig = go.Figure()
    three = len(objectives) >= 3
    for name, df, color, size in groups:
        if df.empty:
            continue
        kw = {"mode": "markers", "name": name, "text": hover(df), "hovertemplate": "%{text}<extra></extra>",
              "marker": {"color": color, "size": size if not three else size / 2, "line": {"width": 0.5, "color": "#333"}}}
        if three:
            fig.add_trace(go.Scatter3d(x=df[objectives[0]], y=df[objectives[1]], z=df[objectives[2]], **kw))
        else:
            fig.add_trace(go.Scatter(x=df[objectives[0]], y=df[objectives[1]], **kw))
    if three:
        fig.update_layout(scene={"xaxis_title": _label(objectives[0], units), "yaxis_title": _label(objectives[1], units),
                                 "zaxis_title": _label(objectives[2], units)})
    else:
        fig.update_xaxes(title=_label(objectives[0], units))
        fig.update_yaxes(title=_label(objectives[1], units))
    rest = objectives[3:]
    note = f" (drawn over the first three objectives; {', '.join(rest)} on hover: a point on the front can look " \
           f"dominated in this projection)" if rest else ""
    return _style(fig, "Pareto front" + note)


def history(trials: pd.DataFrame, objective: str, minimize: bool, units: dict[str, str]) -> go.Figure:
    """Optimisation history of the first objective: every feasible trial and the best so far."""
    df = trials[trials["feasible"]].sort_values("number")
    best = df[objective].cummin() if minimize else df[objective].cummax()
    fig = go.Figure([go.Scatter(x=df["number"], y=df[objective], mode="markers", name="trial", marker={"color": PALETTE[0]}),
                     go.Scatter(x=df["number"], y=best, mode="lines", name="best so far", line={"color": "#d62728"})])
    fig.update_xaxes(title="trial number")
    fig.update_yaxes(title=_label(objective, units))
    return _style(fig, f"Optimisation history ({objective})")


def parallel(trials: pd.DataFrame, knobs: list[str], objective: str, units: dict[str, str]) -> go.Figure:
    """Parallel coordinates of the feasible trials' knobs, coloured by the first objective."""
    df = trials[trials["feasible"]]
    dims = []
    for k in knobs + [objective]:
        col = df[k]
        if not pd.api.types.is_numeric_dtype(col):  # categorical knob: positions with the choices as tick labels
            cats = sorted(col.astype(str).unique())
            dims.append({"label": k, "values": col.astype(str).map({c: i for i, c in enumerate(cats)}),
                         "tickvals": list(range(len(cats))), "ticktext": cats})
        else:
            dims.append({"label": _label(k, units) if k == objective else k, "values": col.astype(float)})
    fig = go.Figure(go.Parcoords(line={"color": df[objective].astype(float), "colorscale": "Viridis", "showscale": True},
                                 dimensions=dims))
    _style(fig, "Parallel coordinates of the feasible designs")
    fig.update_layout(margin={"t": 100, "l": 60, "r": 40, "b": 40})
    return fig


def importance(scores: dict[str, float], objective: str) -> go.Figure:
    """Knob importance for the first objective (``optuna.importance``, its default evaluator)."""
    names = sorted(scores, key=lambda k: scores[k])
    fig = go.Figure(go.Bar(x=[scores[n] for n in names], y=names, orientation="h", marker_color=PALETTE[2]))
    fig.update_xaxes(title=f"importance for {objective} (normalised, sums to 1)")
    fig.update_yaxes(title="knob")
    return _style(fig, "Parameter importance")


def validation_scatter(rows: pd.DataFrame) -> go.Figure:
    """Predicted vs measured latency per device and kind, with the y = x line and +-10 % band."""
    fig = go.Figure()
    lo = float(min(rows["measured_s"].min(), rows["predicted_s"].min())) / 1.5
    hi = float(max(rows["measured_s"].max(), rows["predicted_s"].max())) * 1.5
    xs = np.logspace(np.log10(lo), np.log10(hi), 50)
    for f, name, dash in ((1.0, "predicted = measured", "solid"), (1.1, "+10 %", "dot"), (0.9, "-10 %", "dot")):
        fig.add_trace(go.Scatter(x=xs * 1e3, y=xs * f * 1e3, mode="lines", name=name, hoverinfo="skip",
                                 line={"color": "#888" if f != 1 else "#333", "dash": dash}))
    keys = [c for c in ("device", "kind") if c in rows]
    for i, (key, g) in enumerate(rows.groupby(keys, sort=True) if keys else [("all", rows)]):
        label = " / ".join(key) if isinstance(key, tuple) else str(key)
        text = [f"{s}<br>measured {m * 1e6:.4g} us<br>predicted {p * 1e6:.4g} us<br>error {e:+.1f} %"
                for s, m, p, e in zip(g["shape"], g["measured_s"], g["predicted_s"], g["err_pct"], strict=True)]
        fig.add_trace(go.Scatter(x=g["measured_s"] * 1e3, y=g["predicted_s"] * 1e3, mode="markers", name=label, text=text,
                                 hovertemplate="%{text}<extra></extra>", marker={"size": 8, "color": PALETTE[i % 10]}))
    fig.update_xaxes(type="log", title="measured latency (ms)")
    fig.update_yaxes(type="log", title="predicted latency (ms)")
    return _style(fig, "Predicted vs measured")
