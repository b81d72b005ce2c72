#!/usr/bin/env python
"""Measure when gathering the live units of a gated block pays: the rule behind ``wav2vec2.sparse.MIN_SAVED_ROWS``.

One gated FFN block (``wav2vec2.components.FeedForward`` with unit gates) at the HuBERT Base
shape (768 -> 3072 -> 768), training mode, forward + backward, for several numbers of rows
(frames x batch) and dead fractions; the dense masked computation and the gathered one
(``wav2vec2.sparse.feed_forward`` with ``min_saved_rows=0``) are timed alternately. The
gather's cost is O(units * D) and its saving O(rows * dead * D), so the break-even is a
number of saved rows, ``rows * dead_fraction``; the script prints it for every row count.

Usage:
    python benchmarks/calibrate_sparse.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wav2vec2 import components as c  # noqa: E402
from wav2vec2 import sparse  # noqa: E402


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_table(repeats: int) -> None:
    """Forward + backward of the Base extractor's conv shapes (batch 2 x 4 s): torch's default vs native kernels."""
    import torch.nn.functional as F

    print("conv forward + backward, batch 2 x 4 s: torch default (oneDNN) vs wav2vec2.sparse.conv1d (native kernels)")
    for c_in, c_out, length, kernel, stride in [(1, 512, 64000, 10, 5), (512, 512, 12799, 3, 2), (512, 512, 1599, 3, 2), (512, 512, 399, 2, 2)]:
        x = torch.randn(2, c_in, length, requires_grad=c_in > 1)
        w = torch.randn(c_out, c_in, kernel, requires_grad=True)
        grad = torch.randn(2, c_out, (length - kernel) // stride + 1)

        def default() -> None:
            F.conv1d(x, w, stride=stride).backward(grad)

        def native() -> None:
            sparse.conv1d(x, w, None, stride).backward(grad)

        first = _time(default, repeats)  # ABBA, so a drift in load hits both
        t_native = (_time(native, repeats) + _time(native, repeats)) / 2
        t_default = (first + _time(default, repeats)) / 2
        print(f"  {c_in:4d} -> {c_out} k{kernel} s{stride} on {length}: default {t_default * 1e3:7.1f} ms, native {t_native * 1e3:7.1f} ms "
              f"({t_native / t_default:.2f}x)", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rows", default="100,400,1600", help="frames x batch")
    parser.add_argument("--dead", default="0.05,0.1,0.2,0.4", help="dead fractions of the FFN units")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--units", type=int, default=3072)
    parser.add_argument("--conv", action="store_true", help="also time the Base extractor's convolutions: oneDNN vs native")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.conv:
        _conv_table(args.repeats)
    torch.manual_seed(0)
    ffn = c.FeedForward(args.width, args.units, 0.0, 0.0, prune_intermediate=True).train()
    print(f"FFN {args.width} -> {args.units} -> {args.width}, forward + backward, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'rows':>6} {'dead':>6} {'dense ms':>9} {'gathered ms':>12} {'gain':>6} {'saved rows':>11}")
    for rows in [int(r) for r in args.rows.split(",")]:
        x = torch.randn(1, rows, args.width)
        grad = torch.randn(1, rows, args.width)
        break_even: list[float] = []
        for dead in [float(d) for d in args.dead.split(",")]:
            n_dead = int(round(dead * args.units))
            with torch.no_grad():
                values = torch.full((args.units,), 10.0)
                values[torch.randperm(args.units)[:n_dead]] = -10.0
                ffn.hard_concrete_for_intermediate.log_alpha.copy_(values)

            def dense() -> None:
                ffn.zero_grad(set_to_none=True)
                ffn(x).backward(grad)

            def gathered() -> None:
                ffn.zero_grad(set_to_none=True)
                sparse.feed_forward(ffn, x, min_saved_rows=0.0).backward(grad)  # type: ignore[union-attr]

            t_dense = t_gather = 0.0
            for i in range(2):  # alternate the order, so drifts in load hit both
                order = [(dense, "d"), (gathered, "g")] if i == 0 else [(gathered, "g"), (dense, "d")]
                for fn, tag in order:
                    value = _time(fn, args.repeats)
                    if tag == "d":
                        t_dense += value / 2
                    else:
                        t_gather += value / 2
            gain = t_dense / t_gather
            saved = rows * dead
            if gain >= 1.0:
                break_even.append(saved)
            print(f"{rows:6d} {dead:6.2f} {t_dense * 1e3:9.1f} {t_gather * 1e3:12.1f} {gain:6.2f} {saved:11.0f}", flush=True)
        if break_even:
            print(f"       rows {rows}: gathering paid from {min(break_even):.0f} saved rows on")
    print(f"current rule: gather when rows x dead fraction >= {sparse.MIN_SAVED_ROWS:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
