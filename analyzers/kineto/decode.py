"""Decode one Kineto trace file into per-file polars frames (absolute ns times).

The fast path decodes straight into the msgspec types of schema.py and
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

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.kineto.begin_end import pair_begin_end
from overlapscope.analyzers.kineto.columns import build_frame_parts, merge_parts
from overlapscope.analyzers.kineto.schema import (
    FastEvent,
    FastKinetoTrace,
    KinetoTrace,
    TraceEvent,
    has_begin_end,
    kept_events,
)
from overlapscope.analyzers.kineto.timeconv import decimal_text_us_to_ns, needs_text_path, us_to_ns

_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)
_DECODER = msgspec.json.Decoder(FastKinetoTrace, strict=False)
KEPT_PHASES = ("X", "C")
#: Largest usable |ts| (us): ns must fit int64 with room for a base time and a duration.
MAX_TS_US = 4.0e15
#: Longest usable duration (us): about 28 hours; longer (1e30, inf) is a broken writer.
MAX_DUR_US = 1.0e11


class _TimesOnly(msgspec.Struct):
    ph: Any = None
    ts: msgspec.Raw = msgspec.Raw()
    dur: msgspec.Raw = msgspec.Raw()


class _TraceTimes(msgspec.Struct):
    traceEvents: list[_TimesOnly] = []  # noqa: N815, RUF012


_EVENTS_DECODER = msgspec.json.Decoder(list[FastEvent], strict=False)
_TIMES_DECODER = msgspec.json.Decoder(list[_TimesOnly])


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
    #: Events dropped as unusable: misfit types, non-finite or absurd ts/dur
    #: (|ts| > MAX_TS_US, dur < 0 or > MAX_DUR_US).
    skipped_events: int = 0
    #: ``distributedInfo.pg_config`` (process groups) when the decoder read it, else
    #: None (unknown: e.g. a cache entry written before it was stored;
    #: skew.process_groups then reads the file).
    pg_config: list[dict[str, Any]] | None = None

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


def decode_file(
    path: Path, *, workers: int = 1, chunk_bytes: int | None = None
) -> FileFrames:
    """Parse one Kineto trace into FileFrames; raises TraceError on bad input.

    The event list is decoded in batches of about ``chunk_bytes`` of JSON text
    (default :data:`~overlapscope.analyzers.kineto.chunked.CHUNK_BYTES`), each
    turned into columns and freed before the next, so memory stays near the
    frames plus one batch; ``workers`` > 1 decodes batches in that many
    processes (this one included). A file the batches cannot be proven to read
    exactly as a whole-file decode would (unusual layout, odd events, bad
    JSON) is decoded whole: the frames are the same either way.
    """
    # Millions of short-lived objects: cycle collection passes would only cost time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        from overlapscope.analyzers.kineto import chunked

        try:
            return chunked.decode_chunked(path, workers=workers, chunk_bytes=chunk_bytes)
        except chunked.Fallback:
            pass
        return _decode_file(path)
    finally:
        if was_enabled:
            gc.enable()


def decode_whole(path: Path) -> FileFrames:
    """Parse one Kineto trace in one piece (the reference the batched decode equals)."""
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
    all_events = trace.traceEvents or []
    n_events = len(all_events)
    if n_events == 0 and not skipped:
        raise TraceError(path, "'traceEvents' is empty: the profiler recorded nothing")
    # Begin/end pairs (other tools' traces) become intervals; then only intervals ("X")
    # and counters ("C") carry what the analyzers read.
    paired = not isinstance(trace, FastKinetoTrace) or has_begin_end(all_events)
    if paired:
        all_events, unmatched = pair_begin_end(all_events)
        skipped += unmatched
    if isinstance(trace, FastKinetoTrace):
        events = kept_events(all_events)
    else:
        events = [e for e in all_events if e.ph in KEPT_PHASES]
    del all_events
    ts_ns, dur_ns, dur_missing, usable = _times_ns(raw, events, from_text=not paired)
    if not usable.all():
        # Absurd or negative times: drop the event, count it (meta skipped_events).
        skipped += int((~usable).sum())
        events = [e for e, ok in zip(events, usable.tolist(), strict=True) if ok]
        ts_ns, dur_ns, dur_missing = ts_ns[usable], dur_ns[usable], dur_missing[usable]
    dist = trace.distributedInfo
    rank = dist.rank if dist and dist.rank is not None else None
    props = trace.deviceProperties or []
    num_sms = next((p.numSms for p in props if p.numSms), None)
    dev_name = next((p.name for p in props if p.name), None)
    base = int(trace.baseTimeNanoseconds or 0)
    built = merge_parts([build_frame_parts(events, ts_ns + base, dur_ns, dur_missing)])
    return FileFrames(
        path=str(path),
        rank=rank,
        world_size=dist.world_size if dist else None,
        backend=dist.backend if dist else None,
        num_sms=num_sms,
        device_name=dev_name,
        n_events=n_events,
        base_time_ns=base,
        overlapscope=trace.overlapscope or {},
        skipped_events=skipped,
        # A bare event array has no header, so no process groups: known to be none.
        pg_config=[] if is_array(raw) else None,
        **built,
    )


def is_array(raw: bytes) -> bool:
    """True when the JSON text is a bare event array (not an object with traceEvents)."""
    return raw[:64].lstrip()[:1] == b"["


def _decode_trace(path: Path, raw: bytes) -> tuple[FastKinetoTrace | KinetoTrace, int]:
    if is_array(raw):
        return _decode_array(path, raw)
    try:
        trace = _DECODER.decode(raw)
    except msgspec.ValidationError:
        return _decode_generic(path, raw)
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"not valid JSON ({_json_problem(exc)})") from None
    if trace.traceEvents is None:  # an object (any other top level fails the typed decode)
        raise TraceError(path, "no 'traceEvents' list: not a Kineto/Chrome trace")
    return trace, 0


def _closed_array(raw: bytes) -> bytes:
    """The Trace Event Format lets a JSON-array trace end without its ``]`` (a process
    that died mid-trace still leaves a readable file): close it, dropping a dangling
    comma. A complete array is returned as it is (an event always ends with ``}``, so a
    text ending with ``]`` is closed, or broken, which the decode then says)."""
    body = raw.rstrip()
    if body.endswith(b"]"):
        return raw
    return body.rstrip(b",") + b"]"


def _decode_array(path: Path, raw: bytes) -> tuple[FastKinetoTrace | KinetoTrace, int]:
    """A trace in the Trace Event Format's *JSON Array Format* (a bare list of events,
    as Chrome and PyTorch's legacy autograd profiler write): the events of a trace with
    no header."""
    raw = _closed_array(raw)
    try:
        return FastKinetoTrace(traceEvents=_EVENTS_DECODER.decode(raw)), 0
    except msgspec.ValidationError:
        return _decode_generic(path, b'{"traceEvents":' + raw + b"}", none_fit=(
            "top level is a JSON list but none of its elements is a trace event object "
            "(expected a list of events, or an object with 'traceEvents')"))
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"not valid JSON ({_json_problem(exc)})") from None


def _json_problem(exc: Exception) -> str:
    msg = str(exc)
    if "truncated" in msg:
        return "the JSON text ends early: file truncated?"
    return msg


def _decode_generic(
    path: Path, raw: bytes,
    none_fit: str = "no element of 'traceEvents' is a trace event object",
) -> tuple[KinetoTrace, int]:
    """Slow path: generic decode, then convert event by event, counting misfits.
    ``none_fit``: the error when events exist but none is an event object."""
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
        raise TraceError(path, none_fit)
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


def float_times(
    events: list[Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts_us, dur_us, dur_missing, usable) as float64 arrays (see :func:`_times_ns`);
    unusable events read as 0."""
    ts_np, ts_null = _float_field(events, "ts")
    dur_np, dur_missing = _float_field(events, "dur")
    with np.errstate(invalid="ignore"):
        usable = (
            np.isfinite(ts_np)
            & np.isfinite(dur_np)
            & (np.abs(ts_np) <= MAX_TS_US)
            & (dur_np >= 0)
            & (dur_np <= MAX_DUR_US)
        )
    ts_np = np.where(usable, ts_np, 0.0)
    dur_np = np.where(usable, dur_np, 0.0)
    return ts_np, dur_np, dur_missing, usable


def _float_field(events: list[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_float_column` of one attribute of every event, without an interim list
    when no value is null (the common case; np.fromiter reads None as NaN, and JSON
    has no NaN, so a NaN sends the column the general way)."""
    try:
        arr = np.fromiter(map(attrgetter(name), events), dtype=np.float64, count=len(events))
    except (TypeError, ValueError, OverflowError):
        arr = None
    if arr is None or np.isnan(arr).any():
        return _float_column(list(map(attrgetter(name), events)))
    return arr, np.zeros(arr.size, dtype=bool)


def _float_column(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (int, float or None) as float64 with nulls as 0, and the null mask."""
    if None not in values:
        try:
            arr = np.array(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if arr.ndim == 1:
                return arr, np.zeros(arr.size, dtype=bool)
    col = pl.Series(values, dtype=pl.Float64, strict=False)
    return col.fill_null(0.0).to_numpy(), col.is_null().to_numpy()


def text_times(
    times: list[_TimesOnly], usable: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (ts_ns, dur_ns) from the JSON text of the kept events' times."""
    # Strings of digits ("ts": "123.5") are read like numbers; null/empty counts as 0,
    # and so does every unusable event (dropped by the caller).
    ok = usable.tolist()
    ts_txt = pl.Series([bytes(t.ts).decode().strip('"') if t.ts and k else "0"
                        for t, k in zip(times, ok, strict=True)])
    dur_txt = pl.Series([bytes(t.dur).decode().strip('"') if t.dur and k else "0"
                         for t, k in zip(times, ok, strict=True)])
    return (
        decimal_text_us_to_ns(ts_txt).fill_null(0).to_numpy(),
        decimal_text_us_to_ns(dur_txt).fill_null(0).to_numpy(),
    )


def _times_ns(
    raw: bytes, events: list[Any], *, from_text: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts_ns, dur_ns, dur_missing, usable) of every event, times relative to the base.

    ``from_text`` False: never re-read exact times from the JSON text (events that are
    not the text's own "X"/"C" entries one for one, e.g. paired begin/end events).

    ``dur`` null counts as 0 and is flagged in ``dur_missing``. ``usable`` is False
    for an event whose ts or dur is not finite, whose |ts| exceeds MAX_TS_US, or
    whose dur is negative or exceeds MAX_DUR_US; its times read as 0 here and the
    caller drops it.
    """
    ts_np, dur_np, dur_missing, usable = float_times(events)
    if not from_text or (not needs_text_path(ts_np) and not needs_text_path(dur_np)):
        return us_to_ns(ts_np), us_to_ns(dur_np), dur_missing, usable
    # Epoch-scale microseconds: float64 lost the nanoseconds, read them from the text.
    try:
        times = msgspec.json.decode(raw, type=_TraceTimes).traceEvents
    except msgspec.MsgspecError:
        return us_to_ns(ts_np), us_to_ns(dur_np), dur_missing, usable
    times = [t for t in times if t.ph in KEPT_PHASES]
    if len(times) != len(events):  # generic path dropped events; keep float precision
        return us_to_ns(ts_np), us_to_ns(dur_np), dur_missing, usable
    ts_ns, dur_ns = text_times(times, usable)
    return ts_ns, dur_ns, dur_missing, usable


def rank_from_name(path: Path) -> int | None:
    """The rank a file name states (``rank-3``, ``rank3``, ``rank_3``), if any."""
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None
