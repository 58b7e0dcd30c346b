"""Sweep folder -> DataFrames: trials (one row per trial) and history (one row per trial, epoch).

    sweep = load_sweep("results/NAME")                 # .trials, .history, .baselines, ...
    sweep.leaderboard("val_cos_next", top=10)          # DataFrames all the way
    trials, history = write_tables("results/NAME")     # what the sweep calls at its end

The folder layout is the contract in docs/sweep-folder.md, read through tune_p7.folder.
Tables are built from Ray's per-trial files (params.json, result.json, error.txt), so they
can be read while a sweep
runs, after it was interrupted, and when trials failed. Column names are the training
history's names (tune_p7.train), so a sweep and a single ``python -m tune_p7.train`` run
are analysed the same way. Verdicts and flags (tune_p7.verdicts) are columns of trials.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from tune_p7.config import TrainConfig
from tune_p7.folder import (RAY_FOLDER, SweepFolder, ray_trial_states, read_error, read_params,
                            read_results, trial_id)
from tune_p7.plan import Plan
from tune_p7.space import typed_settings
from tune_p7.verdicts import Criteria, annotate

KEYS = ("trial_id", "experiment", "phase", "cell")
STATUSES = ("complete", "stopped_early", "error", "running", "pending", "interrupted")
# The config's anchor_lambda is the initial lambda; the learned value of the last epoch
# gets its own name in the trials table.
RENAMED_LAST_METRICS = {"anchor_lambda": "final_anchor_lambda"}
CONFIG_FIELDS = tuple(field.name for field in fields(TrainConfig))
# The columns a trials table has even before any trial exists.
TRIAL_COLUMNS = (*KEYS, "trial_dir", *CONFIG_FIELDS, "status", "error", "epochs_run",
                 "stopped_early", "best_val_margin", "best_epoch", "seconds")


class NotASweep(ValueError):
    """The path holds no sweep folder; the message is one sentence naming it."""


def collect_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and history DataFrames read from Ray's trial folders under sweep_dir/ray/.

    trials: one row per trial: KEYS, trial_dir (relative to sweep_dir), every params.json
        key (TrainConfig fields under their own names), status (see trial_status), error,
        epochs_run, stopped_early, best_val_margin, best_epoch, the last epoch's metrics
        (anchor_lambda as final_anchor_lambda), seconds (sum of epoch seconds), then the
        verdict and flag columns of tune_p7.verdicts with the default Criteria.
    history: one row per trial and epoch: KEYS, epoch, every metric of the training history.
    """
    folder = SweepFolder(sweep_dir)
    if not (folder.path / RAY_FOLDER).is_dir():
        raise NotASweep(f"{folder.path} is not a sweep folder (it has no ray/ sub-folder); "
                        f"pass the folder that python -m tune_p7.sweep wrote.")
    running = folder.is_running()
    rows, histories, states = [], [], {}
    for experiment_dir, trial_dir in folder.trial_dirs():
        if experiment_dir not in states:
            states[experiment_dir] = ray_trial_states(experiment_dir)
        params = read_params(trial_dir)
        if params is None:
            warnings.warn(f"{trial_dir}: params.json is empty or cut short (the sweep was "
                          f"killed while writing it); this trial is left out until "
                          f"--resume runs it again.", stacklevel=2)
            continue
        row, history = read_trial(trial_dir, params,
                                  states[experiment_dir].get(trial_dir.name, {}), running)
        row["trial_dir"] = str(trial_dir.relative_to(folder.path))
        rows.append(row)
        histories.append(history)
    history = _history_frame(histories)
    trials = annotate(_trials_frame(rows), history, folder.read_table("baselines"))
    return trials, history


def write_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """collect_tables, then write sweep_dir/trials.parquet and history.parquet atomically."""
    trials, history = collect_tables(sweep_dir)
    folder = SweepFolder(sweep_dir)
    folder.write_table("trials", trials)
    folder.write_table("history", history)
    return trials, history


def read_trial(trial_dir: Path, params: dict, ray_trial: dict,
               sweep_running: bool) -> tuple[dict, pd.DataFrame]:
    """One trial folder and its params.json content -> (trials row, history frame).

    ray_trial: {"status": TERMINATED | ERROR | RUNNING | ..., "trial_id"} from Ray's
    experiment state, or {} when unknown. sweep_running: SweepFolder.is_running().
    """
    epochs = read_results(trial_dir / "result.json").epochs
    error = read_error(trial_dir)
    labels = {"trial_id": trial_id(trial_dir, ray_trial.get("trial_id")),
              "experiment": trial_dir.parent.name,
              "phase": params.get("phase", ""), "cell": params.get("cell", "") or ""}
    history = pd.DataFrame([{**labels, **epoch} for epoch in epochs])
    planned = int(params.get("epochs", TrainConfig().epochs))
    status = trial_status(len(epochs), planned, bool(error), ray_trial.get("status"),
                          sweep_running)
    row = {**labels, **{k: v for k, v in params.items() if k not in labels},
           "status": status, "error": error, "epochs_run": len(epochs),
           "stopped_early": status == "stopped_early", **_summary(epochs)}
    return row, history


def trial_status(epochs_run: int, epochs: int, failed: bool, ray_status: str | None,
                 sweep_running: bool) -> str:
    """One of STATUSES from what the files show; the first rule that applies wins.

    complete: all planned epochs reported (also after a failure that was retried).
    error: the last attempt failed (Ray says ERROR, or error.txt exists and Ray's state does
        not know the trial). stopped_early: Ray terminated it before its last epoch (ASHA).
    running / pending: the sweep process is running; running once an epoch was reported or
        Ray says RUNNING. interrupted: the sweep process ended (Ctrl-C, crash) and Ray had
        not finished the trial; resuming the sweep continues it.
    """
    if epochs_run >= epochs:
        return "complete"
    if ray_status == "ERROR" or (failed and ray_status is None):
        return "error"
    if ray_status == "TERMINATED":
        return "stopped_early"
    if not sweep_running:
        return "interrupted"
    return "running" if epochs_run or ray_status == "RUNNING" else "pending"


def _summary(epochs: list[dict]) -> dict:
    """Best (earliest on ties) and last-epoch metrics of one trial; seconds sums the epochs."""
    if not epochs:
        return {"best_val_margin": math.nan, "best_epoch": math.nan, "seconds": 0.0}
    margins = [(epoch.get("val_margin", math.nan), epoch["epoch"]) for epoch in epochs]
    finite = [(value, epoch) for value, epoch in margins if _finite(value)]
    best_value, best_epoch = max(finite, key=lambda pair: pair[0]) if finite else (math.nan, math.nan)
    last = {RENAMED_LAST_METRICS.get(k, k): v for k, v in epochs[-1].items()
            if k not in ("epoch", "seconds")}
    seconds = sum(epoch.get("seconds", 0.0) or 0.0 for epoch in epochs)
    return {"best_val_margin": best_value, "best_epoch": best_epoch, **last, "seconds": seconds}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _trials_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with KEYS and trial_dir first; no rows gives TRIAL_COLUMNS, empty;
    settings typed as TrainConfig declares them (tune_p7.space.typed_settings)."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return typed_settings(pd.DataFrame(columns=list(TRIAL_COLUMNS)))
    first = [*KEYS, "trial_dir"]
    frame = typed_settings(frame[first + [c for c in frame.columns if c not in first]])
    if "bf16_resolved" in frame:
        # Missing for a trial that reported no epoch: pandas' nullable boolean keeps it NA
        # through parquet instead of mixing None and NaN.
        frame["bf16_resolved"] = frame["bf16_resolved"].astype("boolean")
    return frame


def _history_frame(histories: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [frame for frame in histories if not frame.empty]
    if not non_empty:
        return pd.DataFrame(columns=[*KEYS, "epoch"])
    return pd.concat(non_empty, ignore_index=True)


# ---------------------------------------------------------------------------------------
# The Python API: a loaded sweep and helpers that return DataFrames

COMPARED = ("val_margin", "val_cos_next", "val_cos_prev", "val_cos_anchor", "val_r_at_5",
            "val_mrr_at_10", "val_global_r_at_5")
DEFAULT_PARAMETERS = ("context", "margin", "temperature", "anchor_lambda")


@dataclass
class Sweep:
    """A loaded sweep folder. Every table is a plain DataFrame."""

    path: Path
    trials: pd.DataFrame         # one row per trial, with verdict and flag columns
    history: pd.DataFrame        # one row per trial and epoch
    baselines: pd.DataFrame      # trivial predictors: one row per (context, predictor)
    data_signals: pd.DataFrame   # one row per (context, split)
    plan: Plan                   # sweep.json's plan (defaults where it has none)
    run_state: dict              # sweep.json's "state", "host", "pid" (those recorded)
    source: str                  # "ray" (read from Ray's files now) or "parquet"

    def leaderboard(self, sort: str = "val_margin", top: int | None = None) -> pd.DataFrame:
        return leaderboard(self.trials, sort, top)

    def comparison(self) -> pd.DataFrame:
        return comparison(self.trials, self.baselines)

    def best_trial(self, metric: str = "val_margin") -> pd.Series:
        return best_trial(self.trials, metric)

    def best_config(self, metric: str = "val_margin") -> dict:
        return best_config(self.trials, metric)

    def best_statement(self, metric: str = "val_margin") -> str:
        return best_statement(self.trials, metric)

    def parameters(self) -> list[str]:
        return searched_parameters(self.plan, self.trials)

    def parameter_summary(self, metric: str = "val_margin", bins: int = 4) -> pd.DataFrame:
        return parameter_summary(self.trials, self.parameters(), metric, bins)


def load_sweep(path: str | Path, criteria: Criteria = Criteria()) -> Sweep:
    """Load a sweep folder: the parquet tables when they are up to date, else Ray's files.

    Works on a running, interrupted or failed sweep. Verdicts and flags are recomputed
    with ``criteria``. Raises NotASweep (one sentence) for a path that is not a sweep.
    """
    folder = SweepFolder(path)
    has_ray, has_tables = (folder.path / RAY_FOLDER).is_dir(), folder.table_path("trials").exists()
    if not (has_ray or has_tables):
        raise NotASweep(f"{folder.path} is not a sweep folder (no ray/ results and no "
                        f"trials.parquet); pass a folder that python -m tune_p7.sweep wrote.")
    if has_tables and (not has_ray or folder.tables_are_fresh()):
        trials, history = folder.read_table("trials"), folder.read_table("history")
        source = "parquet"
    else:
        trials, history = collect_tables(folder.path)
        source = "ray"
    baselines = folder.read_table("baselines")
    return Sweep(folder.path, annotate(trials, history, baselines, criteria), history,
                 baselines, folder.read_table("data_signals"), folder.read_plan(),
                 folder.run_state(), source)


def leaderboard(trials: pd.DataFrame, sort: str = "val_margin",
                top: int | None = None) -> pd.DataFrame:
    """trials ranked best first; adds (or renews) "rank". The one ranking behind every "best" (the
    leaderboard, best_trial/best_config, --export-best, the sweep's top trials, confirm).

    Failed trials come last; before them, the trials that beat every trivial predictor
    (beats_trivial, tune_p7.verdicts) come first, then the others; within each group by
    column ``sort`` (descending; ascending for losses, cos_prev and seconds), trials
    without the metric last. So a trial with a high val_margin that orth-mean or copy-last
    beats never ranks above one that beats them all.
    """
    if sort not in trials.columns:
        raise ValueError(f"cannot sort by {sort!r}: the trials table has no such column; "
                         f"use one of {', '.join(metric_columns(trials))}.")
    ascending = lower_is_better(sort)
    failed = trials["status"].eq("error") if "status" in trials else False
    not_beating = (~trials["beats_trivial"].astype("boolean").fillna(False).astype(bool)
                   if "beats_trivial" in trials else False)
    ranked = (trials.assign(_failed=failed, _not_beating=not_beating)
              .sort_values(["_failed", "_not_beating", sort], ascending=[True, True, ascending],
                           na_position="last", kind="stable")
              .drop(columns=["_failed", "_not_beating", "rank"], errors="ignore"))
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return ranked.head(top) if top else ranked


def add_ranking_arguments(parser, top: int, top_help: str) -> None:
    """The sweep folder, --sort and --top of a command that ranks a sweep's trials
    (analyze, confirm): the same ranking (:func:`leaderboard`) behind both."""
    parser.add_argument("sweep", help="sweep folder, e.g. results/NAME")
    parser.add_argument("--sort", default="val_margin",
                        help="trials column to rank by (default val_margin, the last epoch's)")
    parser.add_argument("--top", type=int, default=top, help=f"{top_help} (default {top})")


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("cos_prev") or metric in ("seconds", "best_epoch")


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """The metric columns of a trials table (val_*, train_*, best_*; not settings or flags)."""
    return [c for c in trials.columns if c.startswith(("val_", "train_", "best_"))
            and c not in CONFIG_FIELDS and c != "train_val_sign_flip"]


def best_trial(trials: pd.DataFrame, metric: str = "val_margin") -> pd.Series:
    """The top of the :func:`leaderboard` by ``metric`` among the trials that reported an
    epoch and did not fail, leaving out confirm re-runs (they judge noise, see
    tune_p7.confirm): the best ``metric`` among the trials that beat every trivial
    predictor, or, when none does, the best ``metric`` of all (its beats_trivial says so;
    :func:`best_statement` says it in words)."""
    candidates = trials[(trials["epochs_run"] > 0) & (trials["status"] != "error")
                        & (trials["phase"] != "confirm")]
    if candidates.empty or candidates[metric].isna().all():
        raise ValueError(f"no trial has a {metric} yet; wait for the first epoch or check "
                         f"the errors in trials.error.")
    return leaderboard(candidates, metric).iloc[0]


def best_config(trials: pd.DataFrame, metric: str = "val_margin") -> dict:
    """The best trial's TrainConfig fields as plain Python values (TrainConfig.from_dict-able)."""
    trial = best_trial(trials, metric)
    defaults = TrainConfig()
    return {name: type(getattr(defaults, name))(plain(trial[name]))
            for name in CONFIG_FIELDS if name in trial.index}


def best_statement(trials: pd.DataFrame, metric: str = "val_margin") -> str:
    """One sentence naming the best trial (:func:`best_trial`) and whether it beats every
    trivial predictor; when no trial does, it says so before naming the best ``metric``."""
    try:
        best = best_trial(trials, metric)
    except ValueError as error:
        return f"No best trial: {error}"
    label = (f"cell {best['cell']}, trial {best['trial_id']}" if best.get("cell")
             else f"{best.get('phase', 'trial')} trial {best['trial_id']}")
    named = f"{label} ({metric} {_number(best[metric])})"
    beats = best.get("beats_trivial", pd.NA)
    if beats is pd.NA or pd.isna(beats):
        return (f"Best trial: {named}; whether it beats the trivial predictors is unknown "
                f"(no trivial predictor values for K={best.get('context')}).")
    if beats:
        return (f"Best trial: {named}; it beats all three trivial predictors (copy_last, "
                f"context_mean, orth_mean) on val Δ, cos_next and R@5.")
    return (f"No trial beats all three trivial predictors on val Δ, cos_next and R@5; the "
            f"best by {metric} is {named}, which does not beat "
            f"{best.get('trivial_not_beaten') or 'them'}.")


def _number(value) -> str:
    return f"{value:+.4f}" if isinstance(value, (int, float)) else str(value)


def plain(value):
    """A numpy / pandas scalar as a JSON-able Python value (NA and NaN as None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def comparison(trials: pd.DataFrame, baselines: pd.DataFrame,
               metrics: tuple[str, ...] = COMPARED) -> pd.DataFrame:
    """Differences (trial minus reference) of every trial with the baseline cells and with
    the trivial predictors on the trial's context; one row per (trial, reference).

    Columns: KEYS, context, reference, reference_kind ("cell" or "predictor"), and
    <metric>_diff for each metric; positive means the trial is higher.
    """
    metrics = [m for m in metrics if m in trials.columns]
    reported = trials[trials["epochs_run"] > 0]
    left = reported[[*KEYS, "context", *metrics]]
    cells = trials[(trials["phase"] == "baseline") & (trials["epochs_run"] > 0)]
    references = [left.merge(cells[["cell", *metrics]].rename(columns={"cell": "reference"}),
                             how="cross", suffixes=("", "_reference"))
                  .assign(reference_kind="cell")]
    if not baselines.empty:
        predictors = baselines[["context", "predictor", *metrics]].rename(
            columns={"predictor": "reference"})
        references.append(left.merge(predictors, on="context", suffixes=("", "_reference"))
                          .assign(reference_kind="predictor"))
    frame = pd.concat(references, ignore_index=True)
    for metric in metrics:
        frame[f"{metric}_diff"] = frame[metric] - frame.pop(f"{metric}_reference")
    return frame.drop(columns=metrics)[[*KEYS, "context", "reference", "reference_kind",
                                        *[f"{m}_diff" for m in metrics]]]


def searched_parameters(plan: Plan, trials: pd.DataFrame) -> list[str]:
    """The hyperparameters the sweep varied: the Optuna ranges of sweep.json plus the fields
    in which the baseline cells differ; without a plan, the usual P7 ones present in trials."""
    cells = plan.cells
    varied = {name for name in CONFIG_FIELDS if len({str(c.get(name)) for c in cells}) > 1}
    names = list(plan.optuna.params) + sorted(varied)
    if not names:
        names = list(DEFAULT_PARAMETERS)
    return [name for name in dict.fromkeys(names) if name in trials.columns]


def parameter_summary(trials: pd.DataFrame, parameters: list[str], metric: str = "val_margin",
                      bins: int = 4) -> pd.DataFrame:
    """Per hyperparameter and value range: trials and mean/min/max of ``metric``.

    Parameters with at most ``bins`` distinct values are grouped by value, others by
    quantile bins; a categorical one (values that are not numbers, e.g. architecture) by
    value, with low = high = that value. Only trials that reported an epoch and did not
    fail count. Columns: parameter, low, high, trials, <metric>_mean, <metric>_min,
    <metric>_max.
    """
    usable = trials[(trials["epochs_run"] > 0) & (trials["status"] != "error")]
    rows = []
    for name in parameters:
        values = pd.to_numeric(usable[name], errors="coerce")
        categorical = values.isna().sum() > usable[name].isna().sum()
        groups = (usable[name] if categorical else values if values.nunique() <= bins
                  else pd.qcut(values, bins, duplicates="drop"))
        for _, members in usable.groupby(groups, observed=True, sort=True):
            chosen = members[metric]
            low, high = ((plain(members[name].iloc[0]),) * 2 if categorical
                         else (float(members[name].min()), float(members[name].max())))
            rows.append({"parameter": name, "low": low, "high": high, "trials": len(members),
                         f"{metric}_mean": chosen.mean(), f"{metric}_min": chosen.min(),
                         f"{metric}_max": chosen.max()})
    return pd.DataFrame(rows, columns=["parameter", "low", "high", "trials", f"{metric}_mean",
                                       f"{metric}_min", f"{metric}_max"])
