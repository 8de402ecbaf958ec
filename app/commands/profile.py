"""`overlapscope profile`: run an instrumented workload and write a run directory.

Locally it spawns ``nodes x gpus-per-node`` ranks itself (gloo on 127.0.0.1, or nccl when
every rank has a GPU) and shows one progress bar per rank. Under torchrun (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` set) it runs just this process's rank, e.g.::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 \\
        -m overlapscope.app.cli profile --workload ep-dispatch --nodes 2 --gpus-per-node 8

An ``--out`` directory that already holds a run (``run.json`` or ``rank-*.json*``) is
refused unless ``--force``: a new run would replace those files.

Exit status: 0 success, 2 refused arguments, 1 a rank failed or the run timed out.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import importlib.util
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: Launcher keys: set through their own options, never through ``--set``.
_OPTION_KEYS = {
    "workload": "--workload", "schedule": "--schedule", "pp": "--pp", "ep": "--ep",
    "nodes": "--nodes", "gpus_per_node": "--gpus-per-node",
    "micro_batches": "--micro-batches", "steps": "--steps", "seed": "--seed",
    "ib_gbps": "--ib-gbps", "nvl_gbps": "--nvl-gbps",
}


_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def _duration_ms(text: str, option: str) -> float:
    """``20ms``, ``500us``, ``0.02s``, ``1000ns`` or a bare number (ms), signed -> ms."""
    t = text.strip()
    for unit in sorted(_UNITS_MS, key=len, reverse=True):
        if t.endswith(unit):
            number, factor = t[: -len(unit)], _UNITS_MS[unit]
            break
    else:
        number, factor = t, 1.0
    try:
        return float(number) * factor
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a duration (e.g. 20ms, 500us, 0.02s)"
                         ) from None


def parse_inject_delay(text: str) -> dict[str, Any]:
    """``RANK:PHASE:DURATION`` (the phase may hold colons) -> {"rank", "phase", "ms"}."""
    rank, sep, rest = text.partition(":")
    phase, sep2, duration = rest.rpartition(":")
    if not sep or not sep2 or not phase:
        raise ValueError(f"--inject-delay expects RANK:PHASE:DURATION (e.g. 5:attn(F):20ms), "
                         f"got {text!r}")
    try:
        r = int(rank)
    except ValueError:
        raise ValueError(f"--inject-delay: rank {rank!r} is not an integer") from None
    ms = _duration_ms(duration, "--inject-delay")
    if ms < 0:
        raise ValueError(f"--inject-delay: the delay must be >= 0, got {duration!r}")
    return {"rank": r, "phase": phase, "ms": ms}


def parse_clock_skew(items: list[str]) -> dict[int, dict[str, Any]]:
    """``RANK:OFFSET:DRIFT`` items (offset e.g. ``+2ms``, ``-500us``; drift ``10ppm`` or a
    number of ppm; the drift part is optional) -> {rank: {"offset_ns", "drift_ppm"}}."""
    out: dict[int, dict[str, Any]] = {}
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--clock-skew expects RANK:OFFSET[:DRIFT] (e.g. 3:+2ms:10ppm), "
                             f"got {item!r}")
        try:
            rank = int(parts[0])
        except ValueError:
            raise ValueError(f"--clock-skew: rank {parts[0]!r} is not an integer") from None
        offset_ns = round(_duration_ms(parts[1], "--clock-skew") * 1e6)
        drift = 0.0
        if len(parts) == 3:
            d = parts[2].strip().removesuffix("ppm")
            try:
                drift = float(d)
            except ValueError:
                raise ValueError(f"--clock-skew: drift {parts[2]!r} is not a number of ppm"
                                 ) from None
        out[rank] = {"offset_ns": offset_ns, "drift_ppm": drift}
    return out


def check_set_keys(workload: str, extra: dict[str, Any]) -> None:
    """Refuse ``--set`` keys the workload does not read (ValueError naming the known ones)."""
    from overlapscope.profiler.run import WORKLOAD_KEYS

    known = WORKLOAD_KEYS.get(workload)
    if known is None:  # an unknown workload is reported by resolve()
        return
    for key in extra:
        if key in _OPTION_KEYS:
            raise ValueError(f"--set {key}=...: use the option {_OPTION_KEYS[key]} instead")
        if key not in known:
            raise ValueError(
                f"--set: unknown key {key!r} for workload {workload}; known keys: "
                + ", ".join(known)
            )


#: Files that make a directory a run directory (what a new run would replace).
_RUN_FILES = ("run.json", "rank-*.json*")


def existing_run_files(out: Path) -> list[str]:
    """Names of run files already in ``out`` (empty when it is absent or holds none)."""
    if not out.is_dir():
        return []
    names = [p.name for p in out.iterdir() if p.is_file()]
    return sorted(n for n in names if any(fnmatch.fnmatch(n, pat) for pat in _RUN_FILES))


class _RankBars:
    """One rich progress bar per rank, fed by launcher events."""

    def __init__(self, progress: Progress, world: int, steps: int, label: Any) -> None:
        self.progress = progress
        self.tasks = {
            r: progress.add_task(label(r), total=steps, status="starting") for r in range(world)
        }

    def __call__(self, ev: dict[str, Any]) -> None:
        rank = ev.get("rank")
        task = self.tasks.get(rank) if rank is not None else None
        if task is None:
            return
        kind = ev["kind"]
        if kind == "started":
            self.progress.update(task, status="running")
        elif kind == "step":
            self.progress.update(task, completed=ev["step"])
        elif kind == "message":
            self.progress.update(task, status=escape(ev["text"]))
        elif kind == "done":
            self.progress.update(task, completed=self.progress.tasks[task].total, status="done")
        elif kind == "failed":
            self.progress.update(task, status=f"[red]failed[/red]: {escape(ev['error'][:60])}")


def _summary(console: Console, out: Path, results: list[dict[str, Any]], wall_s: float) -> None:
    table = Table(title=f"run written to {out}", title_justify="left")
    for col in ("rank", "file", "trace KiB", "workload s", "export s"):
        table.add_column(col, justify="right" if col != "file" else "left")
    for r in results:
        size = r.get("trace_bytes")
        export = r.get("export_s")
        table.add_row(
            str(r["rank"]),
            r.get("file") or "-",
            f"{size / 1024:.1f}" if size else "-",
            f"{r['wall_s']:.2f}",
            f"{export:.2f}" if export is not None else "-",
        )
    console.print(table)
    console.print(f"manifest: {out / 'run.json'}   total wall time: {wall_s:.1f} s")
    if any(r.get("file") for r in results):
        console.print(f"next: overlapscope analyze {out}")


def register(app: typer.Typer) -> None:
    """Add the profile command to the CLI."""

    @app.command()
    def profile(
        workload: Annotated[
            str, typer.Option(help="Workload: dualpipe-moe, ep-dispatch or smoke.")
        ] = "smoke",
        schedule: Annotated[
            str, typer.Option(help="Pipeline schedule (dualpipe-moe): dualpipe, dualpipev, 1f1b.")
        ] = "dualpipe",
        pp: Annotated[
            int | None, typer.Option(min=1, help="Pipeline ranks (default: inferred).")
        ] = None,
        ep: Annotated[
            int | None, typer.Option(min=1, help="Expert-parallel ranks (default: inferred).")
        ] = None,
        nodes: Annotated[int, typer.Option(min=1, help="Nodes to lay the ranks out on.")] = 1,
        gpus_per_node: Annotated[
            int, typer.Option(min=1, help="Ranks (GPUs) per node.")
        ] = 4,
        micro_batches: Annotated[
            int | None,
            typer.Option(min=1, help="Micro-batches per step (default 2 x PP for DualPipe)."),
        ] = None,
        steps: Annotated[int, typer.Option(min=1, help="Training steps to run.")] = 2,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        backend: Annotated[str, typer.Option(help="auto, gloo or nccl.")] = "auto",
        ib_gbps: Annotated[float, typer.Option(help="Emulated IB bandwidth per GPU, GB/s.")] = 50.0,
        nvl_gbps: Annotated[
            float, typer.Option(help="Emulated NVLink bandwidth per GPU, GB/s.")
        ] = 160.0,
        out: Annotated[
            str | None, typer.Option(help="Run directory (default runs/<workload>-<time>).")
        ] = None,
        force: Annotated[
            bool,
            typer.Option("--force", help="Overwrite the run already in --out (run.json, rank-*)."),
        ] = False,
        no_trace: Annotated[
            bool, typer.Option("--no-trace", help="Run without tracing (overhead baseline).")
        ] = False,
        timeout: Annotated[
            float, typer.Option(help="Seconds before the whole launch is abandoned.")
        ] = 600.0,
        collective_timeout: Annotated[
            float, typer.Option(help="Seconds a rank waits in a collective before failing.")
        ] = 120.0,
        set_: Annotated[
            list[str] | None,
            typer.Option(
                "--set", help="Extra workload config KEY=VALUE (JSON values), repeatable."
            ),
        ] = None,
        inject_delay: Annotated[
            str | None,
            typer.Option(
                help="Make one rank slow on purpose: RANK:PHASE:DURATION, e.g. "
                "5:attn(F):20ms (every range of that name on that rank lasts 20 ms longer; "
                "PHASE may be an fnmatch pattern). Recorded in run.json under inject.delay."
            ),
        ] = None,
        clock_skew: Annotated[
            list[str] | None,
            typer.Option(
                help="Skew one rank's written trace times on purpose: RANK:OFFSET[:DRIFT], "
                "e.g. 3:+2ms:10ppm (repeatable). Recorded in run.json under inject.clock."
            ),
        ] = None,
        clock_skew_seed: Annotated[
            int | None,
            typer.Option(
                help="Random clock offset (±5 ms) and drift (±20 ppm) for every rank but 0, "
                "from this seed (--clock-skew entries win)."
            ),
        ] = None,
    ) -> None:
        """Run an instrumented workload and write rank-<r>.json.gz traces plus run.json."""
        from overlapscope.profiler.run import (
            ConfigError,
            LaunchError,
            RunConfig,
            SigintLatch,
            is_torchrun_env,
            pick_backend,
            resolve,
            run_local,
            run_torchrun,
        )

        err = Console(stderr=True)

        def refuse(message: str) -> typer.Exit:
            err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # one line
            return typer.Exit(2)

        try:
            extra = _parse_sets(set_ or [])
            check_set_keys(workload, extra)
            delay = parse_inject_delay(inject_delay) if inject_delay else None
            skew = parse_clock_skew(clock_skew or [])
        except ValueError as exc:
            raise refuse(str(exc)) from None
        if importlib.util.find_spec("torch") is None:
            raise refuse(
                "profile needs torch: pip install 'overlapscope[profiling]' "
                "(or: bash scripts/setup.sh profiling)"
            )
        if out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = str(Path("runs") / f"{workload}-{stamp}")
        if Path(out).exists() and not Path(out).is_dir():
            raise refuse(f"--out {out} is a file, not a directory")
        held = existing_run_files(Path(out))
        if held and not force:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise refuse(
                f"--out {out} already holds a run ({shown}); pass --force to replace it, "
                "or choose another --out"
            )
        cfg = RunConfig(
            workload=workload,
            schedule=schedule,
            pp=pp,
            ep=ep,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            micro_batches=micro_batches,
            steps=steps,
            seed=seed,
            backend=backend,
            ib_gbps=ib_gbps,
            nvl_gbps=nvl_gbps,
            out=out,
            trace=not no_trace,
            timeout_s=timeout,
            collective_timeout_s=collective_timeout,
            extra=extra,
            inject_delay=delay,
            clock_skew=skew or None,
            clock_skew_seed=clock_skew_seed,
        )
        torchrun = is_torchrun_env()
        # Importing the workload imports torch (seconds): a Ctrl-C meanwhile is noted
        # and raised once it is done, never lost in the import (see SigintLatch).
        with SigintLatch():
            try:
                cfg = resolve(cfg)
                # before any rank starts: e.g. --backend nccl on a machine without CUDA
                pick_backend(cfg.backend, cfg.gpus_per_node if torchrun else cfg.world_size)
            except ConfigError as exc:
                raise refuse(str(exc)) from None
        console = Console()
        try:
            if torchrun:
                _torchrun(cfg, run_torchrun, err)
                if int(os.environ["RANK"]) == 0:
                    console.print(f"rank 0 done; run written to {cfg.out}")
                return
            label = _rank_label(cfg)
            with Progress(*_columns(), console=err) as progress:
                bars = _RankBars(progress, cfg.world_size, cfg.steps, label)
                result = run_local(cfg, on_event=bars)
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        except LaunchError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        _summary(console, Path(result["out"]), result["results"], result["wall_s"])


def _torchrun(cfg: Any, run_torchrun: Any, err: Console) -> None:
    """This process's rank of a torchrun job; rank 0 shows a progress bar."""
    from overlapscope.profiler.run import ConfigError, LaunchError

    rank = int(os.environ["RANK"])
    try:
        if rank != 0:
            run_torchrun(cfg)
            return
        with Progress(*_columns(), console=err) as progress:
            bars = _RankBars(progress, 1, cfg.steps, lambda r: "rank 0 (torchrun)")
            run_torchrun(cfg, progress=bars)
    except (ConfigError, LaunchError):
        raise
    except Exception as exc:  # a failing rank: name it; torchrun stops the others
        raise LaunchError(rank, f"{type(exc).__name__}: {exc}") from exc


def _columns() -> tuple[Any, ...]:
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  {task.fields[status]}"),
        TimeElapsedColumn(),
    )


def _rank_label(cfg: Any) -> Any:
    """rank -> "rank r  n<node> s<stage> e<ep index>" for the progress bars."""
    from overlapscope.profiler.layout import RankLayout

    layout = RankLayout(cfg.pp, cfg.ep)

    def label(rank: int) -> str:
        node = rank // cfg.gpus_per_node
        return (
            f"rank {rank:<3} node {node} stage {layout.stage_of(rank)} "
            f"ep {layout.ep_index_of(rank)}"
        )

    return label
