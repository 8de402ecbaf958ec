"""Browser tests of the dashboard: the real app in headless Chromium (dash_duo).

Runs are loaded once per session into a shared DashboardState; each test serves
a fresh app over it. Screenshots go to ``$OVERLAPSCOPE_E2E_ARTIFACTS`` (default:
a pytest temporary folder, printed at the end).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"


def pytest_configure(config: pytest.Config) -> None:
    # Always headless: CI and developer machines have no display for these tests.
    if hasattr(config.option, "headless"):
        config.option.headless = True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("selenium") is None:
        why = "dash[testing] (selenium) not installed"
    elif shutil.which("chromedriver") is None:
        why = "chromedriver not installed (apt-get install chromium chromium-driver)"
    else:
        return
    for item in items:
        if "e2e" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots are written."""
    env = os.environ.get("OVERLAPSCOPE_E2E_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("e2e-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def extra_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second allowed folder: a symlink leading out of it and a trace that is not JSON."""
    root = tmp_path_factory.mktemp("root2")
    (root / "escape").symlink_to("/etc")
    (root / "broken.json.gz").write_bytes(gzip.compress(b"{ this is not json"))
    return root


@pytest.fixture(scope="session")
def dash_state(extra_root: Path):
    """Every bundled sample run, loaded once (the CLI's default set)."""
    from overlapscope.app.dashboard.paths import sample_runs
    from overlapscope.app.dashboard.state import DashboardState

    state = DashboardState([SAMPLES, extra_root], max_upload_mb=5)
    for p in sample_runs(SAMPLES):
        state.open(p)
    assert state.wait(300), "sample runs did not load in 300 s"
    failed = {e.label: e.error for e in state.runs.values() if e.status == "error"}
    assert not failed, failed
    yield state
    state.close()
