"""``smoke``: the smallest workload that exercises the whole profiling path.

Per step and micro-batch, the communication thread all-reduces a buffer (on
``ctx.comm_group``) while the main thread runs a chain of matmuls; the all-reduce is
annotated ``smoke:allreduce:mb=<i>`` and recorded as ``comm_traffic`` with the ring
all-reduce traffic model (each rank sends ``2 (W-1)/W * nbytes`` to its successor
``(r + 1) % W``); the compute is annotated ``smoke:F:mb=<i>:stage=<s>``.

Config keys (all optional): ``steps`` (2), ``micro_batches`` (2), ``dim`` (matrix size, 192),
``matmuls`` (per micro-batch, 6), ``comm_elems`` (float32 elements all-reduced, 262144),
``seed`` (0). Failure injection for tests: ``fail_rank`` (rank that fails), ``fail_step``
(0-based step, 0), ``fail_mode``: "raise" (exception), "exit" (``os._exit(3)``), "kill"
(SIGKILL to itself) or "hang" (sleeps), applied before that step's first all-reduce.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
import torch.distributed as dist

from overlapscope.profiler.session import ProfileSession, RankContext, now_ns


def ring_allreduce_bytes(rank: int, world_size: int, nbytes: int) -> list[int]:
    """Bytes rank ``rank`` sends to each rank in a ring all-reduce of ``nbytes``.

    Reduce-scatter then all-gather: 2 (W-1) chunks of nbytes / W, all to the successor.
    """
    out = [0] * world_size
    if world_size > 1:
        out[(rank + 1) % world_size] = 2 * (world_size - 1) * nbytes // world_size
    return out


def _fail(mode: str, rank: int) -> None:
    if mode == "exit":
        os._exit(3)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        time.sleep(3600)
    raise RuntimeError(f"smoke: injected failure on rank {rank}")


def _allreduce(ctx: RankContext, session: ProfileSession, buf: torch.Tensor, mb: int) -> None:
    with session.annotate(f"smoke:allreduce:mb={mb}"):
        t0 = now_ns()
        dist.all_reduce(buf, group=ctx.comm_group)
        t1 = now_ns()
    if ctx.world_size > 1:
        succ = (ctx.rank + 1) % ctx.world_size
        hop = ctx.topology.link(ctx.rank, succ)
        nbytes = buf.numel() * buf.element_size()
        session.record_traffic(
            f"all_reduce:{hop}",
            "all_reduce",
            hop,
            ring_allreduce_bytes(ctx.rank, ctx.world_size, nbytes),
            None,
            t0,
            t1,
            str(buf.dtype).removeprefix("torch."),
        )


def run(ctx: RankContext, session: ProfileSession, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the smoke workload; returns facts for run.json (checks, bytes, timings)."""
    steps = int(cfg.get("steps", 2))
    micro_batches = int(cfg.get("micro_batches", 2))
    dim = int(cfg.get("dim", 192))
    matmuls = int(cfg.get("matmuls", 6))
    comm_elems = int(cfg.get("comm_elems", 262144))
    fail_rank = cfg.get("fail_rank")
    fail_step = int(cfg.get("fail_step", 0))
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) + ctx.rank)
    weight = (torch.randn(dim, dim, generator=gen) / dim**0.5).to(ctx.device)
    x = torch.randn(dim, dim, generator=gen).to(ctx.device)
    expected = float(ctx.world_size * (ctx.world_size + 1) // 2)
    sent = 0
    t_start = time.perf_counter()
    for step in range(steps):
        if fail_rank is not None and int(fail_rank) == ctx.rank and step == fail_step:
            _fail(str(cfg.get("fail_mode", "raise")), ctx.rank)
        for mb in range(micro_batches):
            buf = torch.full((comm_elems,), float(ctx.rank + 1), device=ctx.device)
            pending = ctx.comm_stream.submit(_allreduce, ctx, session, buf, mb)
            with session.annotate(f"smoke:F:mb={mb}:stage={ctx.stage}"):
                y = x
                for _ in range(matmuls):
                    y = torch.tanh(y @ weight)
            pending.result(timeout=ctx.timeout_s)
            if not bool(torch.all(buf == expected)):
                raise RuntimeError(f"smoke: all_reduce result wrong on rank {ctx.rank}")
            sent += sum(ring_allreduce_bytes(ctx.rank, ctx.world_size, buf.numel() * 4))
        session.step()
    return {
        "steps": steps,
        "micro_batches": micro_batches,
        "sent_bytes": sent,
        "allreduce_ok": True,
        "compute_checksum": float(y.sum()),
        "loop_s": time.perf_counter() - t_start,
    }
