"""``run.json``: the manifest of a run directory (next to its ``rank-<r>.json.gz`` files).

Written by rank 0 once every rank has exported its trace. Keys (schema version 1):

- ``schema_version``, ``created_utc`` (ISO 8601), ``world_size``, ``backend``, ``device_type``;
- ``topology`` (``Topology.to_dict()``), ``layout`` (PP x EP rule, or null);
- ``workload``: ``{"name": ..., "config": {...}}``; ``schedule``: ``{"name", "pp", "ep",
  "micro_batches"}`` or null;
- ``versions``: torch, python, overlapscope, platform;
- ``trace_enabled`` and ``files``: per-rank trace file names by rank (null when tracing is off);
- ``ranks``: one object per rank: ``rank, host, pid, file, trace_bytes, steps, wall_s``
  (workload wall time, s), ``session_wall_s`` (profiling session, s), ``export_s``
  (trace export + augmentation, s), ``facts`` (what the workload returned);
- ``wall_s``: ``{"max_rank": slowest rank's workload seconds}``; the local launcher adds
  ``launcher`` (``{"mode", "wall_s"}``, total seconds including process start).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "run.json"
SCHEMA_VERSION = 1


def rank_file_name(rank: int) -> str:
    """File name of rank ``rank``'s trace inside a run directory."""
    return f"rank-{rank}.json.gz"


def versions() -> dict[str, str]:
    """Versions of the software that produced a run."""
    try:
        own = metadata.version("overlapscope")
    except metadata.PackageNotFoundError:
        own = "unknown"
    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:  # pragma: no cover - the profiler always has torch
        torch_version = "missing"
    return {
        "overlapscope": own,
        "torch": torch_version,
        "python": platform.python_version(),
        "platform": sys.platform,
    }


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def build_manifest(run: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The run.json object from run-level facts and per-rank facts (any order)."""
    ranks = sorted(ranks, key=lambda r: r["rank"])
    trace_enabled = bool(run.get("trace_enabled", True))
    walls = [r["wall_s"] for r in ranks if r.get("wall_s") is not None]
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": utc_now(),
        **run,
        "versions": versions(),
        "trace_enabled": trace_enabled,
        "files": [r.get("file") for r in ranks],
        "ranks": ranks,
        "wall_s": {"max_rank": max(walls) if walls else None},
    }


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``run.json`` into ``out_dir`` atomically; returns its path."""
    return write_json_atomic(Path(out_dir) / MANIFEST_NAME, manifest)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``run.json`` of a run directory."""
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())


def gather_to_rank0(facts: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per-rank facts collected on rank 0 (None on other ranks).

    Uses ``torch.distributed.gather_object`` when a process group is up, else returns
    ``[facts]`` (a single-process run).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [facts]
    world = dist.get_world_size()
    rank = dist.get_rank()
    if world == 1:
        return [facts]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(facts, out, dst=0)
    return out
