"""Pieces every view shares: resolving the selected run, or saying why there is none."""

from __future__ import annotations

from typing import Any

from dash import html

from overlapscope.app.dashboard.components.tables import message
from overlapscope.app.dashboard.state import DashboardState, RunEntry


def selected(state: DashboardState, rid: str | None) -> tuple[RunEntry | None, Any]:
    """(entry, None) for a ready run, else (None, a message saying why not)."""
    entry = state.get(rid)
    if entry is None:
        if state.pending():
            return None, message("Loading runs… the page fills in when the first one is ready.",
                                 "info", id="view-loading")
        return None, message("No run is open yet: open one on the Runs page.", "info",
                             id="view-empty")
    if entry.status == "error":
        return None, message(f"{entry.label} could not be analyzed: {entry.error}", "error",
                             id="view-error")
    if not entry.ready:
        return None, message(f"Loading {entry.progress_text()}…", "info", id="view-loading")
    return entry, None


def section(title: str, *children: Any, **kw: Any) -> html.Section:
    """A titled block of a view."""
    return html.Section([html.H3(title), *children], className="section", **kw)


def rank_options(ranks: list[int], all_label: str | None = "all ranks") -> list[dict[str, Any]]:
    """Dropdown options for ranks (with an 'all ranks' entry of value -1)."""
    opts = [{"label": all_label, "value": -1}] if all_label else []
    return opts + [{"label": f"rank {r}", "value": int(r)} for r in ranks]
