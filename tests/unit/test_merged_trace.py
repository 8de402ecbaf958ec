"""`export --merged`: one Perfetto trace of all ranks on the corrected clock.

The two-rank trace is written here as JSON text with exact nanosecond decimals.
True times are T + x; rank 1's clock runs 2 ms ahead and its file has a base
1 s later, so its ``ts`` text is true + 2 ms - 1 s. The NCCL all_reduce ends
coincide in true time, so the fit finds rank 1 2 ms ahead and every corrected
rank-1 time is its true time: on rank 0's base, the same text rank 0 writes.
"""

from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.merged_trace import FLOW_ID_STRIDE, export_merged
from overlapscope.analyzers.skew import ClockModel, correct_frames, estimate_skew
from overlapscope.app.cli import app

B = 1_790_857_026_000_000_000  # rank 0's baseTimeNanoseconds
T = 5_038_693_760_000_000  # ns after the base: Kineto-like µs (float64 keeps the ns)
T_EPOCH = 1_795_895_704_494_889_248  # epoch-scale µs: float64 would lose the ns
AHEAD_NS = 2_000_000  # rank 1's clock
REBASE_NS = 1_000_000_000  # rank 1's base is 1 s later
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "cpu" / "dualpipe"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def us_text(ns: int) -> str:
    """Exact µs text of an integer ns (what the export writes)."""
    return f"{'-' if ns < 0 else ''}{abs(ns) // 1000}.{abs(ns) % 1000:03d}"


def _dump(events: list[dict], **top: object) -> str:
    """JSON text whose ts/dur ({"ns": n}) become exact µs decimals."""
    text = json.dumps({"traceEvents": events, **top})
    return re.sub(r'\{"ns": (-?\d+)\}', lambda m: us_text(int(m.group(1))), text)


def rank_events(rank: int, clock_ns: int, sync: bool = True, t0: int = T) -> list[dict]:
    """Events at true times t0 + x; ``clock_ns`` is added to every time (clock + rebase)."""

    def t(x: int) -> dict:
        return {"ns": t0 + x + clock_ns}

    def d(x: int) -> dict:
        return {"ns": x}

    ev: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": 4242, "tid": 0, "ts": t(0),
         "args": {"name": "python3"}},
        {"ph": "M", "name": "process_labels", "pid": 0, "tid": 0, "ts": t(0),
         "args": {"labels": "GPU 0"}},
        {"ph": "M", "name": "thread_name", "pid": 4242, "tid": 4242, "ts": t(0),
         "args": {"name": "thread 4242 (python3)"}},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 27, "ts": t(0),
         "args": {"name": "stream 27 "}},
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 4242,
         "tid": 4242, "ts": t(500_000), "dur": d(5_000_000), "args": {}},
        {"ph": "i", "s": "g", "name": "Iteration Start", "pid": "Traces",
         "tid": "Trace PyTorch Profiler", "ts": t(400_000)},
        {"ph": "X", "cat": "cpu_op", "name": f"aten::mm_r{rank}", "pid": 4242, "tid": 4243,
         "ts": t(600_000), "dur": d(100_000), "args": {"External id": 3}},
        {"ph": "s", "id": 7, "cat": "ac2g", "name": "ac2g", "pid": 4242, "tid": 4243,
         "ts": t(600_000)},
        {"ph": "X", "cat": "kernel", "name": f"gemm_r{rank}", "pid": 0, "tid": 7,
         "ts": t(650_007), "dur": d(250_001),
         "args": {"device": 0, "stream": 7, "correlation": 7}},
        {"ph": "f", "id": 7, "bp": "e", "cat": "ac2g", "name": "ac2g", "pid": 0, "tid": 7,
         "ts": t(650_007)},
        {"ph": "C", "name": "mem", "pid": 4242, "tid": 4242, "ts": t(800_000),
         "args": {"bytes": 5}},
    ]
    if sync:  # true start 1 ms * i + 20 µs * rank + 123 ns, true end 1 ms * i + 50 µs
        for i in range(1, 5):
            start, end = i * 1_000_000 + 20_000 * rank + 123, i * 1_000_000 + 50_000
            ev.append({"ph": "X", "cat": "kernel", "name": ALLREDUCE, "pid": 0, "tid": 27,
                       "ts": t(start), "dur": d(end - start),
                       "args": {"device": 0, "stream": 27, "correlation": 100 + i}})
    return ev


def write_run(root: Path, sync: bool = True, ranks: int = 2, t0: int = T) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for r in range(ranks):
        clock = 0 if r == 0 else AHEAD_NS - REBASE_NS
        base = B if r == 0 else B + REBASE_NS
        text = _dump(rank_events(r, clock, sync, t0), baseTimeNanoseconds=base,
                     distributedInfo={"rank": r, "world_size": ranks, "backend": "nccl"})
        (root / f"rank-{r}.json").write_text(text)
    return root


def read_out(path: Path) -> dict:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw, parse_float=Decimal)


def ns(v: Decimal | int) -> int:
    """µs value read exactly -> int ns."""
    return int(Decimal(v) * 1000)


def named(doc: dict, name: str, pid: int, ph: str = "X") -> dict:
    (ev,) = [e for e in doc["traceEvents"]
             if e.get("name") == name and e["pid"] == pid and e["ph"] == ph]
    return ev


def test_corrected_times_by_hand(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    s = export_merged([run], tmp_path / "merged.json")
    assert s.corrected and s.base_ns == B
    assert [r.rank for r in s.ranks] == [0, 1] and [r.pid for r in s.ranks] == [1, 2]
    assert s.ranks[1].offset_ns == pytest.approx(AHEAD_NS, abs=1)
    doc = read_out(tmp_path / "merged.json")
    assert doc["baseTimeNanoseconds"] == B
    # rank 0 is the reference: its times are written as they were
    k0 = [e for e in doc["traceEvents"] if e.get("name") == ALLREDUCE and e["pid"] == 1]
    assert [str(e["ts"]) for e in k0] == [us_text(T + i * 1_000_000 + 123) for i in range(1, 5)]
    # rank 1: true time = raw 2 ms ahead, rebased from its own base by +1 s
    k1 = [e for e in doc["traceEvents"] if e.get("name") == ALLREDUCE and e["pid"] == 2]
    assert [str(e["ts"]) for e in k1] == [us_text(T + i * 1_000_000 + 20_123)
                                          for i in range(1, 5)]
    assert [str(e["dur"]) for e in k1] == ["29.877"] * 4  # 50 µs - 20.123 µs
    g1 = named(doc, "gemm_r1", 2)
    assert (str(g1["ts"]), str(g1["dur"])) == ("5038693760650.007", "250.001")
    assert str(named(doc, "mem", 2, "C")["ts"]) == "5038693760800.000"
    assert str(named(doc, "Iteration Start", 2, "i")["ts"]) == "5038693760400.000"
    assert str(named(doc, "ac2g", 2, "f")["ts"]) == "5038693760650.007"
    # the top-level record of what was applied
    rec = doc["overlapscope"]
    assert rec["corrected"] is True and rec["align"] == "auto"
    assert float(rec["clock_model"]["ranks"]["1"]["offset_ns"]) == pytest.approx(2e6, abs=1)
    assert [r["events"] for r in rec["ranks"]] == [11, 11]  # 15 events - 4 M each


@pytest.mark.parametrize("t0", [T, T_EPOCH])
def test_times_equal_correct_frames(tmp_path: Path, t0: int) -> None:
    """Second method: the loader + correct_frames on the same run give the same times."""
    run = write_run(tmp_path / "run", t0=t0)
    frames = load_run(run, cache=False)
    model = estimate_skew(frames).model
    fixed = correct_frames(frames, model)
    origin = frames.meta["origin_ns"]
    export_merged([run], tmp_path / "m.json")
    doc = read_out(tmp_path / "m.json")
    # both as absolute ns: the export's base + ts, the frames' origin + ts_ns
    got = {(e["pid"] - 1, e["name"], B + ns(e["ts"])): ns(e["dur"])
           for e in doc["traceEvents"] if e["ph"] == "X"}
    want = {(r, name, origin + ts): dur
            for df in (fixed.activities, fixed.cpu_ops, fixed.annotations)
            for r, name, ts, dur in df.select("rank", "name", "ts_ns", "dur_ns").iter_rows()}
    assert len(want) == 14 and got == want


def test_epoch_scale_timestamps_keep_their_nanoseconds(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", t0=T_EPOCH)
    s = export_merged([run], tmp_path / "m.json")
    assert s.corrected and s.ranks[1].offset_ns == pytest.approx(AHEAD_NS, abs=1)
    doc = read_out(tmp_path / "m.json")
    g0, g1 = named(doc, "gemm_r0", 1), named(doc, "gemm_r1", 2)
    # T_EPOCH + 650_007 ns: the float64 nearest to this µs value ends in .25
    assert str(g0["ts"]) == str(g1["ts"]) == "1795895704495539.255"
    assert str(g1["dur"]) == "250.001"


def test_drift_corrects_both_ends(tmp_path: Path) -> None:
    """A given model with drift: c(t) = 1000 + 50 ppm * t (t: ns from the run origin)."""
    run = write_run(tmp_path / "run", sync=False)
    model = ClockModel({0: 0.0, 1: 1000.0}, {0: 0.0, 1: 50.0}, 0)
    s = export_merged([run], tmp_path / "m.json.gz", clock=model)
    assert s.corrected and s.reason == "clock model given by the caller"
    doc = read_out(tmp_path / "m.json.gz")
    # origin: rank 0's ProfilerStep (true T + 500 µs; rank 1's raw times are 2 ms later)
    origin = B + T + 500_000
    # rank 1's gemm: raw absolute B + T + 650_007 + 2 ms; from the origin:
    start = 150_007 + AHEAD_NS  # 2_150_007
    end = start + 250_001  # 2_400_008
    c_start = round(1000 + 50e-6 * start)  # 1000 + 107.50035 -> 1108
    c_end = round(1000 + 50e-6 * end)  # 1000 + 120.0004 -> 1120
    assert (c_start, c_end) == (1108, 1120)
    g = named(doc, "gemm_r1", 2)
    assert ns(g["ts"]) + B == origin + start - 1108
    assert ns(g["dur"]) == 250_001 - (1120 - 1108)  # 249_989
    # the same through correct_frames
    fixed = correct_frames(load_run(run, cache=False), model)
    row = fixed.activities.filter(pl.col("name") == "gemm_r1").row(0, named=True)
    assert (row["ts_ns"], row["dur_ns"]) == (start - 1108, 249_989)


def test_times_before_the_base_are_counted(tmp_path: Path) -> None:
    """t0 = 0 and rank 1 moved 10 ms back: its times (true + 2 ms - 10 ms, all true
    times < 6 ms) fall before rank 0's base; Perfetto would drop them."""
    run = write_run(tmp_path / "run", sync=False, t0=0)
    model = ClockModel({0: 0.0, 1: 10_000_000.0}, {0: 0.0, 1: 0.0}, 0)
    s = export_merged([run], tmp_path / "m.json", clock=model)
    assert [r.negative_ts for r in s.ranks] == [0, 7]
    assert any("7 events lie before baseTimeNanoseconds" in n for n in s.notes)
    # gemm true 650.007 µs + 2 ms - 10 ms
    assert str(named(read_out(tmp_path / "m.json"), "gemm_r1", 2)["ts"]) == "-7349.993"


def test_processes_threads_flows_metadata(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    export_merged([run], tmp_path / "m.json.gz")
    doc = read_out(tmp_path / "m.json.gz")
    ev = doc["traceEvents"]
    assert {e["pid"] for e in ev} == {1, 2}
    meta = [e for e in ev if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {1: "rank 0", 2: "rank 1"}
    sort = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert sort == {1: 0, 2: 1}
    threads = {e["tid"]: e["args"]["name"] for e in meta
               if e["name"] == "thread_name" and e["pid"] == 2}
    # host threads (main first), then GPU streams by number, then Kineto's pseudo process
    order = sorted(threads, key=lambda tid: next(
        e["args"]["sort_index"] for e in meta
        if e["name"] == "thread_sort_index" and e["pid"] == 2 and e["tid"] == tid))
    assert [threads[t] for t in order] == [
        "host thread 4242 (python3)", "host thread 4243", "GPU 0 stream 7", "GPU 0 stream 27",
        "Traces: Trace PyTorch Profiler"]
    assert 0 not in threads  # tid 0 is special to Perfetto
    # every event of a thread lands on the same new tid: the flow end binds to its kernel
    f = named(doc, "ac2g", 2, "f")
    assert f["tid"] == named(doc, "gemm_r1", 2)["tid"] == order[2]
    # flow ids: 7 on both ranks -> 7 and 10**12 + 7
    ids = {(e["pid"], e["ph"]): e["id"] for e in ev if e["ph"] in ("s", "f")}
    assert ids == {(1, "s"): 7, (1, "f"): 7, (2, "s"): FLOW_ID_STRIDE + 7,
                   (2, "f"): FLOW_ID_STRIDE + 7}
    # global instants become process-scoped; other fields are kept byte for byte
    assert named(doc, "Iteration Start", 1, "i")["s"] == "p"
    assert named(doc, "gemm_r0", 1)["args"] == {"device": 0, "stream": 7, "correlation": 7}
    # no original metadata survives: 4 per rank replaced by 3 + 2 per thread
    assert len(meta) == 2 * (3 + 2 * 5)


def test_gzip_and_plain_output(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    export_merged([run], tmp_path / "a.json.gz")
    export_merged([run], tmp_path / "a.json")
    raw = (tmp_path / "a.json.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == (tmp_path / "a.json").read_bytes()


def test_unchanged_times_without_anchors_single_rank_or_none(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", sync=False)
    s = export_merged([run], tmp_path / "m.json", align="on")
    assert not s.corrected and "no cross-rank anchors" in s.reason
    doc = read_out(tmp_path / "m.json")
    # raw: rank 1's gemm is 2 ms late, rebased from base + 1 s onto rank 0's base
    assert str(named(doc, "gemm_r1", 2)["ts"]) == "5038693762650.007"
    assert doc["overlapscope"]["clock_model"] is None
    # align none keeps raw times even with anchors
    s = export_merged([write_run(tmp_path / "sync")], tmp_path / "n.json", align="none")
    assert not s.corrected and "none" in s.reason
    assert str(named(read_out(tmp_path / "n.json"), "gemm_r1", 2)["ts"]) == "5038693762650.007"
    # one rank
    one = write_run(tmp_path / "one", ranks=1)
    s = export_merged([one / "rank-0.json"], tmp_path / "o.json")
    assert not s.corrected and "single rank" in s.reason and s.events == 11


def test_list_of_trace_files_is_one_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    calls: list[tuple] = []
    s = export_merged([run / "rank-1.json", run / "rank-0.json"], tmp_path / "m.json",
                      progress=lambda *a: calls.append(a))
    assert [r.rank for r in s.ranks] == [0, 1] and s.corrected
    # two files decoded, clocks estimated, then each rank's 11 events in one batch
    assert calls == [("load", None, 0, 2), ("load", None, 1, 2), ("load", None, 1, 1),
                     ("write", 0, 11, 11), ("write", 1, 11, 11)]


def test_sample_dualpipe_eight_ranks(tmp_path: Path) -> None:
    out = tmp_path / "dp.json.gz"
    s = export_merged([SAMPLE], out, align="on")
    assert s.corrected and len(s.ranks) == 8
    doc = json.loads(gzip.decompress(out.read_bytes()))  # valid JSON
    ev = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {r + 1: f"rank {r}" for r in range(8)}
    inputs = [json.loads(gzip.decompress(f.read_bytes()))["traceEvents"]
              for f in sorted(SAMPLE.glob("rank-*.json.gz"))]
    x_in = sum(e.get("ph") == "X" for evs in inputs for e in evs)
    assert sum(e["ph"] == "X" for e in ev) == x_in == s.x_events
    for r in range(8):  # per rank too
        assert sum(e["ph"] == "X" and e["pid"] == r + 1 for e in ev) == sum(
            e.get("ph") == "X" for e in inputs[r])
    starts = [e["id"] for e in ev if e["ph"] == "s"]
    assert len(starts) == len(set(starts))  # no flow id shared between ranks


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_writes_and_reports(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "m.json.gz"
    res = runner.invoke(app, ["export", str(run), "--merged", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 22 events (14 complete) from 2 ranks" in res.stdout
    assert "rank 1 (pid 2): offset +2,000.000 µs" in res.stdout
    assert "open it in https://ui.perfetto.dev" in res.stdout
    assert read_out(out)["overlapscope"]["corrected"] is True


def test_cli_bad_inputs_exit_2(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), "--merged", str(out)])
    assert res.exit_code == 2 and "no such file or directory" in res.stderr
    bad = tmp_path / "bad" / "rank-0.json"
    bad.parent.mkdir()
    bad.write_text('{"traceEvents": [')
    res = runner.invoke(app, ["export", str(bad.parent), "--merged", str(out)])
    assert res.exit_code == 2 and str(bad) in res.stderr and "JSON" in res.stderr
    assert not out.exists()
    out.write_text("keep me")
    res = runner.invoke(app, ["export", str(run), "--merged", str(out)])
    assert res.exit_code == 2 and "already exists" in res.stderr
    assert out.read_text() == "keep me"
    res = runner.invoke(app, ["export", str(run), "--merged", str(out), "--force"])
    assert res.exit_code == 0 and read_out(out)["overlapscope"]["merged"] is True
    res = runner.invoke(app, ["export", str(run), "--merged", str(run / "x.json")])
    assert res.exit_code == 2 and "input run" in res.stderr
