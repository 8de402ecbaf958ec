"""Configuration of the emulated kernels and the calibrated cost model.

Defaults reproduce the H200 fixture kernel (README of the shared h200 fixtures,
section 2; copy in tests/data/h200/): EP64 = 8 nodes x 8 GPUs, 256 experts,
top-8, node limit M=4, 4096 FP8 tokens of 7168 + 64 B = 7232 B, 10 channels,
chunks of 32 tokens, roles NS/coordinator/NF/NR = 4/1/8/4, 4-slot rings, IB 50
and NVLink 160 GB/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CostModel:
    """Per-warp timing constants (ns, GB/s = bytes/ns), fitted to the H200 fixture.

    Fit to the fixture's per-warp events of the baseline configuration (work
    interval duration against tokens moved, medians): a local HBM->HBM copy
    (receivers, own-node staging) costs ~6.3 us per 7232-byte token whatever the
    configuration (``local_warp_gbps``); a sender's IB copy ~3.6 us per token when
    the NIC is free (``ib_warp_gbps``; the shared 50 GB/s NIC then caps all
    senders together); a forwarder's NVLink copy ~5.5 us per token
    (``nvl_warp_gbps``) after scanning every token of the RDMA slot for each
    destination GPU (``fwd_scan_ns`` per scanned token: ~6.3 us per 17 tokens).
    Forwarders copy faster (~3.4 us) when the block is mostly idle (the NS=1/NR=1
    run); that dynamic SM contention is not modelled.
    """

    local_warp_gbps: float = 1.15
    ib_warp_gbps: float = 2.0
    nvl_warp_gbps: float = 1.31
    local_msg_ns: int = 500
    ib_msg_ns: int = 1500
    fwd_scan_ns: int = 370
    publish_ns: int = 550  # coordinator: one tail publication
    loop_ns: int = 480  # gap between two operations of one warp
    wake_ns: int = 250  # spin-poll latency after a counter changes
    ib_latency_ns: int = 0
    nvl_latency_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DispatchConfig:
    """One source rank's two-hop dispatch (and the matching combine).

    Role counts are per channel (one thread block per channel): ``senders``
    (NS), ``coordinators``, ``forwarders`` (NF), ``receivers`` (NR). ``max_nodes``
    is the node limit M. Link speeds in GB/s; 0 disables a link's limit.
    """

    nodes: int = 8
    gpus_per_node: int = 8
    experts: int = 256
    top_k: int = 8
    max_nodes: int = 4
    tokens: int = 4096
    token_bytes: int = 7232
    channels: int = 10
    chunk_tokens: int = 32
    senders: int = 4
    coordinators: int = 1
    forwarders: int = 8
    receivers: int = 4
    rdma_slots: int = 4
    nvl_slots: int = 4
    ib_gbps: float = 50.0
    nvl_gbps: float = 160.0
    src_rank: int = 0
    node_score: str = "sum_topk"
    seed: int = 0
    cost: CostModel = field(default_factory=CostModel)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def src_node(self) -> int:
        return self.src_rank // self.gpus_per_node

    @property
    def warps_per_block(self) -> int:
        return self.senders + self.coordinators + self.forwarders + self.receivers

    def with_(self, **changes: Any) -> DispatchConfig:
        """A copy with some fields changed (validated)."""
        cfg = replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first impossible setting."""
        positive = (
            "nodes", "gpus_per_node", "experts", "top_k", "max_nodes", "tokens", "token_bytes",
            "channels", "chunk_tokens", "senders", "coordinators", "forwarders", "receivers",
            "rdma_slots", "nvl_slots",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.experts % self.world_size:
            raise ValueError(
                f"experts ({self.experts}) must split evenly over {self.world_size} GPUs"
            )
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds experts ({self.experts})")
        if self.max_nodes > self.nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) exceeds nodes ({self.nodes})")
        if not 0 <= self.src_rank < self.world_size:
            raise ValueError(f"src_rank {self.src_rank} outside 0..{self.world_size - 1}")
        if self.ib_gbps < 0 or self.nvl_gbps < 0:
            raise ValueError("link speeds must be >= 0 GB/s (0 = unlimited)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost.to_dict()
        return d


@dataclass(frozen=True)
class LinkProfile:
    """Link speeds and per-warp costs the emulator's answer is for.

    ``ib_gbps`` / ``nvl_gbps`` are the link limits (GB/s per GPU); ``cost`` the per-warp
    copy model. ``achieves`` says what the profile reaches at the default shape (EP64,
    4096 FP8 tokens, M = 4, 10 channels, roles 4/1/8/4), ``source`` where it comes from.
    """

    name: str
    ib_gbps: float
    nvl_gbps: float
    cost: CostModel
    achieves: str
    source: str

    def apply(self, cfg: DispatchConfig) -> DispatchConfig:
        """``cfg`` with this profile's link speeds and cost model."""
        return cfg.with_(ib_gbps=self.ib_gbps, nvl_gbps=self.nvl_gbps, cost=self.cost)

    def describe(self) -> str:
        return (f"{self.name}: IB {self.ib_gbps:g} / NVLink {self.nvl_gbps:g} GB/s links, "
                f"{self.achieves} ({self.source})")


#: Link profiles for ``tune-dispatch --link-profile`` (and ``LINK_PROFILES[name].apply``).
LINK_PROFILES: dict[str, LinkProfile] = {
    "probe": LinkProfile(
        name="probe", ib_gbps=50.0, nvl_gbps=160.0, cost=CostModel(),
        achieves="~17 GB/s over IB, ~33 GB/s NVLink, receiver-bound at the default shape",
        source="fitted to our H200 probe kernel, sample_traces/h200: per-warp copies of "
               "1-2 GB/s with plain loads/stores"),
    "deepep": LinkProfile(
        name="deepep", ib_gbps=50.0, nvl_gbps=160.0,
        # TMA-class warp copies (~8-12 GB/s per warp) and short per-message overheads, so
        # the links, not the warps, bind: ~49 GB/s over IB at the default shape
        cost=CostModel(local_warp_gbps=12.0, ib_warp_gbps=8.0, nvl_warp_gbps=12.0,
                       local_msg_ns=300, ib_msg_ns=1000, fwd_scan_ns=40, publish_ns=300,
                       loop_ns=100, wake_ns=100),
        achieves="~49 GB/s over IB (IB-bound) at the default shape",
        source="DeepEP's published figures, H800 + CX7 400 Gb/s: internode RDMA ~43-58 GB/s "
               "(EP16-EP64), intranode NVLink ~153-158 GB/s (EP8)"),
}
