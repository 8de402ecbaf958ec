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
