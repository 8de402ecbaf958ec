"""Decode one Kineto trace file into per-file polars frames (absolute ns times).

The fast path decodes straight into the msgspec types of kineto_schema.py and
builds columns group by group (GPU activities, host ops, annotations, ...). A
file whose events do not fit those types is decoded generically and converted
event by event, so one odd event never costs the rest of the file.
"""

from __future__ import annotations

import gc
import gzip
import re
import zlib
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.kineto_schema import EventArgs, KinetoTrace, TraceEvent
from overlapscope.analyzers.timeconv import decimal_text_us_to_ns, needs_text_path, us_to_ns

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset", "cuda_kernel"}
ANNOTATION_CATS = {"user_annotation", "gpu_user_annotation"}
SKIP_X_CATS = {"trace", "overhead"}
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)
_EMPTY_ARGS = EventArgs()
_COMM_OP = re.compile(r"c10d::|gloo:|record_param_comms|nccl:")
_DECODER = msgspec.json.Decoder(KinetoTrace, strict=False)


class _TimesOnly(msgspec.Struct):
    ts: msgspec.Raw = msgspec.Raw()
    dur: msgspec.Raw = msgspec.Raw()


class _TraceTimes(msgspec.Struct):
    traceEvents: list[_TimesOnly] = []  # noqa: N815, RUF012


@dataclass
class FileFrames:
    """Frames of one trace file before run assembly; times are absolute ns."""

    path: str
    rank: int | None
    world_size: int | None
    backend: str | None
    num_sms: int | None
    device_name: str | None
    n_events: int
    base_time_ns: int
    activities: pl.DataFrame
    cpu_ops: pl.DataFrame
    annotations: pl.DataFrame
    comm_meta: pl.DataFrame
    warp_events: pl.DataFrame
    counters: pl.DataFrame
    overlapscope: dict[str, Any] = field(default_factory=dict)
    skipped_events: int = 0

    FRAME_NAMES = ("activities", "cpu_ops", "annotations", "comm_meta", "warp_events", "counters")


def read_bytes(path: Path) -> bytes:
    """The trace's JSON text; gunzips ``.gz`` files (detected by magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(path, f"cannot read file: {exc.strerror or exc}") from None
    if not raw:
        raise TraceError(path, "file is empty")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise TraceError(path, "gzip stream is truncated (file cut short?)") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise TraceError(path, f"corrupt gzip data: {exc}") from None
        if not raw.strip():
            raise TraceError(path, "file is empty (gzip of nothing)")
    elif path.suffix == ".gz":
        raise TraceError(path, "named .gz but is not gzip data")
    return raw


def decode_file(path: Path) -> FileFrames:
    """Parse one Kineto trace into FileFrames; raises TraceError on bad input."""
    # Millions of short-lived objects: cycle collection passes would only cost time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _decode_file(path)
    finally:
        if was_enabled:
            gc.enable()


def _decode_file(path: Path) -> FileFrames:
    raw = read_bytes(path)
    trace, skipped = _decode_trace(path, raw)
    events = trace.traceEvents or []
    ts_ns, dur_ns = _times_ns(raw, events)
    dist = trace.distributedInfo
    rank = dist.rank if dist and dist.rank is not None else None
    props = trace.deviceProperties or []
    num_sms = next((p.numSms for p in props if p.numSms), None)
    dev_name = next((p.name for p in props if p.name), None)
    base = int(trace.baseTimeNanoseconds or 0)
    built = _build_frames(events, ts_ns + base, dur_ns)
    return FileFrames(
        path=str(path),
        rank=rank,
        world_size=dist.world_size if dist else None,
        backend=dist.backend if dist else None,
        num_sms=num_sms,
        device_name=dev_name,
        n_events=len(events),
        base_time_ns=base,
        overlapscope=trace.overlapscope or {},
        skipped_events=skipped,
        **built,
    )


def _decode_trace(path: Path, raw: bytes) -> tuple[KinetoTrace, int]:
    try:
        trace = _DECODER.decode(raw)
    except msgspec.ValidationError:
        return _decode_generic(path, raw)
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"not valid JSON ({_json_problem(exc)})") from None
    if trace.traceEvents is None:
        _check_top_level(path, raw)
        raise TraceError(path, "no 'traceEvents' list: not a Kineto/Chrome trace")
    return trace, 0


def _json_problem(exc: Exception) -> str:
    msg = str(exc)
    if "truncated" in msg:
        return "the JSON text ends early: file truncated?"
    return msg


def _check_top_level(path: Path, raw: bytes) -> None:
    top = msgspec.json.decode(raw)
    if not isinstance(top, dict):
        raise TraceError(
            path, f"top level is a JSON {type(top).__name__}, expected an object with 'traceEvents'"
        )


def _decode_generic(path: Path, raw: bytes) -> tuple[KinetoTrace, int]:
    """Slow path: generic decode, then convert event by event, counting misfits."""
    try:
        top = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"not valid JSON ({_json_problem(exc)})") from None
    if not isinstance(top, dict):
        raise TraceError(
            path, f"top level is a JSON {type(top).__name__}, expected an object with 'traceEvents'"
        )
    events = top.get("traceEvents")
    if events is None:
        raise TraceError(path, "no 'traceEvents' list: not a Kineto/Chrome trace")
    if not isinstance(events, list):
        raise TraceError(path, f"'traceEvents' is a {type(events).__name__}, expected a list")
    good: list[TraceEvent] = []
    skipped = 0
    for ev in events:
        converted = _convert_event(ev)
        if converted is None:
            skipped += 1
        else:
            good.append(converted)
    if events and not good:
        raise TraceError(path, "no element of 'traceEvents' is a trace event object")
    rest = {k: v for k, v in top.items() if k != "traceEvents"}
    try:
        trace = msgspec.convert(rest, KinetoTrace, strict=False)
    except msgspec.ValidationError:
        trace = KinetoTrace()
    trace.traceEvents = good
    return trace, skipped


_RAW_ARGS = ("Concrete Inputs", "Input Dims")


def _convert_event(ev: Any) -> TraceEvent | None:
    """One generic event -> TraceEvent; drops only its args if they alone misfit."""
    if not isinstance(ev, dict):
        return None
    args = ev.get("args")
    if isinstance(args, dict) and any(k in args for k in _RAW_ARGS):
        args = dict(args)
        for key in _RAW_ARGS:
            if key in args:
                args[key] = msgspec.Raw(msgspec.json.encode(args[key]))
        ev = {**ev, "args": args}
    try:
        return msgspec.convert(ev, TraceEvent, strict=False)
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.convert(
            {k: v for k, v in ev.items() if k != "args"}, TraceEvent, strict=False
        )
    except msgspec.ValidationError:
        return None


def _times_ns(raw: bytes, events: list[TraceEvent]) -> tuple[np.ndarray, np.ndarray]:
    """Absolute-to-base ns of every event's ts and dur (dur null -> 0)."""
    ts = pl.Series(list(map(attrgetter("ts"), events)), dtype=pl.Float64, strict=False)
    dur = pl.Series(list(map(attrgetter("dur"), events)), dtype=pl.Float64, strict=False)
    ts_np = ts.fill_null(0.0).to_numpy()
    dur_np = dur.fill_null(0.0).to_numpy()
    if not needs_text_path(ts_np) and not needs_text_path(dur_np):
        return us_to_ns(ts_np), us_to_ns(dur_np)
    # Epoch-scale microseconds: float64 lost the nanoseconds, read them from the text.
    try:
        times = msgspec.json.decode(raw, type=_TraceTimes).traceEvents
    except msgspec.MsgspecError:
        return us_to_ns(ts_np), us_to_ns(dur_np)
    if len(times) != len(events):  # generic path dropped events; keep float precision
        return us_to_ns(ts_np), us_to_ns(dur_np)
    # Strings of digits ("ts": "123.5") are read like numbers; null/empty counts as 0.
    ts_txt = pl.Series([bytes(t.ts).decode().strip('"') if t.ts else "0" for t in times])
    dur_txt = pl.Series([bytes(t.dur).decode().strip('"') if t.dur else "0" for t in times])
    return (
        decimal_text_us_to_ns(ts_txt).fill_null(0).to_numpy(),
        decimal_text_us_to_ns(dur_txt).fill_null(0).to_numpy(),
    )


def rank_from_name(path: Path) -> int | None:
    """The rank a file name states (``rank-3``, ``rank3``, ``rank_3``), if any."""
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


def _as_int(values: list[Any]) -> pl.Series:
    return pl.Series(values, dtype=pl.Int64, strict=False)


def _as_str(values: list[Any]) -> list[str | None]:
    return [None if v is None else str(v) for v in values]


def _build_frames(
    events: list[TraceEvent], ts_ns: np.ndarray, dur_ns: np.ndarray
) -> dict[str, pl.DataFrame]:
    """Split events into the TraceFrames groups (rank column filled in later)."""
    ph = list(map(attrgetter("ph"), events))
    cat = [c.lower() for c in map(attrgetter("cat"), events)]
    groups = pl.DataFrame({"ph": ph, "cat": cat}, schema={"ph": pl.Utf8, "cat": pl.Utf8})
    groups = groups.with_row_index("i").with_columns(
        pl.when(pl.col("ph") == "C")
        .then(pl.lit("counter"))
        .when(pl.col("ph") != "X")
        .then(pl.lit("other"))
        .when(pl.col("cat").is_in(list(GPU_CATS)))
        .then(pl.lit("gpu"))
        .when(pl.col("cat").is_in(list(ANNOTATION_CATS)))
        .then(pl.lit("annotation"))
        .when(pl.col("cat") == "warp_role")
        .then(pl.lit("warp"))
        .when(pl.col("cat") == "comm_traffic")
        .then(pl.lit("traffic"))
        .when(pl.col("cat").is_in(list(SKIP_X_CATS)))
        .then(pl.lit("other"))
        .otherwise(pl.lit("host"))
        .alias("group")
    )
    index: dict[str, np.ndarray] = {
        g: sub["i"].to_numpy()
        for g, sub in groups.group_by("group", maintain_order=True)
        for g in [g[0]]
    }
    take = np.empty(0, dtype=np.int64)

    def pick(name: str) -> tuple[list[TraceEvent], np.ndarray, np.ndarray]:
        idx = index.get(name, take)
        sub = [events[i] for i in idx.tolist()]
        return sub, ts_ns[idx], dur_ns[idx]

    host_sub, host_ts, host_dur = pick("host")
    rpc = np.array(
        [i for i, e in enumerate(host_sub) if e.name == "record_param_comms"], dtype=np.int64
    )
    traffic_sub, traffic_ts, traffic_dur = pick("traffic")
    return {
        "activities": _gpu_frame(*pick("gpu")),
        "cpu_ops": _host_frame(host_sub, host_ts, host_dur),
        "annotations": _annotation_frame(*pick("annotation")),
        "comm_meta": _comm_meta_frame(
            [host_sub[i] for i in rpc.tolist()] + traffic_sub,
            np.concatenate([host_ts[rpc], traffic_ts]),
            np.concatenate([host_dur[rpc], traffic_dur]),
        ),
        "warp_events": _warp_frame(*pick("warp")),
        "counters": _counter_frame(*pick("counter")),
    }


def _args(sub: list[TraceEvent]) -> list[EventArgs]:
    return [e.args or _EMPTY_ARGS for e in sub]


def _dims(lists: list[list[Any] | None], i: int) -> list[Any]:
    return [v[i] if v and len(v) > i else None for v in lists]


def _gpu_frame(sub: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    args = _args(sub)
    grid = list(map(attrgetter("grid"), args))
    block = list(map(attrgetter("block"), args))
    device = [a.device if a.device is not None else e.pid for a, e in zip(args, sub, strict=True)]
    stream = [a.stream if a.stream is not None else e.tid for a, e in zip(args, sub, strict=True)]
    cols = {
        "rank": pl.Series([None] * len(sub), dtype=pl.Int32),
        "device": _as_int(device).cast(pl.Int32, strict=False),
        "stream": _as_int(stream),
        "cat": [e.cat.lower() for e in sub],
        "name": list(map(attrgetter("name"), sub)),
        "ts_ns": ts,
        "dur_ns": dur,
        "correlation": _as_int(list(map(attrgetter("correlation"), args))),
        "external_id": _as_int(list(map(attrgetter("external_id"), args))),
        "grid_x": _as_int(_dims(grid, 0)),
        "grid_y": _as_int(_dims(grid, 1)),
        "grid_z": _as_int(_dims(grid, 2)),
        "block_x": _as_int(_dims(block, 0)),
        "block_y": _as_int(_dims(block, 1)),
        "block_z": _as_int(_dims(block, 2)),
        "bytes": _as_int(list(map(attrgetter("bytes"), args))),
    }
    return pl.DataFrame(cols, schema=F.ACTIVITIES_SCHEMA, strict=False)


def _raw_text(values: list[msgspec.Raw | None]) -> list[str | None]:
    return [bytes(v).decode("utf-8", "replace") if v else None for v in values]


def _host_frame(sub: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    args = _args(sub)
    comm = [_COMM_OP.match(e.name) is not None for e in sub]
    cols = {
        "rank": pl.Series([None] * len(sub), dtype=pl.Int32),
        "pid": _as_str(list(map(attrgetter("pid"), sub))),
        "tid": _as_str(list(map(attrgetter("tid"), sub))),
        "cat": [e.cat.lower() for e in sub],
        "name": list(map(attrgetter("name"), sub)),
        "ts_ns": ts,
        "dur_ns": dur,
        "correlation": _as_int(list(map(attrgetter("correlation"), args))),
        "external_id": _as_int(list(map(attrgetter("external_id"), args))),
        # Inputs matter only for communication ops (peers, tags, sizes): skip the rest.
        "inputs": _raw_text(
            [a.concrete_inputs if c else None for a, c in zip(args, comm, strict=True)]
        ),
        "input_dims": _raw_text(
            [a.input_dims if c else None for a, c in zip(args, comm, strict=True)]
        ),
    }
    return pl.DataFrame(cols, schema=F.CPU_OPS_SCHEMA, strict=False)


def _comm_meta_frame(rows: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    """NCCL record_param_comms ops and overlapscope comm_traffic events."""
    args = _args(rows)
    collective = [a.collective if a.collective is not None else a.collective_name for a in args]
    cols = {
        "rank": pl.Series([None] * len(rows), dtype=pl.Int32),
        "tid": _as_str([e.tid for e in rows]),
        "name": [e.name for e in rows],
        "ts_ns": ts,
        "dur_ns": dur,
        "collective": collective,
        "dtype": [a.dtype for a in args],
        "in_nelems": _as_int([a.in_nelems for a in args]),
        "out_nelems": _as_int([a.out_nelems for a in args]),
        "group_size": _as_int([a.group_size for a in args]),
        "pg_name": _as_str([a.pg_name for a in args]),
        "phase": [a.phase for a in args],
        "dst_bytes": [None if a.dst_bytes is None else [int(b) for b in a.dst_bytes] for a in args],
    }
    return pl.DataFrame(cols, schema=F.COMM_META_SCHEMA, strict=False)


def _annotation_frame(sub: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    args = _args(sub)
    on_gpu = [e.cat.lower() == "gpu_user_annotation" for e in sub]
    cols = {
        "rank": pl.Series([None] * len(sub), dtype=pl.Int32),
        "pid": _as_str([e.pid for e in sub]),
        "tid": _as_str([e.tid for e in sub]),
        "name": [e.name for e in sub],
        "ts_ns": ts,
        "dur_ns": dur,
        "external_id": _as_int([a.external_id for a in args]),
        "on_gpu": on_gpu,
        "device": _as_int(
            [
                (a.device if a.device is not None else e.pid) if g else None
                for a, e, g in zip(args, sub, on_gpu, strict=True)
            ]
        ).cast(pl.Int32, strict=False),
        "stream": _as_int(
            [
                (a.stream if a.stream is not None else e.tid) if g else None
                for a, e, g in zip(args, sub, on_gpu, strict=True)
            ]
        ),
    }
    return pl.DataFrame(cols, schema=F.ANNOTATIONS_SCHEMA, strict=False)


def _warp_frame(sub: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    args = _args(sub)
    cols = {
        "rank": _as_int([a.rank for a in args]).cast(pl.Int32, strict=False),
        "channel": _as_int([a.channel for a in args]).cast(pl.Int32, strict=False),
        "warp": _as_int([a.warp for a in args]).cast(pl.Int32, strict=False),
        "sm": _as_int([a.sm for a in args]).cast(pl.Int32, strict=False),
        "role": [a.role for a in args],
        "state": [a.state for a in args],
        "chunk": _as_int([a.chunk for a in args]),
        "bytes": _as_int([a.bytes for a in args]),
        "link": [a.link for a in args],
        "ts_ns": ts,
        "dur_ns": dur,
    }
    return pl.DataFrame(cols, schema=F.WARP_EVENTS_SCHEMA, strict=False)


def _counter_frame(sub: list[TraceEvent], ts: np.ndarray, dur: np.ndarray) -> pl.DataFrame:
    # Known series only: msgspec keeps declared keys of args (occupancy for our rings).
    keep = [
        (e, t)
        for e, t in zip(sub, ts.tolist(), strict=True)
        if e.args and e.args.occupancy is not None
    ]
    cols = {
        "rank": pl.Series([None] * len(keep), dtype=pl.Int32),
        "pid": _as_str([e.pid for e, _ in keep]),
        "name": [e.name for e, _ in keep],
        "series": ["occupancy"] * len(keep),
        "ts_ns": [t for _, t in keep],
        "value": [float(e.args.occupancy) for e, _ in keep],  # type: ignore[union-attr]
    }
    return pl.DataFrame(cols, schema=F.COUNTERS_SCHEMA, strict=False)
