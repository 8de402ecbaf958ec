"""Two-hop MoE dispatch and combine over torch.distributed (DeepSeek-V3 / DeepEP style).

**Expert-parallel layout.** An EP group is a set of global ranks (sorted, so it
is node-major); on every node it spans it must own the same number of members.
EP index ``i`` (position in the sorted group) sits on EP node ``i // G`` at EP
local index ``i % G`` (G = members per node) and holds the contiguous experts
``[i * E/W, (i+1) * E/W)``.

**Dispatch** of a token (``forward_rows``):

* hop 1 ("IB"): the token is sent once per destination node to the member with
  the *same local index* there (its own node: a local copy to itself);
* hop 2 ("NVLink"): that forwarder sends it once to every member of its node
  holding one of the token's experts (itself: a local copy).

Received rows are ordered by (source rank, source token index) — the order in
which a single process holding the whole batch would see them — so expert
GEMMs get identical inputs and a single-process reference (:class:`LocalPlan`)
reproduces the results exactly.

**Combine** (``reverse_sum``) runs the reverse path: each expert rank returns
one partial row per received token, the forwarder sums its node's partials in
ascending local index, the source sums the node partials in ascending node
order. Backward of dispatch is a combine; backward of combine is a cached
dispatch reusing the plan (DeepEP's "handle").

Exchanges use batched ``isend``/``irecv`` within the EP group (gloo on CPU,
nccl on GPU: tensors stay on the device of the input); counts travel first,
then integer metadata (plan building), then data. Every exchange reports its
bytes per destination and link class to a :class:`TrafficHook` — a
``ProfileSession`` or a :class:`TrafficLog`; times are ``time.monotonic_ns()``
(the session clock). To overlap communication with compute, submit whole
dispatch/combine calls to the rank's comm stream
(``overlapscope.profiler.comm_stream``) and give that thread its own process
group (``RankContext.comm_group``) so its messages never meet other traffic.

**Where exchanges run.** With ``EPGroup.stream`` set (the rank's comm stream), every
exchange — plan building, dispatch and combine, their forward *and* backward halves,
inside overlapped pairs or not — is issued on that stream through
``stream.call``: inline on the comm thread / CUDA side stream, otherwise handed to it
(CPU) or issued under the side stream with stream waits and ``record_stream``
(CUDA). PyTorch runs a backward op on the stream of its forward; without this the
backward halves of plain (unpaired) forwards would land on the default stream,
serialised with compute.

**Link classes** (BRIEF §4.10): a copy from a rank to itself is "local" — the
source's own-node hop-1 copy and the forwarder's hop-2 copy to itself alike — never
NVLink; the warp emulator and the CUDA kernel's host accounting count the same way.

**Routing statistics.** When the hook has ``record_routing(stats)`` (ProfileSession,
TrafficLog), :class:`~overlapscope.profiler.model.MoEBlock` reports per forward
dispatch how many tokens the node limit redirected and the IB bytes it saved
(:func:`node_limit_stats`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist

from overlapscope.profiler.topology import LINKS, Topology

# --------------------------------------------------------------------------- traffic hooks


class TrafficHook(Protocol):
    """Receives one record per (exchange, link class); ``ProfileSession`` satisfies it."""

    def record_traffic(
        self,
        name: str,
        collective: str,
        hop: str,
        dst_bytes: list[int],
        phase: str | None,
        t0_ns: int,
        t1_ns: int,
        dtype: str,
    ) -> None: ...


@dataclass
class TrafficLog:
    """In-memory :class:`TrafficHook`: keeps every record as a dict (for tests and scripts)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    routing: list[dict[str, Any]] = field(default_factory=list)

    def record_routing(self, stats: dict[str, Any]) -> None:
        """Keep one forward dispatch's routing statistics (:func:`node_limit_stats`)."""
        self.routing.append(dict(stats))

    def record_traffic(self, name: str, collective: str, hop: str, dst_bytes: list[int],
                       phase: str | None, t0_ns: int, t1_ns: int, dtype: str) -> None:
        self.records.append({"name": name, "collective": collective, "hop": hop,
                             "dst_bytes": list(dst_bytes), "phase": phase, "t0_ns": t0_ns,
                             "t1_ns": t1_ns, "dtype": dtype})

    def bytes_by(self, *, collective: str | None = None, hop: str | None = None) -> list[int]:
        """Sum of ``dst_bytes`` vectors over the records matching the filters."""
        total: list[int] = []
        for r in self.records:
            if (collective is None or r["collective"] == collective) and (
                hop is None or r["hop"] == hop
            ):
                if not total:
                    total = [0] * len(r["dst_bytes"])
                total = [a + b for a, b in zip(total, r["dst_bytes"], strict=True)]
        return total


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32 etc. (the spelling used in traffic records)."""
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class EPShape:
    """Expert placement of an EP group: ``n_nodes`` x ``gpus_per_node`` members, E experts."""

    n_nodes: int
    gpus_per_node: int
    n_experts: int

    def __post_init__(self) -> None:
        if self.n_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"EPShape: need at least one node and one GPU, got {self}")
        if self.n_experts % self.world:
            raise ValueError(f"EPShape: {self.n_experts} experts do not split evenly over "
                             f"{self.world} EP ranks")

    @property
    def world(self) -> int:
        """Number of EP ranks."""
        return self.n_nodes * self.gpus_per_node

    @property
    def experts_per_rank(self) -> int:
        return self.n_experts // self.world


@dataclass(frozen=True)
class EPLayout:
    """One rank's view of its EP group inside the global :class:`Topology`."""

    topology: Topology
    ranks: tuple[int, ...]
    rank: int
    shape: EPShape

    @classmethod
    def build(cls, topology: Topology, ranks: list[int] | tuple[int, ...] | None, rank: int,
              n_experts: int) -> EPLayout:
        """Check and build the layout; ``ranks=None`` means the whole world."""
        members = tuple(sorted(range(topology.world_size) if ranks is None else ranks))
        if len(set(members)) != len(members):
            raise ValueError(f"EP group has repeated ranks: {list(members)}")
        for r in members:
            topology.node_of(r)  # range check with a clear message
        if rank not in members:
            raise ValueError(f"rank {rank} is not a member of its EP group {list(members)}")
        per_node: dict[int, int] = {}
        for r in members:
            per_node[topology.node_of(r)] = per_node.get(topology.node_of(r), 0) + 1
        if len(set(per_node.values())) != 1:
            raise ValueError(f"EP group {list(members)} has unequal members per node "
                             f"{per_node}; two-hop dispatch needs the same count on every node")
        shape = EPShape(len(per_node), next(iter(per_node.values())), n_experts)
        return cls(topology, members, rank, shape)

    @property
    def index(self) -> int:
        """This rank's EP index."""
        return self.ranks.index(self.rank)

    @property
    def node(self) -> int:
        return self.index // self.shape.gpus_per_node

    @property
    def local(self) -> int:
        return self.index % self.shape.gpus_per_node

    def global_at(self, ep_node: int, ep_local: int) -> int:
        """Global rank of the member at (EP node, EP local index)."""
        return self.ranks[ep_node * self.shape.gpus_per_node + ep_local]

    @property
    def first_expert(self) -> int:
        return self.index * self.shape.experts_per_rank


@dataclass
class EPGroup:
    """What a rank needs to dispatch: its layout, the process group, an optional hook,
    and optionally the rank's comm stream (every exchange is then issued on it)."""

    layout: EPLayout
    group: Any = None  # a torch.distributed ProcessGroup; None = the default group
    hook: TrafficHook | None = None
    stream: Any = None  # comm_stream.ThreadCommStream / CudaCommStream, or None (inline)
    timeout_s: float = 120.0


def make_ep_group(topology: Topology, ranks: list[int] | None, rank: int, n_experts: int,
                  group: Any = None, hook: TrafficHook | None = None,
                  stream: Any = None) -> EPGroup:
    """:class:`EPGroup` of ``rank`` in the EP group ``ranks`` (None: the whole world).

    ``group`` must be a process group containing exactly ``ranks`` (or the default
    group when they are the whole world); use a dedicated one when dispatch runs
    on a comm thread. ``stream``: the rank's comm stream (see the module docstring).
    """
    return EPGroup(EPLayout.build(topology, ranks, rank, n_experts), group, hook, stream)


def on_comm_stream(ep: EPGroup | None, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` issued on ``ep.stream`` (inline without one), with the caller's grad
    mode (a custom autograd Function's forward/backward runs with grad disabled, and a
    worker thread must not start recording a graph of its own)."""
    stream = getattr(ep, "stream", None)
    if stream is None:
        return fn(*args)
    grad = torch.is_grad_enabled()

    def body() -> Any:
        with torch.set_grad_enabled(grad):
            return fn(*args)
    return stream.call(body, timeout=getattr(ep, "timeout_s", 120.0))


# --------------------------------------------------------------------------- exchange


#: Process groups (by id; None = the default group) that already ran their warm-up.
_WARM_GROUPS: set[int] = set()


class _Exchanger:
    """Batched point-to-point exchanges of one plan, with traffic records."""

    def __init__(self, ep: EPGroup) -> None:
        self.ep = ep

    def _warm_up(self, device: torch.device) -> None:
        # NCCL: if batch_isend_irecv is the first operation on a group, every member must
        # take part, so each group runs one tiny all_reduce before its first exchange (once
        # per process group, not per dispatch: the first exchange of a plan is collective
        # over the EP group, so all members reach this point together).
        key = id(self.ep.group)
        if device.type != "cpu" and key not in _WARM_GROUPS:
            probe = torch.zeros(1, device=device)
            dist.all_reduce(probe, group=self.ep.group)
            _WARM_GROUPS.add(key)

    def run(self, sends: dict[int, torch.Tensor], recv_rows: dict[int, int], tail: tuple[int, ...],
            dtype: torch.dtype, device: torch.device, *, tag: int, record: tuple[str, str] | None,
            phase: str | None) -> dict[int, torch.Tensor]:
        """Send ``sends[peer]`` and receive ``recv_rows[peer]`` rows of shape ``tail`` from peers.

        ``record`` = (name prefix, collective) to report traffic, or None.
        """
        me = self.ep.layout.rank
        self._warm_up(device)
        t0 = time.monotonic_ns()
        out: dict[int, torch.Tensor] = {}
        ops = []
        for peer, tensor in sends.items():
            if peer == me:
                out[me] = tensor
            elif tensor.numel():
                ops.append(dist.P2POp(dist.isend, tensor.contiguous(), peer, group=self.ep.group,
                                      tag=tag))
        for peer, rows in recv_rows.items():
            if peer == me:
                continue
            buf = torch.empty((rows, *tail), dtype=dtype, device=device)
            out[peer] = buf
            if buf.numel():
                ops.append(dist.P2POp(dist.irecv, buf, peer, group=self.ep.group, tag=tag))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        t1 = time.monotonic_ns()
        if record is not None and self.ep.hook is not None:
            self._record(sends, record, phase, t0, t1, dtype)
        return out

    def _record(self, sends: dict[int, torch.Tensor], record: tuple[str, str], phase: str | None,
                t0: int, t1: int, dtype: torch.dtype) -> None:
        topo = self.ep.layout.topology
        me = self.ep.layout.rank
        per_link = {kind: [0] * topo.world_size for kind in LINKS}
        for peer, tensor in sends.items():
            per_link[topo.link(me, peer)][peer] += tensor.numel() * tensor.element_size()
        prefix, collective = record
        for kind in LINKS:
            if any(per_link[kind]):
                self.ep.hook.record_traffic(f"{prefix}:{kind}", collective, kind, per_link[kind],
                                            phase, t0, t1, dtype_name(dtype))


def _rows(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the true entries of a 1-D mask."""
    return torch.nonzero(mask, as_tuple=False).reshape(-1)


_TAG_COUNT, _TAG_META, _TAG_DATA = 11, 12, 13


# --------------------------------------------------------------------------- plans


class DispatchPlan:
    """The routing of one batch through the two hops of an EP group (DeepEP's "handle").

    Built collectively by every member (:func:`build_plan`). Attributes of the
    receiving side: ``recv_ids`` [R, k] global expert ids of each received row,
    ``recv_src`` / ``recv_tok`` its source rank and token index, ``segments``
    ``[(ep_index, start, end)]`` rows per EP rank held here (one segment).
    """

    _walk_tensors = True  # comm_stream.protect() follows its tensors

    def __init__(self, ep: EPGroup, n_tokens: int, top_k: int) -> None:
        self.ep = ep
        self.n_tokens = n_tokens
        self.top_k = top_k
        self._x = _Exchanger(ep)
        lay = ep.layout
        g = lay.shape.gpus_per_node
        self.hop1_peers = [lay.global_at(n, lay.local) for n in range(lay.shape.n_nodes)]
        self.hop2_peers = [lay.global_at(lay.node, j) for j in range(g)]

    # -- building -------------------------------------------------------------------------

    def _build(self, topk_ids: torch.Tensor, phase: str | None) -> None:
        lay = self.ep.layout
        dev = topk_ids.device
        ids = topk_ids.long()
        k = self.top_k
        ep_of = ids // lay.shape.experts_per_rank
        node_of = ep_of // lay.shape.gpus_per_node
        rec = ("layout", "two_hop_layout")

        # hop 1: one copy per destination node, to the member with my local index there
        self.tok_to_node = [_rows((node_of == n).any(1)) for n in range(lay.shape.n_nodes)]
        counts = self._x.run(
            {p: torch.tensor([len(t)], device=dev) for p, t in zip(self.hop1_peers,
                                                                  self.tok_to_node, strict=True)},
            {p: 1 for p in self.hop1_peers}, (), torch.long, dev, tag=_TAG_COUNT, record=rec,
            phase=phase)
        self.from_node = [int(counts[p][0]) for p in self.hop1_peers]
        meta = self._x.run(
            {p: torch.cat([t[:, None], ids[t]], 1)
             for p, t in zip(self.hop1_peers, self.tok_to_node, strict=True)},
            dict(zip(self.hop1_peers, self.from_node, strict=True)), (1 + k,), torch.long, dev,
            tag=_TAG_META, record=rec, phase=phase)
        staged = torch.cat([meta[p] for p in self.hop1_peers])
        staged_src = torch.cat([torch.full((c,), p, dtype=torch.long, device=dev)
                                for p, c in zip(self.hop1_peers, self.from_node, strict=True)])
        staged_meta = torch.cat([staged_src[:, None], staged], 1)  # src, tok, ids...
        self.n_staged = staged.shape[0]

        # hop 2: one copy per destination GPU of this node
        staged_ep = staged[:, 1:] // lay.shape.experts_per_rank
        base = lay.node * lay.shape.gpus_per_node
        self.staged_to_gpu = [_rows((staged_ep == base + j).any(1))
                              for j in range(lay.shape.gpus_per_node)]
        counts = self._x.run(
            {p: torch.tensor([len(r)], device=dev)
             for p, r in zip(self.hop2_peers, self.staged_to_gpu, strict=True)},
            {p: 1 for p in self.hop2_peers}, (), torch.long, dev, tag=_TAG_COUNT, record=rec,
            phase=phase)
        self.from_gpu = [int(counts[p][0]) for p in self.hop2_peers]
        meta = self._x.run(
            {p: staged_meta[r] for p, r in zip(self.hop2_peers, self.staged_to_gpu, strict=True)},
            dict(zip(self.hop2_peers, self.from_gpu, strict=True)), (2 + k,), torch.long, dev,
            tag=_TAG_META, record=rec, phase=phase)
        grouped = torch.cat([meta[p] for p in self.hop2_peers])
        # canonical order: (source rank, token index), stable
        key = grouped[:, 0] * (1 << 32) + grouped[:, 1]
        self.perm = torch.sort(key, stable=True).indices
        self.recv_src = grouped[self.perm, 0]
        self.recv_tok = grouped[self.perm, 1]
        self.recv_ids = grouped[self.perm, 2:]
        self.segments = [(lay.index, 0, int(self.perm.numel()))]

    # -- data paths -----------------------------------------------------------------------

    def forward_rows(self, src: torch.Tensor, *, phase: str | None = None,
                     collective: str = "two_hop_dispatch", name: str = "dispatch") -> torch.Tensor:
        """Dispatch path: [n_tokens, ...] rows -> [R, ...] received rows (copies, no sums)."""
        if src.shape[0] != self.n_tokens:
            raise ValueError(f"dispatch: expected {self.n_tokens} rows, got {src.shape[0]}")
        tail = tuple(src.shape[1:])
        rec = (name, collective)
        got = self._x.run({p: src[t] for p, t in zip(self.hop1_peers, self.tok_to_node,
                                                     strict=True)},
                          dict(zip(self.hop1_peers, self.from_node, strict=True)), tail, src.dtype,
                          src.device, tag=_TAG_DATA, record=rec, phase=phase)
        staged = torch.cat([got[p] for p in self.hop1_peers])
        got = self._x.run({p: staged[r] for p, r in zip(self.hop2_peers, self.staged_to_gpu,
                                                        strict=True)},
                          dict(zip(self.hop2_peers, self.from_gpu, strict=True)), tail, src.dtype,
                          src.device, tag=_TAG_DATA, record=rec, phase=phase)
        return torch.cat([got[p] for p in self.hop2_peers])[self.perm]

    def reverse_sum(self, rows: torch.Tensor, *, phase: str | None = None,
                    collective: str = "two_hop_combine", name: str = "combine") -> torch.Tensor:
        """Combine path: [R, ...] partial rows -> [n_tokens, ...] sums (node, then source)."""
        if rows.shape[0] != self.perm.numel():
            raise ValueError(f"combine: expected {self.perm.numel()} rows, got {rows.shape[0]}")
        tail = tuple(rows.shape[1:])
        rec = (name, collective)
        grouped = torch.empty_like(rows)
        grouped[self.perm] = rows
        pieces = torch.split(grouped, self.from_gpu)
        got = self._x.run(dict(zip(self.hop2_peers, pieces, strict=True)),
                          {p: len(r) for p, r in zip(self.hop2_peers, self.staged_to_gpu,
                                                     strict=True)},
                          tail, rows.dtype, rows.device, tag=_TAG_DATA, record=rec, phase=phase)
        node_sum = torch.zeros((self.n_staged, *tail), dtype=rows.dtype, device=rows.device)
        for p, r in zip(self.hop2_peers, self.staged_to_gpu, strict=True):
            node_sum.index_add_(0, r, got[p])  # ascending local index: a fixed summation order
        pieces = torch.split(node_sum, self.from_node)
        got = self._x.run(dict(zip(self.hop1_peers, pieces, strict=True)),
                          {p: len(t) for p, t in zip(self.hop1_peers, self.tok_to_node,
                                                     strict=True)},
                          tail, rows.dtype, rows.device, tag=_TAG_DATA, record=rec, phase=phase)
        out = torch.zeros((self.n_tokens, *tail), dtype=rows.dtype, device=rows.device)
        for p, t in zip(self.hop1_peers, self.tok_to_node, strict=True):
            out.index_add_(0, t, got[p])  # ascending node order
        return out


def build_plan(topk_ids: torch.Tensor, ep: EPGroup, *, phase: str | None = None) -> DispatchPlan:
    """Exchange counts and routing metadata through both hops (collective over the EP group)."""
    if topk_ids.dim() != 2:
        raise ValueError(f"build_plan: topk_ids must be [tokens, k], got {tuple(topk_ids.shape)}")
    n_exp = ep.layout.shape.n_experts
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= n_exp):
        raise ValueError(f"build_plan: expert ids must be in 0..{n_exp - 1}")
    plan = DispatchPlan(ep, topk_ids.shape[0], topk_ids.shape[1])
    on_comm_stream(ep, plan._build, topk_ids, phase)
    return plan


class LocalPlan:
    """Single-process stand-in for :class:`DispatchPlan` holding every EP rank's experts.

    The batch is the concatenation of all source ranks' tokens in EP-index order;
    received rows are grouped per EP rank (``segments``) in global token order and
    sums follow the distributed order (per node: ascending local index; then
    ascending node), so results equal the distributed ones bit for bit when the
    expert inputs are the same.
    """

    _walk_tensors = True

    def __init__(self, topk_ids: torch.Tensor, shape: EPShape) -> None:
        ids = topk_ids.long()
        self.n_tokens, self.top_k = ids.shape
        self.shape = shape
        ep_of = ids // shape.experts_per_rank
        self.rows_of = [_rows((ep_of == q).any(1)) for q in range(shape.world)]
        self.segments = []
        start = 0
        for q, r in enumerate(self.rows_of):
            self.segments.append((q, start, start + len(r)))
            start += len(r)
        order = torch.cat(self.rows_of)
        self.recv_tok = order
        self.recv_ids = ids[order]

    def forward_rows(self, src: torch.Tensor, **_: Any) -> torch.Tensor:
        return src[self.recv_tok]

    def reverse_sum(self, rows: torch.Tensor, **_: Any) -> torch.Tensor:
        tail = tuple(rows.shape[1:])
        out = torch.zeros((self.n_tokens, *tail), dtype=rows.dtype, device=rows.device)
        g = self.shape.gpus_per_node
        for n in range(self.shape.n_nodes):
            node_sum = torch.zeros_like(out)
            for j in range(g):
                q, s, e = self.segments[n * g + j]
                node_sum.index_add_(0, self.rows_of[q], rows[s:e])
            out = out + node_sum  # rows not on node n add an exact zero
        return out


# --------------------------------------------------------------------------- autograd


def _comm(plan: Any, fn: Any, rows: torch.Tensor, phase: str | None) -> torch.Tensor:
    """One data path of ``plan`` on the EP group's comm stream (LocalPlan: inline)."""
    ep = getattr(plan, "ep", None)
    return on_comm_stream(ep, lambda: fn(rows, phase=phase))


class _DispatchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, src: torch.Tensor, plan: Any, phases: tuple) -> torch.Tensor:
        ctx.plan, ctx.bwd_phase = plan, phases[1]
        return _comm(plan, plan.forward_rows, src, phases[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        # dispatch's backward sums the gradients of all copies: a combine. It is issued
        # on the comm stream too, whatever stream autograd runs this function on.
        plan = ctx.plan
        return _comm(plan, plan.reverse_sum, grad.contiguous(), ctx.bwd_phase), None, None


class _CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, plan: Any, phases: tuple) -> torch.Tensor:
        ctx.plan, ctx.bwd_phase = plan, phases[1]
        return _comm(plan, plan.reverse_sum, rows, phases[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        # combine's backward hands every partial its token's gradient: a cached dispatch
        plan = ctx.plan
        return _comm(plan, plan.forward_rows, grad.contiguous(), ctx.bwd_phase), None, None


def two_hop_dispatch(plan: DispatchPlan | LocalPlan, src: torch.Tensor, *,
                     phase: str | None = "dispatch(F)",
                     backward_phase: str | None = "dispatch(B)") -> torch.Tensor:
    """Differentiable dispatch of ``src`` [n_tokens, ...] rows along ``plan``."""
    return _DispatchFn.apply(src, plan, (phase, backward_phase))


def two_hop_combine(plan: DispatchPlan | LocalPlan, rows: torch.Tensor, *,
                    phase: str | None = "combine(F)",
                    backward_phase: str | None = "combine(B)") -> torch.Tensor:
    """Differentiable combine of partial ``rows`` [R, ...] back to [n_tokens, ...] sums."""
    return _CombineFn.apply(rows, plan, (phase, backward_phase))
