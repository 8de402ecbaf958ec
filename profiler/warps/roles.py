"""The dispatch kernel's warp roles as generators on the discrete-event clock.

One thread block per channel; per channel the roles walk that channel's chunks
in order (as the H200 fixture kernel does):

* ``rdma_sender`` s handles chunks j = s, s+NS, ...; per chunk it copies the
  tokens bound for node n (deduplicated per node) into RDMA ring (c, n), nodes
  in order; the own node's copy stays local (no IB).
* ``sender_coordinator`` publishes each RDMA ring's tail in chunk order as soon
  as that chunk's sender finished the node.
* ``forwarder`` f owns nodes n with n % NF == f; per chunk and node it copies
  each staged token to every destination GPU of that node (deduplicated per
  GPU) into NVL ring (c, n, g), then frees the RDMA slot. The forwarder of node n
  is the GPU with the source's local index there (where the IB copy landed), so its
  copy to that GPU is a copy to itself: "local", no NVLink link time (BRIEF §4.10;
  it costs the same warp time as the other forwarded copies).
* ``nvl_receiver`` r owns GPUs g with g % NR == r of every node and copies NVL
  slots into the destination GPU's output at the token's precomputed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from overlapscope.profiler.warps import schema as S
from overlapscope.profiler.warps.clock import Clock, Counter, RoleGen
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.links import Link, warp_copy_end
from overlapscope.profiler.warps.plan import DispatchPlan
from overlapscope.profiler.warps.rings import Ring


@dataclass(frozen=True)
class Faults:
    """Deliberate faults, to show that the emulator reports them (tests, demos).

    ``drop_token``: forwarders silently skip this token id (a lost token).
    ``stuck_role``: warps of this role never publish their head/tail (deadlock).
    """

    drop_token: int | None = None
    stuck_role: str | None = None


@dataclass
class DispatchState:
    """Everything the dispatch roles share (one source rank)."""

    cfg: DispatchConfig
    plan: DispatchPlan
    clock: Clock
    log: S.WarpLog
    rdma: list[list[Ring]]  # [channel][node]
    nvl: list[list[list[Ring]]]  # [channel][node][gpu]
    progress: list[list[Counter]]  # [channel][chunk]: nodes finished by its sender
    ib: Link
    nvl_links: list[Link]  # one NVLink fabric per node
    tokens: np.ndarray | None  # [T, token_bytes] uint8 source rows
    outputs: list[np.ndarray] | None  # per destination rank
    delivered: list[list[np.ndarray]] = field(default_factory=list)  # ids per rank
    faults: Faults = field(default_factory=Faults)


def rdma_sender(k: DispatchState, c: int, w: int, s: int) -> RoleGen:
    cfg, clk, log, cost = k.cfg, k.clock, k.log, k.cfg.cost
    own, nb, role = cfg.src_node, cfg.token_bytes, S.RDMA_SENDER
    for j in range(s, k.plan.n_chunks(c), cfg.senders):
        a, b = k.plan.chunk_range(c, j)
        mask = k.plan.node_mask[a:b]
        for n in range(cfg.nodes):
            ring = k.rdma[c][n]
            need = j + 1 - ring.slots
            if ring.head.value < need:
                t0 = clk.now
                yield ring.head, need
                log.wait(c, w, role, S.WAIT_REMOTE_HEAD, j, t0, clk.now, node=n)
            ids = a + np.flatnonzero(mask[:, n])
            ring.write(j, ids, k.tokens, ids)
            nbytes = len(ids) * nb
            t0 = clk.now
            if n == own:
                end = warp_copy_end(t0, nbytes, warp_gbps=cost.local_warp_gbps,
                                    overhead_ns=cost.local_msg_ns, link=None)
                link = "local"
            else:
                end = warp_copy_end(t0, nbytes, warp_gbps=cost.ib_warp_gbps,
                                    overhead_ns=cost.ib_msg_ns if nbytes else 0, link=k.ib)
                link = "ib"
            yield end - t0 + cost.loop_ns
            log.busy(c, w, role, j, nbytes, link, t0, end, node=n)
            k.progress[c][j].set(n + 1)


def sender_coordinator(k: DispatchState, c: int, w: int, idx: int) -> RoleGen:
    cfg, clk, log, cost = k.cfg, k.clock, k.log, k.cfg.cost
    role = S.SENDER_COORDINATOR
    mine = [n for n in range(cfg.nodes) if n % cfg.coordinators == idx]
    stuck = k.faults.stuck_role == role
    for j in range(k.plan.n_chunks(c)):
        done = k.progress[c][j]
        for n in mine:
            if done.value < n + 1:
                t0 = clk.now
                yield done, n + 1
                log.wait(c, w, role, S.WAIT_TAIL, j, t0, clk.now, node=n)
            t0 = clk.now
            yield cost.publish_ns
            log.busy(c, w, role, j, 0, None, t0, clk.now, node=n)
            if not stuck:
                k.rdma[c][n].tail.set(j + 1)


def forwarder(k: DispatchState, c: int, w: int, f: int) -> RoleGen:
    cfg, clk, log, cost = k.cfg, k.clock, k.log, k.cfg.cost
    role, nb, gpn = S.FORWARDER, cfg.token_bytes, cfg.gpus_per_node
    mine = [n for n in range(cfg.nodes) if n % cfg.forwarders == f]
    me = cfg.src_rank % gpn  # the forwarder's own local index on every node
    drop = k.faults.drop_token
    stuck = k.faults.stuck_role == role
    for j in range(k.plan.n_chunks(c)):
        for n in mine:
            src = k.rdma[c][n]
            if src.tail.value < j + 1:
                t0 = clk.now
                yield src.tail, j + 1
                log.wait(c, w, role, S.WAIT_TAIL, j, t0, clk.now, node=n)
            ids, rows = src.read(j)
            sub = k.plan.dest3[ids, n]  # [m, gpus_per_node]
            link = k.nvl_links[n]
            for g in range(gpn):
                dst = k.nvl[c][n][g]
                need = j + 1 - dst.slots
                if dst.head.value < need:
                    t0 = clk.now
                    yield dst.head, need
                    log.wait(c, w, role, S.WAIT_REMOTE_HEAD, j, t0, clk.now, node=n, gpu=g)
                sel = np.flatnonzero(sub[:, g])
                if drop is not None and len(sel):
                    sel = sel[ids[sel] != drop]
                dst.write(j, ids[sel], rows, sel)
                nbytes = len(sel) * nb
                t0 = clk.now
                # the forwarder reads every staged token's mask for each GPU
                own = g == me
                end = warp_copy_end(t0, nbytes, warp_gbps=cost.nvl_warp_gbps,
                                    overhead_ns=cost.fwd_scan_ns * len(ids),
                                    link=None if own else link)
                yield end - t0 + cost.loop_ns
                log.busy(c, w, role, j, nbytes, "local" if own else "nvl", t0, end, node=n,
                         gpu=g)
                if not stuck:
                    dst.tail.set(j + 1)
            if not stuck:
                src.head.set(j + 1)


def nvl_receiver(k: DispatchState, c: int, w: int, r: int) -> RoleGen:
    cfg, clk, log, cost = k.cfg, k.clock, k.log, k.cfg.cost
    role, nb, gpn = S.NVL_RECEIVER, cfg.token_bytes, cfg.gpus_per_node
    mine = [g for g in range(gpn) if g % cfg.receivers == r]
    stuck = k.faults.stuck_role == role
    for j in range(k.plan.n_chunks(c)):
        for n in range(cfg.nodes):
            for g in mine:
                ring = k.nvl[c][n][g]
                if ring.tail.value < j + 1:
                    t0 = clk.now
                    yield ring.tail, j + 1
                    log.wait(c, w, role, S.WAIT_TAIL, j, t0, clk.now, node=n, gpu=g)
                ids, rows = ring.read(j)
                if len(ids):
                    d = n * gpn + g
                    if k.outputs is not None and rows is not None:
                        # a slot's tokens are consecutive in d's output (chunks are
                        # contiguous token ranges): a plain slice copy suffices
                        first = int(k.plan.out_pos[ids[0], d])
                        k.outputs[d][first:first + len(ids)] = rows
                    k.delivered[d].append(ids)
                    nbytes = len(ids) * nb
                    t0 = clk.now
                    end = warp_copy_end(t0, nbytes, warp_gbps=cost.local_warp_gbps,
                                        overhead_ns=cost.local_msg_ns, link=None)
                    yield end - t0 + cost.loop_ns
                    log.busy(c, w, role, j, nbytes, "local", t0, end, node=n, gpu=g)
                if not stuck:
                    ring.head.set(j + 1)
