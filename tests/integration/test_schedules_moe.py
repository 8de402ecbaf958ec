"""dualpipe-moe end to end: PP=2 x EP=4 on 2 nodes x 4 ranks (gloo), traced.

Each expert group spans both nodes with 2 GPUs on each (ranks {s, s+2, s+4, s+6}) and
the node limit is M = 1 < 2 nodes, so dispatch/combine move bytes over IB *and* NVLink
and the limit binds. Losses must equal a single-process run of the same miniature MoE
model (reference mode, all experts local) and the trace must conform to the generated
schedule. Tolerance: float64; the EP run sums expert partials in the same order as the
reference by design (dispatch.py), so losses agree to rounding (rel 1e-12). Gradients
are compared element by element, per parameter (``torch.testing.assert_close``, rtol
1e-9, atol 1e-12): the pipeline adds the same per-token terms in another order (EP
members' partial weight gradients are summed by the test, DualPipe's two copies too),
so only rounding differs; a wrong routing or a lost micro-batch is off at 1e-2.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.pipeline import bubble_table
from overlapscope.profiler.model import ModelConfig, build_stage, make_batch, stage_loss
from overlapscope.profiler.run import RunConfig, run_local
from overlapscope.profiler.workloads.dualpipe_moe import global_named_parameters

N_MICRO = 4
EP = 4
#: small model: 8 experts over the EP group of 2 nodes x 2 GPUs, node limit 1
MODEL = {"dtype": "float64", "hidden": 16, "n_heads": 2, "expert_ffn": 16, "shared_ffn": 16}


def reference(n_stages: int) -> tuple[dict[tuple[int, int], float], dict[str, torch.Tensor]]:
    cfg = ModelConfig(ep_nodes=2, ep_gpus_per_node=2, max_nodes=1, **MODEL)
    stages = [build_stage(cfg, s, n_stages, 0) for s in range(n_stages)]
    losses = {}
    for e in range(EP):  # EP members are data-parallel: member e feeds indices e*M + i
        for i in range(N_MICRO):
            x, y = make_batch(cfg, 2, 8, 0, e * N_MICRO + i)
            for st in stages:
                x = st(x)
            loss = stage_loss(x, y)
            loss.backward()
            losses[(e, i)] = float(loss)
    grads = {f"{s}:{n}": p.grad.detach().clone() for s, st in enumerate(stages)
             for n, p in global_named_parameters(st)}
    return losses, grads


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["dualpipe", "dualpipev"])
def test_dualpipe_moe_matches_reference_and_conforms(tmp_path, schedule) -> None:
    cfg = RunConfig(workload="dualpipe-moe", schedule=schedule, pp=2, ep=EP, nodes=2,
                    gpus_per_node=4, micro_batches=N_MICRO, steps=1, out=str(tmp_path),
                    extra={"return_grads": True, "model": MODEL})
    results = run_local(cfg)["results"]
    ref_losses, ref_grads = reference(4 if schedule == "dualpipev" else 2)
    got_losses: dict[tuple[int, int], float] = {}
    got_grads: dict[str, torch.Tensor] = {}
    for r in results:
        f = r["facts"]
        for mb, v in f["losses"].items():
            got_losses[(f["ep_index"], int(mb))] = v
        grads = torch.load(tmp_path / f["grads_file"])
        for k, v in grads.items():  # replicas (EP data parallel, DualPipe copies) add up
            got_grads[k] = got_grads[k] + v if k in got_grads else v
    assert got_losses == pytest.approx(ref_losses, rel=1e-12)
    assert set(got_grads) == set(ref_grads)
    for k, v in ref_grads.items():  # every element of every parameter's gradient
        torch.testing.assert_close(got_grads[k], v, rtol=1e-9, atol=1e-12, msg=k)

    frames = load_run(tmp_path, cache=False)
    table = bubble_table(frames)
    assert table["rank"].to_list() == list(range(8))
    assert table["conforms"].all()
    assert (table["bubble_ns"] >= 0).all()

    # dispatch/combine cross IB and NVLink; the node limit redirected tokens and saved IB
    sent: dict[tuple[str, str], int] = {}
    for path in sorted(tmp_path.glob("rank-*.json.gz")):
        with gzip.open(path, "rt") as fh:
            doc = json.load(fh)
        for ev in doc["traceEvents"]:
            if ev.get("cat") == "comm_traffic":
                key = (ev["args"]["collective"], ev["args"]["hop"])
                sent[key] = sent.get(key, 0) + sum(ev["args"]["dst_bytes"])
        routing = doc["overlapscope"]["routing"]
        assert routing["max_nodes"] == 1 and routing["nodes"] == 2
        assert routing["tokens_redirected"] > 0 and routing["ib_bytes_saved"] > 0
    for collective in ("two_hop_dispatch", "two_hop_combine"):
        for hop in ("ib", "nvl"):
            assert sent.get((collective, hop), 0) > 0, (collective, hop, sent)


COMM_PHASES = ("dispatch(F)", "combine(B)")
COMPUTE_PHASES = ("attn(F)", "mlp(B)")


def _phase_intervals(path) -> tuple[int | None, dict[str, list[tuple[int, float, float]]]]:
    """Declared comm tid and, per phase name, its annotations as (tid, start_us, end_us)."""
    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    out: dict[str, list[tuple[int, float, float]]] = {}
    for ev in doc["traceEvents"]:
        if ev.get("ph") == "X" and ev.get("cat") == "user_annotation" \
                and ev.get("name") in COMM_PHASES + COMPUTE_PHASES:
            ts = float(ev["ts"])
            out.setdefault(ev["name"], []).append((ev["tid"], ts, ts + float(ev["dur"])))
    return doc["overlapscope"].get("comm_tid"), out


@pytest.mark.slow  # spawns gloo ranks (multi-process)
def test_dualpipe_moe_pair_comm_runs_on_comm_thread(tmp_path) -> None:
    """Inside overlapped F&B pairs dispatch(F)/combine(B) run on the comm thread while
    attn(F)/mlp(B) compute on the main thread, and their intervals really overlap."""
    cfg = RunConfig(workload="dualpipe-moe", schedule="dualpipe", pp=2, ep=EP, nodes=2,
                    gpus_per_node=4, micro_batches=N_MICRO, steps=1, out=str(tmp_path),
                    extra={"model": MODEL})
    run_local(cfg)
    files = sorted(tmp_path.glob("rank-*.json.gz"))
    assert len(files) == 8
    best_overlap_us = 0.0
    for path in files:
        comm_tid, phases = _phase_intervals(path)
        assert set(phases) == set(COMM_PHASES + COMPUTE_PHASES), path.name
        comm_tids = {tid for p in COMM_PHASES for tid, _, _ in phases[p]}
        compute_tids = {tid for p in COMPUTE_PHASES for tid, _, _ in phases[p]}
        assert comm_tids == {comm_tid}, path.name  # the thread the trace declares
        assert comm_tid not in compute_tids, path.name
        comm = [iv for p in COMM_PHASES for iv in phases[p]]
        compute = [iv for p in COMPUTE_PHASES for iv in phases[p]]
        for _, c0, c1 in comm:
            for _, m0, m1 in compute:
                best_overlap_us = max(best_overlap_us, min(c1, m1) - max(c0, m0))
    assert best_overlap_us > 0.0
