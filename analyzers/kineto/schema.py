"""msgspec types for the parts of a Kineto / Chrome trace the analyzers read.

Only the fields used downstream are declared: msgspec skips the rest while
parsing, which is what makes decoding a large trace cheap. The per-event types
are not tracked by Python's cycle collector (``gc=False``: they hold no cycles),
so millions of them do not trigger collection passes while a trace loads. Every field is
optional and loosely typed (numbers may arrive as int or float, ids as int or
string) because traces from other tools bend the format; a file that still
does not fit these types is decoded generically (see decode.py).
"""

from __future__ import annotations

from itertools import compress
from typing import Any, ClassVar, Union

import msgspec

Num = int | float
Id = int | str


class EventArgs(msgspec.Struct, omit_defaults=True, gc=False):
    """``args`` of an event; names with spaces are Kineto's own spelling."""

    correlation: Id | None = None
    external_id: Id | None = msgspec.field(default=None, name="External id")
    device: Id | None = None
    stream: Id | None = None
    grid: list[Num] | None = None
    block: list[Num] | None = None
    bytes: Num | None = None
    concrete_inputs: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="Concrete Inputs")
    input_dims: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="Input Dims")
    # NCCL record_param_comms
    collective_name: str | None = msgspec.field(default=None, name="Collective name")
    in_nelems: Num | None = msgspec.field(default=None, name="In msg nelems")
    out_nelems: Num | None = msgspec.field(default=None, name="Out msg nelems")
    group_size: Num | None = msgspec.field(default=None, name="Group size")
    dtype: str | None = None
    pg_name: Id | None = msgspec.field(default=None, name="Process Group Name")
    # overlapscope comm_traffic
    collective: str | None = None
    hop: str | None = None
    phase: str | None = None
    dst_bytes: list[Num] | None = None
    # overlapscope warp_role
    role: str | None = None
    state: str | None = None
    channel: Num | None = None
    warp: Num | None = None
    sm: Num | None = None
    chunk: Num | None = None
    link: str | None = None
    rank: Num | None = None
    # counters (ph "C")
    occupancy: Num | None = None
    # metadata (ph "M"): process_name / thread_name
    name: Id | None = None


class _EventFields(msgspec.Struct, gc=False):
    """Fields of one entry of ``traceEvents``; ``ts``/``dur`` are microseconds."""

    cat: str = ""
    name: str = ""
    pid: Id = 0
    tid: Id = 0
    ts: Num | None = None
    dur: Num | None = None
    args: EventArgs | None = None


class TraceEvent(_EventFields):
    """One entry of ``traceEvents`` with its phase as a plain field (generic path)."""

    ph: str = ""


class DistributedInfo(msgspec.Struct):
    """``distributedInfo`` written by PyTorch for distributed jobs."""

    rank: int | None = None
    world_size: int | None = None
    backend: str | None = None


class _PgDist(msgspec.Struct):
    pg_config: list[dict[str, Any]] | None = None


class PgConfigHead(msgspec.Struct):
    """Only ``distributedInfo.pg_config`` (process groups), typed strictly and apart
    from :class:`DistributedInfo` so that an odd pg_config never fails the header."""

    distributedInfo: _PgDist | None = None  # noqa: N815 - Kineto's spelling


class DeviceProperties(msgspec.Struct):
    """One entry of ``deviceProperties``."""

    id: Id | None = None
    name: str | None = None
    numSms: int | None = None  # noqa: N815 - Kineto's spelling


class _TraceHeader(msgspec.Struct):
    """Top-level keys of a Kineto JSON trace besides its events."""

    distributedInfo: DistributedInfo | None = None  # noqa: N815
    deviceProperties: list[DeviceProperties] | None = None  # noqa: N815
    baseTimeNanoseconds: int | None = None  # noqa: N815
    overlapscope: dict | None = None


class KinetoTrace(_TraceHeader):
    """The top level of a Kineto JSON trace."""

    traceEvents: list[TraceEvent] | None = None  # noqa: N815


# --- Fast path: a union tagged by "ph". Only complete events ("X") and counters ("C")
# carry data the analyzers read; every other standard phase decodes into an empty
# struct, so flow arrows and metadata rows (about half of a Kineto trace) cost almost
# nothing. An unknown phase fails this decoder and the file takes the generic path.


class _TaggedEvent(_EventFields, tag_field="ph"):
    """An event whose phase is the tag of its struct type."""


class CompleteEvent(_TaggedEvent, tag="X"):
    """``ph: "X"``: an interval (operator, kernel, annotation, ...)."""

    ph: ClassVar[str] = "X"


class CounterEvent(_TaggedEvent, tag="C"):
    """``ph: "C"``: a counter sample."""

    ph: ClassVar[str] = "C"


class BeginEvent(_TaggedEvent, tag="B"):
    """``ph: "B"``: the start of a duration event (paired with its "E" into an interval)."""

    ph: ClassVar[str] = "B"


class EndEvent(_TaggedEvent, tag="E"):
    """``ph: "E"``: the end of the innermost open duration event of its thread."""

    ph: ClassVar[str] = "E"


SKIPPED_PHASES = (
    "i", "I", "s", "t", "f", "M", "b", "n", "e", "P", "O", "N", "D", "S", "T",
    "p", "F", "R", "c", "(", ")", "V", "v",
)
_SKIP_TYPES = tuple(
    msgspec.defstruct(f"Skipped{i}", [], tag=p, tag_field="ph", gc=False)
    for i, p in enumerate(SKIPPED_PHASES)
)
FastEvent = Union[CompleteEvent, CounterEvent, BeginEvent, EndEvent, *_SKIP_TYPES]  # noqa: UP007
KEPT_EVENT_TYPES = (CompleteEvent, CounterEvent)
_IS_KEPT_TYPE = frozenset(KEPT_EVENT_TYPES).__contains__
_IS_BEGIN_END_TYPE = frozenset((BeginEvent, EndEvent)).__contains__


def has_begin_end(events: list[Any]) -> bool:
    """True when fast-path events hold a duration event ("B"/"E"): Kineto writes none,
    traces of other tools may (C-level scan)."""
    return any(map(_IS_BEGIN_END_TYPE, map(type, events)))


def kept_events(events: list[Any]) -> list[Any]:
    """The intervals and counters among fast-path events, in order (C-level loops:
    a comprehension with isinstance costs twice as much on millions of events)."""
    return list(compress(events, map(_IS_KEPT_TYPE, map(type, events))))


class FastKinetoTrace(_TraceHeader):
    """KinetoTrace whose events are decoded through the phase-tagged union."""

    traceEvents: list[FastEvent] | None = None  # type: ignore[valid-type]  # noqa: N815
