"""Torch executor: runs one rank's schedule program (see ``base.py``) on real modules.

Annotation grammar (``torch.profiler.record_function`` names, parsed by
``analyzers/pipeline.py``)::

    <schedule>:<op>:mb=<i>:stage=<s>                         op in F, B, I, W
    <schedule>:FB:mb_f=<i>:mb_b=<j>:stage_f=<s>:stage_b=<t>  overlapped pair

``schedule`` is dualpipe | dualpipev | 1f1b | zb1p; ``stage`` is the global model
stage (DualPipeV has 2N of them); ``I`` is an input-grad-only backward whose weight
grads were deferred, ``W`` runs one deferred FIFO entry (its mb/stage name the ``I`` it
completes). Inside an ``FB`` range a stage class that implements
``overlapped_forward_backward`` adds the DeepSeek phase names ``attn(F)``,
``dispatch(F)``, ``mlp(F)``, ``combine(F)``, ``attn(B)``, ``attn(W)``, ``mlp(B)``,
``mlp(W)``, ``dispatch(B)``, ``combine(B)``. Point-to-point transfers are inside
``pp_send`` / ``pp_recv`` ranges (``p2p.py``).

P2P waits (``p2p_wait``): ``"need"`` (default) posts each commit's batch without waiting
and waits for a received tensor only when an op first uses it; sends complete in the
background (reaped at later commits, the rest waited for at the end of the step), so
sends never block compute. ``"commit"`` waits for the whole batch at the commit. The
instruction order (what is posted when, and the op order) is the same in both: the
schedule programs of ``base.py``.

Overlap hook: when both modules of a pair share a class defining ::

    @classmethod
    def overlapped_forward_backward(cls, module_f, x_f, criterion_f, label_f,
                                    module_b, loss_b, out_b, grad_b) -> (out_f, loss_f)

it is called for each ``FB`` op; it must run the forward of ``module_f`` on ``x_f``
(and ``criterion_f(out_f, label_f)`` when a criterion is given) and the *full*
backward of ``module_b`` (from ``loss_b`` when given, else ``out_b`` with ``grad_b``;
``out_b`` is always the stage output that ``module_b`` returned), leaving the input
gradient in ``.grad`` of ``module_b``'s input.
Without the hook the pair runs forward then backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from overlapscope.profiler.schedules.base import Commit, Compute, Local, Op, Schedule
from overlapscope.profiler.schedules.p2p import P2P, PendingRecv, Posted
from overlapscope.profiler.schedules.wgrad import STORE

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Annotate = Callable[[str], contextlib.AbstractContextManager[Any]]


class PipelineExecutor:
    """Executes ``schedule``'s program for ``rank`` with ``modules[chunk]``.

    ``p2p`` may be None only for single-rank schedules. ``criterion(output, label)``
    gives the loss of one micro-batch; gradients are those of the *sum* of the
    per-micro-batch losses.
    """

    def __init__(
        self,
        schedule: Schedule,
        rank: int,
        modules: Sequence[nn.Module],
        criterion: Criterion,
        p2p: P2P | None,
        *,
        annotate: Annotate = record_function,
        p2p_wait: str = "need",
    ) -> None:
        if len(modules) != schedule.n_chunks:
            raise ValueError(f"{schedule.name} needs {schedule.n_chunks} modules per rank, "
                             f"got {len(modules)}")
        self.schedule = schedule
        self.rank = rank
        self.modules = list(modules)
        self.criterion = criterion
        self.p2p = p2p
        self.annotate = annotate
        if p2p_wait not in ("need", "commit"):
            raise ValueError(f"p2p_wait must be 'need' or 'commit', got {p2p_wait!r}")
        self.p2p_wait = p2p_wait
        self.program = schedule.program(rank)
        self._posted: list[Posted] = []

    # ------------------------------------------------------------------------------
    def step(self, inputs: Mapping[int, torch.Tensor],
             labels: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Run one step. ``inputs[mb]`` / ``labels[mb]`` are needed for the micro-batches
        entering / leaving at this rank. Returns ``{mb: loss}`` for losses computed here
        (detached). Parameter ``.grad`` fields accumulate as in ``loss.backward()``."""
        self._inputs, self._labels = inputs, labels
        self._act_in: dict[tuple[int, int], torch.Tensor] = {}
        self._act_out: dict[tuple[int, int], torch.Tensor] = {}
        self._grad_out: dict[tuple[int, int], torch.Tensor] = {}
        self._grad_in: dict[tuple[int, int], torch.Tensor | None] = {}
        self._loss: dict[tuple[int, int], torch.Tensor] = {}
        losses: dict[int, torch.Tensor] = {}
        self._losses = losses
        STORE.clear()
        for ins in self.program:
            if isinstance(ins, Compute):
                with self.annotate(ins.op.annotation(self.schedule.name)):
                    self._compute(ins.op)
            elif isinstance(ins, Commit):
                self._commit(ins)
            elif isinstance(ins, Local):
                self._local(ins)
        if len(STORE):
            raise RuntimeError("weight-grad FIFO not empty at the end of the step")
        for batch in self._posted:  # sends still in flight: done before the step ends
            batch.wait_sends()
        self._posted = []
        return losses

    # --- communication ------------------------------------------------------------------
    def _commit(self, ins: Commit) -> None:
        sends = []
        for t in ins.sends:
            key = (t.chunk, t.mb)
            if t.what == "act":
                sends.append((self._act_out[key].detach(), t.peer))
            else:
                grad = self._grad_in.pop(key)
                assert grad is not None, f"no input grad for {key}"
                sends.append((grad, t.peer))
        if self.p2p is None:
            raise RuntimeError(f"{self.schedule.name}: rank {self.rank} needs a P2P object")
        peers = [t.peer for t in ins.recvs]
        if self.p2p_wait == "commit":
            bufs: list[Any] = self.p2p.exchange(sends, peers)
        else:
            self._posted = [b for b in self._posted if not b.reap()]
            batch = self.p2p.post(sends, peers)
            self._posted.append(batch)
            bufs = batch.recvs
        for t, buf in zip(ins.recvs, bufs, strict=True):
            if t.what == "act":
                self._act_in[(t.chunk, t.mb)] = (
                    buf if isinstance(buf, PendingRecv) else buf.requires_grad_())
            else:
                self._grad_out[(t.chunk, t.mb)] = buf

    @staticmethod
    def _ready(value: Any, *, act: bool) -> Any:
        """A received tensor, waiting for it first when it is still in flight."""
        if isinstance(value, PendingRecv):
            buf = value.wait()
            return buf.requires_grad_() if act else buf
        return value

    def _local(self, ins: Local) -> None:
        if ins.what == "act":
            out = self._act_out[(ins.src_chunk, ins.mb)]
            self._act_in[(ins.dst_chunk, ins.mb)] = out.detach().requires_grad_()
        else:
            grad = self._grad_in.pop((ins.src_chunk, ins.mb))
            assert grad is not None
            self._grad_out[(ins.dst_chunk, ins.mb)] = grad

    # --- compute ------------------------------------------------------------------------
    def _input(self, chunk: int, mb: int) -> torch.Tensor:
        key = (chunk, mb)
        if key not in self._act_in:
            kind, _ = self.schedule.fwd_src(self.rank, chunk)
            if kind != "data":
                raise RuntimeError(f"{self.schedule.name}: rank {self.rank} has no input "
                                   f"for chunk {chunk} mb {mb}")
            self._act_in[key] = self._inputs[mb]
        self._act_in[key] = self._ready(self._act_in[key], act=True)
        return self._act_in[key]

    def _is_loss(self, chunk: int) -> bool:
        return self.schedule.fwd_dst(self.rank, chunk)[0] == "loss"

    def _store_forward(self, chunk: int, mb: int, out: torch.Tensor,
                       loss: torch.Tensor | None) -> None:
        self._act_out[(chunk, mb)] = out
        if self._is_loss(chunk):
            assert loss is not None
            self._loss[(chunk, mb)] = loss
            self._losses[mb] = loss.detach()

    def _forward(self, chunk: int, mb: int) -> None:
        out = self.modules[chunk](self._input(chunk, mb))
        loss = self.criterion(out, self._labels[mb]) if self._is_loss(chunk) else None
        self._store_forward(chunk, mb, out, loss)

    def _backward_args(self, chunk: int, mb: int
                       ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(loss or None, output, output grad or None) of a forward to run backward on."""
        key = (chunk, mb)
        out = self._act_out.pop(key)
        if self._is_loss(chunk):
            return self._loss.pop(key), out, None
        return None, out, self._ready(self._grad_out.pop(key), act=False)

    def _finish_backward(self, chunk: int, mb: int) -> None:
        x = self._act_in.pop((chunk, mb))
        self._grad_in[(chunk, mb)] = x.grad if x.requires_grad else None

    def _backward(self, chunk: int, mb: int, defer: bool) -> None:
        loss, out, grad = self._backward_args(chunk, mb)
        with STORE.defer() if defer else contextlib.nullcontext():
            if loss is not None:
                loss.backward()
            else:
                torch.autograd.backward(out, grad)
        self._finish_backward(chunk, mb)

    def _forward_backward(self, op: Op) -> None:
        mf, mb_ = self.modules[op.chunk], self.modules[op.chunk_b]
        hook = getattr(type(mf), "overlapped_forward_backward", None)
        if hook is None or type(mf) is not type(mb_):
            self._forward(op.chunk, op.mb)
            self._backward(op.chunk_b, op.mb_b, defer=False)
            return
        x_f = self._input(op.chunk, op.mb)
        crit = self.criterion if self._is_loss(op.chunk) else None
        label = self._labels[op.mb] if crit is not None else None
        loss_b, out_b, grad_b = self._backward_args(op.chunk_b, op.mb_b)
        out_f, loss_f = hook(mf, x_f, crit, label, mb_, loss_b, out_b, grad_b)
        self._finish_backward(op.chunk_b, op.mb_b)
        self._store_forward(op.chunk, op.mb, out_f, loss_f)

    def _compute(self, op: Op) -> None:
        if op.kind == "F":
            self._forward(op.chunk, op.mb)
        elif op.kind in ("B", "I"):
            self._backward(op.chunk, op.mb, defer=op.kind == "I")
        elif op.kind == "W":
            STORE.pop()
        else:
            self._forward_backward(op)
