"""tune_p7.results: Ray trial folders -> DataFrames, statuses, verdicts, flags, helpers.

The reader tests build a small folder in Ray's layout with real files (params.json,
result.json lines with Ray's own fields, error.txt, experiment_state-*.json); the
end-to-end tests on a folder written by the real sweep live in tests/test_analyze.py.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tune_p7 import results
from tune_p7.folder import RAY_FIELDS, SweepFolder
from tune_p7.plan import Plan
from tune_p7.train import TrainConfig
from tune_p7.verdicts import FLAGS, Criteria, verdicts

HISTORY_METRICS = (
    "train_loss", "train_loss_rank", "train_loss_margin", "train_loss_teacher", "train_margin",
    "train_cos_next", "train_cos_prev", "val_cos_next", "val_cos_prev", "val_margin",
    "val_cos_anchor", "val_r_at_1", "val_r_at_5", "val_r_at_10", "val_mrr_at_10",
    "val_global_r_at_1", "val_global_r_at_5", "val_global_r_at_10", "val_global_mrr_at_10",
    "anchor_lambda", "gate_weight_mean", "seconds", "sequences_per_second")


def epoch_metrics(epoch: int, **values) -> dict:
    """A full history row (every train metric) with plausible defaults, overridable."""
    row = dict.fromkeys(HISTORY_METRICS, 0.1)
    row.update(epoch=epoch, val_cos_next=0.6, val_cos_prev=0.55, val_margin=0.05,
               val_cos_anchor=0.7, anchor_lambda=0.8 - 0.01 * epoch, gate_weight_mean=0.6,
               seconds=2.0, val_r_at_5=0.5)
    row.update(values)
    return row


def ray_line(trial_id: str, config: dict, metrics: dict) -> str:
    """One result.json line as Ray writes it: the metrics plus Ray's own fields."""
    return json.dumps({**metrics, "timestamp": 1795828674, "checkpoint_dir_name": None,
                       "done": False, "training_iteration": metrics["epoch"],
                       "trial_id": trial_id, "date": "2026-11-28_01-17-54",
                       "time_this_iter_s": 2.0, "time_total_s": 2.0 * metrics["epoch"],
                       "pid": 1, "hostname": "vm", "node_ip": "192.0.2.2", "config": config,
                       "time_since_restore": 2.0, "iterations_since_restore": 1})


def add_trial(experiment_dir: Path, index: int, epochs: list[dict], *, planned: int = 3,
              phase: str = "optuna", cell: str = "", error: str | None = None,
              extra_lines: tuple[str, ...] = (), **config) -> str:
    """Write one trial folder the way Ray does; returns its folder name."""
    trial_id = f"abcde_{index:05d}"
    name = f"trainable_{trial_id}_{index}_margin={config.get('margin', 0.07)}_2026-11-28_01-17-50"
    folder = experiment_dir / name
    folder.mkdir(parents=True)
    params = {"context": 5, "margin": 0.07, "temperature": 0.07, "anchor_lambda": 0.8,
              "epochs": planned, "warmup_epochs": 1, "phase": phase, "cell": cell, **config}
    (folder / "params.json").write_text(json.dumps(params, indent=2))
    lines = [ray_line(trial_id, params, metrics) for metrics in epochs] + list(extra_lines)
    if lines:
        (folder / "result.json").write_text("\n".join(lines) + "\n")
    if error is not None:
        (folder / "error.txt").write_text(error)
    return name


def write_ray_state(experiment_dir: Path, statuses: dict[str, str]) -> None:
    """experiment_state-*.json as Ray writes it: trial_data = [[trial json, runtime json]]."""
    trial_data = [[json.dumps({"trial_id": "_".join(name.split("_")[1:3]), "status": status,
                               "relative_logdir": name}),
                   json.dumps({"num_failures": 0})] for name, status in statuses.items()]
    (experiment_dir / "experiment_state-2026-11-28_01-17-50.json").write_text(
        json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {}}))


RAY_ERROR = """Failure # 1 (occurred at 2026-11-28_01-17-53)
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=4474, ip=192.0.2.2, repr=trainable)
  File "/work/main/tune_p7/train.py", line 170, in _check_finite
    raise TrainingDiverged(self.epoch + 1, name, metrics[name])
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
tune_p7.train.TrainingDiverged: training diverged in epoch 2: train_loss became nan; lower the learning rate or raise the temperature.
"""


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    """A sweep folder with one trial of every kind, in Ray's layout; state "running"."""
    sweep = tmp_path / "demo"
    experiment = sweep / "ray" / "baseline"
    (sweep / "ray").mkdir(parents=True)
    complete = add_trial(experiment, 0, [epoch_metrics(1, val_margin=-0.2),
                                         epoch_metrics(2, val_margin=0.05, anchor_lambda=0.75),
                                         epoch_metrics(3, val_margin=0.01, anchor_lambda=0.7)],
                         phase="baseline", cell="baseline")
    stopped = add_trial(experiment, 1, [epoch_metrics(1)], margin=0.2)
    failed = add_trial(experiment, 2, [epoch_metrics(1)], margin=0.3, error=RAY_ERROR)
    running = add_trial(experiment, 3, [epoch_metrics(1), epoch_metrics(2)], margin=0.4,
                        extra_lines=('{"val_margin": 0.3, "epo',))
    pending = add_trial(experiment, 4, [], margin=0.5)
    # resumed from the epoch-1 checkpoint: epoch 2 reported twice, the second one counts
    add_trial(experiment, 5, [epoch_metrics(1), epoch_metrics(2, val_margin=0.9),
                              epoch_metrics(2, val_margin=0.02), epoch_metrics(3)], margin=0.6)
    write_ray_state(experiment, {complete: "TERMINATED", stopped: "TERMINATED",
                                 failed: "ERROR", running: "RUNNING", pending: "PENDING"})
    (sweep / "sweep.json").write_text(json.dumps({"state": "running"}))
    return sweep


def by_margin(trials: pd.DataFrame) -> pd.DataFrame:
    return trials.set_index("margin")


def test_tables_have_one_row_per_trial_and_per_epoch(fake_sweep):
    trials, history = results.collect_tables(fake_sweep)
    assert len(trials) == 6
    assert len(history) == 3 + 1 + 1 + 2 + 0 + 3
    assert list(trials.columns[:5]) == ["trial_id", "experiment", "phase", "cell", "trial_dir"]
    assert list(history.columns[:5]) == ["trial_id", "experiment", "phase", "cell", "epoch"]
    for column in ("status", "error", "epochs_run", "stopped_early", "val_margin",
                   "best_val_margin", "best_epoch", "final_anchor_lambda", "seconds",
                   "context", "margin", "temperature", "anchor_lambda", "val_r_at_5"):
        assert column in trials.columns, column
    assert set(HISTORY_METRICS) <= set(history.columns)
    assert not (set(RAY_FIELDS) - {"trial_id"}) & set(history.columns)
    assert set(trials.trial_id) == {f"abcde_{i:05d}" for i in range(6)}
    assert (trials.experiment == "baseline").all()


def test_statuses_follow_ray_state_and_files(fake_sweep):
    trials = by_margin(results.collect_tables(fake_sweep)[0])
    assert trials.loc[0.07, "status"] == "complete"
    assert trials.loc[0.2, "status"] == "stopped_early" and trials.loc[0.2, "stopped_early"]
    assert trials.loc[0.3, "status"] == "error"
    assert trials.loc[0.4, "status"] == "running"
    assert trials.loc[0.5, "status"] == "pending"
    assert trials.loc[0.6, "status"] == "complete"
    assert trials.loc[0.3, "error"] == (
        "tune_p7.train.TrainingDiverged: training diverged in epoch 2: train_loss became nan; "
        "lower the learning rate or raise the temperature.")
    assert trials.loc[0.07, "error"] == ""


def test_a_sweep_that_ended_leaves_unfinished_trials_interrupted(fake_sweep):
    # Ctrl-C: Ray's fit() returns and its saved state still says RUNNING/PENDING; the sweep
    # may even record "finished" (ResultGrid counts interrupted trials as terminated)
    (fake_sweep / "sweep.json").write_text(json.dumps({"state": "finished"}))
    trials = by_margin(results.collect_tables(fake_sweep)[0])
    assert trials.loc[0.4, "status"] == trials.loc[0.5, "status"] == "interrupted"
    assert trials.loc[0.2, "status"] == "stopped_early"
    assert trials.loc[0.3, "status"] == "error"
    assert trials.loc[0.07, "status"] == "complete"


def test_a_killed_sweep_process_reads_as_interrupted(fake_sweep):
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    (fake_sweep / "sweep.json").write_text(json.dumps(
        {"state": "running", "host": socket.gethostname(), "pid": gone.pid}))
    assert not SweepFolder(fake_sweep).is_running()
    trials = by_margin(results.collect_tables(fake_sweep)[0])
    assert trials.loc[0.4, "status"] == "interrupted"


def test_without_ray_state_an_error_file_means_error(fake_sweep):
    for snapshot in fake_sweep.glob("ray/*/experiment_state-*.json"):
        snapshot.unlink()
    trials = by_margin(results.collect_tables(fake_sweep)[0])
    assert trials.loc[0.3, "status"] == "error"
    assert trials.loc[0.2, "status"] == trials.loc[0.4, "status"] == "running"


def test_summary_columns_are_recomputable_from_history(fake_sweep):
    trials, history = results.collect_tables(fake_sweep)
    for _, trial in trials[trials.epochs_run > 0].iterrows():
        epochs = history[history.trial_id == trial.trial_id].sort_values("epoch")
        assert trial.epochs_run == len(epochs) == epochs.epoch.max()
        assert trial.val_margin == epochs.val_margin.iloc[-1]
        assert trial.best_val_margin == epochs.val_margin.max()
        assert trial.best_epoch == epochs.epoch[epochs.val_margin.idxmax()]
        assert trial.final_anchor_lambda == epochs.anchor_lambda.iloc[-1]
        assert trial.seconds == pytest.approx(epochs.seconds.sum())
    complete = by_margin(trials).loc[0.07]
    assert (complete.best_val_margin, complete.best_epoch) == (0.05, 2)
    assert (complete.anchor_lambda, complete.final_anchor_lambda) == (0.8, 0.7)
    resumed = history[history.trial_id == "abcde_00005"]
    assert list(resumed.epoch) == [1, 2, 3] and resumed.val_margin.iloc[1] == 0.02
    assert math.isnan(by_margin(trials).loc[0.5, "best_val_margin"])


def test_write_tables_writes_parquet_that_reads_back(fake_sweep):
    trials, history = results.write_tables(fake_sweep)
    pd.testing.assert_frame_equal(pd.read_parquet(fake_sweep / "trials.parquet"), trials)
    pd.testing.assert_frame_equal(pd.read_parquet(fake_sweep / "history.parquet"), history)
    assert not list(fake_sweep.glob(".*.tmp"))


def test_empty_sweep_gives_empty_tables(tmp_path):
    (tmp_path / "ray" / "baseline").mkdir(parents=True)
    trials, history = results.write_tables(tmp_path)
    assert trials.empty and "trial_id" in trials.columns
    assert history.empty and "epoch" in history.columns


def test_a_folder_without_ray_results_is_not_a_sweep(tmp_path):
    with pytest.raises(results.NotASweep, match="not a sweep folder"):
        results.collect_tables(tmp_path)


# ---------------------------------------------------------------------------------------
# Verdicts and flags


def test_verdicts_follow_the_original_criteria_with_inclusive_thresholds():
    original = Criteria(require_beating_trivial=False)  # the thresholds alone (no gate)
    trials = pd.DataFrame({
        "val_margin":     [0.25, 0.20, 0.15, 0.25, 0.05, 0.25, 0.30, 0.30],
        "val_cos_next":   [0.50, 0.45, 0.40, 0.40, 0.50, 0.50, 0.60, 0.60],
        "val_cos_anchor": [0.45, 0.40, 0.35, 0.45, 0.50, 0.29, 0.50, np.nan],
        "epochs_run":     [3, 3, 3, 3, 3, 3, 2, 0],
        "status": ["complete"] * 6 + ["error", "pending"]})
    assert list(verdicts(trials, original)) == ["PASS", "PASS", "MARGINAL", "MARGINAL", "FAIL",
                                                "FAIL", "FAIL", ""]
    stricter = verdicts(trials, Criteria(pass_margin=0.22, require_beating_trivial=False))
    assert list(stricter[:2]) == ["PASS", "MARGINAL"]


COPY_LAST = {"val_margin": -0.4, "val_cos_next": 0.55, "val_cos_prev": 1.0,
             "val_cos_anchor": 0.8, "val_r_at_5": 0.45, "val_mrr_at_10": 0.3,
             "val_global_r_at_5": 0.2}


@pytest.fixture
def flag_sweep(tmp_path) -> Path:
    """One finished trial per flag case (warm-up 1 epoch, 3 epochs), told apart by margin."""
    sweep = tmp_path / "flags"
    experiment = sweep / "ray" / "optuna"
    (sweep / "ray").mkdir(parents=True)
    e = epoch_metrics
    cases = {
        0.01: [e(1), e(2), e(3)],                                           # nothing raised
        0.02: [e(1), e(2), e(3, val_margin=-0.05)],                         # backward, flip
        0.03: [e(1, val_margin=-0.1, train_margin=-0.1)],                   # warm-up only
        0.04: [e(1), e(2, val_cos_next=0.41), e(3)],                        # collapse, -32%
        0.05: [e(1), e(2, val_cos_next=0.50), e(3)],                        # -17%: no collapse
        0.06: [e(1), e(2, val_cos_anchor=0.45), e(3)],                      # anchor collapse
        0.07: [e(1), e(2), e(3, val_cos_anchor=0.03)],                      # orthogonal drift
        0.08: [e(i, gate_weight_mean=0.25) for i in (1, 2, 3)],             # gate stuck low
        0.09: [e(i, gate_weight_mean=1.0) for i in (1, 2, 3)],              # gate stuck high
        0.10: [e(i, anchor_lambda=0.8) for i in (1, 2, 3)],                 # lambda frozen
        0.12: [e(1), e(2), e(3, val_cos_next=0.50)],                        # below copy-last
        0.13: [e(1), e(2), e(3, val_r_at_5=0.40)],                          # below copy-last
        0.14: [e(1), e(2, train_loss=float("nan"))],                        # diverged (NaN)
    }
    for index, (margin, epochs) in enumerate(cases.items()):
        add_trial(experiment, index, epochs, margin=margin)
    add_trial(experiment, 20, [e(i, anchor_lambda=0.8) for i in (1, 2, 3)], margin=0.11,
              learn_lambda=False)                                            # fixed: not frozen
    add_trial(experiment, 21, [e(1)], margin=0.15, error=RAY_ERROR)         # diverged (error)
    add_trial(experiment, 22, [e(1), e(2), e(3)], margin=0.16, context=7)   # no K=7 baseline
    add_trial(experiment, 23, [], margin=0.17)                              # no epoch yet
    pd.DataFrame([{"context": 5, "predictor": "copy_last", **COPY_LAST},
                  {"context": 5, "predictor": "context_mean", **COPY_LAST,
                   "val_margin": -0.1, "val_cos_next": 0.5, "val_r_at_5": 0.1},
                  {"context": 5, "predictor": "orth_mean", **COPY_LAST,
                   "val_margin": 0.04, "val_cos_next": 0.3, "val_r_at_5": 0.05}]
                 ).to_parquet(sweep / "baselines.parquet")
    (sweep / "sweep.json").write_text(json.dumps({"state": "finished"}))
    return sweep


def raised(trials: pd.DataFrame, margin: float) -> set[str]:
    row = by_margin(trials).loc[margin]
    return {name for name in FLAGS if row[name] is True or row[name] is np.True_}


def test_each_flag_fires_on_its_crafted_history(flag_sweep):
    trials = results.collect_tables(flag_sweep)[0]
    assert raised(trials, 0.01) == set()
    assert raised(trials, 0.02) == {"backward", "train_val_sign_flip"}
    assert raised(trials, 0.03) == set()            # negative, but only during the warm-up
    assert raised(trials, 0.04) == {"collapse_after_warmup"}
    assert raised(trials, 0.05) == set()
    assert raised(trials, 0.06) == {"collapse_after_warmup"}
    assert raised(trials, 0.07) == {"orthogonal_drift"}
    assert raised(trials, 0.08) == raised(trials, 0.09) == {"gate_stuck"}
    assert raised(trials, 0.10) == {"lambda_frozen"}
    assert raised(trials, 0.11) == set()
    assert raised(trials, 0.12) == raised(trials, 0.13) == {"below_copy_last"}
    assert raised(trials, 0.14) == {"diverged"}
    assert "diverged" in raised(trials, 0.15)
    assert by_margin(trials).loc[0.02, "flags"] == "backward,train_val_sign_flip"


def test_flags_are_unknown_where_the_data_cannot_tell(flag_sweep):
    trials = by_margin(results.collect_tables(flag_sweep)[0])
    assert pd.isna(trials.loc[0.16, "below_copy_last"])      # no baseline for K=7
    assert pd.isna(trials.loc[0.16, "beats_trivial"])
    assert trials.loc[[0.17], list(FLAGS)].isna().all(axis=None)
    assert trials.loc[0.17, "verdict"] == "" and trials.loc[0.15, "verdict"] == "FAIL"
    assert trials.loc[0.03, "verdict"] == "warm-up"          # only the warm-up epoch so far


def test_beats_trivial_needs_margin_cos_next_and_r5_above_every_predictor(flag_sweep):
    trials = by_margin(results.collect_tables(flag_sweep)[0])
    # margin 0.05 > 0.04 (orth-mean), cos_next 0.6 > 0.55, R@5 0.5 > 0.45: beats all three
    assert trials.loc[0.01, "beats_trivial"]
    assert not trials.loc[0.12, "beats_trivial"]             # cos_next 0.50 < copy-last
    assert not trials.loc[0.02, "beats_trivial"]             # margin below orth-mean
    assert trials.loc[0.02, "trivial_not_beaten"] == "orth_mean(margin)"
    assert trials.loc[0.13, "trivial_not_beaten"] == "copy_last(r_at_5)"


# ---------------------------------------------------------------------------------------
# Helpers and load_sweep


def test_leaderboard_sorts_best_first_with_failed_trials_last(flag_sweep):
    trials = results.collect_tables(flag_sweep)[0]
    board = results.leaderboard(trials, "val_cos_next")
    assert list(board["rank"]) == list(range(1, len(trials) + 1))
    ran = board[board.status != "error"]
    beating = ran.beats_trivial.fillna(False).astype(bool)
    assert beating.any() and not beating.iloc[beating.sum():].any()  # those that beat first
    for group in (ran[beating], ran[~beating]):
        assert group.val_cos_next.dropna().is_monotonic_decreasing
    failed = [i for i, status in enumerate(board.status) if status == "error"]
    with_metric = [i for i, (status, value) in enumerate(zip(board.status, board.val_cos_next))
                   if status != "error" and pd.notna(value)]
    assert failed and min(failed) > max(with_metric)
    lowest_prev = results.leaderboard(trials, "val_cos_prev")
    assert lowest_prev[~lowest_prev.beats_trivial.fillna(False).astype(bool)
                       & (lowest_prev.status != "error")].val_cos_prev.dropna().is_monotonic_increasing
    assert len(results.leaderboard(trials, "val_margin", top=3)) == 3
    with pytest.raises(ValueError, match="cannot sort by 'val_typo'"):
        results.leaderboard(trials, "val_typo")


def test_comparison_gives_trial_minus_reference(flag_sweep):
    trials = results.collect_tables(flag_sweep)[0]
    trials.loc[trials.margin == 0.01, ["phase", "cell"]] = ["baseline", "baseline"]
    baselines = SweepFolder(flag_sweep).read_table("baselines")
    table = results.comparison(trials, baselines)
    reported = trials[trials.epochs_run > 0]
    assert len(table) == len(reported) + 3 * (reported.context == 5).sum()
    cell = reported[reported.margin == 0.01].iloc[0]
    for _, row in table[table.reference == "baseline"].iterrows():
        trial = reported[reported.trial_id == row.trial_id].iloc[0]
        assert row.val_margin_diff == pytest.approx(trial.val_margin - cell.val_margin)
    orth = table[(table.reference == "orth_mean") & (table.trial_id == cell.trial_id)].iloc[0]
    assert orth.reference_kind == "predictor"
    assert orth.val_cos_next_diff == pytest.approx(0.6 - 0.3)


def test_best_config_is_a_valid_config_of_a_trial_that_did_not_fail(flag_sweep):
    trials = results.collect_tables(flag_sweep)[0]
    best = results.best_trial(trials, "val_margin")
    assert best.status != "error"
    usable = trials[(trials.status != "error") & (trials.epochs_run > 0)]
    assert best.beats_trivial  # among those that beat the trivial predictors, the top Δ
    assert best.val_margin == usable.loc[usable.beats_trivial.fillna(False).astype(bool),
                                         "val_margin"].max()
    config = TrainConfig.from_dict(results.best_config(trials, "val_margin"))
    assert config.margin == best.margin and config.context == best.context


def test_parameter_summary_counts_every_usable_trial_once_per_parameter(flag_sweep):
    trials = results.collect_tables(flag_sweep)[0]
    summary = results.parameter_summary(trials, ["margin", "context"], bins=4)
    usable = ((trials.epochs_run > 0) & (trials.status != "error")).sum()
    assert summary.groupby("parameter").trials.sum().to_dict() == {"context": usable,
                                                                    "margin": usable}
    context_rows = summary[summary.parameter == "context"].set_index("low")
    assert context_rows.loc[7, "val_margin_mean"] == pytest.approx(0.05)


def test_load_sweep_prefers_fresh_parquet_and_rereads_stale_tables(flag_sweep):
    assert results.load_sweep(flag_sweep).source == "ray"
    results.write_tables(flag_sweep)
    loaded = results.load_sweep(flag_sweep, Criteria(pass_margin=0.0, pass_cos_next=0.0,
                                                     pass_cos_anchor=0.0))
    assert loaded.source == "parquet"
    assert (loaded.trials.loc[loaded.trials.margin == 0.01, "verdict"] == "PASS").all()
    assert not loaded.baselines.empty and loaded.plan == Plan() and loaded.run_state == {"state": "finished"}
    result = next(flag_sweep.glob("ray/optuna/*/result.json"))
    later = (flag_sweep / "trials.parquet").stat().st_mtime + 5
    import os
    os.utime(result, (later, later))
    assert results.load_sweep(flag_sweep).source == "ray"


def test_load_sweep_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    with pytest.raises(results.NotASweep, match="is not a sweep folder"):
        results.load_sweep(tmp_path)


def test_a_params_file_cut_short_by_a_kill_leaves_that_trial_out_with_a_warning(fake_sweep):
    params = sorted((fake_sweep / "ray" / "baseline").glob("*/params.json"))[0]
    params.write_text('{"margin": 0.')
    with pytest.warns(UserWarning, match="params.json is empty or cut short"):
        trials, _ = results.collect_tables(fake_sweep)
    assert len(trials) == 5
