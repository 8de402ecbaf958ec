"""One NVLink accounting: the same routing through the warp emulator, the CUDA kernel's
host-side accounting and the torch two-hop dispatch gives the same IB and NVLink bytes.

BRIEF §4.10: NVL(t) = S * sum_n (g(t, n) - s(t, n)): the forwarder (the GPU with the
source's local index on each node, where the IB copy lands) copying a token to itself
is a local copy, not NVLink. The torch path runs for real (``DispatchPlan`` on 8 ranks
of an EP group over 2 nodes x 4 GPUs), each rank in a thread of this process, with an
in-process stand-in for ``torch.distributed``'s batched point-to-point calls (FIFO
mailboxes per (source, destination, tag), as gloo matches messages), so the test needs
no second process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_dist import FakeDist, run_threads

from overlapscope.profiler import dispatch as D
from overlapscope.profiler.routing import routing_stats
from overlapscope.profiler.topology import Topology
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.cuda_kernel import (
    KernelConfig,
    dispatch_plan,
    masks_from_topk,
    records_to_log,
)
from overlapscope.profiler.warps.dispatch_kernel import emulate_dispatch
from overlapscope.profiler.warps.plan import node_limited_topk

NODES, GPN, EXPERTS, TOP_K, TOKENS = 2, 4, 32, 4, 64
ROW = 4  # float32 values per token: 16 bytes, the token slot of all three


def v3_routing(seed: int = 11) -> np.ndarray:
    """Node-limited V3 routing (M = 1 of 2 nodes, plus an unlimited half)."""
    rng = np.random.default_rng(seed)
    aff = 1 / (1 + np.exp(-rng.standard_normal((TOKENS, EXPERTS))))
    lim = node_limited_topk(aff[: TOKENS // 2], n_nodes=NODES, top_k=TOP_K, max_nodes=1)
    free = node_limited_topk(aff[TOKENS // 2:], n_nodes=NODES, top_k=TOP_K, max_nodes=NODES)
    return np.concatenate([lim, free]).astype(np.int64)


def torch_path_bytes(topk: np.ndarray, monkeypatch) -> dict[str, int]:
    """Bytes per link class that the torch dispatch of rank 0's tokens records (all ranks)."""
    fake = FakeDist()
    monkeypatch.setattr(D, "dist", fake)
    topo = Topology(NODES, GPN)
    logs = [D.TrafficLog() for _ in range(topo.world_size)]

    def rank_main(r: int) -> None:
        ep = D.make_ep_group(topo, None, r, EXPERTS, hook=logs[r])
        ids = torch.from_numpy(topk) if r == 0 else torch.zeros((0, TOP_K), dtype=torch.long)
        plan = D.build_plan(ids, ep)
        src = torch.arange(len(ids) * ROW, dtype=torch.float32).reshape(len(ids), ROW)
        plan.forward_rows(src, phase="dispatch(F)")

    run_threads(fake, topo.world_size, rank_main)
    out = {"ib": 0, "nvl": 0, "local": 0}
    for log in logs:
        for rec in log.records:
            if rec["collective"] == "two_hop_dispatch":
                out[rec["hop"]] += sum(rec["dst_bytes"])
    return out


def test_emulator_cuda_host_and_torch_path_agree_on_nvlink(monkeypatch) -> None:
    topk = v3_routing()
    slot = ROW * 4
    # 1. the warp emulator (source rank 0 = local index 0 of node 0)
    emu = emulate_dispatch(DispatchConfig(nodes=NODES, gpus_per_node=GPN, experts=EXPERTS,
                                          top_k=TOP_K, max_nodes=NODES, tokens=TOKENS,
                                          token_bytes=slot, channels=2, chunk_tokens=8,
                                          src_rank=0), topk_ids=topk)
    # 2. the CUDA kernel's host accounting (its source is GPU 0 of node 0)
    kcfg = KernelConfig(nodes=NODES, gpus_per_node=GPN, token_bytes=slot, channels=2,
                        chunk_tokens=8)
    kplan = dispatch_plan(masks_from_topk(topk, experts=EXPERTS, cfg=kcfg), kcfg)
    # 3. the torch path, for real
    torch_bytes = torch_path_bytes(topk, monkeypatch)
    # 4. BRIEF §4.10 per token
    stats = routing_stats(torch.from_numpy(topk), n_nodes=NODES, gpus_per_node=GPN,
                          experts_per_gpu=EXPERTS // (NODES * GPN), src_node=0, src_local=0)
    nvl = int(stats["per_token"]["nvl_copies"].sum()) * slot
    ib = int(stats["per_token"]["ib_copies"].sum()) * slot

    assert emu.link_bytes["nvl"] == emu.expected_nvl_bytes == kplan.nvl_bytes == nvl
    assert torch_bytes["nvl"] == nvl
    assert emu.link_bytes["ib"] == kplan.ib_bytes == torch_bytes["ib"] == ib
    # the forwarders' copies to themselves are local everywhere; counting them as NVLink
    # (the old emulator / kernel convention) would add this much:
    own = int(np.asarray(emu.plan.dest3[:, :, 0]).sum()) * slot
    assert own > 0 and kplan.local_fwd_bytes == own
    distinct = int(emu.plan.dest.sum()) * slot
    assert distinct == nvl + own


def test_kernel_records_of_a_self_copy_are_local() -> None:
    from overlapscope.profiler.warps.cuda_kernel import EVENT_DTYPE

    rec = np.zeros(2, dtype=EVENT_DTYPE)
    # forwarder (role 2) busy copies on node 1: to GPU 0 (itself) and to GPU 2
    rec[0] = (0, 10, 160, 0, 1, 0, 3, 2, 0, 5, 0, (0, 0))
    rec[1] = (10, 20, 320, 0, 1, 2, 3, 2, 0, 5, 0, (0, 0))
    links = [row[6] for row in records_to_log(rec).rows]
    assert links == ["local", "nvl"]


@pytest.mark.parametrize("src_rank", [0, 5])
def test_emulator_self_copies_skip_the_nvlink_link(src_rank: int) -> None:
    topk = v3_routing(3)
    cfg = DispatchConfig(nodes=NODES, gpus_per_node=GPN, experts=EXPERTS, top_k=TOP_K,
                         max_nodes=NODES, tokens=TOKENS, token_bytes=16, channels=1,
                         chunk_tokens=8, src_rank=src_rank)
    res = emulate_dispatch(cfg, topk_ids=topk, move_bytes=False)
    fwd_local = sum(r[5] for r in res.log.rows
                    if r[2] == "forwarder" and r[3] == "busy" and r[6] == "local")
    gpu = topk // (EXPERTS // (NODES * GPN))
    own = sum(len({g for g in set(row) if g % GPN == src_rank % GPN}) for row in gpu.tolist())
    assert fwd_local == own * 16
