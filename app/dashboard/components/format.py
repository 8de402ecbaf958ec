"""Formatting values for people: units come from the registry (columns and metrics)."""

from __future__ import annotations

import math
from typing import Any

from overlapscope.analyzers.columns import column_meaning
from overlapscope.app import render


def fmt_ns(ns: float | int | None) -> str:
    """A duration in ns as s / ms / µs / ns with 3 significant decimals."""
    if ns is None:
        return "—"
    v = float(ns)
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3f} s"
    if a >= 1e6:
        return f"{v / 1e6:.3f} ms"
    if a >= 1e3:
        return f"{v / 1e3:.3f} µs"
    return f"{v:.0f} ns"


def fmt_bytes(b: float | int | None) -> str:
    """Bytes in decimal units (B, kB, MB, GB, TB)."""
    if b is None:
        return "—"
    v = float(b)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1000:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.2f} {unit}"
        v /= 1000
    return f"{v:.2f} TB"


def fmt_value(value: Any, unit: str = "") -> str:
    """``value`` in ``unit`` (a registry unit: fraction, ms, ns, bytes, ...) as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if unit == "fraction":
        return f"{100 * float(value):.1f} %"
    if unit == "percent":
        return f"{float(value):.1f} %"
    if unit == "ms":
        return f"{float(value):,.3f} ms"
    if unit == "ns":
        return fmt_ns(value)
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "GB/s":
        return f"{float(value):.1f} GB/s"
    if unit == "ratio":
        return f"{float(value):.2f}×"
    if unit in ("count", "SMs"):
        return f"{float(value):,.0f}"
    if isinstance(value, int):
        return f"{value}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def title_of(table: str) -> str:
    """A table's registry name as a heading ("traffic_by_phase" -> "Traffic by phase")."""
    return table.replace("_", " ").capitalize()


def column_header(col: str) -> str:
    """A table column's header, the CLI's: words plus unit ('bubble ms', 'bubble %',
    'IB bytes'), from :func:`overlapscope.app.render.label`."""
    return render.label(col)


def column_tooltip(col: str) -> str:
    """Hover text of a column header: its meaning from the column glossary, then
    the registry name (what ``--tables`` CSV and the Python API call it)."""
    meaning = column_meaning(col)
    return f"{meaning} ({col})" if meaning else col


def fmt_cell(col: str, value: Any) -> str:
    """A table cell in the unit its header names (ns columns in ms, fractions in %,
    bytes with a unit), as the CLI prints it (:func:`overlapscope.app.render.cell`)."""
    return render.cell(col, value)



def fmt_metric_cell(value: Any, unit: str) -> str:
    """A metric in a table whose header already names the unit ('bubble ms',
    'bubble %', 'IB bytes'): the number alone, as the CLI prints it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ms":
        return render.fmt_ms(float(value) * 1e6)
    if unit == "fraction":
        return render.fmt_fraction(float(value))
    if unit == "bytes":
        return render.fmt_bytes(float(value))
    return fmt_value(value, unit)
