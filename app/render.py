"""Terminal rendering of Reports: rich tables, CSV, markdown, errors, progress.

Tables come from the declared registry (``TABLES``): titles, which columns to show
and what each means. Times print in ms (small values keep three significant
digits), fractions in %, bytes with a unit. A table wider than the terminal drops
its lowest-priority columns (and says which) rather than wrapping numbers.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import polars as pl
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Progress

from overlapscope.analyzers.columns import column_meaning, column_unit
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.report import METRICS, TABLES, Report

# No emoji codes (":B:" in "dualpipe:B:mb=1") and no markup in data cells.
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)

#: Headers that read better than the generic rule (which strips the unit suffix).
LABELS = {
    "overlap_ratio": "hidden %",
    "coverage": "hidden %",
    "worst_coverage": "worst %",
    "paired_with": "hidden under",
    "instances": "n",
    "comm_type": "comm type",
    "ib_fraction": "IB %",
    "nvl_bytes": "NVLink bytes",
    "ib_bytes": "IB bytes",
    "dur_ns": "total ms",
    "stream_role": "role",
    "overlap_memory_ns": "under memcpy ms",
    "measured_over_theory": "measured / theory",
    "compute_busy_ns": "compute ms",
    "comm_busy_ns": "comm ms",
    "exposed_comm_ns": "exposed ms",
}
#: Integer columns that are identifiers, printed without thousands separators.
ID_COLUMNS = {"rank", "device", "stream", "src_rank", "dst_rank", "step", "channel", "warp",
              "pos", "mb", "stage", "mb_b", "stage_b", "peer", "pp", "sm"}
#: String columns that may be shortened or wrapped (numbers never are).
TEXT_MIN_WIDTH = 14
#: Columns never dropped for width.
KEEP = {"rank", "device", "name", "src_rank", "step", "role", "subject", "collective"}


def error(message: str) -> None:
    """One-line error on stderr."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def warn(message: str) -> None:
    """One-line warning on stderr."""
    err.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def bad_inputs(errors: Sequence[TraceError]) -> None:
    """The list of inputs that could not be analyzed, one per line."""
    err.print(f"[bold red]{len(errors)} input(s) could not be analyzed:[/]")
    for e in errors:
        err.print(Text.assemble(("  ✗ ", "red"), f"{e.path}: {e.reason}"), soft_wrap=True)


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr (a no-op display when disabled); it is removed
    when done and also when interrupted, so no frozen bar is left behind."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )
    with bar:
        yield bar


# --- cells and headers ---


def _decimals_ms(ms: float) -> int:
    """Three decimals, more for small values so they keep three significant digits."""
    if ms == 0 or abs(ms) >= 1:
        return 3
    return min(9, max(3, 2 - math.floor(math.log10(abs(ms)))))


def fmt_ms(ns: float) -> str:
    """Nanoseconds as milliseconds: 85_000 -> '0.0850', 1_234_567 -> '1.235'."""
    ms = ns / 1e6
    return f"{ms:,.{_decimals_ms(ms)}f}"


def fmt_bytes(n: float) -> str:
    """Bytes with a binary-free SI unit: 32768 -> '32.8 kB', 1_100_896 -> '1.10 MB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if abs(n) / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def fmt_fraction(v: float) -> str:
    """A fraction as percent, one decimal; tiny non-zero values keep two digits."""
    pct = 100 * v
    if pct != 0 and abs(pct) < 0.1:
        return f"{pct:.2g}%"
    return f"{pct:.1f}%"


def cell(col: str, value: object) -> str:
    """One value as the terminal shows it (unit given by the column name)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    unit = column_unit(col)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if unit == "ns":
            return fmt_ms(value)
        if unit == "bytes":
            return fmt_bytes(value)
        if unit == "fraction":
            return fmt_fraction(value)
        if unit == "percent":
            return f"{value:.1f}%"
        if isinstance(value, float):
            return f"{value:,.2f}" if unit in ("GB/s", "ratio") else f"{value:.4g}"
        return str(value) if col in ID_COLUMNS else f"{value:,}"
    return str(value)


#: Headers of a CPU-only trace: threads, not streams; host time, not GPU time.
HOST_LABELS = {
    "stream": "thread",
    "gpu_span_ns": "host span ms",
    "compute_busy_ns": "compute ms",
    "kernels": "ops",
}


def label(col: str, host: bool = False) -> str:
    """Header of a column: words plus unit ('span ms', 'bubble %', 'IB bytes');
    ``host``: the wording of CPU-only traces ('thread', 'host span ms')."""
    if host and col in HOST_LABELS:
        return HOST_LABELS[col]
    if col in LABELS:
        return LABELS[col]
    unit = column_unit(col)
    words = col
    for suffix in ("_ns", "_frac", "_fraction", "_ratio", "_share", "_pct", "_gbps"):
        if words.endswith(suffix):
            words = words[: -len(suffix)]
            break
    words = words.replace("_", " ")
    tail = {"ns": " ms", "fraction": " %", "percent": " %", "GB/s": " GB/s"}.get(unit, "")
    return words + tail


# --- tables ---


def short_name(name: str) -> str:
    """A demangled kernel name without return type, template arguments and parameters:
    ``void dpsk::ep::internode::dispatch<false, 8>(int4*)`` -> ``dpsk::ep::internode::dispatch<…>``.
    """
    text = name[5:] if name.startswith("void ") else name
    out, depth = [], 0
    for ch in text:
        if ch in "<(":
            if depth == 0:
                out.append(ch + "…" + (">" if ch == "<" else ")"))
            depth += 1
        elif ch in ">)" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip() or name


#: Columns holding prose: they wrap at words instead of being shortened.
PROSE = {"text", "remedy"}
#: Longest a shortened text column gets before an ellipsis.
TEXT_MAX_WIDTH = 40


def _natural_width(col: str, cells: list[str], text: bool) -> int:
    head = max(len(label(col)), len(label(col, host=True)))
    return max([head, *(len(c) for c in cells)])


def fit_columns(
    df: pl.DataFrame, columns: Sequence[str], width: int
) -> tuple[list[str], list[str], dict[str, list[str]], dict[str, int]]:
    """(columns shown, columns dropped, formatted cells, width per shown column).

    Numbers keep their full width and never wrap; text columns are shortened with an
    ellipsis down to TEXT_MIN_WIDTH (prose wraps at words); past that, columns are
    dropped from the end of ``columns`` (lowest priority first).
    """
    cells = {c: [cell(c, v) for v in df[c].to_list()] for c in columns}
    text = {c for c in columns if df.schema[c] == pl.Utf8}
    for c in text & {"name", "comm_kernel"}:
        cells[c] = [short_name(v) if "::" in v or v.startswith("void ") else v
                    for v in cells[c]]
    need = {c: _natural_width(c, cells[c], c in text) for c in columns}
    for c in text:
        need[c] = min(need[c], TEXT_MAX_WIDTH)

    def total(cols: list[str], squeeze: bool) -> int:
        w = [min(need[c], TEXT_MIN_WIDTH) if squeeze and c in text else need[c] for c in cols]
        return sum(w) + 3 * len(cols) - 3  # padding 1+1 per column, 1 between columns

    shown = list(columns)
    dropped: list[str] = []
    while total(shown, squeeze=True) > width and len(shown) > 1:
        victim = next((c for c in reversed(shown) if c not in KEEP), None)
        if victim is None:
            break
        shown.remove(victim)
        dropped.insert(0, victim)
    # Give the room left to text columns, in order, up to their natural width.
    widths = {c: (min(need[c], TEXT_MIN_WIDTH) if c in text else need[c]) for c in shown}
    spare = width - (sum(widths.values()) + 3 * len(shown) - 3)
    for c in shown:
        if c in text and spare > 0:
            grow = min(spare, need[c] - widths[c])
            widths[c] += grow
            spare -= grow
    return shown, dropped, cells, widths


#: Cell text the fast row layout handles: printable ASCII and the two one-cell marks
#: we print ("–" for null, "…" for shortened). Anything else (wide characters, tabs,
#: control codes) goes through rich.
_PLAIN = re.compile("[ -~\u2013\u2026]*")


def plain_rows(
    df: pl.DataFrame, shown: Sequence[str], cells: dict[str, list[str]],
    widths: dict[str, int], width: int,
) -> list[str] | None:
    """The body rows of :func:`frame_table`, laid out as rich lays them out, or None
    where rich must do it: columns wider than ``width`` (rich shrinks them), prose
    columns (they wrap) or text that is not plain.

    rich takes ~0.3 ms per cell (most of a reopened run's time); this takes ~1 µs.
    Same layout: text left-justified, numbers right-justified (trailing blanks
    dropped), each cut to its width with "…", columns joined by 3 spaces (padding
    1 + 1 and SIMPLE_HEAD's blank rule; no outer padding, no edge)."""
    if not shown or sum(widths[c] for c in shown) + 3 * len(shown) - 3 > width:
        return None
    columns = []
    for c in shown:
        w = widths[c]
        text = df.schema[c] == pl.Utf8
        if w < 1 or (text and c in PROSE):
            return None
        col = []
        for v in cells[c]:
            if not _PLAIN.fullmatch(v):
                return None
            if not text:
                v = v.rstrip()
            if len(v) > w:
                v = v[: w - 1] + "…"
            col.append(v.ljust(w) if text else v.rjust(w))
        columns.append(col)
    return ["   ".join(row) for row in zip(*columns, strict=True)]


class _Lines:
    """Rows already laid out: printed as they are (no markup, no style)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Segment("\n".join(self.lines) + "\n")


def _table(df: pl.DataFrame, shown: Sequence[str], widths: dict[str, int], host: bool,
           **kwargs: object) -> Table:
    # No vertical rules: columns are aligned by spacing, which reads well piped into logs.
    t = Table(title_justify="left", show_lines=False, pad_edge=False,
              box=box.SIMPLE_HEAD, show_edge=False, caption_justify="left", **kwargs)
    for c in shown:
        if df.schema[c] == pl.Utf8:
            prose = c in PROSE
            t.add_column(label(c, host), overflow="fold" if prose else "ellipsis",
                         no_wrap=not prose, width=widths[c])
        else:
            t.add_column(label(c, host), no_wrap=True, justify="right", width=widths[c])
    return t


def frame_table(
    df: pl.DataFrame,
    columns: Sequence[str],
    *,
    title: str,
    console: Console | None = None,
    caption_columns: bool = True,
    host: bool = False,
) -> list[str]:
    """Print ``df``'s ``columns`` as a rich table that fits the console; returns the
    columns dropped for width. Fraction columns shown get a caption saying what
    they are a fraction of."""
    console = console or out
    shown, dropped, cells, widths = fit_columns(df, columns, console.width)
    caption = None
    if caption_columns:
        ratios = [c for c in shown if column_unit(c) in ("fraction", "ratio")]
        if ratios:
            caption = "; ".join(f"{label(c)} = {column_meaning(c)}" for c in ratios
                                if column_meaning(c))
    rows = plain_rows(df, shown, cells, widths, console.width)
    if rows is None:
        t = _table(df, shown, widths, host, title=title, caption=caption)
        for i in range(df.height):
            t.add_row(*(Text(cells[c][i]) for c in shown))
        console.print(t)
    else:
        # rich prints the title, header and rule (a table without rows) and the
        # caption; the rows between them are laid out here, byte for byte the same.
        console.print(_table(df, shown, widths, host, title=title))
        if rows:
            console.print(_Lines(rows))
        if caption:
            console.print(_table(df, shown, widths, host, caption=caption, show_header=False))
    if dropped:
        console.print(Text(f"  ({console.width} columns hide: {', '.join(dropped)}; "
                           "see --format csv|json)", style="dim"))
    return dropped


def headline_line(rep: Report) -> str:
    """The run's headline metrics that apply, on one line."""
    parts = []
    for name, value in rep.headline().items():
        if value is None:
            continue
        m = METRICS[name]
        if m.unit == "fraction":
            text = fmt_fraction(value)
        elif m.unit == "ms":
            text = fmt_ms(value * 1e6) + " ms"
        elif m.unit == "bytes":
            text = fmt_bytes(value)
        else:
            text = f"{value:.4g}"
        parts.append(f"{name} {text}")
    return " · ".join(parts)


def _facts_lines(rep: Report) -> list[str]:
    f = rep.facts
    kind = {"gpu": "GPU trace", "cpu": "CPU-only trace (host threads stand for streams)"}.get(
        f.get("trace_kind", ""), "no GPU or host activity")
    lines = [f"{f.get('ranks', 0)} rank file(s), {kind}"
             + (f", workload {f['workload']}" if f.get("workload") else "")]
    window = f.get("window")
    if window:
        src = f.get("window_from_annotation")
        how = "" if src is None else (" (annotation found)" if src else
                                      " (not found on every device: whole trace used there)")
        lines.append(f"window: annotations matching {window!r}{how}")
    if f.get("time_axis") == "corrected":
        lines.append("times: ranks' clocks aligned (see the skew table; --align none for raw)")
    if f.get("definition"):
        lines.append(f"overlap: {f['definition']}")
    return lines


def tables(reports: Sequence[Report], wanted: Sequence[str]) -> None:
    """Rich tables, one group per run, then its notes."""
    for rep in reports:
        out.rule(Text(rep.source, style="bold"))
        for line in _facts_lines(rep):
            out.print(Text(line, style="dim"), soft_wrap=False)
        head = headline_line(rep)
        if head:
            out.print(Text("headline: " + head))
        for name in wanted:
            spec = TABLES[name]
            df = rep.tables.get(name)
            if df is None:
                style = "red" if name in rep.failures else "dim"
                out.print(Text(f"{name}: {rep.status(name)}", style=style))
                continue
            host = rep.facts.get("trace_kind") == "cpu"
            # A CPU-only trace has one "device", the host: the column says nothing.
            cols = [c for c in spec.display if c in df.columns and not (host and c == "device")]
            frame_table(df, cols, title=f"{name}: {spec.meaning}", host=host)
        for note in rep.notes:
            out.print(Text.assemble(("note: ", "yellow"), note))


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    nested = [c for c, t in df.schema.items() if isinstance(t, pl.List | pl.Struct)]
    return df.with_columns(pl.col(c).cast(pl.Utf8, strict=False) for c in nested) if nested else df


def csv(reports: Sequence[Report], wanted: Sequence[str]) -> None:
    """CSV of the requested tables (raw units: ns, bytes, fractions), each row tagged
    with ``source`` and ``table``; tables of different shapes as separate blocks."""
    frames = []
    for rep in reports:
        for name in wanted:
            df = rep.tables.get(name)
            if df is not None and df.height:
                frames.append(
                    _flat(df).with_columns(
                        pl.lit(rep.source).alias("source"), pl.lit(name).alias("table")
                    )
                )
    if not frames:
        return
    if len({tuple(f.columns) for f in frames}) == 1:
        sys.stdout.write(pl.concat(frames).write_csv())
        return
    for f in frames:
        sys.stdout.write(f.write_csv() + "\n")


def markdown(reports: Sequence[Report], wanted: Sequence[str]) -> None:
    """GitHub-flavoured markdown: facts, headline, the tables (display columns), notes."""
    for rep in reports:
        sys.stdout.write(f"## {rep.source}\n\n")
        for line in _facts_lines(rep):
            sys.stdout.write(f"- {line}\n")
        head = headline_line(rep)
        if head:
            sys.stdout.write(f"- headline: {head}\n")
        sys.stdout.write("\n")
        for name in wanted:
            spec = TABLES[name]
            df = rep.tables.get(name)
            if df is None:
                sys.stdout.write(f"### {name}\n\n{rep.status(name)}\n\n")
                continue
            cols = [c for c in spec.display if c in df.columns]
            sys.stdout.write(f"### {name}\n\n{spec.meaning}\n\n")
            sys.stdout.write("| " + " | ".join(label(c) for c in cols) + " |\n")
            sys.stdout.write("|" + "---|" * len(cols) + "\n")
            for row in df.select(cols).iter_rows():
                cells = (cell(c, v).replace("|", "\\|") for c, v in zip(cols, row, strict=True))
                sys.stdout.write("| " + " | ".join(cells) + " |\n")
            sys.stdout.write("\n")
        for note in rep.notes:
            sys.stdout.write(f"> note: {note}\n")
        sys.stdout.write("\n")
