"""Batched (and optionally parallel) decoding of one Kineto trace file.

A trace is one JSON object whose ``traceEvents`` array holds the events one
after another. This module cuts that array into batches of a few tens of MB at
event boundaries (a ``}`` followed by ``,`` and ``{``), decodes each batch with
the typed decoder of schema.py, turns it into columns (columns.py) and frees
its Python objects before the next one: memory stays near the frames plus one
batch, and batches can be decoded by several processes at once.

Why the result equals a whole-file decode: the header (every key but the
events) is decoded with the events array replaced by ``[]``, and each batch as
``[`` + text + ``]``. When all of these decode, the file is their
concatenation, and JSON's grammar reads that concatenation exactly one way, so
every event is the one a whole-file decode would have produced. A cut inside a
string or inside an event leaves its batch unbalanced, which fails to decode.
Any failure (and anything unusual: no ``traceEvents`` near the top, an event
type the fast schema does not know, mixed float/text time conversion) raises
:class:`Fallback`, and decode.py decodes the file in one piece instead.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import multiprocessing
import os
import pickle
import re
import shutil
import tempfile
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from overlapscope.analyzers.kineto import decode as D
from overlapscope.analyzers.kineto.columns import build_frame_parts, merge_parts
from overlapscope.analyzers.kineto.schema import (
    FastKinetoTrace,
    PgConfigHead,
    has_begin_end,
    kept_events,
)
from overlapscope.analyzers.kineto.timeconv import needs_text_path, us_to_ns

#: Default batch size (bytes of JSON text).
CHUNK_BYTES = 32 << 20
#: ``traceEvents`` must start within this many bytes of the file's start, and the
#: array must end within this many bytes of its end (the header is small).
HEAD_LIMIT = 4 << 20
TAIL_LIMIT = 4 << 20
#: Most closing-bracket candidates tried at the end of the file.
MAX_TAIL_TRIES = 256
#: Ranges queued per pool worker: the next one waits there while a result travels back.
FEED_DEPTH = 2
#: Below this many bytes of events per extra worker, parallel decoding does not pay.
MIN_BYTES_PER_WORKER = 16 << 20

_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_SEP = re.compile(rb"\}\s*,\s*\{")


class Fallback(Exception):  # noqa: N818 - a signal, not an error
    """The batched path cannot vouch for this file: decode it whole."""


class _Source:
    """Random access to a trace's JSON text: the file itself, or gunzipped bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: bytes | None = None
        try:
            with path.open("rb") as fh:
                magic = fh.read(2)
            if magic == b"\x1f\x8b":
                self.data = gzip.decompress(path.read_bytes())
                self.size = len(self.data)
            elif path.suffix == ".gz":
                raise Fallback
            else:
                self.size = path.stat().st_size
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise Fallback from exc
        self._fd: int | None = None
        self._buf = bytearray()

    @property
    def seekable_file(self) -> bool:
        """True when workers can read byte ranges of the file themselves."""
        return self.data is None

    def read(self, start: int, end: int) -> bytes | memoryview:
        """Bytes [start, end) of the JSON text (a fresh copy, or a view of the data)."""
        end = min(end, self.size)
        if start >= end:
            return b""
        if self.data is not None:
            return memoryview(self.data)[start:end]
        out = os.pread(self._open(), end - start, start)
        if len(out) != end - start:  # the file changed under us
            raise Fallback
        return out

    def read_bracketed(self, start: int, end: int) -> memoryview:
        """``[`` + bytes [start, end) + one spare byte, in a buffer reused between calls
        (fresh pages cost more than the copy on some machines)."""
        end = min(end, self.size)
        n = max(0, end - start)
        if len(self._buf) < n + 2:
            self._buf = bytearray(n + 2)
        view = memoryview(self._buf)[: n + 2]
        view[0] = 0x5B  # "["
        if n:
            if self.data is not None:
                view[1 : n + 1] = memoryview(self.data)[start:end]
            elif os.preadv(self._open(), [view[1 : n + 1]], start) != n:
                raise Fallback
        return view

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise Fallback from exc
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Layout:
    """Where the events array lies: text [start, end) between its brackets."""

    start: int
    end: int
    header: FastKinetoTrace
    #: The file's JSON text with the events array emptied (what ``header`` was read from).
    header_text: bytes = b""


def find_layout(src: _Source) -> Layout:
    """Locate the events array and decode the header around it; Fallback if unsure."""
    head = bytes(src.read(0, HEAD_LIMIT))
    if D.is_array(head):
        return _array_layout(src, head)
    m = _EVENTS_KEY.search(head)
    if m is None:
        raise Fallback
    start = m.end()
    tail_from = max(start, src.size - TAIL_LIMIT)
    tail = bytes(src.read(tail_from, src.size))
    prefix = head[:start]  # ends with "["
    pos = len(tail)
    for _ in range(MAX_TAIL_TRIES):
        pos = tail.rfind(b"]", 0, pos)
        if pos < 0:
            break
        text = prefix + tail[pos:]
        try:
            header = D._DECODER.decode(text)
        except msgspec.MsgspecError:
            continue
        if header.traceEvents != []:
            # The events are elsewhere (or the key repeats): not our layout.
            raise Fallback
        if _ends_with_events(tail, max(0, start - tail_from), pos):
            return Layout(start, tail_from + pos, header, text)
    raise Fallback


def _array_layout(src: _Source, head: bytes) -> Layout:
    """A bare event array (the Trace Event Format's JSON Array Format): the events lie
    between the first ``[`` and the closing ``]``, or the end of the text when the
    array was left open (allowed by the format; a dangling comma is left out). There is
    no header. The batches' decoding proves the text between is whole events."""
    start = head.index(b"[") + 1
    tail_from = max(start, src.size - 4096)
    tail = bytes(src.read(tail_from, src.size)).rstrip()
    if tail.endswith(b"]"):
        end = tail_from + len(tail) - 1
    else:
        end = tail_from + len(tail.rstrip(b",").rstrip())
    if end <= start:
        raise Fallback  # empty: the whole-file path words the error
    return Layout(start, end, FastKinetoTrace(), b"{}")


def _ends_with_events(tail: bytes, lo: int, pos: int) -> bool:
    """True when tail[lo:pos] ends with whole events: the text after the last event
    boundary before ``pos`` decodes as events (a ``]`` of a key written after the
    events array, which also closes the header validly, fails here)."""
    last = None
    for m in _SEP.finditer(tail, max(lo, pos - (1 << 20)), pos):
        last = m
    begin = last.end() - 1 if last is not None else lo
    try:
        D._EVENTS_DECODER.decode(b"[" + tail[begin:pos] + b"]")
    except msgspec.MsgspecError:
        return False
    return True


def _last_boundary(buf: bytes | memoryview) -> tuple[int, int] | None:
    """(end of the last complete-looking event, start of the next) in ``buf``."""
    i = len(buf)
    while True:
        i = _rfind(buf, b"}", i)
        if i < 0:
            return None
        m = _SEP.match(buf, i)
        if m is not None:
            return i + 1, m.end() - 1


def _rfind(buf: bytes | memoryview, needle: bytes, end: int) -> int:
    """Last index of ``needle`` in buf[:end] (memoryviews have no rfind)."""
    if isinstance(buf, bytes):
        return buf.rfind(needle, 0, end)
    step = 1 << 16
    while end > 0:
        lo = max(0, end - step)
        i = bytes(buf[lo:end]).rfind(needle)
        if i >= 0:
            return lo + i
        end = lo + len(needle) - 1 if lo else 0
    return -1


def cut_points(src: _Source, start: int, end: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of batches covering the events text [start, end).

    Reads only a small window at each cut: for splitting work between processes.
    """
    ranges: list[tuple[int, int]] = []
    pos = start
    window = 1 << 20
    while end - pos > chunk_bytes * 3 // 2:
        target = pos + chunk_bytes
        found = None
        probe = target
        while found is None and probe < end:
            buf = src.read(probe, min(end, probe + window))
            data = bytes(buf)
            m = _SEP.search(data)
            if m is not None:
                found = (probe + m.start() + 1, probe + m.end() - 1)
            else:
                probe += window - 64  # a separator may straddle two windows
        if found is None:
            break
        ranges.append((pos, found[0]))
        pos = found[1]
    ranges.append((pos, end))
    return ranges


@dataclass
class ChunkResult:
    """One batch: its frames, counts and how its times were converted."""

    parts: dict[str, pl.DataFrame]
    n_events: int
    skipped: int
    kept: int
    text_times: bool


def _decode_batch(text: memoryview, base: int) -> ChunkResult:
    """Decode one batch, ``[`` + events text + ``]``, into frame parts."""
    try:
        all_events = D._EVENTS_DECODER.decode(text)
    except msgspec.MsgspecError as exc:
        raise Fallback from exc
    if has_begin_end(all_events):  # pairs may span batches: the whole-file path pairs them
        raise Fallback
    n_events = len(all_events)
    events = kept_events(all_events)
    del all_events
    ts_np, dur_np, dur_missing, usable = D.float_times(events)
    use_text = needs_text_path(ts_np) or needs_text_path(dur_np)
    if use_text:
        times = [t for t in D._TIMES_DECODER.decode(text) if t.ph in D.KEPT_PHASES]
        if len(times) != len(events):
            raise Fallback
        ts_ns, dur_ns = D.text_times(times, usable)
        del times
    else:
        ts_ns, dur_ns = us_to_ns(ts_np), us_to_ns(dur_np)
    skipped = 0
    if not usable.all():
        skipped = int((~usable).sum())
        events = [e for e, ok in zip(events, usable.tolist(), strict=True) if ok]
        ts_ns, dur_ns, dur_missing = ts_ns[usable], dur_ns[usable], dur_missing[usable]
    parts = build_frame_parts(events, ts_ns + base, dur_ns, dur_missing)
    kept = len(events)
    del events
    return ChunkResult(parts, n_events, skipped, kept, use_text)


def decode_range(src: _Source, start: int, end: int, base: int,
                 chunk_bytes: int) -> list[ChunkResult]:
    """Decode the events text [start, end) batch by batch (reading as it goes)."""
    out: list[ChunkResult] = []
    pos = start
    while pos < end:
        last = end - pos <= chunk_bytes * 3 // 2
        n = end - pos if last else chunk_bytes
        view = src.read_bracketed(pos, pos + n)
        if last:
            view[n + 1] = 0x5D  # "]"
            out.append(_decode_batch(view, base))
            break
        cut = _last_boundary(view[1 : n + 1])
        if cut is None:  # one event larger than a batch: take twice as much
            chunk_bytes *= 2
            continue
        view[cut[0] + 1] = 0x5D  # "]" right after the last complete event
        out.append(_decode_batch(view[: cut[0] + 2], base))
        pos += cut[1]
    return out


def _worker(path: str, start: int, end: int, base: int, chunk_bytes: int,
            spill_dir: str | None = None) -> list[ChunkResult] | str | None:
    """Process-pool task: one range of a file's events; None when it must fall back.

    With ``spill_dir`` the results are pickled to a file there and its path returned:
    the parent then reads them in one call, where a pipe would hand them over 64 KiB
    at a time, each piece waiting for the parent's busy decoding thread to yield.
    """
    was = gc.isenabled()
    gc.disable()
    src = _Source(Path(path))
    try:
        results = decode_range(src, start, end, base, chunk_bytes)
    except Fallback:
        return None
    finally:
        src.close()
        if was:
            gc.enable()
    if spill_dir is None:
        return results
    try:
        fd, spilled = tempfile.mkstemp(dir=spill_dir, suffix=".pickle")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(results, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError:  # a full or read-only temp dir: send them through the pipe
        return results
    return spilled


def _unspill(got: list[ChunkResult] | str | None) -> list[ChunkResult] | None:
    """A worker's results, read back (and deleted) when it spilled them to a file."""
    if not isinstance(got, str):
        return got
    try:
        with open(got, "rb") as fh:
            data = fh.read()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(got)
    return pickle.loads(data)


def decode_chunked(path: Path, *, workers: int = 1, chunk_bytes: int | None = None) -> D.FileFrames:
    """FileFrames of ``path`` decoded batch by batch; raises Fallback when unsure."""
    chunk_bytes = max(1, int(chunk_bytes or CHUNK_BYTES))
    src = _Source(path)
    try:
        layout = find_layout(src)
        header = layout.header
        base = int(header.baseTimeNanoseconds or 0)
        span = layout.end - layout.start
        workers = max(1, min(int(workers or 1), span // MIN_BYTES_PER_WORKER + 1))
        if workers > 1 and src.seekable_file:
            results = _decode_parallel(src, layout, base, chunk_bytes, workers)
        else:
            results = decode_range(src, layout.start, layout.end, base, chunk_bytes)
        # The process groups, read here from the small header so that the analyses
        # need not decode the whole file again (skew.process_groups). Left unknown
        # (None) for gzip data not named .gz: that reader would not gunzip it.
        pg_config = (pg_config_of(layout.header_text)
                     if (src.data is not None) == path.name.endswith(".gz") else None)
    finally:
        src.close()
    return _assemble(path, header, base, results, pg_config)


def pg_config_of(header_text: bytes) -> list[dict[str, Any]]:
    """``distributedInfo.pg_config`` of a header ([] when absent or malformed): read
    here once, so that the analyses need not decode the whole file again for it."""
    try:
        head = msgspec.json.decode(header_text, type=PgConfigHead)
    except msgspec.MsgspecError:
        return []
    return (head.distributedInfo.pg_config or []) if head.distributedInfo else []


def _decode_parallel(src: _Source, layout: Layout, base: int, chunk_bytes: int,
                     workers: int) -> list[ChunkResult]:
    """Ranges of the events text shared between this process and ``workers - 1`` others.

    The text is cut into ranges of about one batch each. Every process claims the next
    unclaimed range when it is free (a shared counter): a worker that starts late or
    runs slower simply claims fewer, so the tail is at most one range. Each pool worker
    is fed by a thread here that keeps :data:`FEED_DEPTH` claimed ranges queued for it
    and collects their results; this process decodes the ranges it claims itself,
    meanwhile.
    """
    ranges = cut_points(src, layout.start, layout.end, chunk_bytes)
    if len(ranges) == 1:
        return decode_range(src, layout.start, layout.end, base, chunk_bytes)
    out: list[list[ChunkResult] | None] = [None] * len(ranges)
    claim = _Claims(len(ranges))
    failed: list[BaseException] = []
    pool = ProcessPoolExecutor(min(workers - 1, len(ranges) - 1),
                               mp_context=multiprocessing.get_context("spawn"))

    def feed() -> None:
        """Keep one pool worker busy: two claimed ranges in flight (the next is queued
        while a result travels back), store what comes back."""
        try:
            queued: deque[tuple[int, Future[Any]]] = deque()
            while True:
                while len(queued) < FEED_DEPTH and (i := claim.next()) is not None:
                    queued.append((i, pool.submit(_worker, str(src.path), *ranges[i], base,
                                                  chunk_bytes, spill_dir)))
                if not queued:
                    return
                i, fut = queued.popleft()
                got = _unspill(fut.result())
                if got is None:  # the worker could not vouch for its range
                    failed.append(Fallback())
                    claim.stop()
                    return
                out[i] = got
        except Exception as exc:  # noqa: BLE001 - no processes here (e.g. a daemon): give up on
            failed.append(exc)  # the pool; this process decodes what is left (below)

    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(pool._max_workers)]
    try:  # workers hand their results over as files here (see _worker)
        spill_dir: str | None = tempfile.mkdtemp(prefix="overlapscope-decode-")
    except OSError:
        spill_dir = None
    try:
        for t in feeders:
            t.start()
        while (i := claim.next()) is not None:
            out[i] = decode_range(src, *ranges[i], base, chunk_bytes)
        for t in feeders:
            t.join()
    except BaseException:
        claim.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
    if any(isinstance(exc, Fallback) for exc in failed):
        raise Fallback
    for i, got in enumerate(out):  # ranges lost with a broken pool: decode them here
        if got is None:
            out[i] = decode_range(src, *ranges[i], base, chunk_bytes)
    return [r for rs in out if rs is not None for r in rs]


class _Claims:
    """Hands out range indices 0, 1, ... once each, to any thread; ``stop`` ends it."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._next = 0
        self._lock = threading.Lock()

    def next(self) -> int | None:
        with self._lock:
            if self._next >= self._n:
                return None
            self._next += 1
            return self._next - 1

    def stop(self) -> None:
        with self._lock:
            self._next = self._n


def _assemble(path: Path, trace: FastKinetoTrace, base: int,
              results: list[ChunkResult], pg_config: list[dict[str, Any]] | None = None,
              ) -> D.FileFrames:
    n_events = sum(r.n_events for r in results)
    if n_events == 0:
        raise Fallback  # the whole-file path words the error
    text_modes = {r.text_times for r in results if r.kept}
    if len(text_modes) > 1:
        # Epoch-scale times in some batches only: the whole-file decode converts every
        # event from its text, which may round a 4th decimal differently. Be exact.
        raise Fallback
    dist = trace.distributedInfo
    props = trace.deviceProperties or []
    built = merge_parts([r.parts for r in results])
    return D.FileFrames(
        path=str(path),
        rank=dist.rank if dist and dist.rank is not None else None,
        world_size=dist.world_size if dist else None,
        backend=dist.backend if dist else None,
        num_sms=next((p.numSms for p in props if p.numSms), None),
        device_name=next((p.name for p in props if p.name), None),
        n_events=n_events,
        base_time_ns=base,
        overlapscope=trace.overlapscope or {},
        skipped_events=sum(r.skipped for r in results),
        pg_config=pg_config,
        **built,
    )
