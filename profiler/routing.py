"""DeepSeek-V3 node-limited top-k routing and its traffic statistics.

Experts are split into equal contiguous blocks per node (expert ``e`` lives on
node ``e // (E // n_nodes)``) and, inside a node, per GPU. The gate (V3 §2.1.2):

1. ``affinity`` = sigmoid of the gate logits (given, shape [T, E]);
2. selection uses the *biased* score ``affinity + bias`` (the load-balancing
   bias never reaches the output);
3. each node gets a score — V3's rule "sum_topk" sums the node's best
   ``top_k // max_nodes`` biased scores; "max" takes the best one (DeepEP's test);
   or any callable;
4. the best ``max_nodes`` nodes are kept, and the ``top_k`` best experts among
   them by biased score are chosen;
5. the weights are the chosen *unbiased* affinities normalised to sum 1.

Every selection breaks ties deterministically: the lower index wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

NodeScore = Callable[[torch.Tensor, int, int], torch.Tensor]


def _stable_top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dim, ties to the lower index."""
    # A stable descending sort keeps equal values in index order; torch.topk does not promise it.
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]


def _sum_topk_score(biased: torch.Tensor, top_k: int, max_nodes: int) -> torch.Tensor:
    per_node = max(1, min(top_k // max_nodes, biased.shape[-1]))
    return torch.sort(biased, dim=-1, descending=True, stable=True).values[..., :per_node].sum(-1)


def _max_score(biased: torch.Tensor, top_k: int, max_nodes: int) -> torch.Tensor:
    return biased.max(dim=-1).values


NODE_SCORES: dict[str, NodeScore] = {"sum_topk": _sum_topk_score, "max": _max_score}


def node_limited_topk(
    affinity: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    n_nodes: int,
    top_k: int,
    max_nodes: int,
    node_score: str | NodeScore = "sum_topk",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``top_k`` experts per token from at most ``max_nodes`` nodes.

    ``affinity`` [T, E] are sigmoid scores, ``bias`` [E] (or None) is added for
    selection only. Returns ``(topk_ids, topk_weights)``, both [T, top_k]: ids as
    int64 ordered by decreasing biased score, weights in ``affinity``'s dtype,
    summing to 1 per token and differentiable with respect to ``affinity``.
    """
    if affinity.dim() != 2:
        raise ValueError(f"node_limited_topk: affinity must be [tokens, experts], got shape "
                         f"{tuple(affinity.shape)}")
    n_tokens, n_experts = affinity.shape
    if n_nodes < 1 or n_experts % n_nodes:
        raise ValueError(f"node_limited_topk: {n_experts} experts cannot be split evenly over "
                         f"n_nodes={n_nodes}")
    per_node = n_experts // n_nodes
    if not 1 <= max_nodes <= n_nodes:
        raise ValueError(f"node_limited_topk: max_nodes={max_nodes} must be in 1..{n_nodes}")
    if not 1 <= top_k <= max_nodes * per_node:
        raise ValueError(f"node_limited_topk: top_k={top_k} must be in 1..{max_nodes * per_node} "
                         f"(max_nodes x experts per node)")
    if bias is not None and tuple(bias.shape) != (n_experts,):
        raise ValueError(f"node_limited_topk: bias must have shape ({n_experts},), got "
                         f"{tuple(bias.shape)}")
    if isinstance(node_score, str):
        if node_score not in NODE_SCORES:
            raise ValueError(f"node_limited_topk: unknown node_score {node_score!r}; use one of "
                             f"{sorted(NODE_SCORES)} or a callable")
        score_fn = NODE_SCORES[node_score]
    else:
        score_fn = node_score

    with torch.no_grad():
        biased = affinity.detach() if bias is None else affinity.detach() + bias.to(affinity.dtype)
        grouped = biased.view(n_tokens, n_nodes, per_node)
        scores = score_fn(grouped, top_k, max_nodes)
        if tuple(scores.shape) != (n_tokens, n_nodes):
            raise ValueError(f"node_limited_topk: node score returned shape {tuple(scores.shape)},"
                             f" expected ({n_tokens}, {n_nodes})")
        keep_nodes = _stable_top(scores, max_nodes)
        node_mask = torch.zeros(n_tokens, n_nodes, dtype=torch.bool, device=affinity.device)
        node_mask.scatter_(1, keep_nodes, True)
        expert_mask = node_mask.repeat_interleave(per_node, dim=1)
        masked = biased.masked_fill(~expert_mask, float("-inf"))
        topk_ids = _stable_top(masked, top_k)
    chosen = affinity.gather(1, topk_ids)
    return topk_ids, chosen / chosen.sum(dim=1, keepdim=True)


def _per_token(value: int | torch.Tensor, n_tokens: int, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        out = value.to(device=device, dtype=torch.long).reshape(-1)
        if out.numel() == 1:
            return out.expand(n_tokens)
        if out.numel() != n_tokens:
            raise ValueError(f"routing_stats: expected {n_tokens} source values, got {out.numel()}")
        return out
    return torch.full((n_tokens,), int(value), dtype=torch.long, device=device)


def routing_stats(
    topk_ids: torch.Tensor,
    *,
    n_nodes: int,
    gpus_per_node: int,
    experts_per_gpu: int,
    src_node: int | torch.Tensor,
    src_local: int | torch.Tensor | None = None,
) -> dict[str, Any]:
    """Traffic shape of a batch of routed tokens (BRIEF §4 item 10, in copies).

    For token t let nodes(t) be its destination nodes and g(t, n) its distinct
    destination GPUs on node n. Returns floats (means over tokens unless said):
    ``nodes_per_token`` (|nodes(t)|), ``max_nodes_per_token``, ``gpus_per_node``
    (mean g over (token, touched node) pairs), ``gpus_per_token`` (Σ_n g),
    ``ib_copies_per_token`` (|nodes(t) \\ {own node}|: one IB copy per remote
    node), and, when ``src_local`` is given, ``nvl_copies_per_token``
    (Σ_n g(t,n) − s(t,n), s = 1 when node n's GPU with the source's local index
    is a destination, since the IB copy lands there) and ``nvl_per_ib``. Plus
    ``tokens`` and ``per_token`` (a dict of int64 tensors [T]: ``nodes``,
    ``gpus``, ``ib_copies`` and, with ``src_local``, ``nvl_copies``).
    Multiply copies by the bytes of one token slot to get bytes.
    """
    if topk_ids.dim() != 2:
        raise ValueError("routing_stats: topk_ids must be [tokens, k]")
    n_tokens = topk_ids.shape[0]
    dev = topk_ids.device
    n_gpus = n_nodes * gpus_per_node
    gpu = topk_ids.long() // experts_per_gpu
    if n_tokens and (gpu.min() < 0 or gpu.max() >= n_gpus):
        raise ValueError(f"routing_stats: expert ids must be in 0..{n_gpus * experts_per_gpu - 1}")
    gpu_hit = torch.zeros(n_tokens, n_gpus, dtype=torch.bool, device=dev)
    gpu_hit.scatter_(1, gpu, True)
    per_node_gpus = gpu_hit.view(n_tokens, n_nodes, gpus_per_node).sum(-1)  # g(t, n)
    node_hit = per_node_gpus > 0
    nodes = node_hit.sum(-1)
    own = _per_token(src_node, n_tokens, dev)
    ib = nodes - node_hit.gather(1, own[:, None]).squeeze(1).long()
    per_token: dict[str, torch.Tensor] = {
        "nodes": nodes, "gpus": per_node_gpus.sum(-1), "ib_copies": ib,
    }

    def mean(t: torch.Tensor) -> float:
        return float(t.double().mean()) if t.numel() else 0.0

    out: dict[str, Any] = {
        "tokens": n_tokens,
        "nodes_per_token": mean(nodes),
        "max_nodes_per_token": int(nodes.max()) if n_tokens else 0,
        "gpus_per_node": mean(per_node_gpus[node_hit]),
        "gpus_per_token": mean(per_token["gpus"]),
        "ib_copies_per_token": mean(ib),
    }
    if src_local is not None:
        local = _per_token(src_local, n_tokens, dev)
        lands = gpu_hit.view(n_tokens, n_nodes, gpus_per_node).gather(
            2, local[:, None, None].expand(n_tokens, n_nodes, 1)
        ).squeeze(2)
        nvl = (per_node_gpus - lands.long()).sum(-1)
        per_token["nvl_copies"] = nvl
        out["nvl_copies_per_token"] = mean(nvl)
        ib_total = float(ib.sum())
        out["nvl_per_ib"] = float(nvl.sum()) / ib_total if ib_total else float("nan")
    out["per_token"] = per_token
    return out


def node_limit_savings(
    affinity: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    n_nodes: int,
    gpus_per_node: int,
    top_k: int,
    max_nodes: int,
    src_node: int | torch.Tensor,
    bytes_per_token: int,
    node_score: str | NodeScore = "sum_topk",
) -> dict[str, float]:
    """IB traffic the node limit ``max_nodes`` saves against plain top-k routing.

    Plain top-k is the same gate with ``max_nodes = n_nodes``. Returns
    ``ib_copies_limited`` / ``ib_copies_unlimited`` (totals over the batch),
    the matching ``ib_bytes_limited`` / ``ib_bytes_unlimited`` (copies x
    ``bytes_per_token``), ``ib_bytes_saved`` and ``saved_fraction``.
    """
    n_experts = affinity.shape[1]
    experts_per_gpu = n_experts // (n_nodes * gpus_per_node)
    if experts_per_gpu * n_nodes * gpus_per_node != n_experts:
        raise ValueError(f"node_limit_savings: {n_experts} experts do not split evenly over "
                         f"{n_nodes} x {gpus_per_node} GPUs")
    totals = {}
    for label, m in (("limited", max_nodes), ("unlimited", n_nodes)):
        ids, _ = node_limited_topk(affinity, bias, n_nodes=n_nodes, top_k=top_k, max_nodes=m,
                                   node_score=node_score)
        stats = routing_stats(ids, n_nodes=n_nodes, gpus_per_node=gpus_per_node,
                              experts_per_gpu=experts_per_gpu, src_node=src_node)
        totals[label] = int(stats["per_token"]["ib_copies"].sum())
    limited, unlimited = totals["limited"], totals["unlimited"]
    return {
        "ib_copies_limited": float(limited),
        "ib_copies_unlimited": float(unlimited),
        "ib_bytes_limited": float(limited * bytes_per_token),
        "ib_bytes_unlimited": float(unlimited * bytes_per_token),
        "ib_bytes_saved": float((unlimited - limited) * bytes_per_token),
        "saved_fraction": (unlimited - limited) / unlimited if unlimited else 0.0,
    }


#: Keys of :func:`node_limit_stats` that are counts (summed over dispatches by a session).
ROUTING_COUNT_KEYS = (
    "dispatches", "tokens", "tokens_redirected", "tokens_over_limit",
    "ib_copies", "ib_copies_unlimited", "ib_bytes", "ib_bytes_unlimited", "ib_bytes_saved",
    "nvl_copies", "nvl_copies_unlimited", "nvl_bytes", "nvl_bytes_unlimited",
)


def _copies_np(ids: Any, n_nodes: int, gpus_per_node: int, experts_per_gpu: int,
               src_node: int, src_local: int) -> tuple[Any, Any, Any]:
    """Per token (NumPy): destination nodes, IB copies, NVLink copies (BRIEF §4.10)."""
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    t = ids.shape[0]
    hit = np.zeros((t, n_nodes * gpus_per_node), dtype=bool)
    hit[np.repeat(np.arange(t), ids.shape[1]), (ids // experts_per_gpu).reshape(-1)] = True
    hit3 = hit.reshape(t, n_nodes, gpus_per_node)
    per_node = hit3.sum(-1)
    node_hit = per_node > 0
    nodes = node_hit.sum(-1)
    ib = nodes - node_hit[:, src_node]
    nvl = (per_node - hit3[:, :, src_local]).sum(-1)
    return nodes, ib, nvl


def node_limit_stats(
    limited_ids: Any,
    unlimited_ids: Any,
    *,
    n_nodes: int,
    gpus_per_node: int,
    experts_per_gpu: int,
    src_node: int,
    src_local: int,
    bytes_per_token: int,
    max_nodes: int,
) -> dict[str, Any]:
    """What the node limit did to one source rank's batch (counts, JSON-ready ints).

    ``limited_ids`` are the gate's choice under the limit ``max_nodes``, ``unlimited_ids``
    the same gate's choice with no limit (``max_nodes = n_nodes``), both [T, k] (tensors
    or arrays; computed in NumPy so no operator lands in a profiled trace).
    ``tokens_redirected``: tokens whose expert set the limit changed;
    ``tokens_over_limit``: tokens whose unlimited choice spans more than ``max_nodes``
    nodes; ``ib_copies`` / ``nvl_copies`` (and ``*_unlimited``): hop-1 copies to remote
    nodes and hop-2 copies to other GPUs (the forwarder's copy to itself is local, BRIEF
    §4.10); bytes = copies x ``bytes_per_token``; ``ib_bytes_saved`` = unlimited -
    limited IB bytes. ``dispatches`` is 1 (a session sums these dicts).
    """
    import numpy as np

    def arr(x: Any) -> Any:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    lim_ids, free_ids = arr(limited_ids).astype(np.int64), arr(unlimited_ids).astype(np.int64)
    common = (n_nodes, gpus_per_node, experts_per_gpu, src_node, src_local)
    _, ib_l, nvl_l = _copies_np(lim_ids, *common)
    nodes_u, ib_u, nvl_u = _copies_np(free_ids, *common)
    same = (np.sort(lim_ids, axis=1) == np.sort(free_ids, axis=1)).all(axis=1)
    ib, ibu, nvl, nvlu = (int(v.sum()) for v in (ib_l, ib_u, nvl_l, nvl_u))
    b = int(bytes_per_token)
    return {
        "dispatches": 1,
        "tokens": int(lim_ids.shape[0]),
        "tokens_redirected": int((~same).sum()),
        "tokens_over_limit": int((nodes_u > max_nodes).sum()),
        "ib_copies": ib, "ib_copies_unlimited": ibu,
        "ib_bytes": ib * b, "ib_bytes_unlimited": ibu * b, "ib_bytes_saved": (ibu - ib) * b,
        "nvl_copies": nvl, "nvl_copies_unlimited": nvlu,
        "nvl_bytes": nvl * b, "nvl_bytes_unlimited": nvlu * b,
        "max_nodes": int(max_nodes), "nodes": int(n_nodes),
        "bytes_per_token": b,
    }
