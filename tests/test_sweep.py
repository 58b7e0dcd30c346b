"""python -m tune_p7.sweep end to end with real Ray on tiny data (a few seconds per run).

Each test drives the command as a user would (a subprocess), so Ray starts and stops with it.
"""

import json
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest
from optuna import load_study
from optuna.trial import TrialState

from conftest import TINY_SPACE, interrupted_cells, recorded_epochs, reported, run_sweep, \
    start_sweep, sweep_command, wait_for_line, wait_for_trial_workers_to_exit, write_chunk_file
from tune_p7.folder import read_history
from tune_p7.plots import PLOT_FILES
from tune_p7.train import TrainConfig

CELLS = {"baseline", "strong_anchor", "higher_margin", "larger_context"}
HISTORY_COLUMNS = {
    "trial_id", "experiment", "phase", "cell", "epoch", "train_loss", "train_loss_rank",
    "train_loss_margin", "train_loss_teacher", "train_margin", "train_cos_next",
    "train_cos_prev", "val_cos_next", "val_cos_prev", "val_margin", "val_cos_anchor",
    "val_r_at_1", "val_r_at_5", "val_r_at_10", "val_mrr_at_10", "val_global_r_at_1",
    "val_global_r_at_5", "val_global_r_at_10", "val_global_mrr_at_10", "anchor_lambda",
    "gate_weight_mean", "seconds", "sequences_per_second"}
TRIAL_COLUMNS = {
    "trial_id", "experiment", "phase", "cell", "status", "error", "epochs_run",
    "stopped_early", "val_margin", "best_val_margin", "best_epoch", "val_cos_next",
    "val_r_at_5", "train_margin", "seconds"} | set(TrainConfig().to_dict())


def test_smoke_sweep_runs_cells_and_optuna_and_records_a_diverging_trial(finished_sweep):
    done, sweep_dir = finished_sweep["done"], finished_sweep["dir"]
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    history = pd.read_parquet(sweep_dir / "history.parquet")

    cells = trials[trials.phase == "baseline"].set_index("cell")
    assert set(cells.index) == CELLS | {"diverges"}
    assert (cells.loc[list(CELLS), "status"] == "complete").all()
    assert (cells.loc[list(CELLS), "epochs_run"] == 3).all()
    assert cells.loc["larger_context", "context"] == 7
    assert cells.loc["diverges", "status"] == "error"
    assert "diverged" in cells.loc["diverges", "error"]
    # Retried twice by default (--max-failures 2), Ray numbering each failure it records.
    error_txt = sweep_dir / cells.loc["diverges", "trial_dir"] / "error.txt"
    assert [line.split(" (")[0] for line in error_txt.read_text().splitlines()
            if line.startswith("Failure # ")] == ["Failure # 1", "Failure # 2", "Failure # 3"]
    assert "2 retries of a failed trial" in done.stdout

    optuna = trials[trials.phase == "optuna"]
    assert len(optuna) == 4 and (optuna.cell == "").all()
    assert optuna.status.isin(["complete", "stopped_early"]).all()
    assert optuna.margin.between(0.02, 0.20).all()
    assert optuna.temperature.between(0.02, 0.20).all()
    assert optuna.anchor_lambda.between(0.5, 0.95).all()
    assert (optuna.epochs_run >= 2).all()  # ASHA's grace period
    assert (optuna.threads == 1).all()

    assert TRIAL_COLUMNS <= set(trials.columns)
    assert HISTORY_COLUMNS <= set(history.columns)
    assert len(history) == trials.epochs_run.sum()
    baselines = pd.read_parquet(sweep_dir / "baselines.parquet")
    assert set(zip(baselines.context, baselines.predictor)) == {
        (k, p) for k in (5, 7) for p in ("copy_last", "context_mean", "orth_mean")}
    signals = pd.read_parquet(sweep_dir / "data_signals.parquet")
    assert {"context", "split", "forward_signal", "recency", "coherence", "windows"} <= set(
        signals.columns)
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["state"] == "finished"
    assert plan["space"]["cells"]["diverges"]["weight_teacher"] == 1e40
    assert "top 5 (trials that beat all three trivial predictors first" in done.stdout
    assert ("Best trial:" in done.stdout) != ("No trial beats all three" in done.stdout)
    # Cells and Optuna trials are one experiment, and every trial is in the live study.
    assert set(trials.experiment) == {"sweep"}
    study = load_study(study_name="tiny", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = {trial.user_attrs["cell"] or trial.number: trial.state for trial in study.trials}
    assert len(states) == len(trials) and states["diverges"] == TrialState.FAIL
    # The data's short form comes before the first trial, with the trivial predictors.
    assert done.stdout.index("forward signal") < done.stdout.index("epoch 1/")
    assert "K=7:" in done.stdout and "orth_mean Δ" in done.stdout
    # The sweep writes the analysis too: summary, plots and the Optuna study.
    assert "== baseline cells ==" in (sweep_dir / "summary.txt").read_text()
    # "[!.]": not the temporaries of an analysis another test process may be writing now.
    assert sorted(path.name for path in sweep_dir.glob("[!.]*.png")) == sorted(PLOT_FILES)
    assert (sweep_dir / "optuna.db").stat().st_size > 0


def test_interrupted_sweep_resumes_to_completion_keeping_finished_trials(tiny_data, tmp_path):
    command = sweep_command(tiny_data, tmp_path, "resumed", "--epochs", "6")
    sweep_dir = tmp_path / "resumed"

    first = start_sweep(command)
    wait_for_line(first, " done")  # one cell finished, others running
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == 130, output
    assert "--resume" in output
    assert json.loads((sweep_dir / "sweep.json").read_text())["state"] == "interrupted"
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    finished = trials[trials.status == "complete"]
    assert len(finished) >= 1 and len(trials) >= 1
    before = recorded_epochs(sweep_dir, finished)

    second = start_sweep(sweep_command(tiny_data, tmp_path, "resumed", "--resume"))
    wait_for_line(second, "epoch ")  # training again
    second.kill()  # SIGKILL: no chance to write anything
    second.wait(timeout=30)

    third = run_sweep(sweep_command(tiny_data, tmp_path, "resumed", "--resume"))
    assert third.returncode == 0, third.stdout + third.stderr
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    cells = trials[trials.phase == "baseline"]
    assert set(cells.cell) == CELLS and (cells.status == "complete").all()
    assert (cells.epochs_run == 6).all()
    assert len(trials[trials.phase == "optuna"]) == 3
    assert trials.status.isin(["complete", "stopped_early"]).all()
    after = recorded_epochs(sweep_dir, trials[trials.trial_id.isin(before)])
    assert after == before  # finished trials kept as they were (timings aside)


def test_interrupted_optuna_phase_resumes_with_its_rungs_rebuilt(tiny_data, tmp_path):
    """Ctrl-C among the Optuna trials, then --resume: Ray re-adds every trial and the
    scheduler reads their results back into its rungs (tune_p7.scheduler)."""
    command = sweep_command(tiny_data, tmp_path, "asha", "--epochs", "10", "--num-samples", "4")
    sweep_dir = tmp_path / "asha"
    first = start_sweep(command)
    wait_for_line(first, "] optuna ")  # an Optuna trial reported an epoch
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == 130, output
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    optuna = trials[trials.phase == "optuna"]
    assert len(optuna) >= 1
    for row in optuna[optuna.status == "interrupted"].itertuples():
        # Ray marks no result of an interrupted trial done, so resuming does not stop it.
        assert read_history(sweep_dir / row.trial_dir / "result.json", "val_margin")[1] is None
    ended = optuna[optuna.status.isin(["complete", "stopped_early"])]
    before = recorded_epochs(sweep_dir, ended)

    done = run_sweep(sweep_command(tiny_data, tmp_path, "asha", "--resume"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    optuna = trials[trials.phase == "optuna"]
    assert len(optuna) == 4 and (optuna.epochs_run >= 2).all()
    # Every trial ended, read from the resumed session's state (not the older session's,
    # which Ray copies again with every sync and so can carry the newest mtime).
    assert optuna.status.isin(["complete", "stopped_early"]).all(), optuna.status
    assert recorded_epochs(sweep_dir, optuna[optuna.trial_id.isin(before)]) == before


def test_a_kill_that_also_took_the_results_after_the_named_checkpoint_starts_the_cell_over(
        tmp_path):
    """Ray's saved state names a checkpoint Ray has since deleted, and the kill also took
    the result.json lines of the epochs after it (Ray copies the file into the sweep folder
    with its state): no checkpoint can be continued with every epoch on record, so the
    resume starts that cell over from epoch 1 instead of failing it, with the same values."""
    data = write_chunk_file(tmp_path / "data.npz", num_docs=200)  # about a second an epoch
    command = sweep_command(data, tmp_path, "over", "--epochs", "4", "--num-samples", "0",
                            "--max-concurrent", "2")
    experiment = tmp_path / "over" / "ray" / "sweep"
    first, deadline = start_sweep(command), time.monotonic() + 120
    while not interrupted_cells(experiment):
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()  # so that reading its output cannot wait for a running sweep
            output = first.communicate()[0]
            pytest.fail(f"no running cell with a saved checkpoint:\n{output[-3000:]}")
        time.sleep(0.2)
    first.kill()
    first.wait(timeout=30)
    wait_for_trial_workers_to_exit(experiment)
    trial_dir, named = interrupted_cells(experiment)[0]
    lines = reported(trial_dir / "result.json")
    named_at = next(line["epoch"] for line in lines if line["checkpoint_dir_name"] == named)
    kept = [line for line in lines if line["epoch"] < named_at]
    shutil.rmtree(trial_dir / named)
    (trial_dir / "result.json").write_text("".join(json.dumps(line) + "\n" for line in kept))

    done = run_sweep([*command, "--resume"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "over" / "trials.parquet")
    assert (trials.status == "complete").all() and (trials.epochs_run == 4).all()
    again = [line for line in reported(trial_dir / "result.json") if line["pid"] != lines[0]["pid"]]
    assert [line["epoch"] for line in again] == [1, 2, 3, 4]  # started over
    assert [line["val_margin"] for line in again[:len(lines)]] == [
        line["val_margin"] for line in lines]  # the lost run's epochs, repeated exactly


def test_resume_refuses_a_different_plan(tiny_data, tmp_path):
    sweep_dir = tmp_path / "planned"
    sweep_dir.mkdir()
    arguments = {"space": str(TINY_SPACE), "data": str(tiny_data), "profile": "quick",
                 "epochs": 6, "num_samples": None, "seed": 0}
    (sweep_dir / "sweep.json").write_text(json.dumps({"arguments": arguments}))
    done = run_sweep(sweep_command(tiny_data, tmp_path, "planned", "--epochs", "3", "--dry-run"))
    assert done.returncode == 2
    assert "was started with --epochs 6" in done.stderr and "Traceback" not in done.stderr


def test_space_error_is_one_sentence_with_exit_code_2(tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SPACE.read_text().replace("margin:        {low: 0.02, high: 0.20}",
                                                  "margin:        {low: 0.20, high: 0.02}"))
    command = sweep_command(tiny_data, tmp_path, "bad")
    command[command.index(str(TINY_SPACE))] = str(bad)
    done = run_sweep(command)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {bad}: key 'optuna.params.margin' has an empty range (low 0.2 is not below "
        f"high 0.02); make low smaller than high.")
    assert not (tmp_path / "bad").exists()


def test_dry_run_prints_the_plan_and_starts_no_ray(tiny_data, tmp_path, capsys):
    import ray

    from tune_p7.sweep import main

    assert main(["--space", str(TINY_SPACE), "--data", str(tiny_data), "--storage-path",
                 str(tmp_path), "--name", "dry", "--dry-run", "--max-concurrent", "2"]) == 0
    out = capsys.readouterr().out
    assert not ray.is_initialized()
    assert not (tmp_path / "dry").exists()
    for cell in CELLS:
        assert f"cell {cell}" in out
    assert "optuna 3 TPE trials" in out and "epochs at most 21" in out
    assert "concurrency 2" in out and str(tmp_path / "dry") in out


def test_val_data_is_in_the_plan_and_a_mismatched_one_is_refused_before_anything_is_written(
        tiny_data, tmp_path, capsys):
    from tune_p7.data import make_synthetic
    from tune_p7.sweep import main

    vectors, offsets = make_synthetic(num_docs=6, dim=8, seed=4)  # D=8, the data has D=16
    other = tmp_path / "other-d.npz"
    np.savez(other, vectors=vectors, offsets=offsets)
    arguments = ["--space", str(TINY_SPACE), "--data", str(tiny_data), "--val-data", str(other),
                 "--storage-path", str(tmp_path), "--name", "paired"]
    assert main([*arguments, "--dry-run"]) == 2  # the dry run loads the data for its estimate
    captured = capsys.readouterr()
    assert f"(validation: {other})" in captured.out
    assert main(arguments) == 2
    assert capsys.readouterr().err.strip() == captured.err.strip()
    error = captured.err.strip()
    assert error == ("error: other-d.npz: vectors have D=8 but tiny.npz has D=16; --val-data "
                     "must be embedded with the same encoder as --data.")
    assert not (tmp_path / "paired").exists()


def test_the_driver_keeps_the_object_stores_view_of_the_table_not_a_copy():
    import ray

    from tune_p7.data import load_dataset
    from tune_p7.tuner import share_dataset

    dataset = load_dataset("synthetic")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        shared, view = share_dataset(dataset)
        assert np.array_equal(view.vectors, dataset.vectors)
        assert not np.shares_memory(view.vectors, dataset.vectors)
        assert not view.vectors.flags.writeable          # Ray's store, read-only
        # A second get maps the very same memory: the view is the store's, not a copy.
        again = ray.get(shared)
        assert (again.vectors.__array_interface__["data"][0]
                == view.vectors.__array_interface__["data"][0])
    finally:
        ray.shutdown()
