"""The sweep's live Optuna study: ``results/NAME/optuna.db`` (SQLite), and what reads it.

    optuna-dashboard sqlite:///results/NAME/optuna.db     # while the sweep runs, and after
    study = load_study("results/NAME")                    # None when the folder has none
    importances(study)                                    # DataFrame parameter, importance

The sweep's searcher (tune_p7.searcher) writes the study as trials start, report and end:
every cell and every Optuna trial is one Optuna trial, so the study is the sweep's TPE
history itself, not a copy made afterwards. Confirm re-runs are not in it (they measure
noise, not the search). This module knows Optuna only, not Ray, so the analysis reads the
study without starting anything.

- params: the searched settings (the space's Optuna distributions) plus every field in which
  a cell differs from the Optuna trials (e.g. context), recorded for every trial so the cells
  and the trials share one parameter set (:func:`recorded_distributions`).
- value: the final val_margin (direction maximize); intermediate values: val_margin per epoch
  (step = epoch).
- state: RUNNING while the trial trains (and while an interrupted sweep waits for --resume),
  COMPLETE after its last epoch, PRUNED when ASHA stopped it (value: its last epoch's),
  FAIL when it failed or diverged, or was started just before a hard kill and never resumed.
- user attrs: trial_id (Ray's), phase, cell; at its end epochs_run and the last epoch's
  val_cos_next, val_cos_prev, val_r_at_5, train_margin.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from tune_p7.files import atomic_path
from tune_p7.plan import Plan
from tune_p7.space import observed_param

STUDY_FILE = "optuna.db"
# Settings of how a trial runs, not what it computes: never study parameters.
EXECUTION_FIELDS = ("threads", "device", "phase", "cell")
SQLITE_TIMEOUT_S = 30  # a dashboard reading the file holds a lock for a moment


def storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}"


def open_storage(sweep_dir: str | Path) -> optuna.storages.RDBStorage:
    """The SQLite storage of the sweep's study (created with the file when absent)."""
    return optuna.storages.RDBStorage(
        storage_url(sweep_dir), engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def create_study_file(sweep_dir: str | Path, name: str, direction: str) -> None:
    """Create sweep_dir/optuna.db holding the empty study ``name``, unless it exists.

    Written beside the target and renamed (tune_p7.files.atomic_path), so a dashboard that
    opens the file while the sweep starts never finds half a schema or no study.
    """
    path = Path(sweep_dir) / STUDY_FILE
    if path.exists():
        return
    with atomic_path(path) as temporary:
        storage = optuna.storages.RDBStorage(f"sqlite:///{temporary}")
        optuna.create_study(storage=storage, study_name=name, direction=direction)
        storage.engine.dispose()


def load_study(sweep_dir: str | Path) -> optuna.Study | None:
    """The study in sweep_dir/optuna.db, or None when there is none (yet)."""
    if not (Path(sweep_dir) / STUDY_FILE).exists():
        return None
    storage = open_storage(sweep_dir)
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[0], storage=storage) if names else None


def recorded_distributions(plan: Plan, searched: dict) -> dict:
    """{parameter: distribution} every trial of the study records.

    searched: the space's Optuna distributions. Added: each other TrainConfig field in which
    a cell differs from the Optuna trials' settings (plan.fixed), over every value it takes,
    of the kind space.observed_param infers (integer range, float range or choices).
    """
    distributions = dict(searched)
    for name, base in plan.fixed.items():
        if name in searched or name in EXECUTION_FIELDS:
            continue
        varied = observed_param(None, [base, *(cell[name] for cell in plan.cells)])
        if varied is not None:
            distributions[name] = varied.optuna()
    return distributions


def fail_stale_trials(study: optuna.Study, live: set[int] = frozenset()) -> int:
    """End as FAIL every RUNNING or WAITING trial whose number is not in ``live``.

    A hard kill can leave a trial the searcher had just asked for (RUNNING) or enqueued
    (WAITING) and that no Ray trial will ever report to; Optuna marks a trial whose process
    died FAIL. Returns how many were closed.
    """
    closed = 0
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.tell(study.ask(), state=TrialState.FAIL)  # ask takes the oldest waiting trial
        closed += 1
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number not in live:
            study.tell(trial.number, state=TrialState.FAIL)
            closed += 1
    return closed


def importances(study: optuna.Study | None) -> pd.DataFrame:
    """Optuna's parameter importances (default evaluator) of the completed trials.

    Columns: parameter, importance (sums to 1). Empty without a study, with fewer than two
    completed trials or when no parameter varies, where importances are undefined.
    """
    empty = pd.DataFrame(columns=["parameter", "importance"])
    if study is None:
        return empty
    completed = study.get_trials(states=(TrialState.COMPLETE,), deepcopy=False)
    if len(completed) < 2:
        return empty
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. no parameter varies among completed trials
        return empty
    return pd.DataFrame(list(values.items()), columns=["parameter", "importance"])
