"""TraceFrames: the typed bundle of polars frames every analyzer consumes.

All times are integer nanoseconds measured from one origin per run (the earliest
event of any rank), so ranks of one run line up and sub-microsecond digits of
Kineto's float microsecond timestamps are kept exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: GPU activities: kernels, memcpy, memset (Kineto cats kernel/gpu_memcpy/gpu_memset).
#: ``device`` is the GPU index inside the file (``args.device`` or the pid);
#: ``stream`` the CUDA/HIP stream id. ``grid_x``/``block_x`` are null for memcpy/memset.
ACTIVITIES_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "device": pl.Int32,
    "stream": pl.Int64,
    "cat": pl.Utf8,
    "name": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
    "correlation": pl.Int64,
    "external_id": pl.Int64,
    "grid_x": pl.Int64,
    "grid_y": pl.Int64,
    "grid_z": pl.Int64,
    "block_x": pl.Int64,
    "block_y": pl.Int64,
    "block_z": pl.Int64,
    "bytes": pl.Int64,
}

#: Host-side events: operators (cpu_op), runtime/driver API calls (cuda_runtime,
#: cuda_driver), python functions. ``pid``/``tid`` are kept as strings because
#: traces use both integers and labels ("Spans"). ``correlation`` links a launch
#: to its GPU activity. ``inputs`` is the ``Concrete Inputs`` list as JSON text
#: (null when absent): gloo peers and tags live there.
CPU_OPS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "pid": pl.Utf8,
    "tid": pl.Utf8,
    "cat": pl.Utf8,
    "name": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
    "correlation": pl.Int64,
    "external_id": pl.Int64,
    "inputs": pl.Utf8,
    "input_dims": pl.Utf8,
}

#: User annotations (record_function ranges). ``on_gpu`` is true for Kineto's
#: ``gpu_user_annotation`` mirror rows (then ``device``/``stream`` are set).
ANNOTATIONS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "pid": pl.Utf8,
    "tid": pl.Utf8,
    "name": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
    "external_id": pl.Int64,
    "on_gpu": pl.Boolean,
    "device": pl.Int32,
    "stream": pl.Int64,
}

#: Communication metadata: NCCL's ``record_param_comms`` and overlapscope's own
#: ``cat:"comm_traffic"`` events. ``dst_bytes`` is the per-destination-rank byte
#: vector when the writer knows it (overlapscope traces), else null.
COMM_META_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "tid": pl.Utf8,
    "name": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
    "collective": pl.Utf8,
    "dtype": pl.Utf8,
    "in_nelems": pl.Int64,
    "out_nelems": pl.Int64,
    "group_size": pl.Int64,
    "pg_name": pl.Utf8,
    "phase": pl.Utf8,
    "dst_bytes": pl.List(pl.Int64),
}

#: Per-warp role activity (``cat:"warp_role"``). ``state`` is "busy" or a wait
#: reason ("wait_remote_head", "wait_tail", "wait_meta", ...). ``link`` is
#: "ib", "nvl", "local" or null; ``bytes`` the bytes moved on that link.
WARP_EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "channel": pl.Int32,
    "warp": pl.Int32,
    "sm": pl.Int32,
    "role": pl.Utf8,
    "state": pl.Utf8,
    "chunk": pl.Int64,
    "bytes": pl.Int64,
    "link": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
}

#: Chrome counter samples (``ph:"C"``), one row per (event, series), e.g. ring occupancy.
COUNTERS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "pid": pl.Utf8,
    "name": pl.Utf8,
    "series": pl.Utf8,
    "ts_ns": pl.Int64,
    "value": pl.Float64,
}

#: One row per trace file of the run. ``comm_tid`` is the thread an overlapscope
#: profiler dedicated to communication (its "comm stream" on CPU), when declared.
RANKS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "path": pl.Utf8,
    "world_size": pl.Int64,
    "backend": pl.Utf8,
    "num_sms": pl.Int64,
    "device_name": pl.Utf8,
    "origin_ns": pl.Int64,
    "base_time_ns": pl.Int64,
    "comm_tid": pl.Utf8,
    "n_events": pl.Int64,
}


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with the given schema."""
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class TraceFrames:
    """Everything the analyzers need from one run (one or many rank files).

    ``meta`` holds run-level facts: ``origin_ns`` (absolute ns of time zero),
    ``ranks`` (the RANKS_SCHEMA frame), ``overlapscope`` (the trace augmentation
    object of our own profiler, or ``{}``), ``source`` (the path given).
    """

    activities: pl.DataFrame
    cpu_ops: pl.DataFrame
    annotations: pl.DataFrame
    comm_meta: pl.DataFrame
    warp_events: pl.DataFrame
    counters: pl.DataFrame
    ranks: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        """True when the run has GPU activities; CPU-only runs use host ops instead."""
        return self.activities.height > 0
