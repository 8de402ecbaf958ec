"""The --fail-if grammar: what parses, to what, and the errors that name the problem."""

from __future__ import annotations

import pytest

from overlapscope.analyzers.gates import GateError, parse_gate, parse_gates


def test_absolute_relative_and_pp() -> None:
    g = parse_gate("overlap_ratio < 0.9")
    assert (g.metric, g.op, g.kind, g.threshold, g.level) == (
        "overlap_ratio", "<", "absolute", 0.9, "run")
    assert g.holds(0.85) and not g.holds(0.9)
    g = parse_gate("exposed_comm_ms>+5%")
    assert (g.kind, g.threshold, g.compared) == ("relative", pytest.approx(0.05), True)
    assert g.describe_threshold() == "+5%"
    g = parse_gate("bubble_fraction >= +2pp")
    assert (g.kind, g.threshold, g.op) == ("pp", pytest.approx(0.02), ">=")
    g = parse_gate("overlap_ratio < -1.5%")
    assert g.threshold == pytest.approx(-0.015)
    assert parse_gate("span_ms <= 1e3").threshold == 1000.0


def test_selectors() -> None:
    g = parse_gate("overlap_ratio[phase=dispatch(B)] < 0.95")
    assert g.selectors == {"phase": "dispatch(B)"} and g.level == "phase" and not g.per_rank
    g = parse_gate("exposed_comm_ms[rank=*] > +10%")
    assert g.selectors == {"rank": "*"} and g.level == "rank"
    g = parse_gate("overlap_ratio[rank=3][phase=dualpipe:F:mb=*:stage=*] < 0.5")
    assert g.selectors == {"rank": "3", "phase": "dualpipe:F:mb=*:stage=*"}
    assert g.level == "phase" and g.per_rank
    g = parse_gate('comm_busy_ms[kernel="void k<a, b>[x]"] > +1%')
    assert g.selectors == {"kernel": "void k<a, b>[x]"} and g.level == "kernel"


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("overlap < 0.9", "unknown metric 'overlap'"),
        ("overlap_ratio 0.9", "expected an operator"),
        ("overlap_ratio <", "missing value"),
        ("exposed_comm_ms > 5%", "needs a sign"),
        ("exposed_comm_ms > +2pp", "pp applies to fraction metrics"),
        ("overlap_ratio > fast", "bad value 'fast'"),
        ("overlap_ratio[node=1] < 0.9", "unknown selector 'node'"),
        ("overlap_ratio[rank=x] < 0.9", "rank must be a number"),
        ("overlap_ratio[rank=1 < 0.9", "unclosed"),
        ("overlap_ratio[rank] < 0.9", "[KEY=VALUE]"),
        ("bubble_fraction[phase=attn(F)] > +1pp", "not defined per phase"),
        ("overlap_ratio[phase=a][kernel=b] < 1", "not both"),
        ("< 0.9", "expected METRIC"),
    ],
)
def test_errors_name_the_problem(expr: str, needle: str) -> None:
    with pytest.raises(GateError) as exc:
        parse_gate(expr)
    assert needle in str(exc.value)


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(GateError, match="known: overlap_ratio, exposed_comm_ms"):
        parse_gates(["overlap_ratio < 1", "nonsense > 2"])
