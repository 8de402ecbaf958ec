"""Duration events ("B" begin / "E" end pairs) of the Trace Event Format as intervals.

Kineto writes complete events ("X") only, but traces from other tools (Chrome's
tracing, some framework exporters) mark an operation by a "B" and a later "E" on the
same thread. Trace viewers pair them per thread (pid, tid) like a stack: an "E" ends
the innermost "B" still open. Events of one thread are taken in time order (file order
among equal times), as a viewer sorts them. A pair becomes one complete event at the
"B"'s place in the file: name, category and args of the "B" (the "E"'s args when the
"B" has none), duration end - begin. An "E" with nothing open, or a "B" never closed,
is dropped and counted.
"""

from __future__ import annotations

from typing import Any

from overlapscope.analyzers.kineto.schema import BeginEvent, CompleteEvent, TraceEvent


def _phase(e: Any) -> str | None:
    return getattr(e, "ph", None)  # the skipped phases' structs have no fields


def _ts_key(e: Any) -> float:
    ts = e.ts
    return float("inf") if ts is None else float(ts)


def pair_begin_end(events: list[Any]) -> tuple[list[Any], int]:
    """``events`` with every matched B/E pair replaced by one complete event at the
    B's position (E removed); returns (events, number of unmatched B or E dropped).

    Works on fast-path events (BeginEvent / EndEvent) and on generic TraceEvents
    (``ph`` "B" / "E").
    """
    begin_end = [i for i, e in enumerate(events) if _phase(e) in ("B", "E")]
    if not begin_end:
        return events, 0
    by_thread: dict[tuple[str, str], list[int]] = {}
    for i in begin_end:
        e = events[i]
        by_thread.setdefault((str(e.pid), str(e.tid)), []).append(i)
    replaced: dict[int, Any] = {}
    dropped = 0
    for idx in by_thread.values():
        idx.sort(key=lambda i: (_ts_key(events[i]), i))
        open_: list[int] = []
        for i in idx:
            if _phase(events[i]) == "B":
                open_.append(i)
            elif open_:
                b = open_.pop()
                replaced[b] = _complete(events[b], events[i])
            else:
                dropped += 1  # an end with nothing open
        dropped += len(open_)  # begins never closed
    out = [replaced[i] if i in replaced else e
           for i, e in enumerate(events)
           if i in replaced or _phase(e) not in ("B", "E")]
    return out, dropped


def _complete(b: Any, e: Any) -> Any:
    """One complete event from a begin and its end (dur None when a time is missing)."""
    dur = None if b.ts is None or e.ts is None else e.ts - b.ts
    fields = {"cat": b.cat, "name": b.name, "pid": b.pid, "tid": b.tid, "ts": b.ts,
              "dur": dur, "args": b.args if b.args is not None else e.args}
    if isinstance(b, BeginEvent):
        return CompleteEvent(**fields)
    return TraceEvent(ph="X", **fields)
