"""Place per-warp events recorded on the GPU's ``%globaltimer`` onto a Kineto timeline.

The warp events and the Kineto kernel record come from two clocks that differ by
a constant offset (H200 measurement notes: the event span, 5430.2 us, matches the
kernel duration, 5432.1 us). The events are therefore shifted, never scaled, so
that their span sits centred inside the kernel: the kernel's launch-to-first-event
and last-event-to-exit slack (together kernel_dur - span) is split evenly.
"""

from __future__ import annotations

import polars as pl


def align_warp_events_to_kernel(
    warp_events: pl.DataFrame,
    kernel_ts_ns: int,
    kernel_dur_ns: int,
    *,
    max_excess_ns: int = 1_000,
) -> pl.DataFrame:
    """Shift ``ts_ns`` of all events by one integer offset so that their span
    ``[first start, last end]`` is centred in ``[kernel_ts_ns, kernel_ts_ns + kernel_dur_ns]``.

    Raises ``ValueError`` when the events span more than ``kernel_dur_ns +
    max_excess_ns`` (they cannot belong to that kernel instance) or the frame is empty.
    """
    if warp_events.height == 0:
        raise ValueError("no warp events to align")
    first = int(warp_events["ts_ns"].min())
    last = int((warp_events["ts_ns"] + warp_events["dur_ns"]).max())
    span = last - first
    if span > kernel_dur_ns + max_excess_ns:
        raise ValueError(
            f"warp events span {span} ns but the kernel lasts {kernel_dur_ns} ns: "
            "they do not belong to this kernel instance")
    offset = int(kernel_ts_ns) + (int(kernel_dur_ns) - span) // 2 - first
    return warp_events.with_columns(ts_ns=pl.col("ts_ns") + offset)
