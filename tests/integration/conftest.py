"""Fixtures shared by integration tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gloo_ranks import run_ranks as _run_ranks


@pytest.fixture
def run_ranks() -> Callable:
    """``run_ranks(fn, world, *args, timeout=120)``: spawn gloo ranks, return per-rank results.

    See gloo_ranks.py; ``fn(rank, world, *args)`` must be a module-level function.
    """
    return _run_ranks
