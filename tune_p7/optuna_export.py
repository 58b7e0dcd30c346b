"""The sweep as an Optuna study in SQLite, for optuna-dashboard and Optuna's analysis tools.

    study = export_study(load_sweep("results/NAME"))       # writes results/NAME/optuna.db
    optuna.importance.get_param_importances(study)
    # optuna-dashboard sqlite:///results/NAME/optuna.db

The study is rebuilt from the DataFrames every time (written to a temporary file, then
renamed, so a dashboard never reads half a study). One Optuna trial per sweep trial
(confirm re-runs left out: they measure noise, not the search):

- params: the searched hyperparameters (sweep.json "optuna.params": FloatDistribution,
  IntDistribution with its step, CategoricalDistribution, log flags kept) plus any field in
  which the baseline cells differ (e.g. context, as an IntDistribution; a string or boolean
  field as a CategoricalDistribution). A distribution is widened to hold every trial's
  value, so every trial is in the study even where one lies outside the searched space.
- value: the final val_margin (the direction is maximize); intermediate values: val_margin
  per epoch (step = epoch).
- state: complete -> COMPLETE, stopped_early -> PRUNED (ASHA), error -> FAIL, interrupted ->
  FAIL (as Optuna marks a trial whose process died), running -> RUNNING, pending -> WAITING.
- user attrs: trial_id, experiment, phase, cell, status, verdict, flags, epochs_run and
  the last epoch's val_cos_next, val_cos_prev, val_cos_anchor, val_r_at_5, train_margin.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from tune_p7.files import atomic_path
from tune_p7.plan import Plan
from tune_p7.results import Sweep, plain
from tune_p7.space import observed_param

STUDY_FILE = "optuna.db"
STATES = {"complete": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED,
          "error": TrialState.FAIL, "interrupted": TrialState.FAIL,
          "running": TrialState.RUNNING, "pending": TrialState.WAITING}
VALUE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ATTRIBUTES = ("trial_id", "experiment", "phase", "cell", "status", "verdict", "flags",
              "epochs_run", "val_cos_next", "val_cos_prev", "val_cos_anchor", "val_r_at_5",
              "train_margin")


def export_study(sweep: Sweep, path: str | Path | None = None) -> optuna.Study:
    """Write the sweep's trials as an Optuna study to ``path`` (default sweep/optuna.db).

    Returns the study, loaded from the written file. The study name is the sweep folder's.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per export
    path = Path(path or sweep.path / STUDY_FILE)
    name = sweep.path.name
    trials = sweep.trials[sweep.trials["phase"] != "confirm"]
    distributions = study_distributions(sweep.plan, trials, sweep.parameters())
    # Every trial is committed before the rename; SQLite keeps no journal between them.
    with atomic_path(path) as temporary:
        study = optuna.create_study(storage=f"sqlite:///{temporary}", study_name=name,
                                    direction="maximize")
        study.set_user_attr("metric", "val_margin (final epoch)")
        for _, trial in trials.iterrows():
            study.add_trial(_frozen_trial(trial, sweep.history, distributions))
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


def study_distributions(plan: Plan, trials: pd.DataFrame, parameters: list[str]) -> dict:
    """{parameter: distribution}: the plan's searched specs (and the fields the cells vary)
    as Optuna distributions of their kind, each widened to hold every trial's value
    (tune_p7.space.observed_param); a field with no spec and one value is left out."""
    distributions = {}
    for name in parameters:
        param = observed_param(plan.optuna.params.get(name), trials[name].dropna().tolist())
        if param is not None:
            distributions[name] = param.optuna()
    return distributions


def _frozen_trial(trial: pd.Series, history: pd.DataFrame, distributions: dict):
    """One sweep trial as an Optuna FrozenTrial (see the module docstring for the mapping)."""
    state = STATES[trial["status"]]
    epochs = history[(history["experiment"] == trial["experiment"])
                     & (history["trial_id"] == trial["trial_id"])]
    intermediate = {int(e): float(v) for e, v in zip(epochs["epoch"], epochs["val_margin"])
                    if math.isfinite(v)}
    value = trial.get("val_margin")
    has_value = state in VALUE_STATES and value is not None and math.isfinite(value)
    if state in VALUE_STATES and not has_value:
        state = TrialState.FAIL  # ended without a finite margin: nothing to rank
    params = {name: plain(trial[name]) for name in distributions}
    return create_trial(params=params, distributions=distributions,
                        value=float(value) if has_value else None,
                        intermediate_values=intermediate, state=state,
                        user_attrs={name: plain(trial.get(name)) for name in ATTRIBUTES})



def importances(study: optuna.Study) -> pd.DataFrame:
    """Optuna's parameter importances (default evaluator) of the completed trials.

    Columns: parameter, importance (sums to 1). Empty when fewer than two completed trials
    or no parameter varies, where importances are undefined.
    """
    completed = study.get_trials(states=(TrialState.COMPLETE,), deepcopy=False)
    if len(completed) < 2:
        return pd.DataFrame(columns=["parameter", "importance"])
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. no parameter varies among completed trials
        return pd.DataFrame(columns=["parameter", "importance"])
    return pd.DataFrame(list(values.items()), columns=["parameter", "importance"])
