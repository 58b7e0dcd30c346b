"""Where a sweep's results go besides its folder: Ray Tune's own logger callbacks.

    trackers = parse_trackers("tensorboard,mlflow")     # raises TrackerError naming the fix
    callbacks = logger_callbacks(trackers, folder.path, plan.name, mlflow_uri=None)

- ``tensorboard`` (the default): Ray's TBXLoggerCallback writes event files into every trial
  folder; ``tensorboard --logdir results/NAME/ray`` shows them.
- ``mlflow``: Ray's MLflowLoggerCallback, one MLflow run per trial (params: the full config,
  phase and cell included; metrics: every epoch's). By default into a local store inside the
  sweep folder, ``sqlite:///results/NAME/mlflow.db`` (MLflow 3 refuses new file stores such
  as ``./mlruns`` unless told otherwise and recommends SQLite); ``mlflow_uri`` for a server.
- ``wandb``: Ray's WandbLoggerCallback, one W&B run per trial with the full config, written
  under ``results/NAME/wandb/``; offline (``offline-run-*`` folders, ``wandb sync`` uploads
  them later) unless the user is logged in to W&B or sets WANDB_MODE.

Ray's JSON and CSV loggers always run: result.json is what the sweep's tables are read from.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# tracker -> (the package it needs, what to pip install for it)
TRACKERS = {"tensorboard": ("tensorboardX", "tensorboardX"),
            "mlflow": ("mlflow", "'tune-p7[mlflow]'"), "wandb": ("wandb", "'tune-p7[wandb]'")}
DEFAULT_TRACKERS = ("tensorboard",)
MLFLOW_STORE = "mlflow.db"


class TrackerError(ValueError):
    """A tracker that cannot be used; the message is one sentence naming the fix."""


def parse_trackers(text: str) -> tuple[str, ...]:
    """The tracker names of a ``--log-to`` value ("tensorboard,mlflow"; "none" for none).

    Raises TrackerError for an unknown name or one whose package is not installed.
    """
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if names == ("none",):
        return ()
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"--log-to {text}: unknown tracker {name!r}; use any of "
                               f"{', '.join(TRACKERS)} (comma-separated) or none.")
        package, install = TRACKERS[name]
        if not installed(package):
            raise TrackerError(f"--log-to {name} needs the {package} package; install it "
                               f"with pip install {install}.")
    return names


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (a None entry in sys.modules blocks it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def default_mlflow_uri(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / MLFLOW_STORE}"


def logger_callbacks(trackers: tuple[str, ...], sweep_dir: str | Path, name: str,
                     mlflow_uri: str | None = None) -> list:
    """Ray logger callbacks: JSON and CSV always, then one per tracker.

    sweep_dir: the sweep folder (local stores go inside it). name: the sweep's name (MLflow
    experiment, W&B group). mlflow_uri: MLflow tracking URI (default the folder's SQLite).
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    callbacks = [JsonLoggerCallback(), CSVLoggerCallback()]
    if "tensorboard" in trackers:
        callbacks.append(TBXLoggerCallback())
    if "mlflow" in trackers:
        callbacks.append(mlflow_callback(sweep_dir, name, mlflow_uri))
    if "wandb" in trackers:
        callbacks.append(wandb_callback(sweep_dir, name))
    return callbacks


def mlflow_callback(sweep_dir: str | Path, name: str, uri: str | None):
    """Ray's MLflowLoggerCallback into experiment ``name`` (see SweepMLflowLogger).

    In the default local store the experiment is created with its artifact folder inside the
    sweep folder (MLflow would put it under the working directory)."""
    from mlflow.tracking import MlflowClient

    if uri is None:
        uri = default_mlflow_uri(sweep_dir)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(name) is None:
            artifacts = (Path(sweep_dir).resolve() / "mlartifacts").as_uri()
            client.create_experiment(name, artifact_location=artifacts)
    return _mlflow_logger_class()(tracking_uri=uri, experiment_name=name,
                                  tags={"sweep": name})


def _mlflow_logger_class():
    """SweepMLflowLogger, defined on first use so that mlflow is imported only when asked."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.utils import flatten_dict

    class SweepMLflowLogger(MLflowLoggerCallback):
        """Ray's MLflowLoggerCallback with one batch write per trial start and per epoch
        (Ray's writes each value as its own call, one SQLite commit each: about 60 per epoch
        and 35 params per trial, in the driver's loop), a run per trial that survives a resume (a restored trial logs into
        the run it had, found by Ray's trial_name tag), named <cell or "optuna">-<trial id>,
        tagged with phase and cell, metrics at step = epoch. Params: the full config.
        Restored trials that ended before the resume keep their run as it was."""

        def log_trial_start(self, trial):
            if trial in self._trial_runs:
                return
            client = MlflowClient(self.tracking_uri)
            found = client.search_runs([self.mlflow_util.experiment_id],
                                       f"tags.trial_name = '{trial}'", max_results=1)
            if found:
                self._trial_runs[trial] = found[0].info.run_id
                return
            cell, phase = trial.config.get("cell", ""), trial.config.get("phase", "")
            run = self.mlflow_util.start_run(
                run_name=f"{cell or phase}-{trial.trial_id}",
                tags={**self.tags, "trial_name": str(trial), "phase": phase, "cell": cell})
            self._trial_runs[trial] = run.info.run_id
            client.log_batch(run.info.run_id, params=[
                Param(key, str(value)) for key, value in flatten_dict(trial.config).items()])

        def log_trial_result(self, iteration: int, trial, result: dict):
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, step)
                       for key, value in flatten_dict(result).items()
                       if not key.startswith("config/") and isinstance(value, (int, float))
                       and not isinstance(value, bool)]
            MlflowClient(self.tracking_uri).log_batch(self._trial_runs[trial], metrics=metrics)

        def on_experiment_end(self, trials, **info):
            """Once every trial ended, a run still RUNNING belongs to a trial that a hard kill
            took before Ray saved it (Ray ran it again under a new id): KILLED."""
            super().on_experiment_end(trials, **info)
            if any(trial.status not in ("TERMINATED", "ERROR") for trial in trials):
                return
            client = MlflowClient(self.tracking_uri)
            ours = set(self._trial_runs.values())
            for run in client.search_runs([self.mlflow_util.experiment_id],
                                          "attributes.status = 'RUNNING'"):
                if run.info.run_id not in ours:
                    client.set_terminated(run.info.run_id, status="KILLED")

    return SweepMLflowLogger


def wandb_callback(sweep_dir: str | Path, name: str):
    """Ray's WandbLoggerCallback: project $WANDB_PROJECT (default tune_p7), group ``name``,
    runs under sweep_dir/wandb/, offline unless logged in or WANDB_MODE says otherwise."""
    import wandb
    from ray.air.integrations.wandb import WandbLoggerCallback

    mode = os.environ.get("WANDB_MODE") or (
        "online" if wandb.login(prompt=False, verify=False) else "offline")
    os.environ["WANDB_MODE"] = mode  # Ray looks for an API key unless this says offline
    return WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "tune_p7"), group=name,
                               mode=mode, dir=str(Path(sweep_dir).resolve()))
