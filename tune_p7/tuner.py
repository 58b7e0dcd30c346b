"""Ray Tune wiring: how trials run, Ray's start, the progress lines, the two kinds of experiment.

    options = trial_options(args)                 # from add_trial_arguments' flags, checked
    start_ray(address=None, dashboard=False, options=options)  # one trial must fit a node
    grid, interrupted = run_sweep_trials(folder, plan, space, dataset, options, trackers)
    grid, interrupted = run_fixed_trials(folder, "confirm-...", configs, dataset, options)

Every experiment lives in the sweep folder (``ray/<experiment>``, tune_p7.folder), shares the
dataset through Ray's object store (``tune.with_parameters``; ``share_dataset`` puts it there
once and gives the driver the store's view), reserves the same resources
per trial, keeps one checkpoint per trial (train's state after its last epoch), retries a
failed trial from it, prints one line per trial epoch and a progress line per ended trial,
and continues with ``Tuner.restore`` when the folder already holds it. The sweep is one
experiment (cells, then TPE under seeded ASHA: ``run_sweep_trials``); tune_p7.confirm runs
fixed configs (``run_fixed_trials``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tune_p7.config import TrainConfig
from tune_p7.data import Dataset
from tune_p7.devices import DeviceError, trial_device
from tune_p7.folder import SweepFolder, ray_trial_states, read_error, repair_experiment_state
from tune_p7.plan import EpochBudget, Plan
from tune_p7.resources import ResourceError, check_trial_fits, trial_bundle
from tune_p7.sweep_progress import TrialCount, format_progress, measure
from tune_p7.scheduler import SeededASHA
from tune_p7.searcher import SweepSearch
from tune_p7.space import SearchSpace
from tune_p7.study import recorded_distributions
from tune_p7.trackers import DEFAULT_TRACKERS, logger_callbacks
from tune_p7.train import format_epoch
from tune_p7.trainable import LABELS, p7_trainable

METRIC, MODE = "val_margin", "max"
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
    # Loggers are the ones asked for (tune_p7.trackers: JSON and CSV always, TensorBoard by
    # default); without this Ray adds TensorBoard's to every experiment.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
SWEEP_EXPERIMENT = "sweep"  # ray/sweep: the cells and the Optuna trials
STARTED = time.time()  # progress lines count seconds from here (the command's start)


class SweepError(ValueError):
    """A user error in how trials are to run; the message is one sentence naming the fix."""


@dataclass
class TrialOptions:
    """How trials run (not what they compute): resources, concurrency, retries.

    cpus_per_trial: CPUs reserved per trial; also its torch threads (TrainConfig.threads).
    gpus_per_trial: GPUs per trial, fractional allowed (0.25 = four trials share one GPU).
    device: TrainConfig.device of every trial (trial_options resolves "auto").
    memory_per_trial: GiB of Ray's memory resource reserved per trial (0: none).
    max_concurrent: trials at once; 0 = as many as the cluster's CPUs/GPUs allow.
    reuse_actors: reuse trial workers between trials (saves the worker start-up).
    max_failures: retries of a failed trial from its last epoch checkpoint.
    progress: print one line per trial epoch.
    resource_wait: seconds a cluster may take to offer a node that fits one trial.
    """

    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    device: str = "auto"
    max_concurrent: int = 0
    reuse_actors: bool = True
    max_failures: int = 2
    progress: bool = True
    memory_per_trial: float = 0.0
    resource_wait: float = 120.0

    def bundle(self) -> dict[str, float]:
        """One trial's Ray resources (tune_p7.resources.trial_bundle)."""
        return trial_bundle(self.cpus_per_trial, self.gpus_per_trial, self.memory_per_trial)


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of TrialOptions and --address, shared by the sweep and confirm."""
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials at once (default: as many as CPUs/GPUs allow)")
    parser.add_argument("--cpus-per-trial", type=int, default=1,
                        help="CPUs per trial, also its torch threads (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial, fractions share a GPU (default 0)")
    parser.add_argument("--memory-per-trial", type=float, default=0.0,
                        help="GiB of memory Ray reserves per trial (default 0: none)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                        help="start a fresh worker for every trial")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="retries of a failed trial from its last epoch checkpoint, each "
                             "on a fresh worker (default 2; 0 when failures are the config's "
                             "own, e.g. a diverging learning rate)")
    parser.add_argument("--address", help="connect to a Ray cluster ('auto' or host:port) "
                                          "instead of starting Ray on this machine")
    parser.add_argument("--resource-wait", type=float, default=120.0,
                        help="with --address: seconds to wait for a node that fits one trial "
                             "(an autoscaler may add one) before giving up (default 120)")


def trial_options(args: argparse.Namespace) -> TrialOptions:
    """TrialOptions from add_trial_arguments' flags; raises SweepError for a bad value."""
    if args.cpus_per_trial < 1:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial} must be at least 1.")
    if args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial} must be 0 or more.")
    if args.device == "cuda" and args.gpus_per_trial == 0:
        raise SweepError("--device cuda needs --gpus-per-trial above 0 (e.g. 0.25 for four "
                         "trials per GPU); Ray hides GPUs from trials that reserve none.")
    if args.max_concurrent < 0:
        raise SweepError(f"--max-concurrent {args.max_concurrent} must be 0 (automatic) or more.")
    if args.memory_per_trial < 0 or args.resource_wait < 0:
        raise SweepError(f"--memory-per-trial ({args.memory_per_trial}) and --resource-wait "
                         f"({args.resource_wait}) must be 0 or more.")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures {args.max_failures} must be 0 (no retry) or more.")
    try:
        device = trial_device(args.device, args.gpus_per_trial, on_cluster=bool(args.address))
    except DeviceError as error:
        raise SweepError(str(error)) from None
    return TrialOptions(args.cpus_per_trial, args.gpus_per_trial, device,
                        args.max_concurrent, args.reuse_actors, args.max_failures,
                        memory_per_trial=args.memory_per_trial, resource_wait=args.resource_wait)


# ---------------------------------------------------------------------------------------
# Ray


def start_ray(address: str | None, dashboard: bool, options: TrialOptions | None = None) -> None:
    """Connect to ``address`` or start a private local Ray on loopback (no usage stats);
    then, given ``options``, make sure one trial fits on a node (tune_p7.resources)."""
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
        # Ray says on stderr that token authentication is on: a private local Ray's
        # default, and not news for a user whose error message should stand alone.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        # address="local": never attach to someone else's `ray start` on this machine.
        # (Ray 2.60 turns a node ip of 127.0.0.1 into the machine's address, so none is
        # given; its ports are protected by Ray's token authentication.)
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False, logging_level="WARNING")
    if options is not None:
        try:
            check_trial_fits(options.bundle(), address, options.resource_wait)
        except ResourceError as error:
            raise SweepError(str(error)) from None


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


# ---------------------------------------------------------------------------------------
# Progress


class EpochPrinter(tune.Callback):
    """Prints one line per trial epoch and one per ended trial, then the progress.

    stop_reasons: {trial_id: why the scheduler stopped it} (SeededASHA.stopped), if any.
    budget: the epochs the experiment's trials may run; with it, every ended trial is
    followed by a progress line (tune_p7.sweep_progress), also recorded in sweep.json.
    Times count from the command's start (STARTED), also after a resume.
    """

    def __init__(self, stop_reasons: dict[str, str] | None = None,
                 budget: EpochBudget | None = None, folder: SweepFolder | None = None):
        # The scheduler's own dict (empty at first, filled as it stops trials), not a copy.
        self.stop_reasons = {} if stop_reasons is None else stop_reasons
        self.budget, self.folder = budget, folder
        self.session: tuple[float, int] | None = None  # (time, epochs run) at the first start

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.session is None:
            self.session = (time.time(), sum(_epochs_run(other) for other in trials))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._print(trial, format_epoch(result, result.get("config", {}).get("epochs")))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, f"ERROR {read_error(Path(trial.local_path or '')) or 'failed'}")
        self._progress(trials, trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = _epochs_run(trial)
        if epochs == trial.config.get("epochs"):
            self._print(trial, "done")
        else:
            reason = self.stop_reasons.get(trial.trial_id)
            self._print(trial, f"stopped by ASHA at epoch {epochs}"
                        + (f" ({reason})" if reason else ""))
        self._progress(trials, trial)

    def _progress(self, trials, ended) -> None:
        """The progress line after ``ended`` ended (Ray marks it only after the callbacks)."""
        if self.budget is None:
            return
        counts = [TrialCount(_epochs_run(trial), int(trial.config.get("epochs", 0)),
                             trial.config.get("phase") == "optuna",
                             trial is ended or trial.status in (Trial.TERMINATED, Trial.ERROR))
                  for trial in trials]
        now, rate = time.time(), None
        if self.session is not None:
            run = sum(count.epochs_run for count in counts) - self.session[1]
            rate = run / (now - self.session[0]) if run > 0 and now > self.session[0] else None
        progress = measure(counts, self.budget, now - STARTED, rate)
        _stamped(f"progress  {format_progress(progress)}")
        if self.folder is not None:
            self.folder.set_progress({**progress, "updated": datetime.now().isoformat(
                timespec="seconds")})

    def _print(self, trial, text: str) -> None:
        _stamped(f"{_label(trial.config)}  {text}")


def _stamped(text: str) -> None:
    """Print ``text`` after the seconds since the command started."""
    print(f"[{time.time() - STARTED:6.0f}s] {text}", flush=True)


def _epochs_run(trial) -> int:
    return int((trial.last_result or {}).get("epoch", 0))


def _label(config: dict) -> str:
    if config.get("cell"):
        return f"{config.get('phase', '')}/{config['cell']}".ljust(24)
    return (f"{config.get('phase', '')} m={config.get('margin', 0):.3f} "
            f"T={config.get('temperature', 0):.3f} λ={config.get('anchor_lambda', 0):.2f}")


# ---------------------------------------------------------------------------------------
# Experiments


def run_fixed_trials(folder: SweepFolder, experiment: str, configs: list[dict],
                     dataset: Dataset, options: TrialOptions | None = None):
    """Run fixed configs as one Tune experiment ``ray/<experiment>`` of ``folder``; resumable.

    folder: an existing sweep folder (holds sweep.json). experiment: the sub-folder name
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
    trainable = _trainable(dataset, options)
    points = [_execution_settings(_full_config(config), options) for config in configs]
    epochs = max(point["epochs"] for point in points)
    existing = _restorable(folder, experiment)
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
            run_config=_run_config(folder, experiment, options,
                                   budget=EpochBudget(len(points), 0, epochs, epochs)))
    return _fit(folder, tuner, len(configs))


def check_resumable(folder: SweepFolder) -> None:
    """Refuse to resume a sweep folder of the two-experiment layout (ray/baseline and
    ray/optuna, before the sweep became one experiment): its trials cannot be continued."""
    older = [name for name in ("baseline", "optuna") if folder.experiment_dir(name).is_dir()]
    if older and not folder.experiment_dir(SWEEP_EXPERIMENT).is_dir():
        raise SweepError(f"{folder.path} holds a sweep of an older tune_p7 (ray/"
                         f"{' and ray/'.join(older)}, not ray/{SWEEP_EXPERIMENT}); analyse it "
                         f"as it is, or start a new sweep with another --name.")


def run_sweep_trials(folder: SweepFolder, plan: Plan, space: SearchSpace,
                     dataset: Dataset | ray.ObjectRef, options: TrialOptions, trackers: tuple[str, ...] = DEFAULT_TRACKERS,
                     mlflow_uri: str | None = None):
    """The sweep as one Tune experiment ``ray/sweep``: the cells, then TPE trials; resumable.

    The searcher (tune_p7.searcher.SweepSearch) suggests the plan's cells first, with their
    settings fixed, then TPE's trials, and keeps every trial in the live study
    ``optuna.db``; the scheduler (tune_p7.scheduler.SeededASHA) never stops a cell and puts
    its values at the rungs as they arrive. So Optuna trials start while the last cells
    still run, and TPE and the rungs learn from each cell as it reports. trackers,
    mlflow_uri: where results go besides the folder (tune_p7.trackers). dataset: the
    Dataset or its ref from share_dataset. On a resume Ray
    restores searcher, scheduler and callbacks as the sweep built them. Returns (ResultGrid,
    interrupted).
    """
    total = len(plan.cells) + plan.optuna.trials
    trainable = _trainable(dataset, options)
    base = _execution_settings({**plan.fixed, **plan.optuna.trial_settings(), "phase": "optuna",
                                "cell": ""}, options)
    existing = _restorable(folder, SWEEP_EXPERIMENT)
    if existing:
        tuner = tune.Tuner.restore(str(existing), trainable, resume_unfinished=True,
                                   param_space=base)
        return _fit(folder, tuner, total)
    cells = [_execution_settings(_full_config(cell), options) for cell in plan.cells]
    searched = space.optuna_distributions()
    sampler = optuna.samplers.TPESampler(seed=plan.seed, constant_liar=True,
                                         n_startup_trials=space.startup_trials)
    searcher = SweepSearch(cells, searched, recorded_distributions(plan, searched), base,
                           METRIC, MODE, sampler, folder.path, plan.name)
    asha = plan.optuna.asha
    scheduler = SeededASHA(METRIC, MODE, asha.grace_period, asha.reduction_factor, asha.max_t)
    tuner = tune.Tuner(
        trainable, param_space=base,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=total,
            max_concurrent_trials=concurrency(options), reuse_actors=options.reuse_actors,
            trial_dirname_creator=trial_dirname),
        run_config=_run_config(folder, SWEEP_EXPERIMENT, options,
                               logger_callbacks(trackers, folder.path, plan.name, mlflow_uri),
                               plan.budget(), scheduler.stopped))
    return _fit(folder, tuner, total)


def share_dataset(dataset: Dataset) -> tuple[ray.ObjectRef, Dataset]:
    """Put ``dataset`` in Ray's object store once: (its ref, for the trials; the store's
    read-only zero-copy view of it, for the driver to keep instead of its own copy, so the
    table is held once on this machine). Ray must be started."""
    shared = ray.put(dataset)
    return shared, ray.get(shared)


def _trainable(dataset: Dataset | ray.ObjectRef, options: TrialOptions):
    """The trainable with the dataset in the object store (put there now unless it is a ref
    from share_dataset) and the trial's resources."""
    return tune.with_resources(tune.with_parameters(p7_trainable, dataset=dataset),
                               options.bundle())


def _run_config(folder: SweepFolder, experiment: str, options: TrialOptions,
                loggers: list | None = None, budget: EpochBudget | None = None,
                stop_reasons: dict[str, str] | None = None):
    """RunConfig of an experiment in ``folder``: loggers (default TensorBoard's, plus Ray's
    JSON and CSV), the progress printer, retries, one checkpoint per trial."""
    if loggers is None:
        loggers = logger_callbacks(DEFAULT_TRACKERS, folder.path, folder.path.name)
    printer = [EpochPrinter(stop_reasons, budget, folder)] if options.progress else []
    return tune.RunConfig(
        storage_path=str(folder.ray_dir), name=experiment,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[*printer, *loggers], verbose=0)


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
    settings = {k: v for k, v in config.items() if k not in LABELS}
    return {**TrainConfig.from_dict(settings).to_dict(), "phase": config.get("phase", ""),
            "cell": config.get("cell", "")}


def _execution_settings(config: dict, options: TrialOptions) -> dict:
    """A config with the run's execution settings: torch threads = CPUs, device."""
    return {**config, "threads": options.cpus_per_trial, "device": options.device}


def _restorable(folder: SweepFolder, experiment: str) -> Path | None:
    """The experiment's folder if Tuner.restore can continue it (repaired first), else None."""
    path = folder.experiment_dir(experiment)
    if not path.is_dir():
        return None
    repair_experiment_state(path)
    return path if tune.Tuner.can_restore(str(path)) else None


def _fit(folder: SweepFolder, tuner, expected: int):
    """Tuner.fit with the sweep state recorded; returns (ResultGrid, interrupted).

    Ray stops gracefully on Ctrl-C and fit() returns, counting the trials it cut short as
    terminated; so a run is interrupted when fewer than ``expected`` trials ended or when
    Ray's saved state leaves any trial neither TERMINATED nor ERROR.
    """
    folder.set_state("running")
    try:
        grid = tuner.fit()
    except BaseException:
        folder.set_state("interrupted")
        raise
    states = ray_trial_states(Path(grid.experiment_path))
    unfinished = [name for name, trial in states.items()
                  if trial["status"] not in ("TERMINATED", "ERROR")]
    interrupted = bool(unfinished) or grid.num_terminated + grid.num_errors < expected
    folder.set_state("interrupted" if interrupted else "finished")
    return grid, interrupted
