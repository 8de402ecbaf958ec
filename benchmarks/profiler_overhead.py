"""Profiler overhead: one workload traced, untraced (``--no-trace``) and bare, side by side.

Modes, each launched like ``overlapscope profile`` (local ranks, gloo on CPU):

- ``bare``: no ProfileSession at all (no-op annotations, no progress, nothing written);
- ``no-trace``: the session with ``enabled=False`` (what ``--no-trace`` runs);
- ``trace``: full Kineto tracing with all threads, export and augmentation.

Reported per mode (median over ``--repeats`` launches, modes interleaved and their order
rotated to share the machine's noise): the slowest rank's workload wall time per step
(ms, excludes process start and export), overhead vs bare (%), trace bytes per step
summed over ranks (KiB, gzip as written), trace export + augmentation time of the
slowest rank (s), and the whole launch (s).

    python benchmarks/profiler_overhead.py --nodes 2 --gpus-per-node 2 --steps 6 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from overlapscope.profiler.run import RunConfig, run_local

MODES = ("bare", "no-trace", "trace")


def _launch(base: RunConfig, mode: str, out: Path) -> dict[str, float]:
    cfg = replace(base, out=str(out), trace=mode == "trace", bare=mode == "bare")
    res = run_local(cfg)
    ranks = res["results"]
    steps = cfg.steps
    return {
        "step_ms": max(r["wall_s"] for r in ranks) / steps * 1e3,
        "trace_kib_per_step": sum(r.get("trace_bytes") or 0 for r in ranks) / steps / 1024,
        "export_s": max(r.get("export_s") or 0.0 for r in ranks),
        "launch_s": res["wall_s"],
    }


def measure(base: RunConfig, repeats: int) -> dict[str, dict[str, float]]:
    """Median metrics per mode."""
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for rep in range(repeats):
            # Rotate the order so no mode always runs first (warm caches, quieter machine).
            for mode in MODES[rep % 3 :] + MODES[: rep % 3]:
                samples[mode].append(_launch(base, mode, Path(tmp) / f"{mode}-{rep}"))
    return {
        mode: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
        for mode, runs in samples.items()
    }


def table(result: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`measure`'s result."""
    bare = result["bare"]["step_ms"]
    lines = [
        "| mode | step ms (slowest rank) | overhead vs bare | trace KiB/step (all ranks) "
        "| export s | launch s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        r = result[mode]
        lines.append(
            f"| {mode} | {r['step_ms']:.1f} | {100 * (r['step_ms'] / bare - 1):+.1f}% "
            f"| {r['trace_kib_per_step']:.1f} | {r['export_s']:.2f} | {r['launch_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="smoke")
    parser.add_argument("--schedule", default="dualpipe")
    parser.add_argument("--pp", type=int)
    parser.add_argument("--ep", type=int)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--micro-batches", type=int)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="KEY=JSON workload option")
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value)
    base = RunConfig(
        workload=args.workload,
        schedule=args.schedule,
        pp=args.pp,
        ep=args.ep,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        micro_batches=args.micro_batches,
        steps=args.steps,
        extra=extra,
    )
    result = measure(base, args.repeats)
    print(
        f"workload {args.workload}, {args.nodes}x{args.gpus_per_node} ranks, "
        f"{args.steps} steps, median of {args.repeats}"
    )
    print(table(result))


if __name__ == "__main__":
    main()
