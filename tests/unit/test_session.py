"""Profiling session pieces: augmentation, clocks, comm stream, layout, config checks.

Single-process only (the multi-rank launcher is tested in tests/integration/test_run.py).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from decimal import Decimal

import msgspec
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from overlapscope.app.cli import app  # noqa: E402
from overlapscope.profiler import augment  # noqa: E402
from overlapscope.profiler.comm_stream import ThreadCommStream  # noqa: E402
from overlapscope.profiler.layout import RankLayout  # noqa: E402
from overlapscope.profiler.run import ConfigError, RunConfig, resolve  # noqa: E402
from overlapscope.profiler.session import ProfileSession, now_ns  # noqa: E402
from overlapscope.profiler.topology import Topology  # noqa: E402

# A Kineto-like trace whose timestamps are too large for float64 to keep every digit.
KINETO_TEXT = (
    b'{"schemaVersion": 1, "baseTimeNanoseconds": 1790857026000000000,\n'
    b'"traceEvents": [\n'
    b'  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 7, "tid": 7,'
    b' "ts": 5041282143533.177, "dur": 12.5, "args": {"External id": 3}}\n'
    b"],\n"
    b'"traceName": "x.json"}'
)


# --------------------------------------------------------------------------- augmentation
def test_us_text_has_exactly_three_decimals() -> None:
    assert bytes(augment.us_text(1_234_567)) == b"1234.567"
    assert bytes(augment.us_text(5)) == b"0.005"
    assert bytes(augment.us_text(-1500)) == b"-1.500"
    assert bytes(augment.us_text(5_041_282_143_533_177)) == b"5041282143533.177"


def test_to_unix_ns_tells_clocks_apart_by_magnitude() -> None:
    offset = 1_700_000_000_000_000_000
    assert augment.to_unix_ns(5_000, offset) == offset + 5_000  # monotonic
    unix = 1_795_000_000_123_456_789
    assert augment.to_unix_ns(unix, offset) == unix  # already Unix time


def test_augment_keeps_kineto_bytes_and_appends_events() -> None:
    rec = augment.TrafficRecord(
        name="dispatch:ib",
        collective="two_hop_dispatch",
        hop="ib",
        dst_bytes=(0, 4096, 0, 8192),
        phase="dispatch(F)",
        t0_ns=1_000,
        t1_ns=3_500,
        dtype="bfloat16",
        pid=7,
        tid=9,
    )
    base = 1_790_857_026_000_000_000
    offset = base + 5_041_282_143_533_000 - 1_000  # puts t0 at ts = 5041282143533.000 us
    ev = augment.traffic_event(rec, mono_to_unix_ns=offset, base_ns=base)
    out = augment.augment_trace(KINETO_TEXT, {"schema_version": 1, "rank": 3}, [ev])
    # Kineto's original text survives byte for byte (no float round trip).
    assert b'"ts": 5041282143533.177' in out
    doc = json.loads(out)
    assert doc["overlapscope"] == {"schema_version": 1, "rank": 3}
    assert doc["traceName"] == "x.json"
    events = doc["traceEvents"]
    assert len(events) == 2
    traffic = events[1]
    assert traffic["cat"] == "comm_traffic" and traffic["name"] == "dispatch:ib"
    assert b'"ts":5041282143533.000' in out and b'"dur":2.500' in out
    assert traffic["args"] == {
        "collective": "two_hop_dispatch",
        "hop": "ib",
        "phase": "dispatch(F)",
        "dtype": "bfloat16",
        "dst_bytes": [0, 4096, 0, 8192],
    }


def test_augment_into_empty_event_list() -> None:
    text = b'{"traceEvents": [ ]}'
    out = augment.augment_trace(text, {"schema_version": 1}, [{"ph": "C", "name": "ring", "ts": 1}])
    doc = json.loads(out)
    assert doc["traceEvents"] == [{"ph": "C", "name": "ring", "ts": 1}]


def test_rebase_event_relative_to_a_time_base() -> None:
    base = 1_000_000_000_000_000_000
    offset = base + 2_000_000  # monotonic 0 -> 2000 us after the trace base
    ev = {"ph": "X", "cat": "warp_role", "name": "rdma_sender:busy", "ts": 1.25, "dur": 0.5}
    out = augment.rebase_event(ev, mono_to_unix_ns=offset, base_ns=base, time_base_ns=10_000)
    # 2000 us + 10 us (time base) + 1.25 us
    assert bytes(out["ts"]) == b"2011.250"
    assert bytes(out["dur"]) == b"0.500"
    absolute = augment.rebase_event(
        {"ts": 3.0}, mono_to_unix_ns=offset, base_ns=base, time_base_ns=None
    )
    assert bytes(absolute["ts"]) == b"2003.000"


# --------------------------------------------------------------------------- comm stream
def test_comm_stream_runs_in_order_on_its_own_thread() -> None:
    seen: list[tuple[int, int]] = []
    with ThreadCommStream() as stream:
        futures = [
            stream.submit(lambda i=i: seen.append((i, threading.get_native_id()))) for i in range(5)
        ]
        for f in futures:
            f.result(timeout=5)
        assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
        assert {tid for _, tid in seen} == {stream.native_id}
        assert stream.native_id != threading.get_native_id()


def test_comm_stream_does_not_block_the_caller_and_reraises() -> None:
    gate = threading.Event()
    with ThreadCommStream() as stream:
        pending = stream.submit(lambda: gate.wait(5) and "released")
        assert not pending.done()  # the caller got control back while the work blocks
        gate.set()
        assert pending.wait(timeout=5) == "released"
        boom = stream.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=5)
        assert stream.submit(lambda: 7).result(timeout=5) == 7  # still alive after an error


# --------------------------------------------------------------------------- layout / config
def test_layout_strides_expert_groups_across_nodes() -> None:
    topo = Topology(nodes=2, gpus_per_node=4)
    layout = RankLayout(pp=4, ep=2)
    assert layout.ep_group(1) == [1, 5]
    assert layout.pp_group(1) == [4, 5, 6, 7]
    assert (layout.stage_of(6), layout.ep_index_of(6)) == (2, 1)
    for stage in range(4):
        assert {topo.node_of(r) for r in layout.ep_group(stage)} == {0, 1}
    wide = RankLayout(pp=2, ep=4)  # two EP members per node
    assert wide.ep_group(0) == [0, 2, 4, 6]
    assert sorted(r for s in range(2) for r in wide.ep_group(s)) == list(range(8))


def test_resolve_fills_defaults() -> None:
    demo = resolve(RunConfig(workload="dualpipe-moe", nodes=2, gpus_per_node=4), check_import=False)
    assert (demo.pp, demo.ep, demo.micro_batches) == (4, 2, 8)
    ep = resolve(RunConfig(workload="ep-dispatch", nodes=2, gpus_per_node=4), check_import=False)
    assert (ep.pp, ep.ep) == (1, 8)
    half = resolve(RunConfig(workload="smoke", ep=2, nodes=1, gpus_per_node=4))
    assert (half.pp, half.ep) == (2, 2)


@pytest.mark.parametrize(
    ("kwargs", "option", "words"),
    [
        ({"workload": "nope"}, "--workload", "unknown workload"),
        ({"workload": "dualpipe-moe", "pp": 3, "ep": 1, "gpus_per_node": 3}, "--pp", "even"),
        (
            {"workload": "dualpipe-moe", "pp": 4, "ep": 2, "nodes": 2, "micro_batches": 6},
            "--micro-batches",
            "at least 2 x PP = 8",
        ),
        (
            {
                "workload": "dualpipe-moe",
                "schedule": "dualpipev",
                "pp": 4,
                "ep": 1,
                "micro_batches": 7,
            },
            "--micro-batches",
            "at least 2 x PP = 8",
        ),
        ({"workload": "smoke", "pp": 3, "ep": 2, "nodes": 2}, "--pp/--ep", "must equal"),
        ({"workload": "ep-dispatch", "pp": 2, "nodes": 2}, "--pp", "PP must be 1"),
        ({"workload": "smoke", "schedule": "zb"}, "--schedule", "unknown schedule"),
        ({"workload": "smoke", "ib_gbps": 0.0}, "--ib-gbps", "positive"),
    ],
)
def test_resolve_refuses_bad_configs(kwargs: dict, option: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(RunConfig(**kwargs), check_import=False)
    assert info.value.option == option
    assert words in info.value.reason


def test_1f1b_accepts_odd_pp_and_few_micro_batches() -> None:
    cfg = RunConfig(
        workload="dualpipe-moe", schedule="1f1b", pp=3, ep=1, gpus_per_node=3, micro_batches=3
    )
    assert resolve(cfg, check_import=False).micro_batches == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--workload", "nope"], "unknown workload"),
        (["--workload", "dualpipe-moe", "--pp", "3", "--ep", "1", "--gpus-per-node", "3"], "even"),
        (
            [
                "--workload",
                "dualpipe-moe",
                "--pp",
                "4",
                "--ep",
                "2",
                "--nodes",
                "2",
                "--micro-batches",
                "4",
            ],
            "at least",
        ),
        (["--workload", "smoke", "--pp", "3", "--ep", "3", "--nodes", "2"], "must equal"),
        (["--workload", "smoke", "--set", "novalue"], "KEY=VALUE"),
    ],
)
def test_cli_refuses_bad_arguments_with_status_2(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["profile", *args])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())


# --------------------------------------------------------------------------- the session
def _load(path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def _interval(ev: dict) -> tuple[float, float]:
    return float(ev["ts"]), float(ev["ts"]) + float(ev["dur"])


def test_session_writes_augmented_trace_and_manifest(tmp_path) -> None:
    topo = Topology(nodes=1, gpus_per_node=2)
    stream = ThreadCommStream()

    def comm_work(session: ProfileSession) -> None:
        with session.annotate("dispatch(F)"):
            t0 = now_ns()
            torch.ones(64).sum()
            t1 = now_ns()
        session.record_traffic(
            "dispatch:nvl", "two_hop_dispatch", "nvl", [0, 256], "dispatch(F)", t0, t1, "float32"
        )

    with ProfileSession(
        tmp_path, rank=0, world_size=2, topology=topo, workload={"name": "unit"}, cuda=False
    ) as session:
        session.comm_tid = stream.native_id
        with session.annotate("unit:F:mb=0:stage=0"):
            pending = stream.submit(comm_work, session)
            torch.randn(32, 32) @ torch.randn(32, 32)
            pending.result(timeout=30)
        with session.annotate("emulated_kernel"):
            kernel_start = now_ns()
            time.sleep(0.002)
        session.add_events(
            [
                {
                    "ph": "X",
                    "cat": "warp_role",
                    "name": "rdma_sender:busy",
                    "pid": "rank 0 warps",
                    "tid": "c0 w0",
                    "ts": 500.0,
                    "dur": 400.0,
                    "args": {"role": "rdma_sender"},
                }
            ],
            time_base_ns=kernel_start,
        )
        session.step()
    stream.close()

    path = tmp_path / "rank-0.json.gz"
    doc = _load(path)
    meta = doc["overlapscope"]
    assert meta["schema_version"] == 1 and meta["rank"] == 0 and meta["world_size"] == 2
    assert meta["topology"] == topo.to_dict()
    assert meta["comm_tid"] == stream.native_id
    events = doc["traceEvents"]
    by_name = {e["name"]: e for e in events if e.get("ph") == "X"}
    assert "ProfilerStep#0" in by_name
    # The comm thread's annotation is on the comm thread's track (profile_all_threads).
    assert by_name["dispatch(F)"]["tid"] == stream.native_id
    assert by_name["unit:F:mb=0:stage=0"]["tid"] != stream.native_id
    # Our traffic event lands inside the Kineto annotation that enclosed its timestamps.
    traffic = [e for e in events if e.get("cat") == "comm_traffic"]
    assert len(traffic) == 1 and traffic[0]["args"]["dst_bytes"] == [0, 256]
    assert traffic[0]["tid"] == stream.native_id
    a0, a1 = _interval(by_name["dispatch(F)"])
    t0, t1 = _interval(traffic[0])
    assert a0 <= t0 <= t1 <= a1
    # The warp event, 0.5 ms after a time base taken inside "emulated_kernel", lies in it.
    warp = [e for e in events if e.get("cat") == "warp_role"]
    k0, k1 = _interval(by_name["emulated_kernel"])
    w0, w1 = _interval(warp[0])
    assert k0 <= w0 - 500.0 <= k1 and w1 - w0 == pytest.approx(400.0)
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["files"] == ["rank-0.json.gz"]
    assert manifest["ranks"][0]["trace_bytes"] == path.stat().st_size
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["workload"] == {"name": "unit"}


def test_disabled_session_writes_no_trace(tmp_path) -> None:
    with ProfileSession(tmp_path, rank=0, world_size=1, enabled=False) as session:
        first, second = session.annotate("a"), session.annotate("b")
        assert first is second  # a shared no-op, nothing allocated per call
        with first:
            pass
        session.record_traffic("x:nvl", "x", "nvl", [0], None, 0, 1, "float32")
        session.step()
    assert not (tmp_path / "rank-0.json.gz").exists()
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["trace_enabled"] is False and manifest["files"] == [None]
    assert manifest["ranks"][0]["steps"] == 1


def test_record_traffic_checks_its_vector(tmp_path) -> None:
    with ProfileSession(tmp_path, rank=0, world_size=2, write_run_json=False) as session:
        with pytest.raises(ValueError, match="world size is 2"):
            session.record_traffic("x:ib", "x", "ib", [1, 2, 3], None, 0, 1, "float32")
        with pytest.raises(ValueError, match="hop"):
            session.record_traffic("x:?", "x", "wifi", [1, 2], None, 0, 1, "float32")


def test_msgspec_reads_the_written_file(tmp_path) -> None:
    with ProfileSession(tmp_path, rank=0, world_size=1, write_run_json=False) as session:
        with session.annotate("x"):
            pass
    raw = gzip.decompress((tmp_path / "rank-0.json.gz").read_bytes())
    top = msgspec.json.decode(raw)
    assert "traceEvents" in top and top["overlapscope"]["rank"] == 0


def test_skipped_warmup_steps_are_not_recorded(tmp_path) -> None:
    with ProfileSession(tmp_path, rank=0, world_size=1, skip_steps=1, write_run_json=False) as s:
        with s.annotate("warmup_step"):
            s.record_traffic("x:local", "x", "local", [1], None, now_ns(), now_ns(), "float32")
        s.step()
        with s.annotate("measured_step"):
            s.record_traffic("y:local", "y", "local", [2], None, now_ns(), now_ns(), "float32")
        s.step()
    events = _load(tmp_path / "rank-0.json.gz")["traceEvents"]
    names = {e.get("name") for e in events}
    assert "measured_step" in names and "warmup_step" not in names
    assert [e["name"] for e in events if e.get("cat") == "comm_traffic"] == ["y:local"]


def test_comm_stream_setup_failure_raises_instead_of_hanging() -> None:
    from overlapscope.profiler.comm_stream import ThreadCommStream

    class Broken(ThreadCommStream):
        def _setup(self) -> None:
            raise RuntimeError("CUDA error: invalid device ordinal")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="comm stream setup failed.*invalid device ordinal"):
        Broken()
    assert time.monotonic() - t0 < 5


def test_comm_stream_call_runs_on_the_worker_and_inline_there() -> None:
    import threading

    from overlapscope.profiler.comm_stream import ThreadCommStream

    with ThreadCommStream() as s:
        assert s.call(threading.get_native_id) == s.native_id
        # a call made on the worker itself runs inline (no self-deadlock)
        assert s.submit(lambda: s.call(threading.get_native_id)).result(5) == s.native_id


def test_protect_walks_plans_dataclasses_and_containers() -> None:
    from dataclasses import dataclass

    from overlapscope.profiler.comm_stream import walk_tensors

    @dataclass
    class Box:
        a: torch.Tensor
        rest: list

    class Plan:
        _walk_tensors = True

        def __init__(self) -> None:
            self.idx = torch.zeros(2)
            self.module = torch.nn.Linear(2, 2)  # modules are not walked

    class Opaque:
        def __init__(self) -> None:
            self.hidden = torch.zeros(3)

    t1, t2 = torch.ones(1), torch.ones(2)
    plan = Plan()
    seen: list[torch.Tensor] = []
    walk_tensors(({"x": Box(t1, [t2, t1])}, plan, Opaque()), seen.append)
    assert [id(t) for t in seen] == [id(t1), id(t2), id(plan.idx)]


# -- slow and skewed on purpose -----------------------------------------------------------
def test_skew_trace_maps_every_time_exactly() -> None:
    base = 1_700_000_000_000_000_000
    doc = (b'{"baseTimeNanoseconds": %d, "traceEvents": [\n'
           b'{"ph": "X", "name": "a", "ts": 1000.250, "dur": 2000.000, "args": {"ts": 1}},\n'
           b'{"ph": "i", "name": "b", "ts": 5e3},\n'
           b'{"ph": "M", "name": "process_name", "args": {"name": "x"}}]}' % base)
    ref = base + 400_000
    out = json.loads(augment.skew_trace(doc, offset_ns=2_000_000, drift_ppm=10.0,
                                        ref_unix_ns=ref))
    a, b, m = out["traceEvents"]

    def skew(t: int) -> int:
        return t + 2_000_000 + round(10.0 * (t - ref) / 1e6)

    t0, t1 = base + 1_000_250, base + 3_000_250
    assert round(float(a["ts"]) * 1000) == skew(t0) - base
    assert round((float(a["ts"]) + float(a["dur"])) * 1000) == skew(t1) - base
    assert a["args"] == {"ts": 1}  # nested members untouched
    assert round(float(b["ts"]) * 1000) == skew(base + 5_000_000) - base
    assert "ts" not in m and out["baseTimeNanoseconds"] == base


def test_injected_delay_and_clock_skew_show_in_the_trace(tmp_path, monkeypatch) -> None:
    """The delayed phase lasts >= the delay longer, only on the named rank's session; every
    written time is the true time shifted by exactly offset + drift * (t - ref)."""
    captured: dict[str, bytes] = {}
    real = augment.skew_trace

    def spy(data: bytes, **kw) -> bytes:
        captured["before"] = data
        captured["after"] = real(data, **kw)
        return captured["after"]

    monkeypatch.setattr(augment, "skew_trace", spy)
    ref = time.time_ns()
    skew = {"offset_ns": 2_000_000, "drift_ppm": 10.0, "ref_unix_ns": ref}
    with ProfileSession(tmp_path, rank=0, world_size=1, cuda=False,
                        inject_delay={"rank": 0, "phase": "attn(F)", "ms": 20},
                        clock_skew=skew) as session:
        for _ in range(2):
            with session.annotate("attn(F)"):
                torch.ones(8).sum()
            with session.annotate("attn(B)"):
                torch.ones(8).sum()
        t0 = now_ns()
        session.record_traffic("x:local", "x", "local", [8], None, t0, t0 + 5000, "float32")
        session.step()
    assert session.delays_applied == 2
    # exact decimals: Kineto's ts are large enough that float64 loses nanoseconds
    doc = json.loads(gzip.decompress((tmp_path / "rank-0.json.gz").read_bytes()),
                     parse_float=Decimal)
    spans = {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "X" and e["name"] in ("attn(F)", "attn(B)"):
            spans.setdefault(e["name"], []).append(float(e["dur"]))
    assert len(spans["attn(F)"]) == 2 and min(spans["attn(F)"]) >= 20_000 * (1 + 10e-6)
    assert max(spans["attn(B)"]) < 20_000
    # the traffic record, whose true time we know to the nanosecond
    base = doc["baseTimeNanoseconds"]
    (tr,) = [e for e in doc["traceEvents"] if e.get("cat") == "comm_traffic"]
    true0 = t0 + session._mono_to_unix_ns
    assert int(Decimal(tr["ts"]) * 1000) == augment.skew_ns(true0, **skew) - base
    # every event: skewed = true + offset + drift * (true - ref), ends included
    before = json.loads(captured["before"], parse_float=Decimal)["traceEvents"]
    after = doc["traceEvents"]
    assert len(before) == len(after) > 10
    for e0, e1 in zip(before, after, strict=True):
        if "ts" not in e0:
            continue
        s0 = base + int(Decimal(e0["ts"]) * 1000)
        assert int(Decimal(e1["ts"]) * 1000) == augment.skew_ns(s0, **skew) - base
        if "dur" in e0:
            end = s0 + int(Decimal(e0["dur"]) * 1000)
            got = int((Decimal(e1["ts"]) + Decimal(e1["dur"])) * 1000)
            assert got == augment.skew_ns(end, **skew) - base


def test_delay_for_another_rank_is_ignored_and_patterns_match(tmp_path) -> None:
    with ProfileSession(tmp_path, rank=1, world_size=2, cuda=False, write_run_json=False,
                        inject_delay={"rank": 0, "phase": "attn(F)", "ms": 50}) as s:
        assert s.inject_delay is None
    s2 = ProfileSession(tmp_path, rank=0, world_size=1, enabled=False, write_run_json=False,
                        inject_delay={"rank": 0, "phase": "dualpipe:F:*", "ms": 1})
    assert s2._delay_matches("dualpipe:F:mb=3:stage=1") and not s2._delay_matches("attn(F)")


def test_cli_parses_injection_options() -> None:
    from overlapscope.app.commands.profile import parse_clock_skew, parse_inject_delay

    assert parse_inject_delay("5:attn(F):20ms") == {"rank": 5, "phase": "attn(F)", "ms": 20.0}
    assert parse_inject_delay("0:dualpipe:F:mb=1:stage=0:0.5s")["phase"] == \
        "dualpipe:F:mb=1:stage=0"
    assert parse_clock_skew(["3:+2ms:10ppm", "1:-500us"]) == {
        3: {"offset_ns": 2_000_000, "drift_ppm": 10.0}, 1: {"offset_ns": -500_000,
                                                           "drift_ppm": 0.0}}
    with pytest.raises(ValueError, match="RANK:PHASE:DURATION"):
        parse_inject_delay("attn(F)")
    with pytest.raises(ValueError, match="ppm"):
        parse_clock_skew(["1:2ms:fast"])


def test_resolve_checks_injection_and_expands_a_seed() -> None:
    from overlapscope.profiler.run import ConfigError, RunConfig, inject_manifest, resolve

    cfg = resolve(RunConfig(workload="smoke", nodes=1, gpus_per_node=4, clock_skew_seed=7,
                            clock_skew={2: {"offset_ns": 5, "drift_ppm": 1.5}},
                            inject_delay={"rank": 3, "phase": "x", "ms": 2}), check_import=False)
    assert sorted(cfg.clock_skew) == [1, 2, 3] and cfg.clock_skew[2] == {
        "offset_ns": 5, "drift_ppm": 1.5}
    assert all(abs(e["offset_ns"]) <= 5e6 and abs(e["drift_ppm"]) <= 20
               for e in cfg.clock_skew.values())
    again = resolve(RunConfig(workload="smoke", nodes=1, gpus_per_node=4, clock_skew_seed=7),
                    check_import=False)
    assert again.clock_skew[1] == cfg.clock_skew[1]  # the seed decides
    man = inject_manifest(cfg, 123)
    assert man["delay"] == {"rank": 3, "phase": "x", "ms": 2.0}
    assert man["clock"]["2"] == {"offset_ns": 5, "drift_ppm": 1.5, "ref_unix_ns": 123}
    with pytest.raises(ConfigError, match="--inject-delay"):
        resolve(RunConfig(workload="smoke", nodes=1, gpus_per_node=2,
                          inject_delay={"rank": 2, "phase": "x", "ms": 1}), check_import=False)
    with pytest.raises(ConfigError, match="--clock-skew"):
        resolve(RunConfig(workload="smoke", nodes=1, gpus_per_node=2,
                          clock_skew={5: {"offset_ns": 1}}), check_import=False)
    assert inject_manifest(resolve(RunConfig(workload="smoke"), check_import=False), None) is None


def test_nccl_with_fewer_gpus_than_ranks_is_refused_before_launch(monkeypatch) -> None:
    from overlapscope.profiler.run import ConfigError, pick_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="one GPU per rank: 4 ranks .* only 2 GPU"):
        pick_backend("nccl", 4)
    assert pick_backend("auto", 4) == "gloo" and pick_backend("nccl", 2) == "nccl"
