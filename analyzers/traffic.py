"""Communication volume per (source rank, destination rank) and its IB / NVLink / local split.

Input is ``TraceFrames.comm_meta``. Two kinds of rows:

* overlapscope ``comm_traffic`` rows carry ``dst_bytes`` (bytes this rank sent
  to every global rank): exact, one pair row per non-zero destination;
* NCCL ``record_param_comms`` rows have no destination vector: their volume is
  *estimated* as ``in_nelems`` (else ``out_nelems``) x the dtype's size — the
  payload this rank contributes, not the algorithm's wire bytes — with an
  unknown destination (``dst_rank`` null); when the process group's ranks are
  known (``distributedInfo.pg_config``, see :func:`peer_estimates`) they are
  split per destination by the collective's algorithm (ring all_reduce
  2(n-1)/n, all_gather / reduce_scatter (n-1)/n, all_to_all in/n per peer).

The link class of a pair comes from the topology (``gpus_per_node``: same rank
"local", same node "nvl", else "ib"); without one, an overlapscope row falls back
on the hop in its name (``dispatch:ib``) and anything else is "unknown". An
estimated row is "local" when its group has one member, "nvl" when the whole job
fits in one node, otherwise "unknown".
"""

from __future__ import annotations

import functools
from typing import Any

import polars as pl

from overlapscope.analyzers.frames import TraceFrames

#: Link classes in report order.
LINKS = ("local", "nvl", "ib", "unknown")

#: One row per (comm event, destination): ``bytes`` sent from ``src_rank`` to
#: ``dst_rank`` (null when unknown) during [``ts_ns``, ``ts_ns + dur_ns``].
TRAFFIC_PAIRS_SCHEMA: dict[str, pl.DataType] = {
    "src_rank": pl.Int32,
    "dst_rank": pl.Int32,
    "link": pl.Utf8,
    "name": pl.Utf8,
    "collective": pl.Utf8,
    "phase": pl.Utf8,
    "dtype": pl.Utf8,
    "ts_ns": pl.Int64,
    "dur_ns": pl.Int64,
    "bytes": pl.Int64,
    "estimated": pl.Boolean,
}

#: Bytes per element by dtype spelling (NCCL/PyTorch "BFloat16" and torch "bfloat16").
DTYPE_BYTES: dict[str, int] = {
    "double": 8, "float64": 8, "long": 8, "int64": 8, "complexfloat": 8, "complex64": 8,
    "float": 4, "float32": 4, "int": 4, "int32": 4,
    "bfloat16": 2, "half": 2, "float16": 2, "short": 2, "int16": 2,
    "byte": 1, "uint8": 1, "char": 1, "int8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}


def _topology(frames: TraceFrames, gpus_per_node: int | None) -> tuple[int | None, int | None]:
    """(gpus_per_node, world_size) from the argument, the loader's meta or our trace member."""
    topo = (frames.meta.get("overlapscope") or {}).get("topology") or {}
    gpn = gpus_per_node or frames.meta.get("gpus_per_node") or topo.get("gpus_per_node")
    world = topo.get("world_size")
    if world is None and frames.ranks.height:
        world = frames.ranks["world_size"].max()
    return (int(gpn) if gpn else None), (int(world) if world else None)


def _link_expr(gpus_per_node: int | None) -> pl.Expr:
    same = pl.col("src_rank") == pl.col("dst_rank")
    if gpus_per_node:
        gpn = gpus_per_node
        return (
            pl.when(same).then(pl.lit("local"))
            .when(pl.col("src_rank") // gpn == pl.col("dst_rank") // gpn).then(pl.lit("nvl"))
            .otherwise(pl.lit("ib"))
        )
    # no topology: trust the hop our profiler wrote into the name ("dispatch:ib")
    suffix = pl.col("name").str.extract(r":(ib|nvl|local)$", 1)
    return pl.when(same).then(pl.lit("local")).otherwise(suffix.fill_null("unknown"))


#: Share of a collective's message bytes a rank sends, by algorithm (ring for reductions).
def _ring_share(kind: str, n: int) -> float | None:
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    return None


@functools.lru_cache(maxsize=1024)  # a job has a handful of collective names
def _collective_kind(name: str | None) -> str | None:
    """all_reduce / all_gather / reduce_scatter / all_to_all, or None (not split)."""
    key = "".join(ch for ch in (name or "").lower() if ch.isalpha())
    for kind, words in (("all_reduce", ("allreduce",)),
                        ("all_gather", ("allgather", "allgatherbase", "allgatherintocoalesced")),
                        ("reduce_scatter", ("reducescatter", "reducescatterbase",
                                            "reducescattertensor")),
                        ("all_to_all", ("alltoall", "alltoallv", "alltoallbase"))):
        if any(key.startswith(w) or key == w for w in words):
            return kind
    return None


def peer_estimates(
    comm_meta: pl.DataFrame, groups: dict[str, list[int]], *, world_size: int | None = None
) -> pl.DataFrame:
    """Per-destination estimates of NCCL ``record_param_comms`` rows whose group is known.

    The group is ``groups[pg_name]`` when its size equals ``group_size``, else all
    ranks when ``group_size`` equals ``world_size``. With message bytes ``S`` (the
    larger of in/out nelems x dtype size) and ``n`` members, a rank sends: all_reduce
    ``2(n-1)/n * S``, all_gather / reduce_scatter ``(n-1)/n * S`` to its ring
    successor (next member in group order); all_to_all ``in/n`` bytes to every
    member (itself included, as local bytes). Other collectives and unknown groups
    are not split. Columns: the comm_meta row index ``row`` plus src_rank, dst_rank,
    bytes.
    """
    out = {"row": [], "src_rank": [], "dst_rank": [], "bytes": []}
    if comm_meta.is_empty():
        return pl.DataFrame(out, schema={"row": pl.Int64, "src_rank": pl.Int32,
                                         "dst_rank": pl.Int32, "bytes": pl.Int64})
    cols = ["rank", "collective", "dtype", "in_nelems", "out_nelems", "group_size", "pg_name",
            "dst_bytes"]
    for i, (rank, coll, dtype, n_in, n_out, gsize, pg, dst) in enumerate(
            comm_meta.select(cols).iter_rows()):
        if dst is not None:
            continue
        kind = _collective_kind(coll)
        size = DTYPE_BYTES.get((dtype or "").lower())
        if kind is None or size is None:
            continue
        group = groups.get(str(pg)) if pg is not None else None
        if group is None or (gsize and len(group) != gsize):
            group = groups.get("__world__") if gsize and gsize == world_size else None
        if not group or rank not in group:
            continue
        n = len(group)
        if kind == "all_to_all":
            if n_in is None:
                continue
            per = n_in * size // n
            for d in group:
                out["row"].append(i)
                out["src_rank"].append(rank)
                out["dst_rank"].append(d)
                out["bytes"].append(per)
            continue
        msg = max(n_in or 0, n_out or 0) * size
        share = _ring_share(kind, n)
        if not msg or share is None or n < 2:
            continue
        out["row"].append(i)
        out["src_rank"].append(rank)
        out["dst_rank"].append(group[(group.index(rank) + 1) % n])
        out["bytes"].append(round(msg * share))
    return pl.DataFrame(out, schema={"row": pl.Int64, "src_rank": pl.Int32,
                                     "dst_rank": pl.Int32, "bytes": pl.Int64})


def traffic_pairs(
    comm_meta: pl.DataFrame, *, gpus_per_node: int | None = None, world_size: int | None = None,
    groups: dict[str, list[int]] | None = None,
) -> pl.DataFrame:
    """Every comm_meta row as (src, dst, link, bytes) rows (TRAFFIC_PAIRS_SCHEMA).

    Exact rows with zero bytes to a destination are dropped; estimated rows keep
    one row each. ``world_size`` only serves the single-node rule of estimates.
    With ``groups`` (process group name -> ranks, see :func:`peer_estimates`),
    NCCL rows of a known group are split per destination instead (still
    ``estimated``); the rest stay single rows with an unknown destination.
    """
    if groups:
        split = peer_estimates(comm_meta, groups, world_size=world_size)
        if split.height:
            indexed = comm_meta.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
            done = indexed.join(split.select("row").unique(), on="row", how="semi")
            rest = indexed.join(split.select("row").unique(), on="row", how="anti").drop("row")
            rows = split.join(done.drop("rank", "dst_bytes"), on="row").drop("row")
            base = traffic_pairs(rest, gpus_per_node=gpus_per_node, world_size=world_size)
            rows = rows.with_columns(pl.lit(True).alias("estimated"))
            rows = rows.with_columns(_link_expr(gpus_per_node).alias("link"))
            cols = list(TRAFFIC_PAIRS_SCHEMA)
            out = pl.concat([base, rows.select(cols).cast(TRAFFIC_PAIRS_SCHEMA)])
            return out.sort(["src_rank", "ts_ns", "dst_rank"], nulls_last=True)
    base = comm_meta.select(
        pl.col("rank").alias("src_rank"), "name", "collective", "phase", "dtype", "ts_ns",
        "dur_ns", "dst_bytes", "in_nelems", "out_nelems", "group_size",
    )
    exact = (
        base.filter(pl.col("dst_bytes").is_not_null())
        .with_columns(pl.int_ranges(0, pl.col("dst_bytes").list.len(), dtype=pl.Int32)
                      .alias("dst_rank"))
        .explode(["dst_bytes", "dst_rank"])
        .filter(pl.col("dst_bytes") > 0)
        .with_columns(pl.col("dst_bytes").alias("bytes"), pl.lit(False).alias("estimated"))
    )
    exact = exact.with_columns(_link_expr(gpus_per_node).alias("link"))
    size = pl.col("dtype").str.to_lowercase().replace_strict(DTYPE_BYTES, default=None,
                                                             return_dtype=pl.Int64)
    one_node = bool(gpus_per_node and world_size and world_size <= gpus_per_node)
    estimated = (
        base.filter(pl.col("dst_bytes").is_null())
        .with_columns(
            (pl.coalesce("in_nelems", "out_nelems") * size).alias("bytes"),
            pl.lit(None, dtype=pl.Int32).alias("dst_rank"),
            pl.lit(True).alias("estimated"),
            pl.when(pl.col("group_size") == 1).then(pl.lit("local"))
            .otherwise(pl.lit("nvl" if one_node else "unknown")).alias("link"),
        )
        .filter(pl.col("bytes").is_not_null())
    )
    cols = list(TRAFFIC_PAIRS_SCHEMA)
    out = pl.concat([exact.select(cols), estimated.select(cols)], how="vertical_relaxed")
    return out.cast(TRAFFIC_PAIRS_SCHEMA).sort(["src_rank", "ts_ns", "dst_rank"],
                                              nulls_last=True)


def traffic_matrix(pairs: pl.DataFrame) -> pl.DataFrame:
    """Total bytes per (src_rank, dst_rank, link) over pairs with a known destination."""
    return (
        pairs.filter(pl.col("dst_rank").is_not_null())
        .group_by(["src_rank", "dst_rank", "link"])
        .agg(pl.col("bytes").sum())
        .sort(["src_rank", "dst_rank"])
    )


def link_split(
    pairs: pl.DataFrame, by: list[str] | tuple[str, ...] = ("src_rank",)
) -> pl.DataFrame:
    """Bytes per link class for each group of ``by``.

    Columns: the ``by`` keys, ``local_bytes``, ``nvl_bytes``, ``ib_bytes``,
    ``unknown_bytes``, ``total_bytes``, ``estimated_bytes`` (part of the total
    that comes from nelems estimates) and ``ib_fraction`` (ib / (nvl + ib),
    null when neither carried bytes).
    """
    keys = list(by)
    aggs = [
        pl.col("bytes").filter(pl.col("link") == link).sum().alias(f"{link}_bytes")
        for link in LINKS
    ]
    out = pairs.group_by(keys).agg(
        *aggs,
        pl.col("bytes").sum().alias("total_bytes"),
        pl.col("bytes").filter(pl.col("estimated")).sum().alias("estimated_bytes"),
    )
    wire = pl.col("nvl_bytes") + pl.col("ib_bytes")
    return out.with_columns(
        pl.when(wire > 0).then(pl.col("ib_bytes") / wire).otherwise(None).alias("ib_fraction")
    ).sort(keys, nulls_last=True)


def traffic_summary(frames: TraceFrames, *, gpus_per_node: int | None = None) -> dict[str, Any]:
    """All traffic tables of one run.

    Returns ``pairs`` (TRAFFIC_PAIRS_SCHEMA), ``matrix`` (traffic_matrix),
    ``per_rank`` (link_split by src_rank), ``per_collective`` (by collective),
    ``per_phase`` (by src_rank and phase) and ``gpus_per_node`` (int or None).
    """
    gpn, world = _topology(frames, gpus_per_node)
    groups = None
    nccl = frames.comm_meta.filter(pl.col("dst_bytes").is_null())
    if nccl.height:
        from overlapscope.analyzers.skew import process_groups

        groups = process_groups(frames)
        if len(groups) == 1:
            groups = None  # no pg_config recorded: keep the per-row estimates
    pairs = traffic_pairs(frames.comm_meta, gpus_per_node=gpn, world_size=world, groups=groups)
    return {
        "pairs": pairs,
        "matrix": traffic_matrix(pairs),
        "per_rank": link_split(pairs, ["src_rank"]),
        "per_collective": link_split(pairs, ["collective"]),
        "per_phase": link_split(pairs, ["src_rank", "phase"]),
        "gpus_per_node": gpn,
    }
