"""Profiling session: per-rank Kineto traces with overlapscope's annotations and traffic.

A few lines in your own training loop give one ``rank-<r>.json.gz`` per rank plus a
``run.json`` manifest (written by rank 0) in ``out_dir``::

    from overlapscope.profiler.session import ProfileSession
    with ProfileSession("runs/mine", workload={"name": "my-train"}) as prof:
        for step, batch in enumerate(loader):
            with prof.annotate(f"1f1b:F:mb={step}:stage=0"):
                loss = model(batch)
            prof.step()

Rank and world size come from ``torch.distributed`` when it is initialised. The session
wraps ``torch.profiler.profile`` (CPU activity, plus CUDA when available) with
``profile_all_threads=True`` so ops run on other threads, such as the communication thread
of :class:`RankContext.comm_stream`, are recorded too. On exit the Kineto JSON is exported,
augmented (see ``augment.py``: the ``"overlapscope"`` member, ``comm_traffic`` events from
:meth:`ProfileSession.record_traffic`, extra events from :meth:`ProfileSession.add_events`)
and written atomically. ``enabled=False`` keeps the same API with no tracing at all:
annotations are shared no-op context managers and nothing is written but the manifest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, record_function

from overlapscope.profiler import augment
from overlapscope.profiler.comm_stream import ThreadCommStream
from overlapscope.profiler.layout import RankLayout
from overlapscope.profiler.manifest import (
    build_manifest,
    gather_to_rank0,
    rank_file_name,
    write_manifest,
)
from overlapscope.profiler.topology import Topology

#: Version of the ``"overlapscope"`` trace member.
TRACE_SCHEMA_VERSION = 1
#: Allowed ``hop`` values of a traffic record.
HOPS = ("ib", "nvl", "local", "pp")
#: Progress callback: receives small dicts, e.g. ``{"kind": "step", "rank": 0, "step": 1,
#: "total": 4}`` or ``{"kind": "message", "rank": 0, "text": "exporting trace"}``.
ProgressFn = Callable[[dict[str, Any]], None]

_NULL_CONTEXT = contextlib.nullcontext()


def now_ns() -> int:
    """The session clock for traffic records: ``time.monotonic_ns()`` (ns)."""
    return time.monotonic_ns()


@dataclass
class RankContext:
    """What a workload knows about its rank (the workload contract: docs/profiling.md).

    ``comm_stream.submit(fn, *args)`` runs ``fn`` concurrently with the caller (CPU: a
    daemon thread; CUDA: the same thread issuing on a side stream) and returns a future.
    Collectives issued from ``comm_stream`` should use ``comm_group`` (a second process
    group over all ranks), so they never interleave with collectives of the main thread on
    the default group. ``layout`` gives the PP x EP placement; ``pp_group`` / ``ep_group``
    are process groups of this rank's pipeline and expert group (None when the group is
    the whole world: use the default group then).
    """

    rank: int
    world_size: int
    local_rank: int
    topology: Topology
    device: torch.device
    backend: str
    comm_stream: ThreadCommStream
    layout: RankLayout | None = None
    comm_group: Any = None
    pp_group: Any = None
    ep_group: Any = None
    timeout_s: float = 120.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def node(self) -> int:
        """Node index of this rank."""
        return self.topology.node_of(self.rank)

    @property
    def stage(self) -> int:
        """Pipeline stage of this rank (0 without a layout)."""
        return self.layout.stage_of(self.rank) if self.layout else 0

    @property
    def ep_index(self) -> int:
        """Position of this rank in its expert group (its rank without a layout)."""
        return self.layout.ep_index_of(self.rank) if self.layout else self.rank


@dataclass(frozen=True)
class SessionResult:
    """What :meth:`ProfileSession.close` produced; sizes in bytes, times in seconds."""

    path: Path | None
    trace_bytes: int
    n_added_events: int
    steps: int
    wall_s: float
    export_s: float


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _experimental_config() -> Any:
    """Kineto config that records every thread (and skips building Python events)."""
    from torch._C._profiler import _ExperimentalConfig

    try:
        return _ExperimentalConfig(profile_all_threads=True, trace_only=True)
    except TypeError:  # older torch without trace_only
        return _ExperimentalConfig(profile_all_threads=True)


class ProfileSession:
    """One rank's profiling session; see the module docstring for an example.

    ``workload`` / ``schedule`` are free-form dicts copied into the trace's
    ``"overlapscope"`` member and into ``run.json`` (a workload may update them while it
    runs); ``topology`` defaults to one node holding every rank. ``enabled=False`` traces
    nothing; ``cuda`` adds the CUDA activity (default: when available); ``skip_steps``
    leaves the first steps unrecorded (warm-up); ``progress`` receives step/status
    events; ``write_run_json`` gathers per-rank facts on rank 0 (a collective: every rank
    must close its session) and writes ``run.json``, adding ``run_facts`` to it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        topology: Topology | None = None,
        workload: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        enabled: bool = True,
        cuda: bool | None = None,
        record_shapes: bool = True,
        total_steps: int | None = None,
        progress: ProgressFn | None = None,
        write_run_json: bool = True,
        run_facts: dict[str, Any] | None = None,
        skip_steps: int = 0,
        inject_delay: dict[str, Any] | None = None,
        clock_skew: dict[str, Any] | None = None,
    ) -> None:
        default_rank, default_world = _dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.out_dir = Path(out_dir)
        self.topology = topology or Topology(nodes=1, gpus_per_node=self.world_size)
        self.workload = dict(workload or {})
        self.schedule = dict(schedule) if schedule is not None else None
        self.enabled = enabled
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.record_shapes = record_shapes
        self.total_steps = total_steps
        self.progress = progress
        self.write_run_json = write_run_json
        self.run_facts = dict(run_facts or {})
        self.skip_steps = skip_steps
        self.comm_tid: int | None = None
        self.steps = 0
        self.result: SessionResult | None = None
        self._prof: profile | None = None
        self._traffic: list[augment.TrafficRecord] = []
        self._events: list[tuple[dict[str, Any], int | None]] = []
        self._lock = threading.Lock()
        self._t_start = 0.0
        self._mono_to_unix_ns = 0
        self._routing: dict[str, Any] | None = None
        # deliberate slowness: {"rank", "phase" (name or fnmatch pattern), "ms"}; applied
        # only on the rank it names
        self.inject_delay = dict(inject_delay) if inject_delay else None
        if self.inject_delay is not None:
            if float(self.inject_delay.get("ms", -1)) < 0 or not self.inject_delay.get("phase"):
                raise ValueError(f"inject_delay needs a phase and ms >= 0, got {inject_delay}")
            if int(self.inject_delay.get("rank", self.rank)) != self.rank:
                self.inject_delay = None
        self.delays_applied = 0
        self._cuda_cycles_per_ms: float | None = None
        # deliberate clock error of this rank's written times:
        # {"offset_ns", "drift_ppm", "ref_unix_ns"} (augment.skew_ns)
        self.clock_skew = dict(clock_skew) if clock_skew else None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ProfileSession:
        """Start profiling (``with ProfileSession(...)`` calls this)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._mono_to_unix_ns = time.time_ns() - time.monotonic_ns()
        self._t_start = time.perf_counter()
        if self.enabled:
            activities = [ProfilerActivity.CPU]
            if self.cuda:
                activities.append(ProfilerActivity.CUDA)
            skip = self.skip_steps
            self._prof = profile(
                activities=activities,
                # A schedule makes torch add the ProfilerStep#N ranges; never stop recording.
                schedule=lambda s: ProfilerAction.NONE if s < skip else ProfilerAction.RECORD,
                record_shapes=self.record_shapes,
                experimental_config=_experimental_config(),
            )
            self._prof.__enter__()
        return self

    def __enter__(self) -> ProfileSession:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop profiling and write nothing (used when the workload failed)."""
        if self._prof is not None:
            with contextlib.suppress(Exception):
                self._prof.__exit__(None, None, None)
            self._prof = None

    # -- what workloads call -----------------------------------------------------------
    @property
    def recording(self) -> bool:
        """True while events are being recorded (enabled and past ``skip_steps``)."""
        return self._prof is not None and self.steps >= self.skip_steps

    def annotate(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A ``record_function`` range named ``name`` (a shared no-op when disabled).

        With ``inject_delay`` on this rank, a range whose name matches its phase (exactly,
        or as an ``fnmatch`` pattern) lasts ``ms`` longer: the delay runs at its start,
        inside it (CPU: a host sleep; CUDA: a GPU sleep kernel on the current stream, so
        the work launched inside the range spans ``ms`` more)."""
        if self.inject_delay is not None and self._delay_matches(name):
            return self._delayed(name)
        if not self.recording:
            return _NULL_CONTEXT
        return record_function(name)

    def _delay_matches(self, name: str) -> bool:
        phase = str(self.inject_delay["phase"])  # type: ignore[index]
        return name == phase or (any(c in phase for c in "*?[") and fnmatch.fnmatchcase(name,
                                                                                       phase))

    @contextlib.contextmanager
    def _delayed(self, name: str) -> Any:
        ctx = record_function(name) if self.recording else _NULL_CONTEXT
        with ctx:
            self.sleep_ms(float(self.inject_delay["ms"]))  # type: ignore[index]
            with self._lock:
                self.delays_applied += 1
            yield

    def sleep_ms(self, ms: float) -> None:
        """Spend ``ms`` milliseconds: on the GPU (a sleep kernel on the current stream)
        when this session traces CUDA, else on the host."""
        if ms <= 0:
            return
        if self.cuda and torch.cuda.is_available():
            torch.cuda._sleep(max(1, int(ms * self._cycles_per_ms())))
        else:
            time.sleep(ms / 1000.0)

    def _cycles_per_ms(self) -> float:
        """GPU clock cycles per millisecond of ``torch.cuda._sleep`` (measured once)."""
        if self._cuda_cycles_per_ms is None:
            cycles = 10_000_000
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            torch.cuda._sleep(cycles // 10)  # warm-up
            start.record()
            torch.cuda._sleep(cycles)
            stop.record()
            stop.synchronize()
            self._cuda_cycles_per_ms = cycles / max(start.elapsed_time(stop), 1e-3)
        return self._cuda_cycles_per_ms

    def record_routing(self, stats: dict[str, Any]) -> None:
        """Add one forward dispatch's routing statistics (``routing.node_limit_stats``):
        counts are summed over the run and written as ``overlapscope.routing`` in the
        trace and ``routing`` in this rank's run.json entry."""
        from overlapscope.profiler.routing import ROUTING_COUNT_KEYS

        with self._lock:
            if self._routing is None:
                self._routing = {k: 0 for k in ROUTING_COUNT_KEYS}
            for k in ROUTING_COUNT_KEYS:
                self._routing[k] += int(stats.get(k, 0))
            for k in ("max_nodes", "nodes", "bytes_per_token"):
                if k in stats:
                    self._routing[k] = stats[k]

    @property
    def routing(self) -> dict[str, Any] | None:
        """Routing totals so far (None before the first forward dispatch)."""
        with self._lock:
            return dict(self._routing) if self._routing is not None else None

    def step(self) -> None:
        """Mark the end of one training step (``ProfilerStep#N`` ranges) and report it."""
        self.steps += 1
        if self._prof is not None:
            self._prof.step()
        if self.progress is not None:
            self.progress(
                {"kind": "step", "rank": self.rank, "step": self.steps, "total": self.total_steps}
            )

    def report(self, text: str) -> None:
        """Send a short status line to the launcher's progress display."""
        if self.progress is not None:
            self.progress({"kind": "message", "rank": self.rank, "text": text})

    now_ns = staticmethod(now_ns)

    def record_traffic(
        self,
        name: str,
        collective: str,
        hop: str,
        dst_bytes: Iterable[int],
        phase: str | None,
        t0_ns: int,
        t1_ns: int,
        dtype: str,
        *,
        tid: int | None = None,
    ) -> None:
        """Record bytes sent from this rank to every global rank during ``[t0_ns, t1_ns]``.

        ``dst_bytes[d]`` = bytes sent to rank ``d`` (length = world size); times are
        :func:`now_ns` values (``time.time_ns()`` is accepted too). The event goes on the
        calling thread's track unless ``tid`` (a native thread id) is given.
        """
        if not self.recording:
            return
        if hop not in HOPS:
            raise ValueError(f"record_traffic: hop must be one of {HOPS}, got {hop!r}")
        vector = tuple(int(b) for b in dst_bytes)
        if len(vector) != self.world_size:
            raise ValueError(
                f"record_traffic: dst_bytes has {len(vector)} entries, world size is "
                f"{self.world_size}"
            )
        rec = augment.TrafficRecord(
            name=name,
            collective=collective,
            hop=hop,
            dst_bytes=vector,
            phase=phase,
            t0_ns=int(t0_ns),
            t1_ns=int(t1_ns),
            dtype=dtype,
            pid=os.getpid(),
            tid=threading.get_native_id() if tid is None else tid,
        )
        with self._lock:
            self._traffic.append(rec)

    def add_events(
        self, events: Iterable[dict[str, Any]], *, time_base_ns: int | None = None
    ) -> None:
        """Hand over extra Chrome events (warp_role, ring counters, ...) for the trace.

        ``ts``/``dur`` are microseconds. With ``time_base_ns`` (a :func:`now_ns` value, e.g.
        taken when an emulated kernel started) ``ts`` is relative to it; without, ``ts`` is
        an absolute host time in microseconds (``now_ns() / 1000``).
        """
        if not self.recording:
            return
        with self._lock:
            self._events.extend((dict(ev), time_base_ns) for ev in events)

    # -- export ----------------------------------------------------------------------
    def overlapscope_member(self) -> dict[str, Any]:
        """The trace's top-level ``"overlapscope"`` object."""
        return {
            "schema_version": TRACE_SCHEMA_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "topology": self.topology.to_dict(),
            "workload": self.workload,
            "schedule": self.schedule,
            "comm_tid": self.comm_tid,
            "routing": self.routing,
        }

    def _added_events(self, base_ns: int) -> list[dict[str, Any]]:
        off = self._mono_to_unix_ns
        out = [
            augment.traffic_event(r, mono_to_unix_ns=off, base_ns=base_ns) for r in self._traffic
        ]
        out += [
            augment.rebase_event(ev, mono_to_unix_ns=off, base_ns=base_ns, time_base_ns=tb)
            for ev, tb in self._events
        ]
        return out

    def _export(self) -> tuple[Path, int, int]:
        assert self._prof is not None
        final = self.out_dir / rank_file_name(self.rank)
        raw_path = self.out_dir / f".rank-{self.rank}.{os.getpid()}.json"
        self._prof.export_chrome_trace(str(raw_path))
        try:
            data = raw_path.read_bytes()
        finally:
            raw_path.unlink(missing_ok=True)
        top = augment.split_trace(data)
        added = self._added_events(augment.trace_base_ns(top))
        text = augment.augment_trace(data, self.overlapscope_member(), added)
        if self.clock_skew:
            text = augment.skew_trace(
                text, offset_ns=int(self.clock_skew.get("offset_ns", 0)),
                drift_ppm=float(self.clock_skew.get("drift_ppm", 0.0)),
                ref_unix_ns=int(self.clock_skew.get("ref_unix_ns", 0)))
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(text, compresslevel=6, mtime=0))
        os.replace(tmp, final)
        return final, final.stat().st_size, len(added)

    def close(
        self, *, wall_s: float | None = None, facts: dict[str, Any] | None = None
    ) -> SessionResult:
        """Stop profiling, write ``rank-<r>.json.gz`` and (rank 0) ``run.json``.

        ``wall_s`` is the workload's own wall time (defaults to the session's); ``facts``
        go into this rank's entry of ``run.json``.
        """
        session_wall = time.perf_counter() - self._t_start
        path, size, n_added = None, 0, 0
        t_export = time.perf_counter()
        if self._prof is not None:
            self.report("exporting trace")
            self._prof.__exit__(None, None, None)
            path, size, n_added = self._export()
            self._prof = None
        export_s = time.perf_counter() - t_export
        self.result = SessionResult(path, size, n_added, self.steps, session_wall, export_s)
        if self.write_run_json:
            self._write_run_json(wall_s if wall_s is not None else session_wall, facts or {})
        return self.result

    def rank_facts(self, wall_s: float, facts: dict[str, Any]) -> dict[str, Any]:
        """This rank's entry of ``run.json``."""
        import socket

        assert self.result is not None
        return {
            "rank": self.rank,
            "node": self.topology.node_of(self.rank),
            "local": self.topology.local_of(self.rank),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "file": self.result.path.name if self.result.path else None,
            "trace_bytes": self.result.trace_bytes,
            "added_events": self.result.n_added_events,
            "steps": self.result.steps,
            "wall_s": wall_s,
            "session_wall_s": self.result.wall_s,
            "export_s": self.result.export_s,
            "facts": facts,
            "routing": self.routing,
            "delays_applied": self.delays_applied,
        }

    def _write_run_json(self, wall_s: float, facts: dict[str, Any]) -> None:
        gathered = gather_to_rank0(self.rank_facts(wall_s, facts))
        if gathered is None or self.rank != 0:
            return
        run = {
            "world_size": self.world_size,
            "topology": self.topology.to_dict(),
            "workload": self.workload,
            "schedule": self.schedule,
            "trace_enabled": self.enabled,
            **self.run_facts,
        }
        write_manifest(self.out_dir, build_manifest(run, gathered))
