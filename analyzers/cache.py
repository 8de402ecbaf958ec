"""Parquet cache of decoded trace files, keyed by content hash + schema version.

Decoding a large trace is the expensive step; its frames are stored once per
distinct file content under ``$OVERLAPSCOPE_CACHE_DIR`` (default
``~/.cache/overlapscope``). Entries are written to a temporary directory and
renamed into place, so a crash never leaves a half-written entry. A small stat
index (path, size, mtime) -> content hash avoids re-hashing unchanged files.

:func:`write_frames` / :func:`read_frames` are the one serializer of FileFrames: the
cache's entries, and the handoff files by which the batch engine passes a decoded
file from its decode task to its run's analysis task (analyzers/handoff.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

# The decoder is imported where frames are read or written: content_hash alone (the
# Report cache key) needs neither it nor msgspec.
if TYPE_CHECKING:
    from overlapscope.analyzers.kineto.decode import FileFrames

#: Bump when FileFrames or any frame schema changes, or when the decoder reads some
#: file differently (4: begin/end pairs become intervals): old entries are then ignored.
CACHE_SCHEMA_VERSION = 4
_HASH_CHUNK = 8 << 20
#: FileFrames' scalar fields stored beside its frames (``path`` is the reader's).
META_FIELDS = (
    "rank",
    "world_size",
    "backend",
    "num_sms",
    "device_name",
    "n_events",
    "base_time_ns",
    "overlapscope",
    "skipped_events",
    "pg_config",  # process groups: a cached load need not re-read the file
)
META_FILE = "meta.json"
FramesFormat = Literal["parquet", "ipc"]
_SUFFIX: dict[FramesFormat, str] = {"parquet": ".parquet", "ipc": ".arrow"}


def cache_dir() -> Path:
    """The cache root directory (created on demand)."""
    root = os.environ.get("OVERLAPSCOPE_CACHE_DIR") or Path.home() / ".cache" / "overlapscope"
    return Path(root)


def content_hash(path: Path) -> str:
    """blake2b-160 of the file bytes, memoised by (path, size, mtime_ns)."""
    st = path.stat()
    stat_key = hashlib.blake2b(
        f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=16
    ).hexdigest()
    index = cache_dir() / "stat-index" / stat_key
    try:
        return index.read_text()
    except OSError:
        pass
    h = hashlib.blake2b(digest_size=20)
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _atomic_write_text(index, digest)
    return digest


def _entry(digest: str) -> Path:
    return cache_dir() / f"v{CACHE_SCHEMA_VERSION}" / digest


def load_cached(path: Path) -> FileFrames | None:
    """The cached frames of ``path``, or None when absent or unreadable."""
    try:
        return read_frames(_entry(content_hash(path)), str(path))
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None


def cached_entry(path: Path) -> Path | None:
    """The directory of ``path``'s cache entry, or None when none is stored (or the
    file cannot be read). The batch engine passes this to the task that analyzes the
    file's run instead of the frames (see :func:`read_frames`)."""
    try:
        entry = _entry(content_hash(path))
    except OSError:
        return None
    return entry if (entry / META_FILE).is_file() else None


def store(path: Path, ff: FileFrames) -> None:
    """Write ``ff`` for ``path``'s content; silently skipped if the disk refuses."""
    try:
        entry = _entry(content_hash(path))
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        write_frames(tmp, ff)
        try:
            tmp.rename(entry)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return


def write_frames(directory: Path, ff: FileFrames, fmt: FramesFormat = "parquet") -> None:
    """``ff`` into the existing ``directory``: one file per frame, plus its scalar
    fields (all but ``path``) as JSON. ``fmt``: lz4 parquet for the cache, which is
    kept and read many times; uncompressed Arrow IPC for a batch handoff file, read
    once by the next task, where encoding would only cost time. Raises OSError."""
    from overlapscope.analyzers.kineto.decode import FileFrames

    suffix = _SUFFIX[fmt]
    for name in FileFrames.FRAME_NAMES:
        df: pl.DataFrame = getattr(ff, name)
        if fmt == "parquet":
            df.write_parquet(directory / f"{name}{suffix}", compression="lz4")
        else:
            df.write_ipc(directory / f"{name}{suffix}", compression="uncompressed")
    meta = {k: getattr(ff, k) for k in META_FIELDS}
    (directory / META_FILE).write_text(json.dumps(meta))


def read_frames(directory: Path, path: str, fmt: FramesFormat = "parquet") -> FileFrames:
    """The FileFrames :func:`write_frames` put in ``directory``, named ``path``.
    Raises OSError, ValueError or a PolarsError when it is missing or damaged."""
    from overlapscope.analyzers.kineto.decode import FileFrames

    meta = json.loads((directory / META_FILE).read_text())
    read = pl.read_parquet if fmt == "parquet" else pl.read_ipc
    frames = {n: read(directory / f"{n}{_SUFFIX[fmt]}") for n in FileFrames.FRAME_NAMES}
    meta["path"] = path
    return FileFrames(**meta, **frames)


def _atomic_write_text(target: Path, text: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError:
        return
