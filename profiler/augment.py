"""Trace augmentation: splice overlapscope's own events into an exported Kineto trace.

Kineto's JSON is never re-serialised: it is split into top-level members and event texts
(``msgspec.Raw``), our events are appended to ``traceEvents`` and an ``"overlapscope"``
member is added, so every byte Kineto wrote (including epoch-scale timestamps whose
nanosecond digits a float64 would lose) survives unchanged. The result is still plain
Chrome-trace JSON that Perfetto and chrome://tracing open.

Clocks. Kineto writes ``ts`` in microseconds relative to the trace's
``baseTimeNanoseconds`` (absent in older versions: then ``ts`` is Unix-epoch microseconds).
Our records carry host times in integer nanoseconds of either ``time.monotonic_ns()``
(== ``time.perf_counter_ns()`` on Linux) or ``time.time_ns()``; values at or above
:data:`EPOCH_THRESHOLD_NS` are taken as Unix time, smaller ones as monotonic time and
shifted by the session's measured monotonic -> Unix offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

#: Host times at or above this (ns) are Unix-epoch times (2001-09-09); below, monotonic.
EPOCH_THRESHOLD_NS = 10**18


@dataclass(frozen=True)
class TrafficRecord:
    """One ``record_traffic`` call, kept until export; times in host nanoseconds."""

    name: str
    collective: str
    hop: str
    dst_bytes: tuple[int, ...]
    phase: str | None
    t0_ns: int
    t1_ns: int
    dtype: str
    pid: int
    tid: int


def to_unix_ns(t_ns: int, mono_to_unix_ns: int) -> int:
    """A host time (monotonic or Unix ns, see module doc) as Unix-epoch nanoseconds."""
    return t_ns if t_ns >= EPOCH_THRESHOLD_NS else t_ns + mono_to_unix_ns


def us_text(ns: int) -> msgspec.Raw:
    """Integer nanoseconds as a JSON number of microseconds with exactly 3 decimals."""
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), 1000)
    return msgspec.Raw(f"{sign}{whole}.{frac:03d}".encode())


def traffic_event(rec: TrafficRecord, *, mono_to_unix_ns: int, base_ns: int) -> dict[str, Any]:
    """The ``cat:"comm_traffic"`` Chrome event of one record (contract in DESIGN.md)."""
    t0 = to_unix_ns(rec.t0_ns, mono_to_unix_ns)
    t1 = to_unix_ns(rec.t1_ns, mono_to_unix_ns)
    return {
        "ph": "X",
        "cat": "comm_traffic",
        "name": rec.name,
        "pid": rec.pid,
        "tid": rec.tid,
        "ts": us_text(t0 - base_ns),
        "dur": us_text(max(t1 - t0, 0)),
        "args": {
            "collective": rec.collective,
            "hop": rec.hop,
            "phase": rec.phase,
            "dtype": rec.dtype,
            "dst_bytes": list(rec.dst_bytes),
        },
    }


def rebase_event(
    event: dict[str, Any], *, mono_to_unix_ns: int, base_ns: int, time_base_ns: int | None
) -> dict[str, Any]:
    """A workload-supplied Chrome event moved onto the trace's time base.

    ``event["ts"]`` is microseconds: relative to ``time_base_ns`` (a host time in ns)
    when that is given, else an absolute host time in microseconds (monotonic or Unix,
    told apart by magnitude). ``dur`` is kept (as 3-decimal text).
    """
    out = dict(event)
    ts_ns = round(float(event.get("ts", 0.0)) * 1000.0)
    if time_base_ns is not None:
        unix_ns = to_unix_ns(time_base_ns, mono_to_unix_ns) + ts_ns
    else:
        unix_ns = to_unix_ns(ts_ns, mono_to_unix_ns)
    out["ts"] = us_text(unix_ns - base_ns)
    if "dur" in event:
        out["dur"] = us_text(round(float(event["dur"]) * 1000.0))
    return out


def trace_base_ns(top: dict[str, msgspec.Raw]) -> int:
    """``baseTimeNanoseconds`` of a decoded trace (0 when absent: ts are epoch us)."""
    raw = top.get("baseTimeNanoseconds")
    return int(msgspec.json.decode(raw)) if raw is not None else 0


def split_trace(data: bytes) -> dict[str, msgspec.Raw]:
    """Top-level members of a Chrome-trace JSON object, each kept as raw text."""
    top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    if "traceEvents" not in top:
        raise ValueError("exported trace has no traceEvents list")
    return top


def append_events(events_raw: msgspec.Raw, extra: list[bytes]) -> msgspec.Raw:
    """The raw ``traceEvents`` array with already-encoded events appended."""
    if not extra:
        return events_raw
    body = bytes(events_raw).rstrip()
    if not body.endswith(b"]"):
        raise ValueError("traceEvents is not a JSON array")
    head = body[:-1].rstrip()
    sep = b"" if head.endswith(b"[") else b",\n"
    return msgspec.Raw(head + sep + b",\n".join(extra) + b"]")


def augment_trace(data: bytes, overlapscope: dict[str, Any], events: list[dict[str, Any]]) -> bytes:
    """Kineto JSON text -> the same text plus ``events`` and the ``overlapscope`` member.

    ``events`` must already be on the trace's time base (see :func:`traffic_event` and
    :func:`rebase_event`); their ``ts``/``dur`` may be floats or :func:`us_text` values.
    """
    top = split_trace(data)
    encoded = [msgspec.json.encode(ev) for ev in events]
    top["traceEvents"] = append_events(top["traceEvents"], encoded)
    top["overlapscope"] = msgspec.Raw(msgspec.json.encode(overlapscope))
    return msgspec.json.encode(top)


def _ns_of(raw: msgspec.Raw) -> int:
    """A JSON number of microseconds (any spelling) as exact integer nanoseconds."""
    from decimal import ROUND_HALF_EVEN, Decimal

    return int((Decimal(bytes(raw).decode()) * 1000).to_integral_value(ROUND_HALF_EVEN))


def skew_ns(unix_ns: int, *, offset_ns: int, drift_ppm: float, ref_unix_ns: int) -> int:
    """A true Unix time (ns) as a skewed clock reads it:
    ``t + offset_ns + round(drift_ppm * 1e-6 * (t - ref_unix_ns))``."""
    return unix_ns + int(offset_ns) + round(drift_ppm * (unix_ns - ref_unix_ns) / 1e6)


def skew_trace(data: bytes, *, offset_ns: int, drift_ppm: float, ref_unix_ns: int) -> bytes:
    """Trace JSON text whose every event time reads as on a clock that is ``offset_ns``
    ahead at ``ref_unix_ns`` and runs ``drift_ppm`` fast (see :func:`skew_ns`).

    Each event's ``ts`` (and its end ``ts + dur``, so ``dur`` grows by the drift) is
    mapped; everything else is kept byte for byte (events are split into raw members,
    only ``ts``/``dur`` are rewritten, with three decimals). ``baseTimeNanoseconds``
    stays, so the shift shows in ``ts``.
    """
    top = split_trace(data)
    base = trace_base_ns(top)
    events = msgspec.json.decode(top["traceEvents"], type=list[msgspec.Raw])
    out = []
    for raw in events:
        ev = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        if "ts" not in ev:
            out.append(bytes(raw))
            continue
        t0 = base + _ns_of(ev["ts"])
        new0 = skew_ns(t0, offset_ns=offset_ns, drift_ppm=drift_ppm, ref_unix_ns=ref_unix_ns)
        ev["ts"] = us_text(new0 - base)
        if "dur" in ev:
            t1 = t0 + _ns_of(ev["dur"])
            new1 = skew_ns(t1, offset_ns=offset_ns, drift_ppm=drift_ppm, ref_unix_ns=ref_unix_ns)
            ev["dur"] = us_text(new1 - new0)
        out.append(msgspec.json.encode(ev))
    top["traceEvents"] = msgspec.Raw(b"[\n" + b",\n".join(out) + b"]")
    return msgspec.json.encode(top)
