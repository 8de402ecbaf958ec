"""pid/tid columns as text: numbers, labels, nulls and numbers too large for int64 (by hand)."""

from __future__ import annotations

from overlapscope.analyzers.kineto.columns import _ids_as_text


def test_numbers_only() -> None:
    assert _ids_as_text([3, -1, None, 3]).to_list() == ["3", "-1", None, "3"]


def test_labels_among_numbers() -> None:
    got = _ids_as_text([1, "Spans", None, 1, "1", 2**70])
    assert got.to_list() == ["1", "Spans", None, "1", "1", "1180591620717411303424"]
    assert str(got.dtype) == "String"


def test_number_beyond_int64() -> None:
    assert _ids_as_text([2**63, 5]).to_list() == ["9223372036854775808", "5"]
