"""The overlapscope web dashboard (Dash): ``create_app(paths, roots)`` builds it.

Views live in ``pages/`` (one file per view), shared pieces in ``components/``;
callbacks read Reports from the batch API and the declared registry
(``TABLES``, ``METRICS``) and never analyze anything themselves.
"""

from overlapscope.app.dashboard.app import create_app

__all__ = ["create_app"]
