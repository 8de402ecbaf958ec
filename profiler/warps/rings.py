"""Chunk rings with head/tail counters, as used by both hops of the dispatch.

A ring holds ``slots`` chunk slots; slot of chunk ``j`` is ``j % slots``. The
producer may write chunk ``j`` once ``head >= j + 1 - slots`` (the consumer has
released chunk ``j - slots``); the consumer may read chunk ``j`` once
``tail >= j + 1``. Counters only grow, so occupancy is ``tail - head``.

Each slot really stores token rows (a ``[slots, slot_tokens, row_width]``
buffer: uint8 token bytes for dispatch, float32 partial sums for combine;
allocated lazily so untouched pages cost nothing) and the ids of the tokens it
holds, which lets the kernel trace a lost token to the ring it vanished from.
"""

from __future__ import annotations

import numpy as np

from overlapscope.profiler.warps.clock import Clock, Counter
from overlapscope.profiler.warps.schema import WarpLog


class Ring:
    """One ring (``kind`` "rdma" or "nvl") of one channel towards one peer."""

    __slots__ = (
        "kind", "channel", "peer", "name", "slots", "head", "tail", "data", "ids", "counts",
        "written",
    )

    def __init__(
        self, clock: Clock, log: WarpLog | None, *, kind: str, channel: int, peer: str,
        slots: int, slot_tokens: int, row_width: int, move_bytes: bool,
        dtype: type = np.uint8,
    ) -> None:
        if slots < 1:
            raise ValueError(f"ring {kind} c{channel} {peer}: slots must be >= 1, got {slots}")
        self.kind = kind
        self.channel = channel
        self.peer = peer
        self.name = f"ring {kind} c{channel} {peer}"
        self.slots = slots
        self.head: Counter = clock.counter(f"{self.name} head")
        self.tail: Counter = clock.counter(f"{self.name} tail")
        self.data = (
            np.empty((slots, slot_tokens, row_width), dtype=dtype) if move_bytes else None
        )
        self.ids: list[np.ndarray | None] = [None] * slots
        self.counts = [0] * slots
        #: every token id ever written (for lost-token diagnosis), one array per write
        self.written: list[np.ndarray] = []
        if log is not None:
            self._attach(log)

    def _attach(self, log: WarpLog) -> None:
        name, kind, channel, peer = self.name, self.kind, self.channel, self.peer
        head, tail = self.head, self.tail

        def on_change(t: int, _v: int) -> None:
            log.ring_sample(name, kind, channel, peer, t, tail.value - head.value)

        head.on_change = on_change
        tail.on_change = on_change

    def write(
        self, chunk: int, ids: np.ndarray, src: np.ndarray | None, sel: np.ndarray
    ) -> None:
        """Store tokens ``ids`` = the rows ``src[sel]`` into chunk ``chunk``'s slot."""
        s = chunk % self.slots
        n = len(ids)
        if self.data is not None and src is not None and n:
            np.take(src, sel, axis=0, out=self.data[s, :n])
        self.ids[s] = ids
        self.counts[s] = n
        self.written.append(ids)

    def put(self, chunk: int, ids: np.ndarray, rows: np.ndarray | None) -> None:
        """Store computed rows (e.g. a reduced partial) for tokens ``ids``."""
        self.write(chunk, ids, rows, np.arange(len(ids)))

    def read(self, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids and byte rows (a view) of chunk ``chunk``'s slot."""
        s = chunk % self.slots
        ids = self.ids[s]
        if ids is None:
            ids = np.empty(0, dtype=np.int64)
        n = self.counts[s]
        rows = self.data[s, :n] if self.data is not None else None
        return ids, rows

    def has_seen(self, token: int) -> bool:
        return any(bool((w == token).any()) for w in self.written)
