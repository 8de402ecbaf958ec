"""Single-process executor checks (DualPipeV on one device needs no P2P): the overlapped
MoE pair and the B/W split give the gradients of plain autograd, and the phase
annotations come in V3 Fig. 4 order.

Tolerance: float64 throughout; the pipeline adds the same terms in another order
(component-wise backward, deferred weight grads), so only rounding differs: rel 1e-12.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from overlapscope.profiler.model import ModelConfig, build_stage, make_batch, stage_loss
from overlapscope.profiler.schedules import make_schedule
from overlapscope.profiler.schedules.executor import PipelineExecutor
from overlapscope.profiler.schedules.toy import ToyStage, mse, toy_batch
from overlapscope.profiler.schedules.wgrad import STORE
from overlapscope.profiler.workloads.dualpipe_moe import PhasedStage

PHASES = ["combine(B)", "attn(F)", "dispatch(F)", "mlp(B)", "mlp(W)", "mlp(F)",
          "dispatch(B)", "attn(B)", "combine(F)", "attn(W)"]


def _recorder(names: list[str]):
    def annotate(name: str):
        names.append(name)
        return contextlib.nullcontext()
    return annotate


def test_overlapped_moe_pair_matches_autograd() -> None:
    cfg = ModelConfig(ep_nodes=2, ep_gpus_per_node=1, max_nodes=2, dtype="float64",
                      blocks_per_stage=2)
    n_micro = 4
    sched = make_schedule("dualpipev", 1, n_micro)
    names: list[str] = []
    ann = _recorder(names)
    mods = [PhasedStage(build_stage(cfg, sched.stage(0, c), 2, 0), ann) for c in range(2)]
    data = [make_batch(cfg, 2, 6, 0, i) for i in range(n_micro)]
    ex = PipelineExecutor(sched, 0, mods, stage_loss, None, annotate=ann)
    losses = ex.step({i: d[0] for i, d in enumerate(data)}, {i: d[1] for i, d in enumerate(data)})

    ref = [build_stage(cfg, s, 2, 0) for s in range(2)]
    total = 0
    for i, (x, y) in enumerate(data):
        for st in ref:
            x = st(x)
        loss = stage_loss(x, y)
        assert float(losses[i]) == pytest.approx(float(loss), rel=1e-14)
        total = total + loss
    total.backward()
    for c, m in enumerate(mods):
        for p, q in zip(m.stage.parameters(), ref[sched.stage(0, c)].parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)

    # every FB op holds, per block pair, the ten phases in V3 Fig. 4 order
    fb_starts = [i for i, n in enumerate(names) if ":FB:" in n]
    assert len(fb_starts) == sum(op.kind == "FB" for op in sched.op_sequence(0)) == 5
    for i in fb_starts:
        assert names[i + 1:i + 1 + 2 * len(PHASES)] == PHASES * 2  # two blocks per stage
    assert len(STORE) == 0


def test_zero_bubble_split_defers_weight_grads() -> None:
    # DualPipeV on one device: 1 input-only backward (I) whose W comes last
    sched = make_schedule("dualpipev", 1, 2)
    kinds = [op.kind for op in sched.op_sequence(0)]
    assert kinds.count("I") == kinds.count("W") == 1
    mods = [ToyStage(5, 2, 3, sched.stage(0, c)) for c in range(2)]
    xs, ys = toy_batch(2, 4, 5, 3)
    seen = []

    def annotate(name: str):
        if ":W:" in name:  # just before W runs, stage 0's first weight has only 1 of 2 terms
            seen.append(mods[0].layers[0].weight.grad.clone())
        return contextlib.nullcontext()

    PipelineExecutor(sched, 0, mods, mse, None, annotate=annotate).step(
        dict(enumerate(xs)), dict(enumerate(ys)))
    ref = [ToyStage(5, 2, 3, s) for s in range(2)]
    total = sum(mse(ref[1](ref[0](x)), y) for x, y in zip(xs, ys, strict=True))
    total.backward()
    torch.testing.assert_close(mods[0].layers[0].weight.grad, ref[0].layers[0].weight.grad,
                               rtol=1e-12, atol=1e-14)
    # the deferred term was missing before W: the partial sum differs from the total
    assert (seen[0] - ref[0].layers[0].weight.grad).abs().max() > 1e-6
