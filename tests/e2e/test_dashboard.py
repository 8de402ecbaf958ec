"""The dashboard in headless Chromium: every view on the sample traces, switching
runs and ranks, zooming the timeline, numbers equal to the analyzers', no console
errors, path escapes and bad uploads refused with a message, HTML export."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import polars as pl
import pytest
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from overlapscope.analyzers.timeline import merge_touching
from overlapscope.app.dashboard import create_app
from overlapscope.app.dashboard.components.format import fmt_value

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1440, 1000


def _start(dash_duo, state) -> None:
    app = create_app(state=state)
    dash_duo.start_server(app)
    dash_duo.driver.set_window_size(WIDTH, HEIGHT)


def _shot(dash_duo, artifacts: Path, name: str, full: bool = True) -> Path:
    """Screenshot of the whole page (the window grows to the page's height)."""
    d = dash_duo.driver
    if full:
        h = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(WIDTH, min(max(int(h) + 20, HEIGHT), 6000))
        time.sleep(0.3)
    path = artifacts / f"{name}.png"
    d.save_screenshot(str(path))
    d.set_window_size(WIDTH, HEIGHT)
    return path


def _pick(dash_duo, selector: str, label: str, check: bool = True) -> None:
    """Choose ``label`` in a dcc.Dropdown, retrying while its options are still loading."""
    for _ in range(5):
        dash_duo.find_element(selector).click()
        try:
            menu = WebDriverWait(dash_duo.driver, 3).until(
                lambda d: d.find_element(By.CSS_SELECTOR, ".dash-dropdown-options"))
            for option in menu.find_elements(By.CSS_SELECTOR, ".dash-dropdown-option"):
                if option.text == label:
                    option.click()
                    break
            else:
                raise TimeoutException(f"no option {label!r} yet")
        except (TimeoutException, StaleElementReferenceException):
            dash_duo.find_element("h2").click()  # close the menu, try again
            time.sleep(0.5)
            continue
        if not check or label in dash_duo.find_element(selector).text:
            return
    raise AssertionError(f"could not choose {label!r} in {selector}")


def _select_run(dash_duo, state, label: str) -> str:
    entry = next(e for e in state.runs.values() if e.label == label)
    _pick(dash_duo, "#run-select", label)
    dash_duo.wait_for_contains_text("#run-select", label, timeout=10)
    return entry.id


def _drag_zoom(dash_duo, selector: str, start: float, stop: float) -> None:
    """Drag across the plot from ``start`` to ``stop`` (fractions of its width), as a
    user zooming into a time range does."""
    drag = dash_duo.find_element(f"{selector} .nsewdrag")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", drag)
    w = drag.size["width"]
    ActionChains(dash_duo.driver).move_to_element(drag).move_by_offset(
        int((start - 0.5) * w), 0).click_and_hold().move_by_offset(
        int((stop - start) * w), 0).release().perform()


def _x_range(dash_duo, selector: str) -> tuple[float, float]:
    r = dash_duo.driver.execute_script(
        f"return document.querySelector('{selector} .js-plotly-plot').layout.xaxis.range;")
    return float(r[0]), float(r[1])


def _goto(dash_duo, name: str) -> None:
    dash_duo.find_element(f"#nav-{name}").click()


def _no_console_errors(dash_duo) -> None:
    logs = [entry for entry in dash_duo.get_logs() or []
            if "favicon" not in entry.get("message", "")]
    assert logs == [], logs


def test_every_view_on_the_sample_runs(dash_duo, dash_state, artifacts) -> None:
    _start(dash_duo, dash_state)
    dash_duo.wait_for_element("#runs-list table", timeout=20)
    rid = _select_run(dash_duo, dash_state, "cpu/dualpipe")
    report = dash_state.runs[rid].result.report
    head = report.headline()
    # Runs: the headline overlap shown is the Report's
    dash_duo.wait_for_text_to_equal("#metric-overlap_ratio",
                                    fmt_value(head["overlap_ratio"], "fraction"), timeout=15)
    dash_duo.wait_for_text_to_equal("#metric-bubble_fraction",
                                    fmt_value(head["bubble_fraction"], "fraction"))
    assert "2 nodes × 4 GPUs" in dash_duo.find_element("#run-details").text
    _shot(dash_duo, artifacts, "runs")

    _goto(dash_duo, "timeline")
    dash_duo.wait_for_element("#tl-rect-count", timeout=20)
    rects = int(dash_duo.find_element("#tl-rect-count").text)
    lanes = int(dash_duo.find_element("#tl-lane-count").text)
    px = int(dash_duo.find_element("#tl-px").text)
    assert 0 < rects <= lanes * px
    dash_duo.wait_for_element("#tl-graph .bars path", timeout=15)
    _shot(dash_duo, artifacts, "timeline", full=False)

    _goto(dash_duo, "overlap")
    dash_duo.wait_for_text_to_equal("#ov-metric-overlap_ratio",
                                    fmt_value(head["overlap_ratio"], "fraction"), timeout=15)
    assert dash_duo.find_element("#table-streams")
    _shot(dash_duo, artifacts, "overlap")

    _goto(dash_duo, "pipeline")
    dash_duo.wait_for_element("#pp-gantt .bars path", timeout=15)
    dash_duo.wait_for_text_to_equal("#pp-metric-bubble_fraction",
                                    fmt_value(head["bubble_fraction"], "fraction"))
    _shot(dash_duo, artifacts, "pipeline")

    _goto(dash_duo, "traffic")
    dash_duo.wait_for_element("#tr-ib .heatmaplayer, #tr-ib image, #tr-ib .hm", timeout=15)
    assert "InfiniBand" in dash_duo.find_element("#tr-ib").text
    _shot(dash_duo, artifacts, "traffic")

    _goto(dash_duo, "warps")  # this run has no warp events: the reason, plainly
    dash_duo.wait_for_element("#na-warp_roles", timeout=15)
    assert "no warp_role events" in dash_duo.find_element("#na-warp_roles").text
    _no_console_errors(dash_duo)


def test_switch_runs_and_ranks(dash_duo, dash_state, artifacts) -> None:
    _start(dash_duo, dash_state)
    dash_duo.wait_for_element("#runs-list table", timeout=20)
    # the warp CSV: a Warps view with swimlanes and the diagnosis, no timeline
    rid = _select_run(dash_duo, dash_state, "h200/warp_events_M4_NS4_NR4.csv.gz")
    report = dash_state.runs[rid].result.report
    _goto(dash_duo, "warps")
    dash_duo.wait_for_element("#wp-diagnosis", timeout=15)
    text = report.tables["warp_diagnosis"]["text"][0]
    assert text in dash_duo.find_element("#wp-diagnosis").text
    dash_duo.wait_for_element("#wp-lanes .bars path", timeout=15)
    _shot(dash_duo, artifacts, "warps")
    _goto(dash_duo, "timeline")
    dash_duo.wait_for_element("#tl-none", timeout=15)
    _goto(dash_duo, "pipeline")
    dash_duo.wait_for_element("#na-pipeline_ops", timeout=15)

    # the hand-made 2-GPU run: per-rank numbers on the Overlap view
    rid = _select_run(dash_duo, dash_state, "sample_traces/handmade")
    report = dash_state.runs[rid].result.report
    _goto(dash_duo, "overlap")
    dash_duo.wait_for_text_to_equal(
        "#ov-metric-overlap_ratio", fmt_value(report.headline()["overlap_ratio"], "fraction"),
        timeout=15)
    _pick(dash_duo, "#ov-rank", "rank 1")
    per = report.metrics(by="rank").filter(pl.col("rank") == 1).row(0, named=True)
    dash_duo.wait_for_text_to_equal("#ov-metric-overlap_ratio",
                                    fmt_value(per["overlap_ratio"], "fraction"), timeout=15)
    dash_duo.wait_for_text_to_equal("#ov-metric-exposed_comm_ms",
                                    fmt_value(per["exposed_comm_ms"], "ms"))
    # compare two runs
    _goto(dash_duo, "compare")
    _pick(dash_duo, "#cmp-runs", "cpu/dualpipe")
    _pick(dash_duo, "#cmp-runs", "cpu/1f1b")
    # generous waits: a loaded machine (CI next to other jobs) once took over 20 s here
    dash_duo.wait_for_element("#cmp-table", timeout=60)
    dash_duo.wait_for_element("#cmp-chart .bars path", timeout=30)  # the chart drew bars
    dash_duo.find_element("h2").click()  # close the menu
    time.sleep(0.3)
    _shot(dash_duo, artifacts, "compare")
    _no_console_errors(dash_duo)


def test_timeline_zoom_pan_and_click(dash_duo, dash_state, artifacts) -> None:
    _start(dash_duo, dash_state)
    dash_duo.wait_for_element("#runs-list table", timeout=20)
    rid = _select_run(dash_duo, dash_state, "sample_traces/handmade")
    tl = dash_state.runs[rid].timeline
    _goto(dash_duo, "timeline")
    dash_duo.wait_for_element("#tl-rect-count", timeout=20)
    full = dash_duo.find_element("#tl-span").text
    dash_duo.wait_for_element("#tl-graph .bars path", timeout=15)
    # drag across the middle of the plot: the server answers with that window's rectangles
    _drag_zoom(dash_duo, "#tl-graph", 0.3, 0.6)
    WebDriverWait(dash_duo.driver, 15, ignored_exceptions=(StaleElementReferenceException,)
                  ).until(lambda d: d.find_element(By.ID, "tl-span").text != full)
    x0, x1 = _x_range(dash_duo, "#tl-graph")
    t0, t1 = int(x0 * 1e6), int(x1 * 1e6)
    dash_duo.wait_for_text_to_equal("#tl-span", fmt_value(t1 - t0, "ns"), timeout=15)
    rects = int(dash_duo.find_element("#tl-rect-count").text)
    lanes = int(dash_duo.find_element("#tl-lane-count").text)
    px = int(dash_duo.find_element("#tl-px").text)
    shown = tl.lanes["lane"].to_list()  # the hand-made run has 2 ranks: all lanes shown
    winners = tl.view(t0, t1, px, shown)
    assert int(dash_duo.find_element("#tl-winner-count").text) == winners.height
    assert rects == merge_touching(winners).height <= winners.height <= lanes * px
    # the browser decoded the typed arrays: each kind's bar starts are the server's
    drawn = dash_duo.driver.execute_script(
        "const g = document.querySelector('#tl-graph .js-plotly-plot');"
        "return g._fullData.map(t => [t.name, Array.from(t.base), Array.from(t.y)]);")
    merged = merge_touching(winners).with_columns(
        pl.max_horizontal("start_ns", pl.lit(t0)).alias("x0"))
    for name, base, ys in drawn:
        part = merged.filter(pl.col("kind").str.replace_all("_", " ") == name)
        got = [round(b * 1e6) for b in base]  # ms -> ns; t0 read back may differ by 1 ns
        assert max(abs(a - b) for a, b in zip(got, part["x0"].to_list(), strict=True)) <= 1
        assert len(ys) == part.height
    # click a bar: its name, times, stream and classification appear
    for _ in range(5):
        try:
            bar = dash_duo.find_elements("#tl-graph .bars path")[-1]
            dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                                           bar)
            # plotly takes clicks on its drag layer, at the bar's position
            ActionChains(dash_duo.driver).move_to_element(bar).pause(0.3).click().perform()
            dash_duo.wait_for_element("#tl-info-table", timeout=5)
            break
        except (StaleElementReferenceException, TimeoutException,
                ElementClickInterceptedException):
            time.sleep(0.5)
    dash_duo.wait_for_element("#tl-info-table", timeout=15)
    info = dash_duo.find_element("#tl-info-table").text
    assert "duration" in info and "classification" in info
    _shot(dash_duo, artifacts, "timeline-zoomed", full=False)
    # "Whole run" goes back to the full span
    dash_duo.find_element("#tl-reset").click()
    dash_duo.wait_for_text_to_equal("#tl-span", full, timeout=15)
    _no_console_errors(dash_duo)


def test_path_escapes_and_bad_uploads_get_messages(dash_duo, dash_state, artifacts,
                                                   extra_root, tmp_path) -> None:
    _start(dash_duo, dash_state)
    dash_duo.wait_for_element("#open-path", timeout=20)

    def try_open(value: str, expect: str) -> None:
        box = dash_duo.find_element("#open-path")
        dash_duo.clear_input(box)
        box.send_keys(value)
        dash_duo.find_element("#open-button").click()
        dash_duo.wait_for_contains_text("#open-message", expect, timeout=10)
        assert value in dash_duo.find_element("#open-error").text

    try_open("../../etc/passwd", "'..' is not allowed")
    try_open("/etc/passwd", "absolute paths are not accepted")
    try_open("cpu/no-such-run", "not found")
    _pick(dash_duo, "#open-root", str(extra_root.resolve()))
    try_open("escape/passwd", "outside the allowed folders")

    upload = dash_duo.find_element("#upload input[type=file]")
    fake = tmp_path / "fake.json.gz"
    fake.write_bytes(b"not gzip at all")
    upload.send_keys(str(fake))
    dash_duo.wait_for_element("#upload-error", timeout=10)
    assert "not gzip-compressed" in dash_duo.find_element("#upload-error").text
    # a gzip file whose JSON is broken: accepted, then listed as failed with the reason
    broken = tmp_path / "broken-upload.json.gz"
    broken.write_bytes(gzip.compress(b'{"traceEvents": [ {"ph": '))
    upload = dash_duo.find_element("#upload input[type=file]")
    upload.send_keys(str(broken))
    dash_duo.wait_for_element("#upload-ok", timeout=10)
    dash_duo.wait_for_contains_text("#runs-list", "failed", timeout=30)
    assert "broken-upload.json.gz" in dash_duo.find_element("#runs-list").text
    # too large for the 5 MB limit of this state
    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (6 << 20) + b"}")
    upload = dash_duo.find_element("#upload input[type=file]")
    upload.send_keys(str(big))
    dash_duo.wait_for_element("#upload-error", timeout=30)
    assert "larger than the upload limit" in dash_duo.find_element("#upload-error").text
    _shot(dash_duo, artifacts, "runs-errors")
    # the server still answers
    _goto(dash_duo, "overlap")
    dash_duo.wait_for_element("#ov-body", timeout=10)
    severe = [e for e in dash_duo.get_logs() or [] if "favicon" not in e.get("message", "")]
    assert severe == [], severe


def test_upload_a_trace_and_export_html(dash_duo, dash_state) -> None:
    _start(dash_duo, dash_state)
    dash_duo.wait_for_element("#upload input[type=file]", timeout=20)
    good = ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz"
    dash_duo.find_element("#upload input[type=file]").send_keys(str(good))
    dash_duo.wait_for_element("#upload-ok", timeout=10)
    dash_duo.wait_for_contains_text("#run-select", "upload: gpu_overlap_rank0.json.gz",
                                    timeout=60)
    entry = next(e for e in dash_state.runs.values() if e.source == "uploaded" and e.ready)
    dash_duo.wait_for_text_to_equal(
        "#metric-overlap_ratio",
        fmt_value(entry.result.report.headline()["overlap_ratio"], "fraction"), timeout=15)
    dash_duo.find_element("#export-button").click()
    dash_duo.wait_for_contains_text("#export-message", "downloaded", timeout=30)
    folder = Path(dash_duo.download_path)
    deadline = time.time() + 30
    files: list[Path] = []
    while time.time() < deadline:
        files = [f for f in folder.glob("*.html")]
        if files and not list(folder.glob("*.crdownload")):
            break
        time.sleep(0.2)
    assert files, "no HTML snapshot was downloaded"
    html = files[0].read_text()
    assert "plotly" in html and "<script src=\"http" not in html
    _no_console_errors(dash_duo)
    dash_duo.driver.find_element(By.TAG_NAME, "body")
