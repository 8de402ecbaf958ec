"""CPU emulator of the two-hop combine (reverse path), in a simpler form.

Each destination GPU d holds one expert-output row per token it received in
dispatch; combine sums them back into the source rank's token rows. Per
channel and chunk (same token ranges as dispatch):

* ``nvl_sender`` r (GPUs g with g % NR == r of every node) copies GPU (n, g)'s
  rows into NVL ring (c, n, g) towards node n's forwarding GPU (NVLink);
* ``combine_forwarder`` f (nodes n % NF == f) adds up the <= gpus_per_node
  partials of each token of node n (float32) and sends one row per token into
  RDMA ring (c, n) (IB, or a local copy for the source's own node);
* ``rdma_receiver`` s (chunks j % NS == s) adds the <= nodes node partials into
  the output row; heads are released in chunk order.

Payload rows are float32 of ``hidden`` elements holding small integers, so the
sums are exact and the output is compared bit-for-bit with a direct reduction;
timing and link bytes use ``row_bytes`` per row (default: DeepEP's BF16 combine
slot of 14384 B). Role counts reuse DispatchConfig: NR -> NVL senders, NF ->
forwarders, NS -> RDMA receivers; the coordinator role is folded into them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.clock import Clock, RoleGen
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.links import Link, warp_copy_end
from overlapscope.profiler.warps.plan import DispatchPlan, make_plan, nvl_copies, routed_topk
from overlapscope.profiler.warps.result import KernelResult, link_bytes, role_busy
from overlapscope.profiler.warps.rings import Ring

KERNEL_NAME = "overlapscope::emulated::two_hop_combine"
COMBINE_ROW_BYTES = 14384  # BF16 hidden 7168 + top-8 weights, 16-byte aligned (BRIEF 2.5)


class CombineMismatchError(RuntimeError):
    """The combined rows differ from the direct reduction."""


@dataclass
class _Combine:
    cfg: DispatchConfig
    plan: DispatchPlan
    clock: Clock
    log: S.WarpLog
    row_bytes: int
    nvl: list[list[list[Ring]]]  # [channel][node][gpu]
    rdma: list[list[Ring]]  # [channel][node]
    released: list[list[set[int]]]  # RDMA chunks consumed but not yet released
    ib: Link
    nvl_links: list[Link]
    partials: list[np.ndarray] | None  # per destination rank: [count, hidden]
    out: np.ndarray | None  # [T, hidden]


def _nvl_sender(k: _Combine, c: int, w: int, r: int) -> RoleGen:
    cfg, clk, log, cost, plan = k.cfg, k.clock, k.log, k.cfg.cost, k.plan
    gpn, role = cfg.gpus_per_node, S.NVL_SENDER
    mine = [g for g in range(gpn) if g % cfg.receivers == r]
    fwd = cfg.src_rank % gpn  # GPU (n, fwd) forwards node n's partials: its own is local
    for j in range(plan.n_chunks(c)):
        a, b = plan.chunk_range(c, j)
        for n in range(cfg.nodes):
            for g in mine:
                ring = k.nvl[c][n][g]
                need = j + 1 - ring.slots
                if ring.head.value < need:
                    t0 = clk.now
                    yield ring.head, need
                    log.wait(c, w, role, S.WAIT_REMOTE_HEAD, j, t0, clk.now, node=n, gpu=g)
                d = n * gpn + g
                ids = a + np.flatnonzero(plan.dest[a:b, d])
                src = k.partials[d] if k.partials is not None else None
                ring.write(j, ids, src, plan.out_pos[ids, d])
                nbytes = len(ids) * k.row_bytes
                t0 = clk.now
                own = g == fwd
                end = warp_copy_end(t0, nbytes, warp_gbps=cost.nvl_warp_gbps,
                                    overhead_ns=cost.local_msg_ns,
                                    link=None if own else k.nvl_links[n])
                yield end - t0 + cost.loop_ns
                log.busy(c, w, role, j, nbytes, "local" if own else "nvl", t0, end, node=n,
                         gpu=g)
                ring.tail.set(j + 1)


def _forwarder(k: _Combine, c: int, w: int, f: int) -> RoleGen:
    cfg, clk, log, cost, plan = k.cfg, k.clock, k.log, k.cfg.cost, k.plan
    gpn, role, rb = cfg.gpus_per_node, S.COMBINE_FORWARDER, k.row_bytes
    mine = [n for n in range(cfg.nodes) if n % cfg.forwarders == f]
    for j in range(plan.n_chunks(c)):
        a, b = plan.chunk_range(c, j)
        for n in mine:
            ids_n = a + np.flatnonzero(plan.node_mask[a:b, n])
            acc = None
            if k.out is not None:
                acc = np.zeros((len(ids_n), k.out.shape[1]), dtype=np.float32)
            rows_read = 0
            for g in range(gpn):
                src = k.nvl[c][n][g]
                if src.tail.value < j + 1:
                    t1 = clk.now
                    yield src.tail, j + 1
                    log.wait(c, w, role, S.WAIT_TAIL, j, t1, clk.now, node=n, gpu=g)
                ids, rows = src.read(j)
                if acc is not None and rows is not None and len(ids):
                    acc[np.searchsorted(ids_n, ids)] += rows
                rows_read += len(ids)
                src.head.set(j + 1)
            # reduction cost: every partial row read once from local HBM
            t0 = clk.now
            end = warp_copy_end(t0, rows_read * rb, warp_gbps=cost.local_warp_gbps,
                                overhead_ns=cost.local_msg_ns, link=None)
            yield end - t0 + cost.loop_ns
            log.busy(c, w, role, j, rows_read * rb, "local", t0, end, node=n)
            dst = k.rdma[c][n]
            need = j + 1 - dst.slots
            if dst.head.value < need:
                t0 = clk.now
                yield dst.head, need
                log.wait(c, w, role, S.WAIT_REMOTE_HEAD, j, t0, clk.now, node=n)
            dst.put(j, ids_n, acc)
            nbytes = len(ids_n) * rb
            remote = n != cfg.src_node
            t0 = clk.now
            end = warp_copy_end(
                t0, nbytes, warp_gbps=cost.ib_warp_gbps if remote else cost.local_warp_gbps,
                overhead_ns=cost.ib_msg_ns if remote else cost.local_msg_ns,
                link=k.ib if remote else None,
            )
            yield end - t0 + cost.loop_ns
            log.busy(c, w, role, j, nbytes, "ib" if remote else "local", t0, end, node=n)
            dst.tail.set(j + 1)


def _rdma_receiver(k: _Combine, c: int, w: int, s: int) -> RoleGen:
    cfg, clk, log, cost, plan = k.cfg, k.clock, k.log, k.cfg.cost, k.plan
    role, rb = S.RDMA_RECEIVER, k.row_bytes
    for j in range(s, plan.n_chunks(c), cfg.senders):
        for n in range(cfg.nodes):
            ring = k.rdma[c][n]
            if ring.tail.value < j + 1:
                t0 = clk.now
                yield ring.tail, j + 1
                log.wait(c, w, role, S.WAIT_TAIL, j, t0, clk.now, node=n)
            ids, rows = ring.read(j)
            if k.out is not None and rows is not None and len(ids):
                k.out[ids] += rows
            nbytes = len(ids) * rb
            t0 = clk.now
            end = warp_copy_end(t0, nbytes, warp_gbps=cost.local_warp_gbps,
                                overhead_ns=cost.local_msg_ns, link=None)
            yield end - t0 + cost.loop_ns
            log.busy(c, w, role, j, nbytes, "local", t0, end, node=n)
            # receivers finish chunks out of order; the head only moves past a
            # contiguous prefix, or a sender could overwrite an unread slot
            done = k.released[c][n]
            done.add(j)
            while ring.head.value in done:
                done.discard(ring.head.value)
                ring.head.set(ring.head.value + 1)


def emulate_combine(
    cfg: DispatchConfig,
    *,
    topk_ids: np.ndarray | None = None,
    hidden: int = 64,
    row_bytes: int = COMBINE_ROW_BYTES,
    move_bytes: bool = True,
    min_wait_ns: int = 0,
) -> KernelResult:
    """Emulate the combine matching ``cfg``'s dispatch; returns a KernelResult.

    ``hidden`` float32 elements per payload row; ``row_bytes`` bytes per row for
    timing and link accounting. Raises CombineMismatchError if any summed row
    differs from the direct reduction.
    """
    wall0 = time.perf_counter()
    cfg.validate()
    if topk_ids is None:
        topk_ids = routed_topk(cfg)
    plan = make_plan(topk_ids, cfg)
    t = plan.dest.shape[0]
    cost = cfg.cost
    clock = Clock(wake_ns=cost.wake_ns)
    log = S.WarpLog(min_wait_ns=min_wait_ns)
    gpn = cfg.gpus_per_node

    def ring(kind: str, c: int, peer: str, slots: int) -> Ring:
        return Ring(clock, log, kind=kind, channel=c, peer=peer, slots=slots,
                    slot_tokens=cfg.chunk_tokens, row_width=hidden, move_bytes=move_bytes,
                    dtype=np.float32)

    partials = out = None
    if move_bytes:
        rng = np.random.default_rng(cfg.seed + 2)
        partials = [rng.integers(0, 16, size=(int(n), hidden)).astype(np.float32)
                    for n in plan.out_count]
        out = np.zeros((t, hidden), dtype=np.float32)
    k = _Combine(
        cfg=cfg, plan=plan, clock=clock, log=log, row_bytes=row_bytes,
        nvl=[[[ring("nvl", c, f"r{n * gpn + g}", cfg.nvl_slots) for g in range(gpn)]
              for n in range(cfg.nodes)] for c in range(cfg.channels)],
        rdma=[[ring("rdma", c, f"n{n}", cfg.rdma_slots) for n in range(cfg.nodes)]
              for c in range(cfg.channels)],
        released=[[set() for _ in range(cfg.nodes)] for _ in range(cfg.channels)],
        ib=Link("ib nic", "ib", cfg.ib_gbps, cost.ib_latency_ns),
        nvl_links=[Link(f"nvl node {n}", "nvl", cfg.nvl_gbps, cost.nvl_latency_ns)
                   for n in range(cfg.nodes)],
        partials=partials, out=out,
    )
    groups = (
        (S.RDMA_RECEIVER, _rdma_receiver, cfg.senders),
        (S.COMBINE_FORWARDER, _forwarder, cfg.forwarders),
        (S.NVL_SENDER, _nvl_sender, cfg.receivers),
    )
    for c in range(cfg.channels):
        w = 0
        for role, fn, count in groups:
            for i in range(count):
                clock.spawn(f"{role} c{c} w{w}", fn(k, c, w, i))
                w += 1
    kernel_ns = clock.run()
    if out is not None and partials is not None:
        want = np.zeros_like(out)
        for d, rows in enumerate(partials):
            want[np.flatnonzero(plan.dest[:, d])] += rows
        if not np.array_equal(out, want):
            bad = int(np.flatnonzero((out != want).any(axis=1))[0])
            c, j = plan.locate(bad)
            raise CombineMismatchError(
                f"combined row of token {bad} (channel {c}, chunk {j}) differs from the "
                f"direct sum of its {int(plan.dest[bad].sum())} expert partials"
            )
    remote = int(plan.node_mask.sum() - plan.node_mask[:, cfg.src_node].sum())
    counts = {S.NVL_SENDER: cfg.receivers, S.COMBINE_FORWARDER: cfg.forwarders,
              S.RDMA_RECEIVER: cfg.senders}
    return KernelResult(
        collective="two_hop_combine", kernel_name=KERNEL_NAME, cfg=cfg, plan=plan,
        row_bytes=row_bytes, kernel_ns=kernel_ns, log=log, link_bytes=link_bytes(log),
        expected_ib_bytes=remote * row_bytes,
        expected_nvl_bytes=nvl_copies(plan, cfg) * row_bytes,
        role_busy=role_busy(log, counts, cfg.channels, kernel_ns), steps=clock.steps,
        wall_s=time.perf_counter() - wall0, verified_bytes=move_bytes, outputs=out,
        inputs=partials,
    )
