"""The ONE event schema for per-warp role activity (emulator and CUDA kernel).

Both the CPU emulator and the CUDA kernel produce :class:`WarpLog` records and
turn them into standard Chrome-trace events with :func:`warp_events` /
:func:`ring_counter_events`; analyzers read them back from any Kineto trace.

Event shapes (times ``ts``/``dur`` in microseconds, floats, as Kineto writes):

* warp activity: ``{"ph": "X", "cat": "warp_role", "name": "<role>:<state>",
  "pid": "rank <r> warps", "tid": "c<channel> w<warp>", "ts", "dur",
  "args": {"role", "state", "channel", "warp", "sm", "chunk", "bytes", "link",
  "rank", "node", "gpu"}}`` where ``link`` is "ib" | "nvl" | "local" | null and
  ``bytes`` the bytes that interval moved on that link (0 for waits); ``node`` /
  ``gpu`` (extra, may be null) name the peer the interval served.
* ring occupancy: ``{"ph": "C", "name": "ring <kind> c<channel> <peer>",
  "pid": "rank <r> warps", "ts", "args": {"occupancy": n}}`` with kind "rdma"
  (peer ``n<node>``) or "nvl" (peer ``r<global destination rank>``), occupancy
  in chunk slots (tail - head).
* ``process_name`` / ``thread_name`` / ``thread_sort_index`` metadata (``ph: "M"``)
  so Perfetto labels the tracks.

Role names (args.role) and states (args.state) are the constants below; an
analyzer must treat unknown names as opaque labels.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

# -- roles (dispatch) -------------------------------------------------------------
RDMA_SENDER = "rdma_sender"  # copies each token once per destination node (IB hop)
SENDER_COORDINATOR = "sender_coordinator"  # publishes RDMA ring tails in chunk order
FORWARDER = "forwarder"  # RDMA ring -> every destination GPU's NVL ring (NVLink hop)
FORWARDER_COORDINATOR = "forwarder_coordinator"  # releases RDMA heads (DeepEP layout)
NVL_RECEIVER = "nvl_receiver"  # NVL ring -> final per-GPU output rows
# -- roles (combine) ---------------------------------------------------------------
NVL_SENDER = "nvl_sender"  # expert outputs -> forwarding GPU's NVL ring
COMBINE_FORWARDER = "combine_forwarder"  # reduce a node's partials, send over IB
RDMA_RECEIVER = "rdma_receiver"  # reduce node partials into the output row

DISPATCH_ROLES = (RDMA_SENDER, SENDER_COORDINATOR, FORWARDER, NVL_RECEIVER)
COMBINE_ROLES = (NVL_SENDER, COMBINE_FORWARDER, RDMA_RECEIVER)

# -- states -----------------------------------------------------------------------
BUSY = "busy"
WAIT_REMOTE_HEAD = "wait_remote_head"  # ring full: back-pressure from downstream
WAIT_TAIL = "wait_tail"  # ring empty / upstream not ready: starvation
WAIT_WINDOW_LOCK = "wait_window_lock"
WAIT_META = "wait_meta"
IDLE_SLEEP = "idle_sleep"
STATES = (BUSY, WAIT_REMOTE_HEAD, WAIT_TAIL, WAIT_WINDOW_LOCK, WAIT_META, IDLE_SLEEP)

LINKS = ("ib", "nvl", "local")

#: Columns of :meth:`WarpLog.to_frame` (times integer ns from the kernel start): the
#: analyzers' WARP_EVENTS_SCHEMA columns plus ``node`` / ``gpu``.
WARP_LOG_SCHEMA: dict[str, pl.DataType] = {
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
    "node": pl.Int32,
    "gpu": pl.Int32,
}

#: Columns of :meth:`WarpLog.occupancy_frame`.
RING_SAMPLES_SCHEMA: dict[str, pl.DataType] = {
    "ring": pl.Utf8,
    "kind": pl.Utf8,
    "channel": pl.Int32,
    "peer": pl.Utf8,
    "ts_ns": pl.Int64,
    "occupancy": pl.Int64,
}

Row = tuple[int, int, str, str, int, int, "str | None", int, int, "int | None", "int | None"]


class WarpLog:
    """Append-only per-warp interval log plus ring occupancy samples.

    A row is (channel, warp, role, state, chunk, bytes, link, t0_ns, t1_ns, node,
    gpu). Waits shorter than ``min_wait_ns`` are dropped (the CUDA kernel keeps
    waits >= 200 ns only). ``sm_of_channel`` maps a channel to its SM id.
    """

    def __init__(self, *, min_wait_ns: int = 0, sm_of_channel: Sequence[int] | None = None):
        self.rows: list[Row] = []
        self.ring_samples: list[tuple[str, str, int, str, int, int]] = []
        self.min_wait_ns = min_wait_ns
        self.sm_of_channel = list(sm_of_channel) if sm_of_channel is not None else None

    def busy(
        self, channel: int, warp: int, role: str, chunk: int, nbytes: int,
        link: str | None, t0: int, t1: int, node: int | None = None, gpu: int | None = None,
    ) -> None:
        """Record an active interval (copy / publish)."""
        self.rows.append((channel, warp, role, BUSY, chunk, nbytes, link, t0, t1, node, gpu))

    def wait(
        self, channel: int, warp: int, role: str, state: str, chunk: int, t0: int, t1: int,
        node: int | None = None, gpu: int | None = None,
    ) -> None:
        """Record a wait interval with its reason ``state``."""
        if t1 - t0 >= max(self.min_wait_ns, 1):
            self.rows.append((channel, warp, role, state, chunk, 0, None, t0, t1, node, gpu))

    def ring_sample(self, ring: str, kind: str, channel: int, peer: str, t: int, occ: int) -> None:
        self.ring_samples.append((ring, kind, channel, peer, t, occ))

    def to_frame(self, *, rank: int = 0) -> pl.DataFrame:
        """All intervals as a frame (WARP_LOG_SCHEMA), sorted by (channel, warp, ts)."""
        if not self.rows:
            return pl.DataFrame(schema=WARP_LOG_SCHEMA)
        cols = list(zip(*self.rows, strict=True))
        t0 = pl.Series(cols[7], dtype=pl.Int64)
        t1 = pl.Series(cols[8], dtype=pl.Int64)
        sms = self.sm_of_channel
        data = {
            "rank": [rank] * len(self.rows), "channel": cols[0], "warp": cols[1],
            "sm": [sms[c] for c in cols[0]] if sms is not None else cols[0],
            "role": cols[2], "state": cols[3],
            "chunk": cols[4], "bytes": cols[5], "link": cols[6],
            "ts_ns": t0, "dur_ns": t1 - t0, "node": cols[9], "gpu": cols[10],
        }
        return pl.DataFrame(data, schema=WARP_LOG_SCHEMA, strict=False).sort(
            "channel", "warp", "ts_ns"
        )

    def occupancy_frame(self) -> pl.DataFrame:
        """Ring occupancy samples (RING_SAMPLES_SCHEMA)."""
        if not self.ring_samples:
            return pl.DataFrame(schema=RING_SAMPLES_SCHEMA)
        cols = list(zip(*self.ring_samples, strict=True))
        return pl.DataFrame(
            dict(zip(RING_SAMPLES_SCHEMA, cols, strict=True)), schema=RING_SAMPLES_SCHEMA
        )


def warps_pid(rank: int) -> str:
    """The Chrome ``pid`` label of a rank's warp tracks."""
    return f"rank {rank} warps"


def warp_tid(channel: int, warp: int) -> str:
    """The Chrome ``tid`` label of one (channel, warp) track."""
    return f"c{channel} w{warp}"


def warp_events(log: WarpLog, *, rank: int, t0_us: float = 0.0) -> list[dict[str, Any]]:
    """Chrome ``X`` events (cat ``warp_role``) for every interval of ``log``.

    ``t0_us`` shifts the log's zero to a trace time in microseconds.
    """
    pid = warps_pid(rank)
    sms = log.sm_of_channel
    out: list[dict[str, Any]] = []
    for c, w, role, state, chunk, nbytes, link, a, b, node, gpu in log.rows:
        out.append({
            "ph": "X", "cat": "warp_role", "name": f"{role}:{state}", "pid": pid,
            "tid": warp_tid(c, w), "ts": t0_us + a / 1000.0, "dur": (b - a) / 1000.0,
            "args": {
                "role": role, "state": state, "channel": c, "warp": w,
                "sm": sms[c] if sms is not None else c, "chunk": chunk, "bytes": nbytes,
                "link": link, "rank": rank, "node": node, "gpu": gpu,
            },
        })
    return out


def ring_counter_events(log: WarpLog, *, rank: int, t0_us: float = 0.0) -> list[dict[str, Any]]:
    """Chrome ``C`` counter events of ring occupancy (``args.occupancy``)."""
    pid = warps_pid(rank)
    return [
        {"ph": "C", "name": name, "pid": pid, "ts": t0_us + t / 1000.0, "args": {"occupancy": occ}}
        for name, _kind, _c, _peer, t, occ in log.ring_samples
    ]


def metadata_events(log: WarpLog, *, rank: int) -> list[dict[str, Any]]:
    """``process_name`` / ``thread_name`` / ``thread_sort_index`` events for the tracks."""
    pid = warps_pid(rank)
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": pid}},
    ]
    tracks: dict[tuple[int, int], str] = {}
    for c, w, role, *_ in log.rows:
        tracks.setdefault((c, w), role)
    for (c, w), role in sorted(tracks.items()):
        tid = warp_tid(c, w)
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                    "args": {"name": f"{tid} {role}"}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                    "args": {"sort_index": c * 1000 + w}})
    return out


def kernel_event(
    name: str, *, dur_ns: int, grid: int, block: int, t0_us: float = 0.0,
    device: int = 0, stream: int = 13, correlation: int = 1,
) -> dict[str, Any]:
    """A Kineto-shaped ``cat: kernel`` envelope for the (emulated) kernel."""
    return {
        "ph": "X", "cat": "kernel", "name": name, "pid": device, "tid": stream,
        "ts": t0_us, "dur": dur_ns / 1000.0,
        "args": {"device": device, "stream": stream, "correlation": correlation,
                 "grid": [grid, 1, 1], "block": [block, 1, 1]},
    }


def traffic_event(
    name: str, *, collective: str, hop: str, dst_bytes: Sequence[int], t0_us: float,
    dur_us: float, phase: str | None = None, dtype: str = "float8_e4m3fn", pid: int = 0,
    tid: int = 0,
) -> dict[str, Any]:
    """A ``cat: comm_traffic`` event carrying a per-destination-rank byte vector."""
    return {
        "ph": "X", "cat": "comm_traffic", "name": name, "pid": pid, "tid": tid,
        "ts": t0_us, "dur": dur_us,
        "args": {"collective": collective, "hop": hop, "phase": phase, "dtype": dtype,
                 "dst_bytes": [int(b) for b in dst_bytes]},
    }


def write_trace(
    path: str | Path, events: Iterable[dict[str, Any]], overlapscope: dict[str, Any],
    *, extra: dict[str, Any] | None = None,
) -> Path:
    """Write a standalone Kineto-compatible trace (``.json`` or ``.json.gz``).

    The file is ``{"schemaVersion": 1, "traceEvents": [...], "overlapscope": {...}}``
    (plus ``extra`` top-level keys), which Perfetto and chrome://tracing open.
    Written atomically (temp file + rename).
    """
    path = Path(path)
    doc: dict[str, Any] = {"schemaVersion": 1, "displayTimeUnit": "ms"}
    if extra:
        doc.update(extra)
    doc["traceEvents"] = list(events)
    doc["overlapscope"] = overlapscope
    data = json.dumps(doc, separators=(",", ":")).encode()
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        tmp.write_bytes(gzip.compress(data, compresslevel=5))
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return path
