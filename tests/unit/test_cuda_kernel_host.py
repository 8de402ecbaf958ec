"""Host side of the CUDA dispatch kernel, checked without a GPU: plan arithmetic,
record conversion into the warp-event schema, and (with nvcc) the build and binding."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest

from overlapscope.analyzers.warps import analyze_warps
from overlapscope.profiler.warps.cuda_kernel import (
    EVENT_DTYPE,
    KernelConfig,
    _Params,
    build_library,
    dispatch_plan,
    load_library,
    masks_from_topk,
    records_to_frame,
    records_to_log,
    reference_rows,
)

# 2 nodes x 2 GPUs: bit d = n * 2 + g
SMALL = KernelConfig(nodes=2, gpus_per_node=2, token_bytes=16, channels=2, chunk_tokens=2,
                     senders=1, forwarders=1, receivers=1)
MASKS = np.array([0b0011, 0b0100, 0b1010, 0b0000, 0b1000], dtype=np.uint64)


def test_plan_by_hand():
    plan = dispatch_plan(MASKS, SMALL)
    # channel 0 = tokens 0-1, channel 1 = tokens 2-4 (5 * 1 // 2 = 2)
    assert plan.channel_begin.tolist() == [0, 2]
    assert plan.counts.tolist() == [[1, 1, 1, 0], [0, 1, 0, 2]]
    assert plan.out_offset.tolist() == [[0, 0, 0, 0], [1, 1, 1, 0]]
    assert plan.out_rows == 2
    assert plan.ib_bytes == 3 * 16  # tokens 1, 2, 4 reach node 1
    # 6 destination GPUs (2 + 1 + 2 + 0 + 1), of which 2 are a forwarder itself
    # (GPU 0 of node 0 for token 0, of node 1 for token 1): local, not NVLink
    assert plan.nvl_bytes == 4 * 16 and plan.local_fwd_bytes == 2 * 16
    assert [r.tolist() for r in reference_rows(MASKS, SMALL)] == [[0], [0, 2], [1], [2, 4]]


def test_masks_from_topk_by_hand():
    # 8 experts over 4 GPUs: 2 per GPU; -1 = unused slot
    m = masks_from_topk(np.array([[0, 3], [5, -1], [7, 6]]), experts=8, cfg=SMALL)
    assert m.tolist() == [0b0011, 0b0100, 0b1000]


def test_config_validation():
    with pytest.raises(ValueError, match="> 32 warps"):
        KernelConfig(senders=20, forwarders=8, receivers=8).validate()
    with pytest.raises(ValueError, match="multiple of 16"):
        KernelConfig(token_bytes=7230).validate()
    with pytest.raises(ValueError, match="<= 64"):
        KernelConfig(nodes=9).validate()


def _records(rows):
    rec = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (role, warp, kind, t0, t1, nbytes, node, gpu) in enumerate(rows):
        rec[i] = (t0, t1, nbytes, 0, node, gpu, 7, role, kind, warp, 0, (0, 0))
    return rec


RECORDS = _records([
    # role, warp, kind, t0, t1, bytes, node, gpu   (absolute globaltimer ns)
    (0, 0, 0, 1_000, 1_060, 600, 1, -1),  # sender -> node 1: IB
    (0, 0, 0, 1_060, 1_070, 0, 0, -1),  # sender -> own node 0: local
    (0, 0, 1, 1_070, 1_100, 0, 1, -1),  # sender waits for RDMA space
    (1, 1, 5, 1_000, 1_050, 0, 1, -1),  # coordinator waits for senders
    (1, 1, 0, 1_060, 1_065, 0, 1, -1),  # coordinator publishes
    (2, 2, 2, 1_000, 1_040, 0, 1, -1),  # forwarder waits for RDMA data
    (2, 2, 3, 1_040, 1_050, 0, 1, 0),  # forwarder waits for NVL space (10 ns)
    (2, 2, 0, 1_050, 1_090, 800, 1, 1),  # forwarder -> GPU (1, 1): NVLink
    (3, 3, 4, 1_000, 1_100, 0, 1, 0),  # receiver waits for data
    (3, 3, 0, 1_100, 1_200, 800, 1, 0),  # receiver -> local output
])


def test_records_to_log_by_hand():
    frame = records_to_log(RECORDS).to_frame()
    got = [(r["role"], r["state"], r["link"], r["ts_ns"], r["dur_ns"], r["bytes"])
           for r in frame.iter_rows(named=True)]
    assert got == [
        ("rdma_sender", "busy", "ib", 0, 60, 600),
        ("rdma_sender", "busy", "local", 60, 10, 0),
        ("rdma_sender", "wait_remote_head", None, 70, 30, 0),
        ("sender_coordinator", "wait_tail", None, 0, 50, 0),
        ("sender_coordinator", "busy", None, 60, 5, 0),
        ("forwarder", "wait_tail", None, 0, 40, 0),
        ("forwarder", "wait_remote_head", None, 40, 10, 0),
        ("forwarder", "busy", "nvl", 50, 40, 800),
        ("nvl_receiver", "wait_tail", None, 0, 100, 0),
        ("nvl_receiver", "busy", "local", 100, 100, 800),
    ]
    # the same short-wait rule as the kernel: waits under min_wait_ns are dropped
    assert records_to_log(RECORDS, min_wait_ns=20).to_frame().height == 9


def test_records_flow_into_the_analyzer():
    frame = records_to_frame(RECORDS, rank=2)
    assert frame["rank"].unique().to_list() == [2] and frame["sm"].unique().to_list() == [7]
    a = analyze_warps(frame)
    fwd = a.roles.filter(pl.col("role") == "forwarder").row(0, named=True)
    assert fwd["lifetime_ns"] == 90 and fwd["busy_frac"] == pytest.approx(40 / 90)
    lk = dict(a.links.select("link", "bytes").iter_rows())
    assert lk == {"ib": 600, "local": 800, "nvl": 800}
    assert a.bottleneck() == "nvl_receiver"  # 100 of 200 ns span


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_library_builds_and_layouts_agree(tmp_path):
    lib = load_library(build_library("sm_90", cache_dir=tmp_path))  # checks both sizes
    # A configuration the launcher rejects before touching the GPU: -2 (bad config).
    bad = _Params(NS=0, NF=1, NR=1, C=1, N=1, G=1, K=1, R=2, S=16)
    assert lib.launch_warp_dispatch(bad, None) == -2
    assert build_library("sm_90", cache_dir=tmp_path) == next(tmp_path.glob("*.so"))
