"""False-fail rate of a relative gate on A/A pairs, and detection rate on changed pairs.

An A/A pair is the same ``overlapscope profile`` command run twice. Regressions are
made two ways: (1) a changed run with extra profile arguments (``--change``: e.g.
``--inject-delay 1:attn(F):20ms``, the profiler's delay injection, or
``--set overlap_comm=false``: a DualPipe pair's communication inline on the main
thread instead of on the comm thread), and
(2) the second run of each A/A pair with a regression injected into its traces:
every communication host op (``gloo:*``, ``c10d::*``, ``nccl*``) lengthened by
``--stretch`` (e.g. 0.2 = +20 %). For each pair the gate (default
``exposed_comm_ms > +5%``) is checked twice: on the threshold alone, and with the
significance requirement (per-step samples, Mann-Whitney U / bootstrap).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/aa_gate_rates.py --pairs 10 \
        --out /tmp/overlapscope_aa --stretch 0.2 0.5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/aa_gate_rates.py --pairs 10 \
        --out /tmp/overlapscope_aa --stretch --change "--inject-delay 1:attn(F):20ms" \
        --change-name delay

Runs are kept under ``--out`` (reused when present). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from overlapscope.analyzers.compare import check_gate, load_runs
from overlapscope.analyzers.gates import parse_gate

PROFILE = [
    "profile", "--workload", "dualpipe-moe", "--schedule", "dualpipe", "--pp", "2",
    "--ep", "2", "--nodes", "2", "--gpus-per-node", "2", "--micro-batches", "4",
]
#: Profiled steps per run (``--steps``): each step is one sample of the noise-aware gate.
DEFAULT_STEPS = 6


def profile(out: Path, extra: list[str], steps: int = DEFAULT_STEPS) -> Path:
    """Run the profile command once into ``out`` (skipped when it already holds a run)."""
    if (out / "run.json").exists():
        return out
    cmd = [sys.executable, "-m", "overlapscope.app.cli", *PROFILE, "--steps", str(steps),
           *extra, "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


COMM = re.compile(r"^(gloo:|c10d::|nccl)")


def stretched(run: Path, factor: float) -> Path:
    """A copy of ``run`` whose comm host ops last ``1 + factor`` times longer."""
    out = run.with_name(f"{run.name}_stretch{factor:g}")
    if (out / "run.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in run.iterdir():
        if f.name.endswith(".json.gz") and f.name.startswith("rank-"):
            doc = json.loads(gzip.decompress(f.read_bytes()))
            for ev in doc.get("traceEvents", []):
                if ev.get("ph") == "X" and COMM.match(str(ev.get("name", ""))):
                    ev["dur"] = round(float(ev["dur"]) * (1 + factor), 3)
            (tmp / f.name).write_bytes(gzip.compress(json.dumps(doc).encode(), 1))
        elif f.is_file():
            shutil.copy2(f, tmp / f.name)
    os.replace(tmp, out)
    return out


def verdicts(base: Path, other: Path, gate_text: str, alpha: float) -> dict[str, object]:
    """Gate outcome on one pair: change, threshold-only verdict, noise-aware verdict."""
    runs, errors = load_runs([base, other], workers=1)
    if errors:
        raise RuntimeError(errors)
    res = check_gate(parse_gate(gate_text), runs, alpha=alpha)
    row = res.rows[0]
    return {"base": str(base), "other": str(other), "change": row.change,
            "threshold_fail": bool(row.change is not None and res.gate.holds(row.change)),
            "noise_aware": res.status, "detail": row.detail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("/tmp/overlapscope_aa"))
    ap.add_argument("--gate", default="exposed_comm_ms > +5%")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--change", default="--set overlap_comm=false",
                    help="extra profile arguments of the changed run")
    ap.add_argument("--change-name", default="b",
                    help="directory prefix of the changed runs (one per set of --change)")
    ap.add_argument("--stretch", type=float, nargs="*", default=[0.2, 0.5],
                    help="comm-op stretch factors injected into the A/A pairs' second run")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help="profiled steps per run (samples per run for the rank test; use a "
                    "fresh --out when changing it)")
    args = ap.parse_args()
    t0 = time.time()
    aa, ab = [], []
    injected: dict[str, list[dict[str, object]]] = {f"{x:g}": [] for x in args.stretch}
    for i in range(args.pairs):
        a = profile(args.out / f"a{i}", [], args.steps)
        a2 = profile(args.out / f"a{i}_again", [], args.steps)
        b = profile(args.out / f"{args.change_name}{i}", args.change.split(), args.steps)
        aa.append(verdicts(a, a2, args.gate, args.alpha))
        ab.append(verdicts(a, b, args.gate, args.alpha))
        for x in args.stretch:
            injected[f"{x:g}"].append(verdicts(a, stretched(a2, x), args.gate, args.alpha))

    def rate(rows: list[dict[str, object]], key: str, value: object) -> float:
        return sum(r[key] == value for r in rows) / len(rows)

    summary = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "profile": " ".join([*PROFILE, "--steps", str(args.steps)]),
        "change": args.change,
        "gate": args.gate,
        "alpha": args.alpha,
        "pairs": args.pairs,
        "aa_false_fail_threshold_only": rate(aa, "threshold_fail", True),
        "aa_false_fail_noise_aware": rate(aa, "noise_aware", "fail"),
        "aa_not_significant": rate(aa, "noise_aware", "not significant"),
        "changed_detect_threshold_only": rate(ab, "threshold_fail", True),
        "changed_detect_noise_aware": rate(ab, "noise_aware", "fail"),
        "injected": {x: {"detect_threshold_only": rate(rows, "threshold_fail", True),
                         "detect_noise_aware": rate(rows, "noise_aware", "fail"),
                         "not_significant": rate(rows, "noise_aware", "not significant"),
                         "median_change": sorted(r["change"] for r in rows)[len(rows) // 2]}
                     for x, rows in injected.items()},
        "wall_s": round(time.time() - t0, 1),
        "aa": aa,
        "changed": ab,
        "injected_rows": injected,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
