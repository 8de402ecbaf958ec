"""`overlapscope profile` refusals that happen before any rank starts (no processes here).

The run that really spawns ranks (and the --force overwrite) is in the slow tier at the end.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overlapscope.app.cli import app
from overlapscope.app.commands import profile as profile_cmd
from overlapscope.profiler.run import WORKLOAD_KEYS, WORKLOADS

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    return CliRunner().invoke(app, ["profile", *args])


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("option", ["--nodes", "--gpus-per-node", "--steps", "--pp", "--ep",
                                    "--micro-batches"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_counts_below_one_are_refused(tmp_path: Path, option: str, value: str) -> None:
    result = invoke(option, value, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_set_key_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    result = invoke("--workload", "smoke", "--set", "dimm=3", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    text = one_line(result.output)
    assert "unknown key 'dimm'" in text
    for key in WORKLOAD_KEYS["smoke"]:
        assert key in text
    assert not (tmp_path / "r").exists()


def test_set_of_a_launcher_key_points_at_its_option(tmp_path: Path) -> None:
    result = invoke("--workload", "ep-dispatch", "--set", "steps=3", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "--steps" in one_line(result.output)


def test_set_keys_cover_what_each_workload_reads() -> None:
    """Every ``cfg.get("key")`` / ``cfg["key"]`` in a workload is a launcher key or listed."""
    launcher = set(profile_cmd._OPTION_KEYS)
    assert set(WORKLOAD_KEYS) == set(WORKLOADS)
    for name, module in WORKLOADS.items():
        src = (ROOT / "profiler" / "workloads" / f"{module}.py").read_text()
        read = set(re.findall(r"""cfg(?:\.get\(|\[)["']([a-z_]+)["']""", src))
        missing = read - launcher - set(WORKLOAD_KEYS[name])
        assert not missing, f"{name} reads {sorted(missing)}: add them to WORKLOAD_KEYS"


@pytest.mark.parametrize("held", [["run.json"], ["rank-0.json.gz", "rank-1.json.gz"],
                                  ["rank-3.json"]])
def test_a_directory_holding_a_run_is_refused_and_left_alone(tmp_path: Path,
                                                              held: list[str]) -> None:
    out = tmp_path / "old"
    out.mkdir()
    for name in held:
        (out / name).write_text("keep me")
    result = invoke("--workload", "smoke", "--out", str(out))
    assert result.exit_code == 2
    text = one_line(result.output)
    assert "already holds a run" in text and "--force" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(held)
    assert all((out / n).read_text() == "keep me" for n in held)


def test_force_passes_the_existing_run_check(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text("{}")
    # a configuration error after the check shows --force got past it (no rank starts)
    result = invoke("--workload", "smoke", "--nodes", "1", "--gpus-per-node", "2",
                    "--pp", "3", "--out", str(out), "--force")
    assert result.exit_code == 2
    text = one_line(result.output)
    assert "already holds" not in text and "--pp" in text
    assert (out / "run.json").read_text() == "{}"


def test_a_directory_without_run_files_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("x")
    assert profile_cmd.existing_run_files(out) == []
    assert profile_cmd.existing_run_files(tmp_path / "absent") == []


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    result = invoke("--out", str(f))
    assert result.exit_code == 2 and "not a directory" in one_line(result.output)


def test_nccl_without_cuda_fails_before_any_rank_starts(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r"
    result = invoke("--workload", "smoke", "--nodes", "1", "--gpus-per-node", "2",
                    "--backend", "nccl", "--out", str(out))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "nccl needs CUDA" in lines[0]
    assert not out.exists()  # no logs/, no rank started


def test_without_torch_it_says_which_extra_to_install(tmp_path: Path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    result = invoke("--workload", "smoke", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "overlapscope[profiling]" in lines[0]


@pytest.mark.slow  # spawns gloo ranks
def test_rerun_into_the_same_directory_needs_force(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "run"
    args = ["--workload", "smoke", "--nodes", "1", "--gpus-per-node", "2", "--steps", "1",
            "--set", "comm_elems=1024", "--out", str(out)]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("rank-*.json.gz")}
    assert sorted(before) == ["rank-0.json.gz", "rank-1.json.gz"]
    again = invoke(*args)
    assert again.exit_code == 2 and "already holds a run" in one_line(again.output)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("rank-*.json.gz")} == before
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "run.json").is_file()
