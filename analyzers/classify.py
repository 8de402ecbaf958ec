"""The one place that decides compute / communication / memory.

Rules live in ``classify_rules.toml`` beside this file (documented there); users
extend them with their own TOML file, tried first. Every analyzer calls
``classify_frames`` (or the two per-frame functions) instead of matching names
itself, so a rule change reaches every metric at once.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.ranges import keys_unique, points_in_intervals, take

DEFAULT_RULES = Path(__file__).with_name("classify_rules.toml")
KINDS = ("comm", "compute", "memory")
#: Settings a rules file may give (``[settings]``), with their defaults.
SETTINGS: dict[str, Any] = {"comm_by_launch": True}
#: Settings that no longer exist, with why (a file still using them is refused).
_REMOVED_SETTINGS = {
    "comm_stream_share": "a stream's comm share never changes kinds any more "
    "(overlap_by_stream reports it as stream_role)",
    "comm_stream_copies": "copies are comm only when launched inside a host comm op",
}
_REGEX_FIELDS = ("func", "qualname", "name")


@dataclass(frozen=True)
class Rule:
    """One classification rule (see classify_rules.toml for the fields)."""

    id: str
    kind: str
    applies_to: str = "gpu"
    comm_type: str | None = None
    func: str | None = None
    qualname: str | None = None
    name: str | None = None
    cat: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    """Ordered rules plus the launch-context setting."""

    rules: tuple[Rule, ...]
    comm_by_launch: bool = True
    sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def host_comm_pattern(self) -> str:
        """One regex matching the host ops that the host comm rules name (see
        ``host_comm_pattern``)."""
        return host_comm_pattern(self.rules)


class RuleError(ValueError):
    """A rules file that cannot be used; the message names the file and the rule."""


def regex_problem(pattern: Any) -> str | None:
    """Why ``pattern`` is not a usable regex (polars/Rust syntax), in one line; None if it is."""
    if not isinstance(pattern, str):
        return f"expected a string, got {type(pattern).__name__}"
    try:  # on a literal: polars compiles no regex for an empty frame
        pl.select(pl.lit("").str.contains(pattern))
    except pl.exceptions.PolarsError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("error:")]
        return (said or lines or [type(exc).__name__])[0]
    return None


def _check_settings(path: Path, settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise RuleError(f"{path}: [settings] must be a table")
    for key, value in settings.items():
        if key in _REMOVED_SETTINGS:
            raise RuleError(f"{path}: setting {key!r} was removed: {_REMOVED_SETTINGS[key]}")
        if key not in SETTINGS:
            raise RuleError(f"{path}: unknown setting {key!r}; known: {', '.join(SETTINGS)}")
        if not isinstance(value, type(SETTINGS[key])):
            raise RuleError(f"{path}: setting {key!r} must be {type(SETTINGS[key]).__name__}")
    return settings


def _parse(path: Path) -> tuple[list[Rule], dict[str, Any]]:
    """Rules and settings of one file; every regex is compiled here, so a bad one is
    reported with its file and rule before any trace is touched."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rules: {exc}") from None
    rules = []
    for i, raw in enumerate(data.get("rule", [])):
        if not isinstance(raw, dict):
            raise RuleError(f"{path}: rule #{i + 1} is not a table")
        rid = str(raw.get("id", f"rule-{i}"))
        kind = raw.get("kind")
        if kind not in KINDS:
            raise RuleError(f"{path}: rule {rid!r} has kind {kind!r}; expected one of {KINDS}")
        applies = raw.get("applies_to", "gpu")
        if applies not in ("gpu", "host"):
            raise RuleError(f"{path}: rule {rid!r} applies_to must be 'gpu' or 'host'")
        if not any(raw.get(k) for k in ("func", "qualname", "name", "cat")):
            raise RuleError(
                f"{path}: rule {rid!r} tests nothing (give func, qualname, name or cat)"
            )
        for key in _REGEX_FIELDS:
            if raw.get(key) is not None and (problem := regex_problem(raw[key])) is not None:
                raise RuleError(f"{path}: rule {rid!r}: {key} {raw[key]!r} is not a valid "
                                f"regex: {problem}")
        rules.append(
            Rule(
                id=rid,
                kind=kind,
                applies_to=applies,
                comm_type=raw.get("comm_type"),
                func=raw.get("func"),
                qualname=raw.get("qualname"),
                name=raw.get("name"),
                cat=tuple(str(c).lower() for c in raw.get("cat", [])),
            )
        )
    return rules, _check_settings(path, data.get("settings", {}))


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, None when it cannot be stat-ed (read errors come later)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def load_rules(extra: str | None = None) -> RuleSet:
    """Default rules, preceded by ``extra`` (a TOML path) or $OVERLAPSCOPE_RULES.

    Parsed sets are cached per (file, mtime, size) of both files, so an edited rules
    file, or a changed $OVERLAPSCOPE_RULES, is read again on the next call.
    """
    extra = extra or os.environ.get("OVERLAPSCOPE_RULES") or None
    extra_stamp = _stamp(Path(extra)) if extra else None
    return _load_rules(extra, extra_stamp, _stamp(DEFAULT_RULES))


@lru_cache(maxsize=16)
def _load_rules(
    extra: str | None, _extra_stamp: tuple[int, int] | None, _base_stamp: tuple[int, int] | None
) -> RuleSet:
    base, settings = _parse(DEFAULT_RULES)
    rules: list[Rule] = []
    sources = [str(DEFAULT_RULES)]
    if extra:
        user, user_settings = _parse(Path(extra))
        rules.extend(user)
        settings = {**settings, **user_settings}
        sources.insert(0, extra)
    rules.extend(base)
    return RuleSet(
        rules=tuple(rules),
        comm_by_launch=bool(settings.get("comm_by_launch", SETTINGS["comm_by_launch"])),
        sources=tuple(sources),
    )


def host_comm_pattern(rules: tuple[Rule, ...] | list[Rule]) -> str:
    """The host comm rules (applies_to "host", kind "comm") as one ``name`` regex.

    The rules file is the only place that says which host ops communicate; this
    joins their ``name`` regexes so that code needing a plain regex (the loader,
    which keeps the arguments of comm ops) reads the same definition.
    """
    names = [r.name for r in rules if r.applies_to == "host" and r.kind == "comm" and r.name]
    return "|".join(f"(?:{n})" for n in names) if names else "$^"


#: Host comm ops as named by the built-in rules file (read once at import).
DEFAULT_HOST_COMM_PATTERN = host_comm_pattern(_parse(DEFAULT_RULES)[0])


def name_parts(name: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(qualified name, own function name) of demangled kernel/op names.

    ``void deep_ep::internode::dispatch<false, 8>(int*)`` ->
    (``deep_ep::internode::dispatch``, ``dispatch``).
    """
    clean = name.str.replace_all(r"\(anonymous namespace\)", "anon", literal=True)
    head = clean.str.extract(r"^([^<(]*)", 1).str.strip_chars()
    qual = head.str.extract(r"(\S+)$", 1).fill_null("")
    func = qual.str.extract(r"([^:]+)$", 1).fill_null("")
    return qual, func


def _rule_expr(rule: Rule, qual: pl.Expr, func: pl.Expr) -> pl.Expr:
    conds = []
    if rule.func:
        conds.append(func.str.contains(rule.func))
    if rule.qualname:
        conds.append(qual.str.contains(rule.qualname))
    if rule.name:
        conds.append(pl.col("name").str.contains(rule.name))
    if rule.cat:
        conds.append(pl.col("cat").is_in(list(rule.cat)))
    expr = conds[0]
    for c in conds[1:]:
        expr = expr & c
    return expr.fill_null(False)


def _apply(df: pl.DataFrame, rules: list[Rule], default_kind: str) -> pl.DataFrame:
    qual, func = name_parts(pl.col("name"))
    kind = pl.lit(default_kind)
    ctype = pl.lit(None, dtype=pl.Utf8)
    rid = pl.lit("default")
    for rule in reversed(rules):  # build the chain so the first rule wins
        cond = _rule_expr(rule, qual, func)
        kind = pl.when(cond).then(pl.lit(rule.kind)).otherwise(kind)
        ctype = pl.when(cond).then(pl.lit(rule.comm_type, dtype=pl.Utf8)).otherwise(ctype)
        rid = pl.when(cond).then(pl.lit(rule.id)).otherwise(rid)
    # Names repeat thousands of times in a trace: decide each distinct (name, cat) once.
    keys = df.select("name", "cat").unique()
    decided = keys.with_columns(kind.alias("kind"), ctype.alias("comm_type"), rid.alias("rule"))
    out = df.drop([c for c in ("kind", "comm_type", "rule") if c in df.columns])
    return out.join(
        decided, on=["name", "cat"], how="left", nulls_equal=True, maintain_order="left"
    )


def classify_activities(activities: pl.DataFrame, rules: RuleSet | None = None) -> pl.DataFrame:
    """Add ``kind``, ``comm_type`` and ``rule`` (the id that decided) by name rules only."""
    rules = rules or load_rules()
    gpu_rules = [r for r in rules.rules if r.applies_to == "gpu"]
    return _apply(activities, gpu_rules, "compute")


def classify_cpu_ops(cpu_ops: pl.DataFrame, rules: RuleSet | None = None) -> pl.DataFrame:
    """Add ``kind``/``comm_type``/``rule`` to host ops (gloo/c10d are comm)."""
    rules = rules or load_rules()
    host_rules = [r for r in rules.rules if r.applies_to == "host"]
    out = _apply(cpu_ops, host_rules, "other")
    # Runtime/driver API calls and python frames are neither compute nor comm work.
    return out.with_columns(
        pl.when(pl.col("rule") == "default")
        .then(pl.lit("other"))
        .otherwise(pl.col("kind"))
        .alias("kind")
    )


def _promote_by_launch(acts: pl.DataFrame, cpu_ops: pl.DataFrame) -> pl.DataFrame:
    """Activities launched inside a host comm op (e.g. NCCL's memcpy) become comm."""
    launches = cpu_ops.filter(pl.col("correlation").is_not_null()).select(
        "rank", "pid", "correlation", pl.col("ts_ns").alias("launch_ns")
    )
    # Row order does not matter below; only duplicated ids need the dedup pass.
    if not keys_unique(launches, ["rank", "correlation"]):
        launches = launches.unique(subset=["rank", "correlation"], keep="first")
    comm_ops = cpu_ops.filter(pl.col("kind") == "comm").select(
        "rank",
        "pid",
        pl.col("ts_ns").alias("c_start"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("c_end"),
        pl.col("name").alias("c_name"),
    )
    if comm_ops.is_empty() or launches.is_empty():
        return acts
    pairs = points_in_intervals(
        launches, comm_ops, by=["rank", "pid"], point="launch_ns", start="c_start", end="c_end"
    )
    hits = (
        pl.concat(
            [
                take(launches, pairs["point_row"]).select("rank", "correlation"),
                take(comm_ops, pairs["interval_row"]).select("c_name"),
            ],
            how="horizontal",
        )
        .group_by("rank", "correlation")
        .agg(pl.col("c_name"))
    )
    names = pl.col("c_name")
    ctype = (
        pl.when(names.list.eval(pl.element().str.starts_with("gloo")).list.any())
        .then(pl.lit("gloo"))
        .when(names.list.eval(pl.element().str.contains("^(nccl|record_param_comms)")).list.any())
        .then(pl.lit("nccl"))
        .otherwise(pl.lit("c10d"))
    )
    out = acts.join(hits, on=["rank", "correlation"], how="left")
    promote = pl.col("c_name").is_not_null() & (pl.col("kind") != "comm")
    return out.with_columns(
        pl.when(promote).then(pl.lit("comm")).otherwise(pl.col("kind")).alias("kind"),
        pl.when(promote).then(ctype).otherwise(pl.col("comm_type")).alias("comm_type"),
        pl.when(promote)
        .then(pl.lit("launched-in-comm-op"))
        .otherwise(pl.col("rule"))
        .alias("rule"),
    ).drop("c_name")


def classify_frames(frames: TraceFrames, rules: RuleSet | None = None) -> TraceFrames:
    """TraceFrames whose activities and cpu_ops carry ``kind``/``comm_type``/``rule``.

    Order: name rules, then launch context (``comm_by_launch``: a copy, memset or
    kernel launched inside a host comm op is comm, rule ``launched-in-comm-op``).
    The stream an activity runs on never changes its kind. Idempotent: frames
    already classified (e.g. by hta_compat_frames) keep their kinds; a frame
    without kinds (host ops of compat frames) is classified.
    """
    acts_done = "kind" in frames.activities.columns
    ops_done = "kind" in frames.cpu_ops.columns
    if acts_done and ops_done:
        return frames
    rules = rules or load_rules()
    ops = frames.cpu_ops if ops_done else classify_cpu_ops(frames.cpu_ops, rules)
    if acts_done:
        return replace(frames, cpu_ops=ops)
    acts = classify_activities(frames.activities, rules)
    if rules.comm_by_launch:
        acts = _promote_by_launch(acts, ops)
    return replace(frames, activities=acts, cpu_ops=ops)
