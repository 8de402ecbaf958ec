"""Exact conversion of Chrome-trace microsecond timestamps to integer nanoseconds.

Kineto writes ``ts``/``dur`` as float microseconds with up to three decimals
(nanoseconds). A float64 resolves them (error below half a nanosecond) only
while the value is below 2**43 us (about 100 days since the trace's base time); above that, as in
traces with epoch-scale timestamps, the last digits must be read from the JSON
text itself. ``needs_text_path`` tells the loader when that is the case.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: Below this magnitude a float64 microsecond value is within 0.49 ns of its decimal
#: text (ULP 2**-10 us), so rounding to whole nanoseconds recovers the digits exactly.
EXACT_FLOAT_LIMIT_US = float(2**43)


def us_to_ns(values: np.ndarray) -> np.ndarray:
    """Float microseconds -> int64 nanoseconds, exact for |value| < 2**43 us.

    The integer and fractional parts are converted separately so that the
    multiplication by 1000 does not round away the nanosecond digits.
    """
    values = np.asarray(values, dtype=np.float64)
    whole = np.floor(values)
    frac_ns = np.rint((values - whole) * 1000.0)
    return whole.astype(np.int64) * 1000 + frac_ns.astype(np.int64)


def needs_text_path(values: np.ndarray) -> bool:
    """True when some timestamp is too large for float64 to keep its nanoseconds."""
    if values.size == 0:
        return False
    finite = values[np.isfinite(values)]
    return bool(finite.size) and float(np.max(np.abs(finite))) >= EXACT_FLOAT_LIMIT_US


def decimal_text_us_to_ns(text: pl.Series) -> pl.Series:
    """Decimal text of microseconds (e.g. ``"1795895704494889.248"``) -> exact int64 ns.

    Handles signs, missing fractions and more than three decimals (rounded half
    away from zero); exponent notation falls back to float conversion.
    """
    s = text.cast(pl.Utf8).str.strip_chars()
    frame = pl.DataFrame({"s": s})
    has_exp = pl.col("s").str.contains("[eE]")
    neg = pl.col("s").str.starts_with("-")
    body = pl.col("s").str.strip_chars_start("+-")
    whole = body.str.split(".").list.get(0, null_on_oob=True)
    frac = body.str.split(".").list.get(1, null_on_oob=True).fill_null("")
    frac4 = (frac + pl.lit("0000")).str.slice(0, 4)
    whole_ns = whole.replace("", "0").cast(pl.Int64, strict=False) * 1000
    frac_ns = (frac4.str.slice(0, 3).cast(pl.Int64, strict=False)) + (
        frac4.str.slice(3, 1).cast(pl.Int64, strict=False) >= 5
    ).cast(pl.Int64)
    magnitude = whole_ns + frac_ns
    exact = pl.when(neg).then(-magnitude).otherwise(magnitude)
    via_float = (pl.col("s").cast(pl.Float64, strict=False) * 1000.0).round(0).cast(pl.Int64)
    out = frame.select(pl.when(has_exp).then(via_float).otherwise(exact).alias("ns"))
    return out["ns"]
