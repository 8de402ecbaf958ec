"""Regression gates: the ``--fail-if`` grammar, parsed and checked against METRICS.

Grammar (whitespace around the operator is optional)::

    gate     := METRIC selector* OP VALUE
    selector := "[" KEY "=" VAL "]"        KEY: rank | phase | kernel
    OP       := "<" | "<=" | ">" | ">="
    VALUE    := NUMBER                    absolute, in the metric's unit
              | ("+"|"-") NUMBER "%"      relative change against the baseline
              | ("+"|"-") NUMBER "pp"     change in percentage points (fraction metrics)

``VAL`` is ``*`` (every row must pass), an exact name, or a glob (``fnmatch``);
quote it (``[kernel="a]b"]``) when it holds ``]``. Examples::

    overlap_ratio < 0.9
    exposed_comm_ms > +5%
    bubble_fraction > +2pp
    overlap_ratio[phase=dispatch(B)] < 0.95
    exposed_comm_ms[rank=*] > +10%
    overlap_ratio[rank=3][phase=attn(F)] < 0.5

A gate *fails* when its condition holds on some selected row of a compared run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from overlapscope.analyzers.report import METRICS

Kind = Literal["absolute", "relative", "pp"]
Op = Literal["<", "<=", ">", ">="]
SELECTOR_KEYS = ("rank", "phase", "kernel")

#: Metrics defined per phase (annotations table) and per kernel (kernels table).
PHASE_METRICS = ("overlap_ratio", "exposed_comm_ms", "comm_busy_ms", "compute_busy_ms")
KERNEL_METRICS = ("overlap_ratio", "exposed_comm_ms", "comm_busy_ms")

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_OP = re.compile(r"\s*(<=|>=|<|>)\s*(.*?)\s*$")
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_ABS = re.compile(rf"^[+-]?{_NUM}$")
_REL = re.compile(rf"^([+-])({_NUM})%$")
_PP = re.compile(rf"^([+-])({_NUM})pp$")


class GateError(ValueError):
    """A ``--fail-if`` expression that cannot be used: bad syntax or unknown metric."""


@dataclass(frozen=True)
class Gate:
    """One parsed gate. ``threshold``: the absolute value (metric unit), the relative
    change as a fraction (``+5%`` -> 0.05) or the pp change as a fraction
    (``+2pp`` -> 0.02). ``selectors``: key -> pattern (``*`` = every row)."""

    text: str
    metric: str
    op: Op
    kind: Kind
    threshold: float
    selectors: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """Where the gate reads its metric: run, rank, phase or kernel."""
        if "phase" in self.selectors:
            return "phase"
        if "kernel" in self.selectors:
            return "kernel"
        return "rank" if "rank" in self.selectors else "run"

    @property
    def per_rank(self) -> bool:
        """True when rows are per rank (a rank selector is present)."""
        return "rank" in self.selectors

    @property
    def compared(self) -> bool:
        """True for gates on the change against the baseline (% or pp)."""
        return self.kind != "absolute"

    def holds(self, x: float) -> bool:
        """Whether the failure condition holds for ``x`` (a value or a change)."""
        t = self.threshold
        return {"<": x < t, "<=": x <= t, ">": x > t, ">=": x >= t}[self.op]

    def describe_threshold(self) -> str:
        """The threshold as written: ``0.9``, ``+5%``, ``+2pp``."""
        if self.kind == "relative":
            return f"{100 * self.threshold:+g}%"
        if self.kind == "pp":
            return f"{100 * self.threshold:+g}pp"
        return f"{self.threshold:g}"


def _selectors(text: str, pos: int, expr: str) -> tuple[dict[str, str], int]:
    sel: dict[str, str] = {}
    while pos < len(text) and text[pos] == "[":
        end, quote, i = -1, None, pos + 1
        while i < len(text):
            c = text[i]
            if quote:
                quote = None if c == quote else quote
            elif c in "\"'":
                quote = c
            elif c == "]":
                end = i
                break
            i += 1
        if end < 0:
            raise GateError(f"bad gate {expr!r}: unclosed '[' at position {pos}")
        body = text[pos + 1 : end]
        if "=" not in body:
            raise GateError(f"bad gate {expr!r}: selector [{body}] must be [KEY=VALUE]")
        key, val = (s.strip() for s in body.split("=", 1))
        if key not in SELECTOR_KEYS:
            raise GateError(f"bad gate {expr!r}: unknown selector {key!r}; "
                            f"known: {', '.join(SELECTOR_KEYS)}")
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        if not val:
            raise GateError(f"bad gate {expr!r}: empty value in selector [{body}]")
        if key in sel:
            raise GateError(f"bad gate {expr!r}: selector {key!r} given twice")
        if key == "rank" and val != "*" and not val.isdigit():
            raise GateError(f"bad gate {expr!r}: rank must be a number or '*', not {val!r}")
        sel[key] = val
        pos = end + 1
    return sel, pos


def parse_gate(expr: str) -> Gate:
    """Parse one ``--fail-if`` expression; raise GateError naming what is wrong."""
    m = _NAME.match(expr)
    if not m:
        raise GateError(f"bad gate {expr!r}: expected METRIC[selectors] OP VALUE, "
                        "e.g. 'overlap_ratio < 0.9'")
    metric = m.group(1)
    if metric not in METRICS:
        raise GateError(f"unknown metric {metric!r} in gate {expr!r}; known: "
                        + ", ".join(METRICS))
    sel, pos = _selectors(expr, m.end(), expr)
    if "phase" in sel and "kernel" in sel:
        raise GateError(f"bad gate {expr!r}: use [phase=...] or [kernel=...], not both")
    om = _OP.match(expr, pos)
    if not om:
        raise GateError(f"bad gate {expr!r}: expected an operator (<, <=, >, >=) after "
                        f"{expr[:pos].strip()!r}")
    op, value = om.group(1), om.group(2)
    if not value:
        raise GateError(f"bad gate {expr!r}: missing value after {op!r}")
    if _ABS.match(value):
        kind: Kind = "absolute"
        threshold = float(value)
    elif rm := _REL.match(value):
        kind, threshold = "relative", float(rm.group(1) + rm.group(2)) / 100.0
    elif pm := _PP.match(value):
        kind, threshold = "pp", float(pm.group(1) + pm.group(2)) / 100.0
    elif value.endswith(("%", "pp")):
        raise GateError(f"bad gate {expr!r}: a change needs a sign: write +{value} or "
                        f"-{value} (relative to the baseline), or a plain number (absolute)")
    else:
        raise GateError(f"bad gate {expr!r}: bad value {value!r}; use a number (0.9), "
                        "a relative change (+5%) or percentage points (+2pp)")
    if kind == "pp" and METRICS[metric].unit != "fraction":
        raise GateError(f"bad gate {expr!r}: pp applies to fraction metrics; "
                        f"{metric} is in {METRICS[metric].unit}")
    gate = Gate(expr.strip(), metric, op, kind, threshold, sel)  # type: ignore[arg-type]
    allowed = {"phase": PHASE_METRICS, "kernel": KERNEL_METRICS}.get(gate.level)
    if allowed is not None and metric not in allowed:
        raise GateError(f"metric {metric!r} is not defined per {gate.level} (gate {expr!r}); "
                        f"per {gate.level}: {', '.join(allowed)}")
    return gate


def parse_gates(exprs: list[str]) -> list[Gate]:
    """Parse every expression (the first bad one raises GateError)."""
    return [parse_gate(e) for e in exprs]
