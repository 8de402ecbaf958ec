"""Unit-cost replay of schedule programs (no torch).

Cost model of the DualPipe README figure: F = 1, input-only backward I = 1, W = 1,
full backward B = 2, overlapped pair FB = 3 (any costs can be passed). A commit issues
its sends at the moment the rank reaches it (sends are available when issued, they
never block) and then blocks until every receive it carries has been issued by the
peer. Local hand-offs are free. The result gives per-rank timelines, idle time and a
text Gantt in the layout of BRIEF §1.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from overlapscope.profiler.schedules.base import Commit, Compute, Instr, Op, Schedule

UNIT_COSTS: dict[str, float] = {"F": 1, "I": 1, "W": 1, "B": 2, "FB": 3}


@dataclass(frozen=True)
class Timed:
    """An op placed on a rank's timeline (start/end in cost units)."""

    op: Op
    start: float
    end: float


@dataclass(frozen=True)
class Replay:
    """Replay result. ``idle[r]`` = makespan - busy time of rank r (cost units)."""

    timelines: list[list[Timed]]
    makespan: float

    @property
    def busy(self) -> list[float]:
        return [sum(t.end - t.start for t in tl) for tl in self.timelines]

    @property
    def idle(self) -> list[float]:
        return [self.makespan - b for b in self.busy]


def replay(programs: list[list[Instr]], costs: Mapping[str, float] = UNIT_COSTS) -> Replay:
    """Simulate all ranks' programs; raises RuntimeError on a deadlock."""
    n = len(programs)
    clock = [0.0] * n
    pos = [0] * n
    issued: set[tuple[int, int]] = set()
    sent: dict[tuple[int, int, str, int], float] = {}  # (src, dst, what, mb) -> time
    timelines: list[list[Timed]] = [[] for _ in range(n)]
    while any(pos[r] < len(programs[r]) for r in range(n)):
        progressed = False
        for r in range(n):
            prog = programs[r]
            while pos[r] < len(prog):
                ins = prog[pos[r]]
                if isinstance(ins, Compute):
                    start = clock[r]
                    clock[r] += costs[ins.op.kind]
                    timelines[r].append(Timed(ins.op, start, clock[r]))
                elif isinstance(ins, Commit):
                    if (r, pos[r]) not in issued:
                        issued.add((r, pos[r]))
                        for t in ins.sends:
                            sent[(r, t.peer, t.what, t.mb)] = clock[r]
                    keys = [(t.peer, r, t.what, t.mb) for t in ins.recvs]
                    if any(k not in sent for k in keys):
                        break  # blocked until the peers reach their commits
                    clock[r] = max([clock[r], *(sent[k] for k in keys)])
                pos[r] += 1
                progressed = True
        if not progressed:
            stuck = {r: pos[r] for r in range(n) if pos[r] < len(programs[r])}
            raise RuntimeError(f"replay deadlock at instruction index per rank {stuck}")
    return Replay(timelines, max(clock) if n else 0.0)


def replay_schedule(sched: Schedule, costs: Mapping[str, float] = UNIT_COSTS) -> Replay:
    return replay(sched.programs(), costs)


def gantt_cells(rep: Replay) -> list[list[str]]:
    """One cell per unit slot per rank, BRIEF §1.5 notation: ``F3`` forward, ``B3 B3``
    full backward, ``I3`` input-only backward, ``W`` weight grad, ``F3* B5* B5*`` an
    overlapped pair, ``.`` idle. Needs integer costs."""
    width = int(rep.makespan)
    rows = []
    for tl in rep.timelines:
        cells = ["."] * width
        for t in tl:
            s, e, op = int(t.start), int(t.end), t.op
            if op.kind == "FB":
                names = [f"F{op.mb}*"] + [f"B{op.mb_b}*"] * (e - s - 1)
            elif op.kind == "W":
                names = ["W"] * (e - s)
            else:
                names = [f"{op.kind}{op.mb}"] * (e - s)
            cells[s:e] = names
        rows.append(cells)
    return rows


def gantt_text(rep: Replay) -> str:
    """Render :func:`gantt_cells` as text rows ``R0  |F0  |F1  |...``."""
    return "\n".join(
        f"R{r:<3}|" + "".join(f"{c:<4}|" for c in row)
        for r, row in enumerate(gantt_cells(rep)))


def peak_in_flight(ops: list[Op]) -> int:
    """Max over time of (forwards done - input backwards done) for one rank.

    An overlapped pair counts as net zero (its backward frees while its forward
    allocates, V3 Fig. 4 interleaving); W does not count.
    """
    live = peak = 0
    for op in ops:
        if op.kind == "F":
            live += 1
        elif op.kind in ("B", "I"):
            live -= 1
        peak = max(peak, live)
    return peak
