"""An in-process stand-in for torch.distributed's batched point-to-point calls.

Lets tests run the real two-hop dispatch (``profiler/dispatch.py``) on several ranks,
each a thread of one process: ``isend`` puts a copy into a FIFO mailbox per
(source, destination, tag), as gloo matches messages, and a receive's ``wait`` takes it.
Usage::

    fake = FakeDist()
    monkeypatch.setattr(overlapscope.profiler.dispatch, "dist", fake)
    run_threads(fake, world, fn)        # fn(rank) in one thread per rank
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any


class FakeDist:
    """``P2POp``, ``isend``, ``irecv`` and ``batch_isend_irecv`` over mailboxes; the calling
    thread's rank is ``set_rank(r)`` (done by :func:`run_threads`)."""

    def __init__(self) -> None:
        self.boxes: dict[tuple[int, int, int], queue.Queue] = defaultdict(queue.Queue)
        self.lock = threading.Lock()
        self.local = threading.local()
        self.ranks: dict[int, int] = {}  # native thread id -> rank (comm threads inherit)
        self.isend, self.irecv = "isend", "irecv"

    def set_rank(self, rank: int) -> None:
        self.local.rank = rank

    def rank_of_caller(self) -> int:
        rank = getattr(self.local, "rank", None)
        if rank is None:
            rank = self.ranks[threading.get_native_id()]
        return rank

    def _box(self, key: tuple[int, int, int]) -> queue.Queue:
        with self.lock:
            return self.boxes[key]

    def P2POp(self, op: str, tensor: Any, peer: int, group: Any = None,  # noqa: N802
              tag: int = 0) -> Any:
        return SimpleNamespace(op=op, tensor=tensor, peer=peer, tag=tag)

    def batch_isend_irecv(self, ops: list[Any]) -> list[Any]:
        me = self.rank_of_caller()
        works = []
        for op in ops:
            if op.op == "isend":
                self._box((me, op.peer, op.tag)).put(op.tensor.clone())
                works.append(SimpleNamespace(wait=lambda: None))
            else:
                box = self._box((op.peer, me, op.tag))

                def wait(box: queue.Queue = box, buf: Any = op.tensor) -> None:
                    buf.copy_(box.get(timeout=30))
                works.append(SimpleNamespace(wait=wait))
        return works


def run_threads(fake: FakeDist, world: int, fn: Callable[[int], Any],
                timeout: float = 60.0) -> list[Any]:
    """Run ``fn(rank)`` for every rank in its own thread; re-raise the first error."""
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def main(r: int) -> None:
        fake.set_rank(r)
        try:
            results[r] = fn(r)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a rank thread did not finish")
    return results
