"""Side-by-side load benchmark: overlapscope analyze vs a typed JSON decode (the floor) vs HTA.

    python benchmarks/make_large_trace.py --target-mb 100 500 --out /tmp/osbench   # once
    python benchmarks/bench_load.py --data /tmp/osbench --sizes 100 500 --repeat 3

For each size (a run directory made by make_large_trace.py) it runs, each in its
own subprocess so that wall time, CPU time and peak RSS belong to that step alone,
and with ``--repeat N`` every step N times, interleaved (medians are reported):

1. the **typed floor**: ``msgspec`` decode of the file into ``msgspec.Struct`` types
   holding only ph, cat, name, pid, tid, ts, dur and the args an overlap analysis
   reads (correlation, External id, device, stream, grid, block, bytes), GC off.
   Every other row is reported as a multiple of it;
2. ``overlapscope analyze FILE --format json --no-cache``: end to end, one process
   (``--workers 1``; again pinned to one core with ``taskset -c 0``, since polars
   otherwise runs a thread per core), and with ``--workers 2`` (batches decoded in two
   processes);
3. the same with a fresh cache directory, twice: the cold run (decode + analysis +
   cache writes) and the cached reopen (the stored Report);
4. optionally (``--steps untyped``) the untyped ``msgspec.json.decode`` into dicts,
   with and without GC, as in earlier results;
5. HTA 0.5.0: ``TraceAnalysis(trace_dir=...)`` load + ``get_comm_comp_overlap``
   (skipped when ``import hta`` fails or with ``--skip-hta``; at most once per size).

Peak RSS and CPU time come from ``os.wait4`` on that one child (its own and that of
the children it waited for, e.g. decode workers). Nothing here is a test: numbers
depend on the machine, and the output is meant for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
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

TYPED_FLOOR_SCRIPT = """
import gc, sys, time, msgspec
gc.disable()
Id = int | str
Num = int | float
class Args(msgspec.Struct, gc=False):
    correlation: Id | None = None
    external_id: Id | None = msgspec.field(default=None, name="External id")
    device: Id | None = None
    stream: Id | None = None
    grid: list[Num] | None = None
    block: list[Num] | None = None
    bytes: Num | None = None
class Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str = ""
    name: str = ""
    pid: Id = 0
    tid: Id = 0
    ts: Num | None = None
    dur: Num | None = None
    args: Args | None = None
class Trace(msgspec.Struct):
    traceEvents: list[Event] = []
t0 = time.perf_counter()
raw = open(sys.argv[1], 'rb').read()
doc = msgspec.json.decode(raw, type=Trace)
print(len(doc.traceEvents), round(time.perf_counter() - t0, 3))
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
    cpu_s: float
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
    cpu = usage.ru_utime + usage.ru_stime
    return Measure(label, wall, rss_mb, proc.returncode, cpu, stdout, stderr, killed)


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


STEPS = ("analyze", "parallel", "cache", "untyped", "hta")
DEFAULT_STEPS = ("analyze", "parallel", "cache", "hta")


def median_measure(ms: list[Measure]) -> Measure:
    """The run with the median wall time (its own RSS/CPU), failures first."""
    bad = [m for m in ms if m.rc != 0]
    if bad:
        return bad[0]
    return sorted(ms, key=lambda m: m.wall_s)[len(ms) // 2]


def bench_size(data: Path, mb: int, with_hta: bool, steps: tuple[str, ...] = DEFAULT_STEPS,
               repeat: int = 1) -> list[tuple[str, Measure, str]]:
    run_dir = data / f"large-{mb}mb"
    file = run_dir / "rank-0.json"
    if not file.exists():
        sys.exit(f"{file} missing: run `python benchmarks/make_large_trace.py --target-mb {mb}"
                 f" --out {data}`")
    cli = overlapscope_cmd()
    plan: list[tuple[str, list[str], bool]] = [
        ("typed msgspec decode, GC off (floor)", [sys.executable, "-c", TYPED_FLOOR_SCRIPT,
                                                  str(file)], False)]
    analyze = [*cli, "analyze", str(file), "--format", "json"]
    if "analyze" in steps:
        plan.append(("overlapscope analyze --no-cache --workers 1",
                     [*analyze, "--no-cache", "--workers", "1"], False))
        # polars runs a thread per core even with one worker: pinned, this is the
        # like-for-like comparison with the single-threaded floor.
        if shutil.which("taskset"):
            plan.append(("overlapscope analyze --no-cache --workers 1, one core (taskset -c 0)",
                         ["taskset", "-c", "0", *analyze, "--no-cache", "--workers", "1"],
                         False))
    if "parallel" in steps:
        plan.append(("overlapscope analyze --no-cache --workers 2",
                     [*analyze, "--no-cache", "--workers", "2"], False))
    if "untyped" in steps:
        plan.append(("msgspec.json.decode into dicts",
                     [sys.executable, "-c", FLOOR_SCRIPT, str(file)], False))
        plan.append(("msgspec.json.decode into dicts, GC off",
                     [sys.executable, "-c", FLOOR_SCRIPT, str(file), "nogc"], False))
    got: dict[str, list[Measure]] = {label: [] for label, _, _ in plan}
    cold: list[Measure] = []
    warm: list[Measure] = []
    for _ in range(max(1, repeat)):  # interleaved: every step sees the same machine
        for label, cmd, _ in plan:
            got[label].append(run(label, cmd))
        if "cache" in steps:
            with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
                env = {**os.environ, "OVERLAPSCOPE_CACHE_DIR": cache}
                cold.append(run("cold", [*analyze, "--workers", "1"], env))
                warm.append(run("warm", [*analyze, "--workers", "1"], env))
    rows: list[tuple[str, Measure, str]] = []
    for label, _, _ in plan:
        m = median_measure(got[label])
        note = ""
        if label.startswith("typed") and m.rc == 0:
            n, t = m.stdout.split()
            note = f"{int(n):,} events; decode {t} s in-process"
        elif "analyze" in label:
            note = f"overlap {overlap_from_analyze(m.stdout)}"
        walls = ", ".join(f"{x.wall_s:.2f}" for x in got[label])
        rows.append((label, m, f"{note}; runs {walls}" if repeat > 1 else note))
    if cold:
        for label, ms in (("overlapscope analyze, cold cache (decode + analysis + writes)", cold),
                          ("overlapscope analyze, reopen (stored Report)", warm)):
            m = median_measure(ms)
            walls = ", ".join(f"{x.wall_s:.2f}" for x in ms)
            note = f"overlap {overlap_from_analyze(m.stdout)}"
            rows.append((label, m, f"{note}; runs {walls}" if repeat > 1 else note))

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
    ap.add_argument("--data", type=Path, default=DATA,
                    help="folder holding large-<N>mb/ (make_large_trace.py --out)")
    ap.add_argument("--skip-hta", action="store_true", help="do not run HTA")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(DEFAULT_STEPS),
                    help="steps to run (the typed floor always runs)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each step, interleaved; medians are reported (default 1)")
    ap.add_argument("--hta-max-mb", type=int, default=500,
                    help="run HTA only for sizes up to this (default 500)")
    ap.add_argument("--mem-limit-gb", type=float, default=MEM_LIMIT_MB / 1024,
                    help="kill a step whose resident set exceeds this (default 16)")
    args = ap.parse_args(argv)
    MEM_LIMIT_MB = int(args.mem_limit_gb * 1024)
    use_hta = not args.skip_hta and "hta" in args.steps and hta_available()
    load_before = f"{os.getloadavg()[0]:.1f}"
    table = ["| trace | step | wall s (median) | CPU s | peak RSS MiB | × floor wall | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    failures = []
    for mb in args.sizes:
        info_path = args.data / f"large-{mb}mb.info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        name = f"{info.get('bytes', mb * 1e6) / 1e6:.0f} MB JSON"
        rows = bench_size(args.data, mb, use_hta and mb <= args.hta_max_mb,
                          tuple(args.steps), args.repeat)
        floor = rows[0][1].wall_s
        for label, m, note in rows:
            ok = "" if m.rc == 0 else f" **failed (rc {m.rc})**"
            if m.killed:
                ok = f" **killed above {MEM_LIMIT_MB / 1024:.0f} GiB RSS**"
            if m.rc != 0 and not m.killed:
                failures.append((label, mb, m.stderr.strip().splitlines()[-3:]))
            table.append(f"| {name} | {label}{ok} | {m.wall_s:.2f} | {m.cpu_s:.2f} | "
                         f"{m.rss_mb:,.0f} | {m.wall_s / floor:.2f} | {note} |")
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
