"""Sweep folder -> DataFrames: trials (one row per trial) and history (one row per trial, epoch).

    sweep = load_sweep("results/NAME")                 # .trials, .history, .baselines, ...
    sweep.leaderboard("val_cos_next", top=10)          # DataFrames all the way
    trials, history = write_tables("results/NAME")     # what the sweep calls at its end

The folder layout is the contract in docs/sweep-folder.md. Tables are built from Ray's
per-trial files (params.json, result.json, error.txt), so they can be read while a sweep
runs, after it was interrupted, and when trials failed. Column names are the training
history's names (tune_p7.train), so a sweep and a single ``python -m tune_p7.train`` run
are analysed the same way. Verdicts and flags (tune_p7.verdicts) are columns of trials.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from tune_p7.train import TrainConfig
from tune_p7.verdicts import Criteria, annotate

KEYS = ("trial_id", "experiment", "phase", "cell")
STATUSES = ("complete", "stopped_early", "error", "running", "pending", "interrupted")
# Fields Ray adds to every reported result; everything else in result.json is a metric.
RAY_FIELDS = frozenset({
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "should_checkpoint", "experiment_tag",
    "episodes_total", "timesteps_total", "timesteps_since_restore", "experiment_id"})
# The config's anchor_lambda is the initial lambda; the learned value of the last epoch
# gets its own name in the trials table.
RENAMED_LAST_METRICS = {"anchor_lambda": "final_anchor_lambda"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")
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
    sweep_dir = Path(sweep_dir)
    ray_dir = sweep_dir / "ray"
    if not ray_dir.is_dir():
        raise NotASweep(f"{sweep_dir} is not a sweep folder (it has no ray/ sub-folder); "
                        f"pass the folder that python -m tune_p7.sweep wrote.")
    running = sweep_is_running(sweep_dir)
    rows, histories = [], []
    for experiment_dir in sorted(path for path in ray_dir.iterdir() if path.is_dir()):
        ray_trials = ray_trial_states(experiment_dir)
        for params_path in sorted(experiment_dir.glob("*/params.json")):
            trial_dir = params_path.parent
            if not _readable_json(params_path):
                warnings.warn(f"{trial_dir}: params.json is empty or cut short (the sweep was "
                              f"killed while writing it); this trial is left out until "
                              f"--resume runs it again.", stacklevel=2)
                continue
            row, history = read_trial(trial_dir, ray_trials.get(trial_dir.name, {}), running)
            row["trial_dir"] = str(trial_dir.relative_to(sweep_dir))
            rows.append(row)
            histories.append(history)
    history = _history_frame(histories)
    trials = annotate(_trials_frame(rows), history, read_table(sweep_dir, "baselines"))
    return trials, history


def write_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """collect_tables, then write sweep_dir/trials.parquet and history.parquet atomically."""
    trials, history = collect_tables(sweep_dir)
    for name, frame in (("trials", trials), ("history", history)):
        _write_parquet(frame, Path(sweep_dir) / f"{name}.parquet")
    return trials, history


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(temporary, index=False)
    temporary.replace(path)


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def read_trial(trial_dir: Path, ray_trial: dict,
               sweep_running: bool) -> tuple[dict, pd.DataFrame]:
    """One trial folder -> (trials row, history frame).

    ray_trial: {"status": TERMINATED | ERROR | RUNNING | ..., "trial_id"} from Ray's
    experiment state, or {} when unknown. sweep_running: see sweep_is_running.
    """
    params = json.loads((trial_dir / "params.json").read_text())
    epochs = read_result_lines(trial_dir / "result.json")
    error_path = trial_dir / "error.txt"
    error = error_line(error_path.read_text(errors="replace")) if error_path.exists() else ""
    trial_id = _trial_id(trial_dir, ray_trial.get("trial_id"))
    labels = {"trial_id": trial_id, "experiment": trial_dir.parent.name,
              "phase": params.get("phase", ""), "cell": params.get("cell", "") or ""}
    history = pd.DataFrame([{**labels, **epoch} for epoch in epochs])
    planned = int(params.get("epochs", TrainConfig().epochs))
    status = trial_status(len(epochs), planned, bool(error), ray_trial.get("status"),
                          sweep_running)
    row = {**labels, **{k: v for k, v in params.items() if k not in labels},
           "status": status, "error": error, "epochs_run": len(epochs),
           "stopped_early": status == "stopped_early", **_summary(epochs)}
    return row, history


def read_result_lines(path: Path) -> list[dict]:
    """Per-epoch metrics from a Ray result.json (one JSON object per line), by epoch.

    Ray's own fields are dropped. A resumed trial reports the epochs after its checkpoint
    again; the last report of an epoch wins. A half-written last line (the trial is writing
    it now) is skipped. Returns dicts with "epoch" first, sorted by epoch.
    """
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k not in RAY_FIELDS and k != "epoch"}
        by_epoch[epoch] = {"epoch": epoch, **metrics}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def error_line(text: str) -> str:
    """The last meaningful line of a Ray error.txt: the exception and its message."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines()]
    meaningful = [line for line in lines if line and set(line) - set("^~ ")]
    return meaningful[-1] if meaningful else "failed (empty error.txt)"


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


def sweep_is_running(sweep_dir: Path) -> bool:
    """Whether the sweep process still runs, from sweep.json's "state", "host" and "pid".

    "state" is "running" while a Tuner run is in progress ("planned", "finished" or
    "interrupted" otherwise). A "running" sweep whose recorded process is gone from this
    host (killed without a chance to write its state) counts as not running. No state
    recorded counts as running, so unfinished trials never read as silently ended.
    """
    path = Path(sweep_dir) / "sweep.json"
    try:
        plan = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:  # being rewritten right now
        return True
    if plan.get("state", "running") != "running":
        return False
    return not (plan.get("host") == socket.gethostname() and "pid" in plan
                and not _process_alive(int(plan["pid"])))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def ray_trial_states(experiment_dir: Path) -> dict[str, dict]:
    """{trial folder name: {"status", "trial_id"}} from Ray's newest experiment_state-*.json.

    Ray writes no per-trial "finished" file; this snapshot is the only place that says a
    trial was terminated (e.g. by ASHA) rather than still running or interrupted. Its layout
    is Ray's, so anything unexpected yields {} and the status falls back to error.txt and
    sweep.json.
    """
    # Names carry the session's start time (experiment_state-YYYY-MM-DD_HH-MM-SS.json), so
    # name order is session order; modification times are not: after a resume Ray copies
    # the older session's file again on every sync.
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    try:
        trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
        trials = [json.loads(entry[0]) for entry in trial_data]
        return {trial["relative_logdir"]: {"status": trial["status"],
                                           "trial_id": trial["trial_id"]}
                for trial in trials}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return {}


def _trial_id(trial_dir: Path, ray_trial_id: str | None) -> str:
    """Ray's trial_id, stable from the trial's start: from the first result line, else
    Ray's experiment state, else Ray's default folder name, else the folder name (unique
    inside its experiment)."""
    result_path = trial_dir / "result.json"
    if result_path.exists():
        with result_path.open() as lines:
            try:
                return str(json.loads(next(lines, "{}"))["trial_id"])
            except (json.JSONDecodeError, KeyError):
                pass
    if ray_trial_id:
        return str(ray_trial_id)
    match = RAY_TRIAL_ID.search(trial_dir.name)
    return match.group(1) if match else trial_dir.name


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
    """Rows -> DataFrame with KEYS and trial_dir first; no rows gives TRIAL_COLUMNS, empty."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    first = [*KEYS, "trial_dir"]
    return frame[first + [c for c in frame.columns if c not in first]]


def _history_frame(histories: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [frame for frame in histories if not frame.empty]
    if not non_empty:
        return pd.DataFrame(columns=[*KEYS, "epoch"])
    return pd.concat(non_empty, ignore_index=True)


def read_table(sweep_dir: str | Path, name: str) -> pd.DataFrame:
    """sweep_dir/<name>.parquet (baselines, data_signals, ...), or an empty DataFrame."""
    path = Path(sweep_dir) / f"{name}.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


# ---------------------------------------------------------------------------------------
# The Python API: a loaded sweep and helpers that return DataFrames

COMPARED = ("val_margin", "val_cos_next", "val_cos_prev", "val_cos_anchor", "val_r_at_5",
            "val_mrr_at_10", "val_global_r_at_5")
DEFAULT_PARAMETERS = ("context", "margin", "temperature", "anchor_lambda")


@dataclass
class Sweep:
    """A loaded sweep folder. Every attribute is a plain DataFrame or dict."""

    path: Path
    trials: pd.DataFrame         # one row per trial, with verdict and flag columns
    history: pd.DataFrame        # one row per trial and epoch
    baselines: pd.DataFrame      # trivial predictors: one row per (context, predictor)
    data_signals: pd.DataFrame   # one row per (context, split)
    plan: dict                   # sweep.json ({} when absent)
    source: str                  # "ray" (read from Ray's files now) or "parquet"

    def leaderboard(self, sort: str = "val_margin", top: int | None = None) -> pd.DataFrame:
        return leaderboard(self.trials, sort, top)

    def comparison(self) -> pd.DataFrame:
        return comparison(self.trials, self.baselines)

    def best_trial(self, metric: str = "val_margin") -> pd.Series:
        return best_trial(self.trials, metric)

    def best_config(self, metric: str = "val_margin") -> dict:
        return best_config(self.trials, metric)

    def parameters(self) -> list[str]:
        return searched_parameters(self.plan, self.trials)

    def parameter_summary(self, metric: str = "val_margin", bins: int = 4) -> pd.DataFrame:
        return parameter_summary(self.trials, self.parameters(), metric, bins)


def load_sweep(path: str | Path, criteria: Criteria = Criteria()) -> Sweep:
    """Load a sweep folder: the parquet tables when they are up to date, else Ray's files.

    Works on a running, interrupted or failed sweep. Verdicts and flags are recomputed
    with ``criteria``. Raises NotASweep (one sentence) for a path that is not a sweep.
    """
    sweep_dir = Path(path)
    has_ray, has_tables = (sweep_dir / "ray").is_dir(), (sweep_dir / "trials.parquet").exists()
    if not (has_ray or has_tables):
        raise NotASweep(f"{sweep_dir} is not a sweep folder (no ray/ results and no "
                        f"trials.parquet); pass a folder that python -m tune_p7.sweep wrote.")
    if has_tables and (not has_ray or tables_are_fresh(sweep_dir)):
        trials, history = read_table(sweep_dir, "trials"), read_table(sweep_dir, "history")
        source = "parquet"
    else:
        trials, history = collect_tables(sweep_dir)
        source = "ray"
    baselines = read_table(sweep_dir, "baselines")
    plan_path = sweep_dir / "sweep.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    return Sweep(sweep_dir, annotate(trials, history, baselines, criteria), history, baselines,
                 read_table(sweep_dir, "data_signals"), plan, source)


def tables_are_fresh(sweep_dir: Path) -> bool:
    """trials.parquet and history.parquet are newer than every Ray file and sweep.json, and
    the sweep is not running (a running sweep changes them with every epoch)."""
    tables = [sweep_dir / "trials.parquet", sweep_dir / "history.parquet"]
    if not all(path.exists() for path in tables) or sweep_is_running(sweep_dir):
        return False
    written = min(path.stat().st_mtime for path in tables)
    sources = [sweep_dir / "sweep.json", *sweep_dir.glob("ray/*/experiment_state-*.json")]
    for trial_dir in sweep_dir.glob("ray/*/*/"):
        sources += [trial_dir / name for name in ("params.json", "result.json", "error.txt")]
    return all(path.stat().st_mtime <= written for path in sources if path.exists())


def leaderboard(trials: pd.DataFrame, sort: str = "val_margin",
                top: int | None = None) -> pd.DataFrame:
    """trials ranked by column ``sort`` (best first: descending, ascending for losses,
    cos_prev and seconds), failed trials and trials without the metric last; adds "rank"."""
    if sort not in trials.columns:
        raise ValueError(f"cannot sort by {sort!r}: the trials table has no such column; "
                         f"use one of {', '.join(metric_columns(trials))}.")
    ascending = lower_is_better(sort)
    failed = trials["status"].eq("error") if "status" in trials else False
    ranked = (trials.assign(_failed=failed)
              .sort_values(["_failed", sort], ascending=[True, ascending],
                           na_position="last", kind="stable")
              .drop(columns="_failed"))
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return ranked.head(top) if top else ranked


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("cos_prev") or metric in ("seconds", "best_epoch")


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """The metric columns of a trials table (val_*, train_*, best_*; not settings or flags)."""
    return [c for c in trials.columns if c.startswith(("val_", "train_", "best_"))
            and c not in CONFIG_FIELDS and c != "train_val_sign_flip"]


def best_trial(trials: pd.DataFrame, metric: str = "val_margin") -> pd.Series:
    """The top trial by ``metric`` among those that reported an epoch and did not fail,
    leaving out confirm re-runs (they judge noise, see tune_p7.confirm)."""
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


def searched_parameters(plan: dict, trials: pd.DataFrame) -> list[str]:
    """The hyperparameters the sweep varied: the Optuna ranges of sweep.json plus the fields
    in which the baseline cells differ; without a plan, the usual P7 ones present in trials."""
    cells = plan.get("cells", [])
    varied = {name for name in CONFIG_FIELDS if len({str(c.get(name)) for c in cells}) > 1}
    names = list(plan.get("optuna", {}).get("params", {})) + sorted(varied)
    if not names:
        names = list(DEFAULT_PARAMETERS)
    return [name for name in dict.fromkeys(names) if name in trials.columns]


def parameter_summary(trials: pd.DataFrame, parameters: list[str], metric: str = "val_margin",
                      bins: int = 4) -> pd.DataFrame:
    """Per hyperparameter and value range: trials and mean/min/max of ``metric``.

    Parameters with at most ``bins`` distinct values are grouped by value, others by
    quantile bins. Only trials that reported an epoch and did not fail count.
    Columns: parameter, low, high, trials, <metric>_mean, <metric>_min, <metric>_max.
    """
    usable = trials[(trials["epochs_run"] > 0) & (trials["status"] != "error")]
    rows = []
    for name in parameters:
        values = pd.to_numeric(usable[name], errors="coerce")
        groups = (values if values.nunique() <= bins
                  else pd.qcut(values, bins, duplicates="drop"))
        for _, members in usable.groupby(groups, observed=True, sort=True):
            chosen = members[metric]
            rows.append({"parameter": name, "low": float(members[name].min()),
                         "high": float(members[name].max()), "trials": len(members),
                         f"{metric}_mean": chosen.mean(), f"{metric}_min": chosen.min(),
                         f"{metric}_max": chosen.max()})
    return pd.DataFrame(rows, columns=["parameter", "low", "high", "trials", f"{metric}_mean",
                                       f"{metric}_min", f"{metric}_max"])
