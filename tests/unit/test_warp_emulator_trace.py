"""The emulator's events follow the one warp-role schema and load back through load_run."""

from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl

from overlapscope.analyzers.load import load_run
from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.dispatch_kernel import emulate_dispatch

CFG = DispatchConfig(nodes=2, gpus_per_node=2, experts=8, top_k=2, max_nodes=2, tokens=40,
                     token_bytes=50, channels=2, chunk_tokens=4, senders=2, forwarders=2,
                     receivers=1, src_rank=1)
TOPK = np.random.default_rng(0).integers(0, 8, size=(40, 2))


def test_trace_file_shape(tmp_path):
    res = emulate_dispatch(CFG, topk_ids=TOPK)
    path = res.write_trace(tmp_path / "emu.json.gz")
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert doc["overlapscope"]["schema_version"] == 1
    assert doc["overlapscope"]["world_size"] == 4 and doc["overlapscope"]["rank"] == 1
    ev = doc["traceEvents"]
    warp = [e for e in ev if e.get("cat") == "warp_role"]
    assert len(warp) == len(res.log.rows)
    e = warp[0]
    assert e["ph"] == "X" and e["pid"] == "rank 1 warps"
    assert e["tid"] == f"c{e['args']['channel']} w{e['args']['warp']}"
    assert e["name"] == f"{e['args']['role']}:{e['args']['state']}"
    assert set(e["args"]) >= {"role", "state", "channel", "warp", "sm", "chunk", "bytes",
                              "link", "rank"}
    counters = [e for e in ev if e["ph"] == "C"]
    assert counters and all(e["name"].startswith("ring ") for e in counters)
    assert {e["name"].split()[1] for e in counters} == {"rdma", "nvl"}
    names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    # tracks: 2 channels x (2 senders + 1 coordinator + 2 forwarders + 1 receiver)
    assert len(names) == 12
    traffic = {e["name"]: e["args"]["dst_bytes"] for e in ev if e.get("cat") == "comm_traffic"}
    assert sum(traffic["dispatch:ib"]) == res.expected_ib_bytes
    assert sum(traffic["dispatch:nvl"]) == res.expected_nvl_bytes


def test_round_trip_through_loader(tmp_path):
    res = emulate_dispatch(CFG, topk_ids=TOPK)
    path = res.write_trace(tmp_path / "emu.json")
    frames = load_run(path, cache=False)
    wf = frames.warp_events
    assert wf.height == len(res.log.rows)
    by_link = wf.filter(pl.col("state") == S.BUSY).group_by("link").agg(pl.col("bytes").sum())
    got = dict(zip(by_link["link"].to_list(), by_link["bytes"].to_list(), strict=True))
    assert got["ib"] == res.expected_ib_bytes and got["nvl"] == res.expected_nvl_bytes
    # microsecond floats come back as the same integer nanoseconds
    assert wf["dur_ns"].sum() == sum(r[8] - r[7] for r in res.log.rows)
    assert frames.counters.height == len(res.log.ring_samples)
