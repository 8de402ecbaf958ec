"""overlapscope analyzers: Kineto traces in, polars frames and Reports out.

>>> from overlapscope.analyzers import analyze           # doctest: +SKIP
>>> result = analyze("runs/demo")                       # a run directory or trace files
>>> report = result[0]
>>> report.tables["summary"]                             # one row per GPU (polars)
>>> report.headline()["overlap_ratio"]                   # the declared headline metrics

``analyze`` is the batch API (many paths, failure policy, workers, progress);
``TABLES`` and ``METRICS`` declare every table and headline metric.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overlapscope.analyzers.batch import BatchResult, Progress, RunResult, analyze
    from overlapscope.analyzers.errors import TraceError, WindowError
    from overlapscope.analyzers.options import ReportOptions
    from overlapscope.analyzers.report import (
        METRICS,
        TABLES,
        Metric,
        Report,
        TableSpec,
        build_report,
    )

#: Public name -> module defining it. Imported on first use (PEP 562), so importing one
#: light submodule (the CLI reopening a cached Report) does not import the analyses.
_EXPORTS = {
    "BatchResult": "batch", "Progress": "batch", "RunResult": "batch", "analyze": "batch",
    "TraceError": "errors", "WindowError": "errors",
    "ReportOptions": "options",
    "METRICS": "report", "TABLES": "report", "Metric": "report", "Report": "report",
    "TableSpec": "report", "build_report": "report",
}

__all__ = [
    "METRICS",
    "TABLES",
    "BatchResult",
    "Metric",
    "Progress",
    "Report",
    "ReportOptions",
    "RunResult",
    "TableSpec",
    "TraceError",
    "WindowError",
    "analyze",
    "build_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # `analyzers.batch` without importing it first still works
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
