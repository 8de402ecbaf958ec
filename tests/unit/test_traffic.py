"""Traffic analyzer on a hand-built comm_meta frame (answers worked out by hand below)."""

from __future__ import annotations

import polars as pl
import pytest

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.traffic import link_split, traffic_pairs, traffic_summary

# 2 nodes x 2 GPUs: ranks 0,1 on node 0; 2,3 on node 1.
ROWS = [
    # rank, name, collective, phase, dtype, in, out, group, dst_bytes
    (0, "dispatch:ib", "two_hop_dispatch", "dispatch(F)", "float32", None, None, None,
     [0, 0, 100, 0]),
    (0, "dispatch:nvl", "two_hop_dispatch", "dispatch(F)", "float32", None, None, None,
     [0, 50, 0, 0]),
    (0, "dispatch:local", "two_hop_dispatch", "dispatch(F)", "float32", None, None, None,
     [30, 0, 0, 0]),
    (1, "combine:ib", "two_hop_combine", "combine(F)", "float32", None, None, None,
     [0, 0, 0, 200]),
    (1, "combine:ib", "two_hop_combine", "combine(F)", "float32", None, None, None,
     [0, 0, 0, 7]),
    # NCCL record_param_comms: no vector -> 1000 BFloat16 elements = 2000 bytes, unknown link
    (1, "record_param_comms", "all_to_allv", None, "BFloat16", 1000, 1000, 4, None),
    # a one-member group is a local copy: 10 Float = 40 bytes
    (2, "record_param_comms", "all_reduce", None, "Float", 10, 10, 1, None),
]


def _comm_meta() -> pl.DataFrame:
    cols = ["rank", "name", "collective", "phase", "dtype", "in_nelems", "out_nelems",
            "group_size", "dst_bytes"]
    data = {c: [r[i] for r in ROWS] for i, c in enumerate(cols)}
    n = len(ROWS)
    data.update(tid=["1"] * n, ts_ns=[10 * i for i in range(n)], dur_ns=[5] * n, pg_name=[None] * n)
    return pl.DataFrame(data, schema=F.COMM_META_SCHEMA)


def _frames(meta: dict) -> F.TraceFrames:
    ranks = pl.DataFrame({"rank": [0, 1, 2, 3], "world_size": [4] * 4},
                         schema={"rank": pl.Int32, "world_size": pl.Int64})
    ranks = ranks.with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in F.RANKS_SCHEMA.items()
         if c not in ranks.columns]
    ).select(list(F.RANKS_SCHEMA))
    return F.TraceFrames(
        activities=F.empty(F.ACTIVITIES_SCHEMA), cpu_ops=F.empty(F.CPU_OPS_SCHEMA),
        annotations=F.empty(F.ANNOTATIONS_SCHEMA), comm_meta=_comm_meta(),
        warp_events=F.empty(F.WARP_EVENTS_SCHEMA), counters=F.empty(F.COUNTERS_SCHEMA),
        ranks=ranks, meta=meta)


def _by_rank(df: pl.DataFrame) -> dict[int, dict]:
    return {r["src_rank"]: r for r in df.to_dicts()}


def test_split_per_rank_with_topology_from_the_trace() -> None:
    topo = {"nodes": 2, "gpus_per_node": 2, "world_size": 4}
    out = traffic_summary(_frames({"overlapscope": {"topology": topo}}))
    assert out["gpus_per_node"] == 2
    per = _by_rank(out["per_rank"])
    # rank 0: local 30, nvl 50 (0->1), ib 100 (0->2)
    assert (per[0]["local_bytes"], per[0]["nvl_bytes"], per[0]["ib_bytes"],
            per[0]["total_bytes"]) == (30, 50, 100, 180)
    assert per[0]["ib_fraction"] == pytest.approx(100 / 150)
    # rank 1: ib 200 + 7 (1->3), unknown 2000 (estimated all_to_allv)
    assert (per[1]["ib_bytes"], per[1]["unknown_bytes"], per[1]["estimated_bytes"],
            per[1]["total_bytes"]) == (207, 2000, 2000, 2207)
    # rank 2: the single-member all_reduce, 40 local bytes
    assert (per[2]["local_bytes"], per[2]["total_bytes"]) == (40, 40)
    assert per[2]["ib_fraction"] is None
    matrix = {(r["src_rank"], r["dst_rank"]): (r["link"], r["bytes"])
              for r in out["matrix"].to_dicts()}
    assert matrix == {(0, 0): ("local", 30), (0, 1): ("nvl", 50), (0, 2): ("ib", 100),
                      (1, 3): ("ib", 207)}
    coll = {r["collective"]: r for r in out["per_collective"].to_dicts()}
    assert coll["two_hop_dispatch"]["total_bytes"] == 180
    assert coll["two_hop_combine"]["ib_bytes"] == 207
    assert coll["all_to_allv"]["unknown_bytes"] == 2000
    phase = {(r["src_rank"], r["phase"]): r["total_bytes"] for r in out["per_phase"].to_dicts()}
    assert phase[(0, "dispatch(F)")] == 180 and phase[(1, "combine(F)")] == 207
    assert phase[(1, None)] == 2000


def test_topology_argument_overrides_and_changes_links() -> None:
    # with 4 GPUs per node every pair is on one node: 0->2 and 1->3 become NVLink,
    # and the 4-member all_to_allv of a one-node job counts as NVLink too
    out = traffic_summary(_frames({}), gpus_per_node=4)
    per = _by_rank(out["per_rank"])
    assert (per[0]["nvl_bytes"], per[0]["ib_bytes"]) == (150, 0)
    assert (per[1]["nvl_bytes"], per[1]["unknown_bytes"]) == (2207, 0)


def test_without_topology_the_hop_in_the_name_is_used() -> None:
    pairs = traffic_pairs(_comm_meta())
    split = _by_rank(link_split(pairs))
    assert (split[0]["local_bytes"], split[0]["nvl_bytes"], split[0]["ib_bytes"]) == (30, 50, 100)
    assert (split[1]["ib_bytes"], split[1]["unknown_bytes"]) == (207, 2000)
    assert pairs.filter(pl.col("estimated"))["dst_rank"].null_count() == 2
    assert pairs.schema["bytes"] == pl.Int64 and pairs.height == 7


def test_empty_input_gives_empty_tables() -> None:
    pairs = traffic_pairs(F.empty(F.COMM_META_SCHEMA), gpus_per_node=8)
    assert pairs.height == 0
    assert link_split(pairs).height == 0
