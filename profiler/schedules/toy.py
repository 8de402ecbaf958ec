"""A small deterministic stage model (Linear + tanh stacks) for schedule tests and demos.

Stage ``s`` of a toy model is rebuilt identically from ``(seed, s)`` wherever it is
needed, so a pipeline rank and a single-process reference get the same parameters
without communication. Layers are :class:`DeferredLinear`, so the B/W split is real.
"""

from __future__ import annotations

import torch
from torch import nn

from overlapscope.profiler.schedules.wgrad import DeferredLinear


class ToyStage(nn.Module):
    """``depth`` x (DeferredLinear(dim, dim) -> tanh); shape-preserving."""

    def __init__(self, dim: int, depth: int, seed: int, stage: int,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + stage)
            self.layers = nn.ModuleList(DeferredLinear(dim, dim, dtype=dtype)
                                        for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def toy_batch(n_micro: int, mb_size: int, dim: int, seed: int,
              dtype: torch.dtype = torch.float64) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n_micro`` input and label micro-batches of shape ``[mb_size, dim]``."""
    gen = torch.Generator().manual_seed(seed + 7)
    xs = [torch.randn(mb_size, dim, generator=gen, dtype=dtype) for _ in range(n_micro)]
    ys = [torch.randn(mb_size, dim, generator=gen, dtype=dtype) for _ in range(n_micro)]
    return xs, ys


def mse(out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean squared error of one micro-batch."""
    return ((out - label) ** 2).mean()
