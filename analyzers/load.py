"""Load Kineto traces (one file or a run directory of rank files) into TraceFrames.

>>> frames = load_run("sample_traces/handmade")          # doctest: +SKIP
>>> frames.activities.select("rank", "stream", "name")    # doctest: +SKIP

A run directory holds ``rank-<r>.json[.gz]`` files (any names PyTorch writes,
e.g. ``host_1234.1700000000.pt.trace.json.gz``) and optionally overlapscope's
``run.json`` manifest. Ranks come from ``distributedInfo.rank``, else from the
file name, else from the sorted file order. All ranks share one time origin:
the earliest event of the run (absolute time = ``baseTimeNanoseconds`` + ts).

``meta`` keys set here: source, origin_ns, overlapscope, manifest, gpus_per_node,
skipped_events (events dropped as unusable: misfit types, non-finite, absurd or
negative ts/dur), events_without_dur (GPU activities written without ``dur``,
kept as zero-length), process_groups (``pg_name`` -> global ranks from
``distributedInfo.pg_config``, when every file's was read while decoding) and
warnings (sentences for the user: ranks that run.json declares but no file
holds, activities without a duration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.cache import load_cached, store
from overlapscope.analyzers.discover import (  # noqa: F401 - also imported from here
    MANIFEST,
    TRACE_SUFFIXES,
    _read_manifest,
    discover_rank_files,
    run_files,
)
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.kineto.decode import FileFrames, decode_file, rank_from_name

#: Called with (file path, index, number of files) before each file is read.
ProgressFn = Callable[[Path, int, int], None]
#: Decodes a run's files, in order: ``decoder(files, cache)`` -> FileFrames per file.
#: The default decodes one after another; the batch API passes a process pool.
Decoder = Callable[[list[Path], bool], Iterable[FileFrames]]


def load_file(path: Path, *, cache: bool = True, workers: int = 1) -> FileFrames:
    """Decode one trace file, through the parquet cache when ``cache`` is set.

    ``workers`` > 1 decodes batches of the file's events in that many processes
    (this one included); the frames are the same for any value.
    """
    if cache:
        hit = load_cached(path)
        if hit is not None:
            return hit
    ff = decode_file(path, workers=workers)
    if cache:
        store(path, ff)
    return ff


def load_run(
    path: str | Path,
    *,
    cache: bool = True,
    gpus_per_node: int | None = None,
    progress: ProgressFn | None = None,
    decoder: Decoder | None = None,
    workers: int = 1,
) -> TraceFrames:
    """Load a trace file or run directory into one TraceFrames bundle.

    ``gpus_per_node`` is recorded in ``meta`` for analyzers that need a topology
    when the trace does not carry overlapscope's own. ``workers``: processes per
    file when the files are decoded here (see :func:`load_file`). Raises TraceError naming
    the offending file when the input cannot be analyzed.
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file or directory")
    if path.is_file() and path.name.endswith((".csv", ".csv.gz")):
        return _load_warp_csv(path)
    files = discover_rank_files(path) if path.is_dir() else [path]
    manifest = _read_manifest(path) if path.is_dir() else {}
    loaded: list[FileFrames] = []
    if decoder is not None:
        loaded = list(decoder(files, cache))
    else:
        for i, file in enumerate(files):
            if progress:
                progress(file, i, len(files))
            loaded.append(load_file(file, cache=cache, workers=workers))
    ranks = _assign_ranks(files, loaded)
    return _assemble(path, loaded, ranks, manifest, gpus_per_node)


def _load_warp_csv(path: Path) -> TraceFrames:
    """A per-warp event table (the H200 fixture CSV format) as a warp-only run."""
    from overlapscope.analyzers.warps.csv import read_warp_csv

    warps = read_warp_csv(path)
    schemas = {
        "activities": F.ACTIVITIES_SCHEMA,
        "cpu_ops": F.CPU_OPS_SCHEMA,
        "annotations": F.ANNOTATIONS_SCHEMA,
        "comm_meta": F.COMM_META_SCHEMA,
        "counters": F.COUNTERS_SCHEMA,
    }
    empty = {name: F.empty(schema) for name, schema in schemas.items()}
    ranks = pl.DataFrame(
        [{"rank": 0, "path": str(path), "n_events": warps.height}], schema=F.RANKS_SCHEMA
    )
    meta = {
        "source": str(path),
        "origin_ns": 0,
        "overlapscope": {},
        "manifest": {},
        "gpus_per_node": None,
        "skipped_events": 0,
        "events_without_dur": 0,
        "warnings": [],
    }
    return TraceFrames(warp_events=warps, ranks=ranks, meta=meta, **empty)


def load_many(
    paths: Iterable[str | Path], **kwargs: Any
) -> tuple[list[TraceFrames], list[TraceError]]:
    """Load several runs; bad ones are returned as errors instead of stopping the batch."""
    good: list[TraceFrames] = []
    bad: list[TraceError] = []
    for p in paths:
        try:
            good.append(load_run(p, **kwargs))
        except TraceError as exc:
            bad.append(exc)
    return good, bad


def _assign_ranks(files: list[Path], loaded: list[FileFrames]) -> list[int]:
    """distributedInfo rank, else the file name's, else file order; must be unique."""
    ranks = [
        ff.rank if ff.rank is not None else rank_from_name(f)
        for f, ff in zip(files, loaded, strict=True)
    ]
    if any(r is None for r in ranks) or len(set(ranks)) != len(ranks):
        by_name = [rank_from_name(f) for f in files]
        if None not in by_name and len(set(by_name)) == len(by_name):
            return [int(r) for r in by_name]  # type: ignore[arg-type]
        return list(range(len(files)))
    return [int(r) for r in ranks]  # type: ignore[arg-type]


def _min_ts(ff: FileFrames) -> int | None:
    mins = [getattr(ff, n)["ts_ns"].min() for n in FileFrames.FRAME_NAMES if getattr(ff, n).height]
    mins = [m for m in mins if m is not None]
    return min(mins) if mins else None  # type: ignore[type-var]


def _assemble(
    source: Path,
    loaded: list[FileFrames],
    ranks: list[int],
    manifest: dict[str, Any],
    gpus_per_node: int | None,
) -> TraceFrames:
    starts = [m for m in (_min_ts(ff) for ff in loaded) if m is not None]
    origin = int(min(starts)) if starts else 0
    parts: dict[str, list[pl.DataFrame]] = {n: [] for n in FileFrames.FRAME_NAMES}
    rank_rows = []
    for ff, rank in zip(loaded, ranks, strict=True):
        for name in FileFrames.FRAME_NAMES:
            df = getattr(ff, name)
            rank_col = pl.lit(rank, dtype=pl.Int32)
            if name == "warp_events":  # events may name their own rank
                rank_col = pl.col("rank").fill_null(rank_col)
            parts[name].append(
                df.with_columns(rank_col.alias("rank"), (pl.col("ts_ns") - origin).alias("ts_ns"))
            )
        start = _min_ts(ff)
        rank_rows.append(
            {
                "rank": rank,
                "path": ff.path,
                "world_size": ff.world_size,
                "backend": ff.backend,
                "num_sms": ff.num_sms,
                "device_name": ff.device_name,
                "origin_ns": None if start is None else int(start) - origin,
                "base_time_ns": ff.base_time_ns,
                "comm_tid": None
                if ff.overlapscope.get("comm_tid") is None
                else str(ff.overlapscope["comm_tid"]),
                "n_events": ff.n_events,
            }
        )
    schemas = {
        "activities": F.ACTIVITIES_SCHEMA,
        "cpu_ops": F.CPU_OPS_SCHEMA,
        "annotations": F.ANNOTATIONS_SCHEMA,
        "comm_meta": F.COMM_META_SCHEMA,
        "warp_events": F.WARP_EVENTS_SCHEMA,
        "counters": F.COUNTERS_SCHEMA,
    }
    out = {
        name: pl.concat(dfs, how="vertical") if dfs else F.empty(schemas[name])
        for name, dfs in parts.items()
    }
    # GPU activities written without "dur" arrive with a null duration: count, then 0.
    acts = out["activities"]
    no_dur = acts["dur_ns"].null_count()
    out["activities"] = acts.with_columns(pl.col("dur_ns").fill_null(0))
    ours = next((ff.overlapscope for ff in loaded if ff.overlapscope), {})
    meta = {
        "source": str(source),
        "origin_ns": origin,
        "overlapscope": ours,
        "manifest": manifest,
        "gpus_per_node": gpus_per_node or _gpus_per_node(ours, manifest),
        "skipped_events": sum(ff.skipped_events for ff in loaded),
        "events_without_dur": no_dur,
        "warnings": _run_warnings(manifest, ranks, no_dur),
    }
    groups = _process_groups(loaded, ranks)
    if groups is not None:
        meta["process_groups"] = groups
    return TraceFrames(
        ranks=pl.DataFrame(rank_rows, schema=F.RANKS_SCHEMA).sort("rank"), meta=meta, **out
    )


def _process_groups(loaded: list[FileFrames], ranks: list[int]) -> dict[str, list[int]] | None:
    """``pg_name`` -> ranks as skew.process_groups reads them from the files (in rank
    order, the first file naming a group wins); None when some file's pg_config is
    unknown or unusable, and skew.process_groups then reads the files itself."""
    if any(ff.pg_config is None for ff in loaded):
        return None
    groups: dict[str, list[int]] = {}
    try:
        for _, ff in sorted(zip(ranks, loaded, strict=True), key=lambda pair: pair[0]):
            for pg in ff.pg_config or []:
                name, members = pg.get("pg_name"), pg.get("ranks")
                if name is not None and isinstance(members, list) and members:
                    groups.setdefault(str(name), [int(r) for r in members])
    except (TypeError, ValueError, AttributeError):
        return None
    return groups


def _run_warnings(manifest: dict[str, Any], ranks: list[int], no_dur: int) -> list[str]:
    """Sentences about the run a user should read (meta["warnings"])."""
    out: list[str] = []
    declared = manifest.get("world_size") if isinstance(manifest, dict) else None
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        missing = sorted(set(range(declared)) - set(ranks))
        if missing:
            out.append(
                f"run.json declares {declared} ranks but {len(missing)} "
                f"{'has' if len(missing) == 1 else 'have'} no trace file: "
                f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
            )
    if no_dur:
        out.append(f"{no_dur} GPU activit{'ies' if no_dur > 1 else 'y'} without a duration "
                   "('dur') counted as zero-length")
    return out


def _gpus_per_node(ours: dict[str, Any], manifest: dict[str, Any]) -> int | None:
    for src in (ours, manifest):
        topo = src.get("topology") if isinstance(src, dict) else None
        if isinstance(topo, dict) and topo.get("gpus_per_node"):
            return int(topo["gpus_per_node"])
    return None
