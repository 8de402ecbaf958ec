"""Mann-Whitney U and the bootstrap interval against hand-computed values (and scipy)."""

from __future__ import annotations

import pytest

from overlapscope.analyzers.stats import (
    bootstrap_median_diff,
    mann_whitney_u,
    significance,
)


def test_exact_u_hand_computed() -> None:
    # a entirely below b: U_a = 0; P(U <= 0) = 1 / C(6, 3) = 1/20, two-sided 0.1
    t = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert (t.u, t.method) == (0.0, "exact")
    assert t.p_value == pytest.approx(0.1)
    # a = {1, 4, 5} ranks 1, 4, 5: U_a = 10 - 6 = 4. Counts of U for (3, 3):
    # 1 1 2 3 3 3 3 2 1 1 (sum 20); P(U <= 4) = 10/20, P(U >= 4) = 13/20 -> p = 1
    t = mann_whitney_u([1, 4, 5], [2, 3, 6])
    assert t.u == 4.0 and t.p_value == pytest.approx(1.0)
    # 5 vs 5 fully separated: 2 / C(10, 5) = 2/252
    assert mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]).p_value == pytest.approx(2 / 252)
    assert mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]).u == 25.0


def test_ties_use_the_normal_approximation_hand_computed() -> None:
    # a = 5 x 10, b = 5 x 20: U_a = 0, tie term (2 * (125 - 5)) / (10 * 9) = 8/3,
    # var = 25/12 * (11 - 8/3) = 17.361; z = (25 - 12.5 - 0.5) / 4.1667 = 2.88 -> p = 0.00397
    t = mann_whitney_u([10] * 5, [20] * 5)
    assert t.method == "asymptotic" and t.u == 0.0
    assert t.p_value == pytest.approx(0.003975, abs=2e-5)
    assert mann_whitney_u([3, 3, 3], [3, 3, 3]).p_value == 1.0


def test_agrees_with_scipy() -> None:
    import scipy.stats as scipy_stats  # in the dev extra: never skipped
    cases = [
        ([1.2, 3.4, 2.2, 5.0, 4.1, 0.3], [2.5, 6.1, 7.7, 3.9, 8.8]),
        ([10, 11, 12, 13, 14, 15, 16], [12.5, 17, 18, 19, 20, 21, 22]),
        ([1, 2, 2, 3, 4, 4, 5], [2, 3, 3, 5, 6, 6, 7, 8]),  # ties
        (list(range(60)), [x + 7.5 for x in range(55)]),  # large: asymptotic
    ]
    for a, b in cases:
        mine = mann_whitney_u(a, b)
        ref = scipy_stats.mannwhitneyu(a, b, alternative="two-sided",
                                       method="exact" if mine.method == "exact" else "asymptotic")
        assert mine.u == pytest.approx(ref.statistic)
        assert mine.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_bootstrap_is_deterministic_and_brackets_the_difference() -> None:
    a, b = [10.0, 11.0, 12.0], [20.0, 21.0, 19.5]
    one, two = bootstrap_median_diff(a, b), bootstrap_median_diff(a, b)
    assert one == two
    assert one.diff == pytest.approx(9.0)
    assert 0 < one.low <= one.diff <= one.high
    # bounds are differences of resampled medians: within [min(b)-max(a), max(b)-min(a)]
    assert one.low >= 19.5 - 12.0 and one.high <= 21.0 - 10.0
    overlap = bootstrap_median_diff([1.0, 5.0, 3.0], [2.0, 4.0, 3.5])
    assert overlap.low < 0 < overlap.high


def test_significance_picks_the_method() -> None:
    assert significance([1.0], [2.0]).significant is None
    s = significance([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert s.method == "mann-whitney" and s.significant and "p=0.00794" in s.detail
    s = significance([1, 2, 3, 4], [2, 3, 4, 5])
    assert s.method == "bootstrap" and s.significant is False
    assert significance([1, 2, 3], [10, 11, 12]).significant is True
    with pytest.raises(ValueError):
        mann_whitney_u([], [1.0])
