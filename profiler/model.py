"""A miniature DeepSeek-V3 block (attention-lite + MoE) for reference workloads.

One block: ``h = x + attn(norm1(x))``, ``u = norm2(h)``, ``y = h + shared(u) +
routed(u)``, where ``routed`` sends each token to ``top_k`` of ``n_experts``
SwiGLU experts chosen by the node-limited sigmoid gate (routing.py) and sums
their outputs weighted by the gate. Small (hidden 64 by default) so CPU runs are
quick, and deterministic from a seed: every parameter is drawn from a generator
keyed by (seed, stage, block, part), in float64 and then cast, so a rank that
builds only its own experts gets exactly the values a single process building
all of them gets.

Two modes, one code path:

* **reference** (``ep=None``): all experts local; the "dispatch" is a
  :class:`~overlapscope.profiler.dispatch.LocalPlan` that imitates the
  distributed row order and summation order;
* **expert-parallel** (``ep=EPGroup``): only this rank's experts; dispatch and
  combine are the two-hop exchanges of dispatch.py.

The pieces a DualPipe-style overlapped chunk needs are separate methods of
:class:`MoEBlock`: ``attn_forward`` (attention + gate), ``dispatch_forward``,
``mlp_forward`` (+ ``shared_forward``), ``combine_forward``, ``finish``.
:func:`build_stage` builds pipeline stage ``s`` of ``n`` (``blocks_per_stage``
blocks; the last stage adds a norm + linear head and is scored with
:func:`stage_loss`).

Overlapped chunk, by hand (``comm`` = the rank's comm stream)::

    a = block.attn_forward(x)                                  # attn(F)
    r = comm.submit(block.dispatch_forward, a).result()        # dispatch(F)
    partial = block.mlp_forward(r); s = block.shared_forward(a)  # mlp(F)
    c = comm.submit(block.combine_forward, r, partial).result()  # combine(F)
    y = block.finish(a, s, c)

An EP-sharded stage for rank ``r`` of EP group ``ranks``::

    ep = make_ep_group(topology, ranks, r, cfg.n_experts, group=pg, hook=session)
    stage = build_stage(cfg.for_ep(ep.layout.shape), s, n, seed, ep)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from overlapscope.profiler.dispatch import (
    DispatchPlan,
    EPGroup,
    EPShape,
    LocalPlan,
    build_plan,
    two_hop_combine,
    two_hop_dispatch,
)
from overlapscope.profiler.routing import node_limit_stats, node_limited_topk

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the miniature model. ``ep_nodes`` x ``ep_gpus_per_node`` is the EP group
    the experts are sharded over (routing's node limit works on those nodes)."""

    hidden: int = 64
    n_heads: int = 4
    expert_ffn: int = 64
    shared_ffn: int = 128
    n_experts: int = 8
    top_k: int = 4
    max_nodes: int = 1
    ep_nodes: int = 2
    ep_gpus_per_node: int = 2
    node_score: str = "sum_topk"
    blocks_per_stage: int = 1
    gate_bias_std: float = 0.02
    norm_eps: float = 1e-6
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig: dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        if self.hidden % self.n_heads:
            raise ValueError(f"ModelConfig: hidden {self.hidden} is not divisible by "
                             f"n_heads {self.n_heads}")
        EPShape(self.ep_nodes, self.ep_gpus_per_node, self.n_experts)  # raises if uneven
        per_node = self.n_experts // self.ep_nodes
        if not 1 <= self.max_nodes <= self.ep_nodes:
            raise ValueError(f"ModelConfig: max_nodes {self.max_nodes} must be in "
                             f"1..{self.ep_nodes}")
        if not 1 <= self.top_k <= self.max_nodes * per_node:
            raise ValueError(f"ModelConfig: top_k {self.top_k} must be in "
                             f"1..{self.max_nodes * per_node} (max_nodes x experts per node)")
        if self.blocks_per_stage < 1:
            raise ValueError("ModelConfig: blocks_per_stage must be >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def ep_shape(self) -> EPShape:
        return EPShape(self.ep_nodes, self.ep_gpus_per_node, self.n_experts)

    def for_ep(self, shape: EPShape) -> ModelConfig:
        """A copy whose expert placement is ``shape`` (the EP group's nodes x GPUs)."""
        return replace(self, ep_nodes=shape.n_nodes, ep_gpus_per_node=shape.gpus_per_node,
                       max_nodes=min(self.max_nodes, shape.n_nodes))

    def with_(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a workload config dict; unknown keys are refused with their names."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# --------------------------------------------------------------------------- seeding


def _mix(*parts: int) -> int:
    """Stable 63-bit seed from integers (splitmix64 steps; Python's hash is salted)."""
    state = 0x9E3779B97F4A7C15
    for p in parts:
        state = (state ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
        state = state * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 29
    return state & 0x7FFFFFFFFFFFFFFF


def _randn(shape: tuple[int, ...], std: float, dtype: torch.dtype, *key: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_mix(*key))
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype)


def _linear(fan_in: int, fan_out: int, dtype: torch.dtype, *key: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out, bias=False, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(_randn((fan_out, fan_in), 1.0 / math.sqrt(fan_in), dtype, *key))
    return layer


# part ids inside a block's key
_ATTN_QKV, _ATTN_OUT, _GATE, _GATE_BIAS, _SHARED, _EXPERT, _HEAD = 1, 2, 3, 4, 5, 6, 7


# --------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (initialised to 1)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class AttentionLite(nn.Module):
    """Causal multi-head self-attention without rotary or low-rank projections."""

    def __init__(self, cfg: ModelConfig, *key: int) -> None:
        super().__init__()
        dt = cfg.torch_dtype
        self.n_heads = cfg.n_heads
        self.qkv = _linear(cfg.hidden, 3 * cfg.hidden, dt, *key, _ATTN_QKV)
        self.out = _linear(cfg.hidden, cfg.hidden, dt, *key, _ATTN_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, h // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.n_heads)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.out((probs @ v).transpose(1, 2).reshape(b, s, h))


class Expert(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, ffn: int, dtype: torch.dtype, *key: int) -> None:
        super().__init__()
        self.gate = _linear(hidden, ffn, dtype, *key, 1)
        self.up = _linear(hidden, ffn, dtype, *key, 2)
        self.down = _linear(ffn, hidden, dtype, *key, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Gate(nn.Module):
    """Sigmoid router with a selection-only bias buffer (V3 auxiliary-loss-free balancing)."""

    def __init__(self, cfg: ModelConfig, *key: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = _linear(cfg.hidden, cfg.n_experts, cfg.torch_dtype, *key, _GATE)
        self.register_buffer("bias", _randn((cfg.n_experts,), cfg.gate_bias_std,
                                            cfg.torch_dtype, *key, _GATE_BIAS))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u`` [N, hidden] -> (topk_ids int64 [N, k], topk_weights [N, k])."""
        ids, w, _ = self.route(u)
        return ids, w

    def route(self, u: torch.Tensor, *, unlimited: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Like :meth:`forward`, plus (with ``unlimited``) the ids the same gate picks
        without the node limit (no gradient; for routing statistics), else None."""
        c = self.cfg
        affinity = torch.sigmoid(self.proj(u))
        ids, w = node_limited_topk(affinity, self.bias, n_nodes=c.ep_nodes, top_k=c.top_k,
                                   max_nodes=c.max_nodes, node_score=c.node_score)
        free = None
        if unlimited:
            # the NumPy twin of the gate (same rule and tie-breaking) on the biased scores,
            # so the statistics add no operator to a profiled trace
            from overlapscope.profiler.warps.plan import node_limited_topk as np_topk

            biased = (affinity.detach() + self.bias.to(affinity.dtype)).cpu().numpy()
            free = torch.from_numpy(np_topk(biased, n_nodes=c.ep_nodes, top_k=c.top_k,
                                            max_nodes=c.ep_nodes, node_score=c.node_score))
        return ids, w, free


@dataclass
class AttnOut:
    """Output of :meth:`MoEBlock.attn_forward`: residual ``h`` [B, S, H], normed tokens
    ``u`` [B*S, H] and the gate's choice."""

    h: torch.Tensor
    u: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    unlimited_ids: torch.Tensor | None = None  # the gate's choice without the node limit


@dataclass
class Routed:
    """Tokens after dispatch: ``recv_x`` [R, H], ``recv_w`` [R, k] gate weights,
    ``recv_ids`` [R, k] global expert ids, and the plan that brought them."""

    plan: DispatchPlan | LocalPlan
    recv_x: torch.Tensor
    recv_w: torch.Tensor
    recv_ids: torch.Tensor


def experts_partial(recv_x: torch.Tensor, recv_ids: torch.Tensor, recv_w: torch.Tensor,
                    experts: nn.ModuleList, first_expert: int) -> torch.Tensor:
    """Σ over this rank's experts (ascending id) of gate weight x expert output, per row.

    Rows that hit none of ``experts`` get zeros. Shapes: [R, H], [R, k], [R, k] -> [R, H].
    """
    partial = torch.zeros_like(recv_x)
    for j, expert in enumerate(experts):
        hit = recv_ids == first_expert + j
        rows = torch.nonzero(hit.any(1), as_tuple=False).reshape(-1)
        if rows.numel() == 0:
            continue
        slot = hit[rows].to(torch.int8).argmax(1, keepdim=True)
        weight = recv_w[rows].gather(1, slot)
        partial = partial.index_add(0, rows, expert(recv_x[rows]) * weight)
    return partial


class MoEBlock(nn.Module):
    """One DeepSeek-V3-style block; reference mode when ``ep`` is None."""

    def __init__(self, cfg: ModelConfig, seed: int, stage: int, block: int,
                 ep: EPGroup | None = None) -> None:
        super().__init__()
        self.cfg, self.ep = cfg, ep
        dt = cfg.torch_dtype
        key = (seed, stage, block)
        self.norm1 = RMSNorm(cfg.hidden, cfg.norm_eps, dt)
        self.attn = AttentionLite(cfg, *key)
        self.norm2 = RMSNorm(cfg.hidden, cfg.norm_eps, dt)
        self.gate = Gate(cfg, *key)
        self.shared = Expert(cfg.hidden, cfg.shared_ffn, dt, *key, _SHARED)
        if ep is None:
            first, count = 0, cfg.n_experts
        else:
            shape = ep.layout.shape
            if shape != cfg.ep_shape:
                raise ValueError(f"MoEBlock: EP group shape {shape} does not match the config "
                                 f"({cfg.ep_nodes} nodes x {cfg.ep_gpus_per_node} GPUs, "
                                 f"{cfg.n_experts} experts)")
            first, count = ep.layout.first_expert, shape.experts_per_rank
        self.first_expert = first
        self.experts = nn.ModuleList(
            Expert(cfg.hidden, cfg.expert_ffn, dt, *key, _EXPERT, e)
            for e in range(first, first + count)
        )

    # -- pieces ---------------------------------------------------------------------------

    def _wants_routing_stats(self) -> bool:
        return self.ep is not None and callable(getattr(self.ep.hook, "record_routing", None))

    def attn_forward(self, x: torch.Tensor) -> AttnOut:
        """Attention + residual, then the MoE input norm and the gate."""
        h = x + self.attn(self.norm1(x))
        u = self.norm2(h).reshape(-1, h.shape[-1])
        ids, w, free = self.gate.route(u, unlimited=self._wants_routing_stats())
        return AttnOut(h, u, ids, w, free)

    def _record_routing(self, a: AttnOut, row_bytes: int) -> None:
        """Report what the node limit did to this batch to the EP group's hook."""
        if a.unlimited_ids is None or not self._wants_routing_stats():
            return
        lay = self.ep.layout
        self.ep.hook.record_routing(node_limit_stats(  # type: ignore[union-attr]
            a.topk_ids, a.unlimited_ids, n_nodes=lay.shape.n_nodes,
            gpus_per_node=lay.shape.gpus_per_node, experts_per_gpu=lay.shape.experts_per_rank,
            src_node=lay.node, src_local=lay.local, bytes_per_token=row_bytes,
            max_nodes=self.cfg.max_nodes))

    def dispatch_forward(self, a: AttnOut, *, phase: str | None = "dispatch(F)",
                         backward_phase: str | None = "dispatch(B)") -> Routed:
        """Build the plan (layout exchange) and send tokens + gate weights to their experts."""
        if self.ep is None:
            plan: DispatchPlan | LocalPlan = LocalPlan(a.topk_ids, self.cfg.ep_shape)
        else:
            plan = build_plan(a.topk_ids, self.ep, phase=phase)
        payload = torch.cat([a.u, a.topk_weights.to(a.u.dtype)], 1)
        if phase is not None:  # forward dispatches only (tests re-dispatch with phase=None)
            self._record_routing(a, payload.shape[1] * payload.element_size())
        recv = two_hop_dispatch(plan, payload, phase=phase, backward_phase=backward_phase)
        hidden = a.u.shape[1]
        return Routed(plan, recv[:, :hidden], recv[:, hidden:], plan.recv_ids)

    def mlp_forward(self, r: Routed) -> torch.Tensor:
        """Weighted expert outputs per received row, [R, H] (routed experts only)."""
        if self.ep is not None:
            return experts_partial(r.recv_x, r.recv_ids, r.recv_w, self.experts,
                                   self.first_expert)
        per = self.cfg.ep_shape.experts_per_rank
        parts = []
        for q, s, e in r.plan.segments:  # one segment per virtual EP rank
            parts.append(experts_partial(r.recv_x[s:e], r.recv_ids[s:e], r.recv_w[s:e],
                                         self.experts[q * per:(q + 1) * per], q * per))
        return torch.cat(parts)

    def shared_forward(self, a: AttnOut) -> torch.Tensor:
        """Shared expert on this rank's own tokens, [N, H]."""
        return self.shared(a.u)

    def combine_forward(self, r: Routed, partial: torch.Tensor, *,
                        phase: str | None = "combine(F)",
                        backward_phase: str | None = "combine(B)") -> torch.Tensor:
        """Return the partial rows to their source tokens and sum them, [N, H]."""
        return two_hop_combine(r.plan, partial, phase=phase, backward_phase=backward_phase)

    @staticmethod
    def finish(a: AttnOut, shared: torch.Tensor, combined: torch.Tensor) -> torch.Tensor:
        """Block output ``h + shared + routed``, [B, S, H]."""
        return a.h + (shared + combined).view_as(a.h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_forward(x)
        r = self.dispatch_forward(a)
        partial = self.mlp_forward(r)
        shared = self.shared_forward(a)
        return self.finish(a, shared, self.combine_forward(r, partial))


class Stage(nn.Module):
    """Pipeline stage ``stage_index`` of ``n_stages``: blocks, plus a head on the last one."""

    def __init__(self, cfg: ModelConfig, stage_index: int, n_stages: int, seed: int,
                 ep: EPGroup | None = None) -> None:
        super().__init__()
        if not 0 <= stage_index < n_stages:
            raise ValueError(f"Stage: stage_index {stage_index} must be in 0..{n_stages - 1}")
        self.cfg, self.stage_index, self.n_stages = cfg, stage_index, n_stages
        self.blocks = nn.ModuleList(MoEBlock(cfg, seed, stage_index, b, ep)
                                    for b in range(cfg.blocks_per_stage))
        self.is_last = stage_index == n_stages - 1
        if self.is_last:
            self.final_norm = RMSNorm(cfg.hidden, cfg.norm_eps, cfg.torch_dtype)
            self.head = _linear(cfg.hidden, cfg.hidden, cfg.torch_dtype, seed, stage_index,
                                -1, _HEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, hidden] -> [B, S, hidden] (the head's output on the last stage)."""
        for block in self.blocks:
            x = block(x)
        if self.is_last:
            x = self.head(self.final_norm(x))
        return x


def build_stage(cfg: ModelConfig, stage_index: int, n_stages: int, seed: int,
                ep: EPGroup | None = None) -> Stage:
    """Pipeline stage ``stage_index`` of ``n_stages``; identical weights on every rank
    for the same (cfg, seed, stage); ``ep`` shards its routed experts."""
    return Stage(cfg, stage_index, n_stages, seed, ep)


def build_model(cfg: ModelConfig, n_stages: int, seed: int) -> nn.Sequential:
    """All stages in one process (the single-process reference of a pipeline)."""
    return nn.Sequential(*(build_stage(cfg, s, n_stages, seed) for s in range(n_stages)))


def stage_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of the last stage: mean squared error (a scalar)."""
    return F.mse_loss(output, target)


def make_batch(cfg: ModelConfig, batch: int, seq: int, seed: int,
               index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic micro-batch ``index``: inputs and targets, both [batch, seq, hidden]."""
    shape = (batch, seq, cfg.hidden)
    return (_randn(shape, 1.0, cfg.torch_dtype, seed, index, 101),
            _randn(shape, 1.0, cfg.torch_dtype, seed, index, 102))
