"""Link models shared by the warps that use them (IB NIC, a node's NVLink fabric).

A link is a FIFO reservation counter, as in the H200 fixture kernel: a copy of
``n`` bytes reserves ``n / bandwidth`` of the link starting when both the copy
and the link are free, and the issuing warp spins until its reservation ends
(plus the per-message latency). Many warps sharing one link therefore queue
behind each other once their combined demand exceeds the link's bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Link:
    """One shared link. ``gbps`` is GB/s (= bytes/ns); 0 means unlimited."""

    name: str
    kind: str  # "ib" | "nvl" | "local"
    gbps: float
    latency_ns: int = 0
    free_at_ns: float = 0.0
    bytes_moved: int = 0
    messages: int = 0
    busy_ns: float = field(default=0.0)

    def reserve(self, now_ns: int, nbytes: int) -> int:
        """Reserve the link for ``nbytes`` from ``now_ns``; returns the end time (ns)."""
        self.bytes_moved += nbytes
        self.messages += 1
        if self.gbps <= 0 or nbytes == 0:
            return now_ns + self.latency_ns
        start = max(float(now_ns), self.free_at_ns)
        dur = nbytes / self.gbps
        self.free_at_ns = start + dur
        self.busy_ns += dur
        return int(self.free_at_ns + 0.5) + self.latency_ns


def warp_copy_end(
    now_ns: int, nbytes: int, *, warp_gbps: float, overhead_ns: int, link: Link | None
) -> int:
    """End time (ns) of one warp copy of ``nbytes`` that may also occupy ``link``.

    The warp itself copies at ``warp_gbps`` (latency-bound 16-byte-per-lane
    loads, ~1-2 GB/s per warp on an H200) after a fixed ``overhead_ns`` per
    message; the link reservation runs concurrently and the warp is done when
    both are.
    """
    own = now_ns + overhead_ns + (int(nbytes / warp_gbps) if warp_gbps > 0 else 0)
    if link is None:
        return own
    return max(own, link.reserve(now_ns, nbytes))
