"""Wall time of comparing two 64-rank runs: 1 and 2 local workers, and local Ray.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_compare.py --ranks 64 --rank-mb 4
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_compare.py --workers 1 2 4 8 --no-ray

Each run is ``--ranks`` copies of one replicated H200 trace (benchmarks/
make_large_trace.py, ``--rank-mb`` MB of uncompressed JSON per rank) with
``distributedInfo.rank`` rewritten per copy; data goes to ``--out`` (default /tmp).
The parquet cache is off, so every timing decodes every file. Per-step samples are
off (``samples=False``: the same per-trace work as ``analyze``) unless ``--samples``.
``--workers`` lists the local worker counts to time (Ray gets the largest as its
CPUs, started as ``--engine ray`` starts a local instance). Two equal runs
on two workers are one task each (batch.whole_runs_balance); Ray decodes file by
file. For scale, the machine's own ceiling is timed too: one ``overlapscope analyze
RUN --workers 1`` process per run, all started at once (what two independent jobs
get from these cores). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from overlapscope.analyzers import analyze
from overlapscope.analyzers.compare import compare, load_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import overlapscope_cmd  # noqa: E402
from make_large_trace import DEFAULT_SOURCE, write_large  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_runs(out: Path, ranks: int, rank_mb: float, source: Path) -> list[Path]:
    """Two run directories of ``ranks`` rank files each (reused when complete)."""
    runs = [out / "run-a", out / "run-b"]
    if all(len(list(r.glob("rank-*.json"))) == ranks for r in runs):
        return runs
    one = out / "one-rank.json"
    write_large(source, int(rank_mb * 1e6), one)
    data = one.read_bytes()
    head, tail = data[:4096], data[4096:]
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        for r in range(ranks):
            h = head.replace(b'"rank":0', b'"rank":%d' % r, 1).replace(
                b'"world_size":1', b'"world_size":%d' % ranks, 1)
            (run / f"rank-{r}.json").write_bytes(h + tail)
    return runs


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def independent_processes(runs: list[Path]) -> float:
    """Wall seconds of one ``overlapscope analyze RUN --workers 1`` process per run,
    all started at once: the most these cores give to that many independent jobs."""
    cli = overlapscope_cmd()
    t = time.perf_counter()
    procs = [subprocess.Popen([*cli, "analyze", str(r), "--no-cache", "--workers", "1",
                               "--format", "json"], stdout=subprocess.DEVNULL)
             for r in runs]
    if any(p.wait() != 0 for p in procs):
        sys.exit("overlapscope analyze failed")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--rank-mb", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/overlapscope_bench_compare"))
    src = DEFAULT_SOURCE if DEFAULT_SOURCE.exists() else (
        ROOT / "sample_traces/h200/gpu_overlap_rank0.json.gz")
    ap.add_argument("--source", type=Path, default=src)
    ap.add_argument("--samples", action="store_true", help="also analyze each step alone")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="local worker counts to time (default: 1 2)")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    runs = make_runs(args.out, args.ranks, args.rank_mb, args.source)
    total_mb = sum(f.stat().st_size for r in runs for f in r.glob("rank-*.json")) / 1e6
    res: dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"), "ranks_per_run": args.ranks,
        "mb_per_rank": round(total_mb / (2 * args.ranks), 2), "total_mb": round(total_mb, 1),
        "samples": args.samples,
    }
    t, single = timed(lambda: analyze([runs[0]], workers=1, cache=False))
    res["analyze_one_run_1_worker_s"] = round(t, 2)
    res["analyze_per_trace_ms"] = round(1000 * t / args.ranks, 1)

    def cmp(**kw):
        loaded, errors = load_runs(runs, cache=False, samples=args.samples, **kw)
        assert not errors, errors
        return compare([r.report for r in loaded], steps=[r.steps for r in loaded]
                       if args.samples else None)

    frames = []
    for workers in args.workers:
        t, frame = timed(lambda w=workers: cmp(workers=w))
        frames.append(frame)
        res[f"compare_local_{workers}_workers_s"] = round(t, 2)
        res[f"compare_local_{workers}_per_trace_ms"] = round(1000 * t / (2 * args.ranks), 1)
    res["local_equal_across_workers"] = all(f.equals(frames[0]) for f in frames)
    res["independent_processes_s"] = round(independent_processes(runs), 2)
    if not args.no_ray:
        import ray

        from overlapscope.analyzers.batch_ray import _connect

        t0 = time.perf_counter()
        cpus = max(args.workers)
        _connect(None, cpus)  # as `--engine ray` starts a local instance
        res["ray_init_s"] = round(time.perf_counter() - t0, 2)
        t, ray_frame = timed(lambda: cmp(engine="ray", workers=cpus))
        res[f"compare_ray_{cpus}_cpus_s"] = round(t, 2)
        res["ray_equals_local"] = ray_frame.equals(frame)
        ray.shutdown()
    res["headline"] = single[0].headline()
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
