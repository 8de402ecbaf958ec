"""Start-up of the CLI: a sub-command imports only what it needs; a reopened run imports
no analysis module; the lazily registered commands are all there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from overlapscope.app import cli

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz"
HEAVY = ["plotly", "dash", "torch", "numpy", "polars", "msgspec", "rich",
         "overlapscope.analyzers.batch", "overlapscope.app.commands.analyze"]
#: What reopening a stored Report must not import: decoding and the analyses.
ANALYSES = ["overlapscope.analyzers.batch", "overlapscope.analyzers.inputs",
            "overlapscope.analyzers.tables", "overlapscope.analyzers.classify",
            "overlapscope.analyzers.load", "overlapscope.analyzers.kineto.decode",
            "overlapscope.app.commands.compare", "overlapscope.app.commands.tune_dispatch",
            "plotly", "dash", "torch", "numpy"]


def _modules_after(code: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """Run ``code`` in a fresh interpreter; (modules it ended with, its stdout)."""
    wrapped = (
        "import sys, json\n"
        "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
        "except SystemExit:\n    pass\n"
        "sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          cwd=ROOT, timeout=300)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES=")]
    assert line, proc.stderr[-2000:]
    return set(json.loads(line[-1][len("MODULES="):])), proc.stdout


def test_importing_the_cli_imports_no_heavy_module() -> None:
    mods, _ = _modules_after("import overlapscope.app.cli")
    assert "overlapscope.app.cli" in mods  # the check ran in a working interpreter
    assert [m for m in HEAVY if m in mods] == []


def test_version_imports_no_heavy_module() -> None:
    mods, out = _modules_after("from overlapscope.app.cli import main\nmain(['--version'])")
    assert out.startswith("overlapscope ")
    assert [m for m in HEAVY if m in mods] == []


def test_a_reopened_run_imports_no_analysis_and_prints_the_same(tmp_path: Path) -> None:
    env = {"OVERLAPSCOPE_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "100"}
    code = f"from overlapscope.app.cli import main\nmain(['analyze', {str(GPU)!r}])"
    cold_mods, cold = _modules_after(code, env)
    assert "overlapscope.analyzers.batch" in cold_mods  # the first run analyzed
    again_mods, again = _modules_after(code, env)
    assert [m for m in ANALYSES if m in again_mods] == []
    assert "summary:" in cold and again == cold


def test_every_command_module_is_named_and_listed() -> None:
    modules = sorted(p.stem for p in (ROOT / "app" / "commands").glob("*.py")
                     if p.stem != "__init__")
    assert sorted(cli.COMMANDS.values()) == modules
    res = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    listed = [line.split()[1] for line in res.output.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2]
    assert [c for c in listed if c in cli.COMMANDS] == list(cli.COMMANDS)


def test_each_command_resolves_to_itself_with_its_own_help() -> None:
    for name in cli.COMMANDS:
        res = CliRunner().invoke(cli.app, [name, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (name, res.output)
        assert f"Usage: overlapscope {name} [OPTIONS]" in res.output, name


def test_an_unknown_command_still_gets_a_suggestion() -> None:
    res = CliRunner().invoke(cli.app, ["anlyze", "x"])
    assert res.exit_code == 2
    assert "Did you mean 'analyze'?" in res.output


def test_the_report_cache_keys_the_rules_file_classify_reads() -> None:
    from overlapscope.analyzers import report_cache
    from overlapscope.analyzers.classify import DEFAULT_RULES

    assert report_cache._DEFAULT_RULES == DEFAULT_RULES and DEFAULT_RULES.is_file()
