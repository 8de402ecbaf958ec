"""`overlapscope tune-dispatch` on a small EP8 problem."""

from __future__ import annotations

import polars as pl
from typer.testing import CliRunner

from overlapscope.app.cli import app

SMALL = ["--tokens", "256", "--nodes", "2", "--gpus-per-node", "4", "--experts", "32",
         "--top-k", "4", "--node-limit", "2", "--no-progress"]


def test_sweep_table_plot_and_csv(tmp_path):
    plot, csv = tmp_path / "tune.html", tmp_path / "all.csv"
    args = ["tune-dispatch", *SMALL, "--senders", "1,2", "--forwarders", "2",
            "--receivers", "1,4", "--channels", "2,4", "--chunk", "8", "--top", "3",
            "--plot", str(plot), "--csv", str(csv)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(csv)
    assert frame.height == 2 * 2 * 2  # senders x receivers x channels
    # warps per block = NS + 1 coordinator + NF + NR
    assert (frame["warps_per_block"] == frame["senders"] + 1 + 2 + frame["receivers"]).all()
    best = frame.sort("kernel_us").row(0, named=True)
    assert f"{best['kernel_us']:,.1f}" in result.output
    assert "plotly" in plot.read_text()


def test_configs_over_32_warps_are_skipped(tmp_path):
    plot, csv = tmp_path / "t.html", tmp_path / "t.csv"
    args = ["tune-dispatch", *SMALL, "--senders", "8", "--forwarders", "8",
            "--receivers", "8,16", "--channels", "2", "--chunk", "8",
            "--plot", str(plot), "--csv", str(csv)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert pl.read_csv(csv)["receivers"].to_list() == [8]  # 8+1+8+16 = 33 warps dropped


def test_bad_values_exit_2_naming_the_option(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["tune-dispatch", *SMALL, "--receivers", "two",
                                 "--plot", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "--receivers" in result.output
    result = runner.invoke(app, ["tune-dispatch", *SMALL, "--node-limit", "3",
                                 "--plot", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "max_nodes" in result.output


def test_link_profile_is_named_in_the_output_and_the_csv(tmp_path):
    csv = tmp_path / "p.csv"
    base = ["tune-dispatch", *SMALL, "--senders", "2", "--forwarders", "2", "--receivers",
            "2", "--channels", "2", "--chunk", "8", "--csv", str(csv)]
    runner = CliRunner()
    probe = runner.invoke(app, base)
    deepep = runner.invoke(app, [*base, "--link-profile", "deepep"])
    assert probe.exit_code == deepep.exit_code == 0, probe.output + deepep.output
    assert "link profile probe" in " ".join(probe.output.split())
    assert "link profile: probe" in probe.output and "17 GB/s" in probe.output
    assert "link profile: deepep" in deepep.output and "43-58 GB/s" in deepep.output
    assert pl.read_csv(csv)["link_profile"].to_list() == ["deepep"]
    bad = runner.invoke(app, [*base, "--link-profile", "fast"])
    assert bad.exit_code == 2 and "--link-profile" in bad.output


def test_link_profiles_reach_their_published_throughput():
    from overlapscope.profiler.warps.config import LINK_PROFILES, DispatchConfig
    from overlapscope.profiler.warps.dispatch_kernel import emulate_dispatch

    got = {}
    for name, prof in LINK_PROFILES.items():
        res = emulate_dispatch(prof.apply(DispatchConfig()), move_bytes=False, record=False)
        got[name] = res.link_bytes["ib"] / res.kernel_ns  # bytes/ns = GB/s
    assert 15 < got["probe"] < 20  # the H200 probe kernel: ~17 GB/s over IB
    assert 43 <= got["deepep"] <= 58  # DeepEP internode RDMA, published 43-58 GB/s
