"""Dispatch layout: who gets which token, in which channel, at which output row.

The equivalent of DeepEP's ``get_dispatch_layout`` + ``notify_dispatch``: from
the top-k expert ids it derives per-GPU and per-node destination masks (the
dedup: one IB copy per destination node, one NVLink copy per destination GPU),
contiguous per-channel token ranges split into chunks, and each token's row in
each destination GPU's output (source order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overlapscope.profiler.warps.config import DispatchConfig


@dataclass(frozen=True)
class DispatchPlan:
    """Layout of one source rank's dispatch.

    ``dest`` [T, W] bool: token t goes to global rank d (deduplicated per GPU).
    ``dest3`` the same viewed as [T, nodes, gpus_per_node]; ``node_mask`` [T, nodes].
    ``out_pos`` [T, W] int64: row of token t in rank d's output (valid where dest).
    ``channel_start`` / ``channel_end``: token range of each channel.
    """

    topk_ids: np.ndarray
    dest: np.ndarray
    dest3: np.ndarray
    node_mask: np.ndarray
    out_pos: np.ndarray
    out_count: np.ndarray
    channel_start: np.ndarray
    channel_end: np.ndarray
    chunk_tokens: int

    def n_chunks(self, channel: int) -> int:
        n = int(self.channel_end[channel] - self.channel_start[channel])
        return -(-n // self.chunk_tokens)

    def chunk_range(self, channel: int, chunk: int) -> tuple[int, int]:
        a = int(self.channel_start[channel]) + chunk * self.chunk_tokens
        return a, min(a + self.chunk_tokens, int(self.channel_end[channel]))

    def locate(self, token: int) -> tuple[int, int]:
        """(channel, chunk) that carries ``token``."""
        c = int(np.searchsorted(self.channel_end, token, side="right"))
        return c, (token - int(self.channel_start[c])) // self.chunk_tokens


def make_plan(topk_ids: np.ndarray, cfg: DispatchConfig) -> DispatchPlan:
    """Build the layout for ``topk_ids`` ([T, k] expert ids, -1 = unused slot)."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"topk_ids must be [tokens, k], got shape {ids.shape}")
    t = ids.shape[0]
    w = cfg.world_size
    per_gpu = cfg.experts // w
    if ids.size and ids.max() >= cfg.experts:
        raise ValueError(f"expert id {int(ids.max())} >= experts ({cfg.experts})")
    dest = np.zeros((t, w), dtype=bool)
    rows = np.repeat(np.arange(t), ids.shape[1])
    flat = ids.reshape(-1)
    ok = flat >= 0
    dest[rows[ok], flat[ok] // per_gpu] = True
    dest3 = dest.reshape(t, cfg.nodes, cfg.gpus_per_node)
    node_mask = dest3.any(axis=2)
    out_pos = np.cumsum(dest, axis=0, dtype=np.int64) - 1
    out_count = dest.sum(axis=0, dtype=np.int64)
    per_channel = -(-t // cfg.channels)  # DeepEP's ceil split of tokens over channels
    start = np.minimum(np.arange(cfg.channels, dtype=np.int64) * per_channel, t)
    end = np.minimum(start + per_channel, t)
    return DispatchPlan(
        topk_ids=ids, dest=dest, dest3=dest3, node_mask=node_mask, out_pos=out_pos,
        out_count=out_count, channel_start=start, channel_end=end,
        chunk_tokens=cfg.chunk_tokens,
    )


def _stable_top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries along the last axis, ties to the lower index."""
    return np.argsort(-values, axis=-1, kind="stable")[..., :k]


def node_limited_topk(
    affinity: np.ndarray, *, n_nodes: int, top_k: int, max_nodes: int,
    node_score: str = "sum_topk",
) -> np.ndarray:
    """NumPy twin of ``overlapscope.profiler.routing.node_limited_topk`` (ids only, no bias).

    Same V3 rule and tie-breaking (lower index wins), so the emulator and ``tune-dispatch``
    need no torch; ``tests/unit/test_tune_dispatch_routing.py`` checks both gates agree.
    """
    n_tokens, n_experts = affinity.shape
    if n_nodes < 1 or n_experts % n_nodes:
        raise ValueError(f"{n_experts} experts cannot be split evenly over n_nodes={n_nodes}")
    per_node = n_experts // n_nodes
    if not 1 <= max_nodes <= n_nodes:
        raise ValueError(f"max_nodes={max_nodes} must be in 1..{n_nodes}")
    if not 1 <= top_k <= max_nodes * per_node:
        raise ValueError(f"top_k={top_k} must be in 1..{max_nodes * per_node} "
                         f"(max_nodes x experts per node)")
    grouped = affinity.reshape(n_tokens, n_nodes, per_node)
    if node_score == "sum_topk":
        keep = max(1, min(top_k // max_nodes, per_node))
        scores = -np.sort(-grouped, axis=-1, kind="stable")[..., :keep].sum(-1)
    elif node_score == "max":
        scores = grouped.max(axis=-1)
    else:
        raise ValueError(f"unknown node_score {node_score!r}; use 'sum_topk' or 'max'")
    keep_nodes = _stable_top(scores, max_nodes)
    node_mask = np.zeros((n_tokens, n_nodes), dtype=bool)
    np.put_along_axis(node_mask, keep_nodes, True, axis=1)
    masked = np.where(np.repeat(node_mask, per_node, axis=1), affinity, -np.inf)
    return _stable_top(masked, top_k).astype(np.int64)


def routed_topk(cfg: DispatchConfig) -> np.ndarray:
    """Node-limited top-k ids for random gate scores (seeded by ``cfg.seed``).

    Affinities are sigmoid(N(0, 1)) per (token, expert) from NumPy's PCG64 generator, no
    bias; the gate is :func:`node_limited_topk` (V3 rule). Pure NumPy: no torch needed.
    """
    rng = np.random.default_rng(cfg.seed)
    affinity = 1.0 / (1.0 + np.exp(-rng.standard_normal((cfg.tokens, cfg.experts))))
    return node_limited_topk(affinity, n_nodes=cfg.nodes, top_k=cfg.top_k,
                             max_nodes=cfg.max_nodes, node_score=cfg.node_score)


def routing_bytes(plan: DispatchPlan, cfg: DispatchConfig) -> tuple[int, int]:
    """(IB bytes, NVLink bytes) the layout implies for one source rank.

    IB = S * sum_t |nodes(t) minus own node|; NVLink = S * sum_t sum_n (g(t, n) - s(t, n))
    with g the distinct destination GPUs of node n and s = 1 when node n's GPU with the
    source's local index is one of them: that copy is the forwarder's copy to itself,
    local, not NVLink (BRIEF §4.10; the torch path and the CUDA kernel count the same;
    the H200 fixture kernel counted it as NVLink).
    """
    remote = plan.node_mask.sum() - plan.node_mask[:, cfg.src_node].sum()
    return int(remote) * cfg.token_bytes, nvl_copies(plan, cfg) * cfg.token_bytes


def nvl_copies(plan: DispatchPlan, cfg: DispatchConfig) -> int:
    """Forwarded copies that cross NVLink: destination GPUs minus the forwarders' own."""
    own = int(plan.dest3[:, :, cfg.src_rank % cfg.gpus_per_node].sum())
    return int(plan.dest.sum()) - own
