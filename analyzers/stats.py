"""Noise-aware comparison of two samples (e.g. one metric's values per profiler step).

Two tests, both two-sided and deterministic:

- :func:`mann_whitney_u`: the Mann-Whitney U rank test (exact distribution when there
  are no ties and the samples are small, else the normal approximation with tie and
  continuity corrections, as scipy's ``method="asymptotic"``);
- :func:`bootstrap_median_diff`: a percentile bootstrap interval of
  ``median(b) - median(a)`` with a fixed seed, for samples too small for a rank test.

:func:`significance` picks one (rank test when both sides have at least
:data:`MIN_RANK_TEST` values) and says whether the change is significant at ``alpha``.

>>> round(mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]).p_value, 5)
0.00794
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Fewest values per side for the rank test; below it the bootstrap interval is used.
MIN_RANK_TEST = 5
#: Largest sample (per side) for the exact U distribution when there are no ties.
EXACT_MAX = 50
#: Bootstrap resamples and seed (fixed: the same inputs always give the same interval).
BOOT_RESAMPLES = 4000
BOOT_SEED = 20240611


@dataclass(frozen=True)
class UTest:
    """Mann-Whitney U of ``a`` vs ``b``: ``u`` is U of ``a`` (pairs with a > b, ties
    counted 1/2), ``p_value`` two-sided, ``method`` "exact" or "asymptotic"."""

    u: float
    p_value: float
    method: str
    n_a: int
    n_b: int


@dataclass(frozen=True)
class BootInterval:
    """Percentile bootstrap of ``median(b) - median(a)`` (same unit as the samples):
    ``diff`` the observed difference, ``[low, high]`` the (1 - alpha) interval,
    ``p_value`` the two-sided bootstrap tail fraction."""

    diff: float
    low: float
    high: float
    p_value: float
    n_a: int
    n_b: int


@dataclass(frozen=True)
class Significance:
    """Whether ``b`` differs from ``a``: ``significant`` is None when not assessable
    (fewer than 2 values on a side); ``detail`` says how it was decided, in words."""

    significant: bool | None
    p_value: float | None
    method: str
    detail: str
    low: float | None = None
    high: float | None = None


def _midranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n with ties given their mean rank; also the tie group sizes."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    _, starts, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    for s, c in zip(starts, counts, strict=True):
        ranks[order[s : s + c]] = s + (c + 1) / 2.0
    return ranks, counts


@lru_cache(maxsize=256)
def _u_counts(n_a: int, n_b: int) -> tuple[int, ...]:
    """Number of arrangements giving each U = 0..n_a*n_b (no ties), by recursion
    on the largest value: it belongs to ``a`` (adds n_b) or to ``b`` (adds 0)."""
    # f[i][j] = counts for sizes (i, j); built row by row with numpy convolution-free shifts.
    prev = [np.ones(1, dtype=object) for _ in range(n_b + 1)]  # i = 0: U = 0 only
    for i in range(1, n_a + 1):
        cur = [np.ones(1, dtype=object)]  # j = 0: U = 0 only
        for j in range(1, n_b + 1):
            size = i * j + 1
            c = np.zeros(size, dtype=object)
            a_top = prev[j]  # largest is in a: U gains j
            c[j : j + len(a_top)] += a_top
            b_top = cur[j - 1]  # largest is in b: U unchanged
            c[: len(b_top)] += b_top
            cur.append(c)
        prev = cur
    return tuple(int(x) for x in prev[n_b])


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> UTest:
    """Two-sided Mann-Whitney U test of ``a`` vs ``b`` (any unit; only order matters).

    Exact when there are no ties and both sides hold at most :data:`EXACT_MAX`
    values; otherwise the normal approximation with tie correction and a 0.5
    continuity correction. Raises ValueError on an empty side.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n_a, n_b = len(x), len(y)
    if n_a == 0 or n_b == 0:
        raise ValueError("mann_whitney_u needs at least one value on each side")
    ranks, ties = _midranks(np.concatenate([x, y]))
    u_a = float(ranks[:n_a].sum() - n_a * (n_a + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if not has_ties and max(n_a, n_b) <= EXACT_MAX:
        counts = _u_counts(n_a, n_b)
        total = sum(counts)
        k = round(u_a)
        lower = sum(counts[: k + 1])
        upper = sum(counts[k:])
        p = min(1.0, 2.0 * min(lower, upper) / total)
        return UTest(u_a, p, "exact", n_a, n_b)
    n = n_a + n_b
    mu = n_a * n_b / 2.0
    tie_term = float((ties.astype(np.float64) ** 3 - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = n_a * n_b / 12.0 * ((n + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence of a difference
        return UTest(u_a, 1.0, "asymptotic", n_a, n_b)
    z = (max(u_a, n_a * n_b - u_a) - mu - 0.5) / math.sqrt(var)
    p = min(1.0, math.erfc(z / math.sqrt(2.0)))  # 2 * normal survival at z
    return UTest(u_a, p, "asymptotic", n_a, n_b)


def bootstrap_median_diff(
    a: Sequence[float],
    b: Sequence[float],
    *,
    alpha: float = 0.05,
    resamples: int = BOOT_RESAMPLES,
    seed: int = BOOT_SEED,
) -> BootInterval:
    """Percentile bootstrap interval of ``median(b) - median(a)`` (samples' unit).

    Each side is resampled with replacement ``resamples`` times from a generator
    seeded with ``seed``, so the result is a pure function of the inputs.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("bootstrap_median_diff needs at least one value on each side")
    rng = np.random.default_rng(seed)
    mx = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    my = np.median(y[rng.integers(0, len(y), size=(resamples, len(y)))], axis=1)
    d = my - mx
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min(float((d <= 0).mean()), float((d >= 0).mean()))
    return BootInterval(
        float(np.median(y) - np.median(x)), float(low), float(high),
        min(1.0, 2.0 * tail), len(x), len(y),
    )


def significance(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> Significance:
    """Is ``b`` different from ``a`` at level ``alpha``? Rank test with at least
    :data:`MIN_RANK_TEST` values per side, else the bootstrap interval of the
    difference in medians (significant when it excludes 0); None with fewer than
    2 values on a side (noise cannot be judged)."""
    n_a, n_b = len(a), len(b)
    if min(n_a, n_b) < 2:
        return Significance(None, None, "none",
                            f"{n_a} vs {n_b} samples: noise not assessed")
    if min(n_a, n_b) >= MIN_RANK_TEST:
        t = mann_whitney_u(a, b)
        return Significance(t.p_value < alpha, t.p_value, "mann-whitney",
                            f"Mann-Whitney U={t.u:g} ({t.method}), p={t.p_value:.3g}, "
                            f"n={n_a}/{n_b}")
    bi = bootstrap_median_diff(a, b, alpha=alpha)
    sig = bi.low > 0 or bi.high < 0
    return Significance(sig, bi.p_value, "bootstrap",
                        f"bootstrap {100 * (1 - alpha):g}% CI of median diff "
                        f"[{bi.low:.4g}, {bi.high:.4g}], n={n_a}/{n_b}", bi.low, bi.high)
