"""Launching a profiled workload: one rank in-process (torchrun) or all ranks locally.

Two modes, one code path per rank (:func:`run_rank`):

- **torchrun / cluster** (``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` set): this process is
  one rank; rendezvous is ``env://``. Works unchanged on a multi-node cluster, e.g.
  ``torchrun --nnodes 2 --nproc-per-node 8 ... -m overlapscope.app.cli profile --nodes 2
  --gpus-per-node 8 ...`` (every node writes its ranks' files into ``--out``; use a shared
  file system to get one run directory, rank 0 writes ``run.json``).
- **local** (:func:`run_local`): spawns ``nodes x gpus_per_node`` processes itself (a
  forkserver that has imported torch once), rendezvous over TCP on 127.0.0.1 with a free
  port, ``OMP_NUM_THREADS=1``; backend gloo, or nccl when CUDA has a GPU per rank.
  Per-rank progress comes back over a multiprocessing queue; a rank that raises, exits or
  is killed fails the launch at once (the others are killed), and every collective has
  a timeout, so a launch never hangs.

The PP x EP rank layout is documented in ``layout.py``. Workloads are modules
``overlapscope.profiler.workloads.<name>`` with ``run(ctx, session, cfg) -> dict``; an
optional ``validate(cfg)`` raising ``ValueError`` refuses bad configurations early.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import multiprocessing as mp
import os
import queue as _queue
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

#: CLI name -> module under overlapscope.profiler.workloads.
WORKLOADS: dict[str, str] = {
    "dualpipe-moe": "dualpipe_moe",
    "ep-dispatch": "ep_dispatch",
    "smoke": "smoke",
}
#: Workload-specific config keys ``profile --set KEY=VALUE`` accepts (see each workload's
#: docstring; tests/unit/test_cli_profile.py checks every ``cfg.get`` key is listed).
#: Launcher keys (steps, seed, pp, ...) have their own options and are refused by --set.
WORKLOAD_KEYS: dict[str, tuple[str, ...]] = {
    "dualpipe-moe": ("model", "batch", "seq", "overlap_comm", "return_grads", "p2p_wait"),
    "ep-dispatch": ("batch", "seq", "hidden", "experts_per_rank", "top_k", "max_nodes",
                    "node_score", "dtype", "lr"),
    "smoke": ("dim", "matmuls", "comm_elems", "fail_rank", "fail_step", "fail_mode"),
}
#: Workloads that run a pipeline schedule (the schedule rules below apply to them).
SCHEDULED_WORKLOADS = frozenset({"dualpipe-moe"})
SCHEDULES = ("dualpipe", "dualpipev", "1f1b")
BACKENDS = ("auto", "gloo", "nccl")

#: Launcher events handed to ``on_event``: {"kind": "started"|"step"|"message"|"done"|
#: "failed", "rank": r, ...}.
EventFn = Callable[[dict[str, Any]], None]


class ConfigError(ValueError):
    """A refused configuration: ``option`` names the CLI option, ``reason`` says why."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason


class LaunchError(RuntimeError):
    """A launch that failed: ``rank`` (or None for the whole run) and its error text."""

    def __init__(self, rank: int | None, reason: str, log: str | None = None) -> None:
        where = f"rank {rank}" if rank is not None else "run"
        super().__init__(f"{where} failed: {reason}" + (f" (log: {log})" if log else ""))
        self.rank = rank
        self.reason = reason
        self.log = log


@dataclass(frozen=True)
class RunConfig:
    """Everything a launch needs; :func:`resolve` fills the ``None`` fields and checks it."""

    workload: str = "smoke"
    schedule: str = "dualpipe"
    pp: int | None = None
    ep: int | None = None
    nodes: int = 1
    gpus_per_node: int = 4
    micro_batches: int | None = None
    steps: int = 2
    seed: int = 0
    backend: str = "auto"
    ib_gbps: float = 50.0
    nvl_gbps: float = 160.0
    out: str = "runs/latest"
    trace: bool = True
    bare: bool = False
    timeout_s: float = 600.0
    collective_timeout_s: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: deliberate slowness: {"rank": r, "phase": "attn(F)", "ms": 20.0} (or None)
    inject_delay: dict[str, Any] | None = None
    #: deliberate clock error per rank: {rank: {"offset_ns": int, "drift_ppm": float}}
    clock_skew: dict[int, dict[str, Any]] | None = None
    #: draw a random clock error for every rank but 0 from this seed (explicit
    #: ``clock_skew`` entries win); see :func:`random_clock_skew`
    clock_skew_seed: int | None = None

    @property
    def world_size(self) -> int:
        """Number of ranks, ``nodes * gpus_per_node``."""
        return self.nodes * self.gpus_per_node


def _positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(option, f"must be at least 1, got {value}")


def _check_schedule(schedule: str, pp: int, micro_batches: int) -> None:
    """DualPipe / DualPipeV / 1F1B constraints on PP ranks and micro-batches (BRIEF §1)."""
    if schedule == "dualpipe":
        if pp % 2:
            raise ConfigError("--pp", f"DualPipe needs an even number of pipeline ranks, got {pp}")
        if micro_batches % 2:
            raise ConfigError(
                "--micro-batches",
                f"DualPipe needs an even number of micro-batches, got {micro_batches}",
            )
    if schedule in ("dualpipe", "dualpipev") and micro_batches < 2 * pp:
        raise ConfigError(
            "--micro-batches",
            f"{schedule} needs at least 2 x PP = {2 * pp} micro-batches, got {micro_batches}",
        )


#: Ranges of random clock errors (``--clock-skew-seed``): offset ms, drift ppm.
RANDOM_SKEW_OFFSET_MS = 5.0
RANDOM_SKEW_DRIFT_PPM = 20.0


def random_clock_skew(seed: int, world: int) -> dict[int, dict[str, Any]]:
    """Per-rank clock errors for ranks 1..world-1 (rank 0 is the reference):
    offset uniform in ±5 ms (whole ns), drift uniform in ±20 ppm (0.01 ppm steps)."""
    import random

    rng = random.Random(seed)
    return {r: {"offset_ns": round(rng.uniform(-1, 1) * RANDOM_SKEW_OFFSET_MS * 1e6),
                "drift_ppm": round(rng.uniform(-1, 1) * RANDOM_SKEW_DRIFT_PPM, 2)}
            for r in range(1, world)}


def _check_inject(cfg: RunConfig) -> RunConfig:
    """Validate the injection options; expand ``clock_skew_seed`` into ``clock_skew``."""
    world = cfg.world_size
    delay = cfg.inject_delay
    if delay is not None:
        rank, phase, ms = delay.get("rank"), delay.get("phase"), delay.get("ms")
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ConfigError("--inject-delay", f"rank {rank!r} is outside 0..{world - 1}")
        if not phase or not isinstance(phase, str):
            raise ConfigError("--inject-delay", "needs a phase name, e.g. 5:attn(F):20ms")
        if not isinstance(ms, int | float) or ms < 0:
            raise ConfigError("--inject-delay", f"delay must be >= 0 ms, got {ms!r}")
        delay = {"rank": rank, "phase": phase, "ms": float(ms)}
    skew: dict[int, dict[str, Any]] = {}
    if cfg.clock_skew_seed is not None:
        skew.update(random_clock_skew(cfg.clock_skew_seed, world))
    for rank, entry in (cfg.clock_skew or {}).items():
        rank = int(rank)
        if not 0 <= rank < world:
            raise ConfigError("--clock-skew", f"rank {rank} is outside 0..{world - 1}")
        skew[rank] = {"offset_ns": int(entry.get("offset_ns", 0)),
                      "drift_ppm": float(entry.get("drift_ppm", 0.0))}
    for rank, entry in skew.items():
        if abs(entry["drift_ppm"]) >= 1e5:
            raise ConfigError("--clock-skew", f"rank {rank}: drift {entry['drift_ppm']} ppm is "
                              "not a clock error (|drift| must be < 100000 ppm)")
    return replace(cfg, inject_delay=delay, clock_skew=skew or None, clock_skew_seed=None)


def inject_manifest(cfg: RunConfig, ref_unix_ns: int | None) -> dict[str, Any] | None:
    """The ``inject`` member of run.json: ``{"delay": {"rank", "phase", "ms"}, "clock":
    {"<rank>": {"offset_ns", "drift_ppm", "ref_unix_ns"}}}`` (members present only when
    injected; None when nothing is)."""
    out: dict[str, Any] = {}
    if cfg.inject_delay is not None:
        out["delay"] = dict(cfg.inject_delay)
    if cfg.clock_skew:
        out["clock"] = {str(r): {**e, "ref_unix_ns": ref_unix_ns}
                        for r, e in sorted(cfg.clock_skew.items())}
    return out or None


def _load_workload(name: str) -> Any:
    try:
        return importlib.import_module(f"overlapscope.profiler.workloads.{WORKLOADS[name]}")
    except ModuleNotFoundError as exc:
        raise ConfigError("--workload", f"workload {name!r} is not available ({exc})") from exc


def resolve(cfg: RunConfig, *, check_import: bool = True) -> RunConfig:
    """``cfg`` with PP/EP/micro-batches filled in; raises :class:`ConfigError` if invalid.

    Defaults: ep-dispatch and smoke use EP = world (PP 1); dualpipe-moe uses one EP member
    per node (EP = nodes, PP = gpus_per_node). Given one of PP/EP, the other is world / it.
    Micro-batches default to 2 x PP for dualpipe-moe (the smallest valid), else 2.
    """
    if cfg.workload not in WORKLOADS:
        raise ConfigError(
            "--workload", f"unknown workload {cfg.workload!r}; choose from {', '.join(WORKLOADS)}"
        )
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(
            "--schedule", f"unknown schedule {cfg.schedule!r}; choose from {', '.join(SCHEDULES)}"
        )
    if cfg.backend not in BACKENDS:
        raise ConfigError("--backend", f"unknown backend {cfg.backend!r}; choose from {BACKENDS}")
    for option, value in (
        ("--nodes", cfg.nodes),
        ("--gpus-per-node", cfg.gpus_per_node),
        ("--pp", cfg.pp),
        ("--ep", cfg.ep),
        ("--steps", cfg.steps),
        ("--micro-batches", cfg.micro_batches),
    ):
        _positive(option, value)
    for option, gbps in (("--ib-gbps", cfg.ib_gbps), ("--nvl-gbps", cfg.nvl_gbps)):
        if not gbps > 0:
            raise ConfigError(option, f"must be a positive bandwidth in GB/s, got {gbps}")
    world = cfg.world_size
    pp, ep = cfg.pp, cfg.ep
    if pp is None and ep is None:
        if cfg.workload in SCHEDULED_WORKLOADS and world % cfg.nodes == 0:
            pp, ep = cfg.gpus_per_node, cfg.nodes
        else:
            pp, ep = 1, world
    elif pp is None:
        pp = world // ep if world % ep == 0 else 0
    elif ep is None:
        ep = world // pp if world % pp == 0 else 0
    if not pp or not ep or pp * ep != world:
        raise ConfigError(
            "--pp/--ep",
            f"PP x EP = {cfg.pp or '?'} x {cfg.ep or '?'} must equal nodes x gpus-per-node = "
            f"{cfg.nodes} x {cfg.gpus_per_node} = {world}",
        )
    if cfg.workload == "ep-dispatch" and pp != 1:
        raise ConfigError("--pp", f"ep-dispatch has no pipeline; PP must be 1, got {pp}")
    micro_batches = cfg.micro_batches
    if micro_batches is None:
        micro_batches = 2 * pp if cfg.workload in SCHEDULED_WORKLOADS else 2
    if cfg.workload in SCHEDULED_WORKLOADS:
        _check_schedule(cfg.schedule, pp, micro_batches)
    out = _check_inject(replace(cfg, pp=pp, ep=ep, micro_batches=micro_batches))
    if check_import:
        module = _load_workload(cfg.workload)
        hook = getattr(module, "validate", None)
        if callable(hook):
            try:
                hook(workload_config(out))
            except ValueError as exc:
                raise ConfigError("--workload", f"{cfg.workload}: {exc}") from exc
    return out


def workload_config(cfg: RunConfig) -> dict[str, Any]:
    """The ``cfg`` dict a workload's ``run`` receives (JSON-ready)."""
    return {
        "workload": cfg.workload,
        "schedule": cfg.schedule if cfg.workload in SCHEDULED_WORKLOADS else None,
        "pp": cfg.pp,
        "ep": cfg.ep,
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.gpus_per_node,
        "micro_batches": cfg.micro_batches,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "ib_gbps": cfg.ib_gbps,
        "nvl_gbps": cfg.nvl_gbps,
        **cfg.extra,
    }


def pick_backend(requested: str, ranks_per_host: int) -> str:
    """gloo or nccl: ``auto`` is nccl when CUDA has a GPU for every rank on this host.

    ``nccl`` with fewer GPUs than ranks on this host is refused here, before any rank
    starts (NCCL itself would fail later with "Duplicate GPU detected")."""
    import torch

    has_cuda = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if has_cuda else 0
    if requested == "nccl" and not has_cuda:
        raise ConfigError("--backend", "nccl needs CUDA, and no CUDA device is available")
    if requested == "nccl" and n_gpus < ranks_per_host:
        raise ConfigError(
            "--backend",
            f"nccl needs one GPU per rank: {ranks_per_host} ranks on this host but only "
            f"{n_gpus} GPU(s) visible (use fewer --gpus-per-node/--nodes, or --backend gloo)")
    if requested == "auto":
        return "nccl" if has_cuda and n_gpus >= ranks_per_host else "gloo"
    return requested


def is_torchrun_env(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True when the process was started by torchrun (or an equivalent launcher)."""
    return all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


# --------------------------------------------------------------------------- one rank
class _BareSession:
    """No session at all (benchmarks): every call is a no-op, nothing is written."""

    enabled = False

    def __init__(self) -> None:
        self.steps = 0
        self.schedule: dict[str, Any] | None = None

    def annotate(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def step(self) -> None:
        self.steps += 1

    def report(self, text: str) -> None:
        pass

    def record_traffic(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_events(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_routing(self, *args: Any, **kwargs: Any) -> None:
        pass

    now_ns = staticmethod(time.monotonic_ns)  # the session clock


def _new_groups(layout: Any, rank: int, backend: str) -> tuple[Any, Any, Any]:
    """comm group (all ranks), and this rank's PP / EP groups (None when = world).

    ``new_group`` is collective over the default group: every rank creates every group
    in the same order and keeps its own.
    """
    import torch.distributed as dist

    comm = dist.new_group(backend=backend)
    pp_group = ep_group = None
    if 1 < layout.pp < layout.world_size:
        for e in range(layout.ep):
            g = dist.new_group(layout.pp_group(e), backend=backend)
            if rank in layout.pp_group(e):
                pp_group = g
    if 1 < layout.ep < layout.world_size:
        for s in range(layout.pp):
            g = dist.new_group(layout.ep_group(s), backend=backend)
            if rank in layout.ep_group(s):
                ep_group = g
    return comm, pp_group, ep_group


def run_rank(
    cfg: RunConfig,
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    init_method: str,
    progress: EventFn | None = None,
    launcher: str = "local",
) -> dict[str, Any]:
    """Run one rank: rendezvous, build the context and session, run the workload, export.

    ``cfg`` must come from :func:`resolve` with a concrete backend. Returns this rank's
    facts (also gathered into ``run.json`` by rank 0).
    """
    import torch
    import torch.distributed as dist

    from overlapscope.profiler.comm_stream import make_comm_stream
    from overlapscope.profiler.layout import RankLayout
    from overlapscope.profiler.session import ProfileSession, RankContext
    from overlapscope.profiler.topology import Topology

    module = _load_workload(cfg.workload)
    topology = Topology(cfg.nodes, cfg.gpus_per_node, cfg.ib_gbps, cfg.nvl_gbps)
    layout = RankLayout(cfg.pp or 1, cfg.ep or world_size)
    if cfg.backend == "nccl":
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:  # never share a GPU between ranks (NCCL refuses it late)
            raise ConfigError("--backend", f"rank {rank} has local rank {local_rank} but only "
                              f"{n_gpus} GPU(s) are visible on this host")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = _dt.timedelta(seconds=cfg.collective_timeout_s)
    dist.init_process_group(
        cfg.backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    stream = None
    try:
        comm_group, pp_group, ep_group = _new_groups(layout, rank, cfg.backend)
        # raises (never hangs) when the side stream cannot be set up
        stream = make_comm_stream(device)
        ref_unix_ns = None
        if cfg.clock_skew:  # one reference instant for every rank's clock error
            box = [time.time_ns()]
            dist.broadcast_object_list(box, src=0)
            ref_unix_ns = int(box[0])
        skew = (cfg.clock_skew or {}).get(rank)
        ctx = RankContext(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            topology=topology,
            device=device,
            backend=cfg.backend,
            comm_stream=stream,
            layout=layout,
            comm_group=comm_group,
            pp_group=pp_group,
            ep_group=ep_group,
            timeout_s=cfg.collective_timeout_s,
        )
        wcfg = workload_config(cfg)
        schedule = None
        if cfg.workload in SCHEDULED_WORKLOADS:
            schedule = {
                "name": cfg.schedule,
                "pp": cfg.pp,
                "ep": cfg.ep,
                "micro_batches": cfg.micro_batches,
            }
        if progress:
            progress({"kind": "started", "rank": rank, "total": cfg.steps})
        if cfg.bare:
            session: Any = _BareSession()
        else:
            session = ProfileSession(
                cfg.out,
                rank=rank,
                world_size=world_size,
                topology=topology,
                workload={"name": cfg.workload, "config": wcfg},
                schedule=schedule,
                enabled=cfg.trace,
                cuda=device.type == "cuda",
                total_steps=cfg.steps,
                progress=progress,
                run_facts={
                    "backend": cfg.backend,
                    "device_type": device.type,
                    "layout": layout.to_dict(),
                    "launcher": {"mode": launcher},
                    **({"inject": inj} if (inj := inject_manifest(cfg, ref_unix_ns)) else {}),
                },
                inject_delay=cfg.inject_delay,
                clock_skew={**skew, "ref_unix_ns": ref_unix_ns} if skew else None,
            )
            session.comm_tid = stream.native_id
            session.start()
        # Profiler start-up takes a while and differs per rank; start the clock together.
        dist.barrier()
        t0 = time.perf_counter()
        try:
            facts = module.run(ctx, session, wcfg) or {}
            stream.synchronize(cfg.collective_timeout_s)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except BaseException:
            if not cfg.bare:
                session.abort()
            raise
        wall = time.perf_counter() - t0
        result: dict[str, Any] = {"rank": rank, "wall_s": wall, "facts": facts}
        if not cfg.bare:
            res = session.close(wall_s=wall, facts=facts)
            result.update(
                file=res.path.name if res.path else None,
                trace_bytes=res.trace_bytes,
                export_s=res.export_s,
                steps=res.steps,
            )
        return result
    finally:
        if stream is not None:
            stream.close(timeout=1.0)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def run_torchrun(cfg: RunConfig, progress: EventFn | None = None) -> dict[str, Any]:
    """Run this process as one rank of a torchrun job (``env://`` rendezvous)."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    cfg = resolve(cfg)
    if world != cfg.world_size:
        raise ConfigError(
            "--nodes/--gpus-per-node",
            f"torchrun started {world} ranks but nodes x gpus-per-node = {cfg.world_size}",
        )
    local_rank = int(os.environ.get("LOCAL_RANK", rank % cfg.gpus_per_node))
    cfg = replace(cfg, backend=pick_backend(cfg.backend, cfg.gpus_per_node))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return run_rank(
        cfg,
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        init_method="env://",
        progress=progress,
        launcher="torchrun",
    )


# --------------------------------------------------------------------------- local launch
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(cfg_dict: dict[str, Any], rank: int, port: int, q: Any, log_path: str) -> None:
    """Entry point of a locally spawned rank: logs to a file, reports over ``q``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        cfg = RunConfig(**cfg_dict)
        facts = run_rank(
            cfg,
            rank=rank,
            world_size=cfg.world_size,
            local_rank=rank % cfg.gpus_per_node,
            init_method=f"tcp://127.0.0.1:{port}",
            progress=q.put,
        )
        q.put({"kind": "done", "rank": rank, "result": facts})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit 1
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        q.put({"kind": "failed", "rank": rank, "error": text})
        code = 1
    # Flush the queue, then leave without running teardown that could block on peers.
    q.close()
    q.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_reason(code: int) -> str:
    if code == 0:
        return "exited without reporting a result"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _mp_context() -> Any:
    """A forkserver that imports torch once; children fork from it (spawn elsewhere)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # torch.profiler imports torch._inductor on first start (~1.5 s per rank): do it once.
        ctx.set_forkserver_preload(
            ["torch", "torch._inductor.config", "overlapscope.profiler.session"]
        )
        return ctx
    return mp.get_context("spawn")


class SigintLatch:
    """Ctrl-C noted, not raised, until :meth:`check`: between checks no code can lose it.

    A KeyboardInterrupt raised at a random point can be swallowed (an import's bare
    ``except:`` inside torch, say: the run then simply went on, seen in CI) or leave a
    half-started rank behind. While the latch is held, SIGINT only notes itself (its
    Python handler runs in the main thread, whichever thread the signal lands on), and
    :meth:`check` raises it where the caller can stop cleanly. Leaving the ``with``
    block puts the previous handler back and raises a Ctrl-C noted since the last
    check. Outside the main thread it does nothing (signals are the main thread's).
    """

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._previous: Any = None
        self._active = False

    def __enter__(self) -> SigintLatch:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._note)
            self._active = True
        return self

    def _note(self, signum: int, _frame: Any) -> None:
        self._pending.append(signum)

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the last check."""
        if self._pending:
            self._pending.clear()
            raise KeyboardInterrupt

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._active:
            self._active = False
            previous = self._previous
            signal.signal(signal.SIGINT,
                          previous if previous is not None else signal.default_int_handler)
        if exc_type is None:
            self.check()


def _stop_all(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def run_local(cfg: RunConfig, on_event: EventFn | None = None,
              sigint: SigintLatch | None = None) -> dict[str, Any]:
    """Spawn every rank on this machine and wait; returns ``{"results", "wall_s", ...}``.

    Raises :class:`ConfigError` for a bad configuration and :class:`LaunchError` naming
    the first rank that failed (exception, non-zero exit, signal) or that timed out.
    Ctrl-C stops every rank and raises KeyboardInterrupt; ``sigint``: a latch the caller
    already holds (e.g. since before torch was imported), else one is held here.
    """
    if sigint is None:
        with SigintLatch() as latch:
            return _run_local(cfg, on_event, latch)
    return _run_local(cfg, on_event, sigint)


def _run_local(cfg: RunConfig, on_event: EventFn | None, latch: SigintLatch) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg = resolve(cfg)
    cfg = replace(cfg, backend=pick_backend(cfg.backend, cfg.world_size))
    out = Path(cfg.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("rank-*.json.gz"):
        stale.unlink()
    (out / "run.json").unlink(missing_ok=True)
    emit = on_event or (lambda ev: None)
    world = cfg.world_size
    port = free_port()
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = _mp_context()
    q = ctx.Queue()
    procs = []
    # Ctrl-C is only noted while ranks start (a half-started child would fail with a
    # traceback once this process is gone); the loop below takes it and stops them all.
    try:
        latch.check()
        for rank in range(world):
            log = str(logs / f"rank-{rank}.log")
            p = ctx.Process(target=_child, args=(asdict(cfg), rank, port, q, log), daemon=True)
            p.start()
            procs.append(p)
    except BaseException:
        _stop_all(procs)
        raise
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    results: dict[int, dict[str, Any]] = {}
    failure: LaunchError | None = None
    deadline = time.monotonic() + cfg.timeout_s
    try:
        while len(results) < world and failure is None:
            latch.check()  # Ctrl-C: raised here, every 0.2 s at most
            if time.monotonic() > deadline:
                missing = [r for r in range(world) if r not in results]
                failure = LaunchError(
                    missing[0] if len(missing) == 1 else None,
                    f"timed out after {cfg.timeout_s:.0f} s; ranks not finished: {missing}",
                )
                break
            try:
                ev = q.get(timeout=0.2)
            except _queue.Empty:
                # Only with an empty queue: a finished rank's "done" may still be in flight.
                if any(r not in results and p.exitcode is not None for r, p in enumerate(procs)):
                    failure = _root_failure(q, procs, results, [], logs)
                continue
            if ev["kind"] == "failed":
                failure = _root_failure(q, procs, results, [ev], logs)
                continue
            if ev["kind"] == "done":
                results[ev["rank"]] = ev["result"]
            emit(ev)
    except BaseException:
        _stop_all(procs)
        raise
    if failure is not None:
        _stop_all(procs)
    if failure is not None:
        emit({"kind": "failed", "rank": failure.rank, "error": failure.reason})
        raise failure
    for p in procs:
        p.join(10.0)
    _stop_all(procs)
    wall = time.perf_counter() - t_start
    _note_launcher(out, wall, not cfg.bare)
    return {
        "config": cfg,
        "results": [results[r] for r in range(world)],
        "wall_s": wall,
        "out": str(out),
    }


#: Error texts of ranks that only noticed that a peer went away (not the root cause).
_PEER_LOSS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout")


def _root_failure(
    q: Any, procs: list[Any], results: dict[int, Any], events: list[dict[str, Any]], logs: Path
) -> LaunchError:
    """The rank that caused a failed launch, after a short grace period.

    When one rank dies its peers fail soon after with connection errors, so messages and
    exit codes are collected for about a second; a rank that died without reporting
    (killed, ``os._exit``) is blamed first, then the first reported error that is not a
    lost-peer symptom, then a rank still running silently while its peers timed out, then
    the first reported error.
    """
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            ev = q.get(timeout=0.1)
        except _queue.Empty:
            continue
        if ev.get("kind") == "failed":
            events.append(ev)
        elif ev.get("kind") == "done":
            results[ev["rank"]] = ev["result"]
    reported = {ev["rank"] for ev in events}
    silent = sorted(
        (r for r, p in enumerate(procs) if r not in results and r not in reported),
        key=lambda r: (procs[r].exitcode in (None, 0), r),  # killed / non-zero first
    )
    silent = [r for r in silent if procs[r].exitcode is not None]
    others = sorted(reported | set(silent))
    if silent:
        rank, reason = silent[0], _exit_reason(procs[silent[0]].exitcode)
    else:
        primary = [ev for ev in events if not any(k in ev["error"].lower() for k in _PEER_LOSS)]
        stuck = [
            r
            for r, p in enumerate(procs)
            if r not in results and r not in reported and p.is_alive()
        ]
        first = (primary or events)[0]
        if not primary and stuck:
            # Peers gave up waiting (collective timeout) on a rank that is still running.
            rank, reason = stuck[0], f"stopped responding; its peers failed with: {first['error']}"
        else:
            rank, reason = first["rank"], first["error"]
    rest = [r for r in others if r != rank]
    if rest:
        reason += f" (then ranks {rest} failed too)"
    return LaunchError(rank, reason, str(logs / f"rank-{rank}.log"))


def _note_launcher(out: Path, wall_s: float, expect_manifest: bool) -> None:
    """Add the launcher's own wall time to run.json (written by rank 0)."""
    from overlapscope.profiler.manifest import MANIFEST_NAME, read_manifest, write_manifest

    if not (out / MANIFEST_NAME).exists():
        if expect_manifest:
            raise LaunchError(0, f"rank 0 did not write {out / MANIFEST_NAME}")
        return
    manifest = read_manifest(out)
    manifest["launcher"] = {"mode": "local", "wall_s": wall_s}
    write_manifest(out, manifest)
