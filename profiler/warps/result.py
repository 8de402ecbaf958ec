"""Outcome of one emulated kernel (dispatch or combine) and its trace export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.plan import DispatchPlan


@dataclass
class KernelResult:
    """One emulated kernel.

    ``kernel_ns`` simulated kernel time; ``link_bytes`` bytes the warps moved per
    link class ("ib", "nvl", "local"); ``expected_ib_bytes`` /
    ``expected_nvl_bytes`` the routing arithmetic (they must agree);
    ``role_busy`` mean busy fraction of each role's warps over the kernel;
    ``steps`` clock steps (generator resumptions); ``wall_s`` host seconds;
    ``verified_bytes`` whether payload bytes (not only token ids) were checked.
    ``inputs`` / ``outputs``: payload arrays when bytes moved (dispatch: source
    tokens [T, S] and one [rows, S] array per destination rank; combine: the
    per-rank expert partials and the combined [T, hidden] rows).
    """

    collective: str  # "two_hop_dispatch" | "two_hop_combine"
    kernel_name: str
    cfg: DispatchConfig
    plan: DispatchPlan
    row_bytes: int
    kernel_ns: int
    log: S.WarpLog
    link_bytes: dict[str, int]
    expected_ib_bytes: int
    expected_nvl_bytes: int
    role_busy: dict[str, float]
    steps: int
    wall_s: float
    verified_bytes: bool
    outputs: Any = field(default=None, repr=False)
    inputs: Any = field(default=None, repr=False)

    @property
    def bottleneck(self) -> str:
        """The role whose warps are busiest (highest mean busy fraction)."""
        return max(self.role_busy, key=lambda r: self.role_busy[r])

    @property
    def kernel_us(self) -> float:
        return self.kernel_ns / 1000.0

    def frame(self) -> pl.DataFrame:
        """All warp intervals (schema.WARP_LOG_SCHEMA: the analyzers' warp_events
        columns plus node/gpu), times in ns from the kernel start."""
        return self.log.to_frame(rank=self.cfg.src_rank)

    def overlapscope_meta(self) -> dict[str, Any]:
        """The trace's top-level ``overlapscope`` object."""
        cfg = self.cfg
        return {
            "schema_version": 1,
            "rank": cfg.src_rank,
            "world_size": cfg.world_size,
            "topology": {"nodes": cfg.nodes, "gpus_per_node": cfg.gpus_per_node,
                         "ib_gbps": cfg.ib_gbps, "nvl_gbps": cfg.nvl_gbps},
            "workload": {"name": "warp-emulator", "collective": self.collective,
                         "config": cfg.to_dict()},
            "schedule": {},
            "emulator": {"kernel_ns": self.kernel_ns, "bottleneck": self.bottleneck,
                         "role_busy": self.role_busy, "link_bytes": self.link_bytes},
        }

    def dst_bytes(self) -> tuple[list[int], list[int]]:
        """Per-destination-rank byte vectors of the IB hop and the NVLink hop.

        IB copies go to the GPU with the source's local index on each remote node;
        NVLink copies are counted at their final destination rank (dispatch) or
        their source rank (combine: the rows come back from there); the ranks with the
        source's local index are the forwarders themselves, whose copies are local
        (BRIEF §4.10), so their entries are 0.
        """
        cfg, p = self.cfg, self.plan
        gpn, local = cfg.gpus_per_node, cfg.src_rank % cfg.gpus_per_node
        ib = [0] * cfg.world_size
        per_node = p.node_mask.sum(axis=0)
        for n in range(cfg.nodes):
            if n != cfg.src_node:
                ib[n * gpn + local] = int(per_node[n]) * self.row_bytes
        nvl = [0 if d % gpn == local else int(x) * self.row_bytes
               for d, x in enumerate(np.asarray(p.dest.sum(axis=0)))]
        return ib, nvl

    def trace_events(self, *, t0_us: float = 0.0) -> list[dict[str, Any]]:
        """Chrome events: metadata, kernel envelope, warp intervals, ring counters, traffic."""
        cfg, rank = self.cfg, self.cfg.src_rank
        ev = S.metadata_events(self.log, rank=rank)
        ev.append(S.kernel_event(self.kernel_name, dur_ns=self.kernel_ns, grid=cfg.channels,
                                 block=32 * cfg.warps_per_block, t0_us=t0_us))
        ev += S.warp_events(self.log, rank=rank, t0_us=t0_us)
        ev += S.ring_counter_events(self.log, rank=rank, t0_us=t0_us)
        ib, nvl = self.dst_bytes()
        phase = "dispatch(F)" if self.collective == "two_hop_dispatch" else "combine(F)"
        short = "dispatch" if self.collective == "two_hop_dispatch" else "combine"
        dtype = "float8_e4m3fn" if short == "dispatch" else "bfloat16"
        for hop, vec in (("ib", ib), ("nvl", nvl)):
            ev.append(S.traffic_event(f"{short}:{hop}", collective=self.collective, hop=hop,
                                      dst_bytes=vec, t0_us=t0_us, dur_us=self.kernel_us,
                                      phase=phase, dtype=dtype))
        return ev

    def write_trace(self, path: str | Path) -> Path:
        """Write a standalone Kineto-compatible trace (``.json``/``.json.gz``) for Perfetto."""
        cfg = self.cfg
        return S.write_trace(
            path, self.trace_events(), self.overlapscope_meta(),
            extra={"distributedInfo": {"backend": "emulator", "rank": cfg.src_rank,
                                       "world_size": cfg.world_size}},
        )


def role_busy(
    log: S.WarpLog, counts: dict[str, int], channels: int, kernel_ns: int
) -> dict[str, float]:
    """Mean busy fraction per role = busy ns / (warps of the role * kernel ns)."""
    busy = dict.fromkeys(counts, 0)
    for row in log.rows:
        if row[3] == S.BUSY and row[2] in busy:
            busy[row[2]] += row[8] - row[7]
    span = max(kernel_ns, 1)
    return {r: busy[r] / (max(counts[r], 1) * channels * span) for r in counts}


def link_bytes(log: S.WarpLog) -> dict[str, int]:
    """Bytes moved per link class by busy intervals."""
    out = {"ib": 0, "nvl": 0, "local": 0}
    for row in log.rows:
        if row[3] == S.BUSY and row[6] is not None:
            out[row[6]] += row[5]
    return out
