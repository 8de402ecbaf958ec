"""Kineto (Chrome trace) JSON decoding: typed msgspec schema, fast and generic
decode paths, exact µs -> ns conversion, and column building into polars frames."""
