"""``dualpipe-moe``: a pipeline schedule over miniature DeepSeek-V3 MoE stages.

World = PP x EP (``layout.py``: stage = rank % pp). Each pipeline rank runs the chosen
schedule (``cfg["schedule"]``: dualpipe | dualpipev | 1f1b | zb1p) over its
:func:`model.build_stage` modules; every stage's routed experts are sharded over the
rank's EP group (strided over nodes, so two-hop dispatch/combine crosses the IB hop).
EP members are data-parallel for everything else: EP member ``e`` feeds micro-batch
``i`` = :func:`model.make_batch` index ``e * M + i``.

Overlapped pairs (``FB`` ops) go through :meth:`PhasedStage.overlapped_forward_backward`,
which interleaves the forward blocks of one micro-batch with the backward blocks of the
other in V3 Fig. 4 order, each component in its phase annotation::

    combine(B) | attn(F) | dispatch(F) | mlp(B) | mlp(W) | mlp(F) | dispatch(B)
    | attn(B) | combine(F) | attn(W)

(backward split into input-grad and weight-grad parts through ``wgrad``'s
:class:`DeferredLinear`). The communication components run on the rank's comm stream
(``ctx.comm_stream``: a thread on CPU, a side stream on CUDA), annotated on that
thread, while the main thread computes the other micro-batch's components::

    comm thread:  combine(B)  dispatch(F)  dispatch(B)          combine(F)  combine(B)'
    main thread:  attn(F)     mlp(B)       mlp(W)  mlp(F)       attn(B)     attn(W)

(``combine(B)'`` is the next block's). Schedule ops carry the annotation grammar of
``schedules/executor.py``; P2P is posted from the main thread without blocking it
(``pp_send``; ``pp_recv`` where a received tensor is first needed; ``comm_traffic``
records with hop "pp"). Dispatch/combine outside pairs (plain F/B ops), and the
backward halves of every dispatch/combine, are issued on the comm stream too (the EP
group carries ``ctx.comm_stream``; ``dispatch.on_comm_stream``).

Config keys: ``schedule``, ``pp``, ``micro_batches``, ``steps``, ``seed`` (launcher);
optional ``model`` (dict of :class:`model.ModelConfig` fields; EP shape filled in, node
limit ``max_nodes`` defaults to half the EP group's nodes, at least 1, so it binds
whenever the group spans 2+ nodes), ``batch`` (sequences per micro-batch, 2), ``seq``
(tokens per sequence, 8), ``return_grads`` (save every parameter's gradient to
``<out>/grads-rank-<r>.pt`` and name the file in the facts, for tests), ``overlap_comm``
(default true; false runs all communication inline on the main thread), ``p2p_wait``
("need", default: wait for a received tensor when it is used, sends never block;
"commit": wait for the whole batch at each commit).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overlapscope.profiler.dispatch import EPGroup, EPLayout
from overlapscope.profiler.model import ModelConfig, Stage, build_stage, make_batch, stage_loss
from overlapscope.profiler.schedules import make_schedule
from overlapscope.profiler.schedules.executor import PipelineExecutor
from overlapscope.profiler.schedules.p2p import P2P
from overlapscope.profiler.schedules.wgrad import STORE, DeferredLinear


def _no_annotation(name: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def defer_linears(module: nn.Module) -> nn.Module:
    """Swap every bias-free ``nn.Linear`` inside ``module`` for a :class:`DeferredLinear`
    sharing the same weight Parameter, so the B/W split defers its weight gradient."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            new = DeferredLinear.__new__(DeferredLinear)
            nn.Module.__init__(new)
            new.weight, new.bias = child.weight, None
            setattr(module, name, new)
        else:
            defer_linears(child)
    return module


def _grads(outputs: list[torch.Tensor], grads: list[torch.Tensor | None],
           inputs: list[torch.Tensor], params: list[nn.Parameter]) -> list[torch.Tensor | None]:
    """Backward of one component: gradients w.r.t. ``inputs`` (returned) and ``params``
    (accumulated into ``.grad``); deferred linears push their weight work to STORE."""
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True)
             if g is not None and o.requires_grad]
    wanted = [t for t in inputs if t.requires_grad]
    params = [p for p in params if p.requires_grad]
    if not pairs or not (wanted or params):
        return [None] * len(inputs)
    got = torch.autograd.grad([o for o, _ in pairs], wanted + params,
                              [g for _, g in pairs], allow_unused=True)
    for p, g in zip(params, got[len(wanted):], strict=True):
        if g is not None:
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
    it = iter(got[:len(wanted)])
    return [next(it) if t.requires_grad else None for t in inputs]


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class _Pending:
    """A component handed to the comm lane: a future, a deferred thunk or a value."""

    def __init__(self, future: Any = None, thunk: Callable[[], Any] | None = None,
                 value: Any = None) -> None:
        self.future, self.thunk, self.value = future, thunk, value


class _CommLane:
    """Runs communication components of an overlapped pair on the rank's comm stream.

    Each submitted component runs inside its phase annotation *on the comm thread*, so
    the trace shows it on that thread while the main thread computes. Without a stream
    (tests, single-process use) components run inline: at submit time, or with
    ``defer=True`` at :meth:`start` / :meth:`wait`, which keeps the sequential order of
    V3 Fig. 4 (the order of the phase list in the module docstring).

    Process groups: while components of a pair are queued the main thread only
    computes (PP P2P happens outside the pair, on the PP group), so the EP group is
    never used by two threads at once; and every member of an EP group runs the same
    stage and submits the same components in the same order, so the comm thread
    issues the EP collectives in the same order on every member.
    """

    def __init__(self, stream: Any, annotate: Callable[[str], Any], timeout_s: float) -> None:
        self.stream, self.annotate, self.timeout_s = stream, annotate, timeout_s

    def submit(self, phase: str, fn: Callable[..., Any], *args: Any,
               defer: bool = False) -> _Pending:
        def body() -> Any:
            with self.annotate(phase):
                return fn(*args)
        if self.stream is not None:
            return _Pending(future=self.stream.submit(body))
        return _Pending(thunk=body) if defer else _Pending(value=body())

    def start(self, pending: _Pending | None) -> None:
        """Inline mode: run a deferred component now (a stream has started it already)."""
        if pending is not None and pending.thunk is not None:
            pending.value, pending.thunk = pending.thunk(), None

    def wait(self, pending: _Pending | None) -> Any:
        """The component's result, once it finished."""
        if pending is None:
            return None
        self.start(pending)
        if pending.future is not None:
            pending.value, pending.future = pending.future.result(self.timeout_s), None
        return pending.value


class PhasedStage(nn.Module):
    """Wraps a :class:`model.Stage`; remembers each forward's component boundaries on its
    output tensor so an overlapped pair can run the backward component by component."""

    def __init__(self, stage: Stage, annotate: Callable[[str], Any] = _no_annotation,
                 comm: Any = None, comm_timeout_s: float = 120.0) -> None:
        super().__init__()
        self.stage = defer_linears(stage)
        self.annotate = annotate
        # the rank's comm stream (``submit(fn) -> future``); None runs comm inline
        self.comm = comm
        self.comm_timeout_s = comm_timeout_s

    # forward pieces of one block, each returning the boundary tensors it produced
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        records = []
        for block in self.stage.blocks:
            rec: dict[str, Any] = {"x": x}
            self._attn(block, rec)
            self._dispatch(block, rec)
            self._mlp(block, rec)
            x = self._combine(block, rec)
            records.append(rec)
        return self._head(x, records)

    # Each component reads its inputs through fresh views (aliases) of the tensors it
    # shares with others (u feeds the gate, dispatch and the shared expert; h feeds the
    # attention output and the residual). A component's backward then asks autograd for
    # gradients w.r.t. its own aliases only, so it stops at its boundary instead of
    # following the total derivative through the other components.
    @staticmethod
    def _alias(t: torch.Tensor) -> torch.Tensor:
        return t.view_as(t)

    @classmethod
    def _attn(cls, block: nn.Module, rec: dict[str, Any]) -> None:
        rec["a"] = block.attn_forward(rec["x"])

    @classmethod
    def _dispatch(cls, block: nn.Module, rec: dict[str, Any]) -> None:
        a = rec["a"]
        rec["a_d"] = replace(a, u=cls._alias(a.u), topk_weights=cls._alias(a.topk_weights))
        rec["r"] = block.dispatch_forward(rec["a_d"])

    @classmethod
    def _mlp(cls, block: nn.Module, rec: dict[str, Any]) -> None:
        rec["partial"] = block.mlp_forward(rec["r"])
        rec["a_m"] = replace(rec["a"], u=cls._alias(rec["a"].u))
        rec["shared"] = block.shared_forward(rec["a_m"])

    @classmethod
    def _combine(cls, block: nn.Module, rec: dict[str, Any]) -> torch.Tensor:
        combined = block.combine_forward(rec["r"], rec["partial"])
        rec["a_c"] = replace(rec["a"], h=cls._alias(rec["a"].h))
        rec["y"] = block.finish(rec["a_c"], rec["shared"], combined)
        return rec["y"]

    def _head(self, x: torch.Tensor, records: list[dict[str, Any]]) -> torch.Tensor:
        out = self.stage.head(self.stage.final_norm(x)) if self.stage.is_last else x
        if not self.stage.is_last:
            out = out.view_as(out)  # a distinct tensor object to hang the records on
        out._osc_blocks = records  # type: ignore[attr-defined]
        out._osc_last = x  # type: ignore[attr-defined]
        return out

    # backward pieces of one block: gradients flow through ``g`` (a dict)
    @staticmethod
    def _params(*mods: nn.Module) -> list[nn.Parameter]:
        return [p for m in mods for p in m.parameters()]

    def _combine_b(self, block: nn.Module, rec: dict[str, Any], g: dict[str, Any]) -> None:
        gp, gs, gh = _grads([rec["y"]], [g.pop("y")],
                            [rec["partial"], rec["shared"], rec["a_c"].h], [])
        g.update(partial=gp, shared=gs, h=gh)

    def _mlp_b(self, block: nn.Module, rec: dict[str, Any], g: dict[str, Any]) -> None:
        r, a = rec["r"], rec["a_m"]
        grx, grw, gu = _grads([rec["partial"], rec["shared"]], [g.pop("partial"), g.pop("shared")],
                              [r.recv_x, r.recv_w, a.u], self._params(block.experts, block.shared))
        g.update(recv_x=grx, recv_w=grw, u=gu)

    def _dispatch_b(self, block: nn.Module, rec: dict[str, Any], g: dict[str, Any]) -> None:
        r, a = rec["r"], rec["a_d"]
        gu, gw = _grads([r.recv_x, r.recv_w], [g.pop("recv_x"), g.pop("recv_w")],
                        [a.u, a.topk_weights], [])
        g["u"] = _add(g.get("u"), gu)
        g["w"] = gw

    def _attn_b(self, block: nn.Module, rec: dict[str, Any], g: dict[str, Any]) -> None:
        a = rec["a"]
        params = self._params(block.norm1, block.attn, block.norm2, block.gate)
        (gx,) = _grads([a.h, a.u, a.topk_weights], [g.pop("h"), g.pop("u"), g.pop("w")],
                       [rec["x"]], params)
        g["y"] = gx  # gradient of the previous block's output

    @classmethod
    def overlapped_forward_backward(
        cls, module_f: PhasedStage, x_f: torch.Tensor, criterion_f: Any, label_f: Any,
        module_b: PhasedStage, loss_b: torch.Tensor | None, out_b: torch.Tensor,
        grad_b: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward of ``module_f`` interleaved with the full backward of ``module_b``."""
        ann = module_f.annotate
        fwd_blocks, bwd_blocks = list(module_f.stage.blocks), list(module_b.stage.blocks)
        bwd_recs: list[dict[str, Any]] = out_b._osc_blocks  # type: ignore[attr-defined]
        g: dict[str, Any] = {}
        if loss_b is not None:  # through loss and head first
            last = out_b._osc_last  # type: ignore[attr-defined]
            st = module_b.stage
            (g["y"],) = _grads([loss_b], [torch.ones_like(loss_b)], [last],
                               cls._params(st.final_norm, st.head))
        else:
            g["y"] = grad_b
        comm = _CommLane(module_f.comm, ann, module_f.comm_timeout_s)
        x, fwd_recs = x_f, []
        n = max(len(fwd_blocks), len(bwd_blocks))
        pending_cb: _Pending | None = None  # combine(B) of the next block, already queued
        for i in range(n):
            fb = fwd_blocks[i] if i < len(fwd_blocks) else None
            j = len(bwd_blocks) - 1 - i
            bb = bwd_blocks[j] if j >= 0 else None
            frec: dict[str, Any] = {"x": x}
            brec = bwd_recs[j] if bb is not None else None
            mlp_w: list[Callable[[], None]] = []
            attn_w: list[Callable[[], None]] = []
            # comm lane: combine(B) | dispatch(F) dispatch(B)    | combine(F) | next combine(B)
            # main:      attn(F)    | mlp(B) mlp(W) mlp(F)       | attn(B)    | attn(W)
            # Inline (no stream) the same calls run in the docstring's sequential order.
            cb, pending_cb = pending_cb, None
            if cb is None and bb is not None:
                cb = comm.submit("combine(B)", module_b._combine_b, bb, brec, g)
            comm.start(cb)
            if fb is not None:
                with ann("attn(F)"):
                    cls._attn(fb, frec)
            comm.wait(cb)
            df = comm.submit("dispatch(F)", cls._dispatch, fb, frec) if fb is not None else None
            db = None
            if bb is not None:
                with ann("mlp(B)"), STORE.capture() as mlp_w:
                    module_b._mlp_b(bb, brec, g)
                # dispatch(B) pops g["recv_x"/"recv_w"] (written by mlp(B)) and sets
                # g["u"] / g["w"]; only attn(B), after the wait below, reads them.
                db = comm.submit("dispatch(B)", module_b._dispatch_b, bb, brec, g, defer=True)
                with ann("mlp(W)"):
                    for fn in mlp_w:
                        fn()
            comm.wait(df)
            if fb is not None:
                with ann("mlp(F)"):
                    cls._mlp(fb, frec)
            comm.wait(db)
            cf = (comm.submit("combine(F)", cls._combine, fb, frec, defer=True)
                  if fb is not None else None)
            if bb is not None:
                with ann("attn(B)"), STORE.capture() as attn_w:
                    module_b._attn_b(bb, brec, g)
            if fb is not None:
                x = comm.wait(cf)
                fwd_recs.append(frec)
            if bb is not None:
                if j - 1 >= 0:  # the next block's combine(B) overlaps attn(W)
                    pending_cb = comm.submit("combine(B)", module_b._combine_b, bwd_blocks[j - 1],
                                             bwd_recs[j - 1], g, defer=True)
                with ann("attn(W)"):
                    for fn in attn_w:
                        fn()
        comm.wait(pending_cb)
        x_b = bwd_recs[0]["x"]
        if x_b.requires_grad and x_b.is_leaf and g.get("y") is not None:
            x_b.grad = g["y"] if x_b.grad is None else x_b.grad + g["y"]
        out_f = module_f._head(x, fwd_recs)
        loss_f = criterion_f(out_f, label_f) if criterion_f is not None else None
        return out_f, loss_f


def global_named_parameters(stage: Stage) -> list[tuple[str, nn.Parameter]]:
    """``named_parameters`` with routed experts named by their global expert id (a
    sharded block numbers its local experts from 0)."""
    out = []
    for name, p in stage.named_parameters():
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "blocks" and parts[2] == "experts":
            block = stage.blocks[int(parts[1])]
            parts[3] = str(block.first_expert + int(parts[3]))
        out.append((".".join(parts), p))
    return out


def validate(cfg: dict[str, Any]) -> None:
    """Refuse bad schedule sizes early (ValueError says why)."""
    make_schedule(str(cfg.get("schedule") or "dualpipe"), int(cfg.get("pp") or 1),
                  int(cfg.get("micro_batches") or 2))


def model_config(cfg: dict[str, Any], ep_layout: EPLayout | None) -> ModelConfig:
    """The model config with the EP shape of this rank's group filled in."""
    base = dict(cfg.get("model") or {})
    if ep_layout is not None:
        base.setdefault("ep_nodes", ep_layout.shape.n_nodes)
        base.setdefault("ep_gpus_per_node", ep_layout.shape.gpus_per_node)
        base.setdefault("max_nodes", max(1, ep_layout.shape.n_nodes // 2))
    else:
        base.setdefault("ep_nodes", 1)
        base.setdefault("ep_gpus_per_node", 1)
        base.setdefault("max_nodes", 1)
    return ModelConfig.from_dict(base)


def run(ctx: Any, session: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``cfg["steps"]`` steps of the schedule; returns losses and step wall times."""
    layout = ctx.layout
    pp = layout.pp if layout else 1
    pipe_rank = layout.stage_of(ctx.rank) if layout else 0
    ep_index = layout.ep_index_of(ctx.rank) if layout else 0
    n_micro = int(cfg.get("micro_batches") or 2 * pp)
    sched = make_schedule(str(cfg.get("schedule") or "dualpipe"), pp, n_micro)
    seed = int(cfg.get("seed", 0))
    comm = getattr(ctx, "comm_stream", None) if cfg.get("overlap_comm", True) else None
    timeout_s = float(getattr(ctx, "timeout_s", 120.0))
    ep = None
    if layout is not None and layout.ep > 1:
        ranks = layout.ep_group(pipe_rank)
        ep_layout = EPLayout.build(ctx.topology, ranks, ctx.rank, int(
            (cfg.get("model") or {}).get("n_experts", ModelConfig.n_experts)))
        # every dispatch/combine exchange (both halves) is issued on the comm stream
        ep = EPGroup(ep_layout, group=ctx.ep_group, hook=session, stream=comm,
                     timeout_s=timeout_s)
    mcfg = model_config(cfg, ep.layout if ep else None)
    annotate = session.annotate
    modules = [PhasedStage(build_stage(mcfg, sched.stage(pipe_rank, c), sched.n_stages, seed, ep),
                           annotate, comm, timeout_s).to(ctx.device)
               for c in range(sched.n_chunks)]
    batch, seq = int(cfg.get("batch", 2)), int(cfg.get("seq", 8))
    pp_ranks = layout.pp_group(ep_index) if layout else [ctx.rank]

    def on_traffic(collective: str, peer: int, nbytes: int, t0: int, t1: int) -> None:
        vec = [0] * ctx.world_size
        vec[peer] = nbytes
        session.record_traffic(f"{collective}:pp", collective, "pp", vec, None, t0, t1,
                               str(mcfg.torch_dtype).removeprefix("torch."))

    p2p = P2P(pp_ranks, (batch, seq, mcfg.hidden), mcfg.torch_dtype, ctx.device,
              group=ctx.pp_group, annotate=annotate, on_traffic=on_traffic)
    executor = PipelineExecutor(sched, pipe_rank, modules, stage_loss, p2p, annotate=annotate,
                                p2p_wait=str(cfg.get("p2p_wait", "need")))
    described = sched.describe()
    described["rank_map"] = [layout.stage_of(r) if layout else 0 for r in range(ctx.world_size)]
    session.schedule = {**(getattr(session, "schedule", None) or {}), **described}

    data = [make_batch(mcfg, batch, seq, seed, ep_index * n_micro + i) for i in range(n_micro)]
    inputs = {i: x.to(ctx.device) for i, (x, _) in enumerate(data)}
    labels = {i: y.to(ctx.device) for i, (_, y) in enumerate(data)}
    steps = int(cfg.get("steps", 2))
    losses: dict[int, float] = {}
    step_s = []
    for _ in range(steps):
        for m in modules:
            m.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = executor.step(inputs, labels)
        step_s.append(time.perf_counter() - t0)
        losses = {mb: float(v) for mb, v in sorted(out.items())}
        session.step()
    facts: dict[str, Any] = {
        "schedule": sched.name, "pipeline_rank": pipe_rank, "ep_index": ep_index,
        "stages": [sched.stage(pipe_rank, c) for c in range(sched.n_chunks)],
        "losses": {str(k): v for k, v in losses.items()},
        "step_wall_s": step_s,
    }
    if cfg.get("return_grads"):
        grads = {
            f"{sched.stage(pipe_rank, c)}:{name}": p.grad.detach().cpu().clone()
            for c, m in enumerate(modules) for name, p in global_named_parameters(m.stage)
            if p.grad is not None
        }
        out_dir = Path(getattr(session, "out_dir", None) or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"grads-rank-{ctx.rank}.pt"
        torch.save(grads, out_dir / name)
        facts["grads_file"] = name
    routing = getattr(session, "routing", None)
    if routing:
        facts["routing"] = routing
    return facts
