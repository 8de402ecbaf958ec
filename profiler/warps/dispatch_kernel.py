"""CPU emulator of one source rank's warp-specialized two-hop dispatch.

>>> from overlapscope.profiler.warps.config import DispatchConfig
>>> cfg = DispatchConfig(tokens=64, channels=2, chunk_tokens=8)
>>> res = emulate_dispatch(cfg)                       # doctest: +SKIP
>>> res.kernel_ns, res.bottleneck                    # doctest: +SKIP

The emulator really moves the token bytes (numpy uint8 rows) through RDMA and
NVL rings into every destination GPU's output and checks each output against a
direct gather of the source tokens; a lost token raises
:class:`LostTokenError` naming the ring and role it vanished at, a deadlock
raises :class:`~overlapscope.profiler.warps.clock.DeadlockError`.
"""

from __future__ import annotations

import time

import numpy as np

from overlapscope.profiler.warps import roles as R
from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.clock import Clock, EmulationError
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.links import Link
from overlapscope.profiler.warps.plan import DispatchPlan, make_plan, routed_topk, routing_bytes
from overlapscope.profiler.warps.result import KernelResult, link_bytes, role_busy
from overlapscope.profiler.warps.rings import Ring

KERNEL_NAME = "overlapscope::emulated::two_hop_dispatch"


class LostTokenError(EmulationError):
    """A destination output lacks a token (or holds wrong bytes)."""


def emulate_dispatch(
    cfg: DispatchConfig,
    *,
    topk_ids: np.ndarray | None = None,
    move_bytes: bool = True,
    record: bool = True,
    min_wait_ns: int = 0,
    faults: R.Faults | None = None,
) -> KernelResult:
    """Emulate one dispatch; returns timing, per-warp log, bytes and verification.

    ``topk_ids`` [T, k] overrides the random node-limited routing. With
    ``move_bytes=False`` only token ids travel (timing is identical, ~2x faster);
    delivery is then checked by ids. ``record=False`` skips ring occupancy samples.
    """
    wall0 = time.perf_counter()
    cfg.validate()
    if topk_ids is None:
        topk_ids = routed_topk(cfg)
    plan = make_plan(topk_ids, cfg)
    if plan.dest.shape[0] != cfg.tokens:
        cfg = cfg.with_(tokens=int(plan.dest.shape[0]))
    state = _build_state(cfg, plan, move_bytes=move_bytes, record=record,
                         min_wait_ns=min_wait_ns, faults=faults or R.Faults())
    _spawn_roles(state)
    kernel_ns = state.clock.run()
    verified = _verify(state)
    exp_ib, exp_nvl = routing_bytes(plan, cfg)
    counts = {
        S.RDMA_SENDER: cfg.senders, S.SENDER_COORDINATOR: cfg.coordinators,
        S.FORWARDER: cfg.forwarders, S.NVL_RECEIVER: cfg.receivers,
    }
    return KernelResult(
        collective="two_hop_dispatch", kernel_name=KERNEL_NAME, cfg=cfg, plan=plan,
        row_bytes=cfg.token_bytes, kernel_ns=kernel_ns, log=state.log,
        link_bytes=link_bytes(state.log), expected_ib_bytes=exp_ib, expected_nvl_bytes=exp_nvl,
        role_busy=role_busy(state.log, counts, cfg.channels, kernel_ns),
        steps=state.clock.steps, wall_s=time.perf_counter() - wall0, verified_bytes=verified,
        outputs=state.outputs, inputs=state.tokens,
    )


def _build_state(
    cfg: DispatchConfig, plan: DispatchPlan, *, move_bytes: bool, record: bool,
    min_wait_ns: int, faults: R.Faults,
) -> R.DispatchState:
    cost = cfg.cost
    clock = Clock(wake_ns=cost.wake_ns)
    log = S.WarpLog(min_wait_ns=min_wait_ns)
    ring_log = log if record else None
    nb, k = cfg.token_bytes, cfg.chunk_tokens
    rdma = [
        [Ring(clock, ring_log, kind="rdma", channel=c, peer=f"n{n}", slots=cfg.rdma_slots,
              slot_tokens=k, row_width=nb, move_bytes=move_bytes)
         for n in range(cfg.nodes)]
        for c in range(cfg.channels)
    ]
    gpn = cfg.gpus_per_node
    nvl = [
        [[Ring(clock, ring_log, kind="nvl", channel=c, peer=f"r{n * gpn + g}",
               slots=cfg.nvl_slots, slot_tokens=k, row_width=nb, move_bytes=move_bytes)
          for g in range(gpn)] for n in range(cfg.nodes)]
        for c in range(cfg.channels)
    ]
    progress = [
        [clock.counter(f"sender progress c{c} chunk {j}") for j in range(plan.n_chunks(c))]
        for c in range(cfg.channels)
    ]
    tokens = outputs = None
    if move_bytes:
        rng = np.random.default_rng(cfg.seed + 1)
        tokens = rng.integers(0, 256, size=(cfg.tokens, nb), dtype=np.uint8)
        outputs = [np.zeros((int(n), nb), dtype=np.uint8) for n in plan.out_count]
    return R.DispatchState(
        cfg=cfg, plan=plan, clock=clock, log=log, rdma=rdma, nvl=nvl, progress=progress,
        ib=Link("ib nic", "ib", cfg.ib_gbps, cost.ib_latency_ns),
        nvl_links=[Link(f"nvl node {n}", "nvl", cfg.nvl_gbps, cost.nvl_latency_ns)
                   for n in range(cfg.nodes)],
        tokens=tokens, outputs=outputs,
        delivered=[[] for _ in range(cfg.world_size)], faults=faults,
    )


def _spawn_roles(k: R.DispatchState) -> None:
    cfg, clock = k.cfg, k.clock
    groups = (
        (S.RDMA_SENDER, R.rdma_sender, cfg.senders),
        (S.SENDER_COORDINATOR, R.sender_coordinator, cfg.coordinators),
        (S.FORWARDER, R.forwarder, cfg.forwarders),
        (S.NVL_RECEIVER, R.nvl_receiver, cfg.receivers),
    )
    for c in range(cfg.channels):
        w = 0
        for role, fn, count in groups:
            for i in range(count):
                clock.spawn(f"{role} c{c} w{w}", fn(k, c, w, i))
                w += 1


def _verify(k: R.DispatchState) -> bool:
    """Check every destination against a direct reference; True if bytes were compared."""
    plan = k.plan
    for d in range(k.cfg.world_size):
        want = np.flatnonzero(plan.dest[:, d])
        got = np.sort(np.concatenate(k.delivered[d])) if k.delivered[d] else want[:0]
        if len(got) != len(want) or not np.array_equal(got, want):
            missing = np.setdiff1d(want, got)
            token = int(missing[0]) if len(missing) else int(got[0])
            raise LostTokenError(_explain_loss(k, token, d, len(missing)))
        if k.outputs is not None and k.tokens is not None:
            if not np.array_equal(k.outputs[d], k.tokens[want]):
                bad = np.flatnonzero((k.outputs[d] != k.tokens[want]).any(axis=1))
                token = int(want[bad[0]])
                raise LostTokenError(
                    f"rank {d}: output row {int(bad[0])} (token {token}) holds wrong bytes; "
                    + _explain_loss(k, token, d, len(bad))
                )
    return k.outputs is not None


def _explain_loss(k: R.DispatchState, token: int, d: int, n_bad: int) -> str:
    cfg, plan = k.cfg, k.plan
    gpn = cfg.gpus_per_node
    n, g = divmod(d, gpn)
    c, j = plan.locate(token)
    head = f"{n_bad} token(s) lost for rank {d}; first is token {token} (channel {c}, chunk {j}): "
    rdma, nvl = k.rdma[c][n], k.nvl[c][n][g]
    if not rdma.has_seen(token):
        return head + f"role {S.RDMA_SENDER} (c{c}) never wrote it into {rdma.name}"
    if not nvl.has_seen(token):
        return head + (f"role {S.FORWARDER} (c{c}, node {n}) read it from {rdma.name} but never "
                       f"wrote it into {nvl.name}")
    return head + f"role {S.NVL_RECEIVER} (c{c}) never copied it out of {nvl.name}"
