"""`overlapscope tune-dispatch`: no torch needed, offline HTML plot at an explicit --out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from overlapscope.app.cli import app
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.plan import node_limited_topk, routed_topk

SMALL = ["--tokens", "128", "--nodes", "2", "--gpus-per-node", "4", "--experts", "32",
         "--top-k", "4", "--node-limit", "2", "--senders", "1", "--forwarders", "2",
         "--receivers", "1,2", "--channels", "2", "--chunk", "8", "--no-progress"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["tune-dispatch", *args])


def test_plot_goes_to_out_is_printed_and_works_offline(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "dir" / "tune.html"
    result = invoke(*SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"plot:{out}" in "".join(result.output.split())
    html = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing fetched: it works offline
    assert len(html) > 1_000_000  # plotly.js itself is inside


def test_no_out_writes_nothing_into_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*SMALL)
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []
    assert "--out" in result.output


def test_unwritable_out_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(*SMALL, "--out", str(blocker / "tune.html"))
    assert result.exit_code == 2


@pytest.mark.parametrize("option", ["--tokens", "--nodes", "--gpus-per-node", "--experts",
                                    "--top-k", "--top", "--token-bytes"])
def test_counts_below_one_are_refused(tmp_path: Path, option: str) -> None:
    result = invoke(*SMALL, option, "0")
    assert result.exit_code == 2
    assert option in result.output


def test_runs_without_torch(tmp_path: Path) -> None:
    """With ``import torch`` failing the whole sweep still runs (the routing is NumPy)."""
    out = tmp_path / "t.html"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from overlapscope.app.cli import main\n"
        f"main(['tune-dispatch', *{SMALL!r}, '--out', {str(out)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_routed_topk_is_deterministic_and_node_limited() -> None:
    cfg = DispatchConfig(tokens=512, nodes=4, gpus_per_node=2, experts=64, top_k=6,
                         max_nodes=2, seed=5)
    a, b = routed_topk(cfg), routed_topk(cfg)
    assert a.dtype == np.int64 and a.shape == (512, 6)
    assert np.array_equal(a, b)
    per_node = cfg.experts // cfg.nodes
    assert max(len(set((row // per_node).tolist())) for row in a) <= 2
    assert all(len(set(row.tolist())) == 6 for row in a)


@pytest.mark.parametrize("node_score", ["sum_topk", "max"])
@pytest.mark.parametrize("max_nodes", [1, 2, 3, 4])
def test_numpy_gate_matches_the_torch_gate(node_score: str, max_nodes: int) -> None:
    torch = pytest.importorskip("torch")
    from overlapscope.profiler.routing import node_limited_topk as torch_gate

    rng = np.random.default_rng(max_nodes)
    aff = 1 / (1 + np.exp(-rng.standard_normal((400, 32))))
    want, _ = torch_gate(torch.from_numpy(aff), None, n_nodes=4, top_k=4,
                         max_nodes=max_nodes, node_score=node_score)
    got = node_limited_topk(aff, n_nodes=4, top_k=4, max_nodes=max_nodes,
                            node_score=node_score)
    assert np.array_equal(got, want.numpy())


def test_numpy_gate_breaks_ties_to_the_lower_index() -> None:
    aff = np.full((1, 8), 0.5)
    assert node_limited_topk(aff, n_nodes=2, top_k=3, max_nodes=1).tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_nodes"):
        node_limited_topk(aff, n_nodes=2, top_k=2, max_nodes=3)
