"""Synthetic multi-rank traces with known clock offsets, drifts and late ranks.

Events are generated on one true time axis, then stamped by each rank's clock::

    observed = true + offset_ns[r] + drift_ppm[r] * 1e-6 * true

``gpu_run`` imitates a GPU MoE step: per layer ``attn(F)`` -> DeepEP
``notify_dispatch`` (synchronising) -> ``dispatch(F)`` -> ``mlp(F)`` ->
DeepEP ``combine`` (synchronising), and an NCCL all_reduce at the end of each
step; collective ends coincide on every rank up to a Gaussian jitter. ``cpu_run``
imitates a gloo pipeline: c10d::send / c10d::recv_ between neighbours (peers
as group ranks) and a ``gloo:all_reduce`` per step (``allreduce=False``: send/recv
only). An injected delay (``{"rank", "phase", "ms"}``) lengthens that phase on that
rank in every layer (``cpu_run``: every phase whose name matches it as an ``fnmatch``
pattern, e.g. ``forward:mb=*``, as the profiler does).

The frames' ``meta["manifest"]["inject"]`` holds what was injected, in the
run.json format that benchmarks/skew_accuracy.py reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import polars as pl

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.skew import ClockModel


@dataclass
class Truth:
    """The clocks the trace was stamped with, and the true time span."""

    offset_ns: dict[int, float]
    drift_ppm: dict[int, float]
    t0_ns: int
    t1_ns: int

    def relative_model(self, ref: int = 0) -> ClockModel:
        """The exact correction relative to ``ref`` as a ClockModel (for scoring)."""
        # observed_r = t (1 + d_r) + o_r ; reference clock: u = t (1 + d_ref) + o_ref
        # c_r(obs) = obs - u(t(obs)); linear in obs: slope s, intercept k
        out_o, out_d = {}, {}
        for r in self.offset_ns:
            dr, d0 = self.drift_ppm[r] * 1e-6, self.drift_ppm[ref] * 1e-6
            o, o0 = self.offset_ns[r], self.offset_ns[ref]
            # t = (obs - o) / (1 + dr); u = t (1 + d0) + o0
            a = (1 + d0) / (1 + dr)
            out_d[r] = (1 - a) * 1e6
            out_o[r] = -(o0 - o * a)
        return ClockModel(out_o, out_d, ref)


def _clocks(n: int, rng: np.random.Generator, max_offset_ns: float, drift_ppm: float,
            clock: dict | None) -> tuple[dict[int, float], dict[int, float]]:
    off = {r: float(rng.uniform(-max_offset_ns, max_offset_ns)) for r in range(n)}
    dr = {r: float(rng.uniform(-drift_ppm, drift_ppm)) for r in range(n)}
    for k, v in (clock or {}).items():
        off[int(k)] = float(v.get("offset_ns", 0.0))
        dr[int(k)] = float(v.get("drift_ppm", 0.0))
    return off, dr


def _stamp(df: pl.DataFrame, off: dict[int, float], dr: dict[int, float]) -> pl.DataFrame:
    """Observed times of true-time rows (ts_ns and the end ts_ns + dur_ns)."""
    if df.is_empty():
        return df
    ranks = list(off)
    o = pl.col("rank").replace_strict(ranks, [off[r] for r in ranks], return_dtype=pl.Float64)
    d = pl.col("rank").replace_strict(ranks, [dr[r] for r in ranks], return_dtype=pl.Float64)

    def obs(t: pl.Expr) -> pl.Expr:
        return (t.cast(pl.Float64) + o + d * 1e-6 * t.cast(pl.Float64)).round(0).cast(pl.Int64)

    end = pl.col("ts_ns") + pl.col("dur_ns")
    return df.with_columns(obs(pl.col("ts_ns")).alias("ts_ns"),
                           (obs(end) - obs(pl.col("ts_ns"))).alias("dur_ns"))


def _frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not rows:
        return F.empty(schema)
    cols = {c: [r.get(c) for r in rows] for c in schema}
    return pl.DataFrame(cols, schema=schema)


def _frames(n: int, acts, ops, anns, meta: dict[str, Any], off, dr, world_backend: str):
    ranks = pl.DataFrame({"rank": list(range(n)), "world_size": [n] * n,
                          "backend": [world_backend] * n},
                         schema={"rank": pl.Int32, "world_size": pl.Int64, "backend": pl.Utf8})
    ranks = ranks.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in F.RANKS_SCHEMA.items()
                                if c not in ranks.columns]).select(list(F.RANKS_SCHEMA))
    return F.TraceFrames(
        activities=_stamp(_frame(acts, F.ACTIVITIES_SCHEMA), off, dr),
        cpu_ops=_stamp(_frame(ops, F.CPU_OPS_SCHEMA), off, dr),
        annotations=_stamp(_frame(anns, F.ANNOTATIONS_SCHEMA), off, dr),
        comm_meta=F.empty(F.COMM_META_SCHEMA), warp_events=F.empty(F.WARP_EVENTS_SCHEMA),
        counters=F.empty(F.COUNTERS_SCHEMA), ranks=ranks, meta=meta)


def _ann(rank: int, name: str, t0: float, t1: float) -> dict[str, Any]:
    return {"rank": rank, "pid": "1", "tid": "1", "name": name, "ts_ns": int(t0),
            "dur_ns": int(t1 - t0), "on_gpu": False}


def _kernel(rank: int, name: str, t0: float, t1: float, stream: int) -> dict[str, Any]:
    return {"rank": rank, "device": 0, "stream": stream, "cat": "kernel", "name": name,
            "ts_ns": int(t0), "dur_ns": int(t1 - t0), "grid_x": 20}


NOTIFY = "void deep_ep::internode::notify_dispatch<false, 8>(int)"
DISPATCH = "void deep_ep::internode::dispatch<false, 8, false, 8>(int)"
COMBINE = "void deep_ep::internode::combine<false, 8, __nv_bfloat16, 24>(int)"
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"


def gpu_run(
    n_ranks: int = 8,
    *,
    steps: int = 3,
    layers: int = 4,
    seed: int = 0,
    max_offset_ns: float = 5e6,
    drift_ppm: float = 10.0,
    jitter_ns: float = 2000.0,
    delay: dict[str, Any] | None = None,
    clock: dict[str, dict[str, float]] | None = None,
    t0_ns: int = 1_000_000_000,
) -> tuple[F.TraceFrames, Truth]:
    """A GPU-like MoE run of ``n_ranks`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    off, dr = _clocks(n_ranks, rng, max_offset_ns, drift_ppm, clock)
    base = {"attn(F)": 1_200_000, "dispatch(F)": 1_500_000, "mlp(F)": 1_300_000}
    late_rank = int(delay["rank"]) if delay else -1
    late_phase = str(delay.get("phase")) if delay else ""
    late_ns = float(delay.get("ms", 0)) * 1e6 if delay else 0.0
    acts: list[dict] = []
    anns: list[dict] = []
    now = np.full(n_ranks, float(t0_ns))

    def phase(name: str, kernel: str | None = None) -> None:
        for r in range(n_ranks):
            d = base[name] * rng.uniform(0.97, 1.03) + (late_ns if (r, name) == (
                late_rank, late_phase) else 0.0)
            anns.append(_ann(r, name, now[r], now[r] + d))
            acts.append(_kernel(r, kernel or f"sm90_gemm_{name}", now[r], now[r] + d,
                                27 if kernel else 7))
            now[r] += d

    def sync(kernel: str, comm_ns: float) -> None:
        end = now.max() + comm_ns
        for r in range(n_ranks):
            e = end + rng.normal(0.0, jitter_ns)
            acts.append(_kernel(r, kernel, now[r], max(e, now[r] + 1000), 27))
            now[r] = max(e, now[r] + 1000) + 5000

    for s in range(steps):
        starts = now.copy()
        for _ in range(layers):
            phase("attn(F)")
            sync(NOTIFY, 80_000)
            phase("dispatch(F)", DISPATCH)
            phase("mlp(F)")
            sync(COMBINE, 600_000)
        sync(ALLREDUCE, 2_000_000)
        for r in range(n_ranks):
            anns.append(_ann(r, f"ProfilerStep#{s}", starts[r] - 10_000, now[r]))
        now += 3_000_000
    inject: dict[str, Any] = {"clock": {str(r): {"offset_ns": off[r], "drift_ppm": dr[r]}
                                        for r in range(n_ranks)}}
    if delay:
        inject["delay"] = dict(delay)
    meta = {"source": f"synthetic-gpu-{n_ranks}", "manifest": {"inject": inject}}
    frames = _frames(n_ranks, acts, [], anns, meta, off, dr, "nccl")
    return frames, Truth(off, dr, t0_ns, int(now.max()))


def cpu_run(
    n_ranks: int = 4,
    *,
    steps: int = 2,
    micro_batches: int = 4,
    seed: int = 0,
    max_offset_ns: float = 5e6,
    drift_ppm: float = 10.0,
    transit_ns: tuple[float, float] = (30_000.0, 80_000.0),
    groups: list[list[int]] | None = None,
    allreduce: bool = True,
    delay: dict[str, Any] | None = None,
    t0_ns: int = 1_000_000_000,
) -> tuple[F.TraceFrames, Truth]:
    """A gloo pipeline run: forward sends r -> r+1, backward r+1 -> r, per micro-batch.

    ``groups`` (disjoint pipeline groups; default one group of all ranks): the
    c10d ops name peers by group rank and ``meta["process_groups"]`` lists them.
    """
    rng = np.random.default_rng(seed)
    off, dr = _clocks(n_ranks, rng, max_offset_ns, drift_ppm, None)
    groups = groups or [list(range(n_ranks))]
    late_rank = int(delay["rank"]) if delay else -1
    late_ns = float(delay.get("ms", 0)) * 1e6 if delay else 0.0
    ops: list[dict] = []
    anns: list[dict] = []
    now = np.full(n_ranks, float(t0_ns))

    def op(rank: int, name: str, peer: int, tag: int, t: float, range_end: float) -> None:
        ops.append({"rank": rank, "pid": "1", "tid": "1", "cat": "cpu_op", "name": name,
                    "ts_ns": int(t), "dur_ns": 20_000,
                    "inputs": f'["", "", "{peer}", "{tag}"]',
                    "input_dims": "[[[16, 64]], [], [], []]"})
        rng_name = "gloo:send" if name == "c10d::send" else "gloo:recv"
        anns.append(_ann(rank, rng_name, t + 5_000, range_end))

    def transfer(a: int, b: int, g: list[int], tag: int) -> None:
        # b posts its receive at now[b]; a sends at now[a]
        s = now[a]
        done = max(now[b], s + rng.uniform(*transit_ns)) + 10_000
        op(a, "c10d::send", g.index(b), tag, s, s + 40_000)
        op(b, "c10d::recv_", g.index(a), tag, now[b], done)
        now[a] = s + 40_000
        now[b] = done

    def compute(r: int, name: str, ns: float) -> None:
        d = ns * rng.uniform(0.9, 1.1) + (late_ns if r == late_rank and fnmatchcase(
            name, str((delay or {}).get("phase"))) else 0.0)
        anns.append(_ann(r, name, now[r], now[r] + d))
        now[r] += d

    for s in range(steps):
        starts = now.copy()
        for mb in range(micro_batches):
            for g in groups:
                for i, r in enumerate(g):
                    compute(r, f"forward:mb={mb}", 400_000)
                    if i + 1 < len(g):
                        transfer(r, g[i + 1], g, 0)
            for g in groups:
                for i in range(len(g) - 1, -1, -1):
                    compute(g[i], f"backward:mb={mb}", 700_000)
                    if i > 0:
                        transfer(g[i], g[i - 1], g, 1)
        if allreduce:
            end = now.max() + 300_000
            for r in range(n_ranks):
                e = end + rng.normal(0, 20_000)
                anns.append({**_ann(r, "gloo:all_reduce", now[r], e), "tid": "2"})
                now[r] = e + 10_000
        for r in range(n_ranks):
            anns.append(_ann(r, f"ProfilerStep#{s}", starts[r] - 10_000, now[r]))
        now += 1_000_000
    meta: dict[str, Any] = {"source": f"synthetic-cpu-{n_ranks}",
                            "process_groups": {str(i): g for i, g in enumerate(groups)},
                            "manifest": {"inject": {"clock": {
                                str(r): {"offset_ns": off[r], "drift_ppm": dr[r]}
                                for r in range(n_ranks)}}}}
    if delay:
        meta["manifest"]["inject"]["delay"] = dict(delay)
    frames = _frames(n_ranks, [], ops, anns, meta, off, dr, "gloo")
    return frames, Truth(off, dr, t0_ns, int(now.max()))


def residual_errors(model: ClockModel, truth: Truth, samples: int = 200) -> np.ndarray:
    """|estimated - true| correction (ns) for every non-reference rank at ``samples`` times."""
    exact = truth.relative_model(model.reference or 0)
    ts = np.linspace(truth.t0_ns, truth.t1_ns, samples)
    errs = []
    for r in truth.offset_ns:
        if r == (model.reference or 0):
            continue
        obs = ts + truth.offset_ns[r] + truth.drift_ppm[r] * 1e-6 * ts
        est = model.offset_ns.get(r, 0.0) + model.drift_ppm.get(r, 0.0) * 1e-6 * obs
        true = exact.offset_ns[r] + exact.drift_ppm[r] * 1e-6 * obs
        errs.append(np.abs(est - true))
    return np.concatenate(errs) if errs else np.zeros(0)
