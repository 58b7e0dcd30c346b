"""Sweep throughput figures (not tests): concurrency, worker reuse, ASHA savings, Ray overhead.

    python benchmarks/sweep_benchmark.py [--data default] [--epochs 8] [--out /tmp/sweep-bench]
        [--only quick] [--before DIR] [--repeat N] [--num-samples N]

Each figure runs the real command, ``python -m tune_p7.sweep``, on the quick profile:

1. the four cells (``--num-samples 0``) as 1 trial × 2 threads vs 2 trials × 1 thread:
   wall seconds and trials per hour (target: 2 concurrent >= 1.15x);
2. the same 2 × 1 run without worker reuse (``--no-reuse-actors``);
3. a whole quick sweep (2 concurrent): epochs run by the Optuna trials under ASHA vs the same
   trials at full budget (target <= 50%), Ray's overhead (target <= 10%), and the sweep's
   own time estimate (``--dry-run``) beside the trial time it estimates.

Overhead, stated honestly: the sweep had ``wall × 2`` slot-seconds (2 trials at once). Of
these, the trials' own epochs (training + evaluation, ``seconds`` in history.parquet) used
``epochs``; the rest is overhead = 1 - epochs / (wall × 2), split into
``in trials`` (Ray's time_total_s minus the epochs: trial set-up, checkpoint writing, the
report round trip to the driver) and ``outside trials`` (slot-seconds with no trial),
itself split into start-up (command start to the first trial: imports, data tables, Ray's
start, the first Tuner and its workers), between phases (last cell to first Optuna trial,
0 when Optuna trials start while cells still run), end (last trial to the command's end: tables, summary,
Ray's shutdown), each × 2 slots, and idle slots within the phases (a slot waiting for the
last trial of a phase, hand-over between trials). Trial start and end come from result.json
(Ray's integer-second ``timestamp`` minus ``time_total_s``), so the split is good to about a
second per part. Wall time counts from the command's start to its end. The driver's CPU
seconds (the sweep process itself: imports, the data tables, Ray's controller loop, its
experiment-state saves and loggers; not Ray's daemons or the trials' workers) are reported
beside it: on a 2-core machine they are taken from the trials, so they slow the epochs
themselves and hide in ``epochs`` rather than in the overhead.

``--before DIR`` runs figure 3's sweep also with the code in DIR (e.g. ``git worktree add
/tmp/before HEAD~1``), alternating with this checkout so that both see similar machine load;
``--repeat N`` runs each pair N times; ``--num-samples N`` sets figure 3's Optuna trials. The
load average is printed before every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent.parent
# Runs the sweep's main() as `python -m tune_p7.sweep` does and writes this process's own
# CPU seconds (the driver's) to argv[1]. A --before checkout older than tune_p7.command
# ends as its __main__ did then, with sys.exit.
RUNNER = """
import resource, sys
from tune_p7.sweep import main

def measured():
    code = main(sys.argv[2:])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    open(sys.argv[1], "w").write(str(usage.ru_utime + usage.ru_stime))
    return code

try:
    from tune_p7 import command
except ImportError:
    sys.exit(measured())
command.run(measured)
"""


def run_sweep(out: Path, name: str, data: str, *flags: str,
              source: Path = HERE) -> tuple[float, float, pd.DataFrame]:
    """Run one sweep with the code in ``source``; returns (wall s, driver CPU s, trials).

    Also writes out/<name>.times: the command's start and end (time.time()).
    """
    cpu_file = out / f"{name}.driver-cpu"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", RUNNER, str(cpu_file), "--data", data, "--storage-path",
               str(out), "--name", name, *flags]
    environment = {**os.environ, "PYTHONPATH": str(source)}
    load = os.getloadavg()[0]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=source, env=environment)
    ended = time.time()
    wall = ended - started
    (out / f"{name}.times").write_text(json.dumps([started, ended]))
    print(f"  {name} ({source}): {wall:.1f} s, load average {load:.1f} before", flush=True)
    return wall, float(cpu_file.read_text()), pd.read_parquet(out / name / "trials.parquet")


def trial_spans(sweep_dir: Path) -> list[tuple[str, float, float, float]]:
    """(phase, start, end, Ray's time_total_s) of every trial that reported (the phase from
    its config: cells and Optuna trials may share one experiment)."""
    spans = []
    for path in sweep_dir.glob("ray/*/*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            spans.append((last["config"]["phase"], last["timestamp"] - last["time_total_s"],
                          last["timestamp"], last["time_total_s"]))
    return spans


def overhead_line(wall: float, driver_cpu: float, trials: pd.DataFrame, sweep_dir: Path,
                  slots: int = 2) -> str:
    """The overhead figure and its split (see the module docstring)."""
    capacity, epochs = wall * slots, trials["seconds"].sum()
    spans = trial_spans(sweep_dir)
    in_trials = sum(span[3] for span in spans) - epochs
    outside = capacity - epochs - in_trials
    started, ended = json.loads(sweep_dir.with_suffix(".times").read_text())
    start_up = min(span[1] for span in spans) - started
    end = ended - max(span[2] for span in spans)
    cells = [span[2] for span in spans if span[0] == "baseline"]
    optuna = [span[1] for span in spans if span[0] == "optuna"]
    between = max(0.0, min(optuna) - max(cells)) if cells and optuna else 0.0
    idle = outside - slots * (start_up + between + end)
    return (f"overhead {1 - epochs / capacity:.1%} of {capacity:.0f} slot-s: in trials "
            f"{in_trials:.1f} s ({in_trials / capacity:.1%}), outside trials {outside:.1f} s "
            f"({outside / capacity:.1%}: start-up {start_up:.1f} s, between phases "
            f"{between:.1f} s, end {end:.1f} s, each x {slots}; idle slots {idle:.1f} s); "
            f"epochs {epochs:.1f} s; driver CPU {driver_cpu:.1f} s")


def asha_line(trials: pd.DataFrame) -> str:
    optuna = trials[trials.phase == "optuna"]
    spent, full = optuna["epochs_run"].sum(), optuna["epochs"].sum()
    runs = ",".join(str(value) for value in optuna.sort_values("trial_id")["epochs_run"])
    return (f"Optuna trials {len(optuna)}: epochs under ASHA {spent} of {full} "
            f"({spent / full:.0%}; {runs})")


def cells_figures(out: Path, data: str, epochs: list[str]) -> None:
    """Figures 1 and 2: concurrency and worker reuse on the four cells."""
    cells = [*epochs, "--num-samples", "0"]
    print("1. four cells: one 2-thread trial at a time vs two 1-thread trials", flush=True)
    one_wall, _, one = run_sweep(out, "one", data, *cells, "--max-concurrent", "1",
                                 "--cpus-per-trial", "2")
    two_wall, _, two = run_sweep(out, "two", data, *cells, "--max-concurrent", "2",
                                 "--cpus-per-trial", "1")
    print(f"   1 x 2 threads: {one_wall:.1f} s, {len(one) * 3600 / one_wall:.0f} trials/h; "
          f"2 x 1 thread: {two_wall:.1f} s, {len(two) * 3600 / two_wall:.0f} trials/h; "
          f"speed-up {one_wall / two_wall:.2f}x")
    print("2. the same 2 x 1 run without worker reuse", flush=True)
    fresh_wall, _, _ = run_sweep(out, "fresh", data, *cells, "--max-concurrent", "2",
                                 "--no-reuse-actors")
    print(f"   reuse: {two_wall:.1f} s; no reuse: {fresh_wall:.1f} s")


def estimate_line(out: Path, data: str, flags: list[str], trials: pd.DataFrame,
                  slots: int = 2) -> str:
    """The sweep's own --dry-run estimate beside the trial time it estimates (the epochs'
    seconds spread over the slots)."""
    done = subprocess.run([sys.executable, "-m", "tune_p7.sweep", "--dry-run", "--data", data,
                           "--storage-path", str(out), "--name", "estimate", *flags,
                           "--max-concurrent", str(slots)],
                          capture_output=True, text=True, cwd=HERE, check=True)
    estimate = re.search(r"estimate on this machine: (\S+–\S+)", done.stdout).group(1)
    return (f"estimate {estimate} of trials (dry run now) vs epochs {trials['seconds'].sum():.0f}"
            f" s / {slots} slots = {trials['seconds'].sum() / slots:.0f} s")


def quick_figure(out: Path, data: str, flags: list[str], sources: dict[str, Path],
                 repeat: int) -> None:
    """Figure 3: whole quick sweeps (with ``flags``), each source in turn, ``repeat`` times;
    for this checkout also its time estimate."""
    print("3. a whole quick sweep: ASHA savings, Ray's overhead, the time estimate", flush=True)
    for run in range(1, repeat + 1):
        for label, source in sources.items():
            name = f"quick-{label}-{run}"
            wall, cpu, trials = run_sweep(out, name, data, *flags, "--max-concurrent", "2",
                                          source=source)
            print(f"   {label}: {asha_line(trials)}; sweep {wall:.1f} s; "
                  f"{overhead_line(wall, cpu, trials, out / name)}", flush=True)
            if source == HERE:
                print(f"   {label}: {estimate_line(out, data, flags, trials)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="Optuna trials of figure 3 (default: the profile's)")
    parser.add_argument("--out", default="/tmp/sweep-bench")
    parser.add_argument("--only", choices=("cells", "quick"), help="run only these figures")
    parser.add_argument("--before", type=Path, help="a checkout to compare figure 3 with")
    parser.add_argument("--repeat", type=int, default=1, help="figure 3 runs per source")
    args = parser.parse_args(argv)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    if args.only != "quick":
        cells_figures(out, args.data, epochs)
    if args.only != "cells":
        sources = {"before": args.before.resolve()} if args.before else {}
        label = "after" if args.before else "current"
        samples = ["--num-samples", str(args.num_samples)] if args.num_samples else []
        quick_figure(out, args.data, [*epochs, *samples], {**sources, label: HERE}, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
