"""Pipeline schedules behind one interface (torch-free generators).

``make_schedule(name, n_ranks, n_micro)`` returns a :class:`Schedule` whose
``program(rank)`` is the instruction list run by ``executor.py`` (torch) and by
``replay.py`` (unit-cost replay). Names: dualpipe, dualpipev, 1f1b, zb1p.
Importing this package does not import torch.
"""

from __future__ import annotations

from overlapscope.profiler.schedules.base import Op, Schedule
from overlapscope.profiler.schedules.dualpipe import DualPipe
from overlapscope.profiler.schedules.dualpipev import DualPipeV
from overlapscope.profiler.schedules.onef1b import ZB1P, OneF1B

SCHEDULES: dict[str, type[Schedule]] = {
    "dualpipe": DualPipe,
    "dualpipev": DualPipeV,
    "1f1b": OneF1B,
    "zb1p": ZB1P,
}


def make_schedule(name: str, n_ranks: int, n_micro: int) -> Schedule:
    """Build a schedule by name; ValueError for unknown names or bad sizes."""
    try:
        cls = SCHEDULES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None
    return cls(n_ranks, n_micro)


__all__ = ["SCHEDULES", "DualPipe", "DualPipeV", "OneF1B", "ZB1P", "Op", "Schedule",
           "make_schedule"]
