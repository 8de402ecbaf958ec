"""Clock-skew correction and straggler naming on real profiler runs (issue #12).

    OMP_NUM_THREADS=1 python benchmarks/skew_profiled.py --profile-runs 5
    ... --suites smoke --profile-runs 5 --controls 0 --delay-ms 100   # a larger delay
    python benchmarks/skew_profiled.py --runs-dir /tmp/osc-skew-XXXX    # rescore, no profiling

Profiles ``--profile-runs`` CPU (gloo) runs per suite into a temporary directory outside
the repository (or ``--out-dir``), each with a random clock error on every rank but 0
(``--clock-skew-seed`` N: ±5 ms, ±20 ppm) and one injected delay, plus ``--controls``
(default as many) runs with the same clock errors and no delay. Runs are launched with
the profiler's own ``run_local``, the same launch as ``overlapscope profile``. Suites
(4 ranks on 2 "nodes"):

* ``dualpipe-moe``: PP 2 x EP 2, 3 steps, ``+20 ms`` on rank 1's ``attn(F)``. Anchors:
  send/recv pairs (pipeline P2P and two-hop dispatch/combine) and one start-up barrier.
* ``smoke``: 4 steps x 2 micro-batches, a 16 KiB all_reduce per micro-batch, ``+30 ms``
  on rank 1's ``smoke:F:mb=1:stage=0``. Anchors: gloo all_reduce ranges only (bounds).

Scores per suite, against run.json ``inject``: residual clock error (|estimated - true|
correction against rank 0 at 200 times over the run, every other rank; the truth is
``offset_ns + drift_ppm * 1e-6 * (origin - ref_unix_ns)`` at the frames' t = 0, see
docs/profiling.md), how many of those errors the reported ``uncertainty_ns`` covers,
causality violations before / after correction, and the named stragglers (late arrivals
at collectives and late sends to a waiting receiver, analyzers/stragglers.py): precision over
named steps, recall over runs (a run counts when some step names the injected rank and
phase), on the estimated axis and, to tell skew error from naming, on the true axis.
Control runs count false names. Prints Markdown for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from skew_accuracy import truth_from_manifest  # noqa: E402
from synthetic_skew import residual_errors  # noqa: E402

from overlapscope.analyzers.load import load_run  # noqa: E402
from overlapscope.analyzers.skew import (  # noqa: E402
    correct_frames,
    estimate_skew,
    manifest_injection,
)
from overlapscope.analyzers.stragglers import (  # noqa: E402
    named_stragglers,
    precision_recall,
    straggler_table,
)

#: suite -> (RunConfig fields, injected delay); the same as ``overlapscope profile`` options
#: (dualpipe-moe: --pp 2 --ep 2 --nodes 2 --gpus-per-node 2 --steps 3 --inject-delay
#: 1:attn(F):20ms; smoke: --nodes 2 --gpus-per-node 2 --steps 4 --set comm_elems=4096
#: --inject-delay 1:smoke:F:mb=1:stage=0:30ms), each with --clock-skew-seed N
SUITES: dict[str, tuple[dict, dict]] = {
    "dualpipe-moe": ({"workload": "dualpipe-moe", "pp": 2, "ep": 2, "nodes": 2,
                      "gpus_per_node": 2, "steps": 3},
                     {"rank": 1, "phase": "attn(F)", "ms": 20.0}),
    "smoke": ({"workload": "smoke", "nodes": 2, "gpus_per_node": 2, "steps": 4,
               "extra": {"comm_elems": 4096}},
              {"rank": 1, "phase": "smoke:F:mb=1:stage=0", "ms": 30.0}),
}


def profile(out: Path, suite: str, seed: int, delay_ms: float | None) -> None:
    """Profile one run into ``out`` (the profiler's own launcher; raises on failure).

    Called in-process rather than through the CLI so that the benchmark does not depend
    on every other sub-command importing cleanly.
    """
    from overlapscope.profiler.run import RunConfig, run_local

    fields, spec = SUITES[suite]
    os.environ["OMP_NUM_THREADS"] = "1"
    run_local(RunConfig(**fields, out=str(out), clock_skew_seed=seed,
                        inject_delay=None if delay_ms is None else {**spec, "ms": delay_ms}))


def _names(frames, model, inj) -> tuple[list, dict]:
    table = straggler_table(correct_frames(frames, model))
    named = named_stragglers(table) if not isinstance(table, str) else []
    return named, precision_recall(named, inj)


def score(run: Path) -> dict:
    """Everything this benchmark reports about one run directory."""
    frames = load_run(run)
    inj = manifest_injection(frames.meta.get("manifest"))
    truth = truth_from_manifest(frames, inj)
    res = estimate_skew(frames)
    t = res.table
    errs = residual_errors(res.model, truth)
    exact = truth.relative_model(res.model.reference or 0)
    # mid-run error per rank against the reported 1-sigma uncertainty
    mid = (truth.t0_ns + truth.t1_ns) / 2
    covered = []
    for row in t.iter_rows(named=True):
        r = row["rank"]
        if r == (res.model.reference or 0) or row["offset_ns"] is None:
            continue
        est = res.model.offset_ns[r] + res.model.drift_ppm.get(r, 0.0) * 1e-6 * mid
        true = exact.offset_ns[r] + exact.drift_ppm[r] * 1e-6 * mid
        covered.append((abs(est - true), float(row["uncertainty_ns"] or 0.0)))
    named, pr = _names(frames, res.model, inj)
    named_true, pr_true = _names(frames, exact, inj)
    return {
        "run": run.name, "pairs": res.pairs.height, "collectives": res.collectives.height,
        "errors_ns": errs.tolist(), "mid": covered,
        "before": int(t["violations_before"].sum()), "after": int(t["violations_after"].sum()),
        "delay": inj.get("delay"), "named": named, "pr": pr,
        "named_true": named_true, "pr_true": pr_true,
    }


def _naming(rows: list[dict], key: str) -> tuple[str, str, str]:
    """(steps named, precision, recall or false names) over runs."""
    pr = [r["pr" if key == "named" else "pr_true"] for r in rows]
    named = int(sum(p["named"] for p in pr))
    correct = int(sum(p["correct"] for p in pr))
    if rows[0]["delay"]:
        prec = f"{correct / named:.2f}" if named else "–"
        rec = f"{sum(1 for p in pr if p['recall']) / len(rows):.2f}"
    else:
        prec, rec = "–", f"{named} false names"
    return str(named), prec, rec


def tables(results: dict[str, dict[str, list[dict]]]) -> str:
    skew = ["| suite | runs | pairs / run | collective rows / run | p50 µs | p95 µs | max µs | "
            "mid-run errors ≤ 1σ / ≤ 3σ | median σ µs | violations before | after |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = ["| suite | injected | runs | steps named | precision | recall | "
             "true axis: named | precision | recall |", "|---|---|---|---|---|---|---|---|---|"]
    per_run = ["| suite | run | max error µs | σ µs (max) | violations before → after | "
               "named (step, rank, phase) |", "|---|---|---|---|---|---|"]
    for suite, kinds in results.items():
        rows = kinds["delay"] + kinds["control"]
        e = np.concatenate([np.asarray(r["errors_ns"]) for r in rows]) / 1e3
        mids = [m for r in rows for m in r["mid"]]
        in1 = sum(1 for err, s in mids if err <= s)
        in3 = sum(1 for err, s in mids if err <= 3 * s)
        sig = np.median([s for _, s in mids]) / 1e3
        skew.append(
            f"| {suite} | {len(rows)} | {np.mean([r['pairs'] for r in rows]):.0f} | "
            f"{np.mean([r['collectives'] for r in rows]):.0f} | {np.percentile(e, 50):.1f} | "
            f"{np.percentile(e, 95):.1f} | {e.max():.1f} | {in1}/{len(mids)} / "
            f"{in3}/{len(mids)} | {sig:.0f} | {sum(r['before'] for r in rows)} | "
            f"{sum(r['after'] for r in rows)} |")
        for kind in ("delay", "control"):
            rs = kinds[kind]
            if not rs:
                continue
            d = rs[0]["delay"]
            label = f"rank {d['rank']} `{d['phase']}` +{d['ms']:g} ms" if d else "none (control)"
            names.append(f"| {suite} | {label} | {len(rs)} | " + " | ".join(_naming(rs, "named"))
                         + " | " + " | ".join(_naming(rs, "named_true")) + " |")
            for r in rs:
                named = ", ".join(f"({s}, {k}, {p})" for s, k, p in r["named"]) or "–"
                per_run.append(
                    f"| {suite} | {r['run']} | {max(r['errors_ns']) / 1e3:.1f} | "
                    f"{max(s for _, s in r['mid']) / 1e3:.0f} | {r['before']} → {r['after']} | "
                    f"{named} |")
    return ("\n**Clock correction** (residual error over 200 times per rank, ranks 1–3)\n\n"
            + "\n".join(skew) + "\n\n**Straggler naming** (estimated axis; true axis = "
            "frames corrected with the injected clocks)\n\n" + "\n".join(names)
            + "\n\n**Per run**\n\n" + "\n".join(per_run) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile-runs", type=int, default=5,
                    help="runs per suite with the delay")
    ap.add_argument("--controls", type=int, default=None,
                    help="control runs per suite, no delay (default: --profile-runs)")
    ap.add_argument("--delay-ms", type=float, default=None,
                    help="injected delay instead of the suite's (20 ms / 30 ms)")
    ap.add_argument("--suites", nargs="*", default=list(SUITES), choices=list(SUITES))
    ap.add_argument("--seed", type=int, default=100, help="first --clock-skew-seed")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where runs go (default: a new temp dir outside the repository)")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="score runs already profiled there (<suite>/<kind>-<i>)")
    args = ap.parse_args()
    base = args.runs_dir or args.out_dir or Path(tempfile.mkdtemp(prefix="osc-skew-"))
    results: dict[str, dict[str, list[dict]]] = {}
    t0 = time.perf_counter()
    for suite in args.suites:
        results[suite] = {"delay": [], "control": []}
        controls = args.profile_runs if args.controls is None else args.controls
        for kind, n in (("delay", args.profile_runs), ("control", controls)):
            for i in range(n):
                run = base / suite / f"{kind}-{i}"
                if args.runs_dir is None:
                    ms = args.delay_ms if args.delay_ms is not None else SUITES[suite][1]["ms"]
                    profile(run, suite, args.seed + i, ms if kind == "delay" else None)
                    sys.stderr.write(f"{suite} {kind}-{i} profiled "
                                     f"({time.perf_counter() - t0:.0f} s)\n")
                if (run / "run.json").exists():
                    results[suite][kind].append(score(run))
    (base / "scores.json").write_text(json.dumps(results, default=str))
    sys.stdout.write(f"\nruns in {base} (total {time.perf_counter() - t0:.0f} s)\n")
    sys.stdout.write(tables(results))


if __name__ == "__main__":
    main()
