"""Cache of whole Reports: a run analyzed before reopens without decoding or analyzing.

An entry holds every table of a :class:`~overlapscope.analyzers.report.Report` as an
Arrow IPC file plus its source, facts, notes, and the statuses of the tables that do
not apply or failed as JSON. It lives under ``$OVERLAPSCOPE_CACHE_DIR/reports/`` and is
keyed by everything the Report depends on:

- the content of every input file (blake2b, through the stat index of cache.py) and
  the run's ``run.json``;
- the classification rules: the built-in rule file, ``options.rules_file`` or
  ``$OVERLAPSCOPE_RULES`` (their bytes);
- the :class:`~overlapscope.analyzers.inputs.ReportOptions` (every field);
- the path as given (it is the Report's ``source``);
- the overlapscope version and a fingerprint of the analyzer code (name, size and
  mtime of each of its files), so an edited checkout never reads stale Reports.

Entries are written to a temporary directory and renamed into place. A Report whose
facts or notes would not survive JSON unchanged, or that has failures, is not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Bump when the entry layout or the Report's fields change.
REPORT_CACHE_VERSION = 1
_ANALYZERS = Path(__file__).resolve().parent
#: classify.DEFAULT_RULES, named here so that computing a key does not import classify
#: (and numpy): a reopened Report needs no analysis module.
_DEFAULT_RULES = _ANALYZERS / "classify_rules.toml"


def _root() -> Path:
    from overlapscope.analyzers.cache import cache_dir

    return cache_dir() / "reports" / f"v{REPORT_CACHE_VERSION}"


@lru_cache(maxsize=1)
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("overlapscope")
    except PackageNotFoundError:
        return "unknown"


def code_fingerprint() -> str:
    """blake2b of (relative path, size, mtime_ns) of every analyzer source file."""
    h = hashlib.blake2b(digest_size=16)
    for root, dirs, files in os.walk(_ANALYZERS):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if name.endswith((".py", ".toml")):
                p = os.path.join(root, name)
                st = os.stat(p)
                rel = os.path.relpath(p, _ANALYZERS)
                h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()


def report_key(path: str | Path, options: Any) -> str | None:
    """The cache key of ``path`` analyzed with ``options``; None when it cannot be
    computed (missing input, unreadable rules): the caller then analyzes as usual."""
    from overlapscope.analyzers.cache import content_hash
    from overlapscope.analyzers.discover import MANIFEST, run_files
    from overlapscope.analyzers.errors import TraceError

    try:
        p = Path(path)
        files = run_files(p)
        parts = [
            f"report-cache v{REPORT_CACHE_VERSION}",
            _version(),
            code_fingerprint(),
            str(p),
            repr(options),
            "files:" + ",".join(f"{f.name}={content_hash(f)}" for f in files),
        ]
        manifest = p / MANIFEST
        if p.is_dir() and manifest.is_file():
            parts.append("manifest=" + _file_digest(manifest))
        parts.append("rules=" + _file_digest(_DEFAULT_RULES))
        extra = getattr(options, "rules_file", None) or os.environ.get("OVERLAPSCOPE_RULES")
        if extra:
            parts.append(f"user-rules={extra}={_file_digest(Path(extra))}")
    except (OSError, TraceError, ValueError):
        return None
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types all the way down (JSON round-trip check)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def load_report(key: str, source: str | None = None) -> Any | None:
    """The cached Report of ``key`` (its ``source`` replaced when given), or None."""
    entry = _root() / key
    try:
        meta = json.loads((entry / "report.json").read_text())
    except (OSError, ValueError):
        return None
    import polars as pl

    from overlapscope.analyzers.report import Report

    try:
        tables = {name: pl.read_ipc(entry / f"t{i}.arrow")
                  for i, name in enumerate(meta["tables"])}
        return Report(
            source=source if source is not None else meta["source"],
            tables=tables,
            not_applicable=meta["not_applicable"],
            failures=meta["failures"],
            facts=meta["facts"],
            notes=meta["notes"],
        )
    except (OSError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None


def store_report(key: str, report: Any) -> bool:
    """Write ``report`` under ``key``; False (nothing written) when it cannot be
    stored faithfully or the disk refuses."""
    if report.failures:
        return False
    meta = {
        "source": report.source,
        "tables": list(report.tables),
        "not_applicable": report.not_applicable,
        "failures": report.failures,
        "facts": report.facts,
        "notes": report.notes,
    }
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError):
        return False
    if not _same(json.loads(text), meta):
        return False
    entry = _root() / key
    if entry.exists():
        return True
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            for i, df in enumerate(report.tables.values()):
                df.write_ipc(tmp / f"t{i}.arrow", compression="uncompressed")
            (tmp / "report.json").write_text(text)
            tmp.rename(entry)
        except OSError:  # another process won the race, or the disk is full
            shutil.rmtree(tmp, ignore_errors=True)
            return entry.exists()
    except OSError:
        return False
    return True


def reopen(paths: list[str | Path], options: Any) -> list[Any] | None:
    """The stored Reports of ``paths`` (in order) when every one of them has an entry;
    None otherwise (the caller then runs the batch API, which reads the entries there
    are and analyzes the rest). Imports no analysis module: the CLI's fast path."""
    reports = []
    for path in paths:
        key = report_key(path, options)
        report = load_report(key, str(Path(path))) if key else None
        if report is None:
            return None
        reports.append(report)
    return reports
