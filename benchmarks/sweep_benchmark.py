"""Sweep throughput figures (not tests): concurrency, worker reuse, ASHA savings, Ray overhead.

    python benchmarks/sweep_benchmark.py [--data synthetic] [--epochs 8] [--out /tmp/sweep-bench]

Each figure runs the real command, ``python -m tune_p7.sweep``, on the quick profile:

1. the four cells (``--num-samples 0``) as 1 trial × 2 threads vs 2 trials × 1 thread:
   wall seconds and trials per hour (target: 2 concurrent >= 1.15x);
2. the same 2 × 1 run without worker reuse (``--no-reuse-actors``);
3. a whole quick sweep: epochs run by the Optuna trials under ASHA vs the same trials at
   full budget (target <= 50%), and Ray's overhead = 1 - (sum of the trials' own epoch
   seconds) / (wall seconds x concurrency) (target <= 10%).

Wall time counts from the command's start to its end, Ray start-up included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def run_sweep(out: Path, name: str, data: str, *flags: str) -> tuple[float, pd.DataFrame]:
    """Run one sweep; returns (wall seconds, trials table)."""
    command = [sys.executable, "-m", "tune_p7.sweep", "--data", data, "--storage-path",
               str(out), "--name", name, *flags]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    print(f"  {' '.join(command[1:])}: {wall:.1f} s", flush=True)
    return wall, pd.read_parquet(out / name / "trials.parquet")


def overhead(wall: float, trials: pd.DataFrame, concurrency: int) -> float:
    """Share of the concurrent slots' wall time not spent in the trials' own epochs."""
    return 1.0 - trials["seconds"].sum() / (wall * concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    parser.add_argument("--out", default="/tmp/sweep-bench")
    args = parser.parse_args(argv)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    cells = [*epochs, "--num-samples", "0"]

    print("1. four cells: one 2-thread trial at a time vs two 1-thread trials", flush=True)
    one_wall, one = run_sweep(out, "one", args.data, *cells, "--max-concurrent", "1",
                              "--cpus-per-trial", "2")
    two_wall, two = run_sweep(out, "two", args.data, *cells, "--max-concurrent", "2",
                              "--cpus-per-trial", "1")
    print(f"   1 x 2 threads: {one_wall:.1f} s, {len(one) * 3600 / one_wall:.0f} trials/h; "
          f"2 x 1 thread: {two_wall:.1f} s, {len(two) * 3600 / two_wall:.0f} trials/h; "
          f"speed-up {one_wall / two_wall:.2f}x")

    print("2. the same 2 x 1 run without worker reuse", flush=True)
    fresh_wall, _ = run_sweep(out, "fresh", args.data, *cells, "--max-concurrent", "2",
                              "--no-reuse-actors")
    print(f"   reuse: {two_wall:.1f} s; no reuse: {fresh_wall:.1f} s")

    print("3. a whole quick sweep: ASHA savings and Ray's overhead", flush=True)
    wall, trials = run_sweep(out, "quick", args.data, *epochs, "--max-concurrent", "2")
    optuna = trials[trials.phase == "optuna"]
    spent, full = optuna["epochs_run"].sum(), (optuna["epochs"]).sum()
    print(f"   Optuna trials: {len(optuna)}, epochs under ASHA {spent} of {full} at full "
          f"budget ({spent / full:.0%}); sweep {wall:.1f} s, trials' own seconds "
          f"{trials['seconds'].sum():.1f}, overhead {overhead(wall, trials, 2):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
