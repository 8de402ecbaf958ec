"""Make large Kineto traces for the load benchmarks by replicating a real one.

    python benchmarks/make_large_trace.py --target-mb 100 500

For each target size this writes ``benchmarks/data/large-<N>mb/rank-0.json`` (an
uncompressed single-rank run directory, so both overlapscope and HTA's
``TraceAnalysis(trace_dir=...)`` can open it) plus ``large-<N>mb.info.json``
beside the folder. benchmarks/data/ is git-ignored.

Each copy of the source trace's events is shifted in time by one source span
(plus a 1 ms gap) and gets fresh correlation / External ids / flow ids and
ProfilerStep numbers, so the result looks like one long profiling session.
Metadata rows (``ph: M``) and the profiler's own span rows appear once.
Timestamps are shifted as exact decimals, never through float64.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("/work/shared/fixtures/h200/gpu_overlap_rank0.json.gz")
DEFAULT_OUT = ROOT / "benchmarks" / "data"
GAP_US = Decimal(1000)
_STEP = re.compile(r"^ProfilerStep#(\d+)$")
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def read_source(path: Path) -> dict[str, Any]:
    """The source trace with every float kept as an exact Decimal."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return msgspec.json.Decoder(float_hook=Decimal).decode(raw)


def _is_once(ev: dict[str, Any]) -> bool:
    """Rows that describe the whole session, not one step: keep a single copy."""
    return ev.get("ph") == "M" or ev.get("cat") in ("Trace", "overhead") or ev.get("ph") == "i"


def _id_stride(events: list[dict[str, Any]]) -> int:
    """A power of ten above every correlation / External id / flow id in the source."""
    top = 0
    for ev in events:
        args = ev.get("args") or {}
        for v in (args.get("correlation"), args.get("External id"), ev.get("id")):
            if isinstance(v, int):
                top = max(top, v)
    return 10 ** len(str(top + 1))


def _period_us(events: list[dict[str, Any]]) -> Decimal:
    """Span of the timed events plus a gap, in microseconds."""
    timed = [ev for ev in events if isinstance(ev.get("ts"), (int, Decimal))]
    start = min(Decimal(ev["ts"]) for ev in timed)
    end = max(Decimal(ev["ts"]) + Decimal(ev.get("dur") or 0) for ev in timed)
    return (end - start + GAP_US).to_integral_value()


def _steps(events: list[dict[str, Any]]) -> int:
    nums = [int(m.group(1)) for ev in events if (m := _STEP.match(str(ev.get("name", ""))))]
    return max(nums) - min(nums) + 1 if nums else 1


def shifted_copy(events: list[dict[str, Any]], k: int, period: Decimal, ids: int,
                 steps: int) -> list[dict[str, Any]]:
    """Copy ``k`` of the per-step events: times + k*period, ids + k*ids, steps + k*steps."""
    if k == 0:
        return events
    shift, id_off = period * k, ids * k
    out = []
    for ev in events:
        e = dict(ev)
        if "ts" in e:
            e["ts"] = Decimal(e["ts"]) + shift
        if isinstance(e.get("id"), int):
            e["id"] = e["id"] + id_off
        args = e.get("args")
        if args and ("correlation" in args or "External id" in args):
            args = dict(args)
            for key in ("correlation", "External id"):
                if isinstance(args.get(key), int):
                    args[key] += id_off
            e["args"] = args
        m = _STEP.match(str(e.get("name", "")))
        if m:
            e["name"] = f"ProfilerStep#{int(m.group(1)) + k * steps}"
        out.append(e)
    return out


def write_large(source: Path, target_bytes: int, out_file: Path) -> dict[str, Any]:
    """Write one replicated trace of at least ``target_bytes``; return facts about it."""
    doc = read_source(source)
    events = doc.pop("traceEvents")
    once = [ev for ev in events if _is_once(ev)]
    per_step = [ev for ev in events if not _is_once(ev)]
    period, ids, steps = _period_us(per_step), _id_stride(per_step), _steps(per_step)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    copies = n_events = 0
    with tmp.open("wb") as fh:
        head = b"{" + b"".join(
            _ENCODER.encode(k) + b": " + _ENCODER.encode(v) + b",\n" for k, v in doc.items()
        ) + b'"traceEvents": [\n'
        fh.write(head)
        written = len(head)
        body = b",\n".join(_ENCODER.encode(ev) for ev in once)
        fh.write(body)
        written += len(body)
        n_events += len(once)
        while written < target_bytes:
            chunk = b",\n" + b",\n".join(
                _ENCODER.encode(ev) for ev in shifted_copy(per_step, copies, period, ids, steps)
            )
            fh.write(chunk)
            written += len(chunk)
            copies += 1
            n_events += len(per_step)
        fh.write(b"\n]}\n")
    os.replace(tmp, out_file)
    return {
        "file": str(out_file), "bytes": out_file.stat().st_size, "events": n_events,
        "copies": copies, "period_us": str(period), "source": str(source),
        "source_md5": hashlib.md5(source.read_bytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-mb", type=int, nargs="+", default=[100, 500],
                    help="sizes to make, in MB of uncompressed JSON (default 100 500)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                    help="Kineto trace to replicate (.json or .json.gz)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = ap.parse_args(argv)
    for mb in args.target_mb:
        run_dir = args.out / f"large-{mb}mb"
        info_path = args.out / f"large-{mb}mb.info.json"
        if (run_dir / "rank-0.json").exists() and info_path.exists() and not args.force:
            print(f"{run_dir}: exists (use --force to rewrite)")
            continue
        t0 = time.perf_counter()
        info = write_large(args.source, mb * 1_000_000, run_dir / "rank-0.json")
        info["seconds_to_write"] = round(time.perf_counter() - t0, 1)
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        print(f"{info['file']}: {info['bytes'] / 1e6:.1f} MB, {info['events']:,} events, "
              f"{info['copies']} copies, {info['seconds_to_write']} s")


if __name__ == "__main__":
    main()
