"""Watching a sweep: the live Optuna study, Ray's TensorBoard, MLflow and W&B loggers, the
progress line and sweep.json's progress, the time estimate.

One tiny real sweep with ``--log-to tensorboard,mlflow,wandb`` is shared by the module: it is
killed (SIGKILL) while cells train, after the first trials ended, then resumed to the end; the
test thread reads optuna.db and sweep.json while it runs. Before the resume, the interrupted
cell is left as a kill at Ray's worst moment leaves it: the checkpoint Ray's saved state names
is deleted, a later one that result.json records is there (Ray's num_to_keep=1 window). Every
tracker writes locally (MLflow's SQLite store, W&B offline): no network.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import interrupted_cells, reported, wait_for_trial_workers_to_exit, \
    write_tiny_space
from tune_p7 import analyze, results
from tune_p7.config import TrainConfig
from tune_p7.data import load_dataset, make_synthetic
from tune_p7.estimate import StepTiming, wall_range
from tune_p7.plan import EpochBudget
from tune_p7.sweep_progress import TrialCount, format_progress, measure
from tune_p7.study import fail_stale_trials

CELLS = {"baseline", "strong_anchor", "higher_margin", "larger_context"}
TRIALS = len(CELLS) + 3
PROGRESS = re.compile(r"^\[\s*\d+s\] progress  trials (\d+)/(\d+) done, epochs (\d+) of at "
                      r"most (\d+), \S+ elapsed, (about \S+–\S+ left|time left known after "
                      r"the first epochs)$", re.MULTILINE)
# Kill the first run once two trials ended (with 2 slots the fourth cell has then started,
# so every cell is a trial of the study before the kill) and a later cell is at epoch 2:
# that cell's epoch-1 checkpoint (and Ray's state with it) is saved, and a cell is never
# stopped, so the resume must continue it in its own study trial.
CELL_MID_RUN = re.compile(r"\] progress .*?\] progress .*?\] baseline/\S+ +epoch 2/3",
                          re.DOTALL)
OFFLINE_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
               "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    """The shared sweep: killed while cells train (CELL_MID_RUN), then resumed to the end.

    Returns its folder, both runs' output, the study as read while the first run ran and
    just after the kill, and the sweep.json progress seen meanwhile.
    """
    root = tmp_path_factory.mktemp("tracked")
    space = write_tiny_space(root / "space.yaml", epochs=3, optuna_trials=3)
    # 200 documents: epochs of about a second, so the kill lands inside a cell's run.
    vectors, offsets = make_synthetic(num_docs=200, dim=16, min_chunks=12, max_chunks=20, seed=3)
    np.savez(root / "data.npz", vectors=vectors, offsets=offsets)
    command = [sys.executable, "-m", "tune_p7.sweep", "--space", str(space), "--data",
               str(root / "data.npz"), "--storage-path", str(root), "--name", "watched",
               "--max-concurrent", "2"]
    env = {**os.environ, **OFFLINE_ENV, "WANDB_CONFIG_DIR": str(root / "wandb-config"),
           "WANDB_CACHE_DIR": str(root / "wandb-cache"), "WANDB_DATA_DIR": str(root / "wandb-data")}
    sweep_dir = root / "watched"
    log = root / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([*command, "--log-to", "tensorboard,mlflow,wandb"],
                                 stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    experiment_dir = sweep_dir / "ray" / "sweep"
    running, progress = watch(first, sweep_dir, log, until=CELL_MID_RUN,
                              ready=lambda: bool(interrupted_cells(experiment_dir)))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed = read_study(sweep_dir)
    staged = stage_deleted_checkpoint(experiment_dir)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"dir": sweep_dir, "first": log.read_text(), "resumed": resumed.stdout,
            "running": running, "killed": killed, "progress": progress, "staged": staged,
            "trials": pd.read_parquet(sweep_dir / "trials.parquet"),
            "history": pd.read_parquet(sweep_dir / "history.parquet")}


def watch(process, sweep_dir: Path, log: Path, until: re.Pattern, ready, timeout: float = 240):
    """Poll optuna.db and sweep.json while ``process`` runs, until ``until`` matches its
    log and then ``ready()`` is true. Returns (snapshots of the study: [(number, state,
    intermediate values, user attrs)], the sweep.json progress records and the analysis'
    reading of them)."""
    snapshots, progress, deadline = [], [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (sweep_dir / "optuna.db").exists():
            snapshots.append(read_study(sweep_dir))
        plan = sweep_dir / "sweep.json"
        saved = json.loads(plan.read_text()).get("progress") if plan.exists() else None
        if saved and saved not in [figures for figures, _ in progress]:
            sweep = results.load_sweep(sweep_dir)  # reads sweep.json again: the same figures
            progress.append((sweep.run_state["progress"], analyze.reading(sweep)))
        if until.search(log.read_text()) and ready():
            return snapshots, progress
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"never saw {until.pattern!r} with ready(): {ready()}:\n"
                f"{log.read_text()[-3000:]}")


def stage_deleted_checkpoint(experiment_dir: Path) -> tuple[Path, int]:
    """Leave an interrupted cell as a kill inside Ray's num_to_keep window does: the checkpoint
    its saved state names is gone and a later one, recorded by result.json, is there (here the
    same state under the later name). Returns (its result.json, the epoch of the newest
    checkpoint result.json records that is there: the one a resume continues from; 0 when
    there is none and the resume starts the cell over).

    The killed driver's trial workers live on for a moment and may still write a checkpoint
    (under the next name); the folder is staged once they are gone. Where the kill itself
    landed in that window (Ray deleted the named checkpoint after the next report, before
    its next state save and the copy of result.json that comes with it), the folder is left
    as it is.
    """
    wait_for_trial_workers_to_exit(experiment_dir)
    for trial_dir, named in interrupted_cells(experiment_dir):
        results = trial_dir / "result.json"
        if (trial_dir / named).exists():
            newest = max(int(path.name.split("_")[1])
                         for path in trial_dir.glob("checkpoint_*"))
            later = f"checkpoint_{newest + 1:06d}"
            (trial_dir / named).rename(trial_dir / later)
            results.write_text(results.read_text().replace(
                f'"checkpoint_dir_name": "{named}"', f'"checkpoint_dir_name": "{later}"'))
        recorded = [line["epoch"] for line in reported(results)
                    if line.get("checkpoint_dir_name")
                    and (trial_dir / line["checkpoint_dir_name"]).exists()]
        # None: the kill also took the lines after the checkpoint Ray had deleted, and the
        # resume starts the cell over (tune_p7.folder.restore_named_checkpoint).
        return results, recorded[-1] if recorded else 0
    pytest.fail("no interrupted cell with a checkpoint at the kill")


def read_study(sweep_dir: Path) -> list[tuple]:
    """(number, state, intermediate values, user attrs) of every trial of the study (the
    sweep creates the file with the study in it, so it is there once the file is)."""
    study = optuna.load_study(study_name="watched", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return [(trial.number, trial.state, dict(trial.intermediate_values), dict(trial.user_attrs))
            for trial in study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------------------------------
# The live Optuna study


def test_the_study_shows_cells_and_trials_while_they_run(tracked):
    seen = [trial for snapshot in tracked["running"] for trial in snapshot]
    assert {attrs["cell"] for _, _, _, attrs in seen} >= CELLS  # cells are trials of it
    running_with_epochs = [values for _, state, values, _ in seen
                           if state == TrialState.RUNNING and values]
    assert running_with_epochs, "no RUNNING trial with an intermediate value was ever seen"
    # A cell is complete in the study long before the sweep ends.
    assert any(state == TrialState.COMPLETE and attrs["cell"] for _, state, _, attrs in seen)


def live_and_stale(study_trials, trial_ids) -> tuple[dict, list]:
    """({Ray trial_id: study trial} of the sweep's trials, the other study trials): a trial
    asked just before the hard kill, which Ray's saved state does not know, is stale."""
    live = {t.user_attrs["trial_id"]: t for t in study_trials
            if t.user_attrs["trial_id"] in trial_ids}
    return live, [t for t in study_trials if t.user_attrs["trial_id"] not in trial_ids]


def test_the_finished_study_has_every_trial_with_its_state_values_and_settings(tracked):
    study = optuna.load_study(study_name="watched",
                              storage=f"sqlite:///{tracked['dir'] / 'optuna.db'}")
    trials, history = tracked["trials"], tracked["history"]
    by_id, stale = live_and_stale(study.trials, set(trials.trial_id))
    assert len(by_id) == len(trials) == TRIALS
    assert all(t.state == TrialState.FAIL for t in stale)  # it may have reported epochs
    states = {"complete": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED}
    for row in trials.itertuples():
        trial = by_id[row.trial_id]
        assert trial.state == states[row.status], row.trial_id
        assert (trial.user_attrs["phase"], trial.user_attrs["cell"]) == (row.phase, row.cell)
        epochs = history[history.trial_id == row.trial_id]
        assert trial.intermediate_values == dict(zip(epochs.epoch, epochs.val_margin))
        assert trial.value == epochs.val_margin.iloc[-1]  # PRUNED: its last epoch's value
        assert trial.params == {"margin": row.margin, "temperature": row.temperature,
                                "anchor_lambda": row.anchor_lambda, "context": row.context}
    cells = {trial.user_attrs["cell"]: trial.params for trial in by_id.values()}
    assert cells["larger_context"]["context"] == 7
    assert cells["strong_anchor"]["anchor_lambda"] == 0.6
    assert (trials[trials.phase == "baseline"].status == "complete").all()  # never stopped


def test_a_resumed_sweep_continues_the_same_study(tracked):
    ids = set(tracked["trials"].trial_id)
    before = {number: (state, values) for number, state, values, attrs in tracked["killed"]
              if attrs["trial_id"] in ids}
    after = {number: (state, values) for number, state, values, attrs
             in read_study(tracked["dir"]) if attrs["trial_id"] in ids}
    assert len(before) < TRIALS and set(before) <= set(after) and len(after) == TRIALS
    continued = 0
    for number, (state, values) in before.items():
        if state.is_finished():
            assert after[number] == (state, values)  # ended trials kept as they were
        else:  # a killed one was continued in the same study trial, not started anew
            assert after[number][0] in (TrialState.COMPLETE, TrialState.PRUNED)
            assert values.items() <= after[number][1].items()
            continued += 1
    assert continued >= 1  # the cell that was at epoch 2
    # The cell whose named checkpoint was gone continued from the later one, or, where the
    # kill also took the result.json lines after it, started over (epoch 0).
    results, epoch = tracked["staged"]
    lines = reported(results)
    resumed = [line["epoch"] for line in lines if line["pid"] != lines[0]["pid"]]
    assert resumed == list(range(epoch + 1, 4))
    assert tracked["trials"].set_index("trial_id").status[lines[0]["trial_id"]] == "complete"
    assert "resuming sweep watched" in tracked["resumed"]


def test_stale_trials_of_a_hard_kill_end_as_fail_and_live_ones_stay(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    live, stale = study.ask(), study.ask()
    study.enqueue_trial({"margin": 0.1})
    assert fail_stale_trials(study, {live.number}) == 2
    states = [trial.state for trial in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL]


# ---------------------------------------------------------------------------------------
# Trackers


def test_mlflow_has_one_run_per_trial_with_phase_cell_config_and_epochs(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked['dir'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("watched")
    assert experiment.artifact_location == (tracked["dir"] / "mlartifacts").resolve().as_uri()
    runs = {run.info.run_name.rsplit("-", 1)[-1]: run
            for run in client.search_runs([experiment.experiment_id])}
    trials, history = tracked["trials"], tracked["history"]
    assert set(trials.trial_id) <= set(runs)  # one run per trial: a resumed one keeps its run
    # A trial started just before the kill and never saved by Ray ran again under a new id.
    assert all(run.info.status == "KILLED" for trial_id, run in runs.items()
               if trial_id not in set(trials.trial_id))
    fields = set(TrainConfig().to_dict())
    for row in trials.itertuples():
        run = runs[row.trial_id]
        assert (run.data.tags["phase"], run.data.tags["cell"]) == (row.phase, row.cell)
        assert run.info.run_name == f"{row.cell or row.phase}-{row.trial_id}"
        assert run.data.tags["trial_name"].endswith(row.trial_id)  # Ray's own tag
        assert fields | {"phase", "cell"} <= set(run.data.params)
        assert float(run.data.params["margin"]) == row.margin
        assert int(run.data.params["context"]) == row.context
        assert run.info.status == "FINISHED"
        epochs = history[history.trial_id == row.trial_id]
        logged = client.get_metric_history(run.info.run_id, "val_margin")
        assert {m.step: m.value for m in logged} == pytest.approx(
            dict(zip(epochs.epoch, epochs.val_margin)))


def test_wandb_writes_an_offline_run_per_trial_with_the_config_and_epochs(tracked):
    history = tracked["history"]
    runs = {}
    for path in sorted(tracked["dir"].glob("wandb/offline-run-*/run-*.wandb")):
        run_id = path.parent.name.rsplit("-", 1)[-1]  # W&B's run id is Ray's trial id
        runs.setdefault(run_id, []).append(wandb_run(path))
    assert set(tracked["trials"].trial_id) <= set(runs)  # (+ a trial Ray never saved)
    whole = 0
    for row in tracked["trials"].itertuples():
        for config, _ in runs[row.trial_id]:
            if config:  # a run file the kill cut off before its first record is empty
                assert (config["phase"], config["cell"], config["margin"], config["context"]) == (
                    row.phase, row.cell, row.margin, row.context)
        logged = {epoch: value for _, epochs in runs[row.trial_id] for epoch, value in epochs}
        expected = dict(zip(*history.loc[history.trial_id == row.trial_id,
                                         ["epoch", "val_margin"]].values.T))
        if len(runs[row.trial_id]) == 1:  # ran in one session: every epoch is there
            assert logged == pytest.approx(expected)
            whole += 1
        else:  # SIGKILL can take the W&B process's unwritten records with it
            assert all(expected[epoch] == pytest.approx(value)
                       for epoch, value in logged.items())
    # Two sessions hold only the 2 trials running at the kill and one whose end it hid.
    assert whole >= TRIALS - 3


def test_tensorboard_event_files_hold_every_epoch(tracked):
    history = tracked["history"]
    for row in tracked["trials"].itertuples():
        files = list((tracked["dir"] / row.trial_dir).glob("events.out.tfevents.*"))
        values = {step: value for path in files for step, value in event_scalars(path)}
        expected = history[history.trial_id == row.trial_id]
        assert values == pytest.approx(dict(zip(expected.epoch, expected.val_margin)), abs=1e-6)


def test_a_missing_tracker_package_is_one_sentence_naming_the_extra(tmp_path, monkeypatch,
                                                                    capsys):
    from tune_p7.sweep import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    arguments = ["--data", "synthetic", "--storage-path", str(tmp_path), "--name", "x",
                 "--dry-run"]
    assert main([*arguments, "--log-to", "tensorboard,mlflow"]) == 2
    assert capsys.readouterr().err == ("error: --log-to mlflow needs the mlflow package; "
                                       "install it with pip install 'tune-p7[mlflow]'.\n")
    assert main([*arguments, "--log-to", "neptune"]) == 2
    assert "unknown tracker 'neptune'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resuming_a_sweep_of_the_older_two_experiment_layout_is_refused(tmp_path, capsys):
    from conftest import TINY_SPACE
    from tune_p7.sweep import main

    (tmp_path / "old" / "ray" / "baseline").mkdir(parents=True)
    (tmp_path / "old" / "sweep.json").write_text(json.dumps({"arguments": {
        "space": str(TINY_SPACE)}}))
    assert main(["--storage-path", str(tmp_path), "--name", "old", "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'old'} holds a sweep of an older tune_p7 (ray/baseline, not "
        f"ray/sweep); analyse it as it is, or start a new sweep with another --name.\n")


# ---------------------------------------------------------------------------------------
# Progress and the estimate


def test_a_progress_line_follows_every_ended_trial_and_ends_at_the_epochs_run(tracked):
    for output in (tracked["first"], tracked["resumed"]):
        lines = PROGRESS.findall(output)
        ended = re.findall(r"  (done|stopped by ASHA at epoch|ERROR)", output)
        assert len(lines) == len(ended) >= 1
        done = [int(line[0]) for line in lines]
        assert done == sorted(done) and all(int(total) == TRIALS for _, total, *_ in lines)
        assert all(int(run) <= int(at_most) <= TRIALS * 3 for _, _, run, at_most, _ in lines)
    final = PROGRESS.findall(tracked["resumed"])[-1]
    epochs = len(tracked["history"])
    assert final[:4] == (str(TRIALS), str(TRIALS), str(epochs), str(epochs))
    assert final[4] == "about 0s–0s left"
    saved = json.loads((tracked["dir"] / "sweep.json").read_text())["progress"]
    assert {k: saved[k] for k in ("trials_done", "trials_total", "epochs_run",
                                  "epochs_at_most", "left_s")} == {
        "trials_done": TRIALS, "trials_total": TRIALS, "epochs_run": epochs,
        "epochs_at_most": epochs, "left_s": [0, 0]}


def test_a_running_sweep_shows_its_progress_to_another_reader(tracked):
    assert tracked["progress"], "sweep.json never had progress while the sweep ran"
    progress, reading = tracked["progress"][0]
    assert 1 <= progress["trials_done"] < TRIALS and progress["trials_total"] == TRIALS
    assert f"Progress at {progress['updated']}: {format_progress(progress)}." in reading


def test_progress_counts_epochs_left_from_the_first_rung_to_the_last_epoch():
    budget = EpochBudget(fixed=4, searched=12, epochs=8, first_rung=2)
    trials = [TrialCount(8, 8, searched=False, ended=True),      # a finished cell
              TrialCount(3, 8, searched=False, ended=False),     # a cell at epoch 3
              TrialCount(2, 8, searched=True, ended=True),       # stopped at the rung
              TrialCount(1, 8, searched=True, ended=False)]      # before the rung
    progress = measure(trials, budget, elapsed_s=125.4, epochs_per_s=0.5)
    # left at least: cell 5 + trial 1 + 2 cells x 8 + 10 trials x 2 = 42 epochs; at most:
    # 5 + 7 + 2 x 8 + 10 x 8 = 108 epochs; at most in all: 14 run + 108 = 122.
    assert progress == {"trials_done": 2, "trials_total": 16, "epochs_run": 14,
                        "epochs_at_most": 122, "elapsed_s": 125, "left_s": [84, 216]}
    assert format_progress(progress) == ("trials 2/16 done, epochs 14 of at most 122, 2m05s "
                                         "elapsed, about 1m24s–3m36s left")
    assert measure([], budget, 3.0, None)["left_s"] is None


def test_the_wall_time_range_spreads_the_trials_over_the_slots():
    # 4 cells of 10, 10, 10, 20 s; 12 trials of 2 s an epoch, 2..8 epochs, 2 slots.
    assert wall_range([10, 10, 10, 20], 2.0, 12, 2, 8, 2) == (49.0, 121.0)
    # One slot per trial: the longest trial bounds it.
    assert wall_range([10, 10, 10, 20], 2.0, 12, 2, 8, 100) == (20.0, 20.0)


def test_an_epoch_is_timed_on_the_windows_it_trains_on_and_evaluates():
    dataset = load_dataset("synthetic")
    train, val = (len(dataset.windows(5, split)) for split in ("train", "val"))
    timing = StepTiming(train_s_per_window=1.0, eval_s_per_window=0.001)
    capped = TrainConfig(context=5, epoch_windows=100, max_val_windows=50, train_eval_windows=10)
    assert timing.epoch_seconds(capped, dataset) == pytest.approx(100 + (50 + 10) * 0.001)
    whole = TrainConfig(context=5, epoch_windows=0, max_val_windows=0, train_eval_windows=0)
    assert timing.epoch_seconds(whole, dataset) == pytest.approx(train + (val + train) * 0.001)


def test_the_dry_run_prints_a_time_estimate_from_timed_steps(tmp_path, capsys):
    from conftest import TINY_SPACE
    from tune_p7.sweep import main

    started = time.monotonic()
    assert main(["--space", str(TINY_SPACE), "--data", "synthetic", "--storage-path",
                 str(tmp_path), "--name", "dry", "--dry-run", "--max-concurrent", "2"]) == 0
    assert time.monotonic() - started < 60
    line = next(line for line in capsys.readouterr().out.splitlines() if "estimate" in line)
    low, high = re.search(r"estimate on this machine: (\S+)–(\S+) of trials at 2 at once",
                          line).groups()
    assert seconds(low) <= seconds(high) and seconds(low) > 0
    assert "of each of 2 model sizes" in line  # K=5 (cells and trials) and K=7


# ---------------------------------------------------------------------------------------
# Readers of the trackers' own files


def seconds(text: str) -> int:
    """'45s' / '3m20s' / '2h05m' -> seconds."""
    parts = dict((unit, int(value)) for value, unit in re.findall(r"(\d+)([hms])", text))
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def wandb_run(path: Path) -> tuple[dict, list[tuple[int, float]]]:
    """(config, [(epoch, val_margin)]) of an offline W&B run file, parsed with W&B's own
    protobuf records from its LevelDB-style log (7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    config, epochs = {}, []
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # cut short: the run's process was killed
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind not in (1, 4):  # FULL or LAST chunk of a record
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config given to wandb.init, then its updates
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            epochs.append((items["epoch"], items["val_margin"]))
    return config, epochs


def event_scalars(path: Path) -> list[tuple[int, float]]:
    """(step, value) of ray/tune/val_margin in a TensorBoard event file (TFRecord framing:
    8-byte length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    from tensorboardX.proto import event_pb2

    data, position, found = path.read_bytes(), 0, []
    while position < len(data):
        length = struct.unpack("<Q", data[position:position + 8])[0]
        event = event_pb2.Event()
        event.ParseFromString(data[position + 12:position + 12 + length])
        position += 12 + length + 4
        found += [(event.step, value.simple_value) for value in event.summary.value
                  if value.tag == "ray/tune/val_margin"]
    return found

