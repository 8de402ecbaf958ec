"""The batch API: analyze many runs or traces with a failure policy, progress and workers.

>>> from overlapscope.analyzers import analyze                 # doctest: +SKIP
>>> result = analyze(["runs/demo", "trace.json.gz"], window="^1F1B$")  # doctest: +SKIP
>>> result[0].tables["summary"]                                # doctest: +SKIP
>>> result.errors                  # inputs that could not be analyzed, with why  # doctest: +SKIP

This is the one front door the CLI, the dashboard and ``compare`` share. Work is
spread over worker processes: the rank files of one run are decoded in parallel
(at most ``workers`` files in flight, so memory stays near workers x largest
file) and the run is analyzed here. Several runs whose sizes share the workers
evenly (as many equal runs as workers, or many runs) are one task each: a worker
decodes and analyzes a whole run, and nothing but its result crosses processes.
Otherwise (fewer runs than workers, one large run among small ones) they go file
by file: every rank file of every run is its own task, and each run's analysis
(with ``finish``) is one more task once its files are decoded; runs start in input
order, two at a time (the next run decodes while the head one is analyzed), so at
most two decoded runs are held. ``engine="ray"`` sends the same tasks to a Ray cluster
(see :mod:`overlapscope.analyzers.batch_ray`).

How decoded files reach the analysis task (several runs file by file on the local
pool): not through this process. Each decode task leaves its frames on disk and returns only
where (:mod:`overlapscope.analyzers.handoff`): the parquet cache entry when the
cache is on, else uncompressed Arrow IPC files in a private temporary directory
(one per :func:`map_runs` call, a subdirectory per run). The analysis task reads
them; a run's files are removed as soon as its analysis task is done, and the
whole directory when :func:`map_runs` ends (normally, on an error, on Ctrl-C, or
when ``on_error="raise"`` stops early). One run (decoded in parallel, analyzed
here) and Ray (its object store) pass the frames as before.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from overlapscope.analyzers import report_cache
from overlapscope.analyzers.errors import TraceError, WindowError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.handoff import FramesRef, decode_to_ref, resolve
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


def _decode_or_error(args: tuple[str, bool]) -> FileFrames | TraceError:
    """One rank file as its own task; a bad file comes back as its TraceError (it
    becomes its run's error) instead of stopping the other runs' tasks."""
    try:
        return _decode(args)
    except TraceError as exc:
        return exc


def analyze_run(
    path: str | Path,
    options: ReportOptions,
    *,
    cache: bool = True,
    keep_frames: bool = False,
    decoder: Callable[[list[Path], bool], Iterable[FileFrames]] | None = None,
    file_progress: Callable[[Path, int, int], None] | None = None,
) -> RunResult | TraceError:
    """Load and analyze one run; a bad input comes back as a TraceError, not raised.
    ``file_progress(file, i, n)`` is called before each of its n files is decoded."""
    # --- Report cache (issue 13): unchanged inputs, rules, options and version reopen
    # the stored Report (analyzers/report_cache.py) instead of analyzing again.
    key = report_cache.report_key(path, options) if cache else None
    cached = report_cache.load_report(key, str(Path(path))) if key else None
    # --- end Report cache
    try:
        frames = None
        if cached is None or keep_frames:
            frames = load_run(
                path, cache=cache, gpus_per_node=options.gpus_per_node, decoder=decoder,
                progress=file_progress,
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
#: What a run's analysis task receives besides its decoded files.
RunArgs = tuple[str, ReportOptions, bool, bool, Finish | None]


#: In a pool worker: where it reports each file it starts decoding (set by the pool's
#: initializer, :func:`_report_files_to`), so that whole runs show per-file progress.
_FILES_STARTED: Any = None


def _report_files_to(queue: Any) -> None:
    global _FILES_STARTED  # noqa: PLW0603 - one per worker process, set once at its start
    _FILES_STARTED = queue


def _analyze_task(args: RunArgs, file_progress: Callable[[Path, int, int], None] | None = None
                  ) -> Any:
    path, options, cache, keep, finish = args
    if file_progress is None and _FILES_STARTED is not None:
        queue = _FILES_STARTED

        def file_progress(file: Path, _i: int, _n: int) -> None:
            queue.put(str(file))

    out = analyze_run(path, options, cache=cache, keep_frames=keep,
                      file_progress=file_progress)
    return finish(out, options) if finish is not None else out


class _FileCount:
    """Files started across several runs analyzed whole: one "decode" Progress each,
    numbered over all the runs' files (from any thread)."""

    def __init__(self, paths: list[Path], progress: ProgressFn | None) -> None:
        self.progress = progress
        self.total = sum(_n_files(p) for p in paths) if progress else 0
        self.done = 0
        self._lock = threading.Lock()

    def started(self, file: Path | str, _i: int = 0, _n: int = 0) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.done = min(self.done + 1, self.total)
            done = self.done
        self.progress(Progress("decode", str(file), done, self.total))

    def drain(self, queue: Any) -> threading.Thread:
        """A thread reporting what pool workers put on ``queue`` until it gets None."""

        def run() -> None:
            while (item := queue.get()) is not None:
                self.started(item)

        t = threading.Thread(target=run, daemon=True, name="overlapscope-file-progress")
        t.start()
        return t


def _n_files(path: Path) -> int:
    try:
        return len(run_files(path))
    except TraceError:
        return 1


def _analyze_decoded(args: RunArgs, *decoded: FramesRef | FileFrames | TraceError) -> Any:
    """A run whose rank files other tasks decoded: assemble, analyze, finish. The
    files come as frames (Ray) or as references to frames on disk (local pool)."""
    path, options, cache, keep, finish = args

    def decoder(files: list[Path], use_cache: bool) -> Iterator[FileFrames]:
        for item in decoded:  # the first bad file in file order is the run's error
            ff = resolve(item)
            if isinstance(ff, TraceError):
                raise ff
            yield ff

    out = analyze_run(path, options, cache=cache, keep_frames=keep, decoder=decoder)
    return finish(out, options) if finish is not None else out


@dataclass
class Job:
    """One run's work for an engine: ``decode(d)`` for each ``d`` in ``decodes`` as its
    own task, then ``fn(arg, *decoded)`` as one more (with no decodes: ``fn(arg)``);
    or, when ``fn`` is None, the outcome ``done`` already known. ``spill``: the
    directory where this run's decode tasks leave their frames, for the engine to
    remove once ``fn`` is done (None: the frames come back from the decode tasks)."""

    fn: Callable[..., Any] | None = None
    arg: Any = None
    decode: Callable[[Any], Any] = _decode_or_error
    decodes: list[tuple[Any, ...]] = field(default_factory=list)
    done: Any = None
    spill: Path | None = None


def _jobs(
    paths: list[Path],
    options: ReportOptions,
    cache: bool,
    keep: bool,
    finish: Finish | None,
    spill_root: Path | None = None,
) -> Iterator[Job]:
    """Each run's Job, planned lazily (when the engine is ready to start that run).
    With ``spill_root``, decode tasks hand their frames over on disk (see
    :func:`_decoding_job`); without (Ray), they return them."""
    for i, path in enumerate(paths):
        args: RunArgs = (str(path), options, cache, keep, finish)
        try:
            plan = _plan(path, options, cache, keep)
        except TraceError as exc:  # unreadable run: nothing to decode
            plan = exc
        if isinstance(plan, list):
            yield _decoding_job(args, plan, spill_root / f"run-{i}" if spill_root else None)
        elif plan is None:
            yield Job(_analyze_task, args)
        else:
            yield Job(done=finish(plan, options) if finish is not None else plan)


def _decoding_job(args: RunArgs, files: list[Path], spill: Path | None) -> Job:
    """A run decoded file by file. With ``spill`` (a new directory for this run), each
    file's task leaves its frames on disk and returns where (handoff.decode_to_ref),
    so they go to the analysis task without a round trip through the parent; if
    ``spill`` cannot be made, or without it, the decode tasks return the frames."""
    cache = args[2]
    if spill is not None:
        try:
            spill.mkdir()
        except OSError:
            spill = None
    if spill is None:
        return Job(_analyze_decoded, args, decodes=[(str(f), cache) for f in files])
    decodes = [(str(f), cache, str(spill / f"file-{j}")) for j, f in enumerate(files)]
    return Job(_analyze_decoded, args, decode=decode_to_ref, decodes=decodes, spill=spill)


def _plan(
    path: Path, options: ReportOptions, cache: bool, keep: bool
) -> list[Path] | RunResult | None:
    """The rank files to decode one task each; a RunResult for a stored Report whose
    frames are not wanted (nothing to decode); None for a warp CSV (one task reads it)."""
    if path.is_file() and path.name.endswith((".csv", ".csv.gz")):
        return None
    key = report_cache.report_key(path, options) if cache and not keep else None
    cached = report_cache.load_report(key, str(path)) if key else None
    if cached is not None:
        return RunResult(str(path), cached)
    return run_files(path)


# --- engines ---


Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]
#: Runs in progress at once on the file-by-file engines: the head run and the next, so
#: workers decode the next run while the head is analyzed; at most two decoded runs.
RUNS_AHEAD = 2


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in run_files(path))
    except (TraceError, OSError):
        return 0


#: Throughput of file-by-file scheduling relative to whole runs per worker: decoded
#: files cross process boundaries on disk (handoff.py) and each worker's memory is
#: touched anew. Measured, two 64-rank runs of 30 MB ranks on 2 workers: 26.2 s file
#: by file against 22.0 s for two independent processes (benchmarks/RESULTS.md §5).
FILE_LEVEL_EFFICIENCY = 0.84


def whole_runs_balance(run_bytes: list[int], workers: int) -> bool:
    """True when giving each worker whole runs (largest first, to the least loaded
    worker) is expected to finish no later than spreading every run's files over all
    workers: equal runs in multiples of ``workers`` do; one large run among small
    ones, or fewer runs than workers, do not. Sizes stand in for time."""
    if workers <= 1 or len(run_bytes) < workers:
        return False
    loads = [0] * workers
    for size in sorted(run_bytes, reverse=True):
        loads[loads.index(min(loads))] += size
    return max(loads) <= sum(run_bytes) / workers / FILE_LEVEL_EFFICIENCY


def default_workers(paths: list[Path]) -> int:
    """1 for small inputs; else up to one per CPU and per rank file (of all runs)."""
    if sum(_size(p) for p in paths) < POOL_MIN_BYTES:
        return 1
    units = sum(len(_files_or_empty(p)) for p in paths)
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
        #: A queue the workers report decoded files on (whole runs), made on request.
        self.files_started: Any = None

    def report_files(self) -> Any:
        """The queue workers put each file they start on; call before the pool starts."""
        if self.files_started is None:
            self.files_started = multiprocessing.get_context("spawn").Queue()
        return self.files_started

    def executor(self) -> Executor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            extra: dict[str, Any] = {}
            if self.files_started is not None:
                extra = {"initializer": _report_files_to, "initargs": (self.files_started,)}
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, **extra)
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        if self.workers <= 1 or len(items) <= 1:
            return map(fn, items)
        return self.executor().map(fn, items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


@dataclass
class _Live:
    job: Job
    decoding: list[Future[Any]]
    outcome: Future[Any] | None


def _drop_spill(job: Job) -> None:
    """Remove a run's handoff files once its analysis task no longer needs them."""
    if job.spill is not None:
        shutil.rmtree(job.spill, ignore_errors=True)
        job.spill = None


def _local_runs(
    jobs: Iterator[Job], pool: Executor, progress: ProgressFn | None
) -> Iterator[Any]:
    """Jobs through a local process pool, outcomes in input order: every rank file is
    a task; once a run's files are all decoded (what the decode tasks returned comes
    back here: with ``Job.spill``, only where the frames lie), its analysis and
    finish are one more task, so analyses overlap the next run's decoding. A run's
    ``spill`` directory is removed as soon as its analysis task is done."""
    live: deque[_Live] = deque()
    while True:
        while len(live) < RUNS_AHEAD and (job := next(jobs, None)) is not None:
            if job.fn is None:
                live.append(_Live(job, [], _done(job.done)))
            elif not job.decodes:
                live.append(_Live(job, [], pool.submit(job.fn, job.arg)))
            else:
                live.append(_Live(job, [pool.submit(job.decode, d) for d in job.decodes], None))
        if not live:
            return
        for run in live:
            if run.outcome is None and all(f.done() for f in run.decoding):
                decoded = [f.result() for f in run.decoding]
                run.decoding = []
                for i, d in enumerate(run.job.decodes):
                    if progress:
                        progress(Progress("decode", d[0], i + 1, len(run.job.decodes)))
                run.outcome = pool.submit(run.job.fn, run.job.arg, *decoded)
                del decoded
            if run.outcome is not None and run.outcome.done():
                _drop_spill(run.job)
        head = live[0].outcome
        if head is not None and head.done():
            _drop_spill(live.popleft().job)  # it may have finished since the loop above
            yield head.result()
            continue
        busy = [f for r in live for f in (r.decoding or [r.outcome]) if f is not None]
        wait([f for f in busy if not f.done()], return_when=FIRST_COMPLETED)


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
    CPU, at most one per rank file). ``keep_frames`` keeps each run's TraceFrames (the dashboard's
    timeline needs them). ``engine="ray"`` runs the same per-file and per-run tasks
    on Ray (``address``: the cluster; default a local Ray instance); results equal
    the local engine's.
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
    pool = _LocalPool(1)
    if engine == "local":
        pool = _LocalPool(workers if workers is not None else default_workers(paths))
        n_workers = pool.workers
    outcomes: Iterable[Any] = []
    spill_root: Path | None = None  # the local pool's handoff files of several runs
    drain: threading.Thread | None = None  # reports whole runs' files as workers start them
    try:
        if engine == "ray":  # every run file by file, as Ray tasks
            from overlapscope.analyzers.batch_ray import ray_runs

            jobs = _jobs(paths, options, cache, keep_frames, finish)
            outcomes = ray_runs(jobs, address=address, workers=workers)
        elif len(paths) == 1:  # one run: its rank files decode in parallel, analyzed here
            one = _one_run(paths[0], options, cache, keep_frames, pool.map, progress, n_workers)
            outcomes = [finish(one, options) if finish is not None else one]
        elif n_workers <= 1:  # several runs, one after another in this process
            tasks: list[RunArgs] = [(str(p), options, cache, keep_frames, finish) for p in paths]
            count = _FileCount(paths, progress)
            outcomes = map(functools.partial(_analyze_task, file_progress=count.started), tasks)
        elif whole_runs_balance([_size(p) for p in paths], n_workers):
            # several runs, each whole on one worker: no handoff at all; the workers
            # report the files they start, for a progress bar that moves by file
            tasks = [(str(p), options, cache, keep_frames, finish) for p in paths]
            if progress is not None:
                drain = _FileCount(paths, progress).drain(pool.report_files())
            outcomes = pool.executor().map(_analyze_task, tasks)
        else:  # several runs, file by file across the pool, frames handed over on disk
            with contextlib.suppress(OSError):  # no temp dir: frames come back as before
                spill_root = Path(tempfile.mkdtemp(prefix="overlapscope-runs-"))
            jobs = _jobs(paths, options, cache, keep_frames, finish, spill_root)
            outcomes = _local_runs(jobs, pool.executor(), progress)
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
        _shut_down(outcomes, pool, spill_root)
        if drain is not None:  # after the pool: no worker reports any more
            pool.files_started.put(None)
            drain.join(timeout=5)
    return done, errors


def _shut_down(outcomes: Iterable[Any], pool: _LocalPool, spill_root: Path | None) -> None:
    """Stop the engine and remove the handoff directory, in that order: once the pool
    has shut down no task can write there any more. The directory goes even when
    stopping is interrupted (a second Ctrl-C)."""
    try:
        if isinstance(outcomes, Generator):
            outcomes.close()  # an engine stopped early (on_error="raise") drops its tasks
        pool.close()
    finally:
        if spill_root is not None:
            shutil.rmtree(spill_root, ignore_errors=True)


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
