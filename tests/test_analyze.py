"""End to end on sweep folders written by the real sweep (python -m tune_p7.sweep):
DataFrames, recomputable numbers, plots, the Optuna export, the analyze CLI, export-best,
and a sweep interrupted with Ctrl-C.

One tiny sweep (synthetic 16-d data, 1-layer model, 3 epochs, the four cells plus a cell
that diverges, four Optuna trials under ASHA; conftest.finished_sweep) is shared with
test_sweep's smoke test.
"""

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import sweep_command
from tune_p7 import analyze, results
from tune_p7.data import BatchSource, device_table, load_dataset
from tune_p7.metrics import evaluate
from tune_p7.plots import PLOT_FILES
from tune_p7.train import load_model

CELLS = {"baseline", "strong_anchor", "higher_margin", "larger_context", "diverges"}


@pytest.fixture(scope="module")
def sweep_dir(finished_sweep) -> Path:
    return finished_sweep["dir"]


@pytest.fixture(scope="module")
def analyzed(sweep_dir) -> tuple[int, str, str]:
    """python -m tune_p7.analyze on the shared sweep, run once: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "tune_p7.analyze", str(sweep_dir), "--top",
                           "4"], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def run_analyze(capsys, *args: str) -> tuple[int, str, str]:
    code = analyze.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------
# DataFrames


def test_tables_hold_every_trial_and_epoch_of_the_real_sweep(sweep_dir):
    sweep = results.load_sweep(sweep_dir)
    trials, history = sweep.trials, sweep.history
    assert len(trials) == 5 + 4
    assert set(trials.loc[trials.phase == "baseline", "cell"]) == CELLS
    assert (trials.loc[trials.phase == "optuna", "cell"] == "").all()
    assert set(trials.status) == {"complete", "error", "stopped_early"}, trials.status
    assert len(history) == trials.epochs_run.sum()
    assert not trials.duplicated(["experiment", "trial_id"]).any()
    failed = trials[trials.status == "error"].iloc[0]
    assert failed.cell == "diverges" and failed.epochs_run == 0
    assert "diverged" in failed.error and failed.error.count("\n") == 0
    assert failed.diverged and failed.verdict == "FAIL"
    stopped = trials[trials.status == "stopped_early"]
    assert (stopped.epochs_run < stopped.epochs).all() and stopped.stopped_early.all()
    for column in ("trial_id", "experiment", "phase", "cell", "trial_dir", "context", "margin",
                   "temperature", "anchor_lambda", "epochs", "status", "error", "epochs_run",
                   "best_val_margin", "best_epoch", "val_margin", "val_cos_next",
                   "val_cos_prev", "val_cos_anchor", "val_r_at_5", "train_margin",
                   "final_anchor_lambda", "gate_weight_mean", "seconds", "verdict", "flags",
                   "beats_trivial", "backward", "below_copy_last"):
        assert column in trials.columns, column


def test_parquet_written_by_the_sweep_matches_rays_files(sweep_dir):
    from_ray, history = results.collect_tables(sweep_dir)
    written = pd.read_parquet(sweep_dir / "trials.parquet")
    key = ["experiment", "trial_id"]
    pd.testing.assert_frame_equal(written.sort_values(key).reset_index(drop=True),
                                  from_ray.sort_values(key).reset_index(drop=True))
    assert len(pd.read_parquet(sweep_dir / "history.parquet")) == len(history)


def test_every_shown_number_is_recomputable_from_the_dataframes(sweep_dir):
    sweep = results.load_sweep(sweep_dir)
    trials, history = sweep.trials, sweep.history
    # margin is cos_next - cos_prev averaged over the same windows
    np.testing.assert_allclose(history.val_margin, history.val_cos_next - history.val_cos_prev,
                               atol=1e-5)
    last = history.sort_values("epoch").groupby(["experiment", "trial_id"]).tail(1)
    merged = trials.merge(last, on=["experiment", "trial_id"], suffixes=("", "_history"))
    for metric in ("val_margin", "val_cos_next", "val_r_at_5", "train_margin"):
        np.testing.assert_array_equal(merged[metric], merged[f"{metric}_history"])
    np.testing.assert_array_equal(merged.final_anchor_lambda, merged.anchor_lambda_history)
    table = sweep.comparison()
    copy_last = sweep.baselines.set_index(["context", "predictor"])
    row = table[table.reference == "copy_last"].iloc[0]
    trial = trials[trials.trial_id == row.trial_id].iloc[0]
    assert row.val_r_at_5_diff == pytest.approx(
        trial.val_r_at_5 - copy_last.loc[(trial.context, "copy_last"), "val_r_at_5"])
    below = (trial.val_cos_next < copy_last.loc[(trial.context, "copy_last"), "val_cos_next"]
             or row.val_r_at_5_diff < 0)
    assert bool(trial.below_copy_last) == below


# ---------------------------------------------------------------------------------------
# The analyze command, plots, Optuna


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", path
    return struct.unpack(">II", header[16:24])


def test_analyze_prints_every_section_and_writes_plots_and_study(sweep_dir, analyzed):
    code, out, err = analyzed
    assert code == 0 and err == "", err
    for title in ("== data signals ==", "== trivial predictors ==", "== baseline cells ==",
                  "== leaderboard ==", "== best trial ==", "== best config ==", "== pareto ==",
                  "== early stopping ==", "== importances ==", "== files =="):
        assert title in out
    assert "copy_last" in out and "orth_mean" in out and "larger_context" in out
    assert "beat all three trivial predictors" in out
    best = results.load_sweep(sweep_dir).best_statement()
    assert best.startswith(("Best trial:", "No trial beats all three")) and best in out
    for name in PLOT_FILES:
        path = sweep_dir / name
        assert str(path) in out
        width, height = png_size(path)
        assert width > 400 and height > 300 and path.stat().st_size > 20_000, name
    assert (sweep_dir / "summary.txt").read_text().count("== leaderboard ==") == 1


def test_optuna_study_has_every_trial_with_its_state_and_importances(sweep_dir, analyzed):
    assert analyzed[0] == 0
    study = optuna.load_study(study_name=sweep_dir.name,
                              storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    trials = results.load_sweep(sweep_dir).trials
    assert len(study.trials) == len(trials)
    states = pd.Series([t.state for t in study.trials]).value_counts()
    expected = trials.status.map({"complete": TrialState.COMPLETE,
                                  "stopped_early": TrialState.PRUNED,
                                  "error": TrialState.FAIL}).value_counts()
    assert states.to_dict() == expected.to_dict()
    history = results.load_sweep(sweep_dir).history
    for trial in study.trials:
        epochs = history[history.trial_id == trial.user_attrs["trial_id"]]
        assert trial.intermediate_values == dict(zip(epochs.epoch, epochs.val_margin))
        if trial.state == TrialState.COMPLETE:
            assert trial.value == epochs.val_margin.iloc[-1]
    importances = optuna.importance.get_param_importances(study)
    assert {"margin", "temperature", "anchor_lambda"} <= set(importances)
    assert sum(importances.values()) == pytest.approx(1.0)


def test_analyze_formats_sorting_and_thresholds(sweep_dir, capsys):
    lowered = ("--threshold", "pass_margin=-1", "--threshold", "pass_cos_next=-1",
               "--threshold", "pass_cos_anchor=-1")
    code, out, _ = run_analyze(capsys, sweep_dir, "--format", "json", "--sort", "val_cos_next",
                               "--top", "3", *lowered, "--no-trivial-gate")
    report = json.loads(out)
    board = pd.DataFrame(report["leaderboard"])
    assert code == 0 and len(board) == 3
    ranked = [board[board.beats_trivial == flag].val_cos_next for flag in (True, False)]
    assert all(values.is_monotonic_decreasing for values in ranked)
    assert set(board.verdict) == {"PASS"}  # every threshold lowered below any value, no gate
    assert report["best_config"] and report["trivial_predictors"] and report["best_trial"]
    assert {"pareto", "early_stopping"} <= set(report)
    # with the gate (the default) only a trial that beats every trivial predictor passes
    code, out, _ = run_analyze(capsys, sweep_dir, "--format", "json", *lowered, "--top", "20")
    board = pd.DataFrame(json.loads(out)["leaderboard"])
    ran = board[(board.status != "error") & ~board.verdict.isin(["warm-up", ""])]
    assert code == 0 and ((ran.verdict == "PASS") == (ran.beats_trivial == True)).all()  # noqa: E712
    code, out, _ = run_analyze(capsys, sweep_dir, "--format", "csv")
    blocks = {block.split("\n", 1)[0]: block.split("\n", 1)[1]
              for block in out.strip().split("# ")[1:]}
    leaderboard = pd.read_csv(StringIO(blocks["leaderboard"]))
    assert code == 0 and {"verdict", "flags", "val_margin"} <= set(leaderboard.columns)
    assert set(leaderboard.verdict) == {"FAIL"}  # default criteria: no trial passes here


def test_analyze_exits_2_with_one_sentence_for_bad_input(sweep_dir, tmp_path, capsys):
    for args in ([tmp_path], [tmp_path / "missing"], [sweep_dir, "--sort", "val_typo"],
                 [sweep_dir, "--threshold", "pass_margin"], [sweep_dir, "--top", "0"]):
        code, out, err = run_analyze(capsys, *args)
        assert code == 2 and out == "", args
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_export_best_reloads_and_reproduces_its_validation_margin(sweep_dir, tmp_path, capsys):
    code, out, err = run_analyze(capsys, sweep_dir, "--export-best", tmp_path / "best")
    assert code == 0, err
    assert "load_model(" in out
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    sweep = results.load_sweep(sweep_dir)
    best = sweep.best_trial()
    assert config["trial_id"] == best.trial_id and metrics["val_margin"] == best.val_margin
    assert metrics["beats_trivial"] == bool(best.beats_trivial)
    assert out.strip().splitlines()[-1] == sweep.best_statement()
    model = load_model(tmp_path / "best" / "best.pt")
    dataset = load_dataset(json.loads((sweep_dir / "sweep.json").read_text())["data"])
    source = BatchSource(dataset.windows(config["context"], "val"),
                         device_table(dataset.vectors, "cpu"))
    again = evaluate(model, source, global_queries=config["global_queries"] or None)
    assert again["margin"] == pytest.approx(metrics["val_margin"], abs=1e-5)
    assert again["r_at_5"] == pytest.approx(metrics["val_r_at_5"], abs=1e-6)


def test_cells_learn_lambda_in_the_original_range_and_optuna_trials_in_the_searched_one(sweep_dir):
    trials = results.load_sweep(sweep_dir).trials
    cells = trials[(trials.phase == "baseline") & (trials.status == "complete")]
    optuna_trials = trials[trials.phase == "optuna"]
    assert set(zip(cells.lambda_min, cells.lambda_max)) == {(0.6, 0.9)}
    assert set(zip(optuna_trials.lambda_min, optuna_trials.lambda_max)) == {(0.5, 0.95)}
    assert cells.final_anchor_lambda.between(0.6, 0.9).all()
    params = json.loads((sweep_dir / cells.trial_dir.iloc[0] / "params.json").read_text())
    assert (params["lambda_min"], params["lambda_max"]) == (0.6, 0.9)


def test_pareto_and_early_stopping_sections_follow_from_the_tables(sweep_dir, capsys):
    code, out, _ = run_analyze(capsys, sweep_dir, "--format", "json")
    report = json.loads(out)
    sweep = results.load_sweep(sweep_dir)
    trials, history = sweep.trials, sweep.history
    # Pareto: every other trial that ran is dominated by one of the set
    front = pd.DataFrame(report["pareto"])
    metrics = ["val_margin", "val_cos_next", "val_r_at_5"]
    ran = trials[(trials.epochs_run > 0) & (trials.status != "error")]
    assert set(front.trial_id) == set(ran.loc[ran.pareto.astype(bool), "trial_id"])
    for _, trial in ran[~ran.trial_id.isin(front.trial_id)].iterrows():
        assert any((row[metrics] >= trial[metrics]).all() and (row[metrics] > trial[metrics]).any()
                   for _, row in front.iterrows()), trial.trial_id
    # Early stopping: one rung (grace 2, max_t 3); rho over the runs that reached max_t
    check = pd.DataFrame(report["early_stopping"])
    assert list(check.rung_epoch) == [2]
    finished = trials[(trials.status == "complete") & (trials.epochs_run == 3)]
    values = history.set_index(["trial_id", "epoch"]).val_margin
    at_rung = pd.Series([values[(t, 2)] for t in finished.trial_id])
    final = pd.Series([values[(t, 3)] for t in finished.trial_id])
    assert check.runs[0] == len(finished)
    assert check.spearman_rho[0] == pytest.approx(at_rung.corr(final, method="spearman"))
    assert check.stopped[0] == (trials.status == "stopped_early").sum()


# ---------------------------------------------------------------------------------------
# Partial and interrupted sweeps


def test_a_sweep_without_parquet_files_loads_from_rays_files(sweep_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("*.parquet", "*.png",
                                                                   "optuna.db"))
    shutil.copy(sweep_dir / "baselines.parquet", copy)
    loaded, original = results.load_sweep(copy), results.load_sweep(sweep_dir)
    assert loaded.source == "ray"
    key = ["experiment", "trial_id"]
    pd.testing.assert_frame_equal(
        loaded.trials.drop(columns="trial_dir").sort_values(key).reset_index(drop=True),
        original.trials.drop(columns="trial_dir").sort_values(key).reset_index(drop=True))


def wait_for_line(process: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            seen.append(line)
            if text in line:
                return
            if not line and process.poll() is not None:
                break
    process.kill()
    pytest.fail(f"sweep never printed {text!r}: {''.join(seen)[-2000:]}")


def test_a_sweep_interrupted_with_ctrl_c_reads_as_interrupted(finished_sweep, capsys):
    # The shared sweep's space and data, in a sweep of its own.
    command = sweep_command(finished_sweep["data"], finished_sweep["storage"], "interrupted",
                            "--max-concurrent", "2", "--epochs", "60", "--num-samples", "0",
                            space=finished_sweep["space"])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    wait_for_line(process, "epoch 2/60", timeout=120)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    sweep_dir = finished_sweep["storage"] / "interrupted"
    trials = results.load_sweep(sweep_dir).trials
    assert len(trials) >= 1 and "running" not in set(trials.status)
    assert "interrupted" in set(trials.status), trials[["cell", "status", "epochs_run"]]
    assert (trials.loc[trials.status == "interrupted", "epochs_run"] < 60).all()
    assert run_analyze(capsys, sweep_dir)[0] == 0
    study = optuna.load_study(study_name="interrupted",
                              storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    # The live study keeps an interrupted trial RUNNING: --resume continues it.
    cut = set(trials.loc[trials.status == "interrupted", "trial_id"])
    assert cut and {t.state for t in study.trials if t.user_attrs["trial_id"] in cut} == {
        TrialState.RUNNING}
    assert os.path.exists(sweep_dir / "trials.parquet")


def test_analyze_works_on_a_sweep_that_has_just_started(tmp_path, capsys):
    (tmp_path / "ray" / "baseline").mkdir(parents=True)
    (tmp_path / "sweep.json").write_text(json.dumps({"state": "running", "optuna": {
        "context": 5, "params": {"margin": {"low": 0.02, "high": 0.2, "log": False}}}}))
    code, out, err = run_analyze(capsys, tmp_path)
    assert code == 0, err
    assert "still running" in out and "== leaderboard ==\n(none)" in out
    for name in PLOT_FILES:
        assert png_size(tmp_path / name)[0] > 300
    assert not (tmp_path / "optuna.db").exists()  # the sweep writes the study, not the analysis
