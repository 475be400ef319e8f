"""The training-step cost of finished runs against each other, timed interleaved in ONE process.

    python benchmarks/step_cost.py runs/standard/digits_transfer/none_seed0/mnist_rgb \\
        runs/standard/digits_transfer/byol_none_seed0/mnist_rgb --rounds 10 --threads 2

Each run folder's config is rebuilt as its training loop builds it and one training step of each is timed in turn
on the same batch, the order reversed every other round, warm-up rounds dropped
(:func:`tc2ssl.benchmarks.compute.time_training_steps`, the timing behind the equal-compute rows: the conflict
diagnostic off). The first folder is the reference. Prints a markdown table (median seconds per step, the median of
the per-round ratios to the reference) and, last, a JSON object of those ratios. Use it to compare base methods
(SimCLR against BYOL) before sizing a benchmark: timings from separate invocations differ with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from tc2ssl.benchmarks.compute import time_training_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="finished (or started) run folders; the first is the reference")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dirs = [Path(d) for d in args.run_dirs]
    times = time_training_steps(dirs, rounds=args.rounds, warmup=args.warmup)
    ratios = {str(d): statistics.median(t / r for t, r in zip(ts, times[0])) for d, ts in zip(dirs, times)}
    print("| run folder | median s / step | ratio to the first (median over rounds) |\n|---|---|---|")
    for d, ts in zip(dirs, times):
        print(f"| {d} | {statistics.median(ts):.3f} | {ratios[str(d)]:.3f} |")
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
