"""1F1B (PipeDream-flush) and ZB1P (zero-bubble ZB-H1) on PP ranks, one stage each.

Rank r warms up with PP-r-1 forwards, then alternates one forward and one backward,
then drains the remaining backwards. ZB1P splits each backward into an input-grad op
(I) and a deferred weight-grad op (W): input grads travel upstream faster (I instead
of I+W per hop) and rank r keeps r W's pending, run at the end while upstream ranks
finish (bubble (PP-1)(F+B-2W) instead of (PP-1)(F+B), BRIEF §1.4).
"""

from __future__ import annotations

from collections.abc import Sequence

from overlapscope.profiler.schedules.base import Endpoint, ProgramBuilder, Schedule


class OneF1B(Schedule):
    """Non-interleaved 1F1B over ``n_ranks`` stages and ``n_micro`` micro-batches."""

    name = "1f1b"
    n_chunks = 1

    @property
    def n_stages(self) -> int:
        return self.n_ranks

    def stage(self, rank: int, chunk: int) -> int:
        return rank

    def micro_batches(self, chunk: int) -> Sequence[int]:
        return range(self.n_micro)

    def fwd_src(self, rank: int, chunk: int) -> Endpoint:
        return ("data", -1) if rank == 0 else ("peer", rank - 1)

    def fwd_dst(self, rank: int, chunk: int) -> Endpoint:
        return ("loss", -1) if rank == self.n_ranks - 1 else ("peer", rank + 1)

    def _warmup(self, rank: int) -> int:
        return min(self.n_ranks - rank - 1, self.n_micro)

    def _emit(self, b: ProgramBuilder) -> None:
        warm = self._warmup(b.rank)
        for _ in range(warm):
            b.forward(0)
        for _ in range(self.n_micro - warm):
            b.forward(0)
            b.backward(0)
        for _ in range(warm):
            b.backward(0)


class ZB1P(OneF1B):
    """ZB-H1: 1F1B with input-only backwards and deferred weight-grad ops."""

    name = "zb1p"

    def _emit(self, b: ProgramBuilder) -> None:
        warm = self._warmup(b.rank)
        # rank r holds back PP-1-warm (= r) W's: the later a rank, the earlier its last
        # input-grad must leave, so its trailing W's run while upstream ranks finish.
        keep = self.n_ranks - 1 - warm
        pending = 0

        def backward_then_maybe_w() -> None:
            nonlocal pending
            b.backward(0, zb=True)
            pending += 1
            if pending > keep:
                b.weight()
                pending -= 1

        for _ in range(warm):
            b.forward(0)
        for _ in range(self.n_micro - warm):
            b.forward(0)
            backward_then_maybe_w()
        for _ in range(warm):
            backward_then_maybe_w()
        for _ in range(pending):
            b.weight()
