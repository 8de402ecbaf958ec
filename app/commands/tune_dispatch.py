"""`overlapscope tune-dispatch`: sweep the dispatch kernel's knobs on the CPU emulator.

Every combination of warps per role (senders, forwarders, receivers), channels
(= SMs), chunk size and node limit runs once on the emulator (timing-only mode,
one source rank) under a *link profile* (``--link-profile``): ``probe`` is fitted
to our H200 probe kernel (~17 GB/s over IB), ``deepep`` stands for DeepEP-class
kernels from their published figures (~45-58 GB/s RDMA, ~155 GB/s NVLink). The
output names the profile its answer is for. The best configurations
are printed with their predicted kernel time and bottleneck; the bottleneck of
the shown rows comes from the warp-role analyzer (analyzers/warps.py) run on the
emulator's per-warp events. With ``--out FILE.html`` every point goes to a
self-contained plotly HTML file (plotly.js embedded: it opens offline). Needs no
torch: the routing is the NumPy twin of the V3 gate. Example::

    overlapscope tune-dispatch --receivers 2,4,8 --forwarders 4,8 --channels 10,20 \\
        --out tune_dispatch.html

Exit status: 0 success, 2 bad arguments.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer
from rich.table import Table

from overlapscope.analyzers.frames import WARP_EVENTS_SCHEMA
from overlapscope.analyzers.warps import analyze_warps
from overlapscope.app import render
from overlapscope.profiler.warps.config import LINK_PROFILES, DispatchConfig
from overlapscope.profiler.warps.dispatch_kernel import emulate_dispatch
from overlapscope.profiler.warps.plan import routed_topk

EXIT_BAD_INPUT = 2
#: A thread block holds at most 1024 threads = 32 warps.
MAX_WARPS_PER_BLOCK = 32

#: Columns of the sweep result frame.
SWEEP_SCHEMA: dict[str, pl.DataType] = {
    "senders": pl.Int64, "forwarders": pl.Int64, "receivers": pl.Int64,
    "channels": pl.Int64, "chunk_tokens": pl.Int64, "max_nodes": pl.Int64,
    "warps_per_block": pl.Int64, "kernel_us": pl.Float64, "busiest_role": pl.Utf8,
    "ib_bytes": pl.Int64, "nvl_bytes": pl.Int64,
}


def _ints(option: str, text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise typer.BadParameter(f"expects comma-separated integers, got {text!r}",
                                 param_hint=option) from None
    if not values or values[0] < 1:
        raise typer.BadParameter(f"expects integers >= 1, got {text!r}", param_hint=option)
    return values


def sweep(
    base: DispatchConfig, grid: dict[str, list[int]], routes: dict[int, np.ndarray], *,
    show_progress: bool,
) -> pl.DataFrame:
    """Emulate every grid point (SWEEP_SCHEMA rows, fastest first).

    ``routes`` caches the top-k expert ids per node limit (filled as needed).
    """
    names = list(grid)
    points = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*grid.values())]
    points = [p for p in points if base.with_(**p).warps_per_block <= MAX_WARPS_PER_BLOCK]
    rows = []
    with render.progress(enabled=show_progress) as bar:
        task = bar.add_task("emulating", total=len(points))
        for p in points:
            cfg = base.with_(**p)
            if cfg.max_nodes not in routes:
                bar.update(task, description=f"routing M={cfg.max_nodes}")
                routes[cfg.max_nodes] = routed_topk(cfg)
            bar.update(task, description="emulating " + " ".join(f"{k}={v}" for k, v in p.items()))
            res = emulate_dispatch(cfg, topk_ids=routes[cfg.max_nodes], move_bytes=False,
                                   record=False)
            rows.append({
                "senders": cfg.senders, "forwarders": cfg.forwarders,
                "receivers": cfg.receivers, "channels": cfg.channels,
                "chunk_tokens": cfg.chunk_tokens, "max_nodes": cfg.max_nodes,
                "warps_per_block": cfg.warps_per_block, "kernel_us": res.kernel_us,
                "busiest_role": res.bottleneck, "ib_bytes": res.link_bytes["ib"],
                "nvl_bytes": res.link_bytes["nvl"],
            })
            bar.advance(task)
    frame = pl.DataFrame(rows, schema=SWEEP_SCHEMA)
    # ties: fewer SMs, then fewer warps (cheaper for the compute kernels alongside)
    return frame.sort("kernel_us", "channels", "warps_per_block")


def diagnose(base: DispatchConfig, row: dict, routes: dict[int, np.ndarray]) -> str:
    """Bottleneck of one configuration by the warp-role analyzer on its events."""
    keys = ("senders", "forwarders", "receivers", "channels", "chunk_tokens", "max_nodes")
    cfg = base.with_(**{k: row[k] for k in keys})
    res = emulate_dispatch(cfg, topk_ids=routes[cfg.max_nodes], move_bytes=False)
    events = res.frame().select(list(WARP_EVENTS_SCHEMA))
    found = analyze_warps(events, ib_gbps=cfg.ib_gbps, nvl_gbps=cfg.nvl_gbps).bottleneck()
    return found or "none"


def plot(frame: pl.DataFrame, path: Path) -> None:
    """All sweep points: predicted time against warps per block, one trace per SM count."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for (chans,), grp in frame.sort("channels").group_by("channels", maintain_order=True):
        text = [
            f"NS={r['senders']} NF={r['forwarders']} NR={r['receivers']} "
            f"K={r['chunk_tokens']} M={r['max_nodes']}<br>busiest: {r['busiest_role']}"
            for r in grp.iter_rows(named=True)
        ]
        fig.add_trace(go.Scatter(
            x=grp["warps_per_block"].to_list(), y=grp["kernel_us"].to_list(), mode="markers",
            name=f"{chans} channels (SMs)", text=text,
            hovertemplate="%{text}<br>%{y:.1f} us<extra></extra>",
        ))
    fig.update_layout(
        title="Emulated two-hop dispatch: predicted kernel time per configuration",
        xaxis_title="warps per block", yaxis_title="predicted kernel time (us)",
    )
    # plotly.js embedded (~4 MB) so the file works offline and when mailed around
    fig.write_html(path, include_plotlyjs=True)


def tune_dispatch(
    senders: Annotated[str, typer.Option(help="RDMA sender warps per channel (list)")] = "1,2,4",
    forwarders: Annotated[str, typer.Option(help="forwarder warps per channel (list)")] = "4,8",
    receivers: Annotated[str, typer.Option(help="NVL receiver warps per channel (list)")] = "2,4,8",
    channels: Annotated[str, typer.Option(help="channels = SMs (list)")] = "10,20",
    chunk: Annotated[str, typer.Option(help="tokens per chunk (list)")] = "16,32",
    node_limit: Annotated[str, typer.Option(help="max nodes per token M (list)")] = "4",
    tokens: Annotated[int, typer.Option(min=1, help="tokens dispatched by one rank")] = 4096,
    nodes: Annotated[int, typer.Option(min=1)] = 8,
    gpus_per_node: Annotated[int, typer.Option(min=1)] = 8,
    experts: Annotated[int, typer.Option(min=1)] = 256,
    top_k: Annotated[int, typer.Option(min=1)] = 8,
    token_bytes: Annotated[int, typer.Option(min=1, help="bytes per token slot")] = 7232,
    link_profile: Annotated[str, typer.Option(
        help="link speeds and per-warp costs: probe (our H200 probe kernel, ~17 GB/s IB) "
             "or deepep (DeepEP-class from published figures, ~45-58 GB/s RDMA)",
    )] = "probe",
    ib_gbps: Annotated[float | None, typer.Option(
        min=0.0, help="IB GB/s (0 = unlimited; default: the profile's)")] = None,
    nvl_gbps: Annotated[float | None, typer.Option(
        min=0.0, help="NVLink GB/s (0 = unlimited; default: the profile's)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random gate scores")] = 0,
    top: Annotated[int, typer.Option(min=1, help="configurations to show")] = 10,
    out: Annotated[Path | None, typer.Option(
        "--out", "--plot", dir_okay=False,
        help="write the interactive plot of every point to this HTML file (works offline)",
    )] = None,
    csv: Annotated[Path | None, typer.Option(help="write every sweep point as CSV")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Sweep warps per role, channels, chunk size and node limit on the dispatch emulator."""
    profile = LINK_PROFILES.get(link_profile)
    if profile is None:
        render.error(f"--link-profile: unknown profile {link_profile!r}; choose from "
                     + ", ".join(LINK_PROFILES))
        raise typer.Exit(EXIT_BAD_INPUT)
    ib = profile.ib_gbps if ib_gbps is None else ib_gbps
    nvl = profile.nvl_gbps if nvl_gbps is None else nvl_gbps
    grid = {
        "senders": _ints("--senders", senders), "forwarders": _ints("--forwarders", forwarders),
        "receivers": _ints("--receivers", receivers), "channels": _ints("--channels", channels),
        "chunk_tokens": _ints("--chunk", chunk), "max_nodes": _ints("--node-limit", node_limit),
    }
    try:
        base = DispatchConfig(tokens=tokens, nodes=nodes, gpus_per_node=gpus_per_node,
                              experts=experts, top_k=top_k, token_bytes=token_bytes,
                              ib_gbps=ib, nvl_gbps=nvl, seed=seed, cost=profile.cost,
                              **{name: values[0] for name, values in grid.items()})
        base.validate()
        for name, values in grid.items():  # fail fast on an impossible value
            base.with_(**{name: max(values)})
        routes: dict[int, np.ndarray] = {}
        frame = sweep(base, grid, routes, show_progress=progress)
    except ValueError as exc:
        render.error(f"bad configuration: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if frame.is_empty():
        render.error(f"no configuration fits in {MAX_WARPS_PER_BLOCK} warps per block")
        raise typer.Exit(EXIT_BAD_INPUT)
    best = frame.head(top)
    found = [diagnose(base, r, routes) for r in best.iter_rows(named=True)]
    best = best.with_columns(pl.Series("bottleneck", found))
    table = Table(title=f"Best of {frame.height} dispatch configurations "
                        f"({tokens} tokens, EP{nodes * gpus_per_node}, emulated, "
                        f"link profile {profile.name})")
    for col in ("NS", "NF", "NR", "SMs", "K", "M", "warps", "time us", "vs best"):
        table.add_column(col, justify="right")
    table.add_column("bottleneck", min_width=12, overflow="fold")
    t0 = best["kernel_us"][0]
    for r in best.iter_rows(named=True):
        table.add_row(
            str(r["senders"]), str(r["forwarders"]), str(r["receivers"]), str(r["channels"]),
            str(r["chunk_tokens"]), str(r["max_nodes"]), str(r["warps_per_block"]),
            f"{r['kernel_us']:,.1f}", f"{r['kernel_us'] / t0:.2f}x", r["bottleneck"],
        )
    render.out.print(table)
    speeds = "" if (ib, nvl) == (profile.ib_gbps, profile.nvl_gbps) else (
        f"; links overridden to IB {ib:g} / NVLink {nvl:g} GB/s")
    render.out.print(f"link profile: {profile.describe()}{speeds}. These answers are for this "
                     "profile; try --link-profile " + ("deepep" if profile.name == "probe"
                                                       else "probe") + " for the other.",
                     soft_wrap=True)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            plot(frame, out)
        except OSError as exc:
            render.error(f"cannot write the plot to {out}: {exc.strerror or exc}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        render.out.print(f"plot: {out}", soft_wrap=True)
    else:
        render.out.print("plot: not written (add --out FILE.html for the interactive plot)")
    if csv is not None:
        frame.with_columns(pl.lit(profile.name).alias("link_profile")).write_csv(csv)
        render.out.print(f"all points: {csv}")


def register(app: typer.Typer) -> None:
    """Add ``tune-dispatch`` to the CLI."""
    app.command("tune-dispatch")(tune_dispatch)
