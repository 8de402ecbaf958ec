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
from overlapscope.analyzers.ranges import points_in_intervals, take

DEFAULT_RULES = Path(__file__).with_name("classify_rules.toml")
KINDS = ("comm", "compute", "memory")
HOST_COMM_LAUNCH = r"^(record_param_comms|nccl:|c10d::|gloo:)"


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
    """Ordered rules plus the launch- and stream-based settings."""

    rules: tuple[Rule, ...]
    comm_by_launch: bool = True
    comm_stream_share: float = 0.5
    comm_stream_copies: bool = True
    sources: tuple[str, ...] = field(default_factory=tuple)


class RuleError(ValueError):
    """A rules file that cannot be used; the message names the file and the rule."""


def _parse(path: Path) -> tuple[list[Rule], dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rules: {exc}") from None
    rules = []
    for i, raw in enumerate(data.get("rule", [])):
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
    return rules, data.get("settings", {})


@lru_cache(maxsize=16)
def load_rules(extra: str | None = None) -> RuleSet:
    """Default rules, preceded by ``extra`` (a TOML path) or $OVERLAPSCOPE_RULES."""
    extra = extra or os.environ.get("OVERLAPSCOPE_RULES") or None
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
        comm_by_launch=bool(settings.get("comm_by_launch", True)),
        comm_stream_share=float(settings.get("comm_stream_share", 0.5)),
        comm_stream_copies=bool(settings.get("comm_stream_copies", True)),
        sources=tuple(sources),
    )


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
    launches = (
        cpu_ops.filter(pl.col("correlation").is_not_null())
        .select("rank", "pid", "correlation", pl.col("ts_ns").alias("launch_ns"))
        .unique(subset=["rank", "correlation"], keep="first")
    )
    comm_ops = cpu_ops.filter(pl.col("name").str.contains(HOST_COMM_LAUNCH)).select(
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


def _mark(acts: pl.DataFrame, promote: pl.Expr, rule_id: str) -> pl.DataFrame:
    promote = promote & (pl.col("kind") != "comm")
    return acts.with_columns(
        pl.when(promote).then(pl.lit("comm")).otherwise(pl.col("kind")).alias("kind"),
        pl.when(promote).then(pl.col("s_type")).otherwise(pl.col("comm_type")).alias("comm_type"),
        pl.when(promote).then(pl.lit(rule_id)).otherwise(pl.col("rule")).alias("rule"),
    )


def _stream_stats(acts: pl.DataFrame) -> pl.DataFrame:
    busy = pl.col("dur_ns").clip(0)
    return acts.group_by("rank", "device", "stream").agg(
        busy.filter(pl.col("kind") == "comm").sum().alias("comm_ns"),
        busy.filter(pl.col("kind") == "compute").sum().alias("compute_ns"),
        busy.sum().alias("busy_ns"),
        pl.col("comm_type").filter(pl.col("kind") == "comm").mode().first().alias("s_type"),
    )


def _promote_comm_streams(acts: pl.DataFrame, share: float, copies: bool) -> pl.DataFrame:
    """Stream rules (BRIEF §4: comm = comm kernels or anything on a stream hosting them).

    1. copies (memcpy) on a stream that carries comm are transport: comm;
    2. on a stream that carries comm, is not the device's main compute stream
       (most compute time) and spends >= ``share`` of its busy time in comm,
       every activity is comm (DeepEP's layout and FP8-cast kernels on its stream).
    """
    if acts.is_empty():
        return acts
    cols = acts.columns
    key = ["rank", "device", "stream"]
    if copies:
        stats = _stream_stats(acts).filter(pl.col("comm_ns") > 0).select(*key, "s_type")
        acts = acts.join(stats, on=key, how="left")
        is_copy = pl.col("cat").is_in(["gpu_memcpy", "memcpy"])
        acts = _mark(acts, pl.col("s_type").is_not_null() & is_copy, "copy-on-comm-stream")
        acts = acts.select(cols)
    if share > 1.0:
        return acts
    stats = _stream_stats(acts)
    main = (
        stats.sort("compute_ns", descending=True)
        .group_by("rank", "device")
        .agg(pl.col("stream").first().alias("main_stream"))
    )
    comm_streams = (
        stats.join(main, on=["rank", "device"], how="left")
        .filter(
            (pl.col("comm_ns") > 0)
            & (pl.col("stream") != pl.col("main_stream"))
            & (pl.col("comm_ns") >= share * pl.col("busy_ns"))
        )
        .select(*key, "s_type")
    )
    acts = acts.join(comm_streams, on=key, how="left")
    return _mark(acts, pl.col("s_type").is_not_null(), "on-comm-stream").select(cols)


def classify_frames(frames: TraceFrames, rules: RuleSet | None = None) -> TraceFrames:
    """TraceFrames whose activities and cpu_ops carry ``kind``/``comm_type``/``rule``.

    Order: name rules, then launch context (``comm_by_launch``), then the
    communication-stream rule (``comm_stream_share``). Idempotent.
    """
    if "kind" in frames.activities.columns:
        return frames
    rules = rules or load_rules()
    acts = classify_activities(frames.activities, rules)
    ops = classify_cpu_ops(frames.cpu_ops, rules)
    if rules.comm_by_launch:
        acts = _promote_by_launch(acts, ops)
    acts = _promote_comm_streams(acts, rules.comm_stream_share, rules.comm_stream_copies)
    return replace(frames, activities=acts, cpu_ops=ops)
