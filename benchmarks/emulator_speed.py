"""Speed of the warp-role emulator: one EP64 dispatch (and combine) of 4096 tokens.

Run: ``python benchmarks/emulator_speed.py [--repeat 3] [--no-bytes]``. Prints wall
seconds (best of ``--repeat``, routing excluded), tokens/s, clock steps/s (one
step = one resumption of a warp generator) and recorded warp intervals/s.
Target: <= 2 s per dispatch with bytes moved. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

from overlapscope.profiler.warps.combine_kernel import emulate_combine
from overlapscope.profiler.warps.config import DispatchConfig
from overlapscope.profiler.warps.dispatch_kernel import emulate_dispatch
from overlapscope.profiler.warps.plan import routed_topk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-bytes", action="store_true", help="timing-only mode (ids only)")
    args = ap.parse_args()
    cfg = DispatchConfig()  # the H200 fixture configuration: EP64, 4096 tokens, 7232 B
    t = time.perf_counter()
    topk = routed_topk(cfg)
    route_s = time.perf_counter() - t
    print(f"routing (node-limited top-k, {cfg.tokens} tokens): {route_s:.3f} s")
    for name, fn in (("dispatch", emulate_dispatch), ("combine", emulate_combine)):
        best = None
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = fn(cfg, topk_ids=topk, move_bytes=not args.no_bytes)
            wall = time.perf_counter() - t
            if best is None or wall < best[0]:
                best = (wall, res)
        assert best is not None
        wall, res = best
        print(
            f"{name}: {wall:.3f} s wall, {cfg.tokens / wall:,.0f} tokens/s, "
            f"{res.steps / wall:,.0f} steps/s ({res.steps} steps), "
            f"{len(res.log.rows) / wall:,.0f} intervals/s ({len(res.log.rows)} intervals), "
            f"simulated {res.kernel_us:.1f} us, bytes moved: {not args.no_bytes}"
        )


if __name__ == "__main__":
    main()
