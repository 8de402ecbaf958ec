"""Pipeline point-to-point exchange over torch.distributed (gloo on CPU, nccl on GPU).

Shapes and dtype are registered up front (one activation shape per pipeline, as in the
reference), so receive buffers can be allocated before the data arrives. One *commit*
issues all posted sends and receives as a batch (``batch_isend_irecv``; grouped on NCCL,
plain isend/irecv on gloo), annotated ``pp_send``.

Two ways to wait:

* :meth:`P2P.post` returns at once with a :class:`Posted` batch: each receive is a
  :class:`PendingRecv` whose :meth:`~PendingRecv.wait` (annotated ``pp_recv``) blocks
  only when its data is needed, and the sends complete in the background (the executor
  reaps them, and waits for the rest at the end of the step). Sends never block compute:
  the semantics the unit-cost replay assumes (sends available when issued), and what
  the reference gets on a GPU, where ``Work.wait()`` of NCCL only makes the compute
  *stream* wait while the host runs on;
* :meth:`P2P.exchange` posts and waits for everything, receives and sends (the
  reference's ``_commit_and_wait_comm`` taken literally on the host; with gloo a send
  then blocks until the peer has posted the matching receive).

Nothing here needs ``torch.cuda``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import record_function

#: ``on_traffic(collective, peer_global_rank, nbytes, t0_ns, t1_ns)``, called per send.
TrafficFn = Callable[[str, int, int, int, int], None]


class P2P:
    """Point-to-point exchange between pipeline ranks.

    ``ranks[i]`` is the global rank of pipeline index ``i`` (peers in programs are
    pipeline indices); ``group`` the process group (None = default group).
    """

    def __init__(
        self,
        ranks: Sequence[int],
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        *,
        group: Any = None,
        annotate: Callable[[str], contextlib.AbstractContextManager[Any]] = record_function,
        on_traffic: TrafficFn | None = None,
    ) -> None:
        self.ranks = list(ranks)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self.group = group
        self.annotate = annotate
        self.on_traffic = on_traffic

    def post(self, sends: Sequence[tuple[torch.Tensor, int]],
             recv_peers: Sequence[int]) -> Posted:
        """Issue the sends and receives of one commit without waiting for any of them."""
        ops: list[dist.P2POp] = []
        sent: list[tuple[torch.Tensor, int]] = []
        for tensor, peer in sends:
            if tuple(tensor.shape) != self.shape or tensor.dtype != self.dtype:
                raise ValueError(
                    f"P2P: sending {tuple(tensor.shape)}/{tensor.dtype}, registered "
                    f"{self.shape}/{self.dtype}")
            t = tensor.contiguous()
            sent.append((t, peer))
            ops.append(dist.P2POp(dist.isend, t, self.ranks[peer], self.group))
        bufs = [torch.empty(self.shape, dtype=self.dtype, device=self.device)
                for _ in recv_peers]
        ops += [dist.P2POp(dist.irecv, b, self.ranks[p], self.group)
                for b, p in zip(bufs, recv_peers, strict=True)]
        if not ops:
            return Posted([], [], [])
        t0 = time.monotonic_ns()
        with self.annotate("pp_send"):
            reqs = dist.batch_isend_irecv(ops)
        n_send = len(sent)
        if self.on_traffic is not None:  # bytes leave now; the record spans the issue
            t1 = time.monotonic_ns()
            for tensor, peer in sent:
                self.on_traffic("pp_send", self.ranks[peer],
                                tensor.numel() * tensor.element_size(), t0, t1)
        recvs = [PendingRecv(b, w, self.annotate) for b, w in zip(bufs, reqs[n_send:],
                                                                  strict=True)]
        return Posted(recvs, list(reqs[:n_send]), [t for t, _ in sent])

    def exchange(self, sends: Sequence[tuple[torch.Tensor, int]],
                 recv_peers: Sequence[int]) -> list[torch.Tensor]:
        """Send ``(tensor, peer)`` pairs, receive one registered-shape tensor from each
        peer of ``recv_peers`` (in order), wait for everything; returns the receives."""
        ops: list[dist.P2POp] = []
        for tensor, peer in sends:
            if tuple(tensor.shape) != self.shape or tensor.dtype != self.dtype:
                raise ValueError(
                    f"P2P: sending {tuple(tensor.shape)}/{tensor.dtype}, registered "
                    f"{self.shape}/{self.dtype}")
            ops.append(dist.P2POp(dist.isend, tensor.contiguous(), self.ranks[peer], self.group))
        bufs = [torch.empty(self.shape, dtype=self.dtype, device=self.device)
                for _ in recv_peers]
        ops += [dist.P2POp(dist.irecv, b, self.ranks[p], self.group)
                for b, p in zip(bufs, recv_peers, strict=True)]
        if not ops:
            return bufs
        t0 = time.monotonic_ns()
        with self.annotate("pp_send"):
            reqs = dist.batch_isend_irecv(ops)
        with self.annotate("pp_recv"):
            for req in reqs:
                req.wait()
        if self.on_traffic is not None:
            t1 = time.monotonic_ns()
            for tensor, peer in sends:
                self.on_traffic("pp_send", self.ranks[peer],
                                tensor.numel() * tensor.element_size(), t0, t1)
        return bufs


class PendingRecv:
    """A posted receive: ``buffer`` holds the data once :meth:`wait` returned."""

    def __init__(self, buffer: torch.Tensor, work: Any,
                 annotate: Callable[[str], contextlib.AbstractContextManager[Any]]) -> None:
        self.buffer = buffer
        self._work = work
        self._annotate = annotate

    @property
    def done(self) -> bool:
        return self._work is None

    def wait(self) -> torch.Tensor:
        """Block until the data arrived (annotated ``pp_recv``); returns the buffer."""
        if self._work is not None:
            with self._annotate("pp_recv"):
                self._work.wait()
            self._work = None
        return self.buffer


class Posted:
    """One commit's posted batch: receives (:class:`PendingRecv`) and send works (the
    sent tensors are kept alive until :meth:`reap` / :meth:`wait_sends` saw them done)."""

    def __init__(self, recvs: list[PendingRecv], send_works: list[Any],
                 send_tensors: list[torch.Tensor]) -> None:
        self.recvs = recvs
        self._sends = list(zip(send_works, send_tensors, strict=True))

    def reap(self) -> bool:
        """Drop completed sends (never blocks); True when none is left."""
        self._sends = [(w, t) for w, t in self._sends if not _completed(w)]
        return not self._sends

    def wait_sends(self) -> None:
        """Block until every send of the batch completed."""
        for w, _ in self._sends:
            w.wait()
        self._sends = []


def _completed(work: Any) -> bool:
    try:
        return bool(work.is_completed())
    except (AttributeError, RuntimeError):
        return False
