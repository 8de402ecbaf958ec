"""Bottleneck diagnosis in words for a warp-specialized dispatch.

Per rank, one *primary* finding plus the evidence rules below that fired:

1. **Link bound** if a link ran at >= ``link_frac`` of its limit while in use *and*
   its bytes at that limit fill >= ``link_span_frac`` of the kernel span: more warps
   cannot help; cut the bytes instead. (A link saturated only during a short phase
   is reported as evidence, not as the bottleneck: the kernel's end is set by
   whatever works during the rest of the span.)
2. Otherwise the **busiest data-path role** (send / forward / receive stage) by
   ``busy_of_span_frac`` - the share of the kernel span its warps spend working -
   is the bottleneck: the kernel cannot end before that work is done, and the
   other roles wait on it. Coordinators are excluded: they mostly wait by design.
3. If even the busiest role works less than ``saturated_frac`` of the span, no
   role is saturated: the roles mostly wait on each other (handshake latency),
   and the chunk size / ring depth is the knob.

Evidence rules (fraction of the role's lifetime, threshold ``wait_frac``):
senders waiting for ring space (``*head*``) -> downstream bound; forwarders
waiting for RDMA data (``*tail*``) -> IB or sender bound; forwarders waiting for
NVL ring space -> receivers bound; receivers waiting for data -> upstream bound.
When both sides of one ring wait on it the ring ping-pongs: try another chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

DIAGNOSIS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "primary": pl.Boolean,
    "kind": pl.Utf8,  # "link" | "role" | "pipeline" | "rule"
    "rule": pl.Utf8,
    "subject": pl.Utf8,  # role name or link
    "value_frac": pl.Float64,
    "text": pl.Utf8,
    "remedy": pl.Utf8,
}

_NICE = {
    "rdma_sender": "RDMA senders",
    "sender_coordinator": "the sender coordinator",
    "forwarder": "forwarders",
    "forwarder_coordinator": "the forwarder coordinator",
    "nvl_receiver": "NVL receivers",
    "ib": "IB",
    "nvl": "NVLink",
}


def nice(name: str, *, plural: bool = True) -> str:
    """Readable name of a role or link for the diagnosis text ("NVL receivers")."""
    text = _NICE.get(name, name.replace("_", " ") + "s")
    return text if plural or not text.endswith("s") else text[:-1].removeprefix("the ")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds (fractions)."""

    wait_frac: float = 0.20
    link_frac: float = 0.85
    link_span_frac: float = 0.70
    saturated_frac: float = 0.50


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _wait_sum(row: dict, word: str) -> float:
    """Sum of the role's wait fractions whose state name contains ``word``."""
    return sum(v or 0.0 for k, v in row.items()
               if k.endswith("_frac") and k.startswith("wait_") and word in k)


def _rules(rank: int, by_stage: dict[str, dict], links: list[dict], th: Thresholds
           ) -> list[dict]:
    """The evidence rules that fired for one rank."""
    found: list[dict] = []

    def add(rule: str, subject: str, value: float, text: str, remedy: str) -> None:
        found.append(dict(rank=rank, primary=False, kind="rule", rule=rule, subject=subject,
                          value_frac=value, text=text, remedy=remedy))

    send, fwd, recv = (by_stage.get(s) for s in ("send", "forward", "receive"))
    if send and (v := _wait_sum(send, "head")) >= th.wait_frac:
        add("senders_wait_space", send["role"], v,
            f"{nice(send['role'])} wait for RDMA ring space {_pct(v)} of their lifetime: "
            "downstream bound (forwarders, NVLink or a ring too small).",
            "speed up the downstream roles or give the ring more slots")
    if fwd and (v := _wait_sum(fwd, "tail")) >= th.wait_frac:
        add("forwarders_wait_data", fwd["role"], v,
            f"{nice(fwd['role'])} wait for RDMA data {_pct(v)} of their lifetime: "
            "IB or sender bound.",
            "more sender warps, or fewer IB bytes (a lower node limit)")
    if fwd and (v := _wait_sum(fwd, "head")) >= th.wait_frac:
        add("forwarders_wait_space", fwd["role"], v,
            f"{nice(fwd['role'])} wait for NVL ring space {_pct(v)} of their lifetime: "
            "NVL receivers bound.",
            "more receiver warps per channel")
    if recv and (v := _wait_sum(recv, "tail")) >= th.wait_frac:
        add("receivers_wait_data", recv["role"], v,
            f"{nice(recv['role'])} wait for data {_pct(v)} of their lifetime: upstream bound.",
            "speed up forwarders / senders (more warps) rather than receivers")
    for lk in links:
        if (lk.get("util_frac") or 0.0) >= th.link_frac and (
                lk.get("span_util_frac") or 0.0) < th.link_span_frac:
            add("link_hot_while_used", lk["link"], lk["util_frac"],
                f"The {nice(lk['link'])} link runs at {_pct(lk['util_frac'])} of its limit while "
                f"in use, but that is only {_pct(lk['span_util_frac'])} of the kernel span.",
                "fewer bytes on it would shorten that phase, not the kernel")
    frac = {f["rule"]: f["value_frac"] for f in found}
    for ring, pair in (("RDMA", ("senders_wait_space", "forwarders_wait_data")),
                       ("NVL", ("forwarders_wait_space", "receivers_wait_data"))):
        if all(r in frac for r in pair):
            add("ring_ping_pong", ring.lower(), min(frac[r] for r in pair),
                f"Both sides of the {ring} ring wait on it: producer and consumer take turns "
                "instead of overlapping.",
                "try another chunk size (smaller chunks pipeline finer) or more ring slots")
    return found


def _primary(rank: int, by_stage: dict[str, dict], links: list[dict], n_channels: int,
             th: Thresholds) -> dict:
    hot = [lk for lk in links if (lk.get("util_frac") or 0.0) >= th.link_frac
           and (lk.get("span_util_frac") or 0.0) >= th.link_span_frac]
    if hot:
        lk = max(hot, key=lambda r: r["util_frac"])
        remedy = ("cut IB bytes: a lower node limit (fewer remote nodes per token); more warps "
                  "will not help" if lk["link"] == "ib" else
                  "cut NVLink bytes (fewer destination GPUs per token, expert placement); more "
                  "warps will not help")
        return dict(rank=rank, primary=True, kind="link", rule="link_near_limit",
                    subject=lk["link"], value_frac=lk["util_frac"],
                    text=(f"Bottleneck: the {nice(lk['link'])} link, "
                          f"{lk['achieved_gbps']:.1f} of {lk['limit_gbps']:.0f} GB/s "
                          f"({_pct(lk['util_frac'])}) while in use, busy "
                          f"{_pct(lk['span_util_frac'])} of the kernel span."),
                    remedy=remedy)
    ranked = sorted(by_stage.values(), key=lambda r: r["busy_of_span_frac"] or 0.0, reverse=True)
    if not ranked:
        return dict(rank=rank, primary=True, kind="pipeline", rule="no_data_roles", subject=None,
                    value_frac=None, text="No sender / forwarder / receiver roles in the trace.",
                    remedy="")
    top = ranked[0]
    others = ", ".join(f"{nice(r['role'])} {_pct(r['busy_of_span_frac'])}" for r in ranked[1:])
    share = f"busy {_pct(top['busy_of_span_frac'])} of the kernel span" + (
        f" (vs {others})" if others else "")
    if top["busy_of_span_frac"] < th.saturated_frac:
        return dict(rank=rank, primary=True, kind="pipeline", rule="nothing_saturated",
                    subject=top["role"], value_frac=top["busy_of_span_frac"],
                    text=(f"No role is saturated: the busiest, {nice(top['role'])}, is {share}; "
                          "the roles mostly wait on each other."),
                    remedy="try another chunk size or more ring slots")
    per_ch = max(1, round(top["n_warps"] / max(n_channels, 1)))
    role = nice(top["role"], plural=False)
    remedy = (f"more {role} warps per channel ({per_ch} -> {2 * per_ch}) "
              f"or more channels ({n_channels} -> {2 * n_channels})")
    ib = next((lk for lk in links if lk["link"] == "ib"), None)
    if top["stage"] == "send" and ib and (ib.get("util_frac") or 0.0) >= 0.5:
        remedy += "; a lower node limit also cuts their IB bytes"
    return dict(rank=rank, primary=True, kind="role", rule="busiest_role", subject=top["role"],
                value_frac=top["busy_of_span_frac"],
                text=f"Bottleneck: {nice(top['role'])}, {share}.", remedy=remedy)


def diagnose(roles: pl.DataFrame, links: pl.DataFrame, n_channels: dict[int, int],
             thresholds: Thresholds | None = None) -> pl.DataFrame:
    """Diagnosis rows (``DIAGNOSIS_SCHEMA``) per rank from ``role_summary`` (per role,
    not per channel) and ``link_bandwidth`` frames; ``n_channels`` maps rank -> channels."""
    th = thresholds or Thresholds()
    rows: list[dict] = []
    for rank in sorted(roles["rank"].unique().to_list()):
        by_stage: dict[str, dict] = {}
        for row in roles.filter(pl.col("rank") == rank).iter_rows(named=True):
            if row["stage"] in ("send", "forward", "receive"):
                prev = by_stage.get(row["stage"])
                if prev is None or row["n_warps"] > prev["n_warps"]:
                    by_stage[row["stage"]] = row
        lk = links.filter(pl.col("rank") == rank).to_dicts()
        rows.append(_primary(rank, by_stage, lk, n_channels.get(rank, 1), th))
        rows.extend(_rules(rank, by_stage, lk, th))
    return pl.DataFrame(rows, schema=DIAGNOSIS_SCHEMA)


def diagnosis_text(diagnosis: pl.DataFrame, rank: int | None = None) -> str:
    """One paragraph per rank: the primary finding, its remedy, then the evidence rules."""
    parts = []
    ranks = sorted(diagnosis["rank"].unique().to_list()) if rank is None else [rank]
    for r in ranks:
        rows = diagnosis.filter(pl.col("rank") == r).to_dicts()
        head = [x for x in rows if x["primary"]]
        lines = [f"rank {r}: " + " ".join(f"{x['text']} Remedy: {x['remedy']}." for x in head)]
        lines += [f"  - {x['text']}" for x in rows if not x["primary"]]
        parts.append("\n".join(lines))
    return "\n".join(parts)
