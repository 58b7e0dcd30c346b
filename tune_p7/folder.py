"""The sweep folder (docs/sweep-folder.md): the one module that knows its files.

    folder = SweepFolder("results/NAME")
    with folder.lock():                      # FolderInUse while another process holds it
        folder.read_plan(); folder.set_state("running"); folder.is_running()
    folder.write_table("trials", frame); folder.read_table("baselines")
    for experiment_dir, trial_dir in folder.trial_dirs(): read_params(trial_dir) ...

Two kinds of files live in a sweep folder. The driver's own: sweep.json (the plan, see
tune_p7.plan, plus the run state "state", "host", "pid", "progress"), sweep.lock (locked by
the one process running the sweep), the data tables, the result tables (parquet) and the
live Optuna study (optuna.db, tune_p7.study). And Ray Tune's, under ray/<experiment>/: per
trial params.json, result.json (one JSON line per reported epoch), error.txt and
checkpoint_<n>/, per experiment the experiment_state-<session>.json snapshots. This module
reads both, writes the driver's (atomically, tune_p7.files), and repairs what a hard kill
leaves in Ray's.
Ray's layout is Ray's: anything unexpected in it reads as "unknown", never as a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shutil
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tune_p7.files import atomic_path, write_json
from tune_p7.plan import Plan

PLAN_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
RAY_FOLDER = "ray"
CHECKPOINT_FILE = "state.pt"  # train's state in each checkpoint_<n>/ (tune_p7.trainable)
RUN_STATE = ("state", "host", "pid", "progress")  # sweep.json keys that are not the plan
# Fields Ray adds to every reported result; everything else in result.json is a metric.
RAY_FIELDS = frozenset({
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "should_checkpoint", "experiment_tag",
    "episodes_total", "timesteps_total", "timesteps_since_restore", "experiment_id"})
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")


class FolderInUse(ValueError):
    """Another live process holds the sweep folder; the message names its pid and host."""


class SweepFolder:
    """``<storage>/<name>/``: its plan, run state, tables and Ray's experiment folders."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepFolder({str(self.path)!r})"

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def ray_dir(self) -> Path:
        """RunConfig.storage_path of every experiment of the sweep (absolute)."""
        return self.path.resolve() / RAY_FOLDER

    def holds_sweep(self) -> bool:
        return self.plan_file.exists()

    def lock(self) -> "FolderLock":
        """Hold the folder for this process (created if absent) until the lock is released
        (``with folder.lock(): ...``) or the process ends; raises FolderInUse, naming the
        holder's pid and host, while another process holds it.

        An flock on sweep.lock: the kernel releases it when its process dies, so the lock
        of a killed sweep (kill -9, a lost node) never blocks --resume. The file also
        names its holder for that message (sweep.json may not record a pid yet).
        """
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+")  # not atomic_path: the inode is the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._lock_holder(handle)
            handle.close()
            raise FolderInUse(
                f"{self.path} is in use by a running sweep (pid {holder.get('pid', '?')} on "
                f"host {holder.get('host', '?')}); wait for it to end or stop it, then "
                f"resume, or pick another --name.") from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        return FolderLock(self, handle, created)

    def _lock_holder(self, handle) -> dict:
        """{"pid", "host"} of the process holding the lock: from sweep.lock, else (it is
        being written this instant) from sweep.json's run state."""
        handle.seek(0)
        try:
            return json.loads(handle.read())
        except json.JSONDecodeError:
            return self.run_state()

    # --- sweep.json: the plan and the run state

    def read_content(self) -> dict:
        """sweep.json as saved ({} when absent); raises json.JSONDecodeError mid-rewrite."""
        return json.loads(self.plan_file.read_text()) if self.plan_file.exists() else {}

    def read_plan(self) -> Plan:
        return Plan.from_dict(self.read_content())

    def write_plan(self, plan: Plan) -> None:
        """A new sweep.json holding the plan, in state "planned"."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.plan_file, {**plan.to_dict(), "state": "planned"})

    def set_state(self, state: str) -> None:
        """Record "running", "finished" or "interrupted", with this host and process, so a
        reader can tell a killed sweep (its pid gone) from a running one."""
        content = self.read_content()
        content.update(state=state, host=socket.gethostname(), pid=os.getpid())
        write_json(self.plan_file, content)

    def set_progress(self, progress: dict) -> None:
        """Record the running Tuner's progress (tune_p7.sweep_progress.measure's figures)
        for a reader in another terminal."""
        write_json(self.plan_file, {**self.read_content(), "progress": progress})

    def run_state(self) -> dict:
        """{"state", "host", "pid", "progress"} as recorded (those present); {} without
        sweep.json."""
        try:
            content = self.read_content()
        except json.JSONDecodeError:  # being rewritten right now
            return {"state": "running"}
        return {key: content[key] for key in RUN_STATE if key in content}

    def is_running(self) -> bool:
        """Whether the sweep process still runs.

        "state" is "running" while a Tuner run is in progress ("planned", "finished" or
        "interrupted" otherwise). A "running" sweep whose recorded process is gone from this
        host (killed without a chance to write its state) counts as not running. No state
        recorded counts as running, so unfinished trials never read as silently ended.
        """
        recorded = self.run_state()
        if recorded.get("state", "running") != "running":
            return False
        return not (recorded.get("host") == socket.gethostname() and "pid" in recorded
                    and not process_alive(int(recorded["pid"])))

    # --- tables

    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        with atomic_path(self.table_path(name)) as temporary:
            frame.to_parquet(temporary, index=False)

    def read_table(self, name: str) -> pd.DataFrame:
        """<name>.parquet (trials, history, baselines, data_signals, ...), or an empty frame."""
        path = self.table_path(name)
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    def write_data_tables(self, references: dict[int, dict]) -> None:
        """baselines.parquet and data_signals.parquet from {K: metrics.reference_metrics(K)}.

        baselines: one row per (context, predictor): the trivial predictors' val_* metrics.
        data_signals: one row per (context, split): forward_signal, recency, coherence, windows.
        """
        baselines = [{"context": context, "predictor": predictor, **metrics}
                     for context, reference in references.items()
                     for predictor, metrics in reference["baselines"].items()]
        signals = [{"context": context, "split": split, **values}
                   for context, reference in references.items()
                   for split, values in reference["signals"].items()]
        self.write_table("baselines", pd.DataFrame(baselines))
        self.write_table("data_signals", pd.DataFrame(signals))

    def tables_are_fresh(self) -> bool:
        """trials.parquet and history.parquet are newer than every Ray file and sweep.json, and
        the sweep is not running (a running sweep changes them with every epoch)."""
        tables = [self.table_path("trials"), self.table_path("history")]
        if not all(path.exists() for path in tables) or self.is_running():
            return False
        written = min(path.stat().st_mtime for path in tables)
        sources = [self.plan_file, *self.path.glob(f"{RAY_FOLDER}/*/experiment_state-*.json")]
        for trial_dir in self.path.glob(f"{RAY_FOLDER}/*/*/"):
            sources += [trial_dir / name for name in ("params.json", "result.json", "error.txt")]
        return all(path.stat().st_mtime <= written for path in sources if path.exists())

    # --- Ray's experiment folders

    def experiment_dir(self, experiment: str) -> Path:
        return self.ray_dir / experiment

    def experiment_dirs(self) -> list[Path]:
        ray_dir = self.path / RAY_FOLDER
        return sorted(path for path in ray_dir.iterdir() if path.is_dir()) if ray_dir.is_dir() else []

    def trial_dirs(self) -> Iterator[tuple[Path, Path]]:
        """(experiment folder, trial folder) of every trial Ray created, by name."""
        for experiment_dir in self.experiment_dirs():
            for params in sorted(experiment_dir.glob("*/params.json")):
                yield experiment_dir, params.parent


class FolderLock:
    """The lock of SweepFolder.lock(), held until ``release()`` or the end of a with block.

    A folder this lock created and that received no sweep.json (the sweep was refused
    before it began) is removed again on release, so a refusal leaves nothing behind.
    """

    def __init__(self, folder: SweepFolder, handle, created: bool):
        self.folder, self.handle, self.created = folder, handle, created

    def release(self) -> None:
        if self.created and not self.folder.holds_sweep():
            (self.folder.path / LOCK_FILE).unlink(missing_ok=True)
            try:
                self.folder.path.rmdir()
            except OSError:  # something else was put there: keep it
                pass
        self.handle.close()  # closing the file releases the flock

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def newest_sweep(storage: Path) -> Path | None:
    """The sweep folder under ``storage`` whose sweep.json changed last, or None."""
    plans = sorted(storage.glob(f"*/{PLAN_FILE}"), key=lambda path: path.stat().st_mtime)
    return plans[-1].parent if plans else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


# ---------------------------------------------------------------------------------------
# One trial's files


def read_params(trial_dir: Path) -> dict | None:
    """The trial's config (params.json), or None when the file is empty or cut short (the
    sweep was killed while Ray wrote it)."""
    path = trial_dir / "params.json"
    return json.loads(path.read_text()) if readable(path) else None


@dataclass(frozen=True)
class ReportedEpochs:
    """What a trial's result.json says: its epochs and whether Ray ended it there.

    epochs: one metrics dict per epoch, "epoch" first, Ray's own fields dropped, sorted; a
    resumed trial reports the epochs after its checkpoint again, and the last report of an
    epoch wins. done_at: the epoch of the last line if Ray marked it ``done`` (it marks the
    result it stopped a trial at, and sometimes a finished trial's last), else None.
    checkpoints: the checkpoint folder names (checkpoint_<n>) the lines record, in order.
    """

    epochs: list[dict]
    done_at: int | None
    checkpoints: tuple[str, ...] = ()

    def values(self, metric: str) -> dict[int, float]:
        """{epoch: value of ``metric``} (None where an epoch did not report it)."""
        return {epoch["epoch"]: epoch.get(metric) for epoch in self.epochs}


def read_results(path: Path) -> ReportedEpochs:
    """The one reader of Ray's result.json (see ReportedEpochs); a missing file is no
    epochs, and a half-written last line (the trial is writing it now) is skipped."""
    by_epoch: dict[int, dict] = {}
    done_at, checkpoints = None, []
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k not in RAY_FIELDS and k != "epoch"}
        by_epoch[epoch] = {"epoch": epoch, **metrics}
        done_at = epoch if result.get("done") else None
        if result.get("checkpoint_dir_name"):
            checkpoints.append(result["checkpoint_dir_name"])
    return ReportedEpochs([by_epoch[epoch] for epoch in sorted(by_epoch)], done_at,
                          tuple(checkpoints))


def read_history(path: Path, metric: str) -> tuple[dict[int, float], int | None]:
    """({epoch: metric} from a result.json, the epoch Ray marked done or None)."""
    reported = read_results(path)
    return reported.values(metric), reported.done_at


def read_error(trial_dir: Path) -> str:
    """The last meaningful line of the trial's error.txt, or "" when it did not fail."""
    path = trial_dir / "error.txt"
    return error_line(path.read_text(errors="replace")) if path.is_file() else ""


def error_line(text: str) -> str:
    """The last meaningful line of a Ray error.txt: the exception and its message."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines()]
    meaningful = [line for line in lines if line and set(line) - set("^~ ")]
    return meaningful[-1] if meaningful else "failed (empty error.txt)"


def trial_id(trial_dir: Path, ray_trial_id: str | None) -> str:
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


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """trial_dir/checkpoint_<n>/state.pt with the highest n, or None."""
    found = sorted(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}"),
                   key=lambda path: path.parent.name)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------
# One experiment's state


def ray_trial_states(experiment_dir: Path) -> dict[str, dict]:
    """{trial folder name: {"status", "trial_id"}} from Ray's newest experiment_state-*.json.

    Ray writes no per-trial "finished" file; this snapshot is the only place that says a
    trial was terminated (e.g. by ASHA) rather than still running or interrupted. Its layout
    is Ray's, so anything unexpected yields {} and the status falls back to error.txt and
    sweep.json.
    """
    return {trial["relative_logdir"]: {"status": trial["status"], "trial_id": trial["trial_id"]}
            for trial, _ in newest_trial_data(experiment_dir)}


def newest_trial_data(experiment_dir: Path) -> list[tuple[dict, str]]:
    """[(trial's JSON state as a dict, its run metadata as Ray's JSON text)] from Ray's newest
    experiment_state-*.json; [] when there is none or its layout is not the expected one."""
    # Names carry the session's start time (experiment_state-YYYY-MM-DD_HH-MM-SS.json), so
    # name order is session order; modification times are not: after a resume Ray copies
    # the older session's file again on every sync.
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return []
    try:
        trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
        trials = [(json.loads(entry[0]), entry[1]) for entry in trial_data]
        if all({"relative_logdir", "status", "trial_id"} <= set(trial) for trial, _ in trials):
            return trials
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        pass
    return []


def resume_checkpoint(run_metadata: str) -> str | None:
    """The folder name (checkpoint_<n>) of the checkpoint Ray's state would restore a trial
    from, from the trial's run metadata in an experiment_state file; None if it has none or
    the layout is not the expected one."""
    try:
        manager = json.loads(run_metadata)["checkpoint_manager"]
        # Ray's _CheckpointManager, cloudpickled into the state file Ray itself wrote.
        latest = pickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
        return Path(latest.checkpoint.path).name if latest is not None else None
    except Exception:  # any other layout (another Ray version) is "unknown"
        return None


def repair_experiment_state(experiment_dir: Path) -> None:
    """Undo what a hard kill can leave in Ray's experiment folder before Tuner.restore.

    Ray copies its state files from a staging folder into the storage path; a kill during
    the copy leaves a truncated file, and Tuner.restore then silently restarts from nothing.
    Every state file of such a session is removed, so Ray restores from the previous
    complete snapshot; trial folders that snapshot does not know and whose params.json is
    truncated (the trial had just been created) are removed too, as Ray will create them again.
    An unfinished trial whose state names a checkpoint Ray had already deleted gets its newest
    recorded complete one under that name, or an empty one that starts it over
    (restore_named_checkpoint).
    """
    sessions = sorted({path.name.split("-", 1)[1].rsplit(".", 1)[0]
                       for path in experiment_dir.glob("experiment_state-*.json")})
    for session in reversed(sessions):
        files = [path for path in experiment_dir.iterdir()
                 if path.is_file() and session in path.name and not path.name.startswith(".")]
        if all(readable(path) for path in files):
            break
        for path in files:
            path.unlink()
    trials = newest_trial_data(experiment_dir)
    known = {trial["relative_logdir"] for trial, _ in trials}
    for params in experiment_dir.glob("*/params.json"):
        if params.parent.name not in known and not readable(params):
            shutil.rmtree(params.parent)
    for trial, metadata in trials:
        named = resume_checkpoint(metadata)
        if named and trial["status"] not in ("TERMINATED", "ERROR"):  # Ray resumes it
            restore_named_checkpoint(experiment_dir / trial["relative_logdir"], named)


def restore_named_checkpoint(trial_dir: Path, named: str) -> None:
    """Put a checkpoint the trial can continue from exactly under the name Ray's state
    restores from.

    With CheckpointConfig(num_to_keep=1) Ray deletes a trial's previous checkpoint as soon as
    it registers the next one, and saves the state naming the new one (and copies the
    trial's result.json into the sweep folder) a moment later; a hard kill in between leaves
    a state naming a deleted folder, and Tuner.restore then fails the trial ("does not exist
    on storage anymore"). The newest checkpoint that a result.json line records and whose
    state.pt is a whole torch file (a zip; a kill mid-copy leaves it truncated) is renamed
    to ``named``, so the trial continues from it with every epoch before it on record. When
    no later checkpoint is recorded (the kill also took the result.json lines of the
    epochs after ``named``), ``named`` becomes an empty folder: the trial starts over from
    its first epoch (tune_p7.trainable), and its seed gives the repeated epochs the same
    values. The checkpoints after ``named`` are removed, as the resumed trial writes those
    names again. Nothing changes when ``named`` exists.
    """
    if not trial_dir.is_dir() or (trial_dir / named).exists():
        return
    later = sorted((path for path in trial_dir.glob("checkpoint_*") if path.name > named),
                   reverse=True)
    recorded = set(read_results(trial_dir / "result.json").checkpoints)
    complete = next((path for path in later
                     if path.name in recorded and zipfile.is_zipfile(path / CHECKPOINT_FILE)),
                    None)
    if complete is None:
        (trial_dir / named).mkdir()
    else:
        complete.rename(trial_dir / named)
    for path in later:
        if path != complete:
            shutil.rmtree(path)


def readable(path: Path) -> bool:
    """Whether a file Ray wrote is complete: it loads as JSON or as a pickle (Ray names some
    pickles *.json). A kill mid-write leaves neither."""
    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        pass
    try:
        pickle.loads(data)
        return True
    except Exception:  # any failure to unpickle means truncated or corrupt
        return False
