"""``python -m tune_p7.sweep``: the four baseline cells plus an Optuna (TPE) extension under ASHA.

One command, one sweep folder (docs/sweep-folder.md), one set of DataFrames. The sweep is
one Ray Tune experiment in that folder, ``ray/sweep``: first the search space's cells at full
budget (never stopped early), labelled phase="baseline", cell=<name>; then TPE trials over
the space's ranges (phase="optuna") under asynchronous successive halving on val_margin
(mode max, max_t = epochs). There is no barrier between the two: an Optuna trial starts as
soon as a slot is free, and TPE (tune_p7.searcher) and the rungs (tune_p7.scheduler) learn
from each cell as it reports. Every trial is a trial of the live Optuna study in optuna.db.

The dataset is loaded and validated in a thread while Ray starts, once, and shared with every
trial through Ray's object store. ``--resume`` (or ``--name`` of an existing sweep) continues
the experiment with ``Tuner.restore``. ``--dry-run`` prints the plan and the time estimate
and starts nothing. This module is the plan and the command; the Ray wiring is
tune_p7.tuner, the folder's files tune_p7.folder, the tables tune_p7.results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pandas as pd

import ray

from tune_p7 import __version__, command
from tune_p7.analyze import EveryTrialFailed, write_outputs
from tune_p7.config import TrainConfig
from tune_p7.data import DataError, Dataset, check_source, load_dataset
from tune_p7.devices import device_available
from tune_p7.estimate import estimate_sweep, format_estimate, warm_up
from tune_p7.folder import FolderInUse, SweepFolder, newest_sweep
from tune_p7.metrics import lag_cosine_rows, reference_metrics
from tune_p7.plan import PLAN_ARGUMENTS, AshaPlan, OptunaPlan, Plan
from tune_p7.progress import progress_printer
from tune_p7.results import best_statement, leaderboard, write_tables
from tune_p7.space import DEFAULT_PROFILE, DEFAULT_SPACE, SearchSpace, SpaceError, check_profile, \
    from_spec, load_space, parse_space
from tune_p7.study import STUDY_FILE, storage_url
from tune_p7.trackers import (DEFAULT_TRACKERS, TRACKERS, TrackerError, default_mlflow_uri,
                              parse_trackers)
from tune_p7.tuner import (METRIC, SweepError, TrialOptions, add_trial_arguments,
                           check_resumable, check_shared_storage, run_sweep_trials,
                           share_dataset, start_ray, trial_options)


# ---------------------------------------------------------------------------------------
# The plan: everything decided before Ray starts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_p7.sweep",
        description="Run the P7 baseline cells plus an Optuna/ASHA extension with Ray Tune.")
    parser.add_argument("--space", help=f"search space YAML (default {_shown(DEFAULT_SPACE)})")
    parser.add_argument("--data", help="NPZ file, 'default' (shipped dataset, the default) "
                                       "or 'synthetic'")
    parser.add_argument("--val-data", help="a second NPZ of the same D and shape to validate "
                                           "on (every document of --data then trains), as "
                                           "the original --train-npz/--val-npz pair")
    parser.add_argument("--profile", help=f"a profile of the space (default {DEFAULT_PROFILE}; "
                                          f"search_spaces/p7.yaml has quick and full)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the profile's)")
    parser.add_argument("--epoch-windows", type=int,
                        help="training windows per epoch, a seeded random subset each epoch "
                             "(0: all; default: the space file's, else all)")
    parser.add_argument("--max-val-windows", type=int,
                        help="validation windows per evaluation, evenly spaced and the same "
                             f"for every trial (0: all; default: the space file's, else "
                             f"{TrainConfig.max_val_windows})")
    parser.add_argument("--num-samples", type=int,
                        help="Optuna trials after the cells (default: the profile's)")
    add_trial_arguments(parser)
    parser.add_argument("--storage-path", default="results",
                        help="folder holding sweep folders (default results/; shared "
                             "storage on a multi-node cluster)")
    parser.add_argument("--name", help="sweep folder name (default p7-<date>-<time>); an "
                                       "existing sweep of that name is resumed")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep (--name, else the newest)")
    parser.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard (on 127.0.0.1) for a local sweep")
    parser.add_argument("--seed", type=int, help="seed of every trial and of TPE (default 0)")
    parser.add_argument("--log-to", metavar="TRACKERS",
                        help=f"where results go besides the folder, comma-separated: "
                             f"{', '.join(TRACKERS)} or none (default "
                             f"{','.join(DEFAULT_TRACKERS)})")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="MLflow tracking URI for --log-to mlflow (default: a SQLite "
                             "store in the sweep folder, mlflow.db)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the time estimate and start nothing")
    return parser


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_sweep_dir(args: argparse.Namespace) -> tuple[SweepFolder, bool]:
    """(sweep folder, whether it is an existing sweep to resume) from --storage-path/--name."""
    if "://" in args.storage_path:
        raise SweepError(f"--storage-path {args.storage_path} is a URI; pass a folder on a "
                         f"(shared) filesystem, e.g. a mounted bucket.")
    storage = Path(args.storage_path).resolve()
    if args.name:
        folder = SweepFolder(storage / args.name)
        if args.resume and not folder.holds_sweep():
            raise SweepError(f"--resume: {folder.path} holds no sweep (no sweep.json); check "
                             f"--name and --storage-path.")
        return folder, folder.holds_sweep()
    if args.resume:
        newest = newest_sweep(storage)
        if newest is None:
            raise SweepError(f"--resume: no sweep found under {storage}; pass --name and "
                             f"--storage-path of the sweep to continue.")
        return SweepFolder(newest), True
    return SweepFolder(storage / datetime.now().strftime("p7-%Y%m%d-%H%M%S")), False


def make_plan(args: argparse.Namespace, folder: SweepFolder, saved: dict | None,
              device: str = "auto") -> Plan:
    """The sweep's plan (saved as sweep.json); checks arguments and space.

    saved: the sweep.json of an existing sweep being resumed; its plan arguments are kept
    and a different value on the command line is refused. device: the trials' device
    (TrialOptions.device, "auto" already resolved), recorded in the plan's configs.
    """
    given = {name: getattr(args, name) for name in PLAN_ARGUMENTS}
    if saved is not None:
        for name, value in given.items():
            if value is not None and value != saved["arguments"].get(name):
                flag = "--" + name.replace("_", "-")
                raise SweepError(f"{folder.path} was started with {flag} "
                                 f"{saved['arguments'].get(name)}; resume it without {flag} or "
                                 f"start a new sweep with another --name.")
        return Plan.from_dict(saved)
    arguments = {**given, "space": str(args.space or _shown(DEFAULT_SPACE)),
                 "data": args.data or "default", "profile": args.profile or DEFAULT_PROFILE,
                 "seed": 0 if args.seed is None else args.seed,
                 "log_to": args.log_to or ",".join(DEFAULT_TRACKERS)}
    space = load_space(arguments["space"])
    profile = space.profile(arguments["profile"])
    overrides = {"seed": arguments["seed"], "device": device}
    for name, least in (("epochs", 1), ("epoch_windows", 0), ("max_val_windows", 0)):
        if arguments[name] is not None:
            if arguments[name] < least:
                raise SweepError(f"--{name.replace('_', '-')} {arguments[name]} must be at "
                                 f"least {least}.")
            overrides[name] = arguments[name]
    check_profile(space, arguments["profile"], overrides)
    num_samples = profile.optuna_trials if args.num_samples is None else args.num_samples
    if num_samples < 0:
        raise SweepError(f"--num-samples {num_samples} must be 0 or more.")
    base = TrainConfig.from_dict(space.base_config(arguments["profile"], overrides)).to_dict()
    asha = AshaPlan(min(profile.grace_period, base["epochs"]), profile.reduction_factor,
                    base["epochs"])
    optuna = OptunaPlan(num_samples, base["context"], space.param_specs(),
                        space.startup_trials, asha)
    return Plan(arguments, folder.path.name, str(folder.path), arguments["space"],
                space.content, base, space.cell_configs(arguments["profile"], overrides),
                optuna, arguments["data"], arguments["val_data"], arguments["seed"], _versions(),
                datetime.now().isoformat(timespec="seconds"))


def _count(windows: int, cap: str = "") -> str:
    return f"{cap}{windows:,}" if windows else "all"


def _versions() -> dict:
    return {package: importlib.metadata.version(package) for package in ("ray", "optuna", "torch")} | {
        "tune_p7": __version__}


def format_plan(plan: Plan, options: TrialOptions, address: str | None,
                asked_device: str = "auto") -> str:
    """The plan as the lines --dry-run (and every run) prints; asked_device: --device as
    given, shown beside the device it resolved to when that was "auto"."""
    fixed, optuna, epochs = plan.fixed, plan.optuna, plan.epochs
    lines = [f"sweep {plan.name}  ->  {plan.sweep_dir}",
             f"  space {plan.space_file}  profile {plan.arguments['profile']}  data "
             f"{plan.data}" + (f" (validation: {plan.val_data})" if plan.val_data else "")
             + f"  seed {plan.seed}",
             f"  model d_model {fixed['d_model']}, {fixed['layers']} layers, {fixed['heads']} "
             f"heads; batch {fixed['batch_size']}; {epochs} epochs of "
             f"{_count(fixed['epoch_windows'])} training windows; validation on "
             f"{_count(fixed['max_val_windows'], 'at most ')} windows; teacher warm-up "
             f"{fixed['warmup_epochs']}"]
    for cell in plan.cells:
        lines.append(f"  cell {cell['cell']:<16} K={cell['context']}  margin {cell['margin']}"
                     f"  λ {cell['anchor_lambda']}  temperature {cell['temperature']}"
                     f"  ({epochs} epochs, full budget)")
    ranges = ", ".join(f"{name} {from_spec(spec).describe()}"
                       for name, spec in optuna.params.items())
    asha = optuna.asha
    lines.append(f"  optuna {optuna.trials} TPE trials (K={optuna.context}) over "
                 f"{ranges}, starting as slots free up after the cells; TPE and ASHA on "
                 f"{METRIC} (max) learn from each cell as it reports; grace "
                 f"{asha.grace_period}, reduction {asha.reduction_factor:g}, max_t {asha.max_t}")
    lines.append(f"  epochs at most {plan.most_epochs()} ({len(plan.cells)} cells + "
                 f"{optuna.trials} trials × {epochs}); at least {plan.budget().fewest()} if "
                 f"ASHA stops every Optuna trial at its first rung (epoch {asha.first_rung})")
    slots = options.max_concurrent or (
        "as many as the cluster allows" if address
        else f"{_local_slots(options)} (this machine's CPUs)")
    where = address or "a local Ray on 127.0.0.1"
    device = options.device + (" (chosen by --device auto)" if asked_device == "auto" else "")
    memory = f" + {options.memory_per_trial:g} GiB" if options.memory_per_trial else ""
    lines.append(f"  resources {options.cpus_per_trial} CPU + {options.gpus_per_trial:g} GPU"
                 f"{memory} per trial, concurrency {slots}, device {device}, worker "
                 f"reuse {'on' if options.reuse_actors else 'off'}, "
                 f"{options.max_failures} retries of a failed trial, on {where}")
    lines.append(f"  results {plan.sweep_dir}/trials.parquet, history.parquet (Ray's "
                 f"files under ray/)")
    lines += [f"  watch {watch}" for watch in watch_commands(plan)]
    return "\n".join(lines)


def plan_trackers(plan: Plan) -> tuple[str, ...]:
    """The plan's --log-to trackers, checked (TrackerError); the default for a sweep.json
    written before trackers were part of the plan."""
    return parse_trackers(plan.arguments.get("log_to") or ",".join(DEFAULT_TRACKERS))


def watch_commands(plan: Plan) -> list[str]:
    """The commands that show the sweep while it runs: the Optuna study, then each tracker."""
    folder = Path(plan.sweep_dir)
    trackers = plan_trackers(plan)
    commands = [f"optuna-dashboard {storage_url(folder)}"]
    if "tensorboard" in trackers:
        commands.append(f"tensorboard --logdir {folder / 'ray'}")
    if "mlflow" in trackers:
        uri = plan.arguments.get("mlflow_uri") or default_mlflow_uri(folder)
        commands.append(f"mlflow ui --backend-store-uri {uri}")
    if "wandb" in trackers:
        commands.append(f"wandb sync {folder / 'wandb'}/offline-run-*   (W&B runs written "
                        f"offline; online when logged in)")
    commands.append(f"python -m tune_p7.analyze {folder}   (progress and provisional results)")
    return commands


# ---------------------------------------------------------------------------------------
# The command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder, resuming = resolve_sweep_dir(args)
        saved = folder.read_content() if resuming else None
        if resuming:
            check_resumable(folder)
        options = trial_options(args)
        plan = make_plan(args, folder, saved, options.device)
        trackers = plan_trackers(plan)
        space = (load_space(plan.space_file) if saved is None
                 else parse_space(plan.space, plan.space_file))
        # One live sweep per folder: a second one is refused before it prints or writes.
        lock = None if args.dry_run else folder.lock()
    except (SweepError, SpaceError, TrackerError, FolderInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(("resuming " if resuming else "") + format_plan(plan, options, args.address,
                                                          args.device), flush=True)
    with lock or contextlib.nullcontext():
        try:
            dataset, shared, references = prepare(args, plan, options,
                                                  with_tables=not resuming)
            print(estimate_line(args, plan, dataset, options), flush=True)
        except (DataError, SweepError) as error:
            ray.shutdown()
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            ray.shutdown()
            print("interrupted before any trial started; nothing was written", file=sys.stderr)
            return 130
        if args.dry_run:
            return 0
        return run_sweep(args, folder, plan, space, dataset, shared, references, options,
                         trackers, resuming)


def estimate_line(args, plan: Plan, dataset: Dataset, options: TrialOptions) -> str:
    """The plan's wall-time estimate from timed steps on this machine, or why there is none."""
    if args.address:
        return "  estimate: none for a cluster (its machines, not this one, run the trials)"
    if not device_available(options.device):
        return f"  estimate: none (device {options.device} is not on this machine)"
    return format_estimate(estimate_sweep(plan, dataset, _local_slots(options),
                                          options.cpus_per_trial, options.device))


def prepare(args, plan: Plan, options: TrialOptions,
            with_tables: bool) -> tuple[Dataset, ray.ObjectRef | None, dict | None]:
    """(dataset, its ref in Ray's object store, {K: reference metrics} when with_tables).

    The dataset is loaded and validated and the reference metrics computed in a thread
    while Ray starts (not on a dry run) and checks that one trial fits a node, with torch's
    one-time start-up; then the table moves into the object store and the dataset returned
    is the store's read-only view (share_dataset), so the driver holds no copy of its own.
    On a dry run there is no Ray: the loaded dataset and no ref. Loading, checking and the
    reference metrics take seconds, and Ray's start mostly waits for its processes. Raises
    DataError (the data) or SweepError (Ray refused, or no node can hold a trial).
    """
    for source in (plan.data, plan.val_data):
        if source is not None:
            check_source(source)  # a missing file is told now, not after Ray's start
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(load_data, plan, with_tables and not args.dry_run)
        if not args.dry_run:
            start_ray(args.address, args.dashboard, options)
        dataset, references = loading.result()
    if args.dry_run:
        return dataset, None, references
    shared, view = share_dataset(dataset)
    return view, shared, references


def load_data(plan: Plan, with_tables: bool) -> tuple[Dataset, dict | None]:
    """The plan's dataset (with --val-data), checked for every K; its {K: reference_metrics}
    on the validation windows (and global queries) the trials use when ``with_tables``;
    torch warmed up for the time estimate."""
    dataset = load_dataset(plan.data, split_seed=0, val_source=plan.val_data,
                           progress=progress_printer(sys.stdout))
    for context in plan.contexts():
        dataset.check_context(context)
    references = None
    if with_tables:
        print(f"computing the data tables (signals, trivial predictors for K="
              f"{', '.join(map(str, plan.contexts()))}) while Ray starts", flush=True)
        queries, evaluated = plan.fixed["global_queries"] or None, plan.fixed["max_val_windows"]
        contexts = plan.contexts()
        # One pass over the table gives every K's signals: cosines of rows 1 and K apart.
        lag_rows = lag_cosine_rows(dataset.vectors, (1, *contexts))
        references = {context: reference_metrics(dataset, context, queries, evaluated,
                                                 lag_rows[[0, index + 1]])
                      for index, context in enumerate(contexts)}
    warm_up(dataset.dim, dataset.vectors.dtype)
    return dataset, references


def _local_slots(options: TrialOptions) -> int:
    """Trials at once on this machine without asking Ray (a dry run)."""
    return options.max_concurrent or max(1, (os.cpu_count() or 1) // options.cpus_per_trial)


def run_sweep(args, folder: SweepFolder, plan: Plan, space: SearchSpace, dataset: Dataset,
              shared: ray.ObjectRef, references: dict | None, options: TrialOptions,
              trackers: tuple[str, ...], resuming: bool) -> int:
    """Write the driver's files (a new sweep), run the experiment, write the tables, print
    the top. Ray is started and one trial fits on a node (see prepare); the plan and data
    tables are written only now (and, on a cluster, once the storage is shared), so a sweep
    refused before leaves no folder behind."""
    try:
        if args.address:
            check_shared_storage(folder.path.parent)
        if not resuming:
            folder.write_plan(plan)
            folder.write_data_tables(references)
        print(format_data_summary(folder, dataset), flush=True)
        _, interrupted = run_sweep_trials(folder, plan, space, shared, options, trackers,
                                          plan.arguments.get("mlflow_uri"))
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not folder.holds_sweep():  # stopped while Ray started: nothing was written
            return 130
        interrupted = True
        folder.set_state("interrupted")
    # The tables and the analysis read files only: Ray's processes and its copy of the
    # table go now, not at the interpreter's exit (which also waits half a second more).
    ray.shutdown()
    return finish(folder, interrupted)


def finish(folder: SweepFolder, interrupted: bool) -> int:
    """Write trials.parquet/history.parquet, print where they are and the top trials, then
    the analysis; exit code 130 when interrupted, 1 when every trial failed, else 0."""
    trials, _ = write_tables(folder.path)
    print(format_summary(folder, trials))
    if interrupted:
        print(f"interrupted: continue with  python -m tune_p7.sweep --resume --name "
              f"{folder.path.name} --storage-path {folder.path.parent}")
        return 130
    try:
        _, written = write_outputs(folder.path)
    except EveryTrialFailed as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print(f"analysis: {folder.path / 'summary.txt'}, {len(written['plots'])} plots, the "
          f"Optuna study {folder.path / STUDY_FILE} (python -m tune_p7.analyze {folder.path} "
          f"for the full report)")
    return 0


def format_data_summary(folder: SweepFolder, dataset: Dataset) -> str:
    """The data's short form before trials start (python -m tune_p7.data inspect has the
    long one): size, and per K the validation signals and trivial predictors, read from
    the data tables the sweep wrote so nothing is computed twice."""
    signals = folder.read_table("data_signals")
    baselines = folder.read_table("baselines").set_index("predictor")
    lines = [f"data {dataset.source}: {dataset.num_documents} documents, "
             f"{len(dataset.vectors)} chunks, D={dataset.dim}"]
    for row in signals[signals.split == "val"].itertuples():
        trivial = baselines[baselines.context == row.context]
        # Tables of sweeps started before the validation cap have no val_windows: all.
        evaluated = trivial.get("val_windows", pd.Series([row.windows])).iloc[0]
        lines.append(
            f"  K={row.context}: {row.windows} val windows ({evaluated} evaluated); forward signal "
            f"{row.forward_signal:+.4f}, recency {row.recency:+.4f}, coherence "
            f"{row.coherence:.3f}; " + ", ".join(
                f"{name} Δ {metrics.val_margin:+.3f} R@5 {metrics.val_r_at_5:.3f}"
                for name, metrics in trivial.iterrows()))
    return "\n".join(lines)


def format_summary(folder: SweepFolder, trials: pd.DataFrame, top: int = 5) -> str:
    """Where the results are, trial counts by status, the top trials (results.leaderboard:
    those that beat the trivial predictors first, then by final val_margin) and whether the
    best beats them, beside the trivial predictors."""
    lines = [f"results: {folder.path}/trials.parquet ({len(trials)} trials), history.parquet, "
             f"baselines.parquet, data_signals.parquet"]
    if trials.empty:
        return "\n".join(lines)
    counts = trials["status"].value_counts()
    lines.append("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    if "val_margin" not in trials.columns:  # no trial reported an epoch (the reasons follow)
        return "\n".join(lines)
    # The original grid's settings, then whatever else this sweep's space searches.
    settings = dict.fromkeys(["context", "margin", "temperature", "anchor_lambda",
                              *folder.read_plan().optuna.params])
    columns = ["phase", "cell", *settings, "status", "epochs_run", "val_margin",
               "best_val_margin", "val_cos_next", "val_r_at_5", "beats_trivial", "verdict"]
    shown = leaderboard(trials, "val_margin", top)
    lines.append(f"top {len(shown)} (trials that beat all three trivial predictors first, then "
                 f"by final val_margin):")
    lines.append(shown[[c for c in columns if c in shown.columns]].to_string(
        index=False, float_format=lambda value: f"{value:.4f}", na_rep="-"))
    lines.append(best_statement(trials))
    baselines = folder.read_table("baselines")
    if not baselines.empty:
        lines.append("trivial predictors on the same validation windows (a trial is only "
                     "interesting where it beats all three):")
        lines.append(baselines[["context", "predictor", "val_margin", "val_cos_next",
                                "val_r_at_5"]].to_string(
            index=False, float_format=lambda value: f"{value:.4f}"))
    return "\n".join(lines)


if __name__ == "__main__":
    command.run(main)
