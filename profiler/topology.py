"""Cluster topology: nodes x GPUs per node, rank placement and link classes.

Global rank ``r`` lives on node ``r // gpus_per_node`` at local index
``r % gpus_per_node`` (the torchrun / DeepEP convention). Two ranks on the same
node talk over NVLink ("nvl"), ranks on different nodes over InfiniBand ("ib"),
and a rank talking to itself is a local copy ("local"). Link speeds are per GPU
in GB/s (1e9 bytes/s); defaults are DeepSeek-V3's H800 figures (IB 50, NVLink 160).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Link = Literal["local", "nvl", "ib"]

#: Link classes in a fixed order, for tables and vectors.
LINKS: tuple[Link, ...] = ("local", "nvl", "ib")


@dataclass(frozen=True)
class Topology:
    """``nodes`` x ``gpus_per_node`` ranks with per-GPU link speeds in GB/s."""

    nodes: int
    gpus_per_node: int
    ib_gbps: float = 50.0
    nvl_gbps: float = 160.0

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Topology: {name} must be a positive integer, got {value!r}")
        for name in ("ib_gbps", "nvl_gbps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(
                    f"Topology: {name} must be a positive number (GB/s), got {value!r}"
                )

    @property
    def world_size(self) -> int:
        """Total number of ranks (GPUs)."""
        return self.nodes * self.gpus_per_node

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(
                f"Topology: rank {rank} is outside 0..{self.world_size - 1} "
                f"({self.nodes} nodes x {self.gpus_per_node} GPUs)"
            )

    def node_of(self, rank: int) -> int:
        """Node index of a global rank."""
        self._check_rank(rank)
        return rank // self.gpus_per_node

    def local_of(self, rank: int) -> int:
        """Index of a global rank inside its node."""
        self._check_rank(rank)
        return rank % self.gpus_per_node

    def rank_of(self, node: int, local: int) -> int:
        """Global rank of GPU ``local`` on ``node``."""
        if not 0 <= node < self.nodes:
            raise ValueError(f"Topology: node {node} is outside 0..{self.nodes - 1}")
        if not 0 <= local < self.gpus_per_node:
            raise ValueError(
                f"Topology: local index {local} is outside 0..{self.gpus_per_node - 1}"
            )
        return node * self.gpus_per_node + local

    def link(self, a: int, b: int) -> Link:
        """Link class between ranks ``a`` and ``b``: "local", "nvl" or "ib"."""
        if a == b:
            self._check_rank(a)
            return "local"
        return "nvl" if self.node_of(a) == self.node_of(b) else "ib"

    def link_gbps(self, a: int, b: int) -> float:
        """Per-GPU bandwidth in GB/s of the link between ``a`` and ``b`` (inf for local)."""
        kind = self.link(a, b)
        if kind == "local":
            return float("inf")
        return self.nvl_gbps if kind == "nvl" else self.ib_gbps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form written into traces (``overlapscope.topology``)."""
        return {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "world_size": self.world_size,
            "ib_gbps": float(self.ib_gbps),
            "nvl_gbps": float(self.nvl_gbps),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        """Inverse of :meth:`to_dict`; ``world_size`` is checked when present."""
        if not isinstance(data, dict):
            raise ValueError(f"Topology.from_dict: expected a dict, got {type(data).__name__}")
        missing = [k for k in ("nodes", "gpus_per_node") if k not in data]
        if missing:
            raise ValueError(f"Topology.from_dict: missing key(s) {', '.join(missing)}")
        topo = cls(
            nodes=data["nodes"],
            gpus_per_node=data["gpus_per_node"],
            ib_gbps=data.get("ib_gbps", 50.0),
            nvl_gbps=data.get("nvl_gbps", 160.0),
        )
        if "world_size" in data and data["world_size"] != topo.world_size:
            raise ValueError(
                f"Topology.from_dict: world_size {data['world_size']} does not equal "
                f"nodes x gpus_per_node = {topo.world_size}"
            )
        return topo
