"""Node-limited top-k gate and routing statistics, on hand-worked tiny cases and properties."""

from __future__ import annotations

import pytest
import torch

from overlapscope.profiler.routing import node_limit_savings, node_limited_topk, routing_stats


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_node_limit_picks_the_best_node_not_the_best_experts() -> None:
    # 4 experts on 2 nodes (0,1 | 2,3). V3 rule with M=1: node score = sum of its top 2.
    # node 0: 0.9 + 0.1 = 1.0, node 1: 0.6 + 0.5 = 1.1 -> node 1, although expert 0 is best.
    aff = _t([[0.9, 0.1, 0.6, 0.5]])
    ids, w = node_limited_topk(aff, None, n_nodes=2, top_k=2, max_nodes=1)
    assert ids.tolist() == [[2, 3]]
    torch.testing.assert_close(w, _t([[0.6 / 1.1, 0.5 / 1.1]]))
    # DeepEP's "max" score: node 0 has 0.9 > 0.6 -> experts 0, 1
    ids, w = node_limited_topk(aff, None, n_nodes=2, top_k=2, max_nodes=1, node_score="max")
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(w, _t([[0.9, 0.1]]))
    # no node limit: plain top-2 -> experts 0 and 2
    ids, _ = node_limited_topk(aff, None, n_nodes=2, top_k=2, max_nodes=2)
    assert ids.tolist() == [[0, 2]]


def test_bias_only_steers_selection() -> None:
    # biased = [0.5, 0.4, 0.65, 0.3] -> experts 2, 0; weights from the unbiased 0.45, 0.5
    aff = _t([[0.5, 0.4, 0.45, 0.3]])
    bias = torch.tensor([0.0, 0.0, 0.2, 0.0], dtype=torch.float64)
    ids, w = node_limited_topk(aff, bias, n_nodes=2, top_k=2, max_nodes=2)
    assert ids.tolist() == [[2, 0]]
    torch.testing.assert_close(w, _t([[0.45 / 0.95, 0.5 / 0.95]]))


def test_ties_go_to_the_lower_index() -> None:
    aff = torch.full((1, 8), 0.5, dtype=torch.float64)
    ids, w = node_limited_topk(aff, None, n_nodes=4, top_k=3, max_nodes=2)
    assert ids.tolist() == [[0, 1, 2]]  # nodes 0 and 1 kept, then experts by index
    torch.testing.assert_close(w, torch.full((1, 3), 1 / 3, dtype=torch.float64))


def test_custom_node_score_is_used() -> None:
    # score nodes by their *lowest* expert: node 0 min 0.1, node 1 min 0.5 -> node 1
    aff = _t([[0.9, 0.1, 0.6, 0.5]])
    ids, _ = node_limited_topk(aff, None, n_nodes=2, top_k=1, max_nodes=1,
                               node_score=lambda s, k, m: s.min(-1).values)
    assert ids.tolist() == [[2]]


def test_properties_on_random_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    aff = torch.rand(300, 16, generator=gen, dtype=torch.float64).requires_grad_(True)
    bias = torch.rand(16, generator=gen, dtype=torch.float64) * 0.1
    for m in (1, 2, 3, 4):
        ids, w = node_limited_topk(aff, bias, n_nodes=4, top_k=4, max_nodes=m)
        nodes_used = torch.tensor([len(set((row // 4).tolist())) for row in ids])
        assert int(nodes_used.max()) <= m
        assert all(len(set(row.tolist())) == 4 for row in ids)  # distinct experts
        torch.testing.assert_close(w.sum(1), torch.ones(300, dtype=torch.float64))
        chosen = aff.detach().gather(1, ids)
        torch.testing.assert_close(w.detach(), chosen / chosen.sum(1, keepdim=True))
    # M = n_nodes is plain top-k of the biased scores
    ids, w = node_limited_topk(aff, bias, n_nodes=4, top_k=4, max_nodes=4)
    assert torch.equal(ids, torch.topk(aff.detach() + bias, 4).indices)
    # the weights are differentiable with respect to the affinities
    w[:, 0].sum().backward()
    assert aff.grad is not None and aff.grad.abs().sum() > 0


def test_v3_rule_sums_top_k_over_m_scores_per_node() -> None:
    # 8 experts on 2 nodes, top_k 4, M 1 -> node score = sum of its top 4 // 1 = 4 scores
    # node 0: 0.9 + 0 + 0 + 0 = 0.9 ; node 1: 0.3 * 4 = 1.2 -> node 1
    aff = _t([[0.9, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3]])
    ids, _ = node_limited_topk(aff, None, n_nodes=2, top_k=4, max_nodes=1)
    assert ids.tolist() == [[4, 5, 6, 7]]
    # with M = 2 it sums the top 2: node 0 0.9 > node 1 0.6, both kept anyway
    ids, _ = node_limited_topk(aff, None, n_nodes=2, top_k=4, max_nodes=2)
    assert ids.tolist() == [[0, 4, 5, 6]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_nodes": 3, "top_k": 2, "max_nodes": 1}, "cannot be split evenly"),
        ({"n_nodes": 2, "top_k": 2, "max_nodes": 3}, "max_nodes=3"),
        ({"n_nodes": 2, "top_k": 3, "max_nodes": 1}, "top_k=3"),
        ({"n_nodes": 2, "top_k": 2, "max_nodes": 1, "node_score": "avg"}, "unknown node_score"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        node_limited_topk(torch.rand(2, 4), None, **kwargs)


def test_routing_stats_by_hand() -> None:
    # 2 nodes x 2 GPUs, one expert per GPU; the source is rank (node 0, local 0)
    ids = torch.tensor([[0, 1], [2, 3], [0, 3]])
    s = routing_stats(ids, n_nodes=2, gpus_per_node=2, experts_per_gpu=1, src_node=0,
                      src_local=0)
    # token 0: node 0, GPUs {0,1}: no IB; NVL 2 - 1 (GPU 0 is the source itself) = 1
    # token 1: node 1, GPUs {2,3}: IB 1; NVL 2 - 1 (GPU 2 has the source's local index) = 1
    # token 2: nodes {0,1}, GPUs 0 and 3: IB 1; NVL (1-1) + (1-0) = 1
    assert s["tokens"] == 3
    assert s["per_token"]["nodes"].tolist() == [1, 1, 2]
    assert s["per_token"]["ib_copies"].tolist() == [0, 1, 1]
    assert s["per_token"]["nvl_copies"].tolist() == [1, 1, 1]
    assert s["nodes_per_token"] == pytest.approx(4 / 3)
    assert s["max_nodes_per_token"] == 2
    assert s["gpus_per_node"] == pytest.approx(1.5)  # (2 + 2 + 1 + 1) / 4 pairs
    assert s["gpus_per_token"] == pytest.approx(2.0)
    assert s["ib_copies_per_token"] == pytest.approx(2 / 3)
    assert s["nvl_copies_per_token"] == pytest.approx(1.0)
    assert s["nvl_per_ib"] == pytest.approx(1.5)


def test_routing_stats_per_token_source_node() -> None:
    ids = torch.tensor([[0, 1], [0, 1]])  # both tokens go to node 0 only
    s = routing_stats(ids, n_nodes=2, gpus_per_node=1, experts_per_gpu=2,
                      src_node=torch.tensor([0, 1]))
    assert s["per_token"]["ib_copies"].tolist() == [0, 1]


def test_node_limit_savings_by_hand() -> None:
    # 6 experts on 3 nodes (1 GPU each), source on node 0, top-2.
    # M=1: node scores 0.2, 1.1, 1.5 -> node 2 only: 1 IB copy.
    # plain top-2: experts 2 (0.9) and 4 (0.8) -> nodes 1 and 2: 2 IB copies.
    aff = _t([[0.1, 0.1, 0.9, 0.2, 0.8, 0.7]])
    s = node_limit_savings(aff, None, n_nodes=3, gpus_per_node=1, top_k=2, max_nodes=1,
                           src_node=0, bytes_per_token=100)
    assert s["ib_copies_limited"] == 1 and s["ib_copies_unlimited"] == 2
    assert s["ib_bytes_saved"] == 100 and s["saved_fraction"] == 0.5
