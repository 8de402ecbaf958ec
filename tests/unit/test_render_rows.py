"""The fast row layout of frame_table prints exactly what rich's own table layout prints
(the second method), on a terminal and piped, at several widths."""

from __future__ import annotations

import io
import random

import polars as pl
import pytest
from rich.console import Console

from overlapscope.app import render


def _frame(seed: int, rows: int) -> pl.DataFrame:
    rnd = random.Random(seed)
    words = ["gloo:send", "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "attn(F)", "",
             "dualpipe:F:mb=*:stage=*", "void dpsk::ep::internode::dispatch<false, 8>(int4*)",
             "x" * 60, "trailing  ", "a|b"]
    return pl.DataFrame(
        {
            "rank": [rnd.randrange(8) for _ in range(rows)],
            "name": [rnd.choice(words) for _ in range(rows)],
            "dur_ns": [rnd.choice([0, 72_500, 1_234_567_891, None]) for _ in range(rows)],
            "coverage": [rnd.choice([0.0, 0.0004, 0.72413, 1.0, None]) for _ in range(rows)],
            "total_bytes": [rnd.choice([0, 32_768, 10**12]) for _ in range(rows)],
            "is_comm_stream": [rnd.random() < 0.5 for _ in range(rows)],
            "comm_type": [rnd.choice(["nccl", "gloo", "deepep"]) for _ in range(rows)],
        },
        schema_overrides={"rank": pl.Int32},
    )


def _print(df: pl.DataFrame, cols: list[str], width: int, terminal: bool, host: bool,
           fast: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    calls: list[bool] = []
    real = render.plain_rows

    def spy(*args: object) -> list[str] | None:
        rows = real(*args) if fast else None
        calls.append(rows is not None)
        return rows

    monkeypatch.setattr(render, "plain_rows", spy)
    buf = io.StringIO()
    console = Console(file=buf, width=width, emoji=False, highlight=False,
                      force_terminal=terminal, color_system="truecolor" if terminal else None)
    render.frame_table(df, cols, title="kernels: comm [kernels] by name", console=console,
                       host=host)
    monkeypatch.setattr(render, "plain_rows", real)
    return buf.getvalue() + f"\nfast={any(calls)}"


@pytest.mark.parametrize("width", [40, 63, 80, 120, 200])
@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_fast_rows_print_what_rich_prints(
    width: int, terminal: bool, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = _frame(seed, rows=25)
    cols = ["rank", "name", "dur_ns", "coverage", "total_bytes", "is_comm_stream", "comm_type"]
    fast = _print(df, cols, width, terminal, seed == 2, True, monkeypatch)
    slow = _print(df, cols, width, terminal, seed == 2, False, monkeypatch)
    assert fast.endswith("fast=True")  # the fast layout was used, not rich's
    assert slow.endswith("fast=False")
    assert fast.removesuffix("fast=True") == slow.removesuffix("fast=False")


def test_text_rich_must_lay_out_goes_to_rich() -> None:
    df = pl.DataFrame({"rank": [0, 1], "name": ["plain", "全角 name\tx"]})
    fitted, _, cells, widths = render.fit_columns(df, ["rank", "name"], 80)
    assert render.plain_rows(df, fitted, cells, widths, 80) is None
    df = pl.DataFrame({"rank": [0], "text": ["prose wraps at words"]})
    fitted, _, cells, widths = render.fit_columns(df, ["rank", "text"], 80)
    assert render.plain_rows(df, fitted, cells, widths, 80) is None


def test_rows_by_hand() -> None:
    # rank: width 4 (header "rank"), right-justified; name: cut to 14 with "…"; 3 blanks
    # between columns; no padding at the edges.
    df = pl.DataFrame({"rank": [3, 12], "name": ["ab", "abcdefghijklmnopq"]})
    rows = render.plain_rows(df, ["rank", "name"], {"rank": ["3", "12"],
                             "name": ["ab", "abcdefghijklmnopq"]}, {"rank": 4, "name": 14}, 21)
    assert rows == ["   3   ab            ", "  12   abcdefghijklm…"]
    assert render.plain_rows(df, ["rank", "name"], {"rank": ["3", "12"],
                             "name": ["ab", "abcdefghijklmnopq"]}, {"rank": 4, "name": 14},
                             20) is None  # 4 + 3 + 14 = 21 columns do not fit in 20
