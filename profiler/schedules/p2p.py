"""Pipeline point-to-point exchange over torch.distributed (gloo on CPU, nccl on GPU).

Shapes and dtype are registered up front (one activation shape per pipeline, as in the
reference), so receive buffers can be allocated before the data arrives. One
:meth:`P2P.exchange` call is one *commit*: all posted sends and receives are issued as
a batch (``batch_isend_irecv``; grouped on NCCL, plain isend/irecv on gloo) and waited
for. The issue is annotated ``pp_send`` and the wait ``pp_recv``. Nothing here needs
``torch.cuda``.
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
