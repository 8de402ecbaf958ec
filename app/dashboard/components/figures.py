"""Plotly figures (plain dicts: fast to build and to send) from Reports and timelines.

Every function takes analyzer output (Report tables, ``Timeline.view`` rectangles)
and only arranges it for display; no metric is computed here.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import polars as pl

from overlapscope.analyzers.report import TABLES, Report
from overlapscope.analyzers.timeline import Timeline
from overlapscope.app import render
from overlapscope.app.dashboard.components.format import fmt_bytes, fmt_value, title_of

#: Colours of interval kinds, pipeline ops, warp states and link classes.
KIND_COLORS = {
    "compute": "#4C78A8",
    "comm": "#F58518",
    "memory": "#72B7B2",
    "annotation": "#B8A6CF",
    "exposed": "#E45756",
    "busy": "#54A24B",
    "wait_tail": "#EECA3B",
    "wait_remote_head": "#E45756",
    "wait_meta": "#9D755D",
    "wait_window_lock": "#FF9DA6",
    "idle_sleep": "#BAB0AC",
}
OP_COLORS = {"F": "#4C78A8", "B": "#54A24B", "I": "#72B7B2", "W": "#F58518", "FB": "#B279A2"}
LINK_COLORS = {"ib": "#E45756", "nvl": "#4C78A8", "local": "#BAB0AC", "unknown": "#9D755D"}
#: Heatmap colour scales, light (0 bytes) to dark (the most bytes).
HEAT_SCALES = {
    "ib": [[0.0, "#fdecea"], [0.5, "#ef8a7e"], [1.0, "#a50f15"]],
    "nvl": [[0.0, "#eaf1fb"], [0.5, "#7fa8d8"], [1.0, "#1f4e8c"]],
}
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12}
LANE_PX = 22
#: Height of a timeline bar in lane units (lane ``i`` spans ``[i - 0.5, i + 0.5]``).
#: Set on every bar trace: without it plotly sizes a trace's bars by the smallest
#: gap between the lanes *that trace* occupies, so a trace present in one lane of
#: each rank (the exposed-comm lanes, 6 lanes apart) drew bars 6 lanes tall.
BAR_HEIGHT = 0.7
#: Above this many rectangles the hover text leaves kernel names out (they can be
#: long templates and would dominate the bytes of a pan/zoom answer); a click
#: still shows everything about the bar.
HOVER_NAMES_MAX = 5000
#: Modebar: PNG export (the camera button) at 2x, no plotly logo.
GRAPH_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}


def _layout(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "font": FONT,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "hoverlabel": {"font": {"size": 12}},
    }
    base.update(kw)
    return base


def empty_figure(text: str) -> dict[str, Any]:
    """A blank figure that says ``text`` (used while loading or when nothing applies)."""
    return {
        "data": [],
        "layout": _layout(
            xaxis={"visible": False}, yaxis={"visible": False}, height=160,
            annotations=[{"text": text, "showarrow": False, "font": {"size": 14},
                          "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}],
        ),
    }


def _ms(ns: pl.Series | pl.Expr) -> Any:
    return ns / 1e6


# ------------------------------------------------------------------ timeline


def typed_array(values: Any, dtype: str) -> dict[str, str]:
    """A plotly.js typed-array spec (``{"dtype", "bdata"}``, base64 of the raw little-
    endian values): a tenth of the bytes and of the encoding time of a JSON number list
    for the large numeric columns of a timeline answer. ``dtype``: numpy-style code
    plotly.js reads (f8, f4, i4, u4, i2, u2, i1, u1)."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")))
    return {"dtype": dtype, "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}


def trace_rows(rects: pl.DataFrame) -> list[list[int]]:
    """Per trace of :func:`timeline_figure` (same rectangles, same order), the bars'
    rows of ``tl.intervals``: what a click on point ``i`` of trace ``c`` means when the
    figure was too large to carry them (``customdata`` is left out above
    :data:`HOVER_NAMES_MAX` bars)."""
    return [part["row"].to_list() for _, part in rects.group_by("kind", maintain_order=True)]


def timeline_figure(
    tl: Timeline,
    rects: pl.DataFrame,
    lanes: pl.DataFrame,
    t0_ns: int,
    t1_ns: int,
    pixels: int,
    *,
    revision: str = "",
    title: str | None = None,
) -> dict[str, Any]:
    """Rectangles of ``Timeline.view`` (or of ``merge_touching`` of it) as horizontal bars, one
    trace per kind.

    ``lanes``: the lanes shown (rows of ``tl.lanes``, display order). Bars narrower
    than one pixel column are drawn one column wide. Lane positions, bar starts and
    widths travel as typed arrays (:func:`typed_array`). Up to :data:`HOVER_NAMES_MAX`
    rectangles, ``customdata`` is ``[row, true duration µs, members]`` per bar and the
    hover shows the name; above it there is no ``customdata`` (a click recomputes the
    answer and reads :func:`trace_rows`) and the hover shows only the kind. ``row`` is
    the bar's row of ``tl.intervals`` (for :meth:`Timeline.describe`; a merged bar's
    longest member).
    """
    labels = lanes["label"].to_list()
    lane_ids = lanes["lane"].to_numpy()
    pos_of = np.full(int(lane_ids.max()) + 1 if len(lane_ids) else 0, -1, dtype=np.int64)
    pos_of[lane_ids] = np.arange(len(lane_ids))
    px_ns = (t1_ns - t0_ns) / max(pixels, 1)
    detailed = rects.height <= HOVER_NAMES_MAX
    data: list[dict[str, Any]] = []
    if rects.height:
        if "members" not in rects.columns:
            rects = rects.with_columns(pl.lit(1, dtype=pl.UInt32).alias("members"))
        r = rects.with_columns(
            pl.max_horizontal("start_ns", pl.lit(t0_ns)).alias("_x0"),
            pl.min_horizontal("end_ns", pl.lit(t1_ns)).alias("_x1"),
        ).with_columns(
            pl.max_horizontal(pl.col("_x1") - pl.col("_x0"), pl.lit(px_ns)).alias("_w"),
        )
        for kind, part in r.group_by("kind", maintain_order=True):
            k = str(kind[0])
            trace: dict[str, Any] = {
                "type": "bar",
                "orientation": "h",
                "name": k.replace("_", " "),
                "y": typed_array(pos_of[part["lane"].to_numpy()],
                                 "u2" if len(labels) < 65536 else "u4"),
                "width": BAR_HEIGHT,
                # ms as float64: ns resolution across any run length
                "base": typed_array(part["_x0"].to_numpy() / 1e6, "f8"),
                "x": typed_array(part["_w"].to_numpy() / 1e6, "f4"),
                "marker": {"color": KIND_COLORS.get(k, "#888888"), "line": {"width": 0}},
            }
            if detailed:
                dur_us = ((part["end_ns"] - part["start_ns"]) / 1e3).round(3).to_list()
                members = part["members"].to_list()
                trace["customdata"] = [[int(row), d, int(m)] for row, d, m in
                                       zip(part["row"].to_list(), dur_us, members, strict=True)]
                names = part["name"].fill_null("").str.slice(0, 80).to_list()
                trace["hovertext"] = [n if m == 1 else f"{n}<br>(longest of {m} adjacent)"
                                      for n, m in zip(names, members, strict=True)]
                trace["hovertemplate"] = ("%{hovertext}<br>%{customdata[1]:,.3f} µs"
                                          f"<extra>{k}</extra>")
            else:  # a click finds the bar again by (trace, point): see trace_rows
                trace["hovertemplate"] = f"{k} · click for details<extra></extra>"
            data.append(trace)
    height = max(220, LANE_PX * len(labels) + 110)
    # every other rank (or channel) on a light band, so a rank's lanes read as one block
    shapes = []
    if "rank" in lanes.columns and lanes["rank"].n_unique() > 1:
        owner = lanes["rank"].to_list()
        starts = [i for i in range(len(owner)) if i == 0 or owner[i] != owner[i - 1]]
        for n, a in enumerate(starts):
            b = starts[n + 1] if n + 1 < len(starts) else len(owner)
            if n % 2:
                shapes.append({"type": "rect", "xref": "paper", "x0": 0, "x1": 1,
                               "yref": "y", "y0": a - 0.5, "y1": b - 0.5,
                               "fillcolor": "#f3f5f8", "line": {"width": 0},
                               "layer": "below"})
    return {
        "data": data,
        "layout": _layout(
            title={"text": title, "x": 0, "font": {"size": 14}} if title else None,
            barmode="overlay",
            height=height,
            margin={"l": 230, "r": 20, "t": 80 if title else 50, "b": 50},
            legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0},
            uirevision=revision,
            dragmode="zoom",
            shapes=shapes,
            xaxis={"title": {"text": "time (ms from the run's first event)"},
                   "range": [t0_ns / 1e6, t1_ns / 1e6], "showgrid": True,
                   "gridcolor": "#eeeeee", "zeroline": False},
            yaxis={"tickmode": "array", "tickvals": list(range(len(labels))),
                   "ticktext": labels, "range": [len(labels) - 0.5, -0.5],
                   "fixedrange": True, "showgrid": False, "zeroline": False,
                   "tickfont": {"size": 11}},
        ),
    }


# ------------------------------------------------------------------ overlap


def overlap_by_rank(report: Report) -> dict[str, Any]:
    """Per GPU (rank/device): comm time hidden under compute vs exposed, ms."""
    s = report.tables["summary"].sort("rank", "device")
    y = [f"rank {r}" + (f" gpu {d}" if d >= 0 and s["device"].n_unique() > 1 else "")
         for r, d in zip(s["rank"].to_list(), s["device"].to_list(), strict=True)]
    data = [
        {"type": "bar", "orientation": "h", "name": "hidden under compute", "y": y,
         "x": _ms(s["overlap_ns"]).to_list(), "marker": {"color": KIND_COLORS["busy"]},
         "hovertemplate": "%{x:,.3f} ms hidden<extra>%{y}</extra>"},
        {"type": "bar", "orientation": "h", "name": "exposed", "y": y,
         "x": _ms(s["exposed_comm_ns"]).to_list(), "marker": {"color": KIND_COLORS["exposed"]},
         "hovertemplate": "%{x:,.3f} ms exposed<extra>%{y}</extra>"},
    ]
    return {"data": data, "layout": _layout(
        barmode="stack", height=max(200, 28 * len(y) + 100),
        title={"text": "Communication time per GPU: hidden vs exposed", "x": 0,
               "font": {"size": 14}},
        xaxis={"title": {"text": "ms"}}, yaxis={"autorange": "reversed"},
        margin={"l": 110, "r": 20, "t": 70, "b": 50})}


def overlap_by_annotation(report: Report, rank: int | None, top: int = 15) -> dict[str, Any]:
    """Per annotation (phase): its comm hidden vs exposed, summed over the ranks shown."""
    df = report.tables["annotations"]
    if rank is not None:
        df = df.filter(pl.col("rank") == rank)
    g = (df.group_by("name").agg(pl.col("comm_hidden_ns").sum(), pl.col("exposed_comm_ns").sum())
         .filter((pl.col("comm_hidden_ns") + pl.col("exposed_comm_ns")) > 0)
         .sort(pl.col("comm_hidden_ns") + pl.col("exposed_comm_ns"), descending=True).head(top))
    if g.is_empty():
        return empty_figure("No annotation carries communication.")
    y = g["name"].to_list()
    data = [
        {"type": "bar", "orientation": "h", "name": "hidden", "y": y,
         "x": _ms(g["comm_hidden_ns"]).to_list(), "marker": {"color": KIND_COLORS["busy"]}},
        {"type": "bar", "orientation": "h", "name": "exposed", "y": y,
         "x": _ms(g["exposed_comm_ns"]).to_list(), "marker": {"color": KIND_COLORS["exposed"]}},
    ]
    return {"data": data, "layout": _layout(
        barmode="stack", height=max(220, 24 * len(y) + 110),
        title={"text": f"Communication per annotation (top {len(y)} by comm time)", "x": 0,
               "font": {"size": 14}},
        xaxis={"title": {"text": "ms"}}, yaxis={"autorange": "reversed", "automargin": True},
        margin={"l": 20, "r": 20, "t": 70, "b": 50})}


# ------------------------------------------------------------------ pipeline


def _op_text(op: str, mb: Any, mb_b: Any) -> str:
    if op == "FB":
        return f"F{mb}|B{mb_b}"
    return f"{op}{mb}" if mb is not None else op


def pipeline_gantt(report: Report, step: int | None = None) -> dict[str, Any]:
    """Per-rank Gantt of the schedule ops (F/B/I/W/FB coloured, micro-batch labels).

    Gaps between bars are the bubbles. Times in ms from the run's first event.
    """
    ops = report.tables["pipeline_ops"]
    if step is not None:
        ops = ops.filter(pl.col("step") == step)
    ranks = sorted(ops["rank"].unique().to_list())
    cats = [f"rank {r}" for r in ranks]
    data = []
    for op in ["F", "B", "I", "W", "FB"]:
        part = ops.filter(pl.col("op") == op)
        if part.is_empty():
            continue
        text = [_op_text(op, m, mb) for m, mb in
                zip(part["mb"].to_list(), part["mb_b"].to_list(), strict=True)]
        data.append({
            "type": "bar", "orientation": "h", "name": {"FB": "F&B (overlapped pair)",
                                                        "I": "I (input grad)",
                                                        "W": "W (weight grad)",
                                                        "F": "F (forward)",
                                                        "B": "B (backward)"}[op],
            "y": [f"rank {r}" for r in part["rank"].to_list()],
            "base": _ms(part["start_ns"]).to_list(), "x": _ms(part["dur_ns"]).to_list(),
            "text": text, "textposition": "inside", "insidetextanchor": "middle",
            "textfont": {"color": "white", "size": 11},
            "customdata": part["label"].to_list(),
            "marker": {"color": OP_COLORS[op], "line": {"color": "white", "width": 1}},
            "hovertemplate": "%{customdata}<br>%{base:,.2f} ms + %{x:,.2f} ms<extra></extra>",
        })
    return {"data": data, "layout": _layout(
        barmode="overlay", bargap=0.2, height=max(220, 42 * len(ranks) + 120),
        title={"text": "Schedule per rank (gaps are bubbles)", "x": 0, "font": {"size": 14}},
        xaxis={"title": {"text": "time (ms from the run's first event)"}, "gridcolor": "#eeeeee"},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": cats,
               "autorange": "reversed"},
        margin={"l": 70, "r": 20, "t": 70, "b": 50})}


def bubble_vs_theory(report: Report) -> dict[str, Any]:
    """Measured bubble per rank against the schedule's formula, ms (mean over steps)."""
    p = (report.tables["pipeline"].group_by("rank")
         .agg(pl.col("bubble_ns").mean(), pl.col("theory_bubble_ns").mean(),
              pl.col("schedule").first())
         .sort("rank"))
    x = [f"rank {r}" for r in p["rank"].to_list()]
    sched = p["schedule"][0] if p.height else ""
    data = [
        {"type": "bar", "name": "measured bubble", "x": x, "y": _ms(p["bubble_ns"]).to_list(),
         "marker": {"color": KIND_COLORS["exposed"]}},
        {"type": "bar", "name": f"{sched} formula on measured chunk times", "x": x,
         "y": _ms(p["theory_bubble_ns"]).to_list(), "marker": {"color": "#BAB0AC"}},
    ]
    return {"data": data, "layout": _layout(
        barmode="group", height=320,
        title={"text": "Bubble per rank: measured vs theory", "x": 0, "font": {"size": 14}},
        yaxis={"title": {"text": "ms"}}, margin={"l": 60, "r": 20, "t": 70, "b": 50})}


# ------------------------------------------------------------------ traffic


def byte_ticks(vmax: float, n: int = 4) -> list[float]:
    """Colour-bar ticks from 0 to ``vmax`` at round byte values (1, 2, 2.5 or 5 x 10^k)
    ending at ``vmax`` itself (so the bar says how many bytes the darkest cell holds)."""
    if vmax <= 0:
        return [0.0]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1.0, next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw))
    ticks = [i * step for i in range(int(vmax // step) + 1)]
    if vmax - ticks[-1] > 0.35 * step:
        ticks.append(float(vmax))
    elif len(ticks) > 1:  # too close to label both: the maximum replaces the round tick
        ticks[-1] = float(vmax)
    return [float(t) for t in ticks]


def traffic_heatmap(report: Report, link: str) -> dict[str, Any]:
    """Rank x rank bytes of one link class (``ib`` or ``nvl``) from traffic_matrix."""
    m = report.tables["traffic_matrix"].drop_nulls(["src_rank", "dst_rank"])
    name = {"ib": "InfiniBand (between nodes)", "nvl": "NVLink (inside a node)"}.get(link, link)
    if m.filter(pl.col("link") == link).is_empty():
        return empty_figure(f"{name}: no bytes with a known destination rank in this run.")
    ranks = sorted(set(m["src_rank"].to_list()) | set(m["dst_rank"].to_list()))
    pos = {r: i for i, r in enumerate(ranks)}
    z: list[list[float | None]] = [[None] * len(ranks) for _ in ranks]
    for s, d, b in m.filter(pl.col("link") == link).select("src_rank", "dst_rank", "bytes").rows():
        z[pos[s]][pos[d]] = (z[pos[s]][pos[d]] or 0) + b
    text = [[fmt_bytes(v) if v else "" for v in row] for row in z]
    labels = [str(r) for r in ranks]
    vmax = max((v for row in z for v in row if v is not None), default=0) or 1
    ticks = byte_ticks(vmax)
    return {"data": [{
        "type": "heatmap", "z": z, "x": labels, "y": labels, "text": text,
        # light for few bytes, dark for many (plotly's named "Blues" runs the other way)
        "colorscale": HEAT_SCALES.get(link, HEAT_SCALES["nvl"]), "hoverongaps": False,
        "hovertemplate": "rank %{y} → rank %{x}<br>%{text}<extra></extra>",
        # zmin and zmax both set, else plotly autoscales to the data (all-equal
        # bytes then read 32.7676k–32.7684k)
        "zauto": False, "zmin": 0, "zmax": vmax,
        "colorbar": {"title": {"text": "bytes"}, "tickmode": "array",
                     "tickvals": ticks, "ticktext": [render.fmt_bytes(t) for t in ticks]},
    }], "layout": _layout(
        title={"text": f"{name}: bytes sent, source → destination", "x": 0,
               "font": {"size": 14}},
        height=380, xaxis={"title": {"text": "destination rank"}, "type": "category"},
        yaxis={"title": {"text": "source rank"}, "type": "category", "autorange": "reversed"},
        margin={"l": 70, "r": 20, "t": 60, "b": 60})}


def traffic_by_phase(report: Report, rank: int | None = None) -> dict[str, Any]:
    """Bytes per phase and link class (stacked), summed over the ranks shown."""
    df = report.tables["traffic_by_phase"]
    if rank is not None:
        df = df.filter(pl.col("src_rank") == rank)
    g = (df.with_columns(pl.col("phase").fill_null("(no phase)"))
         .group_by("phase").agg(pl.col("ib_bytes").sum(), pl.col("nvl_bytes").sum(),
                                 pl.col("local_bytes").sum())
         .sort("phase"))
    x = g["phase"].to_list()
    spec = TABLES["traffic_by_phase"]
    cols = ("ib_bytes", "nvl_bytes", "local_bytes")
    data = [
        {"type": "bar", "name": render.label(col), "x": x, "y": g[col].to_list(),
         "text": [render.fmt_bytes(v) for v in g[col].to_list()], "textposition": "none",
         "marker": {"color": LINK_COLORS[col.removesuffix("_bytes")]},
         "hovertemplate": "%{text} (%{y:,} bytes)<extra>" + spec.describe(col) + "</extra>"}
        for col in cols
    ]
    top = max((sum(r) for r in g.select(cols).iter_rows()), default=0)
    ticks = byte_ticks(top)
    return {"data": data, "layout": _layout(
        barmode="stack", height=340,
        title={"text": "Bytes per phase and link class", "x": 0, "font": {"size": 14}},
        yaxis={"title": {"text": "bytes sent"}, "tickmode": "array", "tickvals": ticks,
               "ticktext": [render.fmt_bytes(t) for t in ticks], "gridcolor": "#eeeeee"},
        margin={"l": 70, "r": 20, "t": 70, "b": 60})}


# ------------------------------------------------------------------ warps


_ROLE_FRACS = ("busy_frac", "wait_remote_head_frac", "wait_tail_frac", "wait_meta_frac",
               "wait_window_lock_frac", "idle_sleep_frac", "unrecorded_frac")


def warp_role_fractions(report: Report) -> dict[str, Any]:
    """Per role: busy and each wait reason as fractions of the role's lifetime."""
    df = report.tables["warp_roles"]
    spec = TABLES["warp_roles"]
    x = [f"r{r} {role}" if df["rank"].n_unique() > 1 else role
         for r, role in zip(df["rank"].to_list(), df["role"].to_list(), strict=True)]
    data = []
    for col in _ROLE_FRACS:
        if col not in df.columns or not (df[col].fill_null(0) > 0).any():
            continue
        state = col.removesuffix("_frac")
        data.append({"type": "bar", "name": state.replace("_", " "), "x": x,
                     "y": df[col].to_list(),
                     "marker": {"color": KIND_COLORS.get(state, "#cccccc")},
                     "hovertemplate": "%{y:.1%}<extra>" + spec.describe(col) + "</extra>"})
    return {"data": data, "layout": _layout(
        barmode="stack", height=340,
        title={"text": "Where each warp role spends its time", "x": 0, "font": {"size": 14}},
        yaxis={"title": {"text": "fraction of lifetime"}, "tickformat": ".0%"},
        margin={"l": 70, "r": 20, "t": 70, "b": 60})}


def ring_occupancy(report: Report) -> dict[str, Any]:
    """Per ring (kind, channel): time full and time empty, fractions of its window."""
    df = report.tables["warp_rings"].sort("kind", "channel")
    x = [f"{k} ch{c}" for k, c in zip(df["kind"].to_list(), df["channel"].to_list(), strict=True)]
    data = [
        {"type": "bar", "name": "full (senders wait)", "x": x, "y": df["full_frac"].to_list(),
         "marker": {"color": KIND_COLORS["wait_remote_head"]}},
        {"type": "bar", "name": "empty (receivers starve)", "x": x,
         "y": df["empty_frac"].to_list(), "marker": {"color": KIND_COLORS["wait_tail"]}},
    ]
    return {"data": data, "layout": _layout(
        barmode="group", height=320,
        title={"text": "Ring buffers: time full and time empty", "x": 0, "font": {"size": 14}},
        yaxis={"tickformat": ".0%", "title": {"text": "fraction of the ring's window"}},
        margin={"l": 70, "r": 20, "t": 70, "b": 60})}


# ------------------------------------------------------------------ compare

#: Bar colours of a change: in the metric's better direction, its worse one, or neither.
CHANGE_COLORS = {"better": "#54A24B", "worse": "#E45756", "neutral": "#9D9D9D"}


def change_tone(delta: float | None, better: str) -> str:
    """better / worse / neutral for a metric's delta (``better``: higher, lower, neutral)."""
    if not delta or better == "neutral":
        return "neutral"
    return "better" if (delta > 0) == (better == "higher") else "worse"


def compare_changes(df: pl.DataFrame, metrics: list[Any]) -> dict[str, Any]:
    """Relative change of every headline metric against the baseline, one bar group per
    metric and one bar per compared run (``df``: ``compare(..., by="run")``)."""
    base = df.filter(pl.col("is_baseline"))
    others = df.filter(~pl.col("is_baseline"))
    shown = [m for m in metrics if f"{m.name}_rel" in df.columns
             and others[f"{m.name}_rel"].null_count() < others.height]
    if others.is_empty() or not shown:
        return empty_figure("No metric can be compared in relative terms.")
    y = [render.label(m.name) for m in shown]
    data = []
    for row in others.iter_rows(named=True):
        rel = [row[f"{m.name}_rel"] for m in shown]
        tones = [change_tone(row[f"{m.name}_delta"], m.better) for m in shown]
        data.append({
            "type": "bar", "orientation": "h", "name": row["run"], "y": y,
            "x": [None if r is None else 100 * r for r in rel],
            "marker": {"color": [CHANGE_COLORS[t] for t in tones],
                       "line": {"color": "#333333", "width": 0.5}},
            "hovertext": [
                f"{row['run']}<br>{render.label(m.name)}: {fmt_value(row[m.name], m.unit)}"
                f" (baseline {fmt_value(base[m.name][0] if base.height else None, m.unit)})"
                for m in shown],
            "hovertemplate": "%{hovertext}<br>%{x:+.1f} %<extra></extra>",
        })
    base_label = base["run"][0] if base.height else "the baseline"
    return {"data": data, "layout": _layout(
        barmode="group", height=max(240, 22 * len(y) * len(data) + 120), showlegend=len(data) > 1,
        title={"text": f"Change against {base_label} (%; green better, red worse)", "x": 0,
               "font": {"size": 14}},
        xaxis={"title": {"text": "relative change, %"}, "zeroline": True,
               "zerolinecolor": "#333333", "ticksuffix": " %"},
        yaxis={"autorange": "reversed", "automargin": True},
        margin={"l": 20, "r": 20, "t": 70, "b": 50})}


def figure_title(name: str) -> str:
    """Heading for a table-backed figure."""
    return title_of(name)
