"""Odd but legal traces (tests/data/odd) load, and hand-worked numbers come out.

Every expected number below is worked out by hand from the file's events; the
timelines are written next to each test (us after the file's first event) and
listed in tests/data/README.md. Definitions: BRIEF.md section 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from overlapscope.analyzers.classify import classify_frames
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import kernel_coverage, overlap_summary

ODD = Path(__file__).resolve().parents[1] / "data" / "odd"


def load(name: str) -> TraceFrames:
    return load_run(ODD / name, cache=False)


def summary(frames: TraceFrames) -> dict[tuple[int, int], dict[str, Any]]:
    """overlap_summary rows keyed by (rank, device)."""
    df = overlap_summary(frames)
    return {(r["rank"], r["device"]): r for r in df.iter_rows(named=True)}


def assert_summary(row: dict[str, Any], *, span: int, compute: int, comm: int, overlap: int,
                   idle: int) -> None:
    """Check one summary row; exposed comm and the ratio follow from the inputs."""
    assert row["span_ns"] == span
    assert row["compute_busy_ns"] == compute
    assert row["comm_busy_ns"] == comm
    assert row["overlap_ns"] == overlap
    assert row["exposed_comm_ns"] == comm - overlap
    assert row["idle_ns"] == idle
    assert row["overlap_ratio"] == pytest.approx(overlap / comm)


def names_by_kind(frames: TraceFrames) -> dict[str, str]:
    acts = classify_frames(frames).activities
    return dict(zip(acts["name"].to_list(), acts["kind"].to_list(), strict=True))


def test_every_odd_file_is_covered() -> None:
    tested = {
        "string_pids.json", "missing_fields.json", "durations.json", "float_int_ts.json",
        "epoch_ns.json", "display_ns.json", "string_ts.json", "string_ts_epoch.json",
        "one_bad_event.json",
        "unknown_ph_cat.json", "amd_rocm.json", "cpu_only.json", "two_gpus.json",
        "deepseek_excerpt.json.gz", "chrome_array_open.json", "begin_end.json",
    }
    assert {p.name for p in ODD.iterdir()} == tested


def test_chrome_array_left_open() -> None:
    # A bare event array without its "]": GEMM s7 [0, 10], NCCL s13 [5, 20], host op [0, 2].
    f = load("chrome_array_open.json")
    assert f.activities.height == 2 and f.cpu_ops["name"].to_list() == ["aten::mm"]
    assert_summary(summary(f)[(0, 0)], span=20_000, compute=10_000, comm=15_000,
                   overlap=5_000, idle=0)


def test_begin_end_pairs() -> None:
    # GEMM s7 [0, 10] as "X"; NCCL s13 [5, 20] as "B"/"E"; on the main thread outer
    # [0, 30] holds inner [2, 4] (its "E" is written first); a stray "E" on thread 99.
    f = load("begin_end.json")
    acts = f.activities.sort("ts_ns")
    assert acts["dur_ns"].to_list() == [10_000, 15_000]
    ops = {r["name"]: r for r in f.cpu_ops.iter_rows(named=True)}
    assert ops["outer"]["dur_ns"] == 30_000 and ops["outer"]["external_id"] == 7
    assert ops["inner"]["dur_ns"] == 2_000
    assert ops["inner"]["ts_ns"] - ops["outer"]["ts_ns"] == 2_000
    assert f.meta["skipped_events"] == 1
    assert_summary(summary(f)[(0, 0)], span=20_000, compute=10_000, comm=15_000,
                   overlap=5_000, idle=0)


def test_string_pids_and_tids() -> None:
    # GEMM s7 [0, 10], NCCL s13 [5, 20]; "Spans"/"Traces"/"" pids are bookkeeping rows.
    f = load("string_pids.json")
    assert f.activities.height == 2
    assert "thread 7 (python3)" in f.cpu_ops["tid"].to_list()
    assert_summary(summary(f)[(0, 0)], span=20_000, compute=10_000, comm=15_000,
                   overlap=5_000, idle=0)


def test_missing_optional_fields() -> None:
    # gemm_no_args s7 [0, 10] (stream/device from tid/pid), kernel_no_dur at 3 (length 0),
    # NCCL s13 [8, 12]. Host events without cat/dur/name must not break loading.
    f = load("missing_fields.json")
    acts = f.activities.sort("ts_ns")
    assert acts["name"].to_list() == [
        "gemm_no_args", "kernel_no_dur", "ncclDevKernel_AllReduce_Sum_f32_RING_LL(x)"
    ]
    assert acts["stream"].to_list() == [7, 7, 13]
    assert acts["device"].to_list() == [0, 0, 0]
    assert acts["dur_ns"].to_list() == [10_000, 0, 4_000]
    assert acts["correlation"].null_count() == 3
    assert_summary(summary(f)[(0, 0)], span=12_000, compute=10_000, comm=4_000,
                   overlap=2_000, idle=0)


def test_zero_and_negative_durations() -> None:
    # Compute s7: [0, 10], zero at 5, negative (-3 us) at 12. Comm s13: [5, 15], zero at 14,
    # negative (-2 us) at 3. Issue #7: a negative duration is unusable data, so those two
    # events are skipped and counted; zero lengths are kept and add nothing to any busy
    # time. U(P) = 10, U(C) = 10, O = [5, 10].
    f = load("durations.json")
    assert f.activities.height == 4
    assert f.meta["skipped_events"] == 2
    assert sorted(f.activities["dur_ns"].to_list()) == [0, 0, 10_000, 10_000]
    assert_summary(summary(f)[(0, 0)], span=15_000, compute=10_000, comm=10_000,
                   overlap=5_000, idle=0)
    # Only the one comm kernel with a length has a coverage: [5, 10] of [5, 15] = 0.5.
    cov = kernel_coverage(f).filter(pl.col("coverage").is_not_null())
    assert cov["coverage"].to_list() == [pytest.approx(0.5)]


def test_integer_and_float_timestamps() -> None:
    # int_times ts 1000 dur 10 (JSON integers); NCCL ts 1005.5 dur 2.25; float_times
    # ts 1012.125 dur 0.875.
    acts = load("float_int_ts.json").activities.sort("ts_ns")
    t0 = acts["ts_ns"][0]
    assert [t - t0 for t in acts["ts_ns"].to_list()] == [0, 5_500, 12_125]
    assert acts["dur_ns"].to_list() == [10_000, 2_250, 875]


def test_epoch_scale_timestamps_keep_nanoseconds() -> None:
    # ts 1795895704494889.248 / ...890.001 / ...899.749 us: float64 spacing there is
    # 0.25 us, so exact ns differences (753 and 10501) prove the digits were kept.
    f = load("epoch_ns.json")
    acts = f.activities.sort("ts_ns")
    t0 = acts["ts_ns"][0]
    assert [t - t0 for t in acts["ts_ns"].to_list()] == [0, 753, 10_501]
    assert acts["dur_ns"].to_list() == [10_500, 3_333, 1]
    # GEMM [0, 10500] ns, NCCL [753, 4086], tiny [10501, 10502]: 1 ns of idle.
    assert_summary(summary(f)[(0, 0)], span=10_502, compute=10_501, comm=3_333,
                   overlap=3_333, idle=1)


def test_display_time_unit_ns_does_not_rescale() -> None:
    # Chrome trace format: ts/dur are always microseconds; displayTimeUnit only changes
    # how a viewer labels the axis. GEMM [0, 10] us, NCCL [5, 25] us.
    f = load("display_ns.json")
    assert sorted(f.activities["dur_ns"].to_list()) == [10_000, 20_000]
    assert_summary(summary(f)[(0, 0)], span=25_000, compute=10_000, comm=20_000,
                   overlap=5_000, idle=0)


@pytest.mark.parametrize("name", ["string_ts.json", "string_ts_epoch.json"])
def test_numeric_string_timestamps_are_coerced_exactly(name: str) -> None:
    # Decision (documented in tests/data/README.md): "ts"/"dur" given as JSON strings of
    # decimal microseconds are read like numbers, digit for digit, as Perfetto does.
    # GEMM ts x.5 dur "10", NCCL ts (x+4).25 dur "2.5" -> offset 3750 ns.
    acts = load(name).activities.sort("ts_ns")
    t0 = acts["ts_ns"][0]
    assert [t - t0 for t in acts["ts_ns"].to_list()] == [0, 3_750]
    assert acts["dur_ns"].to_list() == [10_000, 2_500]


def test_unusable_events_are_skipped_and_counted() -> None:
    # A kernel whose ts is the word "soon" and a bare 42 among the events: the rest of the
    # file loads (GEMM [0, 10], NCCL [5, 20]) and the two misfits are counted.
    f = load("one_bad_event.json")
    assert f.activities.height == 2
    assert f.meta["skipped_events"] == 2
    assert_summary(summary(f)[(0, 0)], span=20_000, compute=10_000, comm=15_000,
                   overlap=5_000, idle=0)


def test_unknown_phases_and_categories_are_ignored() -> None:
    # Only the two ph "X" kernels are activities: GEMM s7 [0, 10], NCCL s13 [4, 6].
    f = load("unknown_ph_cat.json")
    assert sorted(f.activities["name"].to_list()) == sorted(
        ["ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
         "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"]
    )
    assert "mystery_host_op" not in f.annotations["name"].to_list()
    assert_summary(summary(f)[(0, 0)], span=10_000, compute=10_000, comm=2_000,
                   overlap=2_000, idle=0)


def test_amd_rocm_trace() -> None:
    # Tensile GEMM s3 [0, 20]; HIP memcpys s3 [12, 16] and [14, 15] (inside both the GEMM
    # and the RCCL kernel, so they change no number however memory is counted);
    # RCCL s5 [10, 25] and [25, 30]. U(P) = 20, U(C) = 20, O = [10, 20].
    f = load("amd_rocm.json")
    assert f.activities.height == 5
    acts = classify_frames(f).activities
    comm = acts.filter(pl.col("kind") == "comm")
    assert sorted(comm["stream"].to_list()) == [5, 5]
    assert set(comm["comm_type"].to_list()) <= {"nccl", "rccl"}
    kinds = names_by_kind(f)
    assert kinds["Cijk_Ailk_Bljk_BBS_BH_MT256x256x64_MI16x16x16x1_SN_1LDSB1_AMAS3"] == "compute"
    assert kinds["CopyDeviceToDevice"] != "comm"
    # hip* launches link kernels to annotations like cuda* ones do.
    launches = f.cpu_ops.filter(pl.col("correlation").is_not_null())
    assert set(launches["correlation"].to_list()) == set(f.activities["correlation"].to_list())
    assert_summary(summary(f)[(0, 0)], span=30_000, compute=20_000, comm=20_000,
                   overlap=10_000, idle=0)


def test_cpu_only_gloo_trace() -> None:
    # No GPU: aten ops on the main thread, c10d::send/recv_ on a second thread.
    f = load("cpu_only.json")
    assert not f.is_gpu
    assert f.activities.height == 0
    ops = classify_frames(f).cpu_ops
    kind = dict(zip(ops["name"].to_list(), ops["kind"].to_list(), strict=True))
    assert kind["c10d::send"] == kind["c10d::recv_"] == "comm"
    assert kind["aten::mm"] == kind["aten::add"] == "compute"
    send = ops.filter(pl.col("name") == "c10d::send")
    assert set(send["comm_type"].to_list()) <= {"gloo", "c10d"}
    assert send["tid"].to_list() != ops.filter(pl.col("name") == "aten::mm")["tid"].to_list()
    # Host-side overlap (CPU-only traces use host ops): compute = aten ops
    # [0, 100] ∪ [1, 2] ∪ [110, 120] = 110 us, comm = c10d ops [20, 60] ∪ [70, 130] = 100 us,
    # O = [20, 60] + [70, 100] + [110, 120] = 80 us; window [0, 130] fully busy.
    rows = overlap_summary(f)
    assert rows.height == 1
    assert_summary(rows.row(0, named=True), span=130_000, compute=110_000, comm=100_000,
                   overlap=80_000, idle=0)


def test_two_gpus_in_one_file() -> None:
    # GPU 0: GEMM [0, 10], NCCL [5, 15]. GPU 1: GEMM [0, 4], NCCL [6, 8], add [8, 20]
    # (touching the NCCL end): U(P) = 16, U(C) = 2, O = 0, busy 18 of span 20.
    rows = summary(load("two_gpus.json"))
    assert set(rows) == {(0, 0), (0, 1)}
    assert_summary(rows[(0, 0)], span=15_000, compute=10_000, comm=10_000, overlap=5_000,
                   idle=0)
    assert_summary(rows[(0, 1)], span=20_000, compute=16_000, comm=2_000, overlap=0,
                   idle=2_000)


def test_deepseek_excerpt() -> None:
    # Comm s27: layout [0, 1], notify [1, 3], dispatch [3, 43], cached_notify [50, 52],
    # combine [52, 80]. Compute s7: cub ReduceByKey [0, 5], flash [10, 40],
    # deep_gemm [45, 70]. U(C) = 43 + 30 = 73, U(P) = 5 + 30 + 25 = 60,
    # O = 5 + 30 + 20 = 55, busy [0, 43] + [45, 80] = 78 of span 80.
    f = load("deepseek_excerpt.json.gz")
    acts = classify_frames(f).activities
    by_name = {n.split("<")[0].removeprefix("void "): (k, t) for n, k, t in
               acts.select("name", "kind", "comm_type").iter_rows()}
    for deepep in ("dpsk::ep::get_dispatch_layout", "dpsk::ep::internode::notify_dispatch",
                   "dpsk::ep::internode::dispatch", "dpsk::ep::internode::cached_notify",
                   "dpsk::ep::internode::combine"):
        assert by_name[deepep] == ("comm", "deepep"), deepep
    # Traps: "DispatchReduceByKey" in a template argument, "deep_gemm" namespace.
    assert by_name["cub::DeviceReduceByKeyKernel"][0] == "compute"
    assert by_name["deep_gemm::fp8_gemm_kernel"][0] == "compute"
    assert_summary(summary(f)[(0, 0)], span=80_000, compute=60_000, comm=73_000,
                   overlap=55_000, idle=2_000)
    got = {n.split("<")[0].removeprefix("void "): c for n, c in
           kernel_coverage(f).select("name", "coverage").iter_rows()}
    # |k ∩ U(P)| / dur(k): layout 1/1, notify 2/2, dispatch 32/40, cached 2/2, combine 18/28.
    assert got["dpsk::ep::get_dispatch_layout"] == pytest.approx(1.0)
    assert got["dpsk::ep::internode::notify_dispatch"] == pytest.approx(1.0)
    assert got["dpsk::ep::internode::dispatch"] == pytest.approx(0.8)
    assert got["dpsk::ep::internode::cached_notify"] == pytest.approx(1.0)
    assert got["dpsk::ep::internode::combine"] == pytest.approx(18 / 28)
