"""CUDA comm-stream paths on one GPU (gpu-marked: run by scripts/gpu_check.sh).

1. Every two-hop exchange of a plain (unpaired) forward and its backward is issued on
   the comm side stream, not on the stream autograd runs the op's backward on.
2. One overlapped F&B pair (``PhasedStage.overlapped_forward_backward``) with and without
   the comm stream: equal gradients; with it, the kernels launched by the comm thread run
   on the side stream, those of the main thread on the default stream, and side-stream
   kernels overlap default-stream kernels in time (overlap > 0). The traces go to
   ``$OVERLAPSCOPE_GPU_OUT`` when set (gpu_check.sh collects them).
3. A failure while setting up the side stream raises at once (no hang).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from overlapscope.profiler.comm_stream import CudaCommStream  # noqa: E402
from overlapscope.profiler.model import ModelConfig, build_stage, make_batch, stage_loss  # noqa: E402
from overlapscope.profiler.session import ProfileSession  # noqa: E402
from overlapscope.profiler.topology import Topology  # noqa: E402
from overlapscope.profiler.workloads.dualpipe_moe import PhasedStage, _no_annotation  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = torch.device("cuda", 0)


def _out_dir(tmp_path: Path, name: str) -> Path:
    root = os.environ.get("OVERLAPSCOPE_GPU_OUT")
    out = Path(root) / name if root else tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_plain_forward_and_backward_exchanges_are_issued_on_the_side_stream() -> None:
    import socket

    import torch.distributed as dist

    from overlapscope.profiler.dispatch import EPGroup, EPLayout
    from overlapscope.profiler.model import MoEBlock

    class StreamLog:
        def __init__(self) -> None:
            self.streams: list[tuple[str | None, int]] = []

        def record_traffic(self, name, collective, hop, dst_bytes, phase, t0, t1, dtype):
            self.streams.append((phase, torch.cuda.current_stream(DEV).cuda_stream))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, device_id=DEV)
    try:
        cfg = ModelConfig(hidden=32, n_heads=2, expert_ffn=32, shared_ffn=32, n_experts=4,
                          top_k=2, max_nodes=1, ep_nodes=1, ep_gpus_per_node=1)
        log = StreamLog()
        with CudaCommStream(DEV) as comm:
            ep = EPGroup(EPLayout.build(Topology(1, 1), None, 0, 4), None, log, stream=comm)
            block = MoEBlock(cfg, 3, 0, 0, ep).to(DEV)
            x, target = make_batch(cfg, 2, 8, 3, 0)
            x = x.to(DEV).requires_grad_(True)
            ((block(x) - target.to(DEV)) ** 2).sum().backward()  # main thread, plain ops
            torch.cuda.synchronize()
            side = comm.stream.cuda_stream
        phases = {p for p, _ in log.streams}
        assert {"dispatch(F)", "combine(F)", "dispatch(B)", "combine(B)"} <= phases
        assert {s for _, s in log.streams} == {side}, log.streams
        assert torch.cuda.current_stream(DEV).cuda_stream != side
        assert x.grad is not None and torch.isfinite(x.grad).all()
    finally:
        dist.destroy_process_group()


def _pair(comm: CudaCommStream | None, session: ProfileSession | None):
    """One overlapped pair: forward of micro-batch 1 with the backward of micro-batch 0."""
    cfg = ModelConfig(hidden=512, n_heads=8, expert_ffn=1024, shared_ffn=1024, n_experts=8,
                      top_k=4, max_nodes=1, ep_nodes=2, ep_gpus_per_node=1,
                      blocks_per_stage=2)
    ann = session.annotate if session is not None else _no_annotation
    mods = [PhasedStage(build_stage(cfg, 0, 1, 5), ann, comm).to(DEV) for _ in range(2)]
    (x0, y0), (x1, y1) = (make_batch(cfg, 4, 256, 5, i) for i in range(2))
    x0, y0, x1, y1 = (t.to(DEV) for t in (x0, y0, x1, y1))
    x0.requires_grad_(True)
    out0 = mods[0](x0)
    loss0 = stage_loss(out0, y0)
    torch.cuda.synchronize()
    out1, loss1 = PhasedStage.overlapped_forward_backward(
        mods[1], x1, stage_loss, y1, mods[0], loss0, out0, None)
    loss1.backward()
    torch.cuda.synchronize()
    grads = [p.grad.detach().clone() for m in mods for p in m.parameters()
             if p.grad is not None]
    return float(loss1), grads, x0.grad.detach().clone()


def _kernels(path: Path) -> tuple[list[dict], dict[int, int]]:
    """Kernel events and, per correlation id, the host thread that launched it."""
    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    ev = doc["traceEvents"]
    kernels = [e for e in ev if e.get("cat") == "kernel"]
    launcher = {e["args"]["correlation"]: e["tid"] for e in ev
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    return kernels, launcher


def _overlap_us(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    def union(xs):
        out: list[list[float]] = []
        for s, e in sorted(xs):
            if out and s <= out[-1][1]:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e])
        return out
    total, ua, ub = 0.0, union(a), union(b)
    for s0, e0 in ua:
        for s1, e1 in ub:
            total += max(0.0, min(e0, e1) - max(s0, s1))
    return total


def test_overlapped_pair_with_and_without_the_comm_stream(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loss_a, grads_a, xg_a = _pair(None, None)  # everything inline, one stream
    out = _out_dir(tmp_path, "pair_comm_stream")
    with CudaCommStream(DEV) as comm:
        session = ProfileSession(out, rank=0, world_size=1, cuda=True, write_run_json=False,
                                 workload={"name": "gpu-pair"})
        session.comm_tid = comm.native_id
        with session:
            _pair(comm, session)  # warm-up inside the trace is fine: one step
            loss_b, grads_b, xg_b = _pair(comm, session)
            session.step()
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xg_a, xg_b, rtol=1e-5, atol=1e-6)

    kernels, launcher = _kernels(out / "rank-0.json.gz")
    comm_tid = session.comm_tid
    by_thread: dict[str, set[int]] = {"comm": set(), "other": set()}
    for k in kernels:
        tid = launcher.get(k["args"].get("correlation"))
        if tid is not None:
            by_thread["comm" if tid == comm_tid else "other"].add(k["args"]["stream"])
    assert len(by_thread["comm"]) == 1, by_thread  # the comm thread launches on one stream
    side = next(iter(by_thread["comm"]))
    others = [k for k in kernels if k["args"]["stream"] != side]
    on_side = [k for k in kernels if k["args"]["stream"] == side]
    assert on_side and others
    iv = lambda ks: [(float(k["ts"]), float(k["ts"]) + float(k["dur"])) for k in ks]  # noqa: E731
    overlap = _overlap_us(iv(on_side), iv(others))
    (out / "summary.json").write_text(json.dumps({
        "side_stream": side, "side_kernels": len(on_side), "other_kernels": len(others),
        "overlap_us": overlap, "streams_by_thread": {k: sorted(v) for k, v in
                                                     by_thread.items()}}, indent=1))
    assert overlap > 0, "comm-stream kernels never ran concurrently with compute"


def test_side_stream_setup_failure_raises_without_hanging() -> None:
    import time

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="comm stream setup failed"):
        CudaCommStream(torch.device("cuda", torch.cuda.device_count() + 3))
    assert time.monotonic() - t0 < 30
