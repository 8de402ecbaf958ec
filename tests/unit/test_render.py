"""Terminal output: fits 80 columns, never splits a number, keeps small values' precision."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from overlapscope.analyzers import TABLES, build_report
from overlapscope.analyzers.load import load_run
from overlapscope.app import render

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"


def test_small_times_keep_three_significant_digits() -> None:
    assert render.fmt_ms(72_500) == "0.0725"  # 72.5 µs, not 0.073 ms
    assert render.fmt_ms(4_000) == "0.00400"
    assert render.fmt_ms(1_234_567) == "1.235"
    assert render.fmt_ms(0) == "0.000"
    assert render.fmt_bytes(32_768) == "32.8 kB" and render.fmt_bytes(1_100_896) == "1.1 MB"
    assert render.fmt_fraction(0.7241379) == "72.4%" and render.fmt_fraction(0.0004) == "0.04%"


def test_one_header_scheme() -> None:
    assert render.label("span_ns") == "span ms"
    assert render.label("bubble_fraction") == "bubble %"
    assert render.label("busy_of_span_frac") == "busy of span %"
    assert render.label("stream", host=True) == "thread"
    assert render.label("gpu_span_ns", host=True) == "host span ms"


def test_short_kernel_names() -> None:
    name = "void dpsk::ep::internode::dispatch<false, 8, (bool)0>(int4*, float*)"
    assert render.short_name(name) == "dpsk::ep::internode::dispatch<…>(…)"


@pytest.mark.parametrize("run", ["handmade", "cpu/dualpipe", "h200/varsm_rank0.json.gz"])
def test_every_table_fits_80_columns_and_numbers_are_whole(run: str) -> None:
    rep = build_report(load_run(SAMPLES / run))
    buf = io.StringIO()
    console = Console(file=buf, width=80, emoji=False, highlight=False)
    for name, df in rep.tables.items():
        spec = TABLES[name]
        cols = [c for c in spec.display if c in df.columns]
        render.frame_table(df, cols, title=name, console=console)
        text = buf.getvalue()
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, name
        # Every numeric cell printed appears whole on one line (never wrapped mid-digit).
        fitted, _, cells, _ = render.fit_columns(df, cols, 80)
        for col in [c for c in fitted if df.schema[c].is_numeric()]:
            for value in cells[col][:20]:
                if re.fullmatch(r"[-\d.,%]+", value):
                    assert any(value in line for line in lines), (name, col, value)
        buf.seek(0)
        buf.truncate()


def test_cpu_tables_say_thread_not_device() -> None:
    rep = build_report(load_run(SAMPLES / "cpu" / "dualpipe"))
    buf = io.StringIO()
    render.out = Console(file=buf, width=80, emoji=False, highlight=False)
    try:
        render.tables([rep], ["streams"])
    finally:
        render.out = Console(emoji=False, highlight=False)
    text = buf.getvalue()
    assert "thread" in text and "device" not in text.split("streams:")[1]
    assert "6,9" not in text  # thread ids are identifiers, not quantities
