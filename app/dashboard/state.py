"""The dashboard's server-side state: opened runs, their background loading, uploads.

One :class:`DashboardState` per app (made by the app factory, never global). Runs
load on one background thread through the batch API (``analyze(..., keep_frames=
True, progress=...)``); the page polls :meth:`DashboardState.snapshot` for
progress. The batch API's caches (decoded frames as parquet, and the Report
cache where there is one) make a reopened run fast; the timeline (lanes, work items
and range-max index) is cached next to them (``analyzers.timeline.cached_timeline``,
keyed by the content hashes of the run's files), so a reopened run does not rebuild it.

Multi-rank runs get a second timeline on clock-corrected times (``skew.estimate_skew``
of the raw frames, computed once per run here; ``skew.correct_frames``), cached under
its own key; the Timeline page's "clock" toggle only picks which one to show.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from overlapscope.analyzers import Progress, ReportOptions, RunResult, analyze
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.load import load_run, run_files
from overlapscope.analyzers.timeline import (
    Timeline,
    cached_timeline,
    clock_variant,
    load_cached_timeline,
    load_clock_info,
    store_clock_info,
    warp_timeline,
)
from overlapscope.app.dashboard.paths import UPLOAD_SUFFIXES, PathError, resolve_under

Status = Literal["queued", "loading", "ready", "error"]
Clock = Literal["raw", "corrected"]


class UploadError(ValueError):
    """An upload the dashboard refuses, with the reason in words."""


@dataclass
class RunEntry:
    """One opened run: where it comes from, how far its loading got, its results."""

    id: str
    path: Path
    label: str
    source: str  # "command line", "opened", "uploaded"
    status: Status = "queued"
    stage: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    result: RunResult | None = None
    timeline: Timeline | None = None  # on the time axis the report used (``clock``)
    warps: Timeline | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: timelines by clock: "raw", and "corrected" where the skew estimate has anchors
    timelines: dict[str, Timeline] = field(default_factory=dict)
    clock: Clock = "raw"  # the report's time axis (facts["time_axis"])
    clock_note: str = ""  # why there is no clock toggle, or what "corrected" means
    skew: Any = None  # skew.SkewResult of the raw frames (None for a single rank)

    def timeline_on(self, clock: str | None) -> Timeline | None:
        """The timeline on ``clock`` ("raw" / "corrected"); the default one otherwise."""
        return self.timelines.get(str(clock), self.timeline) if clock else self.timeline

    @property
    def has_clock_toggle(self) -> bool:
        """True when both a raw and a corrected timeline exist."""
        return "raw" in self.timelines and "corrected" in self.timelines

    @property
    def ready(self) -> bool:
        """True when the report (and timeline) can be shown."""
        return self.status == "ready" and self.result is not None

    def progress_text(self) -> str:
        """One line saying where loading stands."""
        if self.status == "error":
            return f"{self.label}: failed: {self.error}"
        if self.status == "ready":
            details = self.extra.get("details")
            tail = "; details loading" if details == "loading" else (
                f"; details {details}" if details not in (None, "ready") else "")
            return (f"{self.label}: ready ({self.seconds:.1f} s{tail})" if self.seconds
                    else self.label)
        if self.total:
            return f"{self.label}: {self.stage} {self.done}/{self.total}"
        return f"{self.label}: {self.stage}"


@dataclass
class ClockViews:
    """A run's timelines on each clock, the default one and what the toggle says."""

    timelines: dict[str, Timeline]
    default: Clock
    note: str
    skew: Any = None
    cached: dict[str, bool] = field(default_factory=dict)


NO_ANCHORS_NOTE = ("no cross-rank anchors (synchronising collectives or matched send/recv "
                   "pairs): raw clocks only")


def _views(raw: Timeline, corrected: Timeline | None, reference: int | None, ranks: int,
           time_axis: str | None, skew: Any, cached: dict[str, bool]) -> ClockViews:
    """ClockViews from the timelines and what the skew estimate found."""
    tls: dict[str, Timeline] = {"raw": raw}
    if ranks < 2:
        return ClockViews(tls, "raw", "single rank: one clock", skew, cached)
    if corrected is None:
        return ClockViews(tls, "raw", NO_ANCHORS_NOTE, skew, cached)
    tls["corrected"] = corrected
    note = (f"corrected: every rank on rank {reference}'s clock (skew table)"
            if reference is not None else "corrected: ranks on one clock (skew table)")
    default: Clock = "corrected" if time_axis == "corrected" else "raw"
    return ClockViews(tls, default, note, skew, cached)


def clock_views(
    frames: Any, files: list[Path] | None, *, rules: Any = None, cache: bool = True,
    time_axis: str | None = "raw",
) -> ClockViews:
    """Raw and (multi-rank runs with skew anchors) clock-corrected timelines of
    ``frames`` (RAW, uncorrected frames, as ``analyze(keep_frames=True)`` gives).

    The skew estimate is made once here and what it found is cached with the
    timelines (``timeline.store_clock_info``), for :func:`cached_clock_views`.
    ``files``: the run's trace files, for the timeline cache (None or ``cache=False``:
    built, not cached); the corrected timeline's cache key names the clock model.
    ``time_axis``: the report's ``facts["time_axis"]``, the default when the corrected
    timeline exists.
    """
    from overlapscope.analyzers.skew import correct_frames, estimate_skew

    use_cache = cache and bool(files)

    def build(fr: Any, variant: str | None) -> tuple[Timeline, bool]:
        return cached_timeline(list(files or []), fr, rules=rules, cache=use_cache,
                               variant=variant)

    raw, hit = build(frames, None)
    cached = {"raw": hit}
    ranks = frames.ranks.height
    skew = estimate_skew(frames) if ranks >= 2 else None
    corrected = model = None
    if skew is not None and skew.has_anchors:
        model = skew.model
        corrected, cached["corrected"] = build(correct_frames(frames, model),
                                               clock_variant(model))
    if use_cache:
        store_clock_info(list(files or []), rules, {
            "ranks": ranks, "model": None if model is None else {
                "reference": None if model.reference is None else int(model.reference),
                "offset_ns": {str(r): float(v) for r, v in model.offset_ns.items()},
                "drift_ppm": {str(r): float(v) for r, v in model.drift_ppm.items()}}})
    return _views(raw, corrected, model.reference if model else None, ranks, time_axis,
                  skew, cached)


def cached_clock_views(
    files: list[Path], *, rules: Any = None, time_axis: str | None = "raw"
) -> ClockViews | None:
    """The ClockViews :func:`clock_views` made for these files before, from the caches
    alone (no frames, no skew estimate); None when any part is missing."""
    from overlapscope.analyzers.skew import ClockModel

    info = load_clock_info(files, rules)
    raw = load_cached_timeline(files, rules) if info is not None else None
    if info is None or raw is None:
        return None
    corrected = model = None
    if info.get("model") is not None:
        m = info["model"]
        model = ClockModel({int(r): v for r, v in m["offset_ns"].items()},
                           {int(r): v for r, v in m["drift_ppm"].items()}, m["reference"])
        corrected = load_cached_timeline(files, rules, clock_variant(model))
        if corrected is None:
            return None
    cached = {"raw": True, **({"corrected": True} if corrected is not None else {})}
    return _views(raw, corrected, model.reference if model else None, int(info["ranks"]),
                  time_axis, None, cached)


def _label(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path.name


class DashboardState:
    """Opened runs and the allowed roots of one dashboard app."""

    def __init__(
        self,
        roots: list[Path],
        *,
        max_upload_mb: float = 100,
        cache: bool = True,
        workers: int | None = None,
        options: ReportOptions | None = None,
    ) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        self.max_upload_bytes = int(max_upload_mb * (1 << 20))
        self.cache = cache
        self.workers = workers
        self.options = options or ReportOptions()
        self.runs: dict[str, RunEntry] = {}
        self.version = 0  # bumped whenever a run's status changes
        self.extra: dict[str, Any] = {}  # "select": id of a run to show once it is ready
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlapscope-load")
        self._upload_dir: Path | None = None

    # ------------------------------------------------------------------ opening

    def open(self, path: Path, source: str = "command line") -> RunEntry:
        """Queue ``path`` for loading (or return the entry that already has it)."""
        path = Path(path).resolve()
        with self._lock:
            for entry in self.runs.values():
                if entry.path == path and entry.status != "error":
                    return entry
            rid = str(len(self.runs))
            label = _label(path)
            if source == "uploaded":
                label = f"upload: {path.name}"
            entry = RunEntry(rid, path, label, source)
            self.runs[rid] = entry
            self.version += 1
        self._pool.submit(self._load, entry)
        return entry

    def open_relative(self, value: str, root: int | None = None) -> RunEntry:
        """Open a path typed in the page, relative to root ``root`` (or any root).

        Raises PathError when the path is refused (see :mod:`.paths`).
        """
        roots = self.roots if root is None else [self.roots[int(root)]]
        return self.open(resolve_under(value, roots), source="opened")

    def _set(self, entry: RunEntry, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(entry, k, v)
            self.version += 1

    def _reopen(self, entry: RunEntry, t0: float) -> bool:
        """A run analyzed before: its Report and timelines straight from the caches, ready
        at once; the frames (click details, topology, warp swimlanes) follow in the
        background. False when anything is missing (then the run loads as usual)."""
        if not self.cache:
            return False
        from overlapscope.analyzers import report_cache

        key = report_cache.report_key(entry.path, self.options)
        report = report_cache.load_report(key, str(entry.path)) if key else None
        if report is None:
            return False
        views = cached_clock_views(run_files(entry.path), rules=self.options.rules(),
                                   time_axis=report.facts.get("time_axis"))
        if views is None:
            return False
        entry.extra.update(analyze_s=time.perf_counter() - t0, timeline_s=0.0,
                           timeline_cached=True, details="loading")
        self._set(entry, result=RunResult(str(entry.path), report, None),
                  timeline=views.timelines[views.default], status="ready", stage="ready",
                  seconds=time.perf_counter() - t0, timelines=views.timelines,
                  clock=views.default, clock_note=views.note)
        try:
            frames = load_run(entry.path, cache=True, gpus_per_node=self.options.gpus_per_node)
            tls = {k: replace(tl, frames=frames) for k, tl in views.timelines.items()}
            warps = warp_timeline(frames) if frames.warp_events.height else None
        except Exception as exc:  # noqa: BLE001 - the views already shown stay usable
            entry.extra["details"] = f"could not be loaded ({type(exc).__name__}: {exc})"
            self._set(entry)
            return True
        entry.extra["details"] = "ready"
        self._set(entry, result=RunResult(str(entry.path), report, frames), warps=warps,
                  timelines=tls, timeline=tls[views.default])
        return True

    def _load(self, entry: RunEntry) -> None:
        t0 = time.perf_counter()
        self._set(entry, status="loading", stage="reading")
        try:
            if self._reopen(entry, t0):
                return
        except Exception:  # noqa: BLE001, S110 - any cache trouble: load as usual
            pass

        def progress(p: Progress) -> None:
            stage = "decoding files" if p.stage == "decode" else "analyzing"
            self._set(entry, stage=stage, done=p.done, total=p.total)

        try:
            result = analyze(
                [entry.path], options=self.options, cache=self.cache, keep_frames=True,
                progress=progress, workers=self.workers,
            )
            if result.errors:
                err = result.errors[0]
                self._set(entry, status="error", error=err.reason, stage="failed")
                return
            run = result.runs[0]
            entry.extra["analyze_s"] = time.perf_counter() - t0
            self._set(entry, stage="building the timeline", done=0, total=0)
            frames = run.frames
            timeline = warps = None
            views: ClockViews | None = None
            if frames is not None:
                if frames.is_gpu or frames.cpu_ops.height:
                    views = clock_views(
                        frames, run_files(entry.path), rules=self.options.rules(),
                        cache=self.cache, time_axis=run.report.facts.get("time_axis"))
                    timeline = views.timelines[views.default]
                    entry.extra["timeline_cached"] = views.cached["raw"]
                    if "corrected" in views.cached:
                        entry.extra["corrected_timeline_cached"] = views.cached["corrected"]
                if frames.warp_events.height:
                    warps = warp_timeline(frames)
            entry.extra["timeline_s"] = time.perf_counter() - t0 - entry.extra["analyze_s"]
            clock_kw: dict[str, Any] = {}
            if views is not None:
                clock_kw = {"timelines": views.timelines, "clock": views.default,
                            "clock_note": views.note, "skew": views.skew}
            self._set(entry, result=run, timeline=timeline, warps=warps, status="ready",
                      stage="ready", seconds=time.perf_counter() - t0, **clock_kw)
        except TraceError as exc:
            self._set(entry, status="error", error=exc.reason, stage="failed")
        except Exception as exc:  # noqa: BLE001 - a bad trace must never stop the server
            self._set(entry, status="error", stage="failed",
                      error=f"could not be analyzed ({type(exc).__name__}: {exc})")

    # ------------------------------------------------------------------ uploads

    def save_upload(self, filename: str | None, contents: str | None) -> Path:
        """Write an uploaded trace (``dcc.Upload`` data URL) to the upload folder.

        Raises UploadError for a missing, oversized, mis-named or undecodable file.
        """
        if not filename or not contents:
            raise UploadError("no file was received")
        name = Path(str(filename).replace("\\", "/")).name
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise UploadError(f"{name}: only .json and .json.gz Kineto traces can be uploaded")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-120:]
        _, _, b64 = str(contents).partition(",")
        if len(b64) * 3 // 4 > self.max_upload_bytes:
            raise UploadError(
                f"{name} is larger than the upload limit of "
                f"{self.max_upload_bytes / (1 << 20):.0f} MB (--max-upload-mb)"
            )
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise UploadError(f"{name}: the upload could not be decoded") from None
        if not data:
            raise UploadError(f"{name} is empty")
        if name.lower().endswith(".gz") and data[:2] != b"\x1f\x8b":
            raise UploadError(f"{name} is not gzip-compressed although its name ends in .gz")
        if not name.lower().endswith(".gz") and data.lstrip()[:1] not in (b"{", b"["):
            raise UploadError(f"{name} is not JSON (a Kineto trace starts with '{{')")
        folder = self.upload_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        dest = folder / safe
        dest.write_bytes(data)
        return dest

    @property
    def upload_dir(self) -> Path:
        """A private temporary folder for uploads (removed by :meth:`close`)."""
        if self._upload_dir is None:
            self._upload_dir = Path(tempfile.mkdtemp(prefix="overlapscope-uploads-"))
        return self._upload_dir

    # ------------------------------------------------------------------ reading

    def get(self, rid: str | None) -> RunEntry | None:
        """The entry with id ``rid`` (None when unknown)."""
        return self.runs.get(str(rid)) if rid is not None else None

    def ready_runs(self) -> list[RunEntry]:
        """Entries whose report is ready, in opening order."""
        return [e for e in self.runs.values() if e.ready]

    def pending(self) -> bool:
        """True while some run is queued or loading (its details included)."""
        return any(e.status in ("queued", "loading") or e.extra.get("details") == "loading"
                   for e in self.runs.values())

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no run is pending (tests and benchmarks); False on timeout."""
        end = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop the loader thread and remove uploaded files."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._upload_dir is not None:
            shutil.rmtree(self._upload_dir, ignore_errors=True)


__all__ = ["ClockViews", "DashboardState", "PathError", "RunEntry", "UploadError",
           "clock_views"]
