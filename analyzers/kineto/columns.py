"""Decoded Kineto events -> the polars frames of TraceFrames (rank filled in later).

Every per-event Python step is a C-level ``map(attrgetter(...))`` over the
event list or a numpy fancy-index of an object array; grouping, lower-casing
and id conversion happen in polars. This keeps column building close to the
cost of decoding itself on multi-million-event traces.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import polars as pl

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.classify import DEFAULT_HOST_COMM_PATTERN
from overlapscope.analyzers.kineto.schema import EventArgs, TraceEvent

GPU_CATS = ["kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset", "cuda_kernel"]
ANNOTATION_CATS = ["user_annotation", "gpu_user_annotation"]
SKIP_X_CATS = ["trace", "overhead"]
#: Host comm ops whose arguments (peers, tags, sizes) are kept: the host comm rules
#: of classify_rules.toml, the one place that defines them.
COMM_OP_PATTERN = DEFAULT_HOST_COMM_PATTERN
_EMPTY_ARGS = EventArgs()


def _ids_as_text(values: list[Any]) -> pl.Series:
    """pid/tid values (ints, or labels like "Spans") as strings."""
    distinct = set(values)
    if all(type(v) is int for v in distinct if v is not None):
        try:
            return pl.Series(values, dtype=pl.Int64).cast(pl.Utf8)
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            pass
    # A handful of distinct ids: convert each once, not once per event.
    text = {v: None if v is None else str(v) for v in distinct}
    return pl.Series(list(map(text.__getitem__, values)), dtype=pl.Utf8)


def _ints(values: list[Any]) -> pl.Series:
    try:
        return pl.Series(values, dtype=pl.Int64)
    except (TypeError, OverflowError, pl.exceptions.PolarsError):
        return pl.Series(values, dtype=pl.Int64, strict=False)


def _texts(values: list[Any]) -> pl.Series:
    return pl.Series(values, dtype=pl.Utf8, strict=False)


class EventColumns:
    """Columns shared by all groups, plus per-group access to ``args``.

    Only ``ph``, ``cat`` and ``name`` are read for every event; pid, tid and the
    args of a group are pulled out once per group (:meth:`group`) and shared by
    every column built from it.
    """

    def __init__(
        self,
        events: list[TraceEvent],
        ts_ns: np.ndarray,
        dur_ns: np.ndarray,
        dur_missing: np.ndarray | None = None,
    ) -> None:
        n = len(events)
        self.ts_ns, self.dur_ns = ts_ns, dur_ns
        self.dur_missing = np.zeros(n, dtype=bool) if dur_missing is None else dur_missing
        self.ph = pl.Series(list(map(attrgetter("ph"), events)), dtype=pl.Utf8)
        self.cat = pl.Series(list(map(attrgetter("cat"), events)), dtype=pl.Utf8)
        self.cat_lower = self.cat.str.to_lowercase()
        self.name = pl.Series(list(map(attrgetter("name"), events)), dtype=pl.Utf8)
        # fromiter: several times faster than filling an empty object array by slice.
        self.events = np.fromiter(events, dtype=object, count=n)
        self._groups: dict[int, _Group] = {}

    def groups(self) -> dict[str, np.ndarray]:
        """Row indices of each event group."""
        df = pl.DataFrame({"ph": self.ph, "cat": self.cat_lower}).with_row_index("i")
        group = (
            pl.when(pl.col("ph") == "C")
            .then(pl.lit("counter"))
            .when(pl.col("ph") != "X")
            .then(pl.lit("other"))
            .when(pl.col("cat").is_in(GPU_CATS))
            .then(pl.lit("gpu"))
            .when(pl.col("cat").is_in(ANNOTATION_CATS))
            .then(pl.lit("annotation"))
            .when(pl.col("cat") == "warp_role")
            .then(pl.lit("warp"))
            .when(pl.col("cat") == "comm_traffic")
            .then(pl.lit("traffic"))
            .when(pl.col("cat").is_in(SKIP_X_CATS))
            .then(pl.lit("other"))
            .otherwise(pl.lit("host"))
        )
        out = df.select("i", group.alias("g")).group_by("g").agg(pl.col("i"))
        return {g: np.asarray(i, dtype=np.int64) for g, i in out.iter_rows()}

    def group(self, idx: np.ndarray) -> _Group:
        """The events at ``idx`` with their pid, tid and args (extracted once)."""
        key = id(idx)
        hit = self._groups.get(key)
        if hit is None or hit.idx is not idx:
            hit = self._groups[key] = _Group(idx, self.events[idx].tolist())
        return hit

    def arg(self, idx: np.ndarray, field: str) -> list[Any]:
        return self.group(idx).arg(field)

    def ids(self, raw: str, idx: np.ndarray) -> pl.Series:
        g = self.group(idx)
        return _ids_as_text(g.pid if raw == "pid" else g.tid)

    def common(self, idx: np.ndarray) -> dict[str, Any]:
        pl_idx = pl.Series(idx, dtype=pl.Int64)
        return {
            "name": self.name.gather(pl_idx),
            "cat": self.cat_lower.gather(pl_idx),
            "ts_ns": self.ts_ns[idx],
            "dur_ns": self.dur_ns[idx],
        }


class _Group:
    """One group's events; pid, tid, args and each args field pulled out on first use."""

    def __init__(self, idx: np.ndarray, events: list[Any]) -> None:
        self.idx = idx
        self.events = events
        self._cache: dict[str, list[Any]] = {}

    def _field(self, name: str) -> list[Any]:
        got = self._cache.get(name)
        if got is None:
            got = self._cache[name] = list(map(attrgetter(name), self.events))
        return got

    @property
    def pid(self) -> list[Any]:
        return self._field("pid")

    @property
    def tid(self) -> list[Any]:
        return self._field("tid")

    @property
    def args(self) -> list[Any]:
        got = self._cache.get("\0args")
        if got is None:
            got = list(map(attrgetter("args"), self.events))
            if None in got:
                got = [a if a is not None else _EMPTY_ARGS for a in got]
            self._cache["\0args"] = got
        return got

    def arg(self, field: str) -> list[Any]:
        key = "args." + field
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = list(map(attrgetter(field), self.args))
        return got


def _null_rank(n: int) -> pl.Series:
    return pl.Series("rank", [None] * n, dtype=pl.Int32)


def _dim(lists: list[list[Any] | None], i: int) -> pl.Series:
    return _ints([v[i] if v and len(v) > i else None for v in lists])


def _prefer(primary: list[Any], fallback: list[Any]) -> list[Any]:
    return [p if p is not None else f for p, f in zip(primary, fallback, strict=True)]


def gpu_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    grid, block = c.arg(idx, "grid"), c.arg(idx, "block")
    pid = c.group(idx).pid
    tid = c.group(idx).tid
    cols = {
        "rank": _null_rank(idx.size),
        "device": _ints(_prefer(c.arg(idx, "device"), pid)).cast(pl.Int32, strict=False),
        "stream": _ints(_prefer(c.arg(idx, "stream"), tid)),
        **c.common(idx),
        "correlation": _ints(c.arg(idx, "correlation")),
        "external_id": _ints(c.arg(idx, "external_id")),
        "grid_x": _dim(grid, 0),
        "grid_y": _dim(grid, 1),
        "grid_z": _dim(grid, 2),
        "block_x": _dim(block, 0),
        "block_y": _dim(block, 1),
        "block_z": _dim(block, 2),
        "bytes": _ints(c.arg(idx, "bytes")),
    }
    # A GPU activity written without "dur" keeps a null duration so that the run
    # can count it (load.py: meta["events_without_dur"]) before treating it as 0.
    missing = c.dur_missing[idx]
    if missing.any():
        cols["dur_ns"] = pl.Series(c.dur_ns[idx]).scatter(np.flatnonzero(missing), None)
    return pl.DataFrame(cols, schema=F.ACTIVITIES_SCHEMA, strict=False)


def _raw_text(values: list[msgspec.Raw | None]) -> list[str | None]:
    return [bytes(v).decode("utf-8", "replace") if v else None for v in values]


def host_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    common = c.common(idx)
    # Inputs matter only for communication ops (peers, tags, sizes): skip the rest.
    comm_pos = np.flatnonzero(common["name"].str.contains(COMM_OP_PATTERN).fill_null(False))
    inputs: list[str | None] = [None] * idx.size
    dims: list[str | None] = [None] * idx.size
    if comm_pos.size:
        sel = idx[comm_pos]
        for pos, text in zip(
            comm_pos.tolist(), _raw_text(c.arg(sel, "concrete_inputs")), strict=True
        ):
            inputs[pos] = text
        for pos, text in zip(comm_pos.tolist(), _raw_text(c.arg(sel, "input_dims")), strict=True):
            dims[pos] = text
    cols = {
        "rank": _null_rank(idx.size),
        "pid": c.ids("pid", idx),
        "tid": c.ids("tid", idx),
        **common,
        "correlation": _ints(c.arg(idx, "correlation")),
        "external_id": _ints(c.arg(idx, "external_id")),
        "inputs": _texts(inputs),
        "input_dims": _texts(dims),
    }
    return pl.DataFrame(cols, schema=F.CPU_OPS_SCHEMA, strict=False)


def comm_meta_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    """NCCL record_param_comms ops and overlapscope comm_traffic events."""
    collective = _prefer(c.arg(idx, "collective"), c.arg(idx, "collective_name"))
    dst = [None if d is None else [int(b) for b in d] for d in c.arg(idx, "dst_bytes")]
    common = c.common(idx)
    cols = {
        "rank": _null_rank(idx.size),
        "tid": c.ids("tid", idx),
        "name": common["name"],
        "ts_ns": common["ts_ns"],
        "dur_ns": common["dur_ns"],
        "collective": _texts(collective),
        "dtype": _texts(c.arg(idx, "dtype")),
        "in_nelems": _ints(c.arg(idx, "in_nelems")),
        "out_nelems": _ints(c.arg(idx, "out_nelems")),
        "group_size": _ints(c.arg(idx, "group_size")),
        "pg_name": _ids_as_text(c.arg(idx, "pg_name")),
        "phase": _texts(c.arg(idx, "phase")),
        "dst_bytes": pl.Series(dst, dtype=pl.List(pl.Int64)),
    }
    return pl.DataFrame(cols, schema=F.COMM_META_SCHEMA, strict=False)


def annotation_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    common = c.common(idx)
    on_gpu = common["cat"] == "gpu_user_annotation"
    pid = c.group(idx).pid
    tid = c.group(idx).tid
    device = _ints(_prefer(c.arg(idx, "device"), pid)).cast(pl.Int32, strict=False)
    stream = _ints(_prefer(c.arg(idx, "stream"), tid))
    cols = {
        "rank": _null_rank(idx.size),
        "pid": _ids_as_text(pid),
        "tid": _ids_as_text(tid),
        "name": common["name"],
        "ts_ns": common["ts_ns"],
        "dur_ns": common["dur_ns"],
        "external_id": _ints(c.arg(idx, "external_id")),
        "on_gpu": on_gpu,
        "device": pl.select(pl.when(on_gpu).then(device)).to_series(),
        "stream": pl.select(pl.when(on_gpu).then(stream)).to_series(),
    }
    return pl.DataFrame(cols, schema=F.ANNOTATIONS_SCHEMA, strict=False)


def warp_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    def i32(field: str) -> pl.Series:
        return _ints(c.arg(idx, field)).cast(pl.Int32, strict=False)

    common = c.common(idx)
    cols = {
        "rank": i32("rank"),
        "channel": i32("channel"),
        "warp": i32("warp"),
        "sm": i32("sm"),
        "role": _texts(c.arg(idx, "role")),
        "state": _texts(c.arg(idx, "state")),
        "chunk": _ints(c.arg(idx, "chunk")),
        "bytes": _ints(c.arg(idx, "bytes")),
        "link": _texts(c.arg(idx, "link")),
        "ts_ns": common["ts_ns"],
        "dur_ns": common["dur_ns"],
    }
    return pl.DataFrame(cols, schema=F.WARP_EVENTS_SCHEMA, strict=False)


def counter_frame(c: EventColumns, idx: np.ndarray) -> pl.DataFrame:
    # Known series only: msgspec keeps declared keys of args (occupancy for our rings).
    occ = c.arg(idx, "occupancy")
    keep = np.asarray([o is not None for o in occ], dtype=bool)
    sel = idx[keep] if idx.size else idx
    common = c.common(sel)
    cols = {
        "rank": _null_rank(sel.size),
        "pid": c.ids("pid", sel),
        "name": common["name"],
        "series": ["occupancy"] * sel.size,
        "ts_ns": common["ts_ns"],
        "value": pl.Series([o for o in occ if o is not None], dtype=pl.Float64),
    }
    return pl.DataFrame(cols, schema=F.COUNTERS_SCHEMA, strict=False)


#: Frames of :func:`build_frame_parts`: the TraceFrames groups, with comm_meta in its two
#: halves (NCCL ``record_param_comms`` ops, then overlapscope ``comm_traffic`` events).
PART_NAMES = (
    "activities", "cpu_ops", "annotations", "comm_meta_rpc", "comm_meta_traffic",
    "warp_events", "counters",
)


def build_frame_parts(
    events: list[TraceEvent],
    ts_ns: np.ndarray,
    dur_ns: np.ndarray,
    dur_missing: np.ndarray | None = None,
) -> dict[str, pl.DataFrame]:
    """The frames of :data:`PART_NAMES` for one batch of events.

    Concatenating the parts of consecutive batches of a file (each part name in
    batch order) gives exactly :func:`build_frames` of the whole file.
    """
    c = EventColumns(events, ts_ns, dur_ns, dur_missing)
    groups = c.groups()
    none = np.empty(0, dtype=np.int64)
    host = groups.get("host", none)
    is_rpc = (c.name.gather(pl.Series(host, dtype=pl.Int64)) == "record_param_comms").to_numpy()
    rpc = host[is_rpc.astype(bool)] if host.size else none
    return {
        "activities": gpu_frame(c, groups.get("gpu", none)),
        "cpu_ops": host_frame(c, host),
        "annotations": annotation_frame(c, groups.get("annotation", none)),
        "comm_meta_rpc": comm_meta_frame(c, rpc),
        "comm_meta_traffic": comm_meta_frame(c, groups.get("traffic", none)),
        "warp_events": warp_frame(c, groups.get("warp", none)),
        "counters": counter_frame(c, groups.get("counter", none)),
    }


def merge_parts(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """TraceFrames groups of a file from the parts of its consecutive event batches."""

    def cat(frames: list[pl.DataFrame]) -> pl.DataFrame:
        frames = [f for f in frames if f.height] or frames[:1]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=True)

    out = {
        name: cat([p[name] for p in parts])
        for name in PART_NAMES
        if not name.startswith("comm_meta")
    }
    out["comm_meta"] = cat(
        [p["comm_meta_rpc"] for p in parts] + [p["comm_meta_traffic"] for p in parts]
    )
    return out


def build_frames(
    events: list[TraceEvent],
    ts_ns: np.ndarray,
    dur_ns: np.ndarray,
    dur_missing: np.ndarray | None = None,
) -> dict[str, pl.DataFrame]:
    """All TraceFrames groups of one file's events (``dur_missing``: events without
    a ``dur``; GPU activities among them get a null ``dur_ns``)."""
    return merge_parts([build_frame_parts(events, ts_ns, dur_ns, dur_missing)])
