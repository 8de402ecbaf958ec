"""compare(): hand-worked deltas on tiny runs, per-step samples, kernel diffs, gates.

The runs are one-GPU traces built here. Each ``ProfilerStep#k`` spans 100 µs from
``k * 100`` µs; inside it (µs after the step start) a GEMM runs on [10, 50] (launched in
``attn(F)``) and an NCCL kernel on [40, 40 + comm] (launched in ``dispatch(F)``). With
``comm`` = 20 µs: comm busy 20, hidden 10 (the GEMM covers [40, 50]), exposed 10, the
step window [10, 60] = 50 µs. Stretching the NCCL kernel to 30 µs: comm busy 30, hidden
10, exposed 20, window [10, 70] = 60 µs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.compare import (
    RunData,
    check_gate,
    compare,
    diff_kernels,
    level_metrics,
    load_runs,
)
from overlapscope.analyzers.gates import parse_gate

US = 1000  # ns per µs


def make_run(path: Path, comms_us: list[float], *, extra_kernel: str | None = None) -> Path:
    """A one-rank run with one step per entry of ``comms_us`` (NCCL length in µs)."""
    b = TraceBuilder(rank=0, world_size=1)
    for k, comm in enumerate(comms_us):
        t0 = k * 100 * US
        b.annotation(f"ProfilerStep#{k}", t0, t0 + 99 * US)
        b.annotation("attn(F)", t0 + 1 * US, t0 + 5 * US)
        b.annotation("dispatch(F)", t0 + 5 * US, t0 + 9 * US)
        b.kernel("ampere_sgemm_128x64_nn", t0 + 10 * US, t0 + 50 * US, stream=7,
                 launch_ns=t0 + 2 * US)
        b.kernel("ncclDevKernel_AllReduce_Sum_f32_RING_LL", t0 + 40 * US,
                 t0 + 40 * US + int(comm * US), stream=13, launch_ns=t0 + 6 * US)
        if extra_kernel:
            b.kernel(extra_kernel, t0 + 52 * US, t0 + 55 * US, stream=7, launch_ns=t0 + 3 * US)
    b.write(path / "rank-0.json.gz")
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def _load(*paths: Path) -> list[RunData]:
    runs, errors = load_runs(paths, workers=1)
    assert errors == []
    return runs


def test_hand_worked_deltas_one_step(tmp_path: Path) -> None:
    runs = _load(make_run(tmp_path / "a", [20]), make_run(tmp_path / "b", [30]))
    assert [r.steps for r in runs] == [[], []]  # one step: no samples
    df = compare([r.report for r in runs], baseline=0, by="run")
    base, new = df.row(0, named=True), df.row(1, named=True)
    assert base["is_baseline"] and base["ranks"] == 1 and base["run"] == "a"
    assert base["overlap_ratio"] == pytest.approx(0.5)
    assert base["exposed_comm_ms"] == pytest.approx(0.010)
    assert base["span_ms"] == pytest.approx(0.050)
    assert new["overlap_ratio"] == pytest.approx(1 / 3)
    assert new["overlap_ratio_delta"] == pytest.approx(1 / 3 - 1 / 2)
    assert new["exposed_comm_ms_delta"] == pytest.approx(0.010)
    assert new["exposed_comm_ms_rel"] == pytest.approx(1.0)
    assert new["comm_busy_ms_rel"] == pytest.approx(0.5)
    assert new["span_ms_rel"] == pytest.approx(0.2)
    assert new["compute_busy_ms_delta"] == pytest.approx(0.0)
    assert base["exposed_comm_ms_delta"] == 0.0


def test_phase_kernel_and_rank_levels(tmp_path: Path) -> None:
    runs = _load(make_run(tmp_path / "a", [20]), make_run(tmp_path / "b", [30]))
    reports = [r.report for r in runs]
    ph = compare(reports, by="phase")
    d = {(r["run"], r["phase"]): r for r in ph.iter_rows(named=True)}
    assert d[("b", "dispatch(F)")]["exposed_comm_ms"] == pytest.approx(0.020)
    assert d[("b", "dispatch(F)")]["exposed_comm_ms_rel"] == pytest.approx(1.0)
    assert d[("b", "dispatch(F)")]["overlap_ratio"] == pytest.approx(1 / 3)
    kn = compare(reports, by="kernel")
    k = kn.filter(kn["run"] == "b").row(0, named=True)
    assert k["kernel"].startswith("ncclDevKernel_AllReduce")
    assert k["comm_busy_ms"] == pytest.approx(0.030)
    assert k["comm_busy_ms_delta"] == pytest.approx(0.010)
    rk = compare(reports, by="rank")
    assert rk["rank"].to_list() == [0, 0]
    assert rk["exposed_comm_ms_rel"].to_list() == pytest.approx([0.0, 1.0])
    assert level_metrics(reports[0], "phase", per_rank=True).columns[:2] == ["rank", "phase"]


def test_diff_kernels_says_what_changed(tmp_path: Path) -> None:
    runs = _load(make_run(tmp_path / "a", [20]),
                 make_run(tmp_path / "b", [30], extra_kernel="triton_silu_fused"))
    diff = diff_kernels(runs[0].report, runs[1].report)
    k = {r["name"]: r for r in diff.filter(diff["kind"] == "kernel").iter_rows(named=True)}
    nccl = k["ncclDevKernel_AllReduce_Sum_f32_RING_LL"]
    assert nccl["status"] == "slower"
    assert nccl["delta_ms"] == pytest.approx(0.010) and nccl["rel"] == pytest.approx(0.5)
    assert k["triton_silu_fused"]["status"] == "appeared"
    assert k["triton_silu_fused"]["ms"] == pytest.approx(0.003)
    assert k["triton_silu_fused"]["matched_by"] is None  # on one side only: no match
    assert nccl["matched_by"] == "name"
    assert k["ampere_sgemm_128x64_nn"]["status"] == "same"
    back = diff_kernels(runs[1].report, runs[0].report)
    gone = back.filter((back["kind"] == "kernel") & (back["name"] == "triton_silu_fused"))
    assert gone["status"].to_list() == ["disappeared"]
    ann = {r["name"]: r["status"] for r in diff.filter(diff["kind"] == "annotation")
           .iter_rows(named=True)}
    assert ann["dispatch(F)"] == "slower" and ann["attn(F)"] == "slower"  # GPU span grew


def test_renamed_kernel_is_paired_by_family(tmp_path: Path) -> None:
    a = _load(make_run(tmp_path / "a", [20], extra_kernel="my_kernel<64>(float*)"))[0]
    b = _load(make_run(tmp_path / "b", [20], extra_kernel="my_kernel<128>(float*)"))[0]
    diff = diff_kernels(a.report, b.report)
    fam = diff.filter(diff["matched_by"] == "family")
    assert fam["name"].to_list() == ["my_kernel<64>(float*) -> my_kernel<128>(float*)"]
    assert fam["status"].to_list() == ["same"]


def test_steps_are_samples_and_gates_respect_noise(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", [20] * 6)
    slow = make_run(tmp_path / "slow", [30] * 6)  # every step +10 µs exposed: +100 %
    # the total moves (+12.5 %), but the steps overlap: noise, not a regression
    noisy_a = make_run(tmp_path / "na", [20, 30, 20, 30, 20, 20])
    noisy_b = make_run(tmp_path / "nb", [30, 20, 30, 20, 30, 20])
    runs = _load(base, slow, noisy_a, noisy_b)
    assert [len(r.steps) for r in runs] == [6, 6, 6, 6]
    gate = parse_gate("exposed_comm_ms > +5%")
    res = check_gate(gate, runs[:2])
    assert res.status == "fail"
    assert res.rows[0].change == pytest.approx(1.0)
    assert "Mann-Whitney" in res.rows[0].detail
    res = check_gate(gate, [runs[2], runs[3]])
    assert res.rows[0].change == pytest.approx((90 - 80) / 80)  # exposed µs: 80 -> 90
    assert res.status == "not significant"
    df = compare([r.report for r in runs[:2]], steps=[r.steps for r in runs[:2]])
    assert df["steps"].to_list() == [6, 6]
    assert df["exposed_comm_ms_p"][1] < 0.05


def test_few_steps_use_the_bootstrap(tmp_path: Path) -> None:
    runs = _load(make_run(tmp_path / "a", [20, 21, 19]), make_run(tmp_path / "b", [30, 31, 29]))
    res = check_gate(parse_gate("exposed_comm_ms > +5%"), runs)
    assert res.status == "fail" and "bootstrap" in res.rows[0].detail


def test_absolute_and_selector_gates(tmp_path: Path) -> None:
    runs = _load(make_run(tmp_path / "a", [20]), make_run(tmp_path / "b", [30]))
    res = check_gate(parse_gate("overlap_ratio < 0.4"), runs)
    assert res.status == "fail" and [r.run for r in res.failing] == ["b"]
    res = check_gate(parse_gate("overlap_ratio[rank=*] < 0.2"), runs)
    assert res.status == "pass" and [r.key for r in res.rows] == ["rank=0"]  # not the baseline
    alone = check_gate(parse_gate("overlap_ratio < 0.6"), runs[:1])
    assert alone.status == "fail" and alone.rows[0].run == "a"  # one run: that run
    res = check_gate(parse_gate("overlap_ratio[phase=dispatch(F)] < -10pp"), runs)
    assert res.status == "fail" and res.rows[0].change == pytest.approx(1 / 3 - 1 / 2)
    res = check_gate(parse_gate("exposed_comm_ms[phase=dispatch*] > +150%"), runs)
    assert res.status == "pass"
    res = check_gate(parse_gate("overlap_ratio[phase=nope] < 0.9"), runs)
    assert res.status == "no data"
    res = check_gate(parse_gate("bubble_fraction > +2pp"), runs)  # no pipeline table
    assert res.status == "no data"


def test_bad_input_is_collected_or_raised(tmp_path: Path) -> None:
    good = make_run(tmp_path / "a", [20])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    runs, errors = load_runs([good, bad], workers=1)
    assert len(runs) == 1 and [e.path for e in errors] == [str(bad)]
    from overlapscope.analyzers.errors import TraceError

    with pytest.raises(TraceError):
        load_runs([bad, good], workers=1, on_error="raise")
