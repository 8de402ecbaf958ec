"""Parquet cache of decoded trace files, keyed by content hash + schema version.

Decoding a large trace is the expensive step; its frames are stored once per
distinct file content under ``$OVERLAPSCOPE_CACHE_DIR`` (default
``~/.cache/overlapscope``). Entries are written to a temporary directory and
renamed into place, so a crash never leaves a half-written entry. A small stat
index (path, size, mtime) -> content hash avoids re-hashing unchanged files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

# The decoder is imported where frames are read or written: content_hash alone (the
# Report cache key) needs neither it nor msgspec.
if TYPE_CHECKING:
    from overlapscope.analyzers.kineto.decode import FileFrames

#: Bump when FileFrames or any frame schema changes: old entries are then ignored.
CACHE_SCHEMA_VERSION = 3
_HASH_CHUNK = 8 << 20


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
    from overlapscope.analyzers.kineto.decode import FileFrames

    try:
        entry = _entry(content_hash(path))
        meta = json.loads((entry / "meta.json").read_text())
        frames = {n: pl.read_parquet(entry / f"{n}.parquet") for n in FileFrames.FRAME_NAMES}
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    meta["path"] = str(path)
    return FileFrames(**meta, **frames)


def store(path: Path, ff: FileFrames) -> None:
    """Write ``ff`` for ``path``'s content; silently skipped if the disk refuses."""
    from overlapscope.analyzers.kineto.decode import FileFrames

    try:
        entry = _entry(content_hash(path))
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        for name in FileFrames.FRAME_NAMES:
            getattr(ff, name).write_parquet(tmp / f"{name}.parquet", compression="lz4")
        meta = {
            k: getattr(ff, k)
            for k in (
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
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(entry)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return


def _atomic_write_text(target: Path, text: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError:
        return
