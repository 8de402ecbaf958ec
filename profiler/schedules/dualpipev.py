"""DualPipeV ("cut-in-half" DualPipe): N devices host 2N stages in a V shape.

Device r holds chunk 0 = stage r and chunk 1 = stage 2N-1-r. All M micro-batches
enter at device 0, flow down, turn around on device N-1 (chunk 0's output becomes
chunk 1's input locally, no communication) and return to device 0, which computes
the loss. Same eight phases as DualPipe with H -> N, h -> r, M/2 -> M (BRIEF §1.2);
only M >= 2N is required.
"""

from __future__ import annotations

from collections.abc import Sequence

from overlapscope.profiler.schedules.base import Endpoint, ProgramBuilder, Schedule
from overlapscope.profiler.schedules.dualpipe import emit_eight_phases


class DualPipeV(Schedule):
    """DualPipeV over ``n_ranks`` devices (2 x n_ranks stages), ``n_micro`` >= 2N."""

    name = "dualpipev"
    n_chunks = 2

    def __init__(self, n_ranks: int, n_micro: int) -> None:
        super().__init__(n_ranks, n_micro)
        if n_micro < 2 * n_ranks:
            raise ValueError(
                f"dualpipev: needs micro-batches >= 2 x devices, got {n_micro} < 2 x {n_ranks}")

    @property
    def n_stages(self) -> int:
        return 2 * self.n_ranks

    def stage(self, rank: int, chunk: int) -> int:
        return rank if chunk == 0 else 2 * self.n_ranks - 1 - rank

    def micro_batches(self, chunk: int) -> Sequence[int]:
        return range(self.n_micro)

    def fwd_src(self, rank: int, chunk: int) -> Endpoint:
        last = self.n_ranks - 1
        if chunk == 0:
            return ("data", -1) if rank == 0 else ("peer", rank - 1)
        return ("local", 0) if rank == last else ("peer", rank + 1)

    def fwd_dst(self, rank: int, chunk: int) -> Endpoint:
        last = self.n_ranks - 1
        if chunk == 0:
            return ("local", 1) if rank == last else ("peer", rank + 1)
        return ("loss", -1) if rank == 0 else ("peer", rank - 1)

    def _emit(self, b: ProgramBuilder) -> None:
        emit_eight_phases(b, H=self.n_ranks, h=b.rank, m_half=self.n_micro,
                          middle=b.rank == self.n_ranks - 1)
