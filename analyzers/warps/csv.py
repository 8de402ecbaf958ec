"""Read the H200 per-warp CSV fixtures into ``WARP_EVENTS_SCHEMA``.

The H200 measurement's kernel (copied with provenance to ``sample_traces/h200/``,
see its PROVENANCE.md) writes one row per work or wait interval:
``role, warp, channel, smid, kind, chunk, node, gpu, t0_ns, t1_ns, bytes`` with
role 0 sender, 1 coordinator, 2 forwarder, 3 receiver and kind 0 work, 1 wait.

What the CSV does not say, and how it is inferred here:

* **Wait reason.** ``kind`` only says "wait". The reason follows from what each
  role can block on in that kernel: senders block on ring *space*
  (``wait_remote_head``), the coordinator on sender completion (``wait_tail``),
  receivers on data (``wait_tail``). Forwarders block on two things, and the
  ``gpu`` column tells them apart: a wait with ``gpu = -1`` precedes reading a
  source node's RDMA ring (data: ``wait_tail``), a wait with ``gpu >= 0``
  precedes writing that GPU's NVL ring (space: ``wait_remote_head``). The data
  confirm it: with one receiver warp (M4_NS1_NR1) forwarders spend 58 % of their
  lifetime in ``gpu >= 0`` waits, with eight (varsm) 0.5 %.
* **Short waits.** Waits shorter than 200 ns were not recorded; such gaps stay
  gaps (no event). The analyzer reports them as ``unrecorded`` time, neither busy
  nor waiting (about 1 % of warp lifetime in every fixture).
* **Links.** ``bytes`` are IB bytes for senders (0 for node 0, the source's own
  node: ``link = "local"``), NVLink bytes for forwarders and local HBM bytes for
  receivers; waits and the coordinator move nothing (``link`` null).
* **Times** are ``%globaltimer`` ns; they are shifted so the earliest event starts
  at 0 (int64 arithmetic, so every nanosecond is kept).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.frames import WARP_EVENTS_SCHEMA

#: Fixture role id -> role name used by overlapscope's ``warp_role`` events.
FIXTURE_ROLES: dict[int, str] = {
    0: "rdma_sender",
    1: "sender_coordinator",
    2: "forwarder",
    3: "nvl_receiver",
}

#: Columns the fixture CSV must have.
FIXTURE_COLUMNS: tuple[str, ...] = (
    "role", "warp", "channel", "smid", "kind", "chunk", "node", "gpu", "t0_ns", "t1_ns", "bytes",
)

#: Extra columns kept with ``keep_peers=True`` (-1 in the CSV becomes null).
PEER_SCHEMA: dict[str, pl.DataType] = {"node": pl.Int32, "gpu": pl.Int32}


def _state_expr() -> pl.Expr:
    """Wait reason inferred from role (and, for forwarders, from the ``gpu`` column)."""
    role, gpu = pl.col("role"), pl.col("gpu")
    return (
        pl.when(pl.col("kind") == 0).then(pl.lit("busy"))
        .when(role == 0).then(pl.lit("wait_remote_head"))
        .when((role == 2) & (gpu >= 0)).then(pl.lit("wait_remote_head"))
        .otherwise(pl.lit("wait_tail"))
    )


def _link_expr() -> pl.Expr:
    """Link class of a work interval; null for waits and for the coordinator."""
    role = pl.col("role")
    return (
        pl.when(pl.col("kind") != 0).then(pl.lit(None, dtype=pl.Utf8))
        .when((role == 0) & (pl.col("node") == 0)).then(pl.lit("local"))
        .when(role == 0).then(pl.lit("ib"))
        .when(role == 2).then(pl.lit("nvl"))
        .when(role == 3).then(pl.lit("local"))
        .otherwise(pl.lit(None, dtype=pl.Utf8))
    )


def read_warp_csv(path: str | Path, *, rank: int = 0, keep_peers: bool = False) -> pl.DataFrame:
    """Read one fixture ``warp_events_*.csv.gz`` (or plain ``.csv``) as warp events.

    Returns a frame with exactly ``WARP_EVENTS_SCHEMA`` (times in ns from the
    earliest event of the file), plus ``node``/``gpu`` (Int32, null for -1) when
    ``keep_peers`` is true. Rows are sorted by (channel, warp, ts_ns).

    Raises ``TraceError(path, reason)`` for a missing file, missing columns,
    unknown role ids or kinds, and intervals that end before they start.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "file not found")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            raw = pl.read_csv(fh.read(), infer_schema_length=0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise TraceError(path, f"not a readable CSV ({exc.__class__.__name__})") from exc
    missing = [c for c in FIXTURE_COLUMNS if c not in raw.columns]
    if missing:
        raise TraceError(path, f"missing column(s) {', '.join(missing)}; expected "
                         f"{', '.join(FIXTURE_COLUMNS)}")
    try:
        df = raw.select(pl.col(c).cast(pl.Int64) for c in FIXTURE_COLUMNS)
    except pl.exceptions.PolarsError as exc:
        raise TraceError(path, "a column that must hold integers has other values") from exc
    if df.select(pl.all().is_null().any()).row(0) != (False,) * len(FIXTURE_COLUMNS):
        raise TraceError(path, "empty cells in the warp-event CSV")
    bad_roles = sorted(set(df["role"].unique().to_list()) - set(FIXTURE_ROLES))
    if bad_roles:
        raise TraceError(path, f"unknown role id(s) {bad_roles}; expected 0-3")
    bad_kinds = sorted(set(df["kind"].unique().to_list()) - {0, 1})
    if bad_kinds:
        raise TraceError(path, f"unknown kind(s) {bad_kinds}; expected 0 (work) or 1 (wait)")
    n_neg = df.filter(pl.col("t1_ns") < pl.col("t0_ns")).height
    if n_neg:
        raise TraceError(path, f"{n_neg} interval(s) end before they start (t1_ns < t0_ns)")

    origin = df["t0_ns"].min() if df.height else 0
    out = df.with_columns(
        rank=pl.lit(rank),
        sm=pl.col("smid"),
        role=pl.col("role").replace_strict(FIXTURE_ROLES, return_dtype=pl.Utf8),
        state=_state_expr(),
        link=_link_expr(),
        ts_ns=pl.col("t0_ns") - origin,
        dur_ns=pl.col("t1_ns") - pl.col("t0_ns"),
        node=pl.when(pl.col("node") >= 0).then(pl.col("node")),
        gpu=pl.when(pl.col("gpu") >= 0).then(pl.col("gpu")),
    )
    cols = [pl.col(c).cast(t) for c, t in WARP_EVENTS_SCHEMA.items()]
    if keep_peers:
        cols += [pl.col(c).cast(t) for c, t in PEER_SCHEMA.items()]
    return out.select(cols).sort("channel", "warp", "ts_ns")
