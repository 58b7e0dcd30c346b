"""``python -m tune_p7.sweep``: the four baseline cells plus an Optuna (TPE) extension under ASHA.

One command, one sweep folder (docs/sweep-folder.md), one set of DataFrames. The sweep runs
two Ray Tune experiments in that folder, one after the other:

1. ``ray/baseline``: the search space's cells at full budget (FIFO, no early stopping),
   labelled phase="baseline", cell=<name>;
2. ``ray/optuna``: TPE over the space's ranges (margin, temperature, lambda), warm-started
   with the final val_margin of every cell that differs from an Optuna trial only in the
   searched settings, under asynchronous successive halving on val_margin (mode max,
   max_t = epochs) whose rungs are seeded with every cell's values (tune_p7.scheduler).

The dataset is loaded and validated once in the driver and shared with every trial through
Ray's object store. ``--resume`` (or ``--name`` of an existing sweep) continues both
experiments with ``Tuner.restore``. ``--dry-run`` prints the plan and starts nothing.
:func:`run_fixed_trials` runs any list of fixed configs the same way (used by tune_p7.confirm).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tune_p7 import __version__
from tune_p7.analyze import write_outputs
from tune_p7.data import BatchSource, DataError, Dataset, device_table, load_dataset
from tune_p7.metrics import data_signals, trivial_baselines
from tune_p7.results import error_line, ray_trial_states, write_tables
from tune_p7.scheduler import SeededASHA, read_history
from tune_p7.space import (DEFAULT_SPACE, PROFILES, SearchSpace, SpaceError, check_profile,
                           load_space)
from tune_p7.train import TrainConfig, format_epoch
from tune_p7.trainable import p7_trainable

METRIC, MODE = "val_margin", "max"
EXPERIMENTS = ("baseline", "optuna")
# Arguments that define what a sweep computes; a resumed sweep keeps the saved ones.
PLAN_ARGUMENTS = ("space", "data", "profile", "epochs", "num_samples", "seed")
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",      # no usage statistics leave the machine
    # Experiment state saved at most every 5 s (0 saved and copied it on every controller
    # step, ~10 times a second). Every checkpointed result still forces a save: with
    # CheckpointConfig(num_to_keep=1) Ray syncs the state after each trial checkpoint, so a
    # hard kill loses at most the epoch in flight; what may lag 5 s is only a trial's end.
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    "RAY_AIR_NEW_OUTPUT": "0",           # progress is our one line per trial epoch
    # Saving on every result is intended: no warning that it happens often.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
STARTED = time.time()  # progress lines count seconds from here


class SweepError(ValueError):
    """A user error in the sweep's arguments; the message is one sentence naming the fix."""


@dataclass
class TrialOptions:
    """How trials run (not what they compute): resources, concurrency, retries.

    cpus_per_trial: CPUs reserved per trial; also its torch threads (TrainConfig.threads).
    gpus_per_trial: GPUs per trial, fractional allowed (0.25 = four trials share one GPU).
    device: TrainConfig.device of every trial ("auto" = cuda > mps > cpu).
    max_concurrent: trials at once; 0 = as many as the cluster's CPUs/GPUs allow.
    reuse_actors: reuse trial workers between trials (saves the worker start-up).
    max_failures: retries of a failed trial from its last epoch checkpoint.
    progress: print one line per trial epoch.
    """

    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    device: str = "auto"
    max_concurrent: int = 0
    reuse_actors: bool = True
    max_failures: int = 2
    progress: bool = True


# ---------------------------------------------------------------------------------------
# The plan: everything decided before Ray starts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_p7.sweep",
        description="Run the P7 baseline cells plus an Optuna/ASHA extension with Ray Tune.")
    parser.add_argument("--space", help=f"search space YAML (default {_shown(DEFAULT_SPACE)})")
    parser.add_argument("--data", help="NPZ file, 'default' (shipped dataset, the default) "
                                       "or 'synthetic'")
    parser.add_argument("--profile", choices=PROFILES, help="quick (default) or full")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the profile's)")
    parser.add_argument("--num-samples", type=int,
                        help="Optuna trials after the cells (default: the profile's)")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials at once (default: as many as CPUs/GPUs allow)")
    parser.add_argument("--cpus-per-trial", type=int, default=1,
                        help="CPUs per trial, also its torch threads (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial, fractions share a GPU (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                        help="start a fresh worker for every trial")
    parser.add_argument("--storage-path", default="results",
                        help="folder holding sweep folders (default results/; shared "
                             "storage on a multi-node cluster)")
    parser.add_argument("--name", help="sweep folder name (default p7-<date>-<time>); an "
                                       "existing sweep of that name is resumed")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep (--name, else the newest)")
    parser.add_argument("--address", help="connect to a Ray cluster ('auto' or host:port) "
                                          "instead of starting Ray on this machine")
    parser.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard (on 127.0.0.1) for a local sweep")
    parser.add_argument("--seed", type=int, help="seed of every trial and of TPE (default 0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and start nothing")
    return parser


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_sweep_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """(sweep folder, whether it is an existing sweep to resume) from --storage-path/--name."""
    if "://" in args.storage_path:
        raise SweepError(f"--storage-path {args.storage_path} is a URI; pass a folder on a "
                         f"(shared) filesystem, e.g. a mounted bucket.")
    storage = Path(args.storage_path).resolve()
    if args.name:
        sweep_dir = storage / args.name
        exists = (sweep_dir / "sweep.json").exists()
        if args.resume and not exists:
            raise SweepError(f"--resume: {sweep_dir} holds no sweep (no sweep.json); check "
                             f"--name and --storage-path.")
        return sweep_dir, exists
    if args.resume:
        sweeps = sorted(storage.glob("*/sweep.json"), key=lambda path: path.stat().st_mtime)
        if not sweeps:
            raise SweepError(f"--resume: no sweep found under {storage}; pass --name and "
                             f"--storage-path of the sweep to continue.")
        return sweeps[-1].parent, True
    return storage / datetime.now().strftime("p7-%Y%m%d-%H%M%S"), False


def make_plan(args: argparse.Namespace, sweep_dir: Path, saved: dict | None) -> dict:
    """The sweep's plan as a JSON-able dict (also sweep.json); checks arguments and space.

    saved: the plan of an existing sweep being resumed; its plan arguments are kept and a
    different value on the command line is refused.
    """
    given = {name: getattr(args, name) for name in PLAN_ARGUMENTS}
    if saved is not None:
        for name, value in given.items():
            if value is not None and value != saved["arguments"][name]:
                flag = "--" + name.replace("_", "-")
                raise SweepError(f"{sweep_dir} was started with {flag} "
                                 f"{saved['arguments'][name]}; resume it without {flag} or "
                                 f"start a new sweep with another --name.")
        return saved
    arguments = {"space": str(args.space or _shown(DEFAULT_SPACE)), "data": args.data or "default",
                 "profile": args.profile or "quick", "epochs": args.epochs,
                 "num_samples": args.num_samples, "seed": 0 if args.seed is None else args.seed}
    space = load_space(arguments["space"])
    profile = space.profiles[arguments["profile"]]
    overrides = {"seed": arguments["seed"]}
    if arguments["epochs"] is not None:
        if arguments["epochs"] < 1:
            raise SweepError(f"--epochs {arguments['epochs']} must be at least 1.")
        overrides["epochs"] = arguments["epochs"]
    check_profile(space, arguments["profile"], overrides)
    num_samples = profile.optuna_trials if args.num_samples is None else args.num_samples
    if num_samples < 0:
        raise SweepError(f"--num-samples {num_samples} must be 0 or more.")
    base = TrainConfig.from_dict(space.base_config(arguments["profile"], overrides)).to_dict()
    return {"arguments": arguments, "name": sweep_dir.name, "sweep_dir": str(sweep_dir),
            "space_file": arguments["space"], "space": space.content,
            "fixed": base, "cells": space.cell_configs(arguments["profile"], overrides),
            "optuna": {"trials": num_samples, "context": base["context"],
                       "params": {k: dataclasses.asdict(v) for k, v in space.params.items()},
                       "startup_trials": space.startup_trials,
                       "asha": {"grace_period": min(profile.grace_period, base["epochs"]),
                                "reduction_factor": profile.reduction_factor,
                                "max_t": base["epochs"]}},
            "data": arguments["data"], "seed": arguments["seed"],
            "versions": _versions(), "created": datetime.now().isoformat(timespec="seconds"),
            "state": "planned"}


def _versions() -> dict:
    return {package: importlib.metadata.version(package) for package in ("ray", "optuna", "torch")} | {
        "tune_p7": __version__}


def trial_options(args: argparse.Namespace) -> TrialOptions:
    if args.cpus_per_trial < 1:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial} must be at least 1.")
    if args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial} must be 0 or more.")
    if args.device == "cuda" and args.gpus_per_trial == 0:
        raise SweepError("--device cuda needs --gpus-per-trial above 0 (e.g. 0.25 for four "
                         "trials per GPU); Ray hides GPUs from trials that reserve none.")
    if args.max_concurrent < 0:
        raise SweepError(f"--max-concurrent {args.max_concurrent} must be 0 (automatic) or more.")
    return TrialOptions(args.cpus_per_trial, args.gpus_per_trial, args.device,
                        args.max_concurrent, args.reuse_actors)


def format_plan(plan: dict, options: TrialOptions, address: str | None) -> str:
    """The plan as the lines --dry-run (and every run) prints."""
    epochs, optuna = plan["fixed"]["epochs"], plan["optuna"]
    fixed = plan["fixed"]
    lines = [f"sweep {plan['name']}  ->  {plan['sweep_dir']}",
             f"  space {plan['space_file']}  profile {plan['arguments']['profile']}  data "
             f"{plan['data']}  seed {plan['seed']}",
             f"  model d_model {fixed['d_model']}, {fixed['layers']} layers, {fixed['heads']} "
             f"heads; batch {fixed['batch_size']}; {epochs} epochs; teacher warm-up "
             f"{fixed['warmup_epochs']}"]
    for cell in plan["cells"]:
        lines.append(f"  cell {cell['cell']:<16} K={cell['context']}  margin {cell['margin']}"
                     f"  λ {cell['anchor_lambda']}  temperature {cell['temperature']}"
                     f"  ({epochs} epochs, full budget)")
    ranges = ", ".join(f"{name} {spec['low']}–{spec['high']}{' log' if spec['log'] else ''}"
                       for name, spec in optuna["params"].items())
    asha = optuna["asha"]
    lines.append(f"  optuna {optuna['trials']} TPE trials (K={optuna['context']}) over "
                 f"{ranges}; ASHA on {METRIC} (max) with the cells' values at its rungs, "
                 f"grace {asha['grace_period']}, reduction {asha['reduction_factor']:g}, "
                 f"max_t {asha['max_t']}")
    most = (len(plan["cells"]) + optuna["trials"]) * epochs
    lines.append(f"  epochs at most {most} ({len(plan['cells'])} cells + {optuna['trials']} "
                 f"trials × {epochs}); ASHA stops some Optuna trials earlier")
    concurrency = options.max_concurrent or (
        "as many as the cluster allows" if address
        else f"{max(1, (os.cpu_count() or 1) // options.cpus_per_trial)} (this machine's CPUs)")
    where = address or "a local Ray on 127.0.0.1"
    lines.append(f"  resources {options.cpus_per_trial} CPU + {options.gpus_per_trial:g} GPU "
                 f"per trial, concurrency {concurrency}, device {options.device}, worker "
                 f"reuse {'on' if options.reuse_actors else 'off'}, on {where}")
    lines.append(f"  results {plan['sweep_dir']}/trials.parquet, history.parquet (Ray's "
                 f"files under ray/)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Files the driver writes itself


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str))
    temporary.replace(path)


def set_sweep_state(sweep_dir: str | Path, state: str) -> None:
    """Record "running", "finished" or "interrupted" in sweep.json (docs/sweep-folder.md)."""
    path = Path(sweep_dir) / "sweep.json"
    content = json.loads(path.read_text())
    content["state"] = state
    # Who runs it, so a reader can tell a killed sweep (dead pid) from a running one.
    content.update(host=socket.gethostname(), pid=os.getpid())
    write_json_atomic(path, content)


def write_data_tables(sweep_dir: Path, dataset: Dataset, contexts: list[int],
                      global_queries: int) -> None:
    """baselines.parquet and data_signals.parquet for every context K the sweep uses.

    baselines: one row per (context, predictor) with the trivial predictors' val_* metrics
    on the same validation windows the trials use. data_signals: one row per (context,
    split) with forward_signal, recency, coherence, windows.
    """
    table = device_table(dataset.vectors, "cpu")
    baselines, signals = [], []
    for context in contexts:
        val = dataset.windows(context, "val")
        scores = trivial_baselines(BatchSource(val, table), global_queries=global_queries or None)
        for predictor, metrics in scores.items():
            baselines.append({"context": context, "predictor": predictor,
                              **{f"val_{k}": v for k, v in metrics.items() if k != "windows"}})
        for split in ("train", "val"):
            signals.append({"context": context, "split": split,
                            **data_signals(dataset.windows(context, split))})
    for name, rows in (("baselines", baselines), ("data_signals", signals)):
        temporary = sweep_dir / f".{name}.parquet.tmp"
        pd.DataFrame(rows).to_parquet(temporary, index=False)
        temporary.replace(sweep_dir / f"{name}.parquet")


def contexts_used(plan: dict) -> list[int]:
    return sorted({cell["context"] for cell in plan["cells"]} | {plan["optuna"]["context"]})


# ---------------------------------------------------------------------------------------
# Ray


def start_ray(address: str | None, dashboard: bool) -> None:
    """Connect to ``address`` or start a private local Ray on loopback (no usage stats)."""
    os.environ.update(RAY_ENVIRONMENT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Trial failures are printed by EpochPrinter as one line; the traceback is in error.txt.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except ConnectionError:
            raise SweepError(
                f"--address {address}: Ray refused the connection; if the cluster uses token "
                f"authentication, export RAY_AUTH_MODE=token and make its token findable "
                f"(RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).") from None
    else:
        # address="local": never attach to someone else's `ray start` on this machine.
        # (Ray 2.60 turns a node ip of 127.0.0.1 into the machine's address, so none is
        # given; its ports are protected by Ray's token authentication.)
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False, logging_level="WARNING")


def check_shared_storage(storage: Path) -> None:
    """On a multi-node cluster, refuse a storage path that another node cannot see.

    Writes a marker file and asks one task on every other alive node whether it exists.
    """

    here = ray.get_runtime_context().get_node_id()
    others = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] != here]
    if not others:
        return
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".tune_p7-shared-{os.getpid()}"
    marker.write_text("shared storage check")

    @ray.remote(num_cpus=0)
    def visible(path: str) -> bool:
        return Path(path).exists()

    try:
        seen = ray.get([visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(str(marker)) for node in others])
    finally:
        marker.unlink(missing_ok=True)
    if not all(seen):
        raise SweepError(f"--storage-path {storage} is local to this node, but the cluster "
                         f"has {len(others) + 1} nodes; pass a folder every node mounts "
                         f"(NFS or a mounted bucket).")


def concurrency(options: TrialOptions) -> int:
    """Trials at once: --max-concurrent, else what the cluster's CPUs and GPUs allow."""
    if options.max_concurrent:
        return options.max_concurrent
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // options.cpus_per_trial)
    if options.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0) / options.gpus_per_trial + 1e-9))
    return max(1, slots)


class EpochPrinter(tune.Callback):
    """Prints one line per trial epoch and one per ended trial; ``started``: time.time().

    stop_reasons: {trial_id: why the scheduler stopped it} (SeededASHA.stopped), if any.
    """

    def __init__(self, started: float, stop_reasons: dict[str, str] | None = None):
        # The scheduler's own dict (empty at first, filled as it stops trials), not a copy.
        self.started = started
        self.stop_reasons = {} if stop_reasons is None else stop_reasons

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._print(trial, format_epoch(result, result.get("config", {}).get("epochs")))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, f"ERROR {_error_line(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("epoch", 0)
        if epochs == trial.config.get("epochs"):
            self._print(trial, "done")
        else:
            reason = self.stop_reasons.get(trial.trial_id)
            self._print(trial, f"stopped by ASHA at epoch {epochs}"
                        + (f" ({reason})" if reason else ""))

    def _print(self, trial, text: str) -> None:
        print(f"[{time.time() - self.started:6.0f}s] {_label(trial.config)}  {text}", flush=True)


def _label(config: dict) -> str:
    if config.get("cell"):
        return f"{config.get('phase', '')}/{config['cell']}".ljust(24)
    return (f"{config.get('phase', '')} m={config.get('margin', 0):.3f} "
            f"T={config.get('temperature', 0):.3f} λ={config.get('anchor_lambda', 0):.2f}")


def _error_line(trial) -> str:
    """The last line of the trial's error file (the exception and its reason)."""
    path = Path(trial.local_path or "") / "error.txt"
    return error_line(path.read_text(errors="replace")) if path.is_file() else "failed"


def _trainable(dataset: Dataset, options: TrialOptions):
    """The trainable with the dataset in the object store and the trial's resources."""
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(p7_trainable, dataset=dataset), resources)


def _run_config(sweep_dir: Path, experiment: str, options: TrialOptions,
                stop_reasons: dict[str, str] | None = None):
    callbacks = [EpochPrinter(STARTED, stop_reasons)] if options.progress else []
    return tune.RunConfig(
        storage_path=str(Path(sweep_dir).resolve() / "ray"), name=experiment,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=callbacks, verbose=0)


def _choices(points: list[dict]) -> dict:
    """A param_space holding every key of the points (points_to_evaluate can only set keys
    that exist there): a constant where all points agree, else a choice of their values."""
    space = {}
    for key in points[0]:
        values = list(dict.fromkeys(point[key] for point in points))
        space[key] = values[0] if len(values) == 1 else tune.choice(values)
    return space


def trial_dirname(trial) -> str:
    """Short trial folder names: Ray's trial id and the cell (or phase)."""
    return f"p7_{trial.trial_id}_{trial.config.get('cell') or trial.config.get('phase', '')}"


def _full_config(config: dict) -> dict:
    """Every TrainConfig field (defaults filled in) plus the labels phase and cell."""
    settings = {k: v for k, v in config.items() if k not in ("phase", "cell")}
    return {**TrainConfig.from_dict(settings).to_dict(), "phase": config.get("phase", ""),
            "cell": config.get("cell", "")}


def _execution_settings(config: dict, options: TrialOptions) -> dict:
    """A config with the run's execution settings: torch threads = CPUs, device."""
    return {**config, "threads": options.cpus_per_trial, "device": options.device}


def _fit(sweep_dir: Path, tuner, expected: int):
    """Tuner.fit with the sweep state recorded; returns (ResultGrid, interrupted).

    Ray stops gracefully on Ctrl-C and fit() returns, counting the trials it cut short as
    terminated; so a run is interrupted when fewer than ``expected`` trials ended or when
    Ray's saved state leaves any trial neither TERMINATED nor ERROR.
    """
    set_sweep_state(sweep_dir, "running")
    try:
        grid = tuner.fit()
    except BaseException:
        set_sweep_state(sweep_dir, "interrupted")
        raise
    states = ray_trial_states(Path(grid.experiment_path))
    unfinished = [name for name, trial in states.items()
                  if trial["status"] not in ("TERMINATED", "ERROR")]
    interrupted = bool(unfinished) or grid.num_terminated + grid.num_errors < expected
    set_sweep_state(sweep_dir, "interrupted" if interrupted else "finished")
    return grid, interrupted


def _restorable(sweep_dir: Path, experiment: str) -> Path | None:
    path = Path(sweep_dir).resolve() / "ray" / experiment
    if not path.is_dir():
        return None
    repair_experiment_state(path)
    return path if tune.Tuner.can_restore(str(path)) else None


def repair_experiment_state(experiment_dir: Path) -> None:
    """Undo what a hard kill can leave in Ray's experiment folder before Tuner.restore.

    Ray copies its state files from a staging folder into the storage path; a kill during
    the copy leaves a truncated file, and Tuner.restore then silently restarts from nothing.
    Every state file of such a session is removed, so Ray restores from the previous
    complete snapshot; trial folders that snapshot does not know and whose params.json is
    truncated (the trial had just been created) are removed too, as Ray will create them again.
    """
    sessions = sorted({path.name.split("-", 1)[1].rsplit(".", 1)[0]
                       for path in experiment_dir.glob("experiment_state-*.json")})
    for session in reversed(sessions):
        files = [path for path in experiment_dir.iterdir()
                 if path.is_file() and session in path.name and not path.name.startswith(".")]
        if all(_readable(path) for path in files):
            break
        for path in files:
            path.unlink()
    known = set(ray_trial_states(experiment_dir))
    for params in experiment_dir.glob("*/params.json"):
        if params.parent.name not in known and not _readable(params):
            shutil.rmtree(params.parent)


def _readable(path: Path) -> bool:
    """Whether a state file is complete: it loads as JSON or as a pickle (Ray names some
    pickles *.json)."""
    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        pickle.loads(data)
        return True
    except Exception:  # any failure to unpickle means truncated or corrupt
        return False


def run_fixed_trials(sweep_dir: str | Path, experiment: str, configs: list[dict],
                     dataset: Dataset, options: TrialOptions | None = None):
    """Run fixed configs as one Tune experiment ``sweep_dir/ray/<experiment>``; resumable.

    sweep_dir: an existing sweep folder (holds sweep.json). experiment: the sub-folder name
    (e.g. "baseline", "confirm"). configs: full trial configs, every TrainConfig field plus
    the labels "phase" and "cell" (threads and device are replaced by ``options``); each runs
    all its epochs (no early stopping). dataset: the validated Dataset, put once in Ray's
    object store. options: resources, concurrency, retries (default TrialOptions()).
    Ray must be started (see start_ray). If the experiment folder already exists it is
    continued with Tuner.restore: ended trials are kept, unfinished ones resume from their
    last epoch checkpoint. Records the sweep state in sweep.json; does not write the tables
    (call tune_p7.results.write_tables). Returns (ResultGrid, interrupted: bool).
    """
    options = options or TrialOptions()
    sweep_dir = Path(sweep_dir)
    trainable = _trainable(dataset, options)
    points = [_execution_settings(_full_config(config), options) for config in configs]
    existing = _restorable(sweep_dir, experiment)
    if existing:
        tuner = tune.Tuner.restore(str(existing), trainable, resume_unfinished=True,
                                   param_space=_choices(points))
    else:
        search = BasicVariantGenerator(points_to_evaluate=points,
                                       max_concurrent=concurrency(options))
        tuner = tune.Tuner(
            trainable, param_space=_choices(points),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=len(points),
                                        reuse_actors=options.reuse_actors,
                                        trial_dirname_creator=trial_dirname),
            run_config=_run_config(sweep_dir, experiment, options))
    return _fit(sweep_dir, tuner, len(configs))


def run_optuna_trials(sweep_dir: Path, plan: dict, space: SearchSpace, dataset: Dataset,
                      options: TrialOptions, warm_start: list[tuple[dict, float]],
                      seeds: dict[str, dict[int, float]]):
    """The Optuna experiment ``sweep_dir/ray/optuna``: TPE under seeded ASHA; resumable.

    warm_start: (searched settings, final val_margin) of cells TPE learns from. seeds:
    {cell: {epoch: val_margin}} put in the scheduler's rungs (see rung_seeds). On a resume
    Ray restores the scheduler as first built (seeds included) and it reads the restored
    trials' results back into its rungs. Returns (ResultGrid, interrupted).
    """
    trials = plan["optuna"]["trials"]
    trainable = _trainable(dataset, options)
    base = _execution_settings({**plan["fixed"], "phase": "optuna", "cell": ""}, options)
    existing = _restorable(sweep_dir, "optuna")
    if existing:
        tuner = tune.Tuner.restore(str(existing), trainable, resume_unfinished=True,
                                   param_space=base)
        return _fit(sweep_dir, tuner, trials)
    sampler = optuna.samplers.TPESampler(seed=plan["seed"], constant_liar=True,
                                         n_startup_trials=space.startup_trials)
    searcher = OptunaSearch(space.optuna_distributions(), metric=METRIC, mode=MODE,
                            sampler=sampler,
                            points_to_evaluate=[point for point, _ in warm_start] or None,
                            evaluated_rewards=[reward for _, reward in warm_start] or None)
    asha = plan["optuna"]["asha"]
    scheduler = SeededASHA(METRIC, MODE, asha["grace_period"], asha["reduction_factor"],
                           asha["max_t"], seeds)
    tuner = tune.Tuner(
        trainable, param_space=base,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=trials,
            max_concurrent_trials=concurrency(options), reuse_actors=options.reuse_actors,
            trial_dirname_creator=trial_dirname),
        run_config=_run_config(sweep_dir, "optuna", options, scheduler.stopped))
    return _fit(sweep_dir, tuner, trials)


def rung_seeds(grid) -> dict[str, dict[int, float]]:
    """{cell: {epoch: val_margin}} of every baseline cell that reported an epoch, read from
    its result.json: the reference values the Optuna trials are judged against at each rung."""
    seeds = {}
    for result in grid:
        values, _ = read_history(Path(result.path) / "result.json", METRIC)
        if values:
            seeds[result.config["cell"]] = values
    return seeds


def warm_start_points(grid, plan: dict, space: SearchSpace) -> list[tuple[dict, float]]:
    """(searched settings, final val_margin) of every finished cell that is an Optuna trial
    in all but the searched settings (same K, model, budget ...)."""
    base = plan["fixed"]
    points = []
    for result in grid:
        config, metrics = result.config, result.metrics or {}
        differs = {key for key, value in base.items()
                   if key not in space.params and key not in ("threads", "device")
                   and config.get(key) != value}
        reward = metrics.get(METRIC)
        if (result.error is None and not differs and metrics.get("epoch") == base["epochs"]
                and isinstance(reward, float) and math.isfinite(reward)):
            points.append(({name: config[name] for name in space.params}, reward))
    return points


# ---------------------------------------------------------------------------------------
# The command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep_dir, resuming = resolve_sweep_dir(args)
        saved = json.loads((sweep_dir / "sweep.json").read_text()) if resuming else None
        plan = make_plan(args, sweep_dir, saved)
        options = trial_options(args)
        space = load_space(plan["space_file"]) if saved is None else _saved_space(plan)
    except (SweepError, SpaceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(("resuming " if resuming else "") + format_plan(plan, options, args.address),
          flush=True)
    if args.dry_run:
        return 0
    try:
        dataset = load_dataset(plan["data"], split_seed=0)
        for context in contexts_used(plan):
            dataset.check_context(context)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_sweep(args, sweep_dir, plan, space, dataset, options, resuming)


def _saved_space(plan: dict) -> SearchSpace:
    """The search space as saved in sweep.json (the file may have been edited since)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(plan["space"], handle)
    try:
        space = load_space(handle.name)
    finally:
        os.unlink(handle.name)
    return dataclasses.replace(space, path=plan["space_file"])


def run_sweep(args, sweep_dir: Path, plan: dict, space: SearchSpace, dataset: Dataset,
              options: TrialOptions, resuming: bool) -> int:
    """Write the driver's files, run both experiments, write the tables, print the top.

    The data tables of a new sweep are computed in a thread while Ray starts (both take
    seconds; Ray's start mostly waits for its processes).
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_json_atomic(sweep_dir / "sweep.json", plan)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            tables = None if resuming else pool.submit(
                write_data_tables, sweep_dir, dataset, contexts_used(plan),
                plan["fixed"]["global_queries"])
            start_ray(args.address, args.dashboard)
        if tables:
            tables.result()  # raises what the thread raised
        print(format_data_summary(sweep_dir, dataset), flush=True)
        if args.address:
            check_shared_storage(sweep_dir.parent)
        grid, interrupted = run_fixed_trials(sweep_dir, "baseline", plan["cells"], dataset,
                                             options)
        if not interrupted and plan["optuna"]["trials"]:
            warm = warm_start_points(grid, plan, space)
            print(f"TPE learns from {len(warm)} cells (those differing from an Optuna trial "
                  f"only in {', '.join(space.params)})", flush=True)
            _, interrupted = run_optuna_trials(sweep_dir, plan, space, dataset, options, warm,
                                               rung_seeds(grid))
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupted = True
        _mark_interrupted(sweep_dir)
    return finish(sweep_dir, interrupted)


def _mark_interrupted(sweep_dir: Path) -> None:
    if (sweep_dir / "sweep.json").exists():
        set_sweep_state(sweep_dir, "interrupted")


def finish(sweep_dir: Path, interrupted: bool) -> int:
    """Write trials.parquet/history.parquet, print where they are and the top trials."""
    trials, _ = write_tables(sweep_dir)
    print(format_summary(sweep_dir, trials))
    if interrupted:
        print(f"interrupted: continue with  python -m tune_p7.sweep --resume --name "
              f"{sweep_dir.name} --storage-path {sweep_dir.parent}")
        return 130
    _, written = write_outputs(sweep_dir)
    print(f"analysis: {sweep_dir / 'summary.txt'}, "
          f"{len(written['plots'])} plots, {sweep_dir / 'optuna.db'} "
          f"(python -m tune_p7.analyze {sweep_dir} for the full report)")
    return 0


def format_data_summary(sweep_dir: Path, dataset: Dataset) -> str:
    """The data's short form before trials start (python -m tune_p7.data inspect has the
    long one): size, and per K the validation signals and trivial predictors, read from
    the data tables the sweep wrote so nothing is computed twice."""
    signals = pd.read_parquet(sweep_dir / "data_signals.parquet")
    baselines = pd.read_parquet(sweep_dir / "baselines.parquet").set_index("predictor")
    lines = [f"data {dataset.source}: {dataset.num_documents} documents, "
             f"{len(dataset.vectors)} chunks, D={dataset.dim}"]
    for row in signals[signals.split == "val"].itertuples():
        trivial = baselines[baselines.context == row.context]
        lines.append(
            f"  K={row.context}: {row.windows} val windows; forward signal "
            f"{row.forward_signal:+.4f}, recency {row.recency:+.4f}, coherence "
            f"{row.coherence:.3f}; " + ", ".join(
                f"{name} Δ {metrics.val_margin:+.3f} R@5 {metrics.val_r_at_5:.3f}"
                for name, metrics in trivial.iterrows()))
    return "\n".join(lines)


def format_summary(sweep_dir: Path, trials, top: int = 5) -> str:
    """Where the results are, trial counts by status, the top trials beside the trivial
    predictors (on the Optuna trials' K)."""
    lines = [f"results: {sweep_dir}/trials.parquet ({len(trials)} trials), history.parquet, "
             f"baselines.parquet, data_signals.parquet"]
    if trials.empty:
        return "\n".join(lines)
    counts = trials["status"].value_counts()
    lines.append("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    columns = ["phase", "cell", "context", "margin", "temperature", "anchor_lambda", "status",
               "epochs_run", "best_val_margin", "val_cos_next", "val_r_at_5"]
    shown = trials.sort_values("best_val_margin", ascending=False, na_position="last").head(top)
    lines.append(f"top {len(shown)} by best val_margin:")
    lines.append(shown[[c for c in columns if c in shown.columns]].to_string(
        index=False, float_format=lambda value: f"{value:.4f}"))
    baselines_path = sweep_dir / "baselines.parquet"
    if baselines_path.exists():
        baselines = pd.read_parquet(baselines_path)
        lines.append("trivial predictors on the same validation windows (a trial is only "
                     "interesting where it beats all three):")
        lines.append(baselines[["context", "predictor", "val_margin", "val_cos_next",
                                "val_r_at_5"]].to_string(
            index=False, float_format=lambda value: f"{value:.4f}"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
