"""Dashboard safety: only paths under the allowed folders, uploads checked and size-limited."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest

from overlapscope.app.dashboard.paths import (
    PathError,
    candidates,
    default_roots,
    resolve_under,
)
from overlapscope.app.dashboard.state import DashboardState, UploadError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "run" / "rank-0.json.gz").write_bytes(gzip.compress(b"{}"))
    (root / "run" / "rank-1.json.gz").write_bytes(gzip.compress(b"{}"))
    (root / "one.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "x.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    (root / "inside").symlink_to(root / "run")
    return root


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("../secret/x.json", "'..' is not allowed"),
        ("run/../../secret/x.json", "'..' is not allowed"),
        ("/etc/passwd", "absolute paths are not accepted"),
        ("~/x.json", "absolute paths are not accepted"),
        ("C:/Windows", "absolute paths are not accepted"),
        ("run\\rank-0.json.gz", "backslashes"),
        ("escape/x.json", "outside the allowed folders"),
        ("escape", "outside the allowed folders"),
        ("nothing/here", "was not found"),
        ("", "enter a path"),
    ],
)
def test_refused_paths_say_why(tree: Path, value: str, why: str) -> None:
    with pytest.raises(PathError, match=why):
        resolve_under(value, [tree])


def test_paths_under_a_root_resolve(tree: Path) -> None:
    assert resolve_under("run", [tree]) == (tree / "run").resolve()
    assert resolve_under(" one.json ", [tree]) == (tree / "one.json").resolve()
    # a link that stays inside the root is fine
    assert resolve_under("inside", [tree]) == (tree / "run").resolve()


def test_candidates_list_runs_once_and_skip_escaping_links(tree: Path) -> None:
    found = [rel for _, rel in candidates([tree])]
    assert "run" in found and "one.json" in found
    assert not any(f.startswith("run/") for f in found)
    assert not any("secret" in f or f.startswith("escape") for f in found)


def test_default_roots_are_the_folders_of_the_paths(tree: Path) -> None:
    assert default_roots([tree / "run", tree / "one.json"]) == [tree.resolve()]


def _data_url(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def test_uploads_are_checked(tmp_path: Path) -> None:
    state = DashboardState([tmp_path], max_upload_mb=0.01)  # 10 kB
    try:
        with pytest.raises(UploadError, match="only .json and .json.gz"):
            state.save_upload("trace.txt", _data_url(b"{}"))
        with pytest.raises(UploadError, match="not gzip-compressed"):
            state.save_upload("trace.json.gz", _data_url(b"{}"))
        with pytest.raises(UploadError, match="is not JSON"):
            state.save_upload("trace.json", _data_url(b"\x00\x01"))
        with pytest.raises(UploadError, match="larger than the upload limit"):
            state.save_upload("big.json", _data_url(b"{" + b" " * 20_000 + b"}"))
        with pytest.raises(UploadError, match="could not be decoded"):
            state.save_upload("t.json", "data:x;base64,@@@@")
        with pytest.raises(UploadError, match="no file"):
            state.save_upload(None, None)
        # a name with folders or odd characters lands inside the upload folder
        saved = state.save_upload("../../evil name.json", _data_url(b"{}"))
        assert saved.is_relative_to(state.upload_dir) and saved.name == "evil_name.json"
    finally:
        state.close()
    assert not state.upload_dir.exists()


def test_a_bad_trace_becomes_an_error_entry_not_an_exception(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'{"traceEvents": ['))
    state = DashboardState([tmp_path])
    try:
        entry = state.open(bad)
        assert state.wait(60)
        assert entry.status == "error" and entry.error
        assert "bad.json.gz" in entry.progress_text()
    finally:
        state.close()
