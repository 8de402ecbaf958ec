"""Kineto microsecond floats -> exact integer nanoseconds."""

from __future__ import annotations

import numpy as np
import polars as pl

from overlapscope.analyzers.kineto.timeconv import decimal_text_us_to_ns, needs_text_path, us_to_ns


def test_float_path_keeps_nanoseconds_of_relative_kineto_times() -> None:
    # A real fixture timestamp (us since baseTimeNanoseconds) and its ns digits.
    vals = np.array([5038693762214.94, 5038693763553.857, 0.001, 12.5])
    assert us_to_ns(vals).tolist() == [5038693762214940, 5038693763553857, 1, 12500]
    assert not needs_text_path(vals)


def test_epoch_scale_microseconds_need_the_text() -> None:
    epoch = np.array([1795895704494889.248])
    assert needs_text_path(epoch)
    text = pl.Series(["1795895704494889.248", "-3.5", "7", "1.23456", "2e3", "0.0005"])
    assert decimal_text_us_to_ns(text).to_list() == [
        1795895704494889248, -3500, 7000, 1235, 2_000_000, 1,
    ]
