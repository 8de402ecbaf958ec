"""Clock skew between ranks: per-rank offset and drift estimated from the trace itself.

Ranks on different hosts stamp events with their own clocks. This module finds
events that must coincide or be ordered across ranks and fits, per rank ``r``, a
linear clock correction relative to a reference rank (the lowest rank, normally 0)::

    c_r(t) = offset_ns + drift_ppm * 1e-6 * t        (t: the rank's own time, ns)
    corrected(t) = t - round(c_r(t))

so ``offset_ns`` is how far the rank's clock is *ahead* of the reference at the
run's time origin (``t = 0``) and ``drift_ppm`` how fast it runs ahead.

Anchors
-------
* **Synchronising collectives**: no participant can end before every
  participant has started. On the GPU (NCCL all_reduce / all_gather /
  reduce_scatter / all_to_all kernels, DeepEP notify / combine kernels,
  :data:`SYNC_KERNEL_PATTERN`) their ends also coincide on every participant
  (a few µs of jitter): these are the *coincidence* anchors of the fit. gloo
  collectives (``gloo:all_reduce``, ``gloo:barrier``, ... ranges) only bound:
  a gloo range ends when the user thread waited on the work, which may be long
  after the collective finished (the CPU sample runs' barrier ends spread over
  20 ms). Instances are matched across ranks by key (kernel name, plus the
  process group of the launching ``record_param_comms`` when it can be found)
  and order of occurrence.
* **Point-to-point pairs** (gloo ``c10d::send`` / ``c10d::recv_`` host ops; the
  peer is a *group* rank and the tag sits in ``Concrete Inputs``): the k-th send
  from A to B with tag t is received by the k-th matching receive on B (gloo
  matches messages FIFO per (peer, tag)). A receive cannot end before its send
  starts. The receive's end is that of its ``gloo:recv`` range when present (it
  lasts until the work completed), else the op's end.

Fit
---
GPU collective ends: ``end_r - c_r(end_r) = T_i + noise`` with one unknown ``T_i`` per
instance (profiled out). Send/receive pairs give NTP-like two-way estimates:
for ranks A, B with messages both ways, ``U_AB = min(recv_end_B - send_start_A)``
bounds ``c_B - c_A`` from above and ``U_BA`` from below, so
``c_B - c_A ≈ (U_AB - U_BA) / 2 ± (U_AB + U_BA) / 2`` (per time window when a
drift is fitted). Both kinds are combined in one weighted least-squares problem
over the communicator graph, made robust by iteratively reweighted least
squares with Huber weights; the reference rank is fixed at zero.

A **causality repair** follows: while some receive ends before its send starts,
or some collective participant ends before another participant started, the
parameters are projected onto the violated constraint (least change), so the
corrected times violate none of them when the constraints are consistent.

All functions are pure: frames in, frames out. Raw frames are never modified;
:func:`correct_frames` returns a new :class:`TraceFrames`.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import polars as pl

from overlapscope.analyzers.frames import TraceFrames

#: GPU kernels whose ends coincide on every participant (own name, case-insensitive).
SYNC_KERNEL_PATTERN = (
    r"(?i)(nccl[A-Za-z]*?_?(AllReduce|AllGather|ReduceScatter|AllToAll|Alltoall)"
    r"|(^|::)(notify_dispatch|notify_combine|cached_notify|cached_notify_dispatch"
    r"|cached_notify_combine|combine)\b)"
)
#: gloo annotations spanning a synchronising collective's execution.
GLOO_SYNC_PATTERN = (
    r"^gloo:(all_?reduce|all_?gather|_?allgather_base|reduce_?scatter|all_?to_?all"
    r"|alltoall_base|barrier)$"
)
SEND_OP, RECV_OP = "c10d::send", "c10d::recv_"

#: One row per (collective instance, participating rank).
COLLECTIVES_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Utf8,
    "instance": pl.Int64,
    "rank": pl.Int32,
    "name": pl.Utf8,
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
}

#: One row per matched message: the send on ``src_rank`` and its receive on ``dst_rank``.
P2P_SCHEMA: dict[str, pl.DataType] = {
    "src_rank": pl.Int32,
    "dst_rank": pl.Int32,
    "tag": pl.Int64,
    "seq": pl.Int64,
    "send_start_ns": pl.Int64,
    "send_end_ns": pl.Int64,
    "recv_start_ns": pl.Int64,
    "recv_end_ns": pl.Int64,
}

#: The ``skew`` table: one row per rank.
SKEW_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "offset_ns": pl.Float64,
    "drift_ppm": pl.Float64,
    "uncertainty_ns": pl.Float64,
    "anchors_used": pl.Int64,
    "violations_before": pl.Int64,
    "violations_after": pl.Int64,
}

DriftMode = Literal["auto", "on", "off"]
#: ``drift="auto"`` fits a drift when the anchors span at least this long.
DRIFT_MIN_SPAN_NS = 100_000_000
#: ... and every rank has at least this many coincidence (GPU collective) anchors.
DRIFT_MIN_ANCHORS = 8
_HUBER_K = 1.5
_MIN_SIGMA_NS = 50.0
_REPAIR_MARGIN_NS = 2.0


# --------------------------------------------------------------------------- groups


class _Dist(msgspec.Struct):
    pg_config: list[dict[str, Any]] | None = None


class _Head(msgspec.Struct):
    """Only ``distributedInfo.pg_config`` of a Kineto file; everything else is skipped."""

    distributedInfo: _Dist | None = None  # noqa: N815 - Kineto's spelling


def process_groups(frames: TraceFrames) -> dict[str, list[int]]:
    """Process groups of the run: ``pg_name -> global ranks`` (in group-rank order).

    Read from ``meta["process_groups"]`` when the loader provides it, else from
    ``distributedInfo.pg_config`` of the rank files (header only). Always holds
    ``"__world__"``: every rank of the run.
    """
    groups: dict[str, list[int]] = {}
    given = frames.meta.get("process_groups")
    if isinstance(given, dict):
        groups.update({str(k): [int(r) for r in v] for k, v in given.items()})
    elif frames.ranks.height and "path" in frames.ranks.columns:
        for path in frames.ranks["path"].drop_nulls().to_list():
            for pg in _pg_config(path):
                name, ranks = pg.get("pg_name"), pg.get("ranks")
                if name is not None and isinstance(ranks, list) and ranks:
                    groups.setdefault(str(name), [int(r) for r in ranks])
    world = sorted(int(r) for r in frames.ranks["rank"].to_list()) if frames.ranks.height else []
    groups["__world__"] = world
    return groups


def _pg_config(path: str) -> list[dict[str, Any]]:
    """``distributedInfo.pg_config`` of one Kineto file ([] when absent or unreadable)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if p.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        head = msgspec.json.decode(raw, type=_Head)
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError, EOFError):
        return []
    return (head.distributedInfo.pg_config or []) if head.distributedInfo else []


# --------------------------------------------------------------------------- anchors


def _order_instances(df: pl.DataFrame) -> pl.DataFrame:
    """Number occurrences per (key, rank) by start time; keep instances with >= 2 ranks."""
    if df.is_empty():
        return pl.DataFrame(schema=COLLECTIVES_SCHEMA)
    df = df.sort("key", "rank", "start_ns").with_columns(
        pl.int_range(pl.len()).over("key", "rank").cast(pl.Int64).alias("instance")
    )
    # keys whose ranks saw different counts cannot be matched by order
    counts = df.group_by("key", "rank").len()
    ok = counts.group_by("key").agg((pl.col("len").n_unique() == 1).alias("ok"))
    df = df.join(ok.filter("ok").select("key"), on="key", how="semi")
    size = pl.len().over("key", "instance")
    return df.filter(size >= 2).select(list(COLLECTIVES_SCHEMA)).cast(COLLECTIVES_SCHEMA)


def collective_instances(frames: TraceFrames) -> pl.DataFrame:
    """Synchronising collectives matched across ranks (COLLECTIVES_SCHEMA).

    ``key`` is ``gpu:<kernel name>[|pg=<name>]`` or ``host:<gloo annotation>``;
    ``instance`` is the occurrence number of the key on each rank (0-based). Keys
    whose occurrence count differs between ranks are dropped (they cannot be
    matched by order). Times are the frames' own (raw or corrected).
    """
    parts: list[pl.DataFrame] = []
    acts = frames.activities
    if acts.height:
        k = acts.filter(pl.col("name").str.contains(SYNC_KERNEL_PATTERN))
        if k.height:
            k = _attach_pg(frames, k)
            parts.append(k.select(
                (pl.lit("gpu:") + pl.col("name")
                 + pl.when(pl.col("pg_name").is_not_null())
                 .then(pl.lit("|pg=") + pl.col("pg_name")).otherwise(pl.lit(""))).alias("key"),
                "rank", "name", pl.col("ts_ns").alias("start_ns"),
                (pl.col("ts_ns") + pl.col("dur_ns")).alias("end_ns"),
            ))
    ann = frames.annotations
    if ann.height:
        g = ann.filter(pl.col("name").str.contains(GLOO_SYNC_PATTERN) & ~pl.col("on_gpu"))
        if g.height:
            parts.append(g.select(
                (pl.lit("host:") + pl.col("name")).alias("key"), "rank", "name",
                pl.col("ts_ns").alias("start_ns"),
                (pl.col("ts_ns") + pl.col("dur_ns")).alias("end_ns"),
            ))
    if not parts:
        return pl.DataFrame(schema=COLLECTIVES_SCHEMA)
    return _order_instances(pl.concat(parts, how="vertical_relaxed"))


def _attach_pg(frames: TraceFrames, kernels: pl.DataFrame) -> pl.DataFrame:
    """Kernels with ``pg_name``: the group of the record_param_comms that launched them."""
    meta = frames.comm_meta.filter(
        (pl.col("name") == "record_param_comms") & pl.col("pg_name").is_not_null())
    launches = frames.cpu_ops.filter(pl.col("correlation").is_not_null())
    if meta.is_empty() or launches.is_empty():
        return kernels.with_columns(pl.lit(None, dtype=pl.Utf8).alias("pg_name"))
    lk = launches.select("rank", "tid", "correlation", pl.col("ts_ns").alias("launch_ns"))
    lk = kernels.select("rank", "correlation").join(lk, on=["rank", "correlation"], how="inner")
    m = meta.select("rank", "tid", pl.col("ts_ns").alias("m_ts"),
                    (pl.col("ts_ns") + pl.col("dur_ns")).alias("m_end"), "pg_name")
    j = lk.sort("launch_ns").join_asof(
        m.sort("m_ts"), left_on="launch_ns", right_on="m_ts", by=["rank", "tid"],
        strategy="backward", check_sortedness=False)
    j = j.filter(pl.col("launch_ns") <= pl.col("m_end")).select("rank", "correlation", "pg_name")
    return kernels.join(j.unique(["rank", "correlation"]), on=["rank", "correlation"], how="left")


def _peer_tag(inputs: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(peer, tag) of a c10d::send / recv_ op from its Concrete Inputs JSON text."""
    nums = inputs.str.extract_all(r"\"(-?\d+)\"")
    peer = nums.list.get(-2, null_on_oob=True).str.strip_chars('"').cast(pl.Int64, strict=False)
    tag = nums.list.get(-1, null_on_oob=True).str.strip_chars('"').cast(pl.Int64, strict=False)
    return peer, tag


def _p2p_ops(frames: TraceFrames, op: str, range_name: str) -> pl.DataFrame:
    """Send or receive ops with peer, tag and the end of their gloo range."""
    peer, tag = _peer_tag(pl.col("inputs"))
    ops = frames.cpu_ops.filter(pl.col("name") == op).select(
        "rank", "tid", "ts_ns", (pl.col("ts_ns") + pl.col("dur_ns")).alias("op_end"),
        peer.alias("peer"), tag.alias("tag"), pl.col("input_dims").alias("dims"),
    ).filter(pl.col("peer").is_not_null() & pl.col("tag").is_not_null())
    if ops.is_empty():
        return ops.with_columns(pl.col("op_end").alias("end_ns"))
    rng = frames.annotations.filter(pl.col("name") == range_name).select(
        "rank", "tid", pl.col("ts_ns").alias("r_ts"),
        (pl.col("ts_ns") + pl.col("dur_ns")).alias("r_end"))
    if rng.height:
        ops = ops.sort("ts_ns").join_asof(
            rng.sort("r_ts"), left_on="ts_ns", right_on="r_ts", by=["rank", "tid"],
            strategy="forward", check_sortedness=False)
        inside = pl.col("r_ts").is_not_null() & (pl.col("r_ts") <= pl.col("op_end"))
        end = pl.when(inside).then(pl.max_horizontal("op_end", "r_end")).otherwise("op_end")
        ops = ops.with_columns(end.alias("end_ns")).drop("r_ts", "r_end")
    else:
        ops = ops.with_columns(pl.col("op_end").alias("end_ns"))
    return ops.sort("rank", "ts_ns")


def p2p_pairs(frames: TraceFrames, groups: dict[str, list[int]] | None = None) -> pl.DataFrame:
    """Matched gloo send/receive pairs (P2P_SCHEMA).

    The peer in a c10d op is a *group* rank; a send stream (A, peer p, tag t) is
    matched to a receive stream (B, peer q, tag t) when some process group G
    holds both with ``G[p] == B`` and ``G[q] == A`` and both streams have the
    same number of messages (and shapes); ambiguous streams are dropped.
    ``groups`` defaults to :func:`process_groups`.
    """
    sends = _p2p_ops(frames, SEND_OP, "gloo:send")
    recvs = _p2p_ops(frames, RECV_OP, "gloo:recv")
    if sends.is_empty() or recvs.is_empty():
        return pl.DataFrame(schema=P2P_SCHEMA)
    if groups is None:
        groups = process_groups(frames)
    gl = [g for g in groups.values() if g]
    send_streams = {k: v for k, v in sends.partition_by(
        ["rank", "peer", "tag"], as_dict=True, maintain_order=True).items()}
    recv_streams = {k: v for k, v in recvs.partition_by(
        ["rank", "peer", "tag"], as_dict=True, maintain_order=True).items()}
    matches: dict[tuple, tuple] = {}
    for (a, p, t), s in send_streams.items():
        cands: dict[int, int] = {}
        for g in gl:
            if a in g and 0 <= p < len(g) and g[p] != a:
                b, q = g[p], g.index(a)
                r = recv_streams.get((b, q, t))
                if r is not None and r.height == s.height and (
                        r["dims"].to_list() == s["dims"].to_list()
                        or s["dims"].null_count() == s.height):
                    cands[b] = q
        if len(cands) == 1:
            ((b, q),) = cands.items()
            matches[(a, p, t)] = (b, q, t)
    # a receive stream claimed by two send streams is ambiguous: drop both
    claims = defaultdict(int)
    for rk in matches.values():
        claims[rk] += 1
    out: list[pl.DataFrame] = []
    for (a, _p, t), rk in matches.items():
        if claims[rk] != 1:
            continue
        s, r, b = send_streams[(a, _p, t)], recv_streams[rk], rk[0]
        out.append(pl.DataFrame({
            "src_rank": [a] * s.height, "dst_rank": [b] * s.height, "tag": [t] * s.height,
            "seq": list(range(s.height)),
            "send_start_ns": s["ts_ns"], "send_end_ns": s["end_ns"],
            "recv_start_ns": r["ts_ns"], "recv_end_ns": r["end_ns"],
        }, schema=P2P_SCHEMA))
    if not out:
        return pl.DataFrame(schema=P2P_SCHEMA)
    return pl.concat(out).sort("src_rank", "dst_rank", "tag", "seq")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ClockModel:
    """Per-rank linear clock corrections relative to ``reference`` (rank)."""

    offset_ns: dict[int, float]
    drift_ppm: dict[int, float]
    reference: int | None = None

    def correction_ns(self, rank: pl.Expr, ts: pl.Expr) -> pl.Expr:
        """Integer ns to subtract from ``ts`` on ``rank`` (0 for ranks without a model)."""
        ranks = list(self.offset_ns)
        off = rank.replace_strict(ranks, [self.offset_ns[r] for r in ranks], default=0.0,
                                  return_dtype=pl.Float64)
        dr = rank.replace_strict(ranks, [self.drift_ppm.get(r, 0.0) for r in ranks],
                                 default=0.0, return_dtype=pl.Float64)
        return (off + dr * 1e-6 * ts.cast(pl.Float64)).round(0).cast(pl.Int64)

    def correct(self, rank: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Corrected int64 times for arrays of ranks and raw times (same rounding as frames)."""
        out = pl.DataFrame({"r": rank.astype(np.int32), "t": ts.astype(np.int64)}).select(
            pl.col("t") - self.correction_ns(pl.col("r"), pl.col("t")))
        return out.to_series().to_numpy()

    @property
    def is_identity(self) -> bool:
        """True when no rank is corrected."""
        return all(v == 0 for v in self.offset_ns.values()) and all(
            v == 0 for v in self.drift_ppm.values())


@dataclass
class SkewResult:
    """What :func:`estimate_skew` found: the model, the table, the anchors."""

    model: ClockModel
    table: pl.DataFrame
    collectives: pl.DataFrame
    pairs: pl.DataFrame
    drift_fitted: bool
    notes: list[str] = field(default_factory=list)

    @property
    def has_anchors(self) -> bool:
        """True when any cross-rank anchor was found."""
        return self.collectives.height > 0 or self.pairs.height > 0


class _Params:
    """Index of the fitted parameters: offset (and drift) per non-reference rank."""

    def __init__(self, ranks: list[int], ref: int, drift: bool) -> None:
        self.ranks, self.ref, self.drift = ranks, ref, drift
        free = [r for r in ranks if r != ref]
        self.col_o = {r: i for i, r in enumerate(free)}
        self.col_d = {r: len(free) + i for i, r in enumerate(free)} if drift else {}
        self.n = len(free) * (2 if drift else 1)

    def cols(self, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = np.array([self.col_o.get(int(r), -1) for r in rank], dtype=np.int64)
        d = np.array([self.col_d.get(int(r), -1) for r in rank], dtype=np.int64)
        return o, d

    def value(self, theta: np.ndarray, rank: np.ndarray, x: np.ndarray) -> np.ndarray:
        o, d = self.cols(rank)
        v = np.where(o >= 0, theta[np.maximum(o, 0)], 0.0) if self.n else np.zeros(len(rank))
        if self.drift:
            v = v + np.where(d >= 0, theta[np.maximum(d, 0)], 0.0) * x
        return v

    def row(self, rank: np.ndarray, x: np.ndarray, sign: float = 1.0) -> np.ndarray:
        """Dense design rows (len(rank) x n) for +/- c_rank(x)."""
        m = np.zeros((len(rank), self.n))
        o, d = self.cols(rank)
        idx = np.arange(len(rank))
        m[idx[o >= 0], o[o >= 0]] += sign
        if self.drift:
            m[idx[d >= 0], d[d >= 0]] += sign * x[d >= 0]
        return m


def _huber(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.where(a <= _HUBER_K, 1.0, _HUBER_K / np.maximum(a, 1e-12))


def _edges_from_pairs(pairs: pl.DataFrame, windows: int) -> pl.DataFrame:
    """Two-way (NTP-like) estimates of c_B - c_A per unordered rank pair and time window.

    Columns: a, b (a < b), x_ns (time of the estimate), delta_ns (c_b - c_a),
    half_ns (half-width of the feasible interval).
    """
    if pairs.is_empty():
        return pl.DataFrame(schema={"a": pl.Int32, "b": pl.Int32, "x_ns": pl.Float64,
                                    "delta_ns": pl.Float64, "half_ns": pl.Float64})
    p = pairs.with_columns(
        (pl.col("recv_end_ns") - pl.col("send_start_ns")).alias("u"),
        pl.min_horizontal("src_rank", "dst_rank").alias("a"),
        pl.max_horizontal("src_rank", "dst_rank").alias("b"),
        (pl.col("src_rank") < pl.col("dst_rank")).alias("fwd"),
        ((pl.col("send_start_ns") + pl.col("recv_end_ns")) // 2).alias("mid"),
    )
    t0, t1 = p["mid"].min(), p["mid"].max()
    width = max((t1 - t0) / max(windows, 1), 1.0)
    p = p.with_columns(((pl.col("mid") - t0) / width).floor().clip(0, windows - 1)
                       .cast(pl.Int64).alias("w"))
    best = (p.sort("u").group_by("a", "b", "w", "fwd", maintain_order=True)
            .agg(pl.col("u").first(), pl.col("mid").first()))
    f = best.filter("fwd").drop("fwd")
    r = best.filter(~pl.col("fwd")).drop("fwd")
    e = f.join(r, on=["a", "b", "w"], suffix="_r")
    # forward a->b: c_b - c_a <= u ; backward b->a: c_a - c_b <= u_r
    return e.select(
        "a", "b", ((pl.col("mid") + pl.col("mid_r")) / 2).alias("x_ns"),
        ((pl.col("u") - pl.col("u_r")) / 2).alias("delta_ns"),
        ((pl.col("u") + pl.col("u_r")) / 2).abs().alias("half_ns"),
    )


def _components(ranks: list[int], links: list[tuple[int, int]]) -> dict[int, int]:
    parent = {r: r for r in ranks}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        if a in parent and b in parent:
            parent[find(a)] = find(b)
    return {r: find(r) for r in ranks}


def _fit(
    coin: pl.DataFrame, edges: pl.DataFrame, group: list[int], ref: int, fit_drift: bool,
    t_mid: float, iterations: int,
) -> tuple[dict[int, float], dict[int, float], dict[int, float], dict[int, int]]:
    """Robust weighted least squares over one connected group of ranks.

    Returns offset_ns at t = 0, drift_ppm, 1-sigma of the correction at ``t_mid``
    and anchors used, per rank of the group (``ref`` fixed at zero).
    """
    params = _Params(group, ref, fit_drift)
    cc = coin.filter(pl.col("rank").is_in(group))
    c_rank = cc["rank"].to_numpy()
    c_y = cc["end_ns"].to_numpy().astype(np.float64)
    c_x = (c_y - t_mid) / 1e9
    inst_id = (cc.select(pl.struct("key", "instance").rank("dense") - 1)
               .to_series().to_numpy().astype(np.int64)) if cc.height else np.zeros(0, np.int64)
    n_inst = int(inst_id.max()) + 1 if inst_id.size else 0
    ee = edges.filter(pl.col("a").is_in(group) & pl.col("b").is_in(group))
    e_a, e_b = ee["a"].to_numpy(), ee["b"].to_numpy()
    e_x = (ee["x_ns"].to_numpy() - t_mid) / 1e9
    e_y = ee["delta_ns"].to_numpy()
    e_sig = np.maximum(ee["half_ns"].to_numpy(), _MIN_SIGMA_NS)
    e_rows = params.row(e_b, e_x) + params.row(e_a, e_x, -1.0) if ee.height else np.zeros(
        (0, params.n))
    theta = np.zeros(params.n)
    c_w = np.ones(len(c_y))
    e_w = np.ones(len(e_y))
    sigma_c = 1000.0
    cov = np.zeros((params.n, params.n))
    if params.n:
        c_rows = params.row(c_rank, c_x) if len(c_y) else np.zeros((0, params.n))
        for it in range(iterations):
            n_mat = np.zeros((params.n, params.n))
            rhs = np.zeros(params.n)
            if len(c_y):
                w = c_w / sigma_c**2
                wsum = np.bincount(inst_id, weights=w, minlength=n_inst)
                g = np.zeros((n_inst, params.n))
                np.add.at(g, inst_id, c_rows * w[:, None])
                wy = np.bincount(inst_id, weights=w * c_y, minlength=n_inst)
                inv = np.where(wsum > 0, 1.0 / np.maximum(wsum, 1e-300), 0.0)
                n_mat += (c_rows * w[:, None]).T @ c_rows - (g * inv[:, None]).T @ g
                rhs += (c_rows * w[:, None]).T @ c_y - (g * inv[:, None]).T @ wy
            if len(e_y):
                w = e_w / e_sig**2
                n_mat += (e_rows * w[:, None]).T @ e_rows
                rhs += (e_rows * w[:, None]).T @ e_y
            ridge = 1e-9 * float(np.mean(np.abs(np.diag(n_mat)))) + 1e-300
            cov = np.linalg.pinv(n_mat + ridge * np.eye(params.n))
            prev, theta = theta, cov @ rhs
            if it > 0 and np.max(np.abs(theta - prev)) < 0.05:
                break
            if len(c_y):
                v = c_y - c_rows @ theta
                t_i = np.bincount(inst_id, weights=c_w * v, minlength=n_inst) / np.maximum(
                    np.bincount(inst_id, weights=c_w, minlength=n_inst), 1e-300)
                res = v - t_i[inst_id]
                mad = float(np.median(np.abs(res))) * 1.4826 if res.size else 0.0
                sigma_c = max(mad, _MIN_SIGMA_NS)
                c_w = _huber(res / sigma_c)
            if len(e_y):
                e_w = _huber((e_y - e_rows @ theta) / e_sig)
    off: dict[int, float] = {ref: 0.0}
    dr: dict[int, float] = {ref: 0.0}
    sd: dict[int, float] = {ref: 0.0}
    for r in group:
        if r == ref:
            continue
        o = theta[params.col_o[r]]
        d = theta[params.col_d[r]] if fit_drift else 0.0
        off[r] = o - d * t_mid / 1e9
        dr[r] = d / 1e3
        sd[r] = float(np.sqrt(max(cov[params.col_o[r], params.col_o[r]], 0.0)))
    used: dict[int, int] = defaultdict(int)
    for r, n in zip(*np.unique(c_rank, return_counts=True), strict=True):
        used[int(r)] += int(n)
    for a, b in zip(e_a.tolist(), e_b.tolist(), strict=True):
        used[a] += 1
        used[b] += 1
    return off, dr, sd, dict(used)


def _place(coll: pl.DataFrame, pairs: pl.DataFrame, model: ClockModel, placed: list[int],
           group: list[int]) -> tuple[float, float | None] | None:
    """Shift (ns) of a group's clocks against the placed ranks from ordering bounds only.

    Collective instances shared by both sides and one-way messages between them
    bound the shift to [L, U]; returns (midpoint, half-width), or the smallest
    shift satisfying a one-sided bound (half-width None), or None without bounds.
    """
    lo, hi = -np.inf, np.inf
    cs, ce, ss, re = _corrected_anchor_times(coll, pairs, model)
    if coll.height:
        df = coll.select("key", "instance", "rank").with_columns(
            pl.Series("cs", cs), pl.Series("ce", ce),
            pl.col("rank").is_in(group).alias("g"), pl.col("rank").is_in(placed).alias("p"))
        agg = df.group_by("key", "instance").agg(
            pl.col("ce").filter("g").min().alias("g_end"),
            pl.col("cs").filter("g").max().alias("g_start"),
            pl.col("ce").filter("p").min().alias("p_end"),
            pl.col("cs").filter("p").max().alias("p_start"),
        ).drop_nulls()
        if agg.height:
            hi = min(hi, float((agg["g_end"] - agg["p_start"]).min()))
            lo = max(lo, float((agg["g_start"] - agg["p_end"]).max()))
    if pairs.height:
        src, dst = pairs["src_rank"].to_numpy(), pairs["dst_rank"].to_numpy()
        into = np.isin(src, placed) & np.isin(dst, group)
        out = np.isin(src, group) & np.isin(dst, placed)
        if into.any():
            hi = min(hi, float((re - ss)[into].min()))
        if out.any():
            lo = max(lo, float((ss - re)[out].max()))
    m = _REPAIR_MARGIN_NS
    if np.isfinite(lo) and np.isfinite(hi):
        if lo > hi:
            return (lo + hi) / 2, (lo - hi) / 2
        return (lo + hi) / 2, (hi - lo) / 2
    if np.isfinite(hi):
        return min(0.0, hi - m), None
    if np.isfinite(lo):
        return max(0.0, lo + m), None
    return None


def estimate_skew(
    frames: TraceFrames,
    *,
    drift: DriftMode = "auto",
    groups: dict[str, list[int]] | None = None,
    repair: bool = True,
    iterations: int = 60,
) -> SkewResult:
    """Estimate every rank's clock offset/drift against the lowest rank.

    ``frames`` must hold raw (uncorrected) times. ``drift``: "auto" fits a drift
    when the anchors span at least :data:`DRIFT_MIN_SPAN_NS`. Returns a
    :class:`SkewResult` whose ``table`` follows SKEW_SCHEMA: ``offset_ns`` (rank
    clock minus reference clock at t = 0), ``drift_ppm`` (null when not fitted),
    ``uncertainty_ns`` (1-sigma of the correction at the middle of the anchors;
    for a repaired rank at least the repair shift), ``anchors_used`` (collective
    participations and two-way pair estimates involving the rank),
    ``violations_before`` / ``violations_after`` (anchors the rank violates
    with raw / corrected times: receives ending before their send starts, and
    collective participations ending before another participant started).
    Ranks not connected to the reference by anchors get null estimates.
    """
    ranks = sorted(int(r) for r in frames.ranks["rank"].to_list()) if frames.ranks.height else []
    coll = collective_instances(frames)
    pairs = p2p_pairs(frames, groups)
    notes: list[str] = []
    if not ranks:
        empty = pl.DataFrame(schema=SKEW_SCHEMA)
        return SkewResult(ClockModel({}, {}), empty, coll, pairs, False, notes)
    times = [coll["end_ns"], pairs["recv_end_ns"], pairs["send_start_ns"]]
    allt = pl.concat([t.cast(pl.Int64) for t in times])
    span = (allt.max() - allt.min()) if allt.len() else 0
    # coincidence anchors: GPU collectives only. A gloo range ends when the user thread
    # waited on the work, not when the collective finished: host collectives only bound.
    coin = coll.filter(pl.col("key").str.starts_with("gpu:"))
    per_rank = coin.group_by("rank").len()["len"]
    enough = per_rank.len() == len(ranks) and int(per_rank.min() or 0) >= DRIFT_MIN_ANCHORS
    fit_drift = drift == "on" or (drift == "auto" and span is not None
                                  and span >= DRIFT_MIN_SPAN_NS and enough)
    t_mid = float((allt.max() + allt.min()) / 2) if allt.len() else 0.0

    edges = _edges_from_pairs(pairs, 4 if fit_drift else 1)
    links = [(int(a), int(b)) for a, b in edges.select("a", "b").unique().rows()]
    for _key, inst in coin.group_by("key", "instance"):
        rs = inst["rank"].to_list()
        links += [(rs[0], r) for r in rs[1:]]
    ref = ranks[0]
    comp = _components(ranks, links)
    members: dict[int, list[int]] = defaultdict(list)
    for r in ranks:
        members[comp[r]].append(r)
    model_o = {r: 0.0 for r in ranks}
    model_d = {r: 0.0 for r in ranks}
    unc: dict[int, float | None] = {r: None for r in ranks}
    used: dict[int, int] = defaultdict(int)
    for group in sorted(members.values()):
        o, d, sd, u = _fit(coin, edges, group, group[0], fit_drift, t_mid, iterations)
        model_o.update(o)
        model_d.update(d)
        unc.update(sd)
        for r, n in u.items():
            used[r] += n
    placed = list(members[comp[ref]])
    unplaced: list[int] = []
    for group in sorted(members.values()):
        if comp[group[0]] == comp[ref]:
            continue
        cur = ClockModel(model_o, model_d, ref)
        shift = _place(coll, pairs, cur, placed, group)
        if shift is None:
            unplaced += group
            continue
        delta, half = shift
        for r in group:
            model_o[r] += delta
            unc[r] = None if half is None else float(np.hypot(unc[r] or 0.0, half))
        placed += group
    connected = sorted(placed)
    if unplaced:
        notes.append(f"no anchors tie ranks {sorted(unplaced)} to rank {ref}: their clocks "
                     "are not corrected")
    raw = ClockModel({r: 0.0 for r in ranks}, {r: 0.0 for r in ranks}, ref)
    fitted = ClockModel(model_o, model_d, ref)
    before = count_violations(coll, pairs, raw)
    model = _repair(fitted, coll, pairs, connected, ref, fit_drift) if repair else fitted
    after = count_violations(coll, pairs, model)

    for r in connected:
        shift = abs(model.offset_ns[r] + model.drift_ppm[r] * 1e-6 * t_mid
                    - fitted.offset_ns[r] - fitted.drift_ppm[r] * 1e-6 * t_mid)
        if unc[r] is not None:
            unc[r] = max(float(unc[r]), shift)
    table = pl.DataFrame({
        "rank": ranks,
        "offset_ns": [model.offset_ns[r] if r in connected else None for r in ranks],
        "drift_ppm": [(model.drift_ppm[r] if fit_drift else None) if r in connected else None
                      for r in ranks],
        "uncertainty_ns": [unc[r] if r in connected else None for r in ranks],
        "anchors_used": [used.get(r, 0) for r in ranks],
        "violations_before": [before.get(r, 0) for r in ranks],
        "violations_after": [after.get(r, 0) for r in ranks],
    }, schema=SKEW_SCHEMA)
    if sum(after.values()):
        notes.append(f"{sum(after.values())} causality violations remain after correction "
                     "(inconsistent anchors)")
    return SkewResult(model, table, coll, pairs, fit_drift, notes)


# --------------------------------------------------------------------------- causality


def _corrected_anchor_times(coll: pl.DataFrame, pairs: pl.DataFrame, model: ClockModel):
    cs = model.correct(coll["rank"].to_numpy(), coll["start_ns"].to_numpy())
    ce = model.correct(coll["rank"].to_numpy(), coll["end_ns"].to_numpy())
    ss = model.correct(pairs["src_rank"].to_numpy(), pairs["send_start_ns"].to_numpy())
    re = model.correct(pairs["dst_rank"].to_numpy(), pairs["recv_end_ns"].to_numpy())
    return cs, ce, ss, re


def _coll_latest_start(coll: pl.DataFrame, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the latest corrected start of its instance and the rank that had it."""
    if coll.is_empty():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    df = coll.select("key", "instance", "rank").with_columns(pl.Series("cs", cs))
    top = df.sort("cs", descending=True).group_by("key", "instance", maintain_order=True).agg(
        pl.col("cs").first().alias("mx"), pl.col("rank").first().alias("who"))
    j = df.join(top, on=["key", "instance"], how="left", maintain_order="left")
    return j["mx"].to_numpy(), j["who"].to_numpy()


def count_violations(coll: pl.DataFrame, pairs: pl.DataFrame, model: ClockModel) -> dict[int, int]:
    """Causality violations per rank under ``model`` (integer-ns corrected times).

    A receive ending before its send starts counts for the receiving rank; a
    collective participation ending before the latest start of its instance
    counts for the participant that ended early.
    """
    cs, ce, ss, re = _corrected_anchor_times(coll, pairs, model)
    out: dict[int, int] = defaultdict(int)
    if pairs.height:
        bad = re < ss
        for r in pairs["dst_rank"].to_numpy()[bad].tolist():
            out[int(r)] += 1
    if coll.height:
        mx, _ = _coll_latest_start(coll, cs)
        for r in coll["rank"].to_numpy()[ce < mx].tolist():
            out[int(r)] += 1
    return dict(out)


def _repair(model: ClockModel, coll: pl.DataFrame, pairs: pl.DataFrame, connected: list[int],
            ref: int, drift: bool, max_rounds: int = 300) -> ClockModel:
    """Least-change projection of the clock parameters until no anchor is violated.

    Constraint per message: c_dst(recv_end) - c_src(send_start) <= recv_end - send_start;
    per collective row: c_r(end_r) - c_s(start_s) <= end_r - start_s for the latest
    starter s. Parameters are (offset at t=0, drift ns per ns) of non-reference ranks.
    """
    off = dict(model.offset_ns)
    dr = {r: model.drift_ppm.get(r, 0.0) * 1e-6 for r in model.offset_ns}
    cset = set(connected)
    for _ in range(max_rounds):
        cur = ClockModel(off, {r: v * 1e6 for r, v in dr.items()}, ref)
        cs, ce, ss, re = _corrected_anchor_times(coll, pairs, cur)
        # (late rank, its raw end, early rank, its raw start, slack)
        cons: list[tuple[int, float, int, float, float]] = []
        if pairs.height:
            slack = (re - ss).astype(np.float64)
            bad = np.flatnonzero(slack < _REPAIR_MARGIN_NS)
            d, s = pairs["dst_rank"].to_numpy(), pairs["src_rank"].to_numpy()
            te, tsd = pairs["recv_end_ns"].to_numpy(), pairs["send_start_ns"].to_numpy()
            cons += [(int(d[i]), float(te[i]), int(s[i]), float(tsd[i]), float(slack[i]))
                     for i in bad]
        if coll.height:
            mx, who = _coll_latest_start(coll, cs)
            slack = (ce - mx).astype(np.float64)
            bad = np.flatnonzero(slack < _REPAIR_MARGIN_NS)
            rk = coll["rank"].to_numpy()
            te = coll["end_ns"].to_numpy()
            start_of = {(k, i, r): t for k, i, r, t in coll.select(
                "key", "instance", "rank", "start_ns").rows()}
            keys = coll.select("key", "instance").rows()
            for i in bad:
                if int(who[i]) == int(rk[i]):
                    continue
                k, inst = keys[i]
                cons.append((int(rk[i]), float(te[i]), int(who[i]),
                             float(start_of[(k, inst, int(who[i]))]), float(slack[i])))
        cons = [c for c in cons if c[0] in cset and c[2] in cset]
        if not cons:
            break
        cons.sort(key=lambda c: c[4])
        for late, t_l, early, t_e, _ in cons[:5000]:
            # value a.theta = c_late(t_l) - c_early(t_e); must be <= t_l - t_e - margin
            val = (off[late] + dr[late] * t_l) - (off[early] + dr[early] * t_e)
            excess = val - (t_l - t_e - _REPAIR_MARGIN_NS - 0.5)
            if excess <= 0:
                continue
            grads: dict[tuple[str, int], float] = {}
            for r, sign, t in ((late, 1.0, t_l), (early, -1.0, t_e)):
                if r == ref:
                    continue
                grads[("o", r)] = grads.get(("o", r), 0.0) + sign
                if drift:
                    grads[("d", r)] = grads.get(("d", r), 0.0) + sign * t * 1e-9
            norm = sum(v * v for v in grads.values())
            if norm == 0:
                continue
            step = excess / norm
            for (kind, r), g in grads.items():
                if kind == "o":
                    off[r] -= step * g
                else:
                    dr[r] -= step * g * 1e-9
    return ClockModel(off, {r: v * 1e6 for r, v in dr.items()}, ref)


# --------------------------------------------------------------------------- frames


def correct_frames(frames: TraceFrames, model: ClockModel) -> TraceFrames:
    """A new TraceFrames with every rank's times on the reference clock.

    Both ends of every interval are corrected (``ts' = ts - c(ts)``, ``end' =
    end - c(end)``, ``dur' = end' - ts'``), in activities, cpu_ops, annotations,
    comm_meta, warp_events and counters. ``meta["clock_model"]`` records the
    model (rank -> offset_ns, drift_ppm). The input frames are not modified.
    """
    if model.is_identity:
        return replace(frames, meta={**frames.meta, "clock_model": _model_meta(model)})

    def fix(df: pl.DataFrame, has_dur: bool = True) -> pl.DataFrame:
        if df.is_empty() or "rank" not in df.columns:
            return df
        r, ts = pl.col("rank"), pl.col("ts_ns")
        new_ts = ts - model.correction_ns(r, ts)
        if not has_dur or "dur_ns" not in df.columns:
            return df.with_columns(new_ts.alias("ts_ns"))
        end = ts + pl.col("dur_ns")
        new_end = end - model.correction_ns(r, end)
        return df.with_columns(new_ts.alias("ts_ns"), (new_end - new_ts).alias("dur_ns"))

    return replace(
        frames,
        activities=fix(frames.activities),
        cpu_ops=fix(frames.cpu_ops),
        annotations=fix(frames.annotations),
        comm_meta=fix(frames.comm_meta),
        warp_events=fix(frames.warp_events),
        counters=fix(frames.counters, has_dur=False),
        meta={**frames.meta, "clock_model": _model_meta(model)},
    )


def _model_meta(model: ClockModel) -> dict[str, Any]:
    return {"reference": model.reference,
            "ranks": {str(r): {"offset_ns": model.offset_ns[r],
                               "drift_ppm": model.drift_ppm.get(r, 0.0)}
                      for r in model.offset_ns}}


def aligned_frames(
    frames: TraceFrames, align: str = "auto"
) -> tuple[TraceFrames, SkewResult | None]:
    """``frames`` on the corrected axis when ``align`` asks for it and anchors exist.

    ``align``: "none" returns the frames unchanged; "auto" corrects when the run
    has several ranks, cross-rank anchors and :func:`needs_correction`; "on"
    corrects whenever anchors exist. Returns (frames, skew result or None).
    """
    if align == "none" or frames.ranks.height < 2:
        return frames, None
    res = estimate_skew(frames)
    if not res.has_anchors:
        return frames, res
    if align == "auto" and not needs_correction(res):
        return frames, res
    return correct_frames(frames, res.model), res


def needs_correction(res: SkewResult) -> bool:
    """True when the raw times violate causality or some offset is significant.

    Significant: larger than 3 x its uncertainty and than 1 µs. Otherwise (ranks
    on one host, weak anchors) the raw axis is kept: a correction would only add
    estimation noise.
    """
    t = res.table
    if t.is_empty():
        return False
    if int(t["violations_before"].sum()) > 0:
        return True
    sig = t.filter(pl.col("offset_ns").abs() > pl.max_horizontal(
        3 * pl.col("uncertainty_ns").fill_null(0), pl.lit(1000.0)))
    return sig.height > 0


def skew_table(frames: TraceFrames) -> pl.DataFrame | str:
    """The ``skew`` table of a run, or why it does not apply."""
    if frames.ranks.height < 2:
        return "a single rank: there is no clock skew to estimate"
    res = estimate_skew(frames)
    if not res.has_anchors:
        return ("no cross-rank anchors (synchronising collectives or matched send/recv "
                "pairs) to estimate clock skew from")
    return res.table


def manifest_injection(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Injected faults declared in a run.json manifest (``manifest["inject"]``), or {}.

    Expected keys (all optional)::

        {"delay": {"rank": 5, "phase": "attn(F)", "ms": 20},
         "clock": {"<rank>": {"offset_ns": 1500000, "drift_ppm": 10.0}, ...}}
    """
    inj = (manifest or {}).get("inject") or {}
    if isinstance(inj, str):
        try:
            inj = json.loads(inj)
        except ValueError:
            return {}
    return inj if isinstance(inj, dict) else {}
