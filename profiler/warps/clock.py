"""Deterministic discrete-event clock for cooperative warp roles.

Every warp role is a generator. It yields either an ``int`` (stay busy, or sleep,
for that many nanoseconds) or a ``(Counter, target)`` pair (block until the
counter reaches ``target``). The clock resumes generators in (time, sequence)
order from a heap, so a run is fully deterministic. When no generator can run
any more but some have not finished, the run is a deadlock and
:class:`DeadlockError` names each blocked role and what it waits on, instead of
hanging the way a real kernel would (DeepEP traps after ~100 s).
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Generator
from typing import Any

#: What a role generator yields: a delay in ns, or (counter, target value).
Command = int | tuple["Counter", int]
RoleGen = Generator[Command, None, None]


class EmulationError(RuntimeError):
    """Base class of emulator failures (deadlock, lost token, time limit)."""


class DeadlockError(EmulationError):
    """No role can make progress but some have not finished."""


class SimTimeLimitError(EmulationError):
    """Simulated time passed the configured limit (a livelock or absurd config)."""


class Counter:
    """A monotonically advanced shared counter (ring head/tail, progress flag).

    ``on_change`` (optional) is called with (time_ns, new value) after each set,
    which rings use to sample occupancy.
    """

    __slots__ = ("name", "value", "_waiters", "_clock", "on_change")

    def __init__(self, clock: Clock, name: str, value: int = 0) -> None:
        self.name = name
        self.value = value
        self._waiters: list[tuple[int, Process]] = []
        self._clock = clock
        self.on_change: Any = None

    def set(self, value: int) -> None:
        """Store ``value`` and wake every role whose target is now reached."""
        self.value = value
        if self.on_change is not None:
            self.on_change(self._clock.now, value)
        if self._waiters:
            still: list[tuple[int, Process]] = []
            for target, proc in self._waiters:
                if value >= target:
                    proc.waiting_on = None
                    self._clock.wake(proc)
                else:
                    still.append((target, proc))
            self._waiters = still

    def add_waiter(self, target: int, proc: Process) -> None:
        self._waiters.append((target, proc))


class Process:
    """One role instance (one warp) driven by the clock."""

    __slots__ = ("name", "gen", "waiting_on", "done")

    def __init__(self, name: str, gen: RoleGen) -> None:
        self.name = name
        self.gen = gen
        self.waiting_on: tuple[Counter, int] | None = None
        self.done = False

    def describe_wait(self) -> str:
        if self.waiting_on is None:
            return f"{self.name} (runnable)"
        counter, target = self.waiting_on
        return f"{self.name} waits for {counter.name} >= {target} (it is {counter.value})"


class Clock:
    """Heap-driven scheduler; times are integer nanoseconds.

    ``wake_ns`` is the polling latency between a counter reaching a value and a
    spinning warp noticing it. ``limit_ns`` bounds simulated time.
    """

    def __init__(self, *, wake_ns: int = 0, limit_ns: int = 100_000_000_000) -> None:
        self.now = 0
        self.wake_ns = wake_ns
        self.limit_ns = limit_ns
        self._heap: list[tuple[int, int, Process]] = []
        self._seq = 0
        self._procs: list[Process] = []
        self.steps = 0

    def spawn(self, name: str, gen: RoleGen) -> Process:
        """Register a role generator; it starts at the current time."""
        proc = Process(name, gen)
        self._procs.append(proc)
        self._push(self.now, proc)
        return proc

    def counter(self, name: str, value: int = 0) -> Counter:
        return Counter(self, name, value)

    def wake(self, proc: Process) -> None:
        self._push(self.now + self.wake_ns, proc)

    def _push(self, t: int, proc: Process) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, proc))

    def run(self) -> int:
        """Run to completion; returns the final time (ns). Raises on deadlock/limit."""
        # The run allocates ~10^5 small tuples and frees none; cyclic GC passes over
        # them would cost more than the emulation itself.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if enabled:
                gc.enable()

    def _run(self) -> int:
        heap = self._heap
        while heap:
            t, _, proc = heapq.heappop(heap)
            if t > self.limit_ns:
                blocked = [p.describe_wait() for p in self._procs if not p.done]
                raise SimTimeLimitError(
                    f"simulated time passed {self.limit_ns} ns with roles still active: "
                    + "; ".join(blocked[:8])
                )
            self.now = t
            self._step(proc)
        stuck = [p for p in self._procs if not p.done]
        if stuck:
            lines = "; ".join(p.describe_wait() for p in stuck[:12])
            more = f" (+{len(stuck) - 12} more)" if len(stuck) > 12 else ""
            raise DeadlockError(f"deadlock at t={self.now} ns: {lines}{more}")
        return self.now

    def _step(self, proc: Process) -> None:
        gen = proc.gen
        while True:
            self.steps += 1
            try:
                cmd = next(gen)
            except StopIteration:
                proc.done = True
                return
            if type(cmd) is int:
                self._push(self.now + cmd, proc)
                return
            counter, target = cmd  # type: ignore[misc]
            if counter.value >= target:
                continue
            proc.waiting_on = (counter, target)
            counter.add_waiter(target, proc)
            return
