"""Dashboard views without a browser: the app factory, registry-driven tables and
metrics, figures, the HTML snapshot and the CLI command."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import polars as pl
import pytest
from dash import html
from typer.testing import CliRunner

from overlapscope.analyzers.columns import column_meaning
from overlapscope.analyzers.report import METRICS, TABLES
from overlapscope.app.cli import app as cli
from overlapscope.app.dashboard import create_app
from overlapscope.app.dashboard.components import figures as F
from overlapscope.app.dashboard.components.format import fmt_bytes, fmt_ns, fmt_value
from overlapscope.app.dashboard.components.tables import metric_cards, registry_table
from overlapscope.app.dashboard.export import snapshot_html
from overlapscope.app.dashboard.pages import PAGES
from overlapscope.app.dashboard.pages import timeline as timeline_page
from overlapscope.app.render import fmt_fraction, fmt_ms, label

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"


def _texts(component) -> list[str]:
    """Every string inside a Dash component tree."""
    out: list[str] = []

    def walk(c) -> None:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list | tuple):
            for x in c:
                walk(x)
        elif hasattr(c, "children"):
            walk(c.children)

    walk(component)
    return out


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dash_components import find_component  # noqa: E402

_find = find_component


@pytest.fixture(scope="module")
def app():
    a = create_app([SAMPLES / "handmade", SAMPLES / "cpu" / "dualpipe",
                    SAMPLES / "h200" / "warp_events_M4_NS4_NR4.csv.gz"])
    state = a.overlapscope_state
    assert state.wait(180)
    yield a
    state.close()


def _entry(app, label: str):
    return next(e for e in app.overlapscope_state.runs.values() if e.label == label)


def test_formatting() -> None:
    assert fmt_value(0.5, "fraction") == "50.0 %"
    assert fmt_value(1.5, "ms") == "1.500 ms"
    assert fmt_value(None, "ms") == "—"
    assert fmt_ns(1_500) == "1.500 µs" and fmt_ns(2_000_000_000) == "2.000 s"
    assert fmt_bytes(1_100_896) == "1.10 MB"
    assert fmt_value(2.5, "ratio") == "2.50×"


def test_factory_registers_one_page_per_view_and_keeps_the_roots(app) -> None:
    import dash

    paths = {p["path"] for p in dash.page_registry.values()}
    assert {p.PATH for p in PAGES} <= paths
    assert [e.status for e in app.overlapscope_state.runs.values()] == ["ready"] * 3
    # the roots default to the folders of the given paths
    assert app.overlapscope_state.roots == [SAMPLES.resolve(), (SAMPLES / "cpu").resolve(),
                                            (SAMPLES / "h200").resolve()]


def test_metric_cards_show_the_report_headline(app) -> None:
    report = _entry(app, "cpu/dualpipe").result.report
    cards = metric_cards(report)
    head = report.headline()
    for m in METRICS.values():
        card = _find(cards, f"metric-{m.name}")
        if head[m.name] is None:
            assert card is None
        else:
            assert card.children == fmt_value(head[m.name], m.unit)


def test_tables_follow_the_registry_and_say_why_not(app) -> None:
    report = _entry(app, "cpu/dualpipe").result.report
    t = registry_table(report, "summary")
    ths = t.children[2].children.children[0].children.children
    shown = report.tables["summary"].columns
    cols = [c for c in TABLES["summary"].display if c in shown]
    # the CLI's headers (words + unit), the column's meaning on hover
    assert [th.children for th in ths] == [label(c) for c in cols]
    assert [th.title for th in ths] == [f"{column_meaning(c)} ({c})" if column_meaning(c)
                                        else c for c in cols]
    assert TABLES["summary"].meaning in _texts(t)
    # no raw registry name in any header, the cells in the header's unit
    p = registry_table(report, "pipeline")
    ths = p.children[2].children.children[0].children.children
    heads = [th.children for th in ths]
    assert "bubble ms" in heads and "bubble %" in heads and "theory bubble ms" in heads
    assert not any(h.endswith(("_ns", "_fraction", "_bytes")) for h in heads)
    row = report.tables["pipeline"].row(0, named=True)
    first = [td.children for td in p.children[2].children.children[1].children[0].children]
    assert first[heads.index("bubble ms")] == fmt_ms(row["bubble_ns"])
    assert first[heads.index("bubble %")] == fmt_fraction(row["bubble_fraction"])
    traffic = registry_table(report, "traffic")
    heads = [th.children for th in traffic.children[2].children.children[0].children.children]
    assert "IB bytes" in heads and "IB %" in heads
    na = registry_table(report, "warp_roles")
    assert na.id == "na-warp_roles"
    assert report.not_applicable["warp_roles"] in " ".join(_texts(na))


def test_figures_are_built_from_the_tables(app) -> None:
    report = _entry(app, "cpu/dualpipe").result.report
    gantt = F.pipeline_gantt(report)
    n_ops = sum(len(tr["x"]) for tr in gantt["data"])
    assert n_ops == report.tables["pipeline_ops"].height
    ib = F.traffic_heatmap(report, "ib")
    total = sum(v or 0 for row in ib["data"][0]["z"] for v in row)
    m = report.tables["traffic_matrix"]
    assert total == m.filter(pl.col("link") == "ib")["bytes"].sum()
    # the colour scale starts at 0 and ends at the largest cell; ticks are bytes in words
    nvl = F.traffic_heatmap(report, "nvl")["data"][0]
    values = {v for row in nvl["z"] for v in row if v is not None}
    assert nvl["zmin"] == 0 and nvl["zmax"] == max(values) and nvl["zauto"] is False
    bar = nvl["colorbar"]
    assert bar["tickvals"][0] == 0 and bar["tickvals"][-1] == max(values)
    assert bar["ticktext"][0] == "0 B"
    assert all(t.endswith(("B", "kB", "MB", "GB", "TB")) for t in bar["ticktext"])
    assert F.byte_ticks(139_000) == [0, 50_000, 100_000, 139_000]
    ov = F.overlap_by_rank(report)
    assert sum(ov["data"][1]["x"]) == pytest.approx(
        report.tables["summary"]["exposed_comm_ns"].sum() / 1e6)
    warps = _entry(app, "h200/warp_events_M4_NS4_NR4.csv.gz").result.report
    assert F.warp_role_fractions(warps)["data"]
    assert F.ring_occupancy(warps)["data"]


def test_timeline_render_is_bounded_and_serialisable(app) -> None:
    e = _entry(app, "cpu/dualpipe")
    tl = e.timeline
    fig, n = timeline_page.render(tl, [0, 1, 2], ["annotation", "work", "exposed"],
                                  tl.t_min, tl.t_max, 300, "rev")
    assert 0 < n["rects"] <= n["lanes"] * n["pixels"]
    # widths travel as typed arrays: base64 of float32
    assert all(tr["x"]["dtype"] == "f4" for tr in fig["data"])
    assert sum(len(base64.b64decode(tr["x"]["bdata"])) // 4 for tr in fig["data"]) == n["rects"]
    assert n["rects"] <= n["winners"]
    json.dumps(fig)  # plain JSON, sent as is
    assert timeline_page._x_range({"xaxis.range[0]": 1.0, "xaxis.range[1]": 2.5}) == (1.0, 2.5)
    assert timeline_page._x_range({"xaxis.autorange": True}) == "full"
    assert timeline_page._x_range({"autosize": True}) is None


def test_html_snapshot_is_self_contained(app) -> None:
    doc = snapshot_html(_entry(app, "sample_traces/handmade"))
    assert doc.startswith("<!DOCTYPE html>")
    assert "plotly.js" in doc or "Plotly" in doc
    assert '<script src="http' not in doc  # plotly.js is inside, opens offline
    assert doc.count("class=\"plotly-graph-div\"") >= 3


def test_cli_dashboard_help_and_bad_paths() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["dashboard", "--help"])
    assert res.exit_code == 0 and "--max-upload-mb" in res.output and "--root" in res.output
    res = runner.invoke(cli, ["dashboard", "no/such/run"])
    assert res.exit_code == 2


def test_views_render_for_every_sample_run(app) -> None:
    from overlapscope.app.dashboard.pages import overlap, pipeline, traffic

    state = app.overlapscope_state
    for e in state.runs.values():
        for body in (overlap.body(state, e.id, None), pipeline.body(state, e.id),
                     traffic.body(state, e.id)):
            assert isinstance(body, html.Div)


def test_a_reopened_run_takes_its_timeline_from_the_cache(tmp_path, monkeypatch) -> None:
    from overlapscope.app.dashboard.state import DashboardState

    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path))
    seen = []
    for _ in range(2):
        state = DashboardState([SAMPLES])
        entry = state.open(SAMPLES / "handmade")
        assert state.wait(120) and entry.ready, entry.error
        seen.append((entry.extra["timeline_cached"], entry.timeline.intervals.height))
        state.close()
    assert seen[0][0] is False and seen[1][0] is True and seen[0][1] == seen[1][1]


def test_click_on_a_large_answer_finds_the_same_bar_as_its_customdata(
        app, monkeypatch) -> None:
    from overlapscope.app.dashboard.components import figures

    e = _entry(app, "cpu/dualpipe")
    tl = e.timeline
    args = ([0, 1, 2, 3], ["annotation", "work", "exposed"], tl.t_min, tl.t_max, 400)
    small, _ = timeline_page.render(tl, *args, "rev")  # every bar carries its row
    monkeypatch.setattr(figures, "HOVER_NAMES_MAX", 10)
    monkeypatch.setattr(timeline_page, "HOVER_NAMES_MAX", 10)
    large, n = timeline_page.render(tl, *args, "rev")
    assert n["rects"] > 10 and all("customdata" not in tr for tr in large["data"])
    window = {"run": e.id, "clock": "raw", "ranks": args[0], "groups": args[1],
              "t0": args[2], "t1": args[3], "pixels": args[4]}
    checked = 0
    for c, trace in enumerate(small["data"]):
        for i in (0, len(trace["customdata"]) // 2, len(trace["customdata"]) - 1):
            point = {"curveNumber": c, "pointNumber": i}
            assert timeline_page.clicked_row(tl, point, window, e.id, "raw") == \
                trace["customdata"][i][0]
            checked += 1
    assert checked >= 6
    # another run's or clock's window is not the one drawn: no guess
    assert timeline_page.clicked_row(tl, {"curveNumber": 0, "pointNumber": 0},
                                     {**window, "clock": "corrected"}, e.id, "raw") is None


def test_compare_chart_shows_each_metric_change_against_the_baseline(app) -> None:
    from overlapscope.analyzers.compare import compare, diff_kernels
    from overlapscope.app.dashboard.pages import compare as compare_page

    base = _entry(app, "cpu/dualpipe").result.report
    other = _entry(app, "sample_traces/handmade").result.report
    df = compare([base, other], baseline=0, labels=["a", "b"])
    fig = F.compare_changes(df, list(METRICS.values()))
    (bars,) = fig["data"]  # one compared run: one bar series
    hb, ho = base.headline(), other.headline()
    # every metric both runs have, baseline non-zero: (other - base) / |base| in %
    expected = {label(m.name): 100 * (ho[m.name] - hb[m.name]) / abs(hb[m.name])
                for m in METRICS.values()
                if hb.get(m.name) not in (None, 0) and ho.get(m.name) is not None}
    got = {y: x for y, x in zip(bars["y"], bars["x"], strict=True) if x is not None}
    assert got.keys() == expected.keys() and expected
    for k, v in expected.items():
        assert got[k] == pytest.approx(v)
    # colours follow the metric's better direction: more exposed comm is worse
    i = bars["y"].index(label("exposed_comm_ms"))
    worse = ho["exposed_comm_ms"] > hb["exposed_comm_ms"]
    assert bars["marker"]["color"][i] == F.CHANGE_COLORS["worse" if worse else "better"]
    assert F.change_tone(0.0, "higher") == "neutral" and F.change_tone(-1, "lower") == "better"
    # the changes table lists what moved, at most DIFF_ROWS rows
    diff = diff_kernels(base, other)
    table = compare_page._diff_table(diff, 1)
    moved = diff.filter(pl.col("status") != "same").height
    rows = _find(table, "cmp-diff-1").children.children[1].children
    assert len(rows) == min(moved, compare_page.DIFF_ROWS) and moved > 0
