"""Rank layout of a PP x EP job on ``nodes x gpus_per_node`` GPUs.

Global rank ``r`` (placed on the cluster by :class:`Topology`: node ``r // gpus_per_node``)
has pipeline stage ``r % pp`` and expert-parallel index ``r // pp``. Expert groups are
therefore *strided*: the EP group of stage ``s`` is ``{s, s + pp, s + 2 pp, ...}``, which
spreads its members over as many nodes as possible (every node when ``ep >= nodes`` and
``pp`` divides ``gpus_per_node``), so MoE dispatch/combine really crosses the IB hop.
Pipeline groups are contiguous (``{e pp, ..., e pp + pp - 1}``), so most PP neighbours share
a node. Example, 2 nodes x 4 GPUs, PP 4, EP 2::

    node 0: ranks 0 1 2 3  -> stages 0 1 2 3, ep index 0
    node 1: ranks 4 5 6 7  -> stages 0 1 2 3, ep index 1
    EP group of stage 1 = [1, 5] (one member per node); PP group of ep index 1 = [4, 5, 6, 7]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RankLayout:
    """``pp`` pipeline stages x ``ep`` expert-parallel ranks; world size = ``pp * ep``."""

    pp: int
    ep: int

    def __post_init__(self) -> None:
        for name in ("pp", "ep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RankLayout: {name} must be a positive integer, got {value!r}")

    @property
    def world_size(self) -> int:
        """Number of ranks, ``pp * ep``."""
        return self.pp * self.ep

    def _check(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"RankLayout: rank {rank} is outside 0..{self.world_size - 1}")

    def stage_of(self, rank: int) -> int:
        """Pipeline stage (0..pp-1) of a global rank."""
        self._check(rank)
        return rank % self.pp

    def ep_index_of(self, rank: int) -> int:
        """Index of a global rank inside its expert-parallel group (0..ep-1)."""
        self._check(rank)
        return rank // self.pp

    def rank_of(self, stage: int, ep_index: int) -> int:
        """Global rank holding pipeline ``stage`` in EP position ``ep_index``."""
        if not (0 <= stage < self.pp and 0 <= ep_index < self.ep):
            raise ValueError(f"RankLayout: (stage {stage}, ep {ep_index}) is outside the layout")
        return ep_index * self.pp + stage

    def ep_group(self, stage: int) -> list[int]:
        """Global ranks of the expert-parallel group of ``stage``, by EP index."""
        return [self.rank_of(stage, j) for j in range(self.ep)]

    def pp_group(self, ep_index: int) -> list[int]:
        """Global ranks of the pipeline with EP index ``ep_index``, by stage."""
        return [self.rank_of(s, ep_index) for s in range(self.pp)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (run.json and the trace's ``overlapscope.schedule``)."""
        return {
            "pp": self.pp,
            "ep": self.ep,
            "rule": "stage = rank % pp, ep_index = rank // pp",
        }
