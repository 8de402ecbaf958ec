"""Dashboard speed on a large multi-rank run (issue #10): not a timed test.

    python benchmarks/bench_dashboard.py --ranks 64 --mb 30      # the issue's size
    python benchmarks/bench_dashboard.py --ranks 16 --mb 8       # a quick run

Generates a run in ``--workdir`` (default /tmp/overlapscope-bench-dash, never the
repository) by replicating the H200 sample ``gpu_overlap_rank0.json.gz`` in time
(benchmarks/make_large_trace.py) to ``--mb`` MB per rank, one copy per rank with its
own ``distributedInfo`` rank. Then, through the dashboard's own state and views:

- cold: open the run with an empty parquet cache (decode + analyze + timeline index),
  then build the Timeline (first ``--view-ranks`` ranks, full span) and Overlap views
  and serialise them to JSON as Dash sends them;
- cached: the same with a new dashboard state over the now-filled caches (the Report
  cache, the timelines and the clock estimate; the views are ready from these alone,
  the decoded frames for click details follow in the background and are timed too);
- pan/zoom: ``--moves`` random windows (zoom 1x..10^4x, random position): server time
  (``Timeline.view`` + figure + JSON) and bytes per answer, p50/p95, for the default
  rank selection and for all ranks; every answer is checked to hold at most
  lanes x pixel columns rectangles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SOURCE = ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz"


def make_run(workdir: Path, ranks: int, mb: float) -> Path:
    """A run directory of ``ranks`` traces of about ``mb`` MB each (reused when present)."""
    from make_large_trace import write_large

    run = workdir / f"run-{ranks}x{mb:g}mb"
    if run.is_dir() and len(list(run.glob("rank-*.json"))) == ranks:
        return run
    run.mkdir(parents=True, exist_ok=True)
    base = workdir / f"base-{mb:g}mb.json"
    if not base.exists():
        write_large(SOURCE, int(mb * 1e6), base)
    data = base.read_bytes()
    key = b'"rank":0,"world_size":1'
    head_end = data.index(b'"traceEvents"')
    assert key in data[:head_end], "distributedInfo not found in the generated head"
    for r in range(ranks):
        head = data[:head_end].replace(key, b'"rank":%d,"world_size":%d' % (r, ranks), 1)
        (run / f"rank-{r}.json").write_bytes(head + data[head_end:])
    return run


def _encode(obj: object) -> bytes:
    import plotly.io.json as pj

    return pj.to_json_plotly(obj).encode()


def views(entry, ranks: list[int], pixels: int) -> tuple[float, int]:
    """Build and serialise the Timeline (full span) and Overlap views: (seconds, bytes)."""
    from overlapscope.app.dashboard.pages import overlap
    from overlapscope.app.dashboard.pages import timeline as tp

    t = time.perf_counter()
    tl = entry.timeline
    fig, _ = tp.render(tl, ranks, list(tp.GROUPS), tl.t_min, tl.t_max, pixels, "b")
    body = overlap.body(entry_state[0], entry.id, None)
    n = len(_encode(fig)) + len(_encode(body.to_plotly_json()))
    return time.perf_counter() - t, n


entry_state: list = []


def open_run(run: Path, workers: int | None):
    from overlapscope.app.dashboard.state import DashboardState

    state = DashboardState([run.parent], workers=workers)
    entry_state[:] = [state]
    t = time.perf_counter()
    entry = state.open(run)
    while entry.status in ("queued", "loading"):  # until the views can be drawn
        time.sleep(0.01)
    ready_s = time.perf_counter() - t
    assert state.wait(3600), "loading did not finish"
    if entry.status != "ready":
        raise SystemExit(f"failed: {entry.error}")
    entry.extra["all_s"] = time.perf_counter() - t  # frames for click details included
    return state, entry, ready_s


def pan_zoom(entry, ranks: list[int], pixels: int, moves: int, seed: int = 0) -> dict:
    from overlapscope.app.dashboard.pages import timeline as tp

    tl = entry.timeline
    rng = np.random.default_rng(seed)
    span = tl.t_max - tl.t_min
    secs, sizes, rects, winners, bound = [], [], [], [], []
    for _ in range(moves):
        width = max(int(span / 10 ** rng.uniform(0, 4)), 1000)
        t0 = tl.t_min + int(rng.uniform(0, max(span - width, 1)))
        t = time.perf_counter()
        fig, n = tp.render(tl, ranks, list(tp.GROUPS), t0, t0 + width, pixels, "b")
        payload = _encode(fig)
        secs.append(time.perf_counter() - t)
        sizes.append(len(payload))
        rects.append(n["rects"])
        winners.append(n["winners"])
        bound.append(n["lanes"] * n["pixels"])
        assert n["rects"] <= n["winners"] <= n["lanes"] * n["pixels"]
    return {
        "ranks": len(ranks), "lanes": int(tl.lanes.filter(
            tl.lanes["rank"].is_in(ranks)).height), "pixels": pixels,
        "p50_ms": 1e3 * float(np.percentile(secs, 50)),
        "p95_ms": 1e3 * float(np.percentile(secs, 95)),
        "p95_kb": float(np.percentile(sizes, 95)) / 1e3,
        "max_kb": max(sizes) / 1e3, "max_bars": max(rects), "max_winners": max(winners),
        "bound": max(bound),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--mb", type=float, default=30.0)
    ap.add_argument("--view-ranks", type=int, default=8)
    ap.add_argument("--pixels", type=int, default=1190)  # a 1440 px window's plot area
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir())
                    / "overlapscope-bench-dash")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / "cache"
    os.environ["OVERLAPSCOPE_CACHE_DIR"] = str(cache)
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    run = make_run(args.workdir, args.ranks, args.mb)
    total_mb = sum(f.stat().st_size for f in run.glob("rank-*.json")) / 1e6
    print(f"run {run}: {args.ranks} ranks, {total_mb:.0f} MB "
          f"(generated in {time.perf_counter() - t:.1f} s)", flush=True)
    rows = []
    for label in ("cold", "cached"):
        state, entry, load_s = open_run(run, args.workers)
        ranks = sorted(entry.timeline.lanes["rank"].unique().to_list())[: args.view_ranks]
        view_s, nbytes = views(entry, ranks, args.pixels)
        rows.append((label, load_s, view_s, nbytes))
        print(f"{label}: ready {load_s:.2f} s (analyze {entry.extra['analyze_s']:.2f} s, "
              f"timeline index {entry.extra['timeline_s']:.2f} s"
              f"{', from its cache' if entry.extra.get('timeline_cached') else ''}) "
              f"+ Timeline&Overlap views "
              f"{view_s:.2f} s ({nbytes / 1e3:.0f} kB) = {load_s + view_s:.2f} s; frames for "
              f"click details after {entry.extra['all_s']:.2f} s", flush=True)
        if label == "cached":
            tl = entry.timeline
            print(f"timeline: {tl.lanes.height} lanes, {tl.index.size:,} intervals, "
                  f"index {tl.index.nbytes() / 1e6:.1f} MB", flush=True)
            all_ranks = sorted(tl.lanes["rank"].unique().to_list())
            for sel in (ranks, all_ranks):
                r = pan_zoom(entry, sel, args.pixels, args.moves)
                print("pan/zoom " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                                for k, v in r.items()}), flush=True)
        state.close()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")


if __name__ == "__main__":
    main()
