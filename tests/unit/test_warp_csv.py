"""Reading the H200 per-warp CSVs, and aligning warp events on a Kineto kernel."""

from __future__ import annotations

import csv
import decimal
import gzip
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.frames import WARP_EVENTS_SCHEMA
from overlapscope.analyzers.warps import align_warp_events_to_kernel
from overlapscope.analyzers.warps.csv import read_warp_csv

H200 = Path(__file__).resolve().parents[2] / "sample_traces" / "h200"
HEADER = "role,warp,channel,smid,kind,chunk,node,gpu,t0_ns,t1_ns,bytes\n"


def _csv_rows(path: Path) -> list[dict[str, int]]:
    with gzip.open(path, "rt", newline="") as fh:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _write(tmp_path: Path, body: str, name: str = "w.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + body)
    return p


def test_schema_is_exactly_warp_events_schema():
    df = read_warp_csv(H200 / "warp_events_M4_NS4_NR4.csv.gz")
    assert dict(df.schema) == WARP_EVENTS_SCHEMA
    peers = read_warp_csv(H200 / "warp_events_M4_NS4_NR4.csv.gz", keep_peers=True)
    assert list(peers.columns) == [*WARP_EVENTS_SCHEMA, "node", "gpu"]


@pytest.mark.parametrize("name", ["warp_events_M4_NS4_NR4", "varsm_warp_events"])
def test_times_are_exact_and_bytes_match_csv(name):
    path = H200 / f"{name}.csv.gz"
    rows = _csv_rows(path)
    origin = min(r["t0_ns"] for r in rows)
    expected = Counter((r["channel"], r["warp"], r["t0_ns"] - origin, r["t1_ns"] - r["t0_ns"])
                       for r in rows)
    df = read_warp_csv(path)
    got = Counter(df.select("channel", "warp", "ts_ns", "dur_ns").iter_rows())
    assert got == expected  # every interval, to the nanosecond (epoch-scale int64 inputs)
    ib = sum(r["bytes"] for r in rows if r["role"] == 0 and r["node"] != 0)
    nvl = sum(r["bytes"] for r in rows if r["role"] == 2)
    local = sum(r["bytes"] for r in rows if r["role"] == 3 or (r["role"] == 0 and r["node"] == 0))
    by_link = dict(df.group_by("link").agg(pl.col("bytes").sum()).iter_rows())
    assert by_link["ib"] == ib and by_link["nvl"] == nvl and by_link["local"] == local
    assert df["bytes"].sum() == sum(r["bytes"] for r in rows)


def test_role_names_states_and_links_by_hand(tmp_path):
    body = (
        "0,0,0,2,0,0,1,-1,1000,1100,700\n"   # sender work to node 1: IB
        "0,0,0,2,0,0,0,-1,1100,1150,0\n"     # sender work to own node 0: local, 0 bytes
        "0,0,0,2,1,1,1,-1,1150,1400,0\n"     # sender wait: ring space
        "1,1,0,2,1,0,-1,-1,1000,1300,0\n"    # coordinator wait
        "1,1,0,2,0,0,1,-1,1300,1310,0\n"     # coordinator work: no link
        "2,2,0,2,1,0,3,-1,1000,1500,0\n"     # forwarder wait, gpu -1: RDMA data
        "2,2,0,2,1,0,3,5,1500,1600,0\n"      # forwarder wait, gpu 5: NVL space
        "2,2,0,2,0,0,3,5,1600,1700,7232\n"   # forwarder work: NVLink
        "3,3,0,2,1,0,3,5,1000,1700,0\n"      # receiver wait: data
        "3,3,0,2,0,0,3,5,1700,1800,7232\n"   # receiver work: local
    )
    df = read_warp_csv(_write(tmp_path, body), rank=3, keep_peers=True).sort("warp", "ts_ns")
    assert df["rank"].unique().to_list() == [3]
    assert df["role"].to_list() == ["rdma_sender"] * 3 + ["sender_coordinator"] * 2 + [
        "forwarder"] * 3 + ["nvl_receiver"] * 2
    assert df["state"].to_list() == [
        "busy", "busy", "wait_remote_head", "wait_tail", "busy",
        "wait_tail", "wait_remote_head", "busy", "wait_tail", "busy"]
    assert df["link"].to_list() == ["ib", "local", None, None, None, None, None, "nvl", None,
                                    "local"]
    assert df["ts_ns"].to_list() == [0, 100, 150, 0, 300, 0, 500, 600, 0, 700]
    assert df["dur_ns"].to_list() == [100, 50, 250, 300, 10, 500, 100, 100, 700, 100]
    assert df["gpu"].to_list()[5:7] == [None, 5]


def test_plain_csv_is_read_too(tmp_path):
    df = read_warp_csv(_write(tmp_path, "3,0,1,7,0,2,0,0,5,9,64\n"))
    assert df.row(0, named=True) == dict(rank=0, channel=1, warp=0, sm=7, role="nvl_receiver",
                                         state="busy", chunk=2, bytes=64, link="local",
                                         ts_ns=0, dur_ns=4)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("role,warp,channel\n0,0,0\n", "missing column(s) smid"),
        (HEADER + "7,0,0,0,0,0,0,-1,1,2,0\n", "unknown role id(s) [7]"),
        (HEADER + "0,0,0,0,2,0,0,-1,1,2,0\n", "unknown kind(s) [2]"),
        (HEADER + "0,0,0,0,0,0,0,-1,5,2,0\n", "end before they start"),
        (HEADER + "0,x,0,0,0,0,0,-1,5,2,0\n", "integers"),
    ],
)
def test_bad_files_raise_trace_error_naming_the_file(tmp_path, text, needle):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        read_warp_csv(p)
    assert err.value.path == str(p) and needle in err.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="file not found"):
        read_warp_csv(tmp_path / "nope.csv.gz")


def test_align_centres_span_in_kernel_by_hand():
    ev = pl.DataFrame({"ts_ns": [40, 60], "dur_ns": [30, 80]},
                      schema={"ts_ns": pl.Int64, "dur_ns": pl.Int64})
    # span [40, 140) = 100 ns inside a 110 ns kernel at 1000: slack 10 -> 5 each side.
    out = align_warp_events_to_kernel(ev, 1000, 110)
    assert out["ts_ns"].to_list() == [1005, 1025]
    assert out["dur_ns"].to_list() == [30, 80]
    with pytest.raises(ValueError, match="do not belong"):
        align_warp_events_to_kernel(ev, 1000, 50, max_excess_ns=10)


def test_align_varsm_events_on_the_kineto_kernel():
    with gzip.open(H200 / "varsm_rank0.json.gz", "rt") as fh:
        trace = json.load(fh, parse_float=decimal.Decimal)  # epoch-scale us: keep every ns
    kernel = next(e for e in trace["traceEvents"]
                  if e.get("cat") == "kernel" and e["name"].startswith("dispatch"))
    k_ts, k_dur = int(kernel["ts"] * 1000), int(kernel["dur"] * 1000)
    assert k_dur == 5_432_062
    ev = read_warp_csv(H200 / "varsm_warp_events.csv.gz")
    out = align_warp_events_to_kernel(ev, k_ts, k_dur)
    first, last = out["ts_ns"].min(), (out["ts_ns"] + out["dur_ns"]).max()
    assert last - first == 5_430_240  # README: span 5430.2 us, not rescaled
    head, tail = first - k_ts, (k_ts + k_dur) - last
    assert head >= 0 and tail >= 0 and abs(head - tail) <= 1
    assert head + tail == k_dur - 5_430_240
    # One constant shift: every event keeps its offset from the first one.
    assert (out["ts_ns"] - first).to_list() == (ev["ts_ns"] - ev["ts_ns"].min()).to_list()
