"""ReportOptions: how to analyze a run.

Its own module, free of heavy imports, so the CLI can build options and the Report
cache key without importing the analyses (a reopened run needs none of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overlapscope.analyzers.classify import RuleSet


@dataclass(frozen=True)
class ReportOptions:
    """How to analyze a run (picklable: sent to worker processes and Ray tasks).

    ``window``: regex of the annotation bounding the analysis window (None: the
    ``ProfilerStep#N`` annotations, else the whole trace). ``rules_file``: extra
    classification rules (TOML), tried first. ``top``: rows of ``worst_kernels``.
    ``hta_compat``: HTA 0.5.0's rules. ``gpus_per_node``: topology for traces
    without one. ``annotation_detail``: one annotations row per distinct name
    instead of rolling ``mb=3``-style instances up by pattern.
    """

    window: str | None = None
    rules_file: str | None = None
    top: int = 10
    hta_compat: bool = False
    gpus_per_node: int | None = None
    annotation_detail: bool = False
    #: clock alignment of multi-rank runs: "auto" (correct when anchors show a
    #: significant skew or causality violations), "on" (whenever anchors exist), "none".
    align: str = "auto"

    def rules(self) -> RuleSet:
        """The rule set these options select (re-read when the files change)."""
        from overlapscope.analyzers.classify import load_rules

        return load_rules(self.rules_file)
