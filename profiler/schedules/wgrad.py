"""Deferred weight-gradient work (the B/W split of zero-bubble schedules).

Layers built on :class:`DeferredLinearFn` compute the input gradient in their backward
as usual, but when the process-wide :data:`STORE` is *deferring* they push a closure
that computes and accumulates the weight gradient instead of returning it. After an
input-only backward (op ``I``) the executor flushes the collected closures as one FIFO
entry; each ``W`` op pops and runs the oldest entry (BRIEF §1.3). :meth:`capture`
collects closures into a private list without touching the FIFO, which the overlapped
pair uses to run ``mlp(W)`` / ``attn(W)`` as separate phases.

The store is per process on purpose: autograd calls the backward of a custom function
without a handle to the schedule, and every rank is its own process.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterator

import torch
from torch import nn

Closure = Callable[[], None]


class WeightGradStore:
    """FIFO of deferred weight-grad entries; an entry is a list of closures."""

    def __init__(self) -> None:
        self._sink: list[Closure] | None = None
        self._queue: deque[list[Closure]] = deque()

    @property
    def deferring(self) -> bool:
        return self._sink is not None

    def put(self, fn: Closure) -> None:
        """Defer ``fn`` (only valid while deferring)."""
        assert self._sink is not None, "WeightGradStore.put outside a deferring region"
        self._sink.append(fn)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[Closure]]:
        """Collect closures pushed inside the block into the yielded list."""
        previous, self._sink = self._sink, []
        try:
            yield self._sink
        finally:
            self._sink = previous

    @contextlib.contextmanager
    def defer(self) -> Iterator[None]:
        """Collect closures pushed inside the block as one new FIFO entry."""
        with self.capture() as entry:
            yield
        self._queue.append(entry)

    def pop(self) -> None:
        """Run the oldest FIFO entry."""
        if not self._queue:
            raise RuntimeError("W op with an empty weight-grad FIFO")
        for fn in self._queue.popleft():
            fn()

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._sink = None
        self._queue.clear()


#: The process-wide store used by :class:`DeferredLinearFn`.
STORE = WeightGradStore()


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)


class DeferredLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` whose weight/bias gradients can be deferred to :data:`STORE`."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(x, weight)
        ctx.params = (weight, bias)
        out = x @ weight.t()
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - autograd protocol
        x, weight = ctx.saved_tensors
        w_param, b_param = ctx.params
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1])

        def weight_grads() -> tuple[torch.Tensor, torch.Tensor | None]:
            gw = g2.t() @ x2
            gb = g2.sum(0) if b_param is not None else None
            return gw, gb

        if STORE.deferring:
            def deferred() -> None:
                with torch.no_grad():
                    gw, gb = weight_grads()
                _accumulate(w_param, gw)
                if gb is not None:
                    _accumulate(b_param, gb)

            STORE.put(deferred)
            return grad_x, None, None
        gw, gb = weight_grads()
        return grad_x, gw, gb


class DeferredLinear(nn.Module):
    """Drop-in ``nn.Linear`` whose weight gradient honours the B/W split."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype,
                                               device=device))
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device))
                     if bias else None)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DeferredLinearFn.apply(x, self.weight, self.bias)
