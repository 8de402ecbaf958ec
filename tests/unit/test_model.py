"""Miniature DeepSeek-V3 block: determinism, sharding, and output vs a naive second method."""

from __future__ import annotations

import pytest
import torch

from overlapscope.profiler.dispatch import EPGroup, EPLayout, EPShape, LocalPlan
from overlapscope.profiler.model import (
    ModelConfig,
    MoEBlock,
    build_model,
    build_stage,
    make_batch,
    stage_loss,
)
from overlapscope.profiler.topology import Topology

CFG = ModelConfig(hidden=16, n_heads=2, expert_ffn=8, shared_ffn=12, n_experts=8, top_k=3,
                  max_nodes=1, ep_nodes=2, ep_gpus_per_node=2, dtype="float64")


def test_same_seed_same_weights_other_seed_differs() -> None:
    a, b, c = MoEBlock(CFG, 5, 0, 0), MoEBlock(CFG, 5, 0, 0), MoEBlock(CFG, 6, 0, 0)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(),
                                  c.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
        if "norm" not in name:  # norms start at 1 whatever the seed
            assert not torch.equal(pa, pc), name


def test_sharded_block_holds_exactly_its_slice_of_the_experts() -> None:
    full = MoEBlock(CFG, 5, 0, 0)
    layout = EPLayout.build(Topology(2, 2), None, 3, CFG.n_experts)  # rank 3: experts 6, 7
    part = MoEBlock(CFG, 5, 0, 0, EPGroup(layout))
    assert part.first_expert == 6 and len(part.experts) == 2
    for j in range(2):
        for pa, pb in zip(part.experts[j].parameters(), full.experts[6 + j].parameters(),
                          strict=True):
            assert torch.equal(pa, pb)
    assert torch.equal(part.gate.proj.weight, full.gate.proj.weight)


def test_float32_weights_are_the_rounded_float64_weights() -> None:
    b64 = MoEBlock(CFG, 5, 0, 0)
    b32 = MoEBlock(CFG.with_(dtype="float32"), 5, 0, 0)
    assert torch.equal(b32.attn.qkv.weight, b64.attn.qkv.weight.float())


def test_block_output_matches_a_token_by_token_computation() -> None:
    block = MoEBlock(CFG, 9, 0, 0)
    x, _ = make_batch(CFG, 2, 5, 9, 0)
    y = block(x)
    a = block.attn_forward(x)
    # every selected expert must lie on one node (max_nodes = 1, 4 experts per node)
    assert all(len({int(e) // 4 for e in row}) == 1 for row in a.topk_ids)
    routed = torch.zeros_like(a.u)
    for t in range(a.u.shape[0]):
        for k in range(CFG.top_k):
            e = int(a.topk_ids[t, k])
            routed[t] += a.topk_weights[t, k] * block.experts[e](a.u[t:t + 1])[0]
    want = a.h + (block.shared(a.u) + routed).view_as(a.h)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_local_plan_sums_one_partial_per_distinct_gpu() -> None:
    shape = EPShape(2, 2, 8)  # 2 experts per GPU
    ids = torch.tensor([[0, 1, 2], [6, 7, 4], [3, 5, 7]])
    plan = LocalPlan(ids, shape)
    # token 0 -> GPUs {0, 1}; token 1 -> {3, 2}; token 2 -> {1, 2, 3}
    assert [len(r) for r in plan.rows_of] == [1, 2, 2, 2]
    rows = plan.forward_rows(torch.arange(3.0)[:, None])
    assert rows[:, 0].tolist() == [0, 0, 2, 1, 2, 1, 2]
    counts = plan.reverse_sum(torch.ones(rows.shape[0], 1))
    assert counts[:, 0].tolist() == [2, 2, 3]


def test_stages_chain_and_every_used_parameter_gets_a_gradient() -> None:
    cfg = CFG.with_(blocks_per_stage=2)
    model = build_model(cfg, 2, seed=3)
    first, last = model[0], model[1]
    assert not first.is_last and last.is_last and hasattr(last, "head")
    assert torch.equal(build_stage(cfg, 1, 2, 3).head.weight, last.head.weight)
    x, target = make_batch(cfg, 2, 4, 3, 0)
    out = model(x)
    assert out.shape == x.shape
    stage_loss(out, target).backward()
    used = set()  # (stage, block, expert) chosen by at least one token, recomputed per block
    h = x
    for s, stage in enumerate(model):
        for b, block in enumerate(stage.blocks):
            used |= {(s, b, int(e)) for e in block.attn_forward(h).topk_ids.unique()}
            h = block(h)
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "experts" in parts:
            key = (int(parts[0]), int(parts[2]), int(parts[4]))
            assert (p.grad is not None) == (key in used), name
        else:
            assert p.grad is not None, name


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        ModelConfig(hidden=10, n_heads=4)
    with pytest.raises(ValueError, match="do not split evenly"):
        ModelConfig(n_experts=6, ep_nodes=2, ep_gpus_per_node=2)
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig(n_experts=8, top_k=5, max_nodes=1)
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_dict({"hiddn": 3})
    with pytest.raises(ValueError, match="does not match the config"):
        MoEBlock(CFG, 0, 0, 0, EPGroup(EPLayout.build(Topology(1, 2), None, 0, 8)))


# -- where exchanges are issued ----------------------------------------------------------
class _ThreadLog:
    """Traffic hook remembering the native thread and phase of every record."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, str | None]] = []
        self.routing: list[dict] = []

    def record_traffic(self, name, collective, hop, dst_bytes, phase, t0, t1, dtype) -> None:
        import threading

        self.records.append((threading.get_native_id(), collective, phase))

    def record_routing(self, stats: dict) -> None:
        self.routing.append(stats)


def test_every_exchange_of_a_plain_forward_and_backward_runs_on_the_comm_thread(
        monkeypatch) -> None:
    """Plain (unpaired) block forward + backward on each rank's main thread: layout,
    dispatch and combine, forward and backward halves, are all issued on the rank's comm
    thread (on CUDA the same path issues them on the side stream, tests/gpu)."""
    from fake_dist import FakeDist, run_threads

    from overlapscope.profiler import dispatch as D
    from overlapscope.profiler.comm_stream import ThreadCommStream

    fake = FakeDist()
    monkeypatch.setattr(D, "dist", fake)
    topo = Topology(2, 2)
    cfg = CFG.with_(max_nodes=1)

    def rank_main(r: int) -> dict:
        import threading

        log = _ThreadLog()
        with ThreadCommStream() as stream:
            fake.ranks[stream.native_id] = r
            ep = EPGroup(EPLayout.build(topo, None, r, cfg.n_experts), None, log, stream=stream)
            block = MoEBlock(cfg, 7, 0, 0, ep)
            x, target = make_batch(cfg, 2, 4, 7, r)
            x.requires_grad_(True)
            ((block(x) - target) ** 2).sum().backward()
            return {"main": threading.get_native_id(), "comm": stream.native_id,
                    "records": log.records, "routing": log.routing,
                    "grad": x.grad is not None}

    for res in run_threads(fake, topo.world_size, rank_main):
        assert res["grad"]
        threads = {tid for tid, _, _ in res["records"]}
        assert threads == {res["comm"]} and res["main"] not in threads
        phases = {(c, p) for _, c, p in res["records"]}
        assert {("two_hop_dispatch", "dispatch(F)"), ("two_hop_combine", "combine(F)"),
                ("two_hop_combine", "dispatch(B)"),  # dispatch's backward is a combine
                ("two_hop_dispatch", "combine(B)")} <= phases
        # routing statistics of the one forward dispatch: node limit M = 1 of 2 nodes
        (stats,) = res["routing"]
        assert stats["tokens"] == 8 and stats["max_nodes"] == 1 and stats["nodes"] == 2
        assert stats["ib_bytes_saved"] == stats["ib_bytes_unlimited"] - stats["ib_bytes"] >= 0
        assert stats["tokens_over_limit"] <= stats["tokens_redirected"] <= stats["tokens"]


def test_node_limit_stats_by_hand() -> None:
    from overlapscope.profiler.routing import node_limit_stats

    # 2 nodes x 2 GPUs, 1 expert per GPU; source = node 0, local 0
    limited = torch.tensor([[0, 1], [2, 3], [0, 1]])
    free = torch.tensor([[0, 2], [2, 3], [1, 0]])  # token 0 spans 2 nodes unlimited
    s = node_limit_stats(limited, free, n_nodes=2, gpus_per_node=2, experts_per_gpu=1,
                         src_node=0, src_local=0, bytes_per_token=10, max_nodes=1)
    assert s["tokens"] == 3 and s["tokens_redirected"] == 1 and s["tokens_over_limit"] == 1
    assert (s["ib_copies"], s["ib_copies_unlimited"]) == (1, 2)
    assert s["ib_bytes_saved"] == 10
    # NVLink: token 0 -> GPU 1 (1 copy), token 1 -> node 1 GPU 3 (GPU 2 is the forwarder),
    # token 2 -> GPU 1; unlimited: token 0 -> GPU 2 is the forwarder itself (0 copies)
    assert (s["nvl_copies"], s["nvl_copies_unlimited"]) == (3, 2)
