"""Run toy-model pipelines on a local gloo world (``torch.multiprocessing.spawn``).

Used by the executor tests and handy for experiments: every worker runs the given
schedules in turn on :mod:`toy` stages and saves its per-micro-batch losses and
per-stage parameter gradients; :func:`run_toy_pipelines` collects them and sums the
gradients of replicated stages (DualPipe keeps two copies of each stage).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from overlapscope.profiler.schedules import make_schedule
from overlapscope.profiler.schedules.executor import PipelineExecutor
from overlapscope.profiler.schedules.p2p import P2P
from overlapscope.profiler.schedules.toy import ToyStage, mse, toy_batch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cases: list[tuple[str, int]], toy: dict,
            out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        for name, n_micro in cases:
            sched = make_schedule(name, world, n_micro)
            stages = [sched.stage(rank, c) for c in range(sched.n_chunks)]
            modules = [ToyStage(toy["dim"], toy["depth"], toy["seed"], s) for s in stages]
            xs, ys = toy_batch(n_micro, toy["mb_size"], toy["dim"], toy["seed"])
            p2p = P2P(list(range(world)), (toy["mb_size"], toy["dim"]), torch.float64,
                      torch.device("cpu"))
            ex = PipelineExecutor(sched, rank, modules, mse, p2p)
            losses = ex.step(dict(enumerate(xs)), dict(enumerate(ys)))
            grads = {s: [p.grad.clone() if p.grad is not None else None
                         for p in m.parameters()] for s, m in zip(stages, modules, strict=True)}
            torch.save({"losses": losses, "grads": grads},
                       Path(out_dir) / f"{name}-{n_micro}-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_toy_pipelines(
    n_ranks: int, cases: list[tuple[str, int]], *, dim: int = 8, depth: int = 2,
    mb_size: int = 3, seed: int = 0,
) -> dict[tuple[str, int], Any]:
    """Run each ``(schedule, n_micro)`` case on ``n_ranks`` spawned gloo ranks.

    Returns ``{case: {"losses": {mb: loss}, "grads": {stage: [grad per parameter]}}}``
    with gradients of replicated stages summed over their copies.
    """
    toy = {"dim": dim, "depth": depth, "mb_size": mb_size, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="osc-pipe-") as tmp:
        mp.spawn(_worker, args=(n_ranks, free_port(), cases, toy, tmp), nprocs=n_ranks,
                 join=True)
        out: dict[tuple[str, int], Any] = {}
        for case in cases:
            losses: dict[int, torch.Tensor] = {}
            grads: dict[int, list[torch.Tensor]] = {}
            for r in range(n_ranks):
                part = torch.load(Path(tmp) / f"{case[0]}-{case[1]}-rank{r}.pt")
                losses.update(part["losses"])
                for s, gs in part["grads"].items():
                    if s in grads:
                        grads[s] = [a + b for a, b in zip(grads[s], gs, strict=True)]
                    else:
                        grads[s] = gs
            out[case] = {"losses": losses, "grads": grads}
    return out
