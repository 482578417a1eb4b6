"""One self-contained, offline HTML file: plotly.js inlined once, a header naming what was
simulated and the command that produced it, then the figures and tables.

Every user-supplied string goes through :func:`html.escape` in the page, and the figures' JSON is
embedded with ``</`` escaped so no string can close the script element.
"""

from __future__ import annotations

import html
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import write_text

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{font-size:13px;color:#444} .meta td{padding:1px 12px 1px 0} code{background:#f4f4f4;padding:1px 4px}
.note{font-size:13px;color:#555;margin:2px 0 8px} table.data{border-collapse:collapse;font-size:12px}
table.data td,table.data th{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.data th{background:#f4f4f4} .figure{margin:4px 0 10px}
"""


def command_line() -> str:
    """The command that is running, as a user would type it."""
    prog = Path(sys.argv[0]).name if sys.argv else "xpusim"
    return " ".join(shlex.quote(a) for a in ["xpusim" if prog in ("xpusim", "__main__.py", "-c") else prog, *sys.argv[1:]])


def figure_html(fig: Any, div_id: str, height: int = 460) -> str:
    """A plotly figure as a div and the script that draws it (plotly.js loaded once per page)."""
    spec = json.loads(fig.to_json())
    spec.setdefault("layout", {}).setdefault("height", height)
    payload = json.dumps(spec).replace("</", "<\\/")
    config = json.dumps({"displaylogo": False, "responsive": True})
    return (f'<div class="figure" id="{div_id}"></div>\n<script>(function(){{var f={payload};'
            f'Plotly.newPlot("{div_id}", f.data, f.layout, {config});}})();</script>')


def table_html(rows: Sequence[Mapping[Any, Any]], columns: list[str], digits: int = 4) -> str:
    """A small escaped HTML table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="data"><tr>{head}</tr>{body}</table>'


def page(title: str, header: dict[str, str], sections: list[tuple[str, str, str]], command: str | None = None) -> str:
    """The report: ``header`` rows (label -> value), then ``sections`` of (heading, note, body
    HTML); headings and notes are escaped here, bodies are built by the figure/table helpers."""
    import plotly.offline

    meta = {**header, "xpusim": __version__, "command": command or command_line()}
    rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items())
    body = "".join(f"<h2>{html.escape(h)}</h2>" + (f'<p class="note">{html.escape(n)}</p>' if n else "") + b
                   for h, n, b in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><table class=\"meta\">{rows}</table>{body}</body></html>\n")


def write(path: str | Path, text: str) -> Path:
    """Write a report or saved result (UTF-8), creating its folder."""
    return write_text(path, text)
