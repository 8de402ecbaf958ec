"""Two-hop dispatch/combine across gloo ranks equals the single-process model.

Each rank runs one MoE block (float64) on its own micro-batch with its share of
the experts; the parent runs the same block with all experts on the
concatenated batch. Checked: which tokens reach which rank (against a brute-force
recount from the reference routing), the block output (exactly: expert GEMMs
see identical rows in identical order and all sums follow the same order), the
gradients, and the traffic each rank recorded (against bytes counted by hand
from the routing).

Gradient tolerance: the reference reduces weight gradients over the whole batch
in one GEMM, the ranks over their own tokens and the test then adds the rank
partials; with float64 and ~100 tokens the rounding difference is ~1e-15
relative, so rtol = atol = 1e-10 leaves a wide margin while any routing or
summation mistake shows up at 1e-2 or worse.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from overlapscope.profiler.comm_stream import ThreadCommStream
from overlapscope.profiler.dispatch import EPGroup, EPLayout, TrafficLog
from overlapscope.profiler.model import ModelConfig, MoEBlock, make_batch
from overlapscope.profiler.topology import Topology

SEED = 1234
BATCH, SEQ = 2, 6
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _config(nodes: int, gpn: int) -> ModelConfig:
    return ModelConfig(hidden=16, n_heads=2, expert_ffn=12, shared_ffn=16,
                       n_experts=2 * nodes * gpn,
                       top_k=3, max_nodes=min(2, nodes), ep_nodes=nodes, ep_gpus_per_node=gpn,
                       dtype="float64")


def _worker(rank: int, world: int, nodes: int, gpus_per_node: int, ep_groups: list[list[int]],
            threaded: bool) -> dict:
    topo = Topology(nodes, gpus_per_node)
    groups = [dist.new_group(g) for g in ep_groups]  # every rank creates every group
    mine = next(i for i, g in enumerate(ep_groups) if rank in g)
    members = ep_groups[mine]
    layout = EPLayout.build(topo, members, rank, len(members))  # to size the config
    cfg = _config(layout.shape.n_nodes, layout.shape.gpus_per_node)
    log = TrafficLog()
    ep = EPGroup(EPLayout.build(topo, members, rank, cfg.n_experts), groups[mine], log)
    block = MoEBlock(cfg, SEED, 0, 0, ep)
    x, target = make_batch(cfg, BATCH, SEQ, SEED, rank)
    x.requires_grad_(True)
    if threaded:  # the whole block forward on a comm thread, as a workload would run comm
        with ThreadCommStream() as stream:
            y = stream.submit(block, x).result(60)
    else:
        y = block(x)
    (y * target).sum().backward()
    a = block.attn_forward(x.detach())
    r = block.dispatch_forward(a, phase=None)
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "grads": {n: p.grad for n, p in block.named_parameters()},
        "recv_src": r.plan.recv_src,
        "recv_tok": r.plan.recv_tok,
        "recv_ids": r.plan.recv_ids,
        "traffic": log.records,
        "first_expert": block.first_expert,
    }


def _reference(cfg: ModelConfig, ranks: list[int]) -> dict:
    """All experts in one process, on the EP group's batches concatenated in rank order."""
    torch.set_num_threads(1)
    block = MoEBlock(cfg, SEED, 0, 0)
    xs, ts = zip(*(make_batch(cfg, BATCH, SEQ, SEED, r) for r in ranks), strict=True)
    x = torch.cat(xs).requires_grad_(True)
    y = block(x)
    (y * torch.cat(ts)).sum().backward()
    ids = block.attn_forward(x.detach()).topk_ids
    return {"block": block, "y": y.detach(), "x_grad": x.grad, "ids": ids}


def _expected_recv(ids: torch.Tensor, ep_ranks: list[int], ep_index: int, per_rank: int,
                   tokens_per_rank: int) -> list[tuple[int, int]]:
    """(source rank, token) pairs that should reach EP rank ``ep_index``, by brute force."""
    out = []
    for t in range(ids.shape[0]):
        if any(int(e) // per_rank == ep_index for e in ids[t]):
            out.append((ep_ranks[t // tokens_per_rank], t % tokens_per_rank))
    return out


def _expected_dispatch_bytes(ids: torch.Tensor, topo: Topology, ep_ranks: list[int], cfg,
                             tokens_per_rank: int) -> dict[tuple[int, int], int]:
    """Bytes per (sender, receiver) of one data dispatch, counted token by token."""
    row = (cfg.hidden + cfg.top_k) * 8  # float64 token + its gate weights
    g = cfg.ep_gpus_per_node
    per_rank = cfg.n_experts // len(ep_ranks)
    sent: dict[tuple[int, int], int] = {}
    for t in range(ids.shape[0]):
        src_i = t // tokens_per_rank
        gpus = sorted({int(e) // per_rank for e in ids[t]})
        for node in sorted({q // g for q in gpus}):
            fwd_i = node * g + src_i % g  # same local index on the destination node
            key = (ep_ranks[src_i], ep_ranks[fwd_i])
            sent[key] = sent.get(key, 0) + row
            for q in gpus:
                if q // g == node:
                    key = (ep_ranks[fwd_i], ep_ranks[q])
                    sent[key] = sent.get(key, 0) + row
    return sent


def _check(results: list[dict], nodes: int, gpn: int, ep_groups: list[list[int]]) -> None:
    topo = Topology(nodes, gpn)
    for members in ep_groups:
        shape = EPLayout.build(topo, members, members[0], len(members)).shape
        cfg = _config(shape.n_nodes, shape.gpus_per_node)
        ref = _reference(cfg, members)
        n_tok = BATCH * SEQ
        per_rank = cfg.n_experts // len(members)
        for i, r in enumerate(members):
            res = results[r]
            # outputs are bitwise equal: same GEMM inputs, same summation order
            assert torch.equal(res["y"], ref["y"][i * BATCH:(i + 1) * BATCH])
            got = list(zip(res["recv_src"].tolist(), res["recv_tok"].tolist(), strict=True))
            want = _expected_recv(ref["ids"], members, i, per_rank, n_tok)
            assert got == want
            rows = [members.index(s) * n_tok + t for s, t in want]
            assert torch.equal(res["recv_ids"], ref["ids"][rows])
            torch.testing.assert_close(res["x_grad"], ref["x_grad"][i * BATCH:(i + 1) * BATCH],
                                       **TOL)
        # routed experts: each rank holds a slice of the reference experts
        for name, p in ref["block"].named_parameters():
            if name.startswith("experts."):
                e = int(name.split(".")[1])
                owner = members[e // per_rank]
                local = f"experts.{e - results[owner]['first_expert']}." + name.split(".", 2)[2]
                torch.testing.assert_close(results[owner]["grads"][local], p.grad, **TOL)
            else:  # replicated parameters: the reference gradient is the sum over ranks
                total = sum(results[r]["grads"][name] for r in members)
                torch.testing.assert_close(total, p.grad, **TOL)
        # traffic of the forward data dispatch vs a hand count from the reference routing
        want = _expected_dispatch_bytes(ref["ids"], topo, members, cfg, n_tok)
        for r in members:
            recs = [x for x in results[r]["traffic"]
                    if x["collective"] == "two_hop_dispatch" and x["phase"] == "dispatch(F)"]
            got: dict[int, int] = {}
            for rec in recs:
                assert rec["hop"] in ("ib", "nvl", "local") and rec["dtype"] == "float64"
                for dst, b in enumerate(rec["dst_bytes"]):
                    if b:
                        assert topo.link(r, dst) == rec["hop"]
                        got[dst] = got.get(dst, 0) + b
            expect = {dst: b for (src, dst), b in want.items() if src == r}
            assert got == expect
            # the backward of combine re-sends hidden-sized gradient rows along the same path
            back = [x for x in results[r]["traffic"] if x["phase"] == "combine(B)"]
            total_back = sum(sum(x["dst_bytes"]) for x in back)
            assert total_back * (cfg.hidden + cfg.top_k) == sum(expect.values()) * cfg.hidden


@pytest.mark.slow  # spawns gloo ranks (multi-process)
def test_two_hop_matches_reference_2x2(run_ranks) -> None:
    groups = [[0, 1, 2, 3]]
    _check(run_ranks(_worker, 4, 2, 2, groups, False), 2, 2, groups)


@pytest.mark.slow  # spawns gloo ranks (multi-process)
def test_two_hop_on_comm_thread_and_strided_ep_groups(run_ranks) -> None:
    # EP groups {0,2} and {1,3} span both nodes with one member per node (as PP x EP layouts do)
    groups = [[0, 2], [1, 3]]
    _check(run_ranks(_worker, 4, 2, 2, groups, True), 2, 2, groups)


@pytest.mark.slow
def test_two_hop_matches_reference_2x4(run_ranks) -> None:
    groups = [list(range(8))]
    _check(run_ranks(_worker, 8, 2, 4, groups, False), 2, 4, groups)


# --------------------------------------------------------------------------- ep-dispatch workload


class _FakeSession:
    """Records annotations (name, thread) and traffic, like ProfileSession's API."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, int]] = []
        self.traffic: list[dict] = []
        self.steps = 0

    def annotate(self, name: str):
        import contextlib
        import threading

        self.spans.append((name, threading.get_ident()))
        return contextlib.nullcontext()

    def record_traffic(self, name, collective, hop, dst_bytes, phase, t0_ns, t1_ns, dtype):
        assert t0_ns <= t1_ns
        self.traffic.append({"collective": collective, "hop": hop, "dst_bytes": dst_bytes,
                             "phase": phase, "dtype": dtype})

    def step(self) -> None:
        self.steps += 1


def _workload_worker(rank: int, world: int, cfg: dict) -> dict:
    import threading
    import types

    from overlapscope.profiler.workloads import ep_dispatch

    session = _FakeSession()
    with ThreadCommStream() as stream:
        ctx = types.SimpleNamespace(
            rank=rank, world_size=world, local_rank=rank % cfg["gpus_per_node"],
            topology=Topology(cfg["nodes"], cfg["gpus_per_node"]), device=torch.device("cpu"),
            backend="gloo", comm_stream=stream, comm_group=dist.new_group(list(range(world))),
            timeout_s=60.0)
        facts = ep_dispatch.run(ctx, session, cfg)
    main = threading.get_ident()
    return {"facts": facts, "steps": session.steps, "traffic": session.traffic,
            "spans": [(name, tid == main) for name, tid in session.spans]}


@pytest.mark.slow  # spawns gloo ranks (multi-process)
def test_ep_dispatch_workload_phases_threads_and_traffic(run_ranks) -> None:
    from overlapscope.profiler.workloads.ep_dispatch import model_config

    cfg = {"nodes": 2, "gpus_per_node": 2, "steps": 2, "micro_batches": 2, "seed": 3,
           "batch": 1, "seq": 6, "hidden": 16, "lr": 0.0, "dtype": "float64"}
    results = run_ranks(_workload_worker, 4, cfg)
    mcfg = model_config(cfg)
    assert (mcfg.n_experts, mcfg.max_nodes, mcfg.top_k) == (8, 1, 4)
    # routing of every chunk, recomputed in this process (lr = 0: the weights stay put)
    block = MoEBlock(mcfg, 3, 0, 0)
    topo = Topology(2, 2)
    want_ib = dict.fromkeys(range(4), 0)
    for step in range(2):
        for chunk in range(2):  # the workload's micro-batch numbering
            xs = [make_batch(mcfg, 1, 6, 3, (step * 4 + r) * 2 + chunk)[0] for r in range(4)]
            ids = block.attn_forward(torch.cat(xs)).topk_ids
            for (src, dst), b in _expected_dispatch_bytes(ids, topo, [0, 1, 2, 3], mcfg,
                                                          6).items():
                if topo.link(src, dst) == "ib":
                    want_ib[src] += b
    comm_phases = {"dispatch(F)", "combine(F)", "combine(B)", "dispatch(B)"}
    for rank, res in enumerate(results):
        assert res["steps"] == 2 and len(res["facts"]["loss"]) == 2
        names = {n for n, _ in res["spans"]}
        assert names == comm_phases | {"attn(F)", "mlp(F)", "mlp(B)", "attn(B)"}
        for name, on_main in res["spans"]:
            assert on_main == (name not in comm_phases), name  # comm phases on the comm thread
        got_ib = sum(sum(t["dst_bytes"]) for t in res["traffic"]
                     if t["phase"] == "dispatch(F)" and t["hop"] == "ib"
                     and t["collective"] == "two_hop_dispatch")
        assert got_ib == want_ib[rank]
        phases = {(t["phase"], t["collective"]) for t in res["traffic"]}
        assert {("combine(F)", "two_hop_combine"), ("combine(B)", "two_hop_dispatch"),
                ("dispatch(B)", "two_hop_combine")} <= phases


@pytest.mark.gpu
def test_two_hop_on_cuda_with_nccl_matches_cpu_reference() -> None:
    """One nccl rank on the GPU (a machine has one GPU per rank): the device path of the
    exchanges, plan and autograd functions. Tolerance: CUDA float64 GEMMs sum in another
    order than the CPU reference, so results agree to ~1e-15 relative, not bitwise."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from gloo_ranks import free_port

    dev = torch.device("cuda", 0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1, device_id=dev)
    try:
        cfg = _config(1, 1).with_(n_experts=4, top_k=2, max_nodes=1)
        log = TrafficLog()
        block = MoEBlock(cfg, SEED, 0, 0,
                         EPGroup(EPLayout.build(Topology(1, 1), None, 0, 4), None, log)).to(dev)
        ref = MoEBlock(cfg, SEED, 0, 0)
        x, target = make_batch(cfg, BATCH, SEQ, SEED, 0)
        xg = x.to(dev).requires_grad_(True)
        (block(xg) * target.to(dev)).sum().backward()
        xc = x.clone().requires_grad_(True)
        (ref(xc) * target).sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, **TOL)
        for (name, p), q in zip(block.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad.cpu(), q.grad, **TOL, msg=name)
        assert log.records and all(r["hop"] == "local" for r in log.records)
    finally:
        dist.destroy_process_group()
