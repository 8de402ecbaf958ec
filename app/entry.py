"""The ``overlapscope`` console script.

Kept free of heavy imports so that Ctrl-C while the CLI is still importing (polars,
typer, the command modules) also ends with one line "interrupted" and exit status 130.
"""

from __future__ import annotations

import os
import sys

#: polars allocates through its own jemalloc, which by default keeps freed pages for
#: 10 s: decoding a large trace frees and reallocates hundreds of MB of column
#: buffers within that time, so peak RSS would count them twice. Returning them
#: after half a second (a background thread does it) keeps the peak near what is
#: live, at no measurable cost in time (benchmarks/RESULTS.md, issue #13). Read by
#: jemalloc when polars loads, so it is set before anything imports polars; a value
#: the user exported wins. Child processes (decode workers) inherit it.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0"


def main() -> None:
    """Import the CLI and run it; see :func:`overlapscope.app.cli.main`."""
    os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)
    try:
        from overlapscope.app.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    cli_main()
