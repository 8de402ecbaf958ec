"""The batch API: analyze many runs or traces with a failure policy, progress and workers.

>>> from overlapscope.analyzers import analyze                 # doctest: +SKIP
>>> result = analyze(["runs/demo", "trace.json.gz"], window="^1F1B$")  # doctest: +SKIP
>>> result[0].tables["summary"]                                # doctest: +SKIP
>>> result.errors                  # inputs that could not be analyzed, with why  # doctest: +SKIP

This is the one front door the CLI, the dashboard and ``compare`` share. Work is
spread over worker processes: the rank files of one run are decoded in parallel
(at most ``workers`` files in flight, so memory stays near workers x largest
file), and several runs are analyzed one per worker. ``engine="ray"`` sends the
same per-run work to a Ray cluster (see :mod:`overlapscope.analyzers.batch_ray`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from overlapscope.analyzers import report_cache
from overlapscope.analyzers.errors import TraceError, WindowError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.kineto.decode import FileFrames
from overlapscope.analyzers.load import load_file, load_run, run_files
from overlapscope.analyzers.report import Report, build_report

Engine = Literal["local", "ray"]
OnError = Literal["collect", "raise"]
#: Below this many input bytes a process pool costs more than it saves.
POOL_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class Progress:
    """A progress event: ``stage`` is "decode" (one file) or "analyze" (one run)."""

    stage: Literal["decode", "analyze"]
    path: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass
class RunResult:
    """One analyzed run: its Report, and its frames when ``keep_frames`` was asked."""

    path: str
    report: Report
    frames: TraceFrames | None = None


@dataclass
class BatchResult(Sequence[Report]):
    """Reports of the runs that could be analyzed (in input order) and the errors of
    those that could not. Indexing and iteration give Reports."""

    runs: list[RunResult] = field(default_factory=list)
    errors: list[TraceError] = field(default_factory=list)

    @property
    def reports(self) -> list[Report]:
        """The Reports, in input order."""
        return [r.report for r in self.runs]

    def __getitem__(self, i: Any) -> Any:
        return self.reports[i]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Report]:
        return iter(self.reports)


# --- per-run work: top-level functions, so worker processes and Ray can run them ---


def _decode(args: tuple[str, bool] | tuple[str, bool, int]) -> FileFrames:
    path, cache, *rest = args
    return load_file(Path(path), cache=cache, workers=rest[0] if rest else 1)


def analyze_run(
    path: str | Path,
    options: ReportOptions,
    *,
    cache: bool = True,
    keep_frames: bool = False,
    decoder: Callable[[list[Path], bool], Iterable[FileFrames]] | None = None,
) -> RunResult | TraceError:
    """Load and analyze one run; a bad input comes back as a TraceError, not raised."""
    # --- Report cache (issue 13): unchanged inputs, rules, options and version reopen
    # the stored Report (analyzers/report_cache.py) instead of analyzing again.
    key = report_cache.report_key(path, options) if cache else None
    cached = report_cache.load_report(key, str(Path(path))) if key else None
    # --- end Report cache
    try:
        frames = None
        if cached is None or keep_frames:
            frames = load_run(
                path, cache=cache, gpus_per_node=options.gpus_per_node, decoder=decoder
            )
        report = cached if cached is not None else build_report(frames, options)
    except TraceError as exc:
        return exc
    except WindowError as exc:
        return TraceError(path, str(exc))
    if key and cached is None:  # Report cache: store what was just computed
        report_cache.store_report(key, report)
    return RunResult(str(path), report, frames if keep_frames else None)


#: Per-run follow-up work run where the run was analyzed (worker process or Ray task):
#: ``finish(result, options)`` -> what comes back to the caller (must be picklable).
Finish = Callable[[RunResult | TraceError, ReportOptions], Any]


def _analyze_task(
    args: tuple[str, ReportOptions, bool, bool, Finish | None],
) -> Any:
    path, options, cache, keep, finish = args
    out = analyze_run(path, options, cache=cache, keep_frames=keep)
    return finish(out, options) if finish is not None else out


# --- engines ---


Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in run_files(path))
    except (TraceError, OSError):
        return 0


def default_workers(paths: list[Path]) -> int:
    """1 for small inputs; else up to one per CPU and per file (or run)."""
    if sum(_size(p) for p in paths) < POOL_MIN_BYTES:
        return 1
    units = len(paths) if len(paths) > 1 else len(_files_or_empty(paths[0]))
    return max(1, min(os.cpu_count() or 1, units))


def _files_or_empty(path: Path) -> list[Path]:
    try:
        return run_files(path)
    except TraceError:
        return []


class _LocalPool:
    """A spawn-context process pool (polars is not fork-safe), created on first use."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Executor | None = None

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        if self.workers <= 1 or len(items) <= 1:
            return map(fn, items)
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._pool.map(fn, items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def analyze(
    paths: Iterable[str | Path] | str | Path,
    *,
    window: str | None = None,
    rules_file: str | None = None,
    top: int = 10,
    hta_compat: bool = False,
    gpus_per_node: int | None = None,
    annotation_detail: bool = False,
    options: ReportOptions | None = None,
    cache: bool = True,
    on_error: OnError = "collect",
    progress: ProgressFn | None = None,
    workers: int | None = None,
    keep_frames: bool = False,
    engine: Engine = "local",
    address: str | None = None,
) -> BatchResult:
    """Analyze trace files and run directories into Reports.

    ``paths``: Kineto traces (.json / .json.gz), run directories (one trace per
    rank) or per-warp CSVs. Analysis options are the keyword arguments (or a
    ready :class:`ReportOptions` as ``options``). ``on_error="collect"`` keeps
    going past a bad input and lists it in ``result.errors``; ``"raise"`` raises
    the first :class:`TraceError`. ``progress`` is called with :class:`Progress`
    events. ``workers``: processes (default: 1 for small inputs, else one per
    CPU). ``keep_frames`` keeps each run's TraceFrames (the dashboard's timeline
    needs them). ``engine="ray"`` runs each run as a Ray task (``address``: the
    cluster; default a local Ray instance); results equal the local engine's.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    opts = options or ReportOptions(
        window=window, rules_file=rules_file, top=top, hta_compat=hta_compat,
        gpus_per_node=gpus_per_node, annotation_detail=annotation_detail,
    )
    runs, errors = map_runs(
        paths, opts, cache=cache, keep_frames=keep_frames, on_error=on_error,
        progress=progress, workers=workers, engine=engine, address=address,
    )
    return BatchResult(runs, errors)


def map_runs(
    paths: Iterable[str | Path],
    options: ReportOptions,
    *,
    finish: Finish | None = None,
    cache: bool = True,
    keep_frames: bool = False,
    on_error: OnError = "collect",
    progress: ProgressFn | None = None,
    workers: int | None = None,
    engine: Engine = "local",
    address: str | None = None,
) -> tuple[list[Any], list[TraceError]]:
    """The engine under :func:`analyze`: each run analyzed where the engine puts it,
    then ``finish(result, options)`` applied there (``compare`` adds per-step
    reports this way). Returns (finished results in input order, errors)."""
    paths = [Path(p) for p in paths]
    options.rules()  # a bad rules file is the caller's error: raise RuleError before any work
    done: list[Any] = []
    errors: list[TraceError] = []
    if not paths:
        return done, errors
    n_workers = 1
    if engine == "ray":
        from overlapscope.analyzers.batch_ray import ray_mapper

        mapper: Mapper = ray_mapper(address=address, workers=workers)
        closer: Callable[[], None] = lambda: None  # noqa: E731 - Ray keeps its own cluster
    else:
        pool = _LocalPool(workers if workers is not None else default_workers(paths))
        mapper, closer = pool.map, pool.close
        n_workers = pool.workers
    try:
        if len(paths) == 1 and engine == "local":  # one run: its rank files decode in parallel
            one = _one_run(paths[0], options, cache, keep_frames, mapper, progress, n_workers)
            outcomes: Iterable[Any] = [finish(one, options) if finish is not None else one]
        else:
            tasks = [(str(p), options, cache, keep_frames, finish) for p in paths]
            outcomes = mapper(_analyze_task, tasks)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, TraceError):
                if on_error == "raise":
                    raise outcome
                errors.append(outcome)
            else:
                done.append(outcome)
            if progress:
                progress(Progress("analyze", str(paths[i]), i + 1, len(paths)))
    finally:
        closer()
    return done, errors


def _one_run(
    path: Path,
    opts: ReportOptions,
    cache: bool,
    keep_frames: bool,
    mapper: Mapper,
    progress: ProgressFn | None,
    workers: int = 1,
) -> RunResult | TraceError:
    """One run: its rank files decoded through ``mapper``, analyzed here."""

    def decoder(files: list[Path], use_cache: bool) -> Iterator[FileFrames]:
        # Processes per file: what the pool leaves over (a lone file gets them all).
        per_file = max(1, workers // max(1, len(files)))
        decoded = mapper(_decode, [(str(f), use_cache, per_file) for f in files])
        for i, ff in enumerate(decoded):
            if progress:
                progress(Progress("decode", str(files[i]), i + 1, len(files)))
            yield ff

    return analyze_run(path, opts, cache=cache, keep_frames=keep_frames, decoder=decoder)
