"""Spawn N gloo ranks on 127.0.0.1 and collect their results (multi-process test helper).

Lives in its own uniquely named module (not conftest.py) so spawned children can
import it by name. Usage, through the ``run_ranks`` fixture of conftest.py (the
worker must be a module-level function of the test module)::

    def _worker(rank: int, world: int, arg) -> dict: ...

    def test_x(run_ranks):
        results = run_ranks(_worker, 4, arg)   # list indexed by rank

Each child gets ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``, a
process group initialised with gloo (60 s timeout), and returns a picklable
value (tensors allowed). An exception in any rank fails the call with that
rank's traceback; the group is destroyed in every case.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    path = Path(out_dir) / f"rank-{rank}.pt"
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result: Any = {"ok": fn(rank, world, *args)}
    except BaseException:  # report to the parent instead of a bare non-zero exit
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, path)


def run_ranks(fn: Callable, world: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned gloo ranks; return the results."""
    import torch
    import torch.multiprocessing as mp

    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_child, args=(world, free_port(), out, fn, args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for proc in ctx.processes:
                        proc.kill()
                    pytest.fail(f"ranks did not finish within {timeout:.0f} s")
        except mp.ProcessRaisedException as exc:
            pytest.fail(f"a rank raised outside the worker: {exc}")
        except mp.ProcessExitedException as exc:  # a child crashed hard (segfault, kill)
            pytest.fail(f"a rank died: {exc}")
        results = []
        for r in range(world):
            res = torch.load(Path(out) / f"rank-{r}.pt", weights_only=False)
            if "error" in res:
                pytest.fail(f"rank {r} raised:\n{res['error']}")
            results.append(res["ok"])
        return results
