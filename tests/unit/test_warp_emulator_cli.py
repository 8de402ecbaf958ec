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
