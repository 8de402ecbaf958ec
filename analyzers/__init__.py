"""overlapscope analyzers: Kineto traces in, polars frames and Reports out.

>>> from overlapscope.analyzers import analyze           # doctest: +SKIP
>>> result = analyze("runs/demo")                       # a run directory or trace files
>>> report = result[0]
>>> report.tables["summary"]                             # one row per GPU (polars)
>>> report.headline()["overlap_ratio"]                   # the declared headline metrics

``analyze`` is the batch API (many paths, failure policy, workers, progress);
``TABLES`` and ``METRICS`` declare every table and headline metric.
"""

from overlapscope.analyzers.batch import BatchResult, Progress, RunResult, analyze
from overlapscope.analyzers.errors import TraceError, WindowError
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.report import METRICS, TABLES, Metric, Report, TableSpec, build_report

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
