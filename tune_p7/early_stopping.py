"""Did ASHA stop the right trials? A check that neither Ray Tune nor Optuna reports.

    table = early_stopping_check(sweep.trials, sweep.history, sweep.plan.optuna.asha)
    early_stopping_notes(table, "profiles.quick.asha.grace_period")   # sentences

ASHA stops a trial at a rung because its val_margin there ranks low, betting that the rung's
order is the final order. For each rung epoch of the plan (AshaPlan.rung_epochs) this
measures that bet on the runs that went all the way (epochs_run >= max_t: the baseline
cells and the completed Optuna trials; confirm re-runs left out):

- runs: how many such runs have a value at the rung and at max_t;
- spearman_rho: the Spearman rank correlation of their value at the rung with their value
  at max_t (NaN below MIN_RUNS runs or when one side is constant);
- stopped: trials ASHA stopped at this rung (status stopped_early, last epoch at or past the
  rung and before the next one);
- stopped_above_a_top_third_run: how many of those had, at the rung, a value strictly above
  the rung value of at least one run that finished in the top third (the ceil(runs / 3)
  best final values): trials stopped although a run that ended near the top was behind them
  there. <NA> when no run finished.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tune_p7.plan import AshaPlan

COLUMNS = ("rung_epoch", "runs", "spearman_rho", "stopped", "stopped_above_a_top_third_run")
MIN_RUNS = 3   # a rank correlation of fewer runs says nothing
LOW_RHO = 0.5  # below this the rung's order says little about the final order


def spearman(first: pd.Series, second: pd.Series) -> float:
    """Spearman's ρ of two aligned series: Pearson's r of their ranks (ties share the mean
    rank), over the pairs where both are numbers; NaN below MIN_RUNS pairs or when one side
    is constant."""
    pairs = pd.DataFrame({"first": first, "second": second}).dropna()
    if len(pairs) < MIN_RUNS:
        return math.nan
    ranks = pairs.rank()
    return float(ranks["first"].corr(ranks["second"]))


def early_stopping_check(trials: pd.DataFrame, history: pd.DataFrame, asha: AshaPlan,
                         metric: str = "val_margin") -> pd.DataFrame:
    """One row per rung epoch of ``asha`` with COLUMNS (see the module); ``metric`` is the
    one ASHA judges (val_margin, higher is better). No rung (or no trial): no row."""
    rungs = asha.rung_epochs()
    if not rungs or trials.empty or history.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    values = (history.pivot_table(index=["experiment", "trial_id"], columns="epoch",
                                  values=metric, aggfunc="last")
              .reindex(columns=range(1, asha.max_t + 1)))   # (trials, epochs)
    keys = pd.MultiIndex.from_frame(trials[["experiment", "trial_id"]])
    values = values.reindex(keys).set_axis(trials.index)
    searched = trials["phase"] != "confirm"
    finished = searched & (trials["status"] == "complete") & (trials["epochs_run"] >= asha.max_t)
    final = values.loc[finished, asha.max_t]
    top_third = final.dropna().sort_values(ascending=False).head(math.ceil(final.notna().sum() / 3))
    stopped_rung = _stopped_rung(trials["epochs_run"], rungs)
    stopped = searched & (trials["status"] == "stopped_early")
    rows = []
    for rung in rungs:
        at_rung = values[rung]
        here = stopped & (stopped_rung == rung)
        weakest_top = at_rung[top_third.index].min()  # of the top-third runs, at this rung
        above = pd.NA if top_third.empty else int((at_rung[here] > weakest_top).sum())
        rows.append({"rung_epoch": rung,
                     "runs": int((at_rung[finished].notna() & final.notna()).sum()),
                     "spearman_rho": spearman(at_rung[finished], final),
                     "stopped": int(here.sum()), "stopped_above_a_top_third_run": above})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"stopped_above_a_top_third_run": "Int64"})


def _stopped_rung(epochs_run: pd.Series, rungs: list[int]) -> pd.Series:
    """The highest rung at or below each trial's last epoch (0 before the first rung)."""
    below = [np.where(epochs_run.to_numpy() >= rung, rung, 0) for rung in rungs]
    return pd.Series(np.max(below, axis=0), index=epochs_run.index)


def early_stopping_notes(table: pd.DataFrame, grace_key: str) -> list[str]:
    """Plain sentences on the check: a rung whose ρ is low (or cannot be computed) is too
    early for this data, and ``grace_key`` (where the grace period is set) is named as the
    fix; stopped trials that were ahead of a top-third run are counted."""
    notes = []
    for row in table.itertuples():
        rung = f"ASHA's rung at epoch {row.rung_epoch}"
        if math.isnan(row.spearman_rho):
            notes.append(f"{rung} cannot be checked: {row.runs} runs reached the last epoch, "
                         f"Spearman ρ needs at least {MIN_RUNS}; trust its stops less, or give "
                         f"it a longer grace period ({grace_key}).")
        elif row.spearman_rho < LOW_RHO:
            notes.append(f"{rung} orders the runs that finished unlike their final val_margin "
                         f"(Spearman ρ {row.spearman_rho:+.2f} over {row.runs} runs): the rungs "
                         f"are too early for this data; give ASHA a longer grace period "
                         f"({grace_key}).")
        if not pd.isna(row.stopped_above_a_top_third_run) and row.stopped_above_a_top_third_run:
            notes.append(f"{row.stopped_above_a_top_third_run} of the {row.stopped} trials "
                         f"stopped at epoch {row.rung_epoch} were ahead there of a run that "
                         f"finished in the top third.")
    return notes
