"""Torch-free schedule intermediate representation and the program builder.

A schedule turns ``(n_ranks, n_micro)`` into one *program* per rank: an ordered list
of instructions that both the torch executor (``executor.py``) and the unit-cost
replay (``replay.py``) interpret, so what is measured and what is predicted are the
same sequence.

Instructions:

* :class:`Compute` wraps an :class:`Op`: ``F`` forward, ``B`` full backward, ``I``
  input-grad-only backward (its weight-grad work is deferred to the FIFO), ``W`` one
  FIFO entry of deferred weight-grad work, ``FB`` an overlapped forward/backward pair.
* :class:`Commit` issues every point-to-point transfer posted since the previous
  commit and waits for them (reference DualPipe semantics: receives for the next op
  are posted before it, sends of an op's result are posted after it and only go out
  at the next commit).
* :class:`Local` hands a tensor from one local chunk to the other without
  communication (DualPipeV's turn-around on the last device).

Each rank owns one or two *chunks* (local module index 0/1); a chunk is one model
stage. Micro-batches are processed in a fixed order per chunk (FIFO for forwards and
for backwards), which is what lets the builder below assign micro-batch ids.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

OpKind = Literal["F", "B", "I", "W", "FB"]
OP_KINDS: tuple[str, ...] = ("F", "B", "I", "W", "FB")


@dataclass(frozen=True)
class Op:
    """One compute op of a rank. For ``FB`` the ``*_b`` fields describe the backward half.

    ``stage`` is the global model stage (0-based, in forward order), ``chunk`` the
    local module index that computes it. ``W`` carries the micro-batch/stage of the
    input-only backward whose weight-grad work it runs.
    """

    kind: OpKind
    mb: int
    stage: int
    chunk: int
    mb_b: int = -1
    stage_b: int = -1
    chunk_b: int = -1

    def label(self) -> str:
        """The op part of the annotation grammar, e.g. ``F:mb=3:stage=1``."""
        if self.kind == "FB":
            return (
                f"FB:mb_f={self.mb}:mb_b={self.mb_b}"
                f":stage_f={self.stage}:stage_b={self.stage_b}"
            )
        return f"{self.kind}:mb={self.mb}:stage={self.stage}"

    def annotation(self, schedule: str) -> str:
        """Full record_function name: ``<schedule>:<label>``."""
        return f"{schedule}:{self.label()}"


@dataclass(frozen=True)
class Transfer:
    """One point-to-point tensor transfer posted by a rank.

    ``what`` is ``act`` (forward activation) or ``grad`` (gradient w.r.t. an
    activation); ``mb`` the micro-batch; ``chunk`` the local chunk the tensor belongs
    to (producer for sends, consumer for receives); ``stage`` that chunk's stage.
    """

    what: Literal["act", "grad"]
    peer: int
    mb: int
    chunk: int
    stage: int


@dataclass(frozen=True)
class Compute:
    op: Op


@dataclass(frozen=True)
class Commit:
    """Issue ``sends`` and ``recvs`` (posted since the last commit) and wait for all."""

    sends: tuple[Transfer, ...]
    recvs: tuple[Transfer, ...]


@dataclass(frozen=True)
class Local:
    """Move a tensor between local chunks: ``act`` output of ``src_chunk`` becomes input
    of ``dst_chunk``; ``grad`` input-grad of ``src_chunk`` becomes output-grad of
    ``dst_chunk``."""

    what: Literal["act", "grad"]
    mb: int
    src_chunk: int
    dst_chunk: int


Instr = Compute | Commit | Local

#: Where a chunk's forward input comes from / its output goes to:
#: ("data", -1) inputs from the batch, ("loss", -1) output feeds the criterion,
#: ("peer", rank) over P2P, ("local", chunk) another chunk of the same rank.
Endpoint = tuple[Literal["data", "loss", "peer", "local"], int]


class Schedule:
    """Base class: placement facts every schedule provides, plus program generation.

    Subclasses set ``name`` and implement :meth:`_emit` (the phase structure) and the
    placement methods. Construct via the subclass; bad configurations raise
    ``ValueError`` naming the constraint.
    """

    name: str = "base"
    #: chunks (local modules) per rank
    n_chunks: int = 1

    def __init__(self, n_ranks: int, n_micro: int) -> None:
        if n_ranks < 1:
            raise ValueError(f"{self.name}: n_ranks must be >= 1, got {n_ranks}")
        if n_micro < 1:
            raise ValueError(f"{self.name}: n_micro must be >= 1, got {n_micro}")
        self.n_ranks = n_ranks
        self.n_micro = n_micro

    # --- placement -----------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        """Number of distinct model stages (the ``PP`` of the bubble formulas)."""
        raise NotImplementedError

    def stage(self, rank: int, chunk: int) -> int:
        """Global stage index computed by ``chunk`` on ``rank``."""
        raise NotImplementedError

    def micro_batches(self, chunk: int) -> Sequence[int]:
        """Micro-batch ids that flow through ``chunk`` (of any rank), in order."""
        raise NotImplementedError

    def fwd_src(self, rank: int, chunk: int) -> Endpoint:
        raise NotImplementedError

    def fwd_dst(self, rank: int, chunk: int) -> Endpoint:
        raise NotImplementedError

    def chunk_of_stage(self, stage: int) -> tuple[int, int]:
        """``(rank, chunk)`` holding a stage (the first one for replicated stages)."""
        for r in range(self.n_ranks):
            for c in range(self.n_chunks):
                if self.stage(r, c) == stage:
                    return r, c
        raise KeyError(stage)

    # --- programs --------------------------------------------------------------------
    def program(self, rank: int) -> list[Instr]:
        """The instruction list of ``rank`` for one step."""
        if not 0 <= rank < self.n_ranks:
            raise ValueError(f"{self.name}: rank {rank} outside 0..{self.n_ranks - 1}")
        b = ProgramBuilder(self, rank)
        self._emit(b)
        return b.finish()

    def programs(self) -> list[list[Instr]]:
        return [self.program(r) for r in range(self.n_ranks)]

    def op_sequence(self, rank: int) -> list[Op]:
        """Compute ops of ``rank`` in program order."""
        return [i.op for i in self.program(rank) if isinstance(i, Compute)]

    def describe(self) -> dict:
        """JSON-able summary (for the trace's ``overlapscope.schedule`` block): name,
        sizes and the expected op label sequence per rank (analyzers compare against it)."""
        return {
            "name": self.name,
            "n_ranks": self.n_ranks,
            "n_micro": self.n_micro,
            "n_stages": self.n_stages,
            "sequence": {str(r): [op.label() for op in self.op_sequence(r)]
                         for r in range(self.n_ranks)},
        }

    def _emit(self, b: ProgramBuilder) -> None:
        raise NotImplementedError

    def chunk_of_phase(self, rank: int, phase: int) -> int:
        """Map a schedule phase (0/1) to the local chunk; identity unless overridden."""
        return phase


@dataclass
class ProgramBuilder:
    """Emits one rank's instructions with reference DualPipe communication semantics.

    Keeps, per chunk, FIFO counters of forwards, backwards, posted sends and
    receives, so micro-batch ids follow from the order of calls. ``phase`` arguments
    are mapped to chunks by the schedule (DualPipe XORs with "second half").
    """

    sched: Schedule
    rank: int
    instrs: list[Instr] = field(default_factory=list)
    _sends: list[Transfer] = field(default_factory=list)
    _recvs: list[Transfer] = field(default_factory=list)
    _wq: deque[Op] = field(default_factory=deque)

    def __post_init__(self) -> None:
        n = self.sched.n_chunks
        self._f = [0] * n
        self._b = [0] * n
        self._send_f = [0] * n
        self._send_b = [0] * n
        self._recv_f = [0] * n
        self._recv_b = [0] * n

    # helpers -------------------------------------------------------------------------
    def _c(self, phase: int) -> int:
        return self.sched.chunk_of_phase(self.rank, phase)

    def _mb(self, chunk: int, counter: list[int]) -> int:
        mbs = self.sched.micro_batches(chunk)
        i = counter[chunk]
        counter[chunk] += 1
        return mbs[i]

    def _xfer(self, what: str, peer: int, mb: int, chunk: int) -> Transfer:
        return Transfer(what, peer, mb, chunk, self.sched.stage(self.rank, chunk))  # type: ignore[arg-type]

    # communication -------------------------------------------------------------------
    def recv_forward(self, phase: int) -> None:
        c = self._c(phase)
        kind, peer = self.sched.fwd_src(self.rank, c)
        if kind == "peer":
            self._recvs.append(self._xfer("act", peer, self._mb(c, self._recv_f), c))

    def send_forward(self, phase: int) -> None:
        c = self._c(phase)
        kind, peer = self.sched.fwd_dst(self.rank, c)
        if kind == "peer":
            self._sends.append(self._xfer("act", peer, self._mb(c, self._send_f), c))
        elif kind == "local":
            self.instrs.append(Local("act", self._mb(c, self._send_f), c, peer))

    def recv_backward(self, phase: int) -> None:
        c = self._c(phase)
        kind, peer = self.sched.fwd_dst(self.rank, c)
        if kind == "peer":
            self._recvs.append(self._xfer("grad", peer, self._mb(c, self._recv_b), c))

    def send_backward(self, phase: int) -> None:
        c = self._c(phase)
        kind, peer = self.sched.fwd_src(self.rank, c)
        if kind == "peer":
            self._sends.append(self._xfer("grad", peer, self._mb(c, self._send_b), c))
        elif kind == "local":
            self.instrs.append(Local("grad", self._mb(c, self._send_b), c, peer))

    def commit(self) -> None:
        if self._sends or self._recvs:
            self.instrs.append(Commit(tuple(self._sends), tuple(self._recvs)))
            self._sends, self._recvs = [], []

    # compute -------------------------------------------------------------------------
    def _fwd_op(self, c: int) -> Op:
        return Op("F", self._mb(c, self._f), self.sched.stage(self.rank, c), c)

    def _bwd_op(self, c: int, zb: bool) -> Op:
        op = Op("I" if zb else "B", self._mb(c, self._b), self.sched.stage(self.rank, c), c)
        if zb:
            self._wq.append(op)
        return op

    def forward(self, phase: int, recv: bool = True, send: bool = True) -> None:
        if recv:
            self.recv_forward(phase)
        self.commit()
        self.instrs.append(Compute(self._fwd_op(self._c(phase))))
        if send:
            self.send_forward(phase)

    def backward(self, phase: int, zb: bool = False, recv: bool = True, send: bool = True) -> None:
        if recv:
            self.recv_backward(phase)
        self.commit()
        self.instrs.append(Compute(self._bwd_op(self._c(phase), zb)))
        if send:
            self.send_backward(phase)

    def forward_backward(self, phase_f: int, phase_b: int, recv_f: bool = True) -> None:
        """Overlapped pair: forward of ``phase_f`` with full backward of ``phase_b``."""
        if recv_f:
            self.recv_forward(phase_f)
        self.recv_backward(phase_b)
        self.commit()
        f = self._fwd_op(self._c(phase_f))
        b = self._bwd_op(self._c(phase_b), zb=False)
        self.instrs.append(Compute(Op("FB", f.mb, f.stage, f.chunk, b.mb, b.stage, b.chunk)))
        self.send_forward(phase_f)
        self.send_backward(phase_b)

    def weight(self) -> None:
        """Run the oldest FIFO entry of deferred weight-grad work."""
        self.commit()
        if not self._wq:
            raise RuntimeError(f"{self.sched.name}: rank {self.rank} W with empty FIFO")
        i = self._wq.popleft()
        self.instrs.append(Compute(Op("W", i.mb, i.stage, i.chunk)))

    def finish(self) -> list[Instr]:
        self.commit()
        if self._wq:
            raise RuntimeError(f"{self.sched.name}: rank {self.rank} left W work undone")
        return self.instrs


def check_matching(programs: list[list[Instr]]) -> None:
    """Verify that, for every ordered rank pair, the k-th send matches the k-th receive
    (same kind and micro-batch). Backends match P2P messages between a pair in posting
    order, so this is what makes the programs safe to execute. Raises ValueError."""
    sends: dict[tuple[int, int], list[tuple[str, int]]] = {}
    recvs: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for r, prog in enumerate(programs):
        for ins in prog:
            if isinstance(ins, Commit):
                for t in ins.sends:
                    sends.setdefault((r, t.peer), []).append((t.what, t.mb))
                for t in ins.recvs:
                    recvs.setdefault((t.peer, r), []).append((t.what, t.mb))
    for pair in set(sends) | set(recvs):
        if sends.get(pair, []) != recvs.get(pair, []):
            raise ValueError(f"P2P order mismatch on {pair[0]}->{pair[1]}")
