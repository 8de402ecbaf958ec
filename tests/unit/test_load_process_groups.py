"""Process groups read from the header while decoding (meta["process_groups"]), by hand."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.skew import process_groups


def _trace(rank: int, pg_config: object) -> dict:
    events = [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 10.0 + rank,
               "dur": 2.0, "args": {"device": 0, "stream": 7, "correlation": 1}}]
    return {"distributedInfo": {"rank": rank, "world_size": 2, "pg_config": pg_config},
            "traceEvents": events}


def _write(path: Path, doc: dict) -> None:
    text = json.dumps(doc).encode()
    path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)


def test_groups_in_rank_order_first_file_wins(tmp_path: Path) -> None:
    # rank 1 is listed first on disk but rank 0 is read first; both name group "7".
    _write(tmp_path / "rank-1.json", _trace(1, [{"pg_name": "7", "ranks": [1, 0]},
                                                 {"pg_name": "9", "ranks": [1]}]))
    _write(tmp_path / "rank-0.json.gz", _trace(0, [{"pg_name": 7, "ranks": [0, 1]},
                                                    {"pg_name": None, "ranks": [0]},
                                                    {"pg_name": "e", "ranks": []},
                                                    {"pg_name": "s", "ranks": "0,1"}]))
    frames = load_run(tmp_path, cache=False)
    want = {"7": [0, 1], "9": [1]}
    assert frames.meta["process_groups"] == want
    assert process_groups(frames) == {**want, "__world__": [0, 1]}
    # The same as reading the files again (the path taken without the meta key).
    bare = replace(frames, meta={k: v for k, v in frames.meta.items() if k != "process_groups"})
    assert list(process_groups(bare).items()) == list(process_groups(frames).items())


def test_malformed_pg_config_reads_as_none(tmp_path: Path) -> None:
    _write(tmp_path / "rank-0.json", _trace(0, "not a list"))
    frames = load_run(tmp_path / "rank-0.json", cache=False)
    assert frames.meta["process_groups"] == {}
    assert process_groups(frames) == {"__world__": [0]}


def test_gzip_not_named_gz_is_left_to_the_reader(tmp_path: Path) -> None:
    # skew's reader gunzips by name only: such a file's groups read as none there,
    # so the loader records nothing and the answer stays the reader's own.
    path = tmp_path / "rank-0.json"
    path.write_bytes(gzip.compress(json.dumps(_trace(0, [{"pg_name": "3", "ranks": [0]}]))
                                   .encode()))
    frames = load_run(path, cache=False)
    assert "process_groups" not in frames.meta
    assert process_groups(frames) == {"__world__": [0]}


def test_cached_load_keeps_the_groups_without_reading_the_files(
        tmp_path: Path, monkeypatch) -> None:
    import overlapscope.analyzers.skew as skew

    run = tmp_path / "run"
    run.mkdir()
    _write(run / "rank-0.json", _trace(0, [{"pg_name": "5", "ranks": [0, 1]}]))
    _write(run / "rank-1.json", _trace(1, [{"pg_name": "5", "ranks": [0, 1]}]))
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    first = load_run(run, cache=True)  # decodes and stores
    assert first.meta["process_groups"] == {"5": [0, 1]}

    def no_reading(path: str) -> list:
        raise AssertionError(f"{path} was read again for its process groups")

    monkeypatch.setattr(skew, "_pg_config", no_reading)
    again = load_run(run, cache=True)  # from the parquet cache
    assert again.meta["process_groups"] == {"5": [0, 1]}
    assert process_groups(again) == {"5": [0, 1], "__world__": [0, 1]}
