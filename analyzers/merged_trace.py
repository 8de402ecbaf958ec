"""One Chrome/Perfetto trace of a whole run: every rank its own process, on one clock.

``export_merged(paths, out)`` streams every rank's original Kineto events into one
Chrome trace JSON (gzip when ``out`` ends in ``.gz``), with the clock model of
:mod:`~overlapscope.analyzers.skew` applied, so Perfetto shows the same aligned
multi-rank view as the analyzers.

* **Times.** Each event's absolute time (``baseTimeNanoseconds`` + ``ts``, exact
  to the ns: epoch-scale ``ts`` are read from the JSON text) is put on the
  analyzers' axis (ns from the run origin) and corrected there (``ts' = ts -
  c(ts)``; for ``X`` events both ends, ``dur' = end' - ts'``, with the rounding
  of :func:`~overlapscope.analyzers.skew.correct_frames`). It is written back as
  microseconds with three decimals (exact ns) relative to the reference rank's
  ``baseTimeNanoseconds``: without a correction the reference rank's ``ts`` keep
  their values. The analyzers' ``ts_ns`` of an event is ``ts * 1000 +
  baseTimeNanoseconds - origin_ns``.
* **Processes.** Rank ``r`` is process ``r + 1`` (Perfetto reserves pid 0),
  named ``rank r`` and sorted by rank; each original (pid, tid) of the rank is a
  thread of it (``host thread 1234 (python)``, ``GPU 0 stream 7``, ``Spans``).
  The original metadata (``M``) events are replaced by these names.
* **Ids.** Flow and async ids (``id``, ``bind_id``) become ``r * 10**12 + id``
  (or the string ``"r<r>:<id>"`` when that does not fit), so arrows never join
  events of different ranks. Global instants (``"s": "g"``) become
  process-scoped: each rank's markers stay on its own process.
* **Memory.** One rank's file is decoded at a time and written in batches. Only
  the fields we rewrite are decoded; the other Chrome trace format fields stay
  raw JSON text, written back byte for byte (keys outside the format are dropped).

The top-level ``"overlapscope"`` object records the alignment decision, the
clock model applied and per rank its process id, offset, drift and event counts.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import compress
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import polars as pl
from msgspec import UNSET, Raw, UnsetType

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.kineto.columns import GPU_CATS
from overlapscope.analyzers.kineto.decode import MAX_DUR_US, MAX_TS_US, read_bytes
from overlapscope.analyzers.kineto.timeconv import (
    decimal_text_us_to_ns,
    needs_text_path,
    us_to_ns,
)
from overlapscope.analyzers.load import (
    TRACE_SUFFIXES,
    _assemble,
    _assign_ranks,
    load_file,
    load_run,
)
from overlapscope.analyzers.skew import ClockModel, estimate_skew, needs_correction

ALIGN_MODES = ("auto", "on", "none")
#: Flow/async ids of rank r become r * FLOW_ID_STRIDE + id (exact in a float64 too).
FLOW_ID_STRIDE = 10**12
#: Events encoded and written per batch.
BATCH_EVENTS = 50_000
_GPU_CATS = frozenset(msgspec.json.encode(c) for c in [*GPU_CATS, "gpu_user_annotation"])
_GPU_LABEL = re.compile(r"GPU (\d+)")
_HOST_THREAD_NAME = re.compile(r"thread \d+ \((.*)\)")

Id = int | str


class _Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One Chrome trace event: the fields we rewrite are decoded, the rest kept as raw
    JSON text (written back byte for byte); an empty Raw is an absent field."""

    ph: str = ""
    cat: Raw = Raw()
    name: Raw = Raw()
    pid: Id | UnsetType = UNSET
    tid: Id | UnsetType = UNSET
    ts: float | str | None = None
    dur: float | str | None = None
    id: Id | UnsetType = UNSET
    bind_id: Id | UnsetType = UNSET
    s: Raw = Raw()
    bp: Raw = Raw()
    args: Raw = Raw()
    tts: Raw = Raw()
    tdur: Raw = Raw()
    id2: Raw = Raw()
    scope: Raw = Raw()
    cname: Raw = Raw()
    flow_in: Raw = Raw()
    flow_out: Raw = Raw()
    sf: Raw = Raw()
    stack: Raw = Raw()
    esf: Raw = Raw()
    estack: Raw = Raw()


class _File(msgspec.Struct):
    traceEvents: list[_Event] | None = None  # noqa: N815 - Chrome's spelling
    baseTimeNanoseconds: int | None = None  # noqa: N815


class _Times(msgspec.Struct, gc=False):
    ts: Raw = Raw()
    dur: Raw = Raw()


class _TimesFile(msgspec.Struct):
    traceEvents: list[_Times] = []  # noqa: N815, RUF012


class _RawFile(msgspec.Struct):
    traceEvents: list[Raw] | None = None  # noqa: N815
    baseTimeNanoseconds: int | None = None  # noqa: N815


_FILE = msgspec.json.Decoder(_File, strict=False)
_RAW_FILE = msgspec.json.Decoder(_RawFile, strict=False)
_EVENT = msgspec.json.Decoder(_Event, strict=False)
_TIMES = msgspec.json.Decoder(_TimesFile)
_ENCODER = msgspec.json.Encoder()
_GLOBAL_SCOPE = Raw(b'"g"')


@dataclass
class RankExport:
    """What one rank contributed to the merged trace."""

    rank: int
    pid: int
    source: str
    offset_ns: float
    drift_ppm: float
    events: int = 0
    x_events: int = 0
    skipped: int = 0
    threads: int = 0
    #: Events written with a negative ts (before the output's base time).
    negative_ts: int = 0


@dataclass
class MergedTrace:
    """Summary of an export: where, what, and which clock correction was applied."""

    out: str
    align: str
    corrected: bool
    reason: str
    origin_ns: int
    base_ns: int
    ranks: list[RankExport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.ranks)

    @property
    def x_events(self) -> int:
        return sum(r.x_events for r in self.ranks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events": self.events, "x_events": self.x_events}


#: Called with (stage, rank, done, total): stage "load" (decoding the run and
#: estimating clocks; rank None) or "write" (events of ``rank`` written so far).
ExportProgress = Callable[[str, int | None, int, int], None]


# --------------------------------------------------------------------------- inputs


def load_traces(paths: Sequence[str | Path], *, cache: bool = True,
                progress: ExportProgress | None = None) -> TraceFrames:
    """A run as the loader sees it: one run directory or trace file, or several trace
    files of one run (ranks assigned as for a directory). Raises TraceError."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise TraceError(".", "no run or trace file given")

    def tick(file: Path, i: int, n: int) -> None:
        if progress:
            progress("load", None, i, n)

    if len(paths) == 1:
        frames = load_run(paths[0], cache=cache, progress=tick)
    else:
        for p in paths:
            if not p.exists():
                raise TraceError(p, "no such file or directory")
            if not p.is_file():
                raise TraceError(p, "several inputs must all be trace files of one run "
                                    "(or give the run directory alone)")
        dup = next((p for i, p in enumerate(paths) if p.resolve() in
                    {q.resolve() for q in paths[:i]}), None)
        if dup is not None:
            raise TraceError(dup, "given twice")
        loaded = []
        for i, p in enumerate(paths):
            tick(p, i, len(paths))
            loaded.append(load_file(p, cache=cache))
        frames = _assemble(paths[0].parent, loaded, _assign_ranks(paths, loaded), {}, None)
    for path in frames.ranks["path"].to_list():
        if path is None or not str(path).endswith(TRACE_SUFFIXES):
            raise TraceError(path or paths[0],
                             "not a Kineto trace (.json / .json.gz): nothing to export")
    return frames


def clock_for_export(frames: TraceFrames, align: str) -> tuple[ClockModel | None, str, list[str]]:
    """(model to apply or None, why, notes on the model): the decision of
    ``aligned_frames``."""
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, not {align!r}")
    if align == "none":
        return None, "--align none: times unchanged", []
    if frames.ranks.height < 2:
        return None, "a single rank: times unchanged", []
    res = estimate_skew(frames)
    if not res.has_anchors:
        return None, ("no cross-rank anchors (synchronising collectives or matched "
                      "send/recv pairs): times unchanged"), []
    if align == "auto" and not needs_correction(res):
        return None, ("no causality violation and no significant offset (--align auto): "
                      "times unchanged"), []
    if res.model.is_identity:
        return None, "the estimated clocks agree: times unchanged", []
    return res.model, f"clock model applied (reference rank {res.model.reference})", res.notes


# --------------------------------------------------------------------------- times


def _us_text(ns: np.ndarray) -> list[str]:
    """int64 ns -> exact microsecond text with three decimals (``-0.250``, ``12.000``)."""
    s = pl.Series(ns, dtype=pl.Int64)
    a = s.abs()
    txt = pl.select(
        pl.when(pl.lit(s) < 0).then(pl.lit("-")).otherwise(pl.lit(""))
        + (pl.lit(a) // 1000).cast(pl.Utf8) + "."
        + (pl.lit(a) % 1000).cast(pl.Utf8).str.zfill(3)
    ).to_series()
    return txt.to_list()


def _floats(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (quoted digits too) as float64, and which are finite (absent: not)."""
    try:
        arr = np.array(values, dtype=np.float64)  # None -> nan
    except (TypeError, ValueError, OverflowError):
        arr = pl.Series(values, dtype=pl.Float64, strict=False).fill_null(np.nan).to_numpy()
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), np.isfinite(arr)


def _event_times(raw: bytes, events: list[_Event], exact: bool) -> tuple[np.ndarray, ...]:
    """(ts_ns, dur_ns, ts_ok, dur_ok) of every event, exact to the ns.

    float64 keeps Kineto's three decimals below 2**43 µs; above (epoch-scale
    timestamps) the digits are read from the JSON text, as the loader does, when
    ``exact`` (every event decoded, so the text's events line up with ours).
    """
    ts_f, ts_ok = _floats([e.ts for e in events])
    dur_f, dur_ok = _floats([e.dur for e in events])
    if exact and (needs_text_path(ts_f) or needs_text_path(dur_f)):
        times = _TIMES.decode(raw).traceEvents
        if len(times) == len(events):
            def text(v: Raw) -> str:
                return bytes(v).decode(errors="replace").strip().strip('"') or "0"

            ts = decimal_text_us_to_ns(pl.Series([text(t.ts) for t in times], dtype=pl.Utf8))
            dur = decimal_text_us_to_ns(pl.Series([text(t.dur) for t in times], dtype=pl.Utf8))
            return (ts.fill_null(0).to_numpy(), dur.fill_null(0).to_numpy(),
                    ts_ok & ts.is_not_null().to_numpy(), dur_ok & dur.is_not_null().to_numpy())
    return us_to_ns(ts_f), us_to_ns(dur_f), ts_ok, dur_ok


# --------------------------------------------------------------------------- threads


@dataclass
class _Threads:
    """The rank's (original pid, tid) -> thread of its one process, and their names."""

    threads: dict[tuple[Id, Id], int] = field(default_factory=dict)
    gpu_pids: dict[Id, int] = field(default_factory=dict)  # pid -> device
    thread_names: dict[tuple[Id, Id], str] = field(default_factory=dict)

    def tid(self, pid: Id, tid: Id) -> int:
        key = (pid, tid)
        new = self.threads.get(key)
        if new is None:
            new = self.threads[key] = len(self.threads) + 1  # tid 0 is special to Perfetto
        return new

    def metadata(self, ev: _Event) -> None:
        """Learn names and GPU devices from an original ``M`` event."""
        try:
            args = msgspec.json.decode(bytes(ev.args)) if ev.args else {}
        except msgspec.DecodeError:
            return
        if not isinstance(args, dict):
            return
        name = bytes(ev.name)
        if name == b'"process_labels"':
            m = _GPU_LABEL.search(str(args.get("labels", "")))
            if m:
                self.gpu_pids[_key(ev.pid)] = int(m.group(1))
        elif name == b'"thread_name"' and args.get("name"):
            # Kineto may name a thread twice ("pt_gloo_runloop", then "python"): the first
            # is the more specific
            key = (_key(ev.pid), _key(ev.tid))
            self.thread_names.setdefault(key, str(args["name"]).strip())

    def gpu_device(self, pid: Id) -> None:
        """``pid`` holds GPU activities: a device (Kineto's pid is the device index)."""
        if pid not in self.gpu_pids:
            self.gpu_pids[pid] = pid if isinstance(pid, int) else len(self.gpu_pids)

    def names(self) -> list[tuple[int, str, tuple]]:
        """(new tid, thread name, sort key) of every thread that holds events."""
        # host processes have OS pids; Kineto's overhead track is pid -1
        host_pids = {p for p, _ in self.threads
                     if isinstance(p, int) and p > 0 and p not in self.gpu_pids}
        out = []
        for (pid, tid), new in self.threads.items():
            if pid in self.gpu_pids:
                out.append((new, f"GPU {self.gpu_pids[pid]} stream {tid}",
                            (1, self.gpu_pids[pid], _num(tid), str(tid))))
            elif pid in host_pids:
                orig = self.thread_names.get((pid, tid), "")
                m = _HOST_THREAD_NAME.fullmatch(orig)
                label = m.group(1) if m else orig
                where = f"host pid {pid} thread {tid}" if len(host_pids) > 1 else (
                    f"host thread {tid}")
                out.append((new, f"{where} ({label})" if label else where,
                            (0, pid, tid != pid, _num(tid), str(tid))))
            else:  # Kineto's "Spans" / "Traces" pseudo processes, overhead (-1), labels
                proc = (f"pid {pid}" if isinstance(pid, int) else pid) or "no pid"
                name = proc if tid in (0, "", pid) else f"{proc}: {tid}"
                out.append((new, name, (2, str(pid), _num(tid), str(tid))))
        return out


def _key(v: Id | UnsetType) -> Id:
    """pid/tid as the thread key: absent reads as 0 (as the loader does), digits as int."""
    if v is UNSET:
        return 0
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return v


def _num(v: Id) -> int:
    return v if isinstance(v, int) else -1


def _flow_id(v: Id, rank: int) -> Id:
    if isinstance(v, int) and 0 <= v < FLOW_ID_STRIDE and rank * FLOW_ID_STRIDE < 2**53 - v:
        return rank * FLOW_ID_STRIDE + v
    return f"r{rank}:{v}"


# --------------------------------------------------------------------------- one rank


def _decode_events(path: Path) -> tuple[bytes, list[_Event], int, int]:
    """(JSON text, events, baseTimeNanoseconds, misfit events skipped) of one file."""
    raw = read_bytes(path)
    try:
        top = _FILE.decode(raw)
        return raw, top.traceEvents or [], int(top.baseTimeNanoseconds or 0), 0
    except msgspec.ValidationError:
        pass  # some event does not fit: decode them one by one, skip the misfits
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"not valid JSON ({exc})") from None
    try:
        top_raw = _RAW_FILE.decode(raw)
    except msgspec.MsgspecError as exc:
        raise TraceError(path, f"not a Kineto/Chrome trace ({exc})") from None
    events, skipped = [], 0
    for item in top_raw.traceEvents or []:
        try:
            events.append(_EVENT.decode(item))
        except msgspec.MsgspecError:
            skipped += 1
    return raw, events, int(top_raw.baseTimeNanoseconds or 0), skipped


def _write_rank(
    sink: _Sink, path: Path, rank: RankExport, model: ClockModel | None, origin_ns: int,
    base_ns: int, progress: ExportProgress | None,
) -> None:
    raw, events, file_base, skipped = _decode_events(path)
    ts_ns, dur_ns, ts_ok, dur_ok = _event_times(raw, events, exact=skipped == 0)
    del raw  # (the events' raw fields still refer to it)
    threads = _Threads()
    meta = np.array([ev.ph == "M" for ev in events], dtype=bool)
    for ev in compress(events, meta.tolist()):
        threads.metadata(ev)
    kept = list(compress(events, (~meta).tolist()))
    del events
    ts_ns, dur_ns, ts_ok, dur_ok = ts_ns[~meta], dur_ns[~meta], ts_ok[~meta], dur_ok[~meta]
    is_x = np.array([e.ph == "X" for e in kept], dtype=bool)
    dur_ns = np.where(is_x & dur_ok, dur_ns, 0)  # an X without dur is zero-length (loader)
    usable = ts_ok & (np.abs(ts_ns) <= MAX_TS_US * 1000) & (
        (dur_ns >= 0) & (dur_ns <= MAX_DUR_US * 1000))
    if not usable.all():
        skipped += int((~usable).sum())
        kept = list(compress(kept, usable.tolist()))
        ts_ns, dur_ns, is_x = ts_ns[usable], dur_ns[usable], is_x[usable]
    # the analyzers' axis: ns from the run origin; corrected there; then rebased
    start = ts_ns + (file_base - origin_ns)
    end = start + dur_ns
    if model is not None:
        ranks = np.full(start.size, rank.rank, dtype=np.int32)
        start = model.correct(ranks, start)
        end = np.where(is_x, model.correct(ranks, end), start)
    shift = origin_ns - base_ns
    ts_txt = _us_text(start + shift)
    rank.negative_ts = int((start + shift < 0).sum())
    dur_txt = _us_text(end - start)
    tids: dict[tuple[Any, Any], int] = {}  # raw (pid, tid) -> new tid: skips _key per event
    pid, r, scope = rank.pid, rank.rank, Raw(b'"p"')
    gpu_pids: set[Any] = set()
    for ev, t, d, x in zip(kept, ts_txt, dur_txt, is_x.tolist(), strict=True):
        ev.ts = Raw(t)
        if x:
            ev.dur = Raw(d)
        new = tids.get((ev.pid, ev.tid))
        if new is None:
            new = tids[(ev.pid, ev.tid)] = threads.tid(_key(ev.pid), _key(ev.tid))
        if ev.cat and ev.pid not in gpu_pids and bytes(ev.cat) in _GPU_CATS:
            gpu_pids.add(ev.pid)  # holds GPU activities: a device
            threads.gpu_device(_key(ev.pid))
        ev.tid, ev.pid = new, pid
        if ev.id is not UNSET:
            ev.id = _flow_id(ev.id, r)
        if ev.bind_id is not UNSET:
            ev.bind_id = _flow_id(ev.bind_id, r)
        if ev.s and ev.s == _GLOBAL_SCOPE and ev.ph in ("i", "I"):
            ev.s = scope  # a rank's markers belong to its process
    total = len(kept)
    for lo in range(0, total, BATCH_EVENTS):
        sink.events(_ENCODER.encode(kept[lo:lo + BATCH_EVENTS]))
        if progress:
            progress("write", rank.rank, min(lo + BATCH_EVENTS, total), total)
    first = ts_txt[int(np.argmin(start))] if total else "0.000"
    sink.events(_ENCODER.encode(_rank_metadata(rank, threads, path, first)))
    rank.events, rank.x_events = total, int(is_x.sum())
    rank.skipped, rank.threads = skipped, len(threads.threads)


def _rank_metadata(rank: RankExport, threads: _Threads, path: Path, ts: str) -> list[dict]:
    """process_name / process_sort_index / process_labels and, per thread,
    thread_name / thread_sort_index (at the rank's first event: Perfetto rejects
    events without a time)."""
    t = Raw(ts.encode())

    def m(name: str, tid: int, args: dict) -> dict:
        return {"ph": "M", "name": name, "pid": rank.pid, "tid": tid, "ts": t, "args": args}

    out = [m("process_name", 0, {"name": f"rank {rank.rank}"}),
           m("process_sort_index", 0, {"sort_index": rank.rank}),
           m("process_labels", 0, {"labels": path.name})]
    for i, (tid, name, _) in enumerate(sorted(threads.names(), key=lambda x: x[2])):
        out += [m("thread_name", tid, {"name": name}),
                m("thread_sort_index", tid, {"sort_index": i})]
    return out


# --------------------------------------------------------------------------- output


class _Sink:
    """The output document, written as a stream: events, then the top-level fields."""

    def __init__(self, fh: IO[bytes], base_ns: int) -> None:
        self.fh, self.first = fh, True
        # no displayTimeUnit: Perfetto would read "ns" as the unit of ts
        fh.write(b'{"baseTimeNanoseconds":%d,"traceEvents":[\n' % base_ns)

    def events(self, encoded_list: bytes) -> None:
        body = encoded_list[1:-1]  # "[a,b]" -> "a,b"
        if not body:
            return
        if not self.first:
            self.fh.write(b",\n")
        self.fh.write(body)
        self.first = False

    def close(self, fields: dict[str, Any]) -> None:
        self.fh.write(b"\n]")
        for k, v in fields.items():
            self.fh.write(b"," + _ENCODER.encode(k) + b":" + _ENCODER.encode(v))
        self.fh.write(b"}\n")


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[IO[bytes]]:
    """A file handle whose content replaces ``out`` only when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as raw:
            if out.name.endswith(".gz"):
                with gzip.GzipFile(filename=out.name[:-3], mode="wb", fileobj=raw,
                                   compresslevel=6, mtime=0) as fh:
                    yield fh
            else:
                yield raw
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def export_merged(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    align: str = "auto",
    cache: bool = True,
    progress: ExportProgress | None = None,
    clock: ClockModel | None = None,
) -> MergedTrace:
    """Write the run at ``paths`` (see :func:`load_traces`) as one merged trace at ``out``.

    ``align``: "auto" | "on" | "none", as ``analyze --align``. A run with one rank,
    without cross-rank anchors, or with ``align="none"`` keeps its times; the
    summary's ``reason`` says which. ``clock``: apply this model (times in ns from
    the run origin, as :class:`~overlapscope.analyzers.skew.ClockModel`) instead of
    estimating one. Raises TraceError naming a bad input file.
    """
    out = Path(out)
    frames = load_traces(paths, cache=cache, progress=progress)
    if clock is not None:
        model, reason, notes = clock, "clock model given by the caller", []
    else:
        model, reason, notes = clock_for_export(frames, align)
    if progress:
        progress("load", None, 1, 1)
    origin = int(frames.meta.get("origin_ns") or 0)
    rows = frames.ranks.sort("rank").select("rank", "path", "base_time_ns").rows()
    ref = model.reference if model is not None and model.reference is not None else rows[0][0]
    base = next(int(b or 0) for r, _, b in rows if r == ref)
    del frames  # from here on, memory holds one rank's trace at a time
    ranks = [RankExport(
        rank=int(r), pid=int(r) + 1, source=str(p),
        offset_ns=float(model.offset_ns.get(r, 0.0)) if model else 0.0,
        drift_ppm=float(model.drift_ppm.get(r, 0.0)) if model else 0.0,
    ) for r, p, _ in rows]
    summary = MergedTrace(out=str(out), align=align, corrected=model is not None, reason=reason,
                          origin_ns=origin, base_ns=base, ranks=ranks, notes=list(notes))
    with _atomic_output(out) as fh:
        sink = _Sink(fh, base)
        for rank in ranks:
            _write_rank(sink, Path(rank.source), rank, model, origin, base, progress)
        skipped = sum(r.skipped for r in ranks)
        if skipped:
            summary.notes.append(f"{skipped} unusable events (no or absurd time, misfit "
                                 "fields) left out")
        negative = sum(r.negative_ts for r in ranks)
        if negative:
            summary.notes.append(f"{negative} events lie before baseTimeNanoseconds (negative "
                                 "ts): Perfetto drops them, chrome://tracing shows them")
        sink.close({
            "overlapscope": {
                "merged": True,
                "align": align,
                "corrected": summary.corrected,
                "reason": reason,
                "origin_ns": origin,
                "clock_model": None if model is None else {
                    "reference": model.reference,
                    "ranks": {str(r.rank): {"offset_ns": r.offset_ns, "drift_ppm": r.drift_ppm}
                              for r in ranks}},
                "ranks": [{"rank": r.rank, "pid": r.pid, "source": r.source,
                           "offset_ns": r.offset_ns, "drift_ppm": r.drift_ppm,
                           "events": r.events, "skipped": r.skipped,
                           "negative_ts": r.negative_ts} for r in ranks],
            },
        })
    return summary
