"""Side-by-side load benchmark: overlapscope analyze vs a bare JSON decode vs HTA.

    python benchmarks/make_large_trace.py --target-mb 100 500     # once
    python benchmarks/bench_load.py --sizes 100 500               # prints a markdown table

For each size (a run directory made by make_large_trace.py) it runs, each in its
own subprocess so that wall time and peak RSS belong to that step alone:

1. ``msgspec.json.decode`` of the file into Python objects: the floor any
   JSON-based loader pays;
2. ``overlapscope analyze FILE --format json --no-cache``: end to end;
3. the same with a fresh cache directory, twice: the cold run (decode + cache
   write) and the cached reopen;
4. HTA 0.5.0: ``TraceAnalysis(trace_dir=...)`` load + ``get_comm_comp_overlap``
   (skipped when ``import hta`` fails or with ``--skip-hta``; HTA runs at most
   once per size because it is slow and memory-hungry).

Peak RSS comes from ``os.wait4`` on that one child (its own maximum resident set
and that of anything it waited for). Nothing here is a test: numbers depend on
the machine, and the output is meant for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"

FLOOR_SCRIPT = """
import gc, sys, time, msgspec
if len(sys.argv) > 2 and sys.argv[2] == 'nogc':
    gc.disable()
t0 = time.perf_counter()
raw = open(sys.argv[1], 'rb').read()
doc = msgspec.json.decode(raw)
print(len(doc['traceEvents']), round(time.perf_counter() - t0, 3))
"""

HTA_SCRIPT = """
import json, sys, time, warnings, logging
warnings.filterwarnings('ignore')
logging.disable(logging.WARNING)
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t1 = time.perf_counter()
analyzer = TraceAnalysis(trace_dir=sys.argv[1])
t2 = time.perf_counter()
df = analyzer.get_comm_comp_overlap(visualize=False)
t3 = time.perf_counter()
print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'overlap_s': t3 - t2,
                  'overlap': df.to_dict(orient='records')}, default=str))
"""


@dataclass
class Measure:
    """One subprocess run: what ran, how long, how much memory, what it printed."""

    label: str
    wall_s: float
    rss_mb: float
    rc: int
    stdout: str
    stderr: str
    killed: bool = False


#: Children above this resident size are killed (the machine may be shared); --mem-limit-gb.
MEM_LIMIT_MB = 16 * 1024


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(label: str, cmd: list[str], env: dict[str, str] | None = None) -> Measure:
    """Run ``cmd``; wall time and the child's own peak RSS via os.wait4.

    The child is polled every 50 ms and killed when its resident set passes
    MEM_LIMIT_MB, so a runaway step fails alone instead of waking the OOM killer.
    """
    t0 = time.perf_counter()
    killed = False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not killed and _rss_mb(proc.pid) > MEM_LIMIT_MB:
                proc.kill()
                killed = True
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    rss_mb = usage.ru_maxrss / 1024  # Linux reports KiB
    return Measure(label, wall, rss_mb, proc.returncode, stdout, stderr, killed)


def overlapscope_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("overlapscope")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "overlapscope.app.cli"]


def _find(obj: Any, key: str) -> list[Any]:
    if isinstance(obj, dict):
        hits = [v for k, v in obj.items() if k == key]
        return hits + [h for v in obj.values() for h in _find(v, key)]
    if isinstance(obj, list):
        return [h for v in obj for h in _find(v, key)]
    return []


def overlap_from_analyze(stdout: str) -> str:
    """The per-GPU overlap ratio(s) of ``analyze --format json``'s summary table."""
    try:
        summaries = _find(json.loads(stdout), "summary")
    except ValueError:
        return "?"
    ratios = [row.get("overlap_ratio") for table in summaries if isinstance(table, list)
              for row in table if isinstance(row, dict)]
    return ", ".join(f"{100 * r:.1f}%" for r in ratios if isinstance(r, (int, float))) or "?"


def hta_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import hta"], capture_output=True)
    return probe.returncode == 0


STEPS = ("floor", "analyze", "cache", "hta")


def bench_size(mb: int, with_hta: bool, steps: tuple[str, ...] = STEPS
               ) -> list[tuple[str, Measure, str]]:
    run_dir = DATA / f"large-{mb}mb"
    file = run_dir / "rank-0.json"
    if not file.exists():
        sys.exit(f"{file} missing: run `python benchmarks/make_large_trace.py --target-mb {mb}`")
    rows: list[tuple[str, Measure, str]] = []
    # The floor always runs: the other rows are reported relative to it.
    floor = run("msgspec.json.decode (floor)", [sys.executable, "-c", FLOOR_SCRIPT, str(file)])
    note = ""
    if floor.rc == 0:
        n, t = floor.stdout.split()
        note = f"{int(n):,} events; decode {t} s in-process"
    rows.append(("msgspec.json.decode (floor)", floor, note))
    # The same decode with the cycle collector off: millions of tracked dicts make
    # CPython run full collections repeatedly, which is not parsing cost.
    label = "msgspec.json.decode, gc disabled (floor without GC passes)"
    nogc = run(label, [sys.executable, "-c", FLOOR_SCRIPT, str(file), "nogc"])
    rows.append((label, nogc, ""))

    cli = overlapscope_cmd()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        env = {**os.environ, "OVERLAPSCOPE_CACHE_DIR": cache}
        if "analyze" in steps:
            label = "overlapscope analyze --no-cache"
            m = run(label, [*cli, "analyze", str(file), "--format", "json", "--no-cache"], env)
            rows.append((label, m, f"overlap {overlap_from_analyze(m.stdout)}"))
        if "cache" in steps:
            label = "overlapscope analyze, cold cache (decode + cache write)"
            m = run(label, [*cli, "analyze", str(file), "--format", "json"], env)
            rows.append((label, m, ""))
            label = "overlapscope analyze, cached reopen"
            m = run(label, [*cli, "analyze", str(file), "--format", "json"], env)
            rows.append((label, m, f"overlap {overlap_from_analyze(m.stdout)}"))

    if with_hta and "hta" in steps:
        label = "HTA 0.5.0 TraceAnalysis + get_comm_comp_overlap"
        m = run(label, [sys.executable, "-c", HTA_SCRIPT, str(run_dir)])
        note = ""
        if m.rc == 0:
            res = json.loads(m.stdout.strip().splitlines()[-1])
            pct = [r.get("comp_comm_overlap_pctg") for r in res["overlap"]]
            note = (f"load {res['load_s']:.1f} s, overlap {res['overlap_s']:.1f} s; "
                    f"overlap {', '.join(f'{p:.1f}%' for p in pct if p is not None)}")
        rows.append((label, m, note))
    return rows


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for mod in ("polars", "msgspec", "pandas", "hta"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            continue
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, {', '.join(versions)}")


def main(argv: list[str] | None = None) -> None:
    global MEM_LIMIT_MB
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500],
                    help="sizes in MB, as made by make_large_trace.py (default 100 500)")
    ap.add_argument("--skip-hta", action="store_true", help="do not run HTA")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                    help="steps to run (the floor always runs)")
    ap.add_argument("--hta-max-mb", type=int, default=500,
                    help="run HTA only for sizes up to this (default 500)")
    ap.add_argument("--mem-limit-gb", type=float, default=MEM_LIMIT_MB / 1024,
                    help="kill a step whose resident set exceeds this (default 16)")
    args = ap.parse_args(argv)
    MEM_LIMIT_MB = int(args.mem_limit_gb * 1024)
    use_hta = not args.skip_hta and hta_available()
    load_before = f"{os.getloadavg()[0]:.1f}"
    table = ["| trace | step | wall s | peak RSS MiB | × floor wall | notes |",
             "|---|---|---|---|---|---|"]
    failures = []
    for mb in args.sizes:
        info_path = DATA / f"large-{mb}mb.info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        name = f"{info.get('bytes', mb * 1e6) / 1e6:.0f} MB JSON"
        rows = bench_size(mb, use_hta and mb <= args.hta_max_mb, tuple(args.steps))
        floor = rows[0][1].wall_s
        for label, m, note in rows:
            ok = "" if m.rc == 0 else f" **failed (rc {m.rc})**"
            if m.killed:
                ok = f" **killed above {MEM_LIMIT_MB / 1024:.0f} GiB RSS**"
            if m.rc != 0 and not m.killed:
                failures.append((label, mb, m.stderr.strip().splitlines()[-3:]))
            table.append(f"| {name} | {label}{ok} | {m.wall_s:.2f} | {m.rss_mb:,.0f} | "
                         f"{m.wall_s / floor:.2f} | {note} |")
    print(f"Machine: {machine()}")
    print(f"Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; "
          f"load average before/after: {load_before} / {os.getloadavg()[0]:.1f}")
    print(f"Command: {shlex.join(['python', 'benchmarks/bench_load.py', *(argv or sys.argv[1:])])}")
    print()
    print("\n".join(table))
    for label, mb, tail in failures:
        print(f"\n{label} ({mb} MB) failed; stderr tail:\n  " + "\n  ".join(tail))


if __name__ == "__main__":
    main()
