"""Timeline lanes and a per-lane range-max index: what the dashboard draws, and no more.

A run's timeline is a set of **lanes** (one row of rectangles each) holding
**intervals**. ``build_timeline(frames)`` makes, per rank:

- one lane per annotation nesting depth (``group="annotation"``; CPU
  ``record_function`` ranges, ``ProfilerStep#N`` left out since it is the window);
- one lane per GPU stream, ``group`` "comm" when communication fills at least
  half of its busy time (union lengths), else "compute"; on CPU-only runs one
  lane per thread (``group="thread"``, the profiler's comm thread labelled so);
- one lane per device with the **exposed communication** (comm time with no
  compute or memory work running on the device: ``U(C) - U(P)``), for shading.

``Timeline.view(t0_ns, t1_ns, pixels)`` answers a zoom or pan: the window
``[t0, t1)`` is cut into ``pixels`` columns and, per lane and column, the
**longest interval overlapping the column** is chosen (as Perfetto does);
neighbouring columns that chose the same interval give one rectangle. So a view
never holds more than ``lanes x pixels`` rectangles, whatever the trace size.
:func:`merge_touching` then draws touching rectangles of one kind as one bar (what
the dashboard sends: no pixel changes, far fewer bars on zoomed-out windows).

The index (:class:`LaneIndex`) sorts each lane's intervals by start and keeps
the running maximum of their ends. The intervals overlapping a column
``[a, b)`` are then inside the contiguous row range ``[lo, hi)`` with
``lo`` = first row whose running max end > ``a`` and ``hi`` = first row whose
start >= ``b``; rows inside that range that do not overlap the column are
strictly shorter than row ``lo`` (they start no earlier and end before ``a``),
so the longest row of the range always overlaps the column. The range maximum
is answered in O(1) by a sparse table over blocks of :data:`BLOCK` rows plus
in-block prefix/suffix maxima (memory ~2 int32 per interval).

Ties (equal durations) go to the earlier row in (start asc, duration desc,
input order). Intervals of zero or negative length are never drawn.

Schemas (all times integer ns from the run's origin):

- ``lanes``: lane i32 (0..n-1, display order), rank i32, device i32, group str
  (annotation|compute|comm|thread|exposed|warp), key i64 (stream, thread, depth or
  warp), label str.
- ``intervals``: lane i32, start_ns i64, end_ns i64, name str, kind str
  (compute|comm|memory|annotation|exposed or a warp state), comm_type str,
  item i64 (work item id, annotation row, warp event row; -1 for exposed).
- ``view`` result: lane i32, row i64 (row of ``intervals``), start_ns, end_ns,
  name, kind, comm_type, item, px0 i32, px1 i32 (the columns it won, px1
  exclusive).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.cache import CACHE_SCHEMA_VERSION, cache_dir, content_hash
from overlapscope.analyzers.classify import RuleSet
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.work import annotation_members, work_items

#: Rows per block of the range-max index.
BLOCK = 32
#: Annotation nesting levels shown per rank (deeper ones fold into the last).
ANNOTATION_DEPTHS = 2
#: Annotations that bound the analysis window rather than describe work.
WINDOW_ANNOTATION = r"^ProfilerStep#\d+$"

LANES_SCHEMA: dict[str, pl.DataType] = {
    "lane": pl.Int32,
    "rank": pl.Int32,
    "device": pl.Int32,
    "group": pl.Utf8,
    "key": pl.Int64,
    "label": pl.Utf8,
}
INTERVALS_SCHEMA: dict[str, pl.DataType] = {
    "lane": pl.Int32,
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
    "name": pl.Utf8,
    "kind": pl.Utf8,
    "comm_type": pl.Utf8,
    "item": pl.Int64,
}
#: :meth:`Timeline.bars`: merged bars, ``row`` of ``intervals`` (the longest member).
BARS_SCHEMA: dict[str, pl.DataType] = {
    "lane": pl.Int32, "row": pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64,
    "kind": pl.Utf8, "px0": pl.Int32, "px1": pl.Int32, "members": pl.UInt32,
}
#: Lane groups holding work items (GPU streams, CPU threads).
WORK_GROUPS = ("compute", "comm", "thread")
_GROUP_ORDER = {"annotation": 0, "thread": 1, "compute": 1, "comm": 2, "exposed": 3, "warp": 4}


# --------------------------------------------------------------------------- index


def _better(dur: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: is row ``a`` preferred to row ``b`` (longer, then earlier)?"""
    da, db = dur[a], dur[b]
    return (da > db) | ((da == db) & (a < b))


def _pick(dur: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise best of rows ``a`` and ``b``; -1 entries lose to anything."""
    out = np.where(_better(dur, np.maximum(a, 0), np.maximum(b, 0)), a, b)
    out = np.where(a < 0, b, out)
    return np.where(b < 0, a, out)


@dataclass(frozen=True)
class LaneIndex:
    """Range-max index over intervals grouped by lane (see the module docstring).

    Rows are sorted by (lane, start asc, duration desc, input order); ``order``
    maps a sorted row back to the row of the frame it was built from.
    """

    n_lanes: int
    offsets: np.ndarray  # lane l's rows are [offsets[l], offsets[l + 1])
    starts: np.ndarray
    ends: np.ndarray
    durs: np.ndarray
    maxend: np.ndarray  # running max of ends within the lane
    order: np.ndarray
    prefix: np.ndarray  # best row of [block start, i]
    suffix: np.ndarray  # best row of [i, block end]
    table: list[np.ndarray] = field(repr=False)  # table[k][j]: best row of blocks [j, j+2^k)

    @classmethod
    def build(cls, intervals: pl.DataFrame, n_lanes: int | None = None) -> LaneIndex:
        """Index ``intervals`` (columns lane, start_ns, end_ns; other columns ignored)."""
        d = intervals.select(
            pl.col("lane").cast(pl.Int64), pl.col("start_ns").cast(pl.Int64),
            pl.col("end_ns").cast(pl.Int64),
        ).with_row_index("_row")
        d = d.filter(pl.col("end_ns") > pl.col("start_ns"))
        d = d.with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("_dur")).sort(
            ["lane", "start_ns", "_dur", "_row"], descending=[False, False, True, False]
        )
        d = d.with_columns(pl.col("end_ns").cum_max().over("lane").alias("_maxend"))
        lanes = d["lane"].to_numpy()
        n = int(n_lanes if n_lanes is not None else (lanes.max() + 1 if len(lanes) else 0))
        offsets = np.searchsorted(lanes, np.arange(n + 1), side="left").astype(np.int64)
        durs = d["_dur"].to_numpy().astype(np.int64)
        prefix, suffix, blocks = _block_bests(durs)
        return cls(
            n_lanes=n,
            offsets=offsets,
            starts=d["start_ns"].to_numpy().astype(np.int64),
            ends=d["end_ns"].to_numpy().astype(np.int64),
            durs=durs,
            maxend=d["_maxend"].to_numpy().astype(np.int64),
            order=d["_row"].to_numpy().astype(np.int64),
            prefix=prefix,
            suffix=suffix,
            table=_sparse_table(durs, blocks),
        )

    _ARRAYS = ("offsets", "starts", "ends", "durs", "maxend", "order", "prefix", "suffix")

    def save(self, path: Path) -> None:
        """Write the index arrays to ``path`` (one uncompressed .npz)."""
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        arrays.update({f"table{k}": t for k, t in enumerate(self.table)})
        arrays["n_lanes"] = np.asarray(self.n_lanes, dtype=np.int64)
        with path.open("wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> LaneIndex:
        """An index written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            levels = sorted(int(k[5:]) for k in z.files if k.startswith("table"))
            return cls(
                n_lanes=int(z["n_lanes"]),
                **{name: z[name] for name in cls._ARRAYS},
                table=[z[f"table{k}"] for k in levels],
            )

    @property
    def size(self) -> int:
        """Intervals indexed (zero-length ones are left out)."""
        return len(self.durs)

    def nbytes(self) -> int:
        """Memory held by the index arrays, in bytes."""
        arrays = [self.offsets, self.starts, self.ends, self.durs, self.maxend, self.order,
                  self.prefix, self.suffix, *self.table]
        return int(sum(a.nbytes for a in arrays))

    def range_best(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Best sorted row of each row range ``[lo, hi)``; -1 where the range is empty."""
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        out = np.full(lo.shape, -1, dtype=np.int64)
        ok = hi > lo
        if not ok.any():
            return out
        lo_, hi_ = lo[ok], hi[ok]
        last = hi_ - 1
        bl, bh = lo_ // BLOCK, last // BLOCK
        res = np.full(lo_.shape, -1, dtype=np.int64)
        same = bl == bh
        if same.any():  # inside one block: scan; step k visits only ranges longer than k
            s_lo, s_hi = lo_[same], hi_[same]
            best = s_lo.copy()
            length = s_hi - s_lo
            k = 1
            active = np.nonzero(length > k)[0]
            while active.size:
                cand, cur = s_lo[active] + k, best[active]
                best[active] = np.where(_better(self.durs, cand, cur), cand, cur)
                k += 1
                active = active[length[active] > k]
            res[same] = best
        multi = ~same
        if multi.any():
            m_lo, m_last = lo_[multi], last[multi]
            best = _pick(self.durs, self.suffix[m_lo], self.prefix[m_last])
            b0, b1 = bl[multi] + 1, bh[multi]  # full blocks [b0, b1)
            mid = b1 > b0
            if mid.any():
                best[mid] = _pick(self.durs, best[mid], self._blocks_best(b0[mid], b1[mid]))
            res[multi] = best
        out[ok] = res
        return out

    def _blocks_best(self, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
        length = b1 - b0
        k = np.floor(np.log2(length)).astype(np.int64)
        out = np.full(b0.shape, -1, dtype=np.int64)
        for level in np.unique(k):
            sel = k == level
            t = self.table[int(level)]
            out[sel] = _pick(self.durs, t[b0[sel]], t[b1[sel] - (1 << int(level))])
        return out

    def query(
        self, t0_ns: int, t1_ns: int, pixels: int, lanes: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per lane and column: the winning sorted row (or -1).

        Returns (lane ids, rows of shape [len(lane ids), pixels]). Column ``p``
        covers ``[edges[p], edges[p+1])`` with ``edges = t0 + p * (t1 - t0) // pixels``.
        """
        if pixels < 1 or t1_ns <= t0_ns:
            raise ValueError(f"empty view: t0={t0_ns}, t1={t1_ns}, pixels={pixels}")
        lane_ids = np.arange(self.n_lanes) if lanes is None else np.asarray(lanes, dtype=np.int64)
        edges = column_edges(t0_ns, t1_ns, pixels)
        a, b = edges[:-1], edges[1:]
        lo_all = np.empty((len(lane_ids), pixels), dtype=np.int64)
        hi_all = np.empty_like(lo_all)
        for i, lane in enumerate(lane_ids):
            s, e = int(self.offsets[lane]), int(self.offsets[lane + 1])
            lo_all[i] = s + np.searchsorted(self.maxend[s:e], a, side="right")
            hi_all[i] = s + np.searchsorted(self.starts[s:e], b, side="left")
        rows = self.range_best(lo_all.ravel(), hi_all.ravel()).reshape(lo_all.shape)
        return lane_ids, rows


def merge_touching(rects: pl.DataFrame) -> pl.DataFrame:
    """Rectangles of one lane and kind whose columns touch (``px0`` of one equals
    ``px1`` of the previous) drawn as one.

    At a zoomed-out window a busy stream has a different winner in every column, yet
    neighbouring winners of one colour look like one bar: merging them changes no
    pixel but sends one rectangle instead of hundreds. A merged rectangle spans its
    members' earliest start to their latest end, keeps the longest member's row,
    name, comm_type and item (ties: the earliest), and counts its ``members`` (u32).
    An empty column (no interval) or a change of kind still splits bars. Input: the
    :meth:`Timeline.view` schema (lane-major, columns ascending); output: the same
    columns plus ``members``.
    """
    if rects.is_empty():
        return rects.with_columns(pl.lit(0, dtype=pl.UInt32).alias("members"))
    new_bar = (
        (pl.col("lane") != pl.col("lane").shift(1))
        | (pl.col("kind") != pl.col("kind").shift(1))
        | (pl.col("px0") != pl.col("px1").shift(1))
    ).fill_null(True)
    dur = pl.col("end_ns") - pl.col("start_ns")
    longest = pl.col("_d").arg_max()  # first of equal maxima: the earliest member
    return (
        rects.with_columns(new_bar.cum_sum().alias("_bar"), dur.alias("_d"))
        .group_by("_bar", maintain_order=True)
        .agg(
            pl.col("lane").first(),
            pl.col("row").get(longest),
            pl.col("start_ns").min(),
            pl.col("end_ns").max(),
            pl.col("name").get(longest),
            pl.col("kind").first(),
            pl.col("comm_type").get(longest),
            pl.col("item").get(longest),
            pl.col("px0").first(),
            pl.col("px1").last(),
            pl.len().cast(pl.UInt32).alias("members"),
        )
        .drop("_bar")
    )


def column_edges(t0_ns: int, t1_ns: int, pixels: int) -> np.ndarray:
    """The ``pixels + 1`` integer column edges of the window ``[t0, t1)``."""
    span = int(t1_ns) - int(t0_ns)
    return int(t0_ns) + (np.arange(pixels + 1, dtype=np.int64) * span) // pixels


def _block_bests(durs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-block prefix-best and suffix-best rows, and each block's best row."""
    n = len(durs)
    nb = (n + BLOCK - 1) // BLOCK
    idx = np.arange(nb * BLOCK, dtype=np.int64).reshape(nb, BLOCK)
    idx = np.where(idx < n, idx, -1)
    pre = idx.copy()
    for c in range(1, BLOCK):
        pre[:, c] = np.where(idx[:, c] < 0, pre[:, c - 1],
                             _pick(durs, pre[:, c - 1], idx[:, c]))
    suf = idx.copy()
    for c in range(BLOCK - 2, -1, -1):
        suf[:, c] = np.where(idx[:, c] < 0, -1, _pick(durs, idx[:, c], suf[:, c + 1]))
    blocks = pre[:, -1] if nb else np.empty(0, dtype=np.int64)
    return pre.ravel()[:n].copy(), suf.ravel()[:n].copy(), blocks


def _sparse_table(durs: np.ndarray, blocks: np.ndarray) -> list[np.ndarray]:
    table = [blocks.astype(np.int64)]
    width = 1
    while 2 * width <= len(blocks):
        prev = table[-1]
        table.append(_pick(durs, prev[: len(prev) - width], prev[width:]))
        width *= 2
    return table


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Timeline:
    """Lanes, their intervals and the index answering :meth:`view`."""

    lanes: pl.DataFrame
    intervals: pl.DataFrame
    index: LaneIndex
    items: pl.DataFrame | None = None
    frames: TraceFrames | None = field(default=None, repr=False)

    @classmethod
    def from_intervals(
        cls, lanes: pl.DataFrame, intervals: pl.DataFrame, **kw: Any
    ) -> Timeline:
        """A timeline over ready lanes and intervals (see the schemas above)."""
        intervals = intervals.select(
            [pl.col(c).cast(t) for c, t in INTERVALS_SCHEMA.items()]
        )
        return cls(lanes, intervals, LaneIndex.build(intervals, lanes.height), **kw)

    def save(self, folder: Path) -> None:
        """Write lanes, intervals, work items (parquet) and the index (npz) to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.lanes.write_parquet(folder / "lanes.parquet")
        self.intervals.write_parquet(folder / "intervals.parquet", compression="lz4")
        if self.items is not None:
            self.items.write_parquet(folder / "items.parquet", compression="lz4")
        self.index.save(folder / "index.npz")

    @classmethod
    def load(cls, folder: Path, frames: TraceFrames | None = None) -> Timeline:
        """A timeline written by :meth:`save`; ``frames`` (the run's) for :meth:`describe`."""
        items_path = folder / "items.parquet"
        return cls(
            lanes=pl.read_parquet(folder / "lanes.parquet"),
            intervals=pl.read_parquet(folder / "intervals.parquet"),
            index=LaneIndex.load(folder / "index.npz"),
            items=pl.read_parquet(items_path) if items_path.exists() else None,
            frames=frames,
        )

    @property
    def t_min(self) -> int:
        """Earliest start of any interval (0 when empty)."""
        return int(self.index.starts.min()) if self.index.size else 0

    @property
    def t_max(self) -> int:
        """Latest end of any interval (1 when empty)."""
        return int(self.index.ends.max()) if self.index.size else 1

    def view(
        self, t0_ns: int, t1_ns: int, pixels: int, lanes: list[int] | None = None
    ) -> pl.DataFrame:
        """Rectangles of the window ``[t0, t1)`` at ``pixels`` columns (schema above).

        At most ``len(lanes) x pixels`` rows: per lane and column the longest
        interval overlapping the column, neighbouring columns with the same
        winner merged into one rectangle.
        """
        lane_ids, rows = self.index.query(t0_ns, t1_ns, pixels, lanes)
        n_l, n_p = rows.shape
        prev = np.concatenate([np.full((n_l, 1), -2, dtype=np.int64), rows[:, :-1]], axis=1)
        start_mask = (rows >= 0) & (rows != prev)
        li, pi = np.nonzero(start_mask)
        nxt = np.concatenate([rows[:, 1:], np.full((n_l, 1), -2, dtype=np.int64)], axis=1)
        end_mask = (rows >= 0) & (rows != nxt)
        _, pe = np.nonzero(end_mask)  # same row-major order as the starts
        sorted_rows = rows[li, pi]
        frame_rows = self.index.order[sorted_rows]
        picked = self.intervals[frame_rows] if len(frame_rows) else self.intervals.clear()
        return picked.with_columns(
            pl.Series("lane", lane_ids[li], dtype=pl.Int32),
            pl.Series("row", frame_rows, dtype=pl.Int64),
            pl.Series("px0", pi, dtype=pl.Int32),
            pl.Series("px1", pe + 1, dtype=pl.Int32),
        ).select("lane", "row", "start_ns", "end_ns", "name", "kind", "comm_type", "item",
                 "px0", "px1")

    @cached_property
    def _kind_codes(self) -> tuple[list[str], np.ndarray]:
        """(kinds, code of each sorted index row): kinds compared as integers."""
        kinds = self.intervals["kind"].fill_null("").unique(maintain_order=True).to_list()
        codes = self.intervals["kind"].fill_null("").replace_strict(
            kinds, list(range(len(kinds))), return_dtype=pl.Int32).to_numpy()
        return kinds, codes[self.index.order]

    def bars(
        self, t0_ns: int, t1_ns: int, pixels: int, lanes: list[int] | None = None
    ) -> tuple[pl.DataFrame, int]:
        """What the dashboard draws: ``merge_touching(view(...))`` computed on the index
        arrays directly (no per-winner frame), with columns lane, row, start_ns, end_ns,
        kind, px0, px1, members; and the number of column winners (``view``'s rows).

        A bar is a run of non-empty columns of one lane whose winners have one kind;
        it spans its members' earliest start to latest end and keeps the longest
        member's row (ties: the first in column order), as :func:`merge_touching`.
        """
        kinds, kind_of = self._kind_codes
        lane_ids, rows = self.index.query(t0_ns, t1_ns, pixels, lanes)
        n_l, n_p = rows.shape
        prev = np.concatenate([np.full((n_l, 1), -1, dtype=np.int64), rows[:, :-1]], axis=1)
        valid = rows >= 0
        n_winners = int(np.count_nonzero(valid & (rows != prev)))
        code = np.where(valid, kind_of[np.maximum(rows, 0)], -1)
        prev_code = np.concatenate([np.full((n_l, 1), -1, dtype=code.dtype), code[:, :-1]],
                                   axis=1)
        starts_bar = valid & (code != prev_code)
        new_winner = (valid & (rows != prev)).ravel()[valid.ravel()]
        li, pi = np.nonzero(valid)  # row-major: lanes in order, columns ascending
        r = rows[li, pi]
        first = np.nonzero(starts_bar[li, pi])[0]  # index into the valid cells
        if len(first) == 0:
            empty = pl.DataFrame(schema={**BARS_SCHEMA})
            return empty, n_winners
        ix = self.index
        lo = np.minimum.reduceat(ix.starts[r], first)
        hi = np.maximum.reduceat(ix.ends[r], first)
        dur = ix.durs[r]
        bar_of = np.repeat(np.arange(len(first)), np.diff(np.append(first, len(r))))
        longest = np.maximum.reduceat(dur, first)
        pos = np.arange(len(r))
        at_max = np.where(dur == longest[bar_of], pos, len(r))
        best = r[np.minimum.reduceat(at_max, first)]
        last = np.append(first[1:], len(r)) - 1
        members = np.add.reduceat(new_winner.astype(np.int64), first)
        return pl.DataFrame({
            "lane": lane_ids[li[first]].astype(np.int32),
            "row": ix.order[best],
            "start_ns": lo,
            "end_ns": hi,
            "kind": pl.Series(kinds, dtype=pl.Utf8).gather(kind_of[best]),
            "px0": pi[first].astype(np.int32),
            "px1": (pi[last] + 1).astype(np.int32),
            "members": members.astype(np.uint32),
        }, schema=BARS_SCHEMA), n_winners

    def describe(self, row: int) -> dict[str, Any]:
        """What a click on interval ``row`` shows: name, times, lane, stream,
        classification and (for work items) the innermost enclosing annotation."""
        iv_row = self.intervals.row(int(row), named=True)
        lane = self.lanes.row(int(iv_row["lane"]), named=True)
        out: dict[str, Any] = {
            "name": iv_row["name"],
            "start_ns": iv_row["start_ns"],
            "end_ns": iv_row["end_ns"],
            "dur_ns": iv_row["end_ns"] - iv_row["start_ns"],
            "lane": lane["label"],
            "rank": lane["rank"],
            "kind": iv_row["kind"],
            "comm_type": iv_row["comm_type"],
        }
        if lane["group"] in WORK_GROUPS and self.items is not None and iv_row["item"] >= 0:
            item = self.items.filter(pl.col("item") == iv_row["item"])
            if item.height:
                it = item.row(0, named=True)
                out["stream"] = it["stream"]
                out["device"] = it["device"]
                out["rule"] = it["rule"]
                out["annotation"] = None
                if self.frames is not None:
                    members = annotation_members(item, self.frames)
                    if members.height:  # innermost = the latest-starting enclosing one
                        out["annotation"] = members.sort("ann_start_ns")["ann_name"][-1]
        return out


def _depths(starts: list[int], ends: list[int]) -> list[int]:
    """Nesting depth of intervals sorted by (start asc, end desc)."""
    stack: list[int] = []
    out: list[int] = []
    for s, e in zip(starts, ends, strict=True):
        while stack and stack[-1] <= s:
            stack.pop()
        out.append(len(stack))
        stack.append(e)
    return out


def annotation_intervals(frames: TraceFrames) -> pl.DataFrame:
    """CPU annotations with their nesting depth per (rank, thread).

    Returns [rank, depth, start_ns, end_ns, name, item] (item = annotation row);
    ``ProfilerStep#N`` (the analysis window) is left out.
    """
    ann = (
        frames.annotations.with_row_index("item")
        .filter(~pl.col("on_gpu").fill_null(False))
        .filter(~pl.col("name").str.contains(WINDOW_ANNOTATION))
        .select(
            "rank", "tid", pl.col("item").cast(pl.Int64), "name",
            pl.col("ts_ns").alias("start_ns"),
            (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
        )
        .sort(["rank", "tid", "start_ns", "end_ns"], descending=[False, False, False, True])
    )
    depth: list[int] = []
    for _, g in ann.group_by(["rank", "tid"], maintain_order=True):
        depth.extend(_depths(g["start_ns"].to_list(), g["end_ns"].to_list()))
    return ann.with_columns(pl.Series("depth", depth, dtype=pl.Int64)).select(
        "rank", "depth", "start_ns", "end_ns", "name", "item"
    )


def build_timeline(
    frames: TraceFrames, *, rules: RuleSet | None = None, items: pl.DataFrame | None = None
) -> Timeline:
    """Lanes and intervals of a run (module docstring), indexed for :meth:`Timeline.view`.

    ``items``: ready work items (``work.work_items``) to reuse; computed when None.
    Times are the raw run times (not clipped to the analysis window).
    """
    if items is None:
        items = work_items(frames, rules)
    key = ["rank", "device", "stream"]
    # Lane per stream (thread on CPU): comm when comm fills at least half its busy time.
    busy = iv.total(items, key, "_all")
    comm_busy = iv.total(items.filter(pl.col("kind") == "comm"), key, "_comm")
    roles = (
        items.select(key).unique()
        .join(busy, on=key, how="left").join(comm_busy, on=key, how="left")
        .with_columns(pl.col("_all").fill_null(0), pl.col("_comm").fill_null(0))
        .with_columns(
            pl.when(pl.col("device") < 0).then(pl.lit("thread"))
            .when((pl.col("_comm") * 2 >= pl.col("_all")) & (pl.col("_comm") > 0))
            .then(pl.lit("comm")).otherwise(pl.lit("compute")).alias("group")
        )
    )
    on_host = pl.col("device") < 0
    comm_tids = frames.ranks.select(
        pl.col("rank").cast(pl.Int32),
        pl.col("comm_tid").cast(pl.Int64, strict=False).alias("stream"),
        pl.lit(True).alias("_ctid"),
    ).filter(pl.col("stream").is_not_null())
    roles = roles.join(comm_tids, on=["rank", "stream"], how="left")
    multi_dev = items.group_by("rank").agg(pl.col("device").n_unique().alias("_nd"))
    stream_lanes = roles.join(multi_dev, on="rank").select(
        "rank", "device", "group", pl.col("stream").alias("key"),
        pl.concat_str(
            pl.lit("r"), pl.col("rank").cast(pl.Utf8),
            pl.when(pl.col("_nd") > 1).then(pl.lit(" gpu") + pl.col("device").cast(pl.Utf8))
            .otherwise(pl.lit("")),
            pl.when(on_host).then(pl.lit(" thread ")).otherwise(pl.lit(" stream ")),
            pl.col("stream").cast(pl.Utf8),
            pl.when(on_host & pl.col("_ctid").fill_null(False)).then(pl.lit(" (comm thread)"))
            .when(on_host).then(pl.lit(""))
            .otherwise(pl.lit(" (") + pl.col("group") + pl.lit(")")),
        ).alias("label"),
    )
    ann = annotation_intervals(frames).with_columns(
        pl.col("depth").clip(upper_bound=ANNOTATION_DEPTHS - 1)
    )
    ann_lanes = ann.select("rank", "depth").unique().select(
        "rank", pl.lit(-1, dtype=pl.Int32).alias("device"), pl.lit("annotation").alias("group"),
        pl.col("depth").alias("key"),
        pl.format("r{} annotations {}", pl.col("rank"), pl.col("depth")).alias("label"),
    )
    comm = items.filter(pl.col("kind") == "comm")
    other = items.filter(pl.col("kind") != "comm")
    exposed = iv.subtract(comm, other, ["rank", "device"])
    exp_lanes = exposed.select("rank", "device").unique().with_columns(
        pl.lit("exposed").alias("group"), pl.lit(0, dtype=pl.Int64).alias("key"),
        pl.format("r{} exposed comm", pl.col("rank")).alias("label"),
    )
    lanes = pl.concat([
        df.select(
            pl.col("rank").cast(pl.Int32), pl.col("device").cast(pl.Int32), "group",
            pl.col("key").cast(pl.Int64), "label",
        )
        for df in (stream_lanes, ann_lanes, exp_lanes)
    ])
    lanes = (
        lanes.with_columns(pl.col("group").replace_strict(_GROUP_ORDER).alias("_g"))
        .sort(["rank", "_g", "device", "key"])
        .drop("_g")
        .with_row_index("lane")
        .with_columns(pl.col("lane").cast(pl.Int32))
    )
    work = items.join(
        lanes.filter(pl.col("group").is_in(WORK_GROUPS)).select(
            "lane", "rank", "device", pl.col("key").alias("stream")
        ),
        on=key,
    ).select("lane", "start_ns", "end_ns", "name", "kind", "comm_type", "item")
    anns = ann.join(
        lanes.filter(pl.col("group") == "annotation").select(
            "lane", "rank", pl.col("key").alias("depth")
        ),
        on=["rank", "depth"],
    ).select(
        "lane", "start_ns", "end_ns", "name", pl.lit("annotation").alias("kind"),
        pl.lit(None, dtype=pl.Utf8).alias("comm_type"), "item",
    )
    exp = exposed.join(
        lanes.filter(pl.col("group") == "exposed").select("lane", "rank", "device"),
        on=["rank", "device"],
    ).select(
        "lane", "start_ns", "end_ns", pl.lit("exposed comm").alias("name"),
        pl.lit("exposed").alias("kind"), pl.lit(None, dtype=pl.Utf8).alias("comm_type"),
        pl.lit(-1, dtype=pl.Int64).alias("item"),
    )
    intervals = pl.concat(
        [df.select([pl.col(c).cast(t) for c, t in INTERVALS_SCHEMA.items()])
         for df in (work, anns, exp)]
    )
    return Timeline.from_intervals(lanes, intervals, items=items, frames=frames)


# --------------------------------------------------------------------------- cache

#: Bump when the lanes, intervals or index layout change: old entries are then ignored.
TIMELINE_CACHE_VERSION = 1


def timeline_cache_key(
    files: list[Path], rules: RuleSet | None, variant: str | None = None
) -> str:
    """Key of a run's timeline: the content hashes of its trace files (in run order,
    memoised by ``cache.content_hash``), the classification rules and the versions of
    the frame and timeline layouts. ``variant`` names a timeline of other frames of
    the same files (e.g. :func:`clock_variant` for clock-corrected times); None is the
    raw timeline (whose key does not change with this argument)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"timeline v{TIMELINE_CACHE_VERSION} frames v{CACHE_SCHEMA_VERSION}\n".encode())
    for f in files:
        h.update(content_hash(Path(f)).encode() + b"\n")
    h.update(repr(rules).encode())
    if variant is not None:
        h.update(b"\nvariant " + variant.encode())
    return h.hexdigest()


def clock_variant(model: Any) -> str:
    """Cache variant of a timeline on times corrected by ``model`` (a
    ``skew.ClockModel``): the model's reference, offsets and drifts, so a changed
    estimate never reuses a stale entry."""
    off = ",".join(f"{r}:{model.offset_ns[r]:.3f}" for r in sorted(model.offset_ns))
    dr = ",".join(f"{r}:{model.drift_ppm.get(r, 0.0):.6f}" for r in sorted(model.offset_ns))
    return f"corrected ref={model.reference} off={off} drift={dr}"


def _timeline_entry(key: str) -> Path:
    return cache_dir() / f"timeline-v{TIMELINE_CACHE_VERSION}" / key


def cached_timeline(
    files: list[Path], frames: TraceFrames, *, rules: RuleSet | None = None,
    cache: bool = True, variant: str | None = None,
) -> tuple[Timeline, bool]:
    """:func:`build_timeline` through a cache under ``$OVERLAPSCOPE_CACHE_DIR``
    (``timeline-vN/<key>``, key from :func:`timeline_cache_key`; ``variant`` keeps
    the entry of e.g. clock-corrected ``frames`` apart from the raw one).

    Returns (timeline, came from the cache). Building it costs the run's work items
    plus the index (seconds on a large run); loading costs reading a few parquet
    files. Entries are written to a temporary folder and renamed into place; an
    unreadable entry or a disk that refuses is ignored (the timeline is then built).
    """
    if not cache:
        return build_timeline(frames, rules=rules), False
    try:
        entry = _timeline_entry(timeline_cache_key(files, rules, variant))
    except OSError:
        return build_timeline(frames, rules=rules), False
    if (entry / "meta.json").exists():
        try:
            return Timeline.load(entry, frames), True
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
            pass
    tl = build_timeline(frames, rules=rules)
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        tl.save(tmp)
        meta = {"files": [str(f) for f in files], "intervals": tl.intervals.height,
                "variant": variant}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if entry.exists():  # an unreadable entry: replace it
            shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tl, False


def load_cached_timeline(
    files: list[Path], rules: RuleSet | None = None, variant: str | None = None
) -> Timeline | None:
    """The cached timeline of ``files`` (see :func:`cached_timeline`) without the run's
    frames, or None when there is none. Its ``frames`` (for the annotation shown by
    :meth:`Timeline.describe`) can be set later."""
    try:
        entry = _timeline_entry(timeline_cache_key(files, rules, variant))
        if not (entry / "meta.json").exists():
            return None
        return Timeline.load(entry)
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
        return None


#: Cache variant holding what the clock (skew) estimate of a run's raw frames decided.
CLOCK_INFO = "clock-info"


def store_clock_info(files: list[Path], rules: RuleSet | None, info: dict[str, Any]) -> None:
    """Remember what the skew estimate of the run's frames found (``info``: JSON-able;
    ranks, anchors and the clock model), so a reopened run finds its corrected timeline
    without loading frames or estimating again. A disk that refuses is ignored."""
    try:
        entry = _timeline_entry(timeline_cache_key(files, rules, CLOCK_INFO))
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".tmp-{entry.name}-clock.json"
        tmp.write_text(json.dumps(info, sort_keys=True))
        tmp.replace(entry.with_suffix(".clock.json"))
    except OSError:
        pass


def load_clock_info(files: list[Path], rules: RuleSet | None) -> dict[str, Any] | None:
    """What :func:`store_clock_info` stored for these files and rules, or None."""
    try:
        entry = _timeline_entry(timeline_cache_key(files, rules, CLOCK_INFO))
        return json.loads(entry.with_suffix(".clock.json").read_text())
    except (OSError, ValueError):
        return None


def warp_timeline(frames: TraceFrames) -> Timeline:
    """Per-warp swimlanes of warp-role events: one lane per (rank, channel, warp),
    intervals coloured by ``state`` (busy or a wait reason). Empty when the run
    has no ``warp_role`` events."""
    ev = frames.warp_events.with_row_index("item").with_columns(pl.col("warp").cast(pl.Int64))
    lanes = (
        ev.group_by(["rank", "channel", "warp"])
        .agg(pl.col("role").mode().first().alias("role"))
        .sort(["rank", "channel", "warp"])
        .with_row_index("lane")
        .select(
            pl.col("lane").cast(pl.Int32), pl.col("rank").cast(pl.Int32),
            pl.col("channel").cast(pl.Int32).alias("device"), pl.lit("warp").alias("group"),
            pl.col("warp").cast(pl.Int64).alias("key"),
            pl.format("ch{} w{} {}", pl.col("channel"), pl.col("warp"), pl.col("role"))
            .alias("label"),
        )
    )
    intervals = ev.join(
        lanes.select("lane", "rank", pl.col("device").alias("channel"),
                     pl.col("key").alias("warp")),
        on=["rank", "channel", "warp"],
    ).select(
        "lane", pl.col("ts_ns").alias("start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
        pl.col("role").alias("name"), pl.col("state").alias("kind"),
        pl.col("link").alias("comm_type"), pl.col("item").cast(pl.Int64),
    )
    return Timeline.from_intervals(lanes, intervals, frames=frames)
