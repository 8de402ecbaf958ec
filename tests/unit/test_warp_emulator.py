"""Unit tests of the warp-role emulator: clock, links, layout, timing by hand, faults."""

from __future__ import annotations

import numpy as np
import pytest

from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.clock import Clock, DeadlockError
from overlapscope.profiler.warps.combine_kernel import emulate_combine
from overlapscope.profiler.warps.config import CostModel, DispatchConfig
from overlapscope.profiler.warps.dispatch_kernel import LostTokenError, emulate_dispatch
from overlapscope.profiler.warps.links import Link, warp_copy_end
from overlapscope.profiler.warps.plan import make_plan, routing_bytes
from overlapscope.profiler.warps.roles import Faults

# A cost model whose numbers make hand timing easy: 1 byte/ns per warp, no overheads.
UNIT_COST = CostModel(
    local_warp_gbps=1.0, ib_warp_gbps=1.0, nvl_warp_gbps=1.0, local_msg_ns=0, ib_msg_ns=0,
    fwd_scan_ns=0, publish_ns=10, loop_ns=0, wake_ns=0,
)


def tiny_cfg(**kw) -> DispatchConfig:
    """2 nodes x 1 GPU, 2 experts, top-1, one of each role, 100-byte tokens."""
    base = dict(
        nodes=2, gpus_per_node=1, experts=2, top_k=1, max_nodes=1, tokens=1, token_bytes=100,
        channels=1, chunk_tokens=1, senders=1, coordinators=1, forwarders=1, receivers=1,
        rdma_slots=2, nvl_slots=2, ib_gbps=0.0, nvl_gbps=0.0, cost=UNIT_COST,
    )
    base.update(kw)
    return DispatchConfig(**base)


def random_topk(t: int, experts: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(experts, size=k, replace=False) for _ in range(t)])


# -- clock -------------------------------------------------------------------------
def test_clock_orders_by_time_and_wakes_waiters():
    clk = Clock(wake_ns=5)
    flag = clk.counter("flag")
    seen: list[tuple[str, int]] = []

    def producer():
        yield 100
        flag.set(1)
        seen.append(("set", clk.now))

    def consumer():
        yield flag, 1
        seen.append(("woke", clk.now))

    clk.spawn("consumer", consumer())
    clk.spawn("producer", producer())
    assert clk.run() == 105
    assert seen == [("set", 100), ("woke", 105)]


def test_clock_deadlock_names_role_and_counter():
    clk = Clock()
    tail = clk.counter("ring rdma c0 n1 tail")

    def waiter():
        yield tail, 3

    clk.spawn("forwarder c0 w5", waiter())
    with pytest.raises(DeadlockError, match=r"forwarder c0 w5 waits for ring rdma c0 n1 tail >= 3"):
        clk.run()


# -- links -------------------------------------------------------------------------
def test_link_fifo_reservations():
    link = Link("ib", "ib", gbps=10.0)  # 10 bytes/ns
    assert link.reserve(0, 1000) == 100
    assert link.reserve(0, 1000) == 200  # queued behind the first
    assert link.reserve(500, 1000) == 600  # link idle again at 500
    assert link.bytes_moved == 3000


def test_unlimited_link_and_copy_end():
    free = Link("nvl", "nvl", gbps=0.0, latency_ns=7)
    assert free.reserve(40, 10**9) == 47
    slow = Link("ib", "ib", gbps=0.5)
    # the warp alone needs 10 + 100 ns; the link needs 200 ns: the later wins
    assert warp_copy_end(0, 100, warp_gbps=1.0, overhead_ns=10, link=slow) == 200
    assert warp_copy_end(0, 100, warp_gbps=1.0, overhead_ns=10, link=None) == 110


# -- layout --------------------------------------------------------------------------
def test_plan_dedups_per_gpu_and_node():
    # 2 nodes x 2 GPUs, 8 experts: GPU d holds experts 2d, 2d+1; node n holds GPUs 2n, 2n+1
    cfg = DispatchConfig(nodes=2, gpus_per_node=2, experts=8, top_k=2, max_nodes=2, tokens=3,
                         token_bytes=10, channels=2, chunk_tokens=1)
    topk = np.array([[0, 1], [0, 7], [4, 6]])  # GPU0 twice; GPU0+GPU3; GPU2+GPU3
    plan = make_plan(topk, cfg)
    assert plan.dest.tolist() == [
        [True, False, False, False], [True, False, False, True], [False, False, True, True],
    ]
    assert plan.node_mask.tolist() == [[True, False], [True, True], [False, True]]
    assert plan.out_pos[1, 0] == 1 and plan.out_pos[2, 3] == 1 and plan.out_pos[1, 3] == 0
    assert plan.out_count.tolist() == [2, 0, 1, 2]
    # ceil(3 / 2) = 2 tokens per channel: channel 0 = tokens 0-1, channel 1 = token 2
    assert plan.channel_start.tolist() == [0, 2] and plan.channel_end.tolist() == [2, 3]
    assert plan.n_chunks(0) == 2 and plan.locate(2) == (1, 0)
    # source rank 0 is on node 0: remote (token, node) pairs = t1->n1, t2->n1; NVLink
    # copies = destination GPUs (5) minus those with the source's local index 0 (GPU 0
    # for t0 and t1, GPU 2 for t2): the forwarder's copy to itself is local (BRIEF §4.10)
    assert routing_bytes(plan, cfg) == (2 * 10, 2 * 10)


# -- timing worked out by hand -------------------------------------------------------
def test_single_token_timeline_by_hand():
    # sender: node 0 empty (0 ns), node 1 100 B at 1 B/ns -> done at 100; coordinator
    # publishes (10 ns) -> 110; forwarder copies 100 B -> 210; receiver 100 B -> 310.
    res = emulate_dispatch(tiny_cfg(), topk_ids=np.array([[1]]))
    assert res.kernel_ns == 310
    # one GPU per node: the forwarder's copy goes to itself (local, not NVLink)
    assert res.link_bytes == {"ib": 100, "nvl": 0, "local": 200}
    frame = res.frame()
    fwd = frame.filter(frame["role"] == S.FORWARDER, frame["state"] == S.BUSY,
                       frame["bytes"] > 0)
    assert fwd["ts_ns"].to_list() == [110] and fwd["dur_ns"].to_list() == [100]


def test_shared_ib_link_queues_two_channels():
    # Two channels each send one 100-byte token over a 0.5 B/ns NIC: reservations end
    # at 200 and 400 ns; the later path adds publish 10 + NVL 100 + receive 100 -> 610.
    cfg = tiny_cfg(tokens=2, channels=2, ib_gbps=0.5)
    res = emulate_dispatch(cfg, topk_ids=np.array([[1], [1]]))
    assert res.kernel_ns == 610
    one = emulate_dispatch(tiny_cfg(ib_gbps=0.5), topk_ids=np.array([[1]]))
    assert one.kernel_ns == 410  # alone: 200 + 10 + 100 + 100


def test_ring_backpressure_is_recorded_as_wait_remote_head():
    # 1-slot rings, 3 chunks, slow receiver: the sender must wait for slots.
    cost = CostModel(local_warp_gbps=0.1, ib_warp_gbps=10.0, nvl_warp_gbps=10.0,
                     local_msg_ns=0, ib_msg_ns=0, fwd_scan_ns=0, publish_ns=1, loop_ns=0,
                     wake_ns=0)
    cfg = tiny_cfg(tokens=3, rdma_slots=1, nvl_slots=1, cost=cost)
    res = emulate_dispatch(cfg, topk_ids=np.array([[1], [1], [1]]))
    states = set(res.frame().filter(res.frame()["role"] == S.RDMA_SENDER)["state"].to_list())
    assert S.WAIT_REMOTE_HEAD in states
    # receiver-bound: three 1000-ns receive copies dominate
    assert res.bottleneck == S.NVL_RECEIVER
    assert res.kernel_ns >= 3000


# -- bytes really move -----------------------------------------------------------------
def test_outputs_equal_direct_gather_and_bytes_equal_arithmetic():
    cfg = DispatchConfig(nodes=2, gpus_per_node=4, experts=32, top_k=4, max_nodes=2,
                         tokens=200, token_bytes=64, channels=3, chunk_tokens=8, senders=2,
                         forwarders=2, receivers=3, src_rank=5)
    topk = random_topk(200, 32, 4, seed=3)
    res = emulate_dispatch(cfg, topk_ids=topk)
    # independent arithmetic: distinct GPUs / remote nodes per token via python sets
    gpus = [{int(e) // 4 for e in row} for row in topk]
    remote = sum(len({g // 4 for g in gs} - {1}) for gs in gpus)  # rank 5 is on node 1
    assert res.link_bytes["ib"] == remote * 64 == res.expected_ib_bytes
    # NVLink: every destination GPU but the forwarders themselves (local index 1 = rank 5's)
    nvl = sum(len({g for g in gs if g % 4 != 1}) for gs in gpus)
    assert res.link_bytes["nvl"] == nvl * 64 == res.expected_nvl_bytes
    for d in range(8):
        rows = [t for t, gs in enumerate(gpus) if d in gs]
        assert np.array_equal(res.outputs[d], res.inputs[rows])
    assert res.verified_bytes


def test_timing_does_not_depend_on_moving_bytes():
    cfg = DispatchConfig(nodes=2, gpus_per_node=2, experts=8, top_k=2, max_nodes=2,
                         tokens=64, token_bytes=32, channels=2, chunk_tokens=4)
    topk = random_topk(64, 8, 2, seed=1)
    a = emulate_dispatch(cfg, topk_ids=topk)
    b = emulate_dispatch(cfg, topk_ids=topk, move_bytes=False)
    c = emulate_dispatch(cfg, topk_ids=topk)
    assert a.kernel_ns == b.kernel_ns == c.kernel_ns
    assert a.log.rows == c.log.rows  # deterministic


# -- faults are reported, never hang ---------------------------------------------------
def test_lost_token_names_role_and_ring():
    cfg = tiny_cfg(tokens=4, chunk_tokens=2)
    with pytest.raises(LostTokenError, match=r"token 2 .*role forwarder.*ring nvl c0 r1"):
        emulate_dispatch(cfg, topk_ids=np.array([[1], [1], [1], [0]]), faults=Faults(drop_token=2))


def test_stuck_receiver_is_a_deadlock_naming_the_blocked_ring():
    cfg = tiny_cfg(tokens=6, chunk_tokens=1, rdma_slots=1, nvl_slots=1)
    with pytest.raises(DeadlockError, match=r"forwarder c0 w2 waits for ring nvl c0 r\d head"):
        emulate_dispatch(cfg, topk_ids=np.array([[1]] * 6),
                         faults=Faults(stuck_role=S.NVL_RECEIVER))


def test_invalid_config_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="receivers"):
        DispatchConfig(receivers=0).validate()
    with pytest.raises(ValueError, match="max_nodes"):
        DispatchConfig(max_nodes=9).validate()


# -- combine ---------------------------------------------------------------------------
def test_combine_sums_partials_and_counts_bytes():
    cfg = DispatchConfig(nodes=2, gpus_per_node=2, experts=8, top_k=3, max_nodes=2,
                         tokens=50, channels=2, chunk_tokens=4, senders=2, forwarders=1,
                         receivers=2)
    topk = random_topk(50, 8, 3, seed=7)
    res = emulate_combine(cfg, topk_ids=topk, hidden=8, row_bytes=100)
    gpus = [{int(e) // 2 for e in row} for row in topk]
    want = np.zeros((50, 8), dtype=np.float32)
    for d in range(4):
        rows = [t for t, gs in enumerate(gpus) if d in gs]
        want[rows] += res.inputs[d]
    assert np.array_equal(res.outputs, want)
    remote = sum(len({g // 2 for g in gs} - {0}) for gs in gpus)
    assert res.link_bytes["ib"] == remote * 100
    # partials of the forwarder's own GPU (local index 0) do not cross NVLink
    assert res.link_bytes["nvl"] == sum(len({g for g in gs if g % 2 != 0}) for gs in gpus) * 100
    assert res.link_bytes["nvl"] == res.expected_nvl_bytes
    assert set(res.role_busy) == {S.NVL_SENDER, S.COMBINE_FORWARDER, S.RDMA_RECEIVER}
