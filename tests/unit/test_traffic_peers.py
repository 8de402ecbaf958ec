"""Per-destination estimates of NCCL record_param_comms with known process groups (by hand)."""

from __future__ import annotations

import polars as pl

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.traffic import peer_estimates, traffic_matrix, traffic_pairs

# groups: "0" = world [0, 1, 2, 3]; "5" = [1, 3] (say an EP pair across nodes)
GROUPS = {"0": [0, 1, 2, 3], "5": [1, 3], "__world__": [0, 1, 2, 3]}
ROWS = [
    # rank, collective, dtype, in, out, group_size, pg_name
    (0, "allreduce", "Float", 1000, 1000, 4, "0"),       # 4000 B, ring: 2*3/4 -> 6000 to rank 1
    (3, "all_reduce", "Float", 1000, 1000, 4, "0"),      # to rank 0 (successor wraps)
    (1, "_allgather_base", "BFloat16", 100, 400, 4, "0"),  # S = 800 B: 3/4 -> 600 to rank 2
    (2, "reduce_scatter_", "BFloat16", 400, 100, 4, "0"),  # S = 800 B: 600 to rank 3
    (1, "all_to_allv", "Float", 200, 200, 2, "5"),       # 800 B / 2 -> 400 to 1 and 400 to 3
    (3, "broadcast", "Float", 10, 10, 4, "0"),           # not split: one unknown-dst row
    (2, "allreduce", "Float", 10, 10, 2, "9"),           # unknown group: not split
]


def _meta() -> pl.DataFrame:
    cols = ["rank", "collective", "dtype", "in_nelems", "out_nelems", "group_size", "pg_name"]
    data = {c: [r[i] for r in ROWS] for i, c in enumerate(cols)}
    n = len(ROWS)
    data.update(tid=["1"] * n, name=["record_param_comms"] * n, ts_ns=list(range(n)),
                dur_ns=[1] * n, phase=["dispatch(F)"] * n, dst_bytes=[None] * n)
    return pl.DataFrame(data, schema=F.COMM_META_SCHEMA)


def test_split_by_algorithm() -> None:
    est = peer_estimates(_meta(), GROUPS, world_size=4)
    got = sorted(est.select("src_rank", "dst_rank", "bytes").rows())
    assert got == [(0, 1, 6000), (1, 1, 400), (1, 2, 600), (1, 3, 400), (2, 3, 600),
                   (3, 0, 6000)]


def test_pairs_and_matrix_with_links() -> None:
    pairs = traffic_pairs(_meta(), gpus_per_node=2, world_size=4, groups=GROUPS)
    assert pairs["estimated"].all()
    # the broadcast and the unknown-group all_reduce stay single rows without destination
    assert pairs.filter(pl.col("dst_rank").is_null())["bytes"].to_list() == [40, 40]
    m = {(r["src_rank"], r["dst_rank"]): (r["link"], r["bytes"])
         for r in traffic_matrix(pairs).to_dicts()}
    assert m == {(0, 1): ("nvl", 6000), (1, 1): ("local", 400), (1, 2): ("ib", 600),
                 (1, 3): ("ib", 400), (2, 3): ("nvl", 600), (3, 0): ("ib", 6000)}
    assert set(pairs["phase"].drop_nulls()) == {"dispatch(F)"}


def test_without_groups_nothing_changes() -> None:
    pairs = traffic_pairs(_meta(), gpus_per_node=2, world_size=4)
    assert pairs["dst_rank"].null_count() == pairs.height == len(ROWS)
