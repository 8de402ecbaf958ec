"""Multi-process launches: run directories, trace contents, failure paths, demo commands."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from overlapscope.app.cli import app  # noqa: E402
from overlapscope.profiler.run import LaunchError, RunConfig, run_local  # noqa: E402

COMM_ELEMS = 65536  # float32 elements all-reduced per micro-batch by the smoke workload


def _trace(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersection_us(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    total = 0.0
    for a0, a1 in _union(xs):
        for b0, b1 in _union(ys):
            total += max(0.0, min(a1, b1) - max(a0, b0))
    return total


def _spans(events: list[dict], tid: int, prefix: str) -> list[tuple[float, float]]:
    return [
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if e.get("ph") == "X" and e.get("tid") == tid and e.get("name", "").startswith(prefix)
    ]


@pytest.mark.slow
def test_smoke_run_with_four_ranks(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    cfg = RunConfig(
        workload="smoke",
        nodes=2,
        gpus_per_node=2,
        steps=2,
        out=str(out),
        timeout_s=110,
        collective_timeout_s=60,
        extra={"micro_batches": 3, "comm_elems": COMM_ELEMS, "dim": 160, "matmuls": 12},
    )
    result = run_local(cfg)
    assert [r["rank"] for r in result["results"]] == [0, 1, 2, 3]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["world_size"] == 4 and manifest["backend"] == "gloo"
    assert manifest["files"] == [f"rank-{r}.json.gz" for r in range(4)]
    assert manifest["topology"]["nodes"] == 2
    assert manifest["launcher"]["mode"] == "local"
    assert all(entry["wall_s"] > 0 for entry in manifest["ranks"])
    # Ring all-reduce model, by hand: W = 4, 65536 floats = 262144 bytes; each rank sends
    # 2 (W-1)/W of it = 393216 bytes to its successor, per micro-batch.
    expected_sent = 393216
    successor_hop = {0: "nvl", 1: "ib", 2: "nvl", 3: "ib"}  # 2 nodes x 2 GPUs
    for rank in range(4):
        doc = _trace(out / f"rank-{rank}.json.gz")
        meta = doc["overlapscope"]
        assert meta["rank"] == rank and meta["world_size"] == 4
        events = doc["traceEvents"]
        names = {e.get("name") for e in events}
        assert {f"smoke:F:mb={m}:stage=0" for m in range(3)} <= names
        assert "ProfilerStep#1" in names
        traffic = [e for e in events if e.get("cat") == "comm_traffic"]
        assert len(traffic) == 2 * 3  # steps x micro-batches
        vector = [0, 0, 0, 0]
        vector[(rank + 1) % 4] = expected_sent
        hop = successor_hop[rank]
        for e in traffic:
            assert e["args"]["dst_bytes"] == vector
            assert e["name"] == f"all_reduce:{hop}" and e["args"]["hop"] == hop
        # Communication on the comm thread overlaps compute on the main thread.
        comm_tid = meta["comm_tid"]
        main_tid = next(e["tid"] for e in events if e.get("name", "").startswith("smoke:F:"))
        assert comm_tid != main_tid
        comm = _spans(events, comm_tid, "smoke:allreduce")
        compute = _spans(events, main_tid, "smoke:F:")
        assert len(comm) == 6 and len(compute) == 6
        assert _intersection_us(comm, compute) > 0.0
        # gloo's own ops were recorded on the comm thread too (profile_all_threads).
        assert any(e.get("tid") == comm_tid and e.get("name") == "c10d::allreduce_" for e in events)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "words"),
    [("raise", "injected failure on rank 2"), ("kill", "SIGKILL"), ("exit", "status 3")],
)
def test_a_dying_rank_fails_the_launch(tmp_path: Path, mode: str, words: str) -> None:
    cfg = RunConfig(
        workload="smoke",
        nodes=2,
        gpus_per_node=2,
        steps=3,
        out=str(tmp_path / mode),
        timeout_s=100,
        collective_timeout_s=60,
        extra={"fail_rank": 2, "fail_mode": mode, "fail_step": 1, "comm_elems": 1024},
    )
    with pytest.raises(LaunchError) as info:
        run_local(cfg)
    assert info.value.rank == 2
    assert words in info.value.reason


@pytest.mark.slow
def test_cli_reports_a_failed_rank_with_status_1(tmp_path: Path) -> None:
    args = [
        "profile",
        "--workload",
        "smoke",
        "--nodes",
        "1",
        "--gpus-per-node",
        "2",
        "--out",
        str(tmp_path / "f"),
        "--set",
        "fail_rank=1",
        "--set",
        "comm_elems=1024",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "rank 1 failed" in text and "injected failure" in text


def _have(module: str) -> bool:
    return importlib.util.find_spec(f"overlapscope.profiler.workloads.{module}") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _have("dualpipe_moe"), reason="dualpipe-moe workload not written yet")
@pytest.mark.parametrize("schedule", ["dualpipe", "1f1b"])
def test_demo_dualpipe_moe(tmp_path: Path, schedule: str) -> None:
    out = tmp_path / schedule
    args = [
        "profile",
        "--workload",
        "dualpipe-moe",
        "--schedule",
        schedule,
        "--pp",
        "2",
        "--ep",
        "4",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--micro-batches",
        "8",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["schedule"]["name"] == schedule and manifest["world_size"] == 8
    sent: dict[tuple[str, str], int] = {}
    for rank in range(8):
        doc = _trace(out / f"rank-{rank}.json.gz")
        assert doc["overlapscope"]["schedule"]["pp"] == 2
        names = [e.get("name", "") for e in doc["traceEvents"]]
        assert any(n.startswith(f"{schedule}:") for n in names)
        for e in doc["traceEvents"]:
            if e.get("cat") == "comm_traffic":
                key = (e["args"]["collective"], e["args"]["hop"])
                sent[key] = sent.get(key, 0) + sum(e["args"]["dst_bytes"])
        routing = manifest["ranks"][rank]["routing"]
        assert routing == doc["overlapscope"]["routing"]
        assert routing["max_nodes"] == 1 < routing["nodes"] == 2
        assert routing["tokens_redirected"] > 0 and routing["ib_bytes_saved"] > 0
    # the demo exercises IB and NVLink in both directions of the two-hop exchange
    for key in [(c, h) for c in ("two_hop_dispatch", "two_hop_combine") for h in ("ib", "nvl")]:
        assert sent.get(key, 0) > 0, (key, sent)


@pytest.mark.slow
@pytest.mark.skipif(not _have("ep_dispatch"), reason="ep-dispatch workload not written yet")
def test_demo_ep_dispatch(tmp_path: Path) -> None:
    out = tmp_path / "ep"
    args = [
        "profile",
        "--workload",
        "ep-dispatch",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["world_size"] == 8 and manifest["layout"]["ep"] == 8
    hops = set()
    for rank in range(8):
        doc = _trace(out / f"rank-{rank}.json.gz")
        hops |= {e["args"]["hop"] for e in doc["traceEvents"] if e.get("cat") == "comm_traffic"}
    assert {"ib", "nvl"} <= hops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_smoke_on_gpu_with_nccl_and_side_stream(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    cfg = RunConfig(
        workload="smoke",
        nodes=1,
        gpus_per_node=1,
        backend="auto",
        out=str(out),
        timeout_s=300,
        extra={"dim": 1024, "matmuls": 8},
    )
    result = run_local(cfg)
    assert result["config"].backend == "nccl"
    doc = _trace(out / "rank-0.json.gz")
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    assert kernels, "no CUDA kernels recorded"
    assert json.loads((out / "run.json").read_text())["device_type"] == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_comm_stream_orders_side_stream_work() -> None:
    from overlapscope.profiler.comm_stream import CudaCommStream

    device = torch.device("cuda", 0)
    x = torch.randn(2048, 2048, device=device)
    with CudaCommStream(device) as stream:
        pending = stream.submit(lambda: (x @ x).sum())
        value = pending.result(timeout=60)
        # The caller's stream waits for the side stream: the value is ready and correct.
        assert torch.allclose(value, (x @ x).sum(), rtol=1e-3)
        assert torch.cuda.current_stream(device) != stream.stream


@pytest.mark.slow
def test_a_hanging_rank_is_named_after_the_collective_timeout(tmp_path: Path) -> None:
    cfg = RunConfig(
        workload="smoke",
        nodes=1,
        gpus_per_node=3,
        out=str(tmp_path / "hang"),
        timeout_s=100,
        collective_timeout_s=4,
        extra={"fail_rank": 1, "fail_mode": "hang", "comm_elems": 1024},
    )
    with pytest.raises(LaunchError) as info:
        run_local(cfg)
    assert info.value.rank == 1
    assert "stopped responding" in info.value.reason


@pytest.mark.slow
def test_the_whole_launch_times_out(tmp_path: Path) -> None:
    cfg = RunConfig(
        workload="smoke",
        nodes=1,
        gpus_per_node=2,
        out=str(tmp_path / "slow"),
        timeout_s=3,
        collective_timeout_s=60,
        extra={"fail_rank": 0, "fail_mode": "hang", "comm_elems": 1024},
    )
    with pytest.raises(LaunchError) as info:
        run_local(cfg)
    assert "timed out after 3 s" in info.value.reason
    assert "[0, 1]" in info.value.reason


@pytest.mark.slow
def test_injected_delay_and_clock_skew_land_in_the_run(tmp_path: Path) -> None:
    """--inject-delay makes one rank's phase >= the delay longer than on its peers;
    --clock-skew shifts that rank's trace; both are recorded in run.json["inject"]."""
    out = tmp_path / "inj"
    args = ["profile", "--workload", "smoke", "--nodes", "1", "--gpus-per-node", "2",
            "--steps", "2", "--inject-delay", "1:smoke:F:*:30ms",
            "--clock-skew", "1:+40ms:50ppm", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    inj = manifest["inject"]
    assert inj["delay"] == {"rank": 1, "phase": "smoke:F:*", "ms": 30.0}
    clock = inj["clock"]["1"]
    assert clock["offset_ns"] == 40_000_000 and clock["drift_ppm"] == 50.0
    assert isinstance(clock["ref_unix_ns"], int) and clock["ref_unix_ns"] > 10**18
    assert manifest["ranks"][1]["delays_applied"] > 0 == manifest["ranks"][0]["delays_applied"]

    def spans(rank: int) -> list[float]:
        doc = _trace(out / f"rank-{rank}.json.gz")
        return [float(e["dur"]) for e in doc["traceEvents"]
                if e.get("ph") == "X" and e.get("name", "").startswith("smoke:F:")]

    slow, fast = spans(1), spans(0)
    assert slow and fast and min(slow) >= 30_000 + 0.0 and min(slow) >= max(fast)
    # (the exact shift offset + drift * (t - ref) of every event: tests/unit/test_session.py)
