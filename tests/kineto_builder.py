"""Build small Kineto traces in tests, with times given in integer nanoseconds.

Times are written as microsecond floats with three decimals, exactly as
PyTorch does, so a test states its intervals in ns and works the answer out
by hand.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def us(ns: int) -> float:
    """ns -> Kineto microseconds (float with 3 decimals)."""
    return round(ns / 1000.0, 3)


@dataclass
class TraceBuilder:
    """Accumulates events of one rank's trace."""

    pid: int = 100
    main_tid: int = 100
    rank: int | None = None
    world_size: int | None = None
    num_sms: int = 132
    events: list[dict[str, Any]] = field(default_factory=list)
    _corr: int = 1000

    def annotation(self, name: str, start_ns: int, end_ns: int, tid: int | None = None) -> None:
        self.events.append({
            "ph": "X", "cat": "user_annotation", "name": name, "pid": self.pid,
            "tid": self.main_tid if tid is None else tid, "ts": us(start_ns),
            "dur": us(end_ns - start_ns), "args": {},
        })

    def cpu_op(self, name: str, start_ns: int, end_ns: int, tid: int | None = None,
               **args: Any) -> None:
        self.events.append({
            "ph": "X", "cat": "cpu_op", "name": name, "pid": self.pid,
            "tid": self.main_tid if tid is None else tid, "ts": us(start_ns),
            "dur": us(end_ns - start_ns), "args": args,
        })

    def kernel(self, name: str, start_ns: int, end_ns: int, *, stream: int = 7, device: int = 0,
               launch_ns: int | None = None, launch_tid: int | None = None,
               grid: tuple[int, int, int] = (1, 1, 1), cat: str = "kernel",
               nbytes: int | None = None) -> int:
        """A GPU activity; with ``launch_ns`` also its cudaLaunchKernel runtime event."""
        self._corr += 1
        args: dict[str, Any] = {"device": device, "stream": stream, "correlation": self._corr}
        if cat == "kernel":
            args.update(grid=list(grid), block=[128, 1, 1])
        if nbytes is not None:
            args["bytes"] = nbytes
        self.events.append({
            "ph": "X", "cat": cat, "name": name, "pid": device, "tid": stream,
            "ts": us(start_ns), "dur": us(end_ns - start_ns), "args": args,
        })
        if launch_ns is not None:
            self.events.append({
                "ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": self.pid,
                "tid": self.main_tid if launch_tid is None else launch_tid,
                "ts": us(launch_ns), "dur": 1.0, "args": {"correlation": self._corr},
            })
        return self._corr

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schemaVersion": 1,
            "deviceProperties": [{"id": 0, "name": "Test GPU", "numSms": self.num_sms}],
            "traceEvents": self.events,
        }
        if self.rank is not None:
            doc["distributedInfo"] = {"backend": "nccl", "rank": self.rank,
                                      "world_size": self.world_size or 1}
        return doc

    def write(self, path: Path) -> Path:
        data = json.dumps(self.document()).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
        return path
