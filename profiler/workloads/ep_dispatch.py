"""``ep-dispatch``: forward + backward of one MoE block with two-hop dispatch/combine.

Expert parallelism over the whole world (e.g. 2 nodes x 4 GPUs = EP8); every rank
holds ``experts_per_rank`` routed experts of a miniature DeepSeek-V3 block
(model.py). Each step splits the rank's tokens into ``micro_batches`` chunks and
pipelines them so communication on the comm thread overlaps compute on the main
thread, with DeepSeek's phase names as annotations::

    main thread:  attn(F)  mlp(F)                         mlp(B)            attn(B)
    comm thread:        dispatch(F)  combine(F)  combine(B)      dispatch(B)

(chunk c's dispatch runs while chunk c-1's MLP computes, and so on). Traffic of
every exchange is recorded through ``session.record_traffic`` (IB / NVLink /
local bytes per destination rank). Autograd is cut at each phase boundary
(detached leaves) so each phase's backward runs on its own, in the order of a
V3 backward chunk: combine(B), mlp(B), dispatch(B), attn(B).

Config keys (from the launcher, all optional): ``steps`` (2), ``micro_batches``
(chunks per step, 2), ``seed`` (0), and extras ``batch`` (sequences per chunk, 2),
``seq`` (16), ``hidden`` (64), ``experts_per_rank`` (2), ``top_k`` (4),
``max_nodes`` (nodes // 2, at least 1), ``node_score`` ("sum_topk"),
``dtype`` ("float32"), ``lr`` (SGD learning rate, 1e-3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from overlapscope.profiler.dispatch import EPGroup, EPLayout, TrafficLog
from overlapscope.profiler.model import AttnOut, ModelConfig, MoEBlock, Routed, make_batch
from overlapscope.profiler.routing import routing_stats


class _Tee:
    """Forwards traffic records to the session and keeps a copy for the run facts."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.log = TrafficLog()

    def record_traffic(self, *args: Any, **kwargs: Any) -> None:
        self.log.record_traffic(*args, **kwargs)
        self.session.record_traffic(*args, **kwargs)

    def record_routing(self, stats: dict[str, Any]) -> None:
        self.log.record_routing(stats)
        fn = getattr(self.session, "record_routing", None)
        if fn is not None:
            fn(stats)


def model_config(cfg: dict[str, Any]) -> ModelConfig:
    """The MoE block's config for a world of ``nodes`` x ``gpus_per_node`` EP ranks."""
    nodes, gpn = int(cfg.get("nodes", 1)), int(cfg.get("gpus_per_node", 1))
    hidden = int(cfg.get("hidden", 64))
    return ModelConfig(
        hidden=hidden,
        n_heads=4 if hidden % 4 == 0 else 1,
        expert_ffn=hidden,
        shared_ffn=2 * hidden,
        n_experts=int(cfg.get("experts_per_rank", 2)) * nodes * gpn,
        top_k=int(cfg.get("top_k", 4)),
        max_nodes=int(cfg.get("max_nodes", max(1, nodes // 2))),
        ep_nodes=nodes,
        ep_gpus_per_node=gpn,
        node_score=str(cfg.get("node_score", "sum_topk")),
        dtype=str(cfg.get("dtype", "float32")),
    )


def validate(cfg: dict[str, Any]) -> None:
    """Refuse a config this workload cannot run (ValueError saying why)."""
    pp = cfg.get("pp")
    if pp not in (None, 1):
        raise ValueError(f"ep-dispatch has no pipeline; pp must be 1, got {pp}")
    model_config(cfg)
    for key in ("steps", "micro_batches", "batch", "seq"):
        if key in cfg and int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")


@dataclass
class _Chunk:
    """One chunk's tensors, cut at every phase boundary (detached leaves end in ``_d``)."""

    x: torch.Tensor
    target: torch.Tensor
    a: AttnOut | None = None
    a_d: AttnOut | None = None
    routed: Routed | None = None
    routed_d: Routed | None = None
    partial: torch.Tensor | None = None
    partial_d: torch.Tensor | None = None
    shared: torch.Tensor | None = None
    shared_d: torch.Tensor | None = None
    combined: torch.Tensor | None = None
    combined_d: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def run(ctx: Any, session: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the workload on one rank; returns per-rank facts for run.json."""
    validate(cfg)
    mcfg = model_config(cfg)
    steps = int(cfg.get("steps", 2))
    chunks = int(cfg.get("micro_batches", 2))
    batch, seq = int(cfg.get("batch", 2)), int(cfg.get("seq", 16))
    seed = int(cfg.get("seed", 0))
    if ctx.topology.world_size != ctx.world_size:
        raise ValueError(f"ep-dispatch: topology has {ctx.topology.world_size} ranks, "
                         f"world size is {ctx.world_size}")
    torch.manual_seed(seed)
    tee = _Tee(session)
    layout = EPLayout.build(ctx.topology, None, ctx.rank, mcfg.n_experts)
    group = ctx.comm_group if ctx.comm_group is not None else dist.new_group(
        list(range(ctx.world_size)))
    comm = ctx.comm_stream
    timeout = getattr(ctx, "timeout_s", 120.0)
    # every exchange (forward and backward halves) is issued on the comm stream
    ep = EPGroup(layout, group, tee, stream=comm, timeout_s=timeout)
    block = MoEBlock(mcfg, seed, 0, 0, ep).to(ctx.device)
    opt = torch.optim.SGD(block.parameters(), lr=float(cfg.get("lr", 1e-3)))

    def on_comm(phase: str, fn: Any, *args: Any) -> Any:
        def body() -> Any:
            with session.annotate(phase):
                return fn(*args)
        return comm.submit(body)

    losses, step_s = [], []
    nodes_per_token: list[float] = []
    for step in range(steps):
        t_step = time.perf_counter()
        data = [make_batch(mcfg, batch, seq, seed, (step * ctx.world_size + ctx.rank) * chunks + c)
                for c in range(chunks)]
        work = [_Chunk(x.to(ctx.device), t.to(ctx.device)) for x, t in data]
        # ---- forward: dispatch of chunk c overlaps attention / MLP of other chunks
        pending = []
        for w in work:
            with session.annotate("attn(F)"):
                w.a = block.attn_forward(w.x)
                w.a_d = AttnOut(_leaf(w.a.h), _leaf(w.a.u), w.a.topk_ids, _leaf(w.a.topk_weights),
                                w.a.unlimited_ids)
            pending.append(on_comm("dispatch(F)", block.dispatch_forward, w.a_d))
        combines = []
        for w, fut in zip(work, pending, strict=True):
            w.routed = fut.result(timeout)
            with session.annotate("mlp(F)"):
                r = w.routed
                w.routed_d = Routed(r.plan, _leaf(r.recv_x), _leaf(r.recv_w), r.recv_ids)
                w.partial = block.mlp_forward(w.routed_d)
                w.shared = block.shared_forward(w.a_d)
                w.partial_d = _leaf(w.partial)
            combines.append(on_comm("combine(F)", block.combine_forward, w.routed, w.partial_d))
        for w, fut in zip(work, combines, strict=True):
            w.combined = fut.result(timeout)
            w.combined_d, w.shared_d = _leaf(w.combined), _leaf(w.shared)
            y = block.finish(w.a_d, w.shared_d, w.combined_d)
            w.loss = torch.nn.functional.mse_loss(y, w.target) / chunks
            w.loss.backward()  # residual + loss only: grads of h, shared, combined
        # ---- backward, V3 order per chunk: combine(B), mlp(B), dispatch(B), attn(B)
        back = [on_comm("combine(B)", torch.autograd.backward, [w.combined],
                        [w.combined_d.grad]) for w in work]
        disp = []
        for w, fut in zip(work, back, strict=True):
            fut.result(timeout)
            with session.annotate("mlp(B)"):
                torch.autograd.backward([w.partial, w.shared], [w.partial_d.grad, w.shared_d.grad])
            rd = w.routed_d
            disp.append(on_comm("dispatch(B)", torch.autograd.backward,
                                [w.routed.recv_x, w.routed.recv_w], [rd.recv_x.grad,
                                                                     rd.recv_w.grad]))
        for w, fut in zip(work, disp, strict=True):
            fut.result(timeout)
            with session.annotate("attn(B)"):
                torch.autograd.backward(
                    [w.a.h, w.a.u, w.a.topk_weights],
                    [w.a_d.h.grad, w.a_d.u.grad, w.a_d.topk_weights.grad])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(sum(w.loss.item() for w in work))
        for w in work:
            stats = routing_stats(w.a.topk_ids, n_nodes=mcfg.ep_nodes,
                                  gpus_per_node=mcfg.ep_gpus_per_node,
                                  experts_per_gpu=layout.shape.experts_per_rank,
                                  src_node=layout.node, src_local=layout.local)
            nodes_per_token.append(stats["nodes_per_token"])
        step_s.append(time.perf_counter() - t_step)
        session.step()

    sent = {hop: sum(sum(r["dst_bytes"]) for r in tee.log.records if r["hop"] == hop)
            for hop in ("ib", "nvl", "local")}
    return {
        "ep": ctx.world_size,
        "experts": mcfg.n_experts,
        "top_k": mcfg.top_k,
        "max_nodes": mcfg.max_nodes,
        "tokens_per_step": chunks * batch * seq,
        "loss": losses,
        "step_s": step_s,
        "sent_bytes": sent,
        "nodes_per_token": sum(nodes_per_token) / len(nodes_per_token),
        "traffic_records": len(tee.log.records),
        "routing": sum_routing(tee.log.routing),
    }


def sum_routing(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Totals of per-dispatch :func:`routing.node_limit_stats` dicts (None when empty)."""
    from overlapscope.profiler.routing import ROUTING_COUNT_KEYS

    if not records:
        return None
    out: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in records) for k in ROUTING_COUNT_KEYS}
    for k in ("max_nodes", "nodes", "bytes_per_token"):
        out[k] = records[-1].get(k)
    return out
