"""DualPipe (DeepSeek-V3): bidirectional pipeline with overlapped forward/backward pairs.

Placement (BRIEF §1.1): N ranks (even), M micro-batches (even, M >= 2N). Rank r holds
chunk 0 = stage r of the "down" direction (micro-batches 0..M/2-1 enter at rank 0) and
chunk 1 = stage N-1-r of the "up" direction (micro-batches M/2..M-1 enter at rank N-1).
Each rank runs the eight phases of BRIEF §1.2; phase p maps to chunk p XOR
(rank >= N/2). :func:`emit_eight_phases` is shared with DualPipeV, which substitutes
H -> N, h -> r, M/2 -> M.
"""

from __future__ import annotations

from collections.abc import Sequence

from overlapscope.profiler.schedules.base import Endpoint, ProgramBuilder, Schedule


def emit_eight_phases(b: ProgramBuilder, *, H: int, h: int, m_half: int, middle: bool) -> None:
    """Emit the eight phases of one DualPipe step for one rank.

    ``H`` half the ranks (DualPipe) or all devices (DualPipeV), ``h`` the half rank,
    ``m_half`` micro-batches per direction, ``middle`` whether this rank is the turning
    point (the two middle ranks of DualPipe, the last device of DualPipeV).
    """
    # 1. nF0: fill the own-direction pipe
    for _ in range(2 * (H - h - 1)):
        b.forward(0)
    # 2. nF0F1: alternate; non-middle ranks send F0 after F1, middle ranks hold back
    #    the last F1 send (it goes out inside phase 4's first un-overlapped pair)
    n2 = h + 1
    b.recv_forward(0)
    for i in range(n2):
        b.forward(0, recv=False, send=middle)
        b.recv_forward(0)
        b.forward(1, send=(not middle) or i < n2 - 1)
        if not middle:
            b.send_forward(0)
    # 3. nB1W1F1: zero-bubble backward, its W, then the next F1
    for _ in range(H - h - 1):
        b.backward(1, zb=True)
        b.recv_forward(1)
        b.weight()
        b.forward(1, recv=False)
    # 4. main: [F0 & B1] [F1 & B0]
    for i in range(m_half - 2 * H + h + 1):
        if i == 0:
            if middle:
                # first pair not overlapped on the middle ranks (shorter bubble)
                b.forward(0, recv=False, send=False)
                b.send_forward(1)
                b.backward(1, send=False)
                b.send_forward(0)
                b.send_backward(1)
            else:
                b.forward_backward(0, 1, recv_f=False)
        else:
            b.forward_backward(0, 1)
        b.forward_backward(1, 0)
    # 5. nB1F1B0
    for _ in range(H - h - 1):
        b.backward(1)
        b.forward_backward(1, 0)
    # 6. nB1B0: zero-bubble from the middle repetition on (switch point by parity of h)
    n6 = h + 1
    zb = False
    for i in range(n6):
        if i == n6 // 2 and h % 2 == 1:
            zb = True
        b.backward(1, zb=zb)
        if i == n6 // 2 and h % 2 == 0:
            zb = True
        b.backward(0, zb=zb)
    # 7. nWB0
    for _ in range(H - h - 1):
        b.weight()
        b.backward(0, zb=True)
    # 8. nW: drain the FIFO
    for _ in range(h + 1):
        b.weight()


class DualPipe(Schedule):
    """DualPipe over ``n_ranks`` ranks (even) and ``n_micro`` micro-batches (even, >= 2N)."""

    name = "dualpipe"
    n_chunks = 2

    def __init__(self, n_ranks: int, n_micro: int) -> None:
        super().__init__(n_ranks, n_micro)
        if n_ranks % 2:
            raise ValueError(f"dualpipe: the number of ranks must be even, got {n_ranks}")
        if n_micro % 2:
            raise ValueError(
                f"dualpipe: the number of micro-batches must be even "
                f"(half go each direction), got {n_micro}")
        if n_micro < 2 * n_ranks:
            raise ValueError(
                f"dualpipe: needs micro-batches >= 2 x ranks, got {n_micro} < 2 x {n_ranks}")

    @property
    def n_stages(self) -> int:
        return self.n_ranks

    def chunk_of_phase(self, rank: int, phase: int) -> int:
        return phase ^ int(rank >= self.n_ranks // 2)

    def stage(self, rank: int, chunk: int) -> int:
        return rank if chunk == 0 else self.n_ranks - 1 - rank

    def micro_batches(self, chunk: int) -> Sequence[int]:
        half = self.n_micro // 2
        return range(0, half) if chunk == 0 else range(half, self.n_micro)

    def fwd_src(self, rank: int, chunk: int) -> Endpoint:
        n = self.n_ranks
        if chunk == 0:
            return ("data", -1) if rank == 0 else ("peer", rank - 1)
        return ("data", -1) if rank == n - 1 else ("peer", rank + 1)

    def fwd_dst(self, rank: int, chunk: int) -> Endpoint:
        n = self.n_ranks
        if chunk == 0:
            return ("loss", -1) if rank == n - 1 else ("peer", rank + 1)
        return ("loss", -1) if rank == 0 else ("peer", rank - 1)

    def _emit(self, b: ProgramBuilder) -> None:
        n, r = self.n_ranks, b.rank
        H = n // 2
        emit_eight_phases(b, H=H, h=min(r, n - 1 - r), m_half=self.n_micro // 2,
                          middle=r in (H - 1, H))
