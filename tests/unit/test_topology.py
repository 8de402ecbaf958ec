"""Topology: rank placement, link classes, serialisation, validation."""

from __future__ import annotations

import pytest

from overlapscope.profiler.topology import Topology


def test_rank_placement_and_links_2x4() -> None:
    t = Topology(nodes=2, gpus_per_node=4)
    assert t.world_size == 8
    assert [t.node_of(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [t.local_of(r) for r in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert t.rank_of(1, 2) == 6
    assert t.link(5, 5) == "local"
    assert t.link(4, 7) == "nvl"
    assert t.link(3, 4) == "ib"
    assert t.link(0, 6) == "ib"
    assert (t.ib_gbps, t.nvl_gbps) == (50.0, 160.0)
    assert t.link_gbps(1, 2) == 160.0 and t.link_gbps(1, 5) == 50.0


def test_round_trip_through_dict() -> None:
    t = Topology(3, 8, ib_gbps=25.0, nvl_gbps=400.0)
    d = t.to_dict()
    assert d == {"nodes": 3, "gpus_per_node": 8, "world_size": 24, "ib_gbps": 25.0,
                 "nvl_gbps": 400.0}
    assert Topology.from_dict(d) == t
    assert Topology.from_dict({"nodes": 1, "gpus_per_node": 2}) == Topology(1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0, "gpus_per_node": 8}, "nodes must be a positive integer"),
        ({"nodes": 2, "gpus_per_node": 2.5}, "gpus_per_node must be a positive integer"),
        ({"nodes": 2, "gpus_per_node": 8, "ib_gbps": 0}, "ib_gbps must be a positive number"),
        ({"nodes": 2, "gpus_per_node": 8, "nvl_gbps": -1.0}, "nvl_gbps must be a positive"),
    ],
)
def test_invalid_topologies_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Topology(**kwargs)


def test_out_of_range_queries_name_the_problem() -> None:
    t = Topology(2, 2)
    with pytest.raises(ValueError, match=r"rank 4 is outside 0..3"):
        t.node_of(4)
    with pytest.raises(ValueError, match="node 2 is outside"):
        t.rank_of(2, 0)
    with pytest.raises(ValueError, match="local index 2"):
        t.rank_of(0, 2)
    with pytest.raises(ValueError, match="world_size 5 does not equal"):
        Topology.from_dict({"nodes": 2, "gpus_per_node": 2, "world_size": 5})
    with pytest.raises(ValueError, match="missing key"):
        Topology.from_dict({"nodes": 2})
