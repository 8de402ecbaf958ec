"""A self-contained HTML snapshot of one run's views (plotly.js inside, opens offline)."""

from __future__ import annotations

import html as htmllib
from datetime import UTC, datetime
from typing import Any

import plotly.io as pio

from overlapscope.analyzers.report import METRICS, TABLES, Report
from overlapscope.app.dashboard.components import figures as F
from overlapscope.app.dashboard.components.format import (
    column_header,
    column_tooltip,
    fmt_cell,
    fmt_value,
    title_of,
)
from overlapscope.app.dashboard.components.tables import metric_label
from overlapscope.app.dashboard.state import RunEntry

#: Pixel columns of the snapshot's (static) timeline.
SNAPSHOT_PIXELS = 1400
ROWS = 40
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.na{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px}
.meaning{color:#666;font-size:12px;margin:2px 0}
"""


def _table(report: Report, name: str) -> str:
    spec = TABLES[name]
    if name not in report.tables:
        return f'<p class="na">{title_of(name)}: {htmllib.escape(report.status(name))}</p>'
    df = report.tables[name]
    cols = [c for c in spec.display if c in df.columns]
    head = "".join(f'<th title="{htmllib.escape(column_tooltip(c))}">'
                   f"{htmllib.escape(column_header(c))}</th>" for c in cols)
    rows = []
    for row in df.head(ROWS).select(cols).iter_rows():
        cells = "".join(
            f'<td class="{"num" if isinstance(v, int | float) else ""}">'
            f"{htmllib.escape(fmt_cell(c, v))}</td>"
            for c, v in zip(cols, row, strict=True))
        rows.append(f"<tr>{cells}</tr>")
    more = f"<p class='meaning'>{df.height - ROWS} more rows</p>" if df.height > ROWS else ""
    return (f"<h3>{title_of(name)}</h3><p class='meaning'>{htmllib.escape(spec.meaning)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}")


def _figures(entry: RunEntry) -> list[tuple[str, dict[str, Any]]]:
    report = entry.result.report  # type: ignore[union-attr]
    t = report.tables
    out: list[tuple[str, dict[str, Any]]] = []
    tl = entry.timeline
    if tl is not None and tl.index.size:
        rects = tl.view(tl.t_min, tl.t_max, SNAPSHOT_PIXELS)
        out.append(("Timeline (whole run)", F.timeline_figure(
            tl, rects, tl.lanes, tl.t_min, tl.t_max, SNAPSHOT_PIXELS)))
    if "summary" in t:
        out.append(("Overlap per GPU", F.overlap_by_rank(report)))
    if "annotations" in t:
        out.append(("Overlap per phase", F.overlap_by_annotation(report, None)))
    if "pipeline_ops" in t:
        out.append(("Pipeline schedule", F.pipeline_gantt(report)))
    if "pipeline" in t:
        out.append(("Bubble vs theory", F.bubble_vs_theory(report)))
    if "traffic_matrix" in t:
        out.append(("InfiniBand bytes", F.traffic_heatmap(report, "ib")))
        out.append(("NVLink bytes", F.traffic_heatmap(report, "nvl")))
    if "traffic_by_phase" in t:
        out.append(("Bytes per phase", F.traffic_by_phase(report)))
    if "warp_roles" in t:
        out.append(("Warp roles", F.warp_role_fractions(report)))
    if "warp_rings" in t:
        out.append(("Ring occupancy", F.ring_occupancy(report)))
    return out


def snapshot_html(entry: RunEntry) -> str:
    """One HTML document with the run's headline metrics, figures and tables."""
    report = entry.result.report  # type: ignore[union-attr]
    head = report.headline()
    metrics = "".join(
        f"<tr><th title='{htmllib.escape(m.meaning)}'>{htmllib.escape(metric_label(m.name))}</th>"
        f"<td class='num'>{fmt_value(head.get(m.name), m.unit)}</td>"
        f"<td class='meaning'>{htmllib.escape(m.meaning)}</td></tr>"
        for m in METRICS.values() if head.get(m.name) is not None)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>overlapscope · {htmllib.escape(entry.label)}</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>overlapscope · {htmllib.escape(entry.label)}</h1>",
        f"<p class='meaning'>{htmllib.escape(str(entry.path))} · "
        f"{report.facts.get('ranks')} ranks · snapshot "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        f"<h2>Headline metrics</h2><table>{metrics}</table>",
    ]
    first = True
    for title, fig in _figures(entry):
        parts.append(f"<h2>{htmllib.escape(title)}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=first, full_html=False,
                                 config=F.GRAPH_CONFIG))
        first = False
    parts.append("<h2>Tables</h2>")
    parts.extend(_table(report, name) for name in TABLES)
    parts.append("</body></html>")
    return "\n".join(parts)
