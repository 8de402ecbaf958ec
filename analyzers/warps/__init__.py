"""Warp-role analysis of instrumented dispatch kernels (one module per idea).

``analyze_warps`` (in ``analysis``) is the entry point; ``csv`` reads the H200
per-warp CSVs; ``roles``, ``links``, ``rings``, ``health``, ``diagnosis`` and
``align`` each compute one piece.
"""

from overlapscope.analyzers.warps.analysis import *  # noqa: F403
from overlapscope.analyzers.warps.analysis import __all__  # noqa: F401
