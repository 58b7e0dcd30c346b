"""Sweep folder -> DataFrames: trials (one row per trial) and history (one row per trial, epoch).

    trials, history = collect_tables("results/NAME")   # straight from Ray's trial files
    trials, history = write_tables("results/NAME")     # same, and writes the two parquet files

The folder layout is the contract in docs/sweep-folder.md. Tables are built from Ray's
per-trial files (params.json, result.json, error.txt), so they can be read while a sweep
runs, after it was interrupted, and when trials failed. Column names are the training
history's names (tune_p7.train), so a sweep and a single ``python -m tune_p7.train`` run
are analysed the same way.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from pathlib import Path

import pandas as pd

from tune_p7.train import TrainConfig

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


class NotASweep(ValueError):
    """The path holds no sweep folder; the message is one sentence naming it."""


def collect_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and history DataFrames read from Ray's trial folders under sweep_dir/ray/.

    trials: one row per trial: KEYS, trial_dir (relative to sweep_dir), every params.json
        key (TrainConfig fields under their own names), status (see trial_status), error,
        epochs_run, stopped_early, best_val_margin, best_epoch, the last epoch's metrics
        (anchor_lambda as final_anchor_lambda), seconds (sum of epoch seconds).
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
        ray_statuses = ray_trial_statuses(experiment_dir)
        for trial_dir in sorted(experiment_dir.glob("*/params.json")):
            trial_dir = trial_dir.parent
            row, history = read_trial(trial_dir, ray_statuses.get(trial_dir.name), running)
            row["trial_dir"] = str(trial_dir.relative_to(sweep_dir))
            rows.append(row)
            histories.append(history)
    return _trials_frame(rows), _history_frame(histories)


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


def read_trial(trial_dir: Path, ray_status: str | None,
               sweep_running: bool) -> tuple[dict, pd.DataFrame]:
    """One trial folder -> (trials row, history frame).

    ray_status: Ray's status for this trial (TERMINATED, ERROR, RUNNING, ...) or None.
    sweep_running: whether the sweep process still runs (sweep_is_running).
    """
    params = json.loads((trial_dir / "params.json").read_text())
    epochs = read_result_lines(trial_dir / "result.json")
    error_path = trial_dir / "error.txt"
    error = error_line(error_path.read_text(errors="replace")) if error_path.exists() else ""
    trial_id = _trial_id(trial_dir)
    labels = {"trial_id": trial_id, "experiment": trial_dir.parent.name,
              "phase": params.get("phase", ""), "cell": params.get("cell", "") or ""}
    history = pd.DataFrame([{**labels, **epoch} for epoch in epochs])
    planned = int(params.get("epochs", TrainConfig().epochs))
    status = trial_status(len(epochs), planned, bool(error), ray_status, sweep_running)
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

    "state" is "running" while a Tuner run is in progress and "done" once it returned or
    raised. A "running" sweep whose recorded process is gone from this host (killed without
    a chance to write "done") counts as not running. No state recorded counts as running,
    so unfinished trials then read as running, never as silently finished.
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


def ray_trial_statuses(experiment_dir: Path) -> dict[str, str]:
    """{trial folder name: Ray status} from Ray's newest experiment_state-*.json.

    Ray writes no per-trial "finished" file; this snapshot is the only place that says a
    trial was terminated (e.g. by ASHA) rather than still running or interrupted. Its layout
    is Ray's, so anything unexpected yields {} and the status falls back to error.txt and
    sweep.json.
    """
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"),
                       key=lambda path: path.stat().st_mtime)
    if not snapshots:
        return {}
    try:
        trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
        trials = [json.loads(entry[0]) for entry in trial_data]
        return {trial["relative_logdir"]: trial["status"] for trial in trials}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return {}


def _trial_id(trial_dir: Path) -> str:
    """Ray's trial_id: from the folder name (Ray's default naming), else from the first
    result line, else the folder name itself (unique inside its experiment)."""
    match = RAY_TRIAL_ID.search(trial_dir.name)
    if match:
        return match.group(1)
    result_path = trial_dir / "result.json"
    if result_path.exists():
        with result_path.open() as lines:
            try:
                return str(json.loads(next(lines, "{}")).get("trial_id", trial_dir.name))
            except json.JSONDecodeError:
                pass
    return trial_dir.name


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
    """Rows -> DataFrame with KEYS and trial_dir first; a sweep with no trials has 0 rows."""
    frame = pd.DataFrame(rows)
    first = [*KEYS, "trial_dir"]
    if frame.empty:
        return pd.DataFrame(columns=first)
    return frame[first + [c for c in frame.columns if c not in first]]


def _history_frame(histories: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [frame for frame in histories if not frame.empty]
    if not non_empty:
        return pd.DataFrame(columns=[*KEYS, "epoch"])
    return pd.concat(non_empty, ignore_index=True)
