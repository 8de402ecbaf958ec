"""The dashboard's views, one module per view (Dash Pages), in navigation order."""

from overlapscope.app.dashboard.pages import (
    compare,
    overlap,
    pipeline,
    runs,
    timeline,
    traffic,
    warps,
)

PAGES = [runs, timeline, overlap, pipeline, traffic, warps, compare]
