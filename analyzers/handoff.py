"""Decoded rank files handed from their decode task to their run's analysis task
through disk, so the frames never pass through the parent process.

On the local pool, a FileFrames returned by a worker is pickled to the parent,
unpickled there and pickled again into the run's analysis task: the parent's CPU
time and two extra copies per file compete with the workers for the same cores.
Instead, :func:`decode_to_ref` leaves the frames on disk and returns a
:class:`FramesRef` (a path or two), and the analysis task reads them back with
:func:`resolve`:

* parquet cache on: the frames are already in the cache (``load_file`` stores
  them, and a hit is not even read here), so the reference is the cache entry;
* cache off (or the cache refused to store): uncompressed Arrow IPC files in
  ``dest``, a directory the caller owns and removes (one per run, under one
  temporary directory per ``map_runs`` call).

Both use the cache's serializer (:func:`~overlapscope.analyzers.cache.write_frames`),
which reads back frames equal to the originals. Whenever the disk refuses, the
frames travel the old way (returned as they are), and a reference that can no
longer be read is decoded again: the analysis sees the same frames either way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from overlapscope.analyzers.cache import FramesFormat, cached_entry, read_frames, write_frames
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.kineto.decode import FileFrames
from overlapscope.analyzers.load import load_file


@dataclass(frozen=True)
class FramesRef:
    """Where one trace file's FileFrames lie: ``directory`` as written by
    :func:`~overlapscope.analyzers.cache.write_frames` in ``fmt``; ``path`` is the
    trace file (the FileFrames' ``path``, and what is decoded again if need be)."""

    directory: str
    path: str
    fmt: FramesFormat


def decode_to_ref(args: tuple[str, bool, str]) -> FramesRef | FileFrames | TraceError:
    """Decode the trace file ``path`` and leave its frames on disk: the cache entry
    when ``cache`` is set, else the new directory ``dest``. A bad file comes back as
    its TraceError (it becomes its run's error); frames no disk would take come
    back themselves."""
    path, cache, dest = args
    file = Path(path)
    if cache and (entry := cached_entry(file)) is not None:
        return FramesRef(str(entry), path, "parquet")  # a hit: no need to read it here
    try:
        ff = load_file(file, cache=cache)
    except TraceError as exc:
        return exc
    if cache and (entry := cached_entry(file)) is not None:
        return FramesRef(str(entry), path, "parquet")
    return spill(ff, Path(dest))


def spill(ff: FileFrames, dest: Path) -> FramesRef | FileFrames:
    """``ff`` written to the new directory ``dest`` (its parent must exist, so a task
    outliving its ``map_runs`` does not recreate a removed directory); ``ff`` itself
    when that fails (disk full, directory gone)."""
    try:
        dest.mkdir()
        write_frames(dest, ff, "ipc")
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        return ff
    return FramesRef(str(dest), ff.path, "ipc")


def resolve(item: FramesRef | FileFrames | TraceError) -> FileFrames | TraceError:
    """The FileFrames (or error) a decode task handed over. A reference that cannot be
    read (a cache entry removed or damaged meanwhile) is decoded again: same frames."""
    if not isinstance(item, FramesRef):
        return item
    try:
        return read_frames(Path(item.directory), item.path, item.fmt)
    except (OSError, ValueError, pl.exceptions.PolarsError):
        pass
    try:
        return load_file(Path(item.path), cache=False)
    except TraceError as exc:
        return exc
