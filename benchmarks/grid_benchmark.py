"""The full profile against the original grid (issue 13), on the same machine and data.

    python benchmarks/grid_benchmark.py [--data default] [--num-samples 16] [--epochs N]
        [--full-windows 87000] [--out /tmp/grid-bench] [--grid-only]

Two runs, one after the other, each timed by the wall clock:

1. **The original grid**: the space's four cells (search_spaces/p7.yaml, profile ``full``:
   d_model 512 x 4 layers, batch 64, every training window in every epoch) one after another
   in this process, torch at 2 threads, each with the original scripts' step
   (``core_benchmark.reference_step``: the full-sequence model, the loop-built loss, torch's
   default AdamW) over tune_p7's own batches and hard negatives. Two epochs of each cell are
   timed, and a cell's wall time is epoch 1 + (epochs - 1) x epoch 2: every epoch after
   the first does the same work (same windows, same shapes). Its evaluation is not counted
   (the original evaluated too), so the grid's figure is a lower bound, in its favour.
2. **The full profile**: ``python -m tune_p7.sweep --profile full --num-samples 16`` (the
   four cells at full budget + 16 TPE trials under ASHA, two 1-thread trials at once),
   start to exit, evaluations, Ray and the tables included. From its history.parquet: the
   epochs run, the Optuna share of full budget, and the slot-seconds inside epochs. Its
   output goes to OUT/sweep.log.

Then the arithmetic for a full-size dataset of ``--full-windows`` training windows (the
original P7 set had ~87k): both sides' epoch time scales with the windows (the same model, the
same batch), the sweep's time outside epochs does not; so grid = its measured seconds x
windows ratio, sweep = (its epoch slot-seconds x windows ratio) / 2 slots + its measured
seconds outside epochs. The evaluations are scaled with the training windows too, an
approximation: the validation windows grow with the data up to max_val_windows (20,000), the
train-split windows stay at train_eval_windows (4,096).

Target: the full profile in less wall time than the original grid.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_benchmark import FullSequenceRanker, reference_optimizer, reference_step  # noqa: E402

from tune_p7.config import TrainConfig  # noqa: E402
from tune_p7.data import load_dataset  # noqa: E402
from tune_p7.space import load_space  # noqa: E402
from tune_p7.train import Run  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
PROFILE = "full"
GRID_THREADS = 2
SLOTS = 2  # the sweep's trials at once on a 2-core machine


def grid_cell_seconds(config: TrainConfig, dataset) -> dict:
    """Two epochs of one cell with the original step: {"first", "second", "windows"} seconds."""
    run = Run(config, dataset)  # tune_p7's data plumbing (windows, batches, hard negatives)
    model = FullSequenceRanker(config.model_config(dataset.dim))
    model.load_state_dict(run.model.state_dict())
    optimizer = reference_optimizer(model)
    loss_config, source = config.loss_config(), run.train_source
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(source), generator=run.generator)
        draws = torch.rand(len(order), config.hard_negatives, generator=run.generator)
        for batch, uniform in zip(order.split(config.batch_size), draws.split(config.batch_size)):
            contexts, targets = source.batch(batch)
            negatives = source.hard_negatives(batch, uniform)
            reference_step(model, optimizer, (contexts, targets, negatives), False, loss_config)
        seconds.append(time.perf_counter() - started)
    return {"first": seconds[0], "second": seconds[1], "windows": len(source)}


def original_grid(data: str, epochs: int | None) -> dict:
    """The four cells one after another with the original step; seconds per cell and total."""
    torch.set_num_threads(GRID_THREADS)
    space = load_space()
    dataset = load_dataset(data, split_seed=0)
    overrides = {"epochs": epochs} if epochs else {}
    cells = {}
    for settings in space.cell_configs(PROFILE, overrides):
        name = settings.pop("cell")
        settings.pop("phase")
        config = TrainConfig.from_dict({**settings, "threads": GRID_THREADS})
        timed = grid_cell_seconds(config, dataset)
        timed["seconds"] = timed["first"] + (config.epochs - 1) * timed["second"]
        timed["epochs"] = config.epochs
        cells[name] = timed
        print(f"grid {name:<15} K={config.context}: epoch 1 {timed['first']:.1f} s, epoch 2 "
              f"{timed['second']:.1f} s ({timed['windows']} windows) -> {config.epochs} epochs "
              f"{timed['seconds']:.0f} s", flush=True)
    return {"cells": cells, "seconds": sum(cell["seconds"] for cell in cells.values()),
            "windows": next(iter(cells.values()))["windows"]}


def full_profile_sweep(data: str, num_samples: int, epochs: int | None, out: Path) -> dict:
    """Run the full profile's sweep; wall seconds, epochs and the slot-seconds in epochs."""
    command = [sys.executable, "-m", "tune_p7.sweep", "--profile", PROFILE, "--data", data,
               "--num-samples", str(num_samples), "--storage-path", str(out),
               "--name", "full-profile"] + (["--epochs", str(epochs)] if epochs else [])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.log", "w") as log:  # the sweep's own output, to follow it
        started = time.perf_counter()
        subprocess.run(command, cwd=HERE, check=True, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
    return {"seconds": wall, **sweep_epochs(pd.read_parquet(out / "full-profile"
                                                           / "history.parquet"))}


def sweep_epochs(history: pd.DataFrame) -> dict:
    """From a sweep's history.parquet: epochs run, the Optuna share of full budget, the
    epochs each Optuna trial ran ({last epoch: trials}) and a trial epoch's mean seconds,
    split into training (train_windows / sequences_per_second) and the rest (evaluation)."""
    optuna = history[history["phase"] == "optuna"]
    max_epochs = int(history["epoch"].max())
    trials = optuna["trial_id"].nunique()
    training = history["train_windows"] / history["sequences_per_second"]
    stopped_at = optuna.groupby("trial_id")["epoch"].max().value_counts().sort_index()
    return {"epochs_run": len(history), "epoch_seconds": history["seconds"].sum(),
            "optuna_epochs": len(optuna), "optuna_budget": trials * max_epochs,
            "optuna_trials": trials, "max_epochs": max_epochs,
            "optuna_last_epochs": {int(epoch): int(count) for epoch, count in stopped_at.items()},
            "epoch_mean_seconds": history["seconds"].mean(),
            "epoch_training_seconds": training.mean(),
            "training_sequences_per_second": history["sequences_per_second"].mean()}


def bounds(grid: dict, sweep: dict, first_rung: int) -> dict:
    """What the run says beyond its ratio: the sweep's time had ASHA stopped every Optuna
    trial at ``first_rung`` (its measured mean epoch, SLOTS at once, its measured time outside
    epochs), and how much faster trial epochs must be for the sweep to take the grid's time
    with the same trials and rungs."""
    outside = sweep["seconds"] - sweep["epoch_seconds"] / SLOTS
    cells = sweep["epochs_run"] - sweep["optuna_epochs"]
    fewest = cells + sweep["optuna_trials"] * first_rung
    return {"first_rung_epochs": fewest,
            "first_rung_ratio": (fewest * sweep["epoch_mean_seconds"] / SLOTS + outside)
            / grid["seconds"],
            "epoch_speedup_needed": (sweep["seconds"] - outside) / (grid["seconds"] - outside)}


def full_size(grid: dict, sweep: dict, windows: int) -> dict:
    """Both sides at ``windows`` training windows (see the module docstring)."""
    scale = windows / grid["windows"]
    outside = sweep["seconds"] - sweep["epoch_seconds"] / SLOTS
    return {"windows": windows, "scale": scale, "grid_seconds": grid["seconds"] * scale,
            "sweep_seconds": sweep["epoch_seconds"] * scale / SLOTS + outside,
            "sweep_outside_epochs_seconds": outside}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default")
    parser.add_argument("--num-samples", type=int, default=16, help="TPE trials of the sweep")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the profile's)")
    parser.add_argument("--full-windows", type=int, default=87_000,
                        help="training windows of the full-size dataset in the arithmetic")
    parser.add_argument("--out", type=Path, default=Path("/tmp/grid-bench"))
    parser.add_argument("--grid-only", action="store_true", help="time the original grid only")
    args = parser.parse_args(argv)
    if (args.out / "full-profile").exists():
        sys.exit(f"{args.out / 'full-profile'} exists; remove it or pass another --out.")
    report = {"grid": original_grid(args.data, args.epochs)}
    print(f"original grid: {report['grid']['seconds']:.0f} s", flush=True)
    if not args.grid_only:
        sweep = report["sweep"] = full_profile_sweep(args.data, args.num_samples, args.epochs,
                                                     args.out)
        arithmetic = report["full_size"] = full_size(report["grid"], sweep, args.full_windows)
        limits = report["bounds"] = bounds(report["grid"], sweep,
                                           load_space().profile(PROFILE).grace_period)
        ratio = sweep["seconds"] / report["grid"]["seconds"]
        last = ", ".join(f"{count} at epoch {epoch}"
                         for epoch, count in sweep["optuna_last_epochs"].items())
        print(f"full profile ({sweep['optuna_trials']} TPE trials): {sweep['seconds']:.0f} s; "
              f"{sweep['epochs_run']} epochs, Optuna {sweep['optuna_epochs']} of "
              f"{sweep['optuna_budget']} ({sweep['optuna_epochs'] / sweep['optuna_budget']:.0%}) "
              f"under ASHA (last epochs: {last}); {sweep['epoch_seconds']:.0f} slot-s in epochs")
        print(f"a trial epoch: {sweep['epoch_mean_seconds']:.1f} s, training "
              f"{sweep['epoch_training_seconds']:.1f} s "
              f"({sweep['training_sequences_per_second']:.0f} seq/s), the rest (evaluation) "
              f"{sweep['epoch_mean_seconds'] - sweep['epoch_training_seconds']:.1f} s")
        print(f"full profile / original grid: {ratio:.2f} (target < 1: "
              f"{'met' if ratio < 1 else 'MISSED'}); every Optuna trial stopped at the first "
              f"rung ({limits['first_rung_epochs']} epochs): {limits['first_rung_ratio']:.2f}; "
              f"trial epochs {limits['epoch_speedup_needed']:.2f}x faster would tie")
        print(f"at {args.full_windows} training windows (x{arithmetic['scale']:.1f}): grid "
              f"{arithmetic['grid_seconds'] / 60:.0f} min, full profile "
              f"{arithmetic['sweep_seconds'] / 60:.0f} min (of which "
              f"{arithmetic['sweep_outside_epochs_seconds']:.0f} s outside epochs), ratio "
              f"{arithmetic['sweep_seconds'] / arithmetic['grid_seconds']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grid_benchmark.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
