"""Warp-role analyzer: hand-made frames with hand-computed numbers, then the H200 fixtures."""

from __future__ import annotations

import csv
import gzip
import statistics
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from overlapscope.analyzers.frames import COUNTERS_SCHEMA, WARP_EVENTS_SCHEMA
from overlapscope.analyzers.warps import Thresholds, analyze_warps, coordinator_lag, stragglers
from overlapscope.analyzers.warps.csv import read_warp_csv
from overlapscope.analyzers.warps.rings import union_length

H200 = Path(__file__).resolve().parents[2] / "sample_traces" / "h200"

# (role, warp, state, ts, end, bytes, link, chunk) on channel 0 of rank 0.
TINY = [
    ("rdma_sender", 0, "busy", 0, 60, 600, "ib", 0),
    ("rdma_sender", 0, "wait_remote_head", 60, 100, 0, None, 1),
    ("forwarder", 1, "wait_tail", 0, 40, 0, None, 0),
    ("forwarder", 1, "busy", 40, 90, 1000, "nvl", 0),
    # 90..95 unrecorded
    ("forwarder", 1, "wait_remote_head", 95, 120, 0, None, 1),
    ("nvl_receiver", 2, "wait_tail", 0, 50, 0, None, 0),
    ("nvl_receiver", 2, "busy", 50, 200, 1000, "local", 0),
    ("sender_coordinator", 3, "wait_tail", 0, 62, 0, None, 0),
    ("sender_coordinator", 3, "busy", 62, 70, 0, None, 0),
]


def frame(rows, rank=0, channel=0, shift=0):
    return pl.DataFrame(
        [dict(rank=rank, channel=channel, warp=w, sm=channel, role=r, state=s, chunk=k,
              bytes=b, link=lk, ts_ns=t0 + shift, dur_ns=t1 - t0)
         for r, w, s, t0, t1, b, lk, k in rows],
        schema=WARP_EVENTS_SCHEMA,
    )


def by_role(a):
    return {r["role"]: r for r in a.roles.iter_rows(named=True)}


def test_fractions_by_hand():
    a = analyze_warps(frame(TINY))
    r = by_role(a)
    s, f, v = r["rdma_sender"], r["forwarder"], r["nvl_receiver"]
    assert (s["lifetime_ns"], s["busy_frac"], s["wait_remote_head_frac"]) == (100, 0.6, 0.4)
    assert f["lifetime_ns"] == 120
    assert f["busy_frac"] == pytest.approx(50 / 120)
    assert f["wait_tail_frac"] == pytest.approx(40 / 120)
    assert f["wait_remote_head_frac"] == pytest.approx(25 / 120)
    assert f["unrecorded_frac"] == pytest.approx(5 / 120)
    assert v["busy_frac"] == 0.75 and v["wait_tail_frac"] == 0.25 and v["unrecorded_frac"] == 0
    # kernel span = 200 ns: busy / (warps x span)
    assert (s["busy_of_span_frac"], f["busy_of_span_frac"], v["busy_of_span_frac"]) == (
        0.3, 0.25, 0.75)
    for row in a.roles.iter_rows(named=True):  # busy + waits + unrecorded = 1
        assert row["busy_frac"] + row["wait_frac"] + row["unrecorded_frac"] == pytest.approx(1)
    assert a.spans.row(0, named=True) == dict(rank=0, span_start_ns=0, span_end_ns=200,
                                              span_ns=200)


def test_links_by_hand_and_limits():
    a = analyze_warps(frame(TINY))
    lk = {r["link"]: r for r in a.links.iter_rows(named=True)}
    assert (lk["ib"]["bytes"], lk["ib"]["active_ns"], lk["ib"]["achieved_gbps"]) == (600, 60, 10)
    assert lk["ib"]["util_frac"] == pytest.approx(10 / 50)
    assert lk["nvl"]["achieved_gbps"] == 20 and lk["nvl"]["util_frac"] == pytest.approx(20 / 160)
    assert lk["nvl"]["span_gbps"] == 5  # 1000 B over the 200 ns kernel
    assert lk["local"]["limit_gbps"] is None and lk["local"]["util_frac"] is None
    # Receivers are busiest (75 % of the span): a role bottleneck, not a link one.
    assert a.bottleneck() == "nvl_receiver"
    primary = a.diagnosis.filter(pl.col("primary")).row(0, named=True)
    assert primary["kind"] == "role" and "more NVL receiver warps" in primary["remedy"]
    assert "NVL receivers" in a.text and "75%" in a.text
    # 10 GB/s on an 11 GB/s link is 91 % while in use, but 600 B at 11 GB/s fill only
    # 27 % of the 200 ns span: evidence, not the bottleneck.
    hot = analyze_warps(frame(TINY), ib_gbps=11)
    assert hot.bottleneck() == "nvl_receiver"
    rule = hot.diagnosis.filter(pl.col("rule") == "link_hot_while_used").row(0, named=True)
    assert rule["subject"] == "ib" and rule["value_frac"] == pytest.approx(10 / 11)


LINK_BOUND = [
    ("rdma_sender", 0, "busy", 0, 180, 1800, "ib", 0),  # 10 GB/s for 180 of 200 ns
    ("forwarder", 1, "wait_tail", 0, 180, 0, None, 0),
    ("forwarder", 1, "busy", 180, 190, 100, "nvl", 0),
    ("nvl_receiver", 2, "wait_tail", 0, 190, 0, None, 0),
    ("nvl_receiver", 2, "busy", 190, 200, 100, "local", 0),
]


def test_link_bound_by_hand():
    # 11 GB/s limit: 91 % while in use and 1800 B / 11 GB/s = 164 ns = 82 % of the span.
    meta = {"overlapscope": {"topology": {"nodes": 2, "gpus_per_node": 8, "ib_gbps": 11.0,
                                          "nvl_gbps": 160.0}}}
    for a in (analyze_warps(frame(LINK_BOUND), ib_gbps=11), analyze_warps(frame(LINK_BOUND),
                                                                          meta=meta)):
        primary = a.diagnosis.filter(pl.col("primary")).row(0, named=True)
        assert (primary["kind"], primary["subject"]) == ("link", "ib")
        assert primary["value_frac"] == pytest.approx(10 / 11)
        assert "node limit" in primary["remedy"]
        assert a.links.filter(pl.col("link") == "ib")["span_util_frac"][0] == pytest.approx(
            9 / 11)
    # 12 GB/s: 83 % < 85 % -> the senders (busy 90 % of the span) are the bottleneck,
    # and with IB above half its limit the remedy also names the node limit.
    a = analyze_warps(frame(LINK_BOUND), ib_gbps=12)
    primary = a.diagnosis.filter(pl.col("primary")).row(0, named=True)
    assert (primary["kind"], primary["subject"], primary["value_frac"]) == (
        "role", "rdma_sender", 0.9)
    assert "more RDMA sender warps" in primary["remedy"] and "node limit" in primary["remedy"]
    # forwarders wait for data 180/190 and receivers 190/200 of their lifetimes
    assert set(a.diagnosis["rule"].to_list()) == {"busiest_role", "forwarders_wait_data",
                                                  "receivers_wait_data"}


def test_rules_fire_from_wait_reasons():
    a = analyze_warps(frame(TINY))
    rules = set(a.diagnosis.filter(~pl.col("primary"))["rule"].to_list())
    # senders 40 % on space, forwarders 33 % on data and 21 % on NVL space, receivers 25 %
    # on data: all >= 20 %, and both sides of each ring wait on it.
    assert rules == {"senders_wait_space", "forwarders_wait_data", "forwarders_wait_space",
                     "receivers_wait_data", "ring_ping_pong"}
    ping = a.diagnosis.filter(pl.col("rule") == "ring_ping_pong")
    assert dict(ping.select("subject", "value_frac").iter_rows()) == pytest.approx(
        {"rdma": 40 / 120, "nvl": 25 / 120})  # the smaller of the two sides' wait fractions
    quiet = analyze_warps(frame(TINY), thresholds=Thresholds(wait_frac=0.45))
    assert quiet.diagnosis["rule"].to_list() == ["busiest_role"]


def test_nothing_saturated_suggests_chunk_size():
    rows = [("rdma_sender", 0, "busy", 0, 10, 10, "ib", 0),
            ("rdma_sender", 0, "wait_remote_head", 10, 100, 0, None, 0),
            ("forwarder", 1, "wait_tail", 0, 50, 0, None, 0),
            ("forwarder", 1, "busy", 50, 60, 10, "nvl", 0),
            ("nvl_receiver", 2, "wait_tail", 0, 60, 0, None, 0),
            ("nvl_receiver", 2, "busy", 60, 100, 10, "local", 0)]
    a = analyze_warps(frame(rows))
    primary = a.diagnosis.filter(pl.col("primary")).row(0, named=True)
    assert primary["kind"] == "pipeline" and primary["value_frac"] == 0.4  # receivers 40/100
    assert "chunk size" in primary["remedy"]


def test_per_channel_and_per_rank():
    ch1 = [("rdma_sender", 0, "busy", 0, 30, 300, "ib", 0),
           ("rdma_sender", 0, "wait_remote_head", 30, 40, 0, None, 1)]
    ev = pl.concat([frame(TINY), frame(ch1, channel=1), frame(TINY, rank=1, shift=1000)])
    a = analyze_warps(ev)
    rc = {(r["rank"], r["role"], r["channel"]): r for r in a.role_channels.iter_rows(named=True)}
    assert rc[(0, "rdma_sender", 1)]["busy_frac"] == 0.75
    assert rc[(0, "rdma_sender", 0)]["busy_frac"] == 0.6
    # pooled senders of rank 0: busy 60 + 30 over lifetimes 100 + 40
    r0 = a.roles.filter(pl.col("rank") == 0, pl.col("role") == "rdma_sender").row(0, named=True)
    assert r0["busy_frac"] == pytest.approx(90 / 140) and r0["n_warps"] == 2
    r1 = a.roles.filter(pl.col("rank") == 1, pl.col("role") == "forwarder").row(0, named=True)
    assert r1["busy_frac"] == pytest.approx(50 / 120) and r1["start_ns"] == 1000
    assert set(a.diagnosis.filter(pl.col("primary"))["rank"].to_list()) == {0, 1}
    assert a.instances.height == 9
    assert a.links.filter(pl.col("rank") == 0, pl.col("link") == "ib")["bytes"][0] == 900


def test_union_length_by_hand():
    iv = pl.DataFrame({"k": [0, 0, 0, 0, 1], "ts_ns": [60, 80, 200, 205, 0],
                       "dur_ns": [40, 30, 10, 2, 5]})
    got = dict(union_length(iv, ["k"]).iter_rows())
    assert got == {0: 50 + 10, 1: 5}  # [60,110) u [200,210)


def test_rings_inferred_by_hand():
    a = analyze_warps(frame(TINY))
    rings = {r["kind"]: r for r in a.rings.iter_rows(named=True)}
    # RDMA ring: senders wait for space 60..100, forwarders for data 0..40; window 0..120
    assert rings["rdma"]["source"] == "inferred" and rings["rdma"]["window_ns"] == 120
    assert rings["rdma"]["full_frac"] == pytest.approx(40 / 120)
    assert rings["rdma"]["empty_frac"] == pytest.approx(40 / 120)
    # NVL ring: forwarders wait for space 95..120, receivers for data 0..50; window 0..200
    assert rings["nvl"]["full_frac"] == 25 / 200 and rings["nvl"]["empty_frac"] == 50 / 200


def test_rings_from_counters_by_hand():
    counters = pl.DataFrame(
        [dict(rank=0, pid="rank 0 warps", name="ring rdma c0 n1", series="occupancy",
              ts_ns=t, value=v) for t, v in [(0, 0.0), (50, 4.0), (80, 2.0)]],
        schema=COUNTERS_SCHEMA)
    a = analyze_warps(frame(TINY), counters, ring_capacity=4)
    r = a.rings.row(0, named=True)
    # occupancy 0 for 50 ns, 4 (= capacity) for 30, 2 until the last warp event at 200
    assert (r["source"], r["kind"], r["channel"], r["peer"], r["window_ns"]) == (
        "counters", "rdma", 0, "n1", 200)
    assert (r["full_frac"], r["empty_frac"], r["mean_occupancy"], r["max_occupancy"]) == (
        0.15, 0.25, 1.8, 4.0)
    meta = {"overlapscope": {"workload": {"ring_capacity": {"rdma": 2}}}}
    assert analyze_warps(frame(TINY), counters, meta=meta).rings["full_frac"][0] == 0.75
    assert analyze_warps(frame(TINY), counters).rings["full_frac"][0] is None


def test_coordinator_lag_and_stragglers_by_hand():
    rows = [("rdma_sender", 0, "busy", 0, 60, 0, "ib", 0),
            ("rdma_sender", 5, "busy", 10, 70, 0, "ib", 0),
            ("sender_coordinator", 3, "busy", 75, 80, 0, None, 0),
            ("forwarder", 1, "busy", 80, 90, 0, "nvl", 0),
            ("forwarder", 4, "busy", 85, 130, 0, "nvl", 0)]
    lag = coordinator_lag(frame(rows)).row(0, named=True)
    assert (lag["senders_done_ns"], lag["published_ns"], lag["publish_lag_ns"]) == (70, 80, 10)
    assert (lag["forwarders_first_done_ns"], lag["forwarders_last_done_ns"],
            lag["forwarder_spread_ns"]) == (90, 130, 40)
    ev = pl.concat([frame([("nvl_receiver", 0, "busy", 0, e, 0, "local", 0)], channel=c)
                    for c, e in enumerate([100, 110, 200])])
    st = stragglers(ev)
    assert st["lateness_ns"].to_list() == [-10, 0, 90]  # median channel end 110
    assert st["lateness_frac"][2] == 0.45 and st["is_straggler"].to_list() == [False, False, True]
    assert st["last_role"][2] == "nvl_receiver"


def test_bad_input():
    with pytest.raises(ValueError, match="lacks column"):
        analyze_warps(pl.DataFrame({"rank": [0]}))
    with pytest.raises(ValueError, match="empty"):
        analyze_warps(pl.DataFrame(schema=WARP_EVENTS_SCHEMA))


# ---------------------------------------------------------------- H200 fixtures


def _plain_role_fractions(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Second method: busy / lifetime and busy / (warps x span) per role id, plain Python."""
    first, last, busy = {}, {}, defaultdict(int)
    t_min, t_max = None, None
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            key = (int(row["role"]), int(row["channel"]), int(row["warp"]))
            t0, t1 = int(row["t0_ns"]), int(row["t1_ns"])
            first[key] = min(first.get(key, t0), t0)
            last[key] = max(last.get(key, t1), t1)
            t_min = t0 if t_min is None else min(t_min, t0)
            t_max = t1 if t_max is None else max(t_max, t1)
            if row["kind"] == "0":
                busy[key] += t1 - t0
    life, work, warps = defaultdict(int), defaultdict(int), defaultdict(int)
    for key in first:
        life[key[0]] += last[key] - first[key]
        work[key[0]] += busy[key]
        warps[key[0]] += 1
    span = t_max - t_min
    return ({r: work[r] / life[r] for r in life},
            {r: work[r] / (warps[r] * span) for r in life})


def _sweep_median(**cfg) -> float:
    base = dict(M="4", skew="0.00", C="10", K="32", NS="4", NF="8", NR="4", ib_gbps="50",
                nvl_gbps="160")
    base.update({k: str(v) for k, v in cfg.items()})
    with open(H200 / "warp_sweep.csv", newline="") as fh:
        times = [float(r["kernel_us"]) for r in csv.DictReader(fh)
                 if all(r[k] == v for k, v in base.items())]
    assert times and len(times) % 3 == 0  # 3 reps; the baseline is re-run in every sweep
    return statistics.median(times)


@pytest.fixture(scope="module")
def fixtures():
    names = ["warp_events_M4_NS4_NR4", "warp_events_M4_NS1_NR1", "warp_events_M8_NS4_NR4",
             "varsm_warp_events"]
    return {n: analyze_warps(read_warp_csv(H200 / f"{n}.csv.gz")) for n in names}


def test_fixture_fractions_match_plain_python(fixtures):
    life_frac, span_frac = _plain_role_fractions(H200 / "warp_events_M4_NS4_NR4.csv.gz")
    names = {0: "rdma_sender", 1: "sender_coordinator", 2: "forwarder", 3: "nvl_receiver"}
    r = by_role(fixtures["warp_events_M4_NS4_NR4"])
    for rid, name in names.items():
        assert r[name]["busy_frac"] == pytest.approx(life_frac[rid], rel=1e-12)
        assert r[name]["busy_of_span_frac"] == pytest.approx(span_frac[rid], rel=1e-12)


@pytest.mark.parametrize("name", ["warp_events_M4_NS4_NR4", "varsm_warp_events"])
def test_fixture_link_bytes_equal_csv_sums(fixtures, name):
    with gzip.open(H200 / f"{name}.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ib = sum(int(r["bytes"]) for r in rows if r["role"] == "0")  # node-0 senders carry 0
    nvl = sum(int(r["bytes"]) for r in rows if r["role"] == "2")
    local = sum(int(r["bytes"]) for r in rows if r["role"] == "3")
    lk = dict(fixtures[name].links.select("link", "bytes").iter_rows())
    assert lk == {"ib": ib, "nvl": nvl, "local": local}
    if name == "warp_events_M4_NS4_NR4":  # the sweep's own byte counts for this config
        assert (ib, nvl) == (102_716_096, 221_675_264)


def test_fixture_receivers_are_the_bottleneck_where_the_sweep_says_so(fixtures):
    # Ground truth from the sweep: of the baseline's warp counts, doubling receivers
    # helps most (NR 4 -> 8: 6148 -> 4071 us); more senders do not (NS 4 -> 8: 6208).
    base = _sweep_median()
    assert _sweep_median(NR=8) < 0.75 * base and _sweep_median(NS=8) > 0.98 * base
    assert _sweep_median(NR=1) > 3 * base
    for name in ["warp_events_M4_NS4_NR4", "warp_events_M4_NS1_NR1", "warp_events_M8_NS4_NR4"]:
        a = fixtures[name]
        assert a.bottleneck() == "nvl_receiver", name
        primary = a.diagnosis.filter(pl.col("primary")).row(0, named=True)
        assert primary["kind"] == "role" and "more NVL receiver warps" in primary["remedy"]
    # With one receiver per channel forwarders are held up by full NVL rings (58 % of
    # their lifetime), the §2.6 "receivers bound" rule.
    nr1 = fixtures["warp_events_M4_NS1_NR1"].diagnosis
    fired = nr1.filter(pl.col("rule") == "forwarders_wait_space")
    assert fired.height == 1 and 0.55 < fired["value_frac"][0] < 0.6
    # No link is near its limit (the sweep with unlimited links is only 3 % faster).
    assert _sweep_median(ib_gbps=0, nvl_gbps=0) > 0.95 * base
    for a in fixtures.values():
        assert a.links["util_frac"].drop_nulls().max() < 0.85


def test_fixture_varsm_is_forwarder_bound(fixtures):
    # NR = 8 there: receivers no longer limit; they wait for data 40 % of their lifetime
    # while forwarders work 71 % of the kernel span.
    a = fixtures["varsm_warp_events"]
    assert a.bottleneck() == "forwarder"
    rules = a.diagnosis.filter(~pl.col("primary"))
    assert rules["rule"].to_list() == ["receivers_wait_data"]
    assert 0.39 < rules["value_frac"][0] < 0.41
    assert by_role(a)["nvl_receiver"]["n_warps"] == 80  # 8 per channel x 10 channels


def test_fixture_unrecorded_time_is_small_and_reported(fixtures):
    for a in fixtures.values():
        assert a.roles["unrecorded_frac"].max() < 0.03
        assert a.stragglers.height == 10


def test_emulator_log_through_the_analyzer():
    emu = pytest.importorskip("overlapscope.profiler.warps.dispatch_kernel")
    from overlapscope.profiler.warps.config import DispatchConfig

    res = emu.emulate_dispatch(DispatchConfig().with_(tokens=1024, receivers=1),
                               move_bytes=False)
    a = analyze_warps(res.frame(), meta={"overlapscope": res.overlapscope_meta()})
    # bytes per link and busy/(warps x span) agree with the emulator's own bookkeeping
    assert dict(a.links.select("link", "bytes").iter_rows()) == {
        k: v for k, v in res.link_bytes.items() if v}
    # (the emulator divides by its kernel time, the analyzer by the events' span)
    span = a.spans["span_ns"][0]
    share = {r: f * span for r, f in a.roles.select("role", "busy_of_span_frac").iter_rows()}
    assert share == pytest.approx({r: b * res.kernel_ns for r, b in res.role_busy.items()},
                                  rel=1e-9)
    assert a.bottleneck() == "nvl_receiver"  # one receiver warp per channel
