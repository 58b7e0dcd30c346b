"""Verdicts gated on the trivial predictors, the "best" ranking, the Pareto set and the check
of ASHA's early stopping, each on a hand-made table whose answer is known exactly."""

import math

import numpy as np
import pandas as pd
import pytest

from tune_p7 import results
from tune_p7.early_stopping import early_stopping_check, early_stopping_notes, spearman
from tune_p7.plan import AshaPlan
from tune_p7.verdicts import Criteria, annotate, pareto, trivial_comparison, verdicts

NO_HISTORY = pd.DataFrame(columns=["experiment", "trial_id", "epoch"])
# Trivial predictors on K=5 (with documents); orth-mean has the highest Δ, copy-last the
# highest R@5, context-mean the highest cos_next: each metric has its own bar.
PREDICTORS = pd.DataFrame([
    {"context": 5, "predictor": "copy_last", "val_margin": -0.55, "val_cos_next": 0.45,
     "val_r_at_5": 0.45, "val_global_r_at_5": 0.30},
    {"context": 5, "predictor": "context_mean", "val_margin": -0.10, "val_cos_next": 0.50,
     "val_r_at_5": 0.20, "val_global_r_at_5": 0.10},
    {"context": 5, "predictor": "orth_mean", "val_margin": 0.33, "val_cos_next": 0.33,
     "val_r_at_5": 0.05, "val_global_r_at_5": 0.02}])
# Above every original PASS threshold and above every predictor on every metric.
GOOD = {"val_margin": 0.40, "val_cos_next": 0.60, "val_cos_anchor": 0.60,
        "val_r_at_5": 0.50, "val_global_r_at_5": 0.40}


def trials_table(*rows: dict) -> pd.DataFrame:
    """Finished K=5 trials (8 epochs, warm-up 1) that are GOOD unless a row says otherwise."""
    base = {"experiment": "optuna", "phase": "optuna", "cell": "", "context": 5,
            "status": "complete", "epochs_run": 8, "warmup_epochs": 1, **GOOD}
    return pd.DataFrame([{**base, "trial_id": f"t{i}", **row} for i, row in enumerate(rows)])


def test_a_tie_with_a_trivial_predictor_does_not_beat_it_and_is_not_pass():
    trials = trials_table({}, {"val_margin": 0.33}, {"val_r_at_5": 0.45, "val_cos_next": 0.50})
    annotated = annotate(trials, NO_HISTORY, PREDICTORS)
    assert list(annotated.beats_trivial) == [True, False, False]
    assert list(annotated.trivial_not_beaten) == [
        "", "orth_mean(margin)", "copy_last(r_at_5),context_mean(cos_next)"]
    assert list(annotated.verdict) == ["PASS", "FAIL", "FAIL"]
    # the original thresholds alone: all three pass
    ungated = verdicts(annotated, Criteria(require_beating_trivial=False))
    assert list(ungated) == ["PASS", "PASS", "PASS"]


def test_marginal_needs_the_gate_too():
    trials = trials_table({"val_margin": 0.34, "val_cos_anchor": 0.35},   # MARGINAL, beats
                          {"val_margin": 0.15, "val_cos_anchor": 0.35})   # below orth-mean
    assert list(annotate(trials, NO_HISTORY, PREDICTORS).verdict) == ["MARGINAL", "FAIL"]


def test_without_documents_the_gate_compares_global_r_at_5():
    windows_only = PREDICTORS.assign(val_r_at_5=math.nan)
    trials = trials_table({"val_r_at_5": math.nan},
                          {"val_r_at_5": math.nan, "val_global_r_at_5": 0.30})  # ties copy-last
    annotated = annotate(trials, NO_HISTORY, windows_only)
    assert list(annotated.beats_trivial) == [True, False]
    assert annotated.trivial_not_beaten.iloc[1] == "copy_last(global_r_at_5)"
    assert list(annotated.below_copy_last) == [False, False]  # known, no longer <NA>
    assert list(annotated.verdict) == ["PASS", "FAIL"]


def test_without_the_predictors_of_its_context_a_trial_is_unknown_and_not_pass():
    trials = trials_table({"context": 7})
    annotated = annotate(trials, NO_HISTORY, PREDICTORS)
    assert pd.isna(annotated.beats_trivial.iloc[0])
    assert pd.isna(annotated.trivial_not_beaten.iloc[0])
    assert annotated.verdict.iloc[0] == "FAIL"
    assert verdicts(annotated, Criteria(require_beating_trivial=False)).iloc[0] == "PASS"


def test_no_verdict_while_only_warm_up_epochs_were_reported():
    trials = trials_table({"epochs_run": 1}, {"epochs_run": 2}, {"epochs_run": 0},
                          {"epochs_run": 1, "status": "error"})
    assert list(annotate(trials, NO_HISTORY, PREDICTORS).verdict) == [
        "warm-up", "PASS", "", "FAIL"]


def test_a_diverged_trial_beats_nothing():
    trials = trials_table({"val_margin": math.nan, "val_cos_next": math.nan})
    comparison = trivial_comparison(trials, PREDICTORS)
    assert comparison.beats_trivial.iloc[0] is np.False_
    assert comparison.trivial_not_beaten.iloc[0] == (
        "copy_last(margin,cos_next),context_mean(margin,cos_next),orth_mean(margin,cos_next)")


# ---------------------------------------------------------------------------------------
# Pareto set


def test_pareto_set_of_a_hand_made_table():
    trials = trials_table(
        {"val_margin": 0.40, "val_cos_next": 0.60, "val_r_at_5": 0.50},   # t0 front
        {"val_margin": 0.10, "val_cos_next": 0.70, "val_r_at_5": 0.20},   # t1 front: cos_next
        {"val_margin": 0.05, "val_cos_next": 0.30, "val_r_at_5": 0.90},   # t2 front: R@5
        {"val_margin": 0.40, "val_cos_next": 0.60, "val_r_at_5": 0.40},   # t3 below t0 on R@5
        {"val_margin": 0.10, "val_cos_next": 0.70, "val_r_at_5": 0.20},   # t4 equal to t1
        {"val_margin": 0.30, "val_cos_next": 0.50, "val_r_at_5": 0.30},   # t5 dominated by t0
        {"val_margin": 0.90, "status": "error"},                          # t6 failed
        {"val_margin": 0.90, "phase": "confirm"},                         # t7 a re-run
        {"val_r_at_5": math.nan, "val_global_r_at_5": 0.95,
         "val_margin": 0.0, "val_cos_next": 0.0})                         # t8 front: global R@5
    front = pareto(trials)
    assert list(front.iloc[:6]) == [True, True, True, False, True, False]
    assert pd.isna(front.iloc[6]) and pd.isna(front.iloc[7])
    assert front.iloc[8]


# ---------------------------------------------------------------------------------------
# The one ranking behind every "best"


def test_a_trial_that_beats_the_trivial_predictors_ranks_above_a_higher_margin_that_does_not():
    trials = annotate(trials_table(
        {"val_margin": 0.34},                                   # t0 beats all three
        {"val_margin": 0.60, "val_cos_next": 0.70, "val_r_at_5": 0.10},  # t1 below copy-last
        {"val_margin": 0.90, "status": "error"},                # t2 failed
        {"val_margin": 0.50, "context": 7}), NO_HISTORY, PREDICTORS)  # t3 unknown: not first
    board = results.leaderboard(trials)
    assert list(board.trial_id) == ["t0", "t1", "t3", "t2"]
    reranked = results.leaderboard(board.iloc[::-1], "val_margin")  # a ranked table again
    assert list(reranked.trial_id) == ["t0", "t1", "t3", "t2"]
    assert list(reranked["rank"]) == [1, 2, 3, 4]
    assert results.best_trial(trials).trial_id == "t0"
    assert results.best_config(trials)["context"] == 5
    assert results.best_statement(trials) == (
        "Best trial: optuna trial t0 (val_margin +0.3400); it beats all three trivial "
        "predictors (copy_last, context_mean, orth_mean) on val Δ, cos_next and R@5.")
    # --sort another metric: the gate still comes first
    assert list(results.leaderboard(trials, "val_cos_next").trial_id) == ["t0", "t1", "t3", "t2"]


def test_when_no_trial_beats_them_the_best_says_so_plainly():
    trials = annotate(trials_table({"val_margin": 0.20}, {"val_margin": 0.60, "val_r_at_5": 0.1}),
                      NO_HISTORY, PREDICTORS)
    assert results.best_trial(trials).trial_id == "t1"
    assert results.best_statement(trials) == (
        "No trial beats all three trivial predictors on val Δ, cos_next and R@5; the best "
        "by val_margin is optuna trial t1 (val_margin +0.6000), which does not beat "
        "copy_last(r_at_5),context_mean(r_at_5).")


# ---------------------------------------------------------------------------------------
# Early stopping


def test_spearman_of_known_orders():
    first = pd.Series([1.0, 2.0, 3.0, 4.0])
    assert spearman(first, first * 10) == pytest.approx(1.0)
    assert spearman(first, -first) == pytest.approx(-1.0)
    # ties share the mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3) give sqrt(3)/2
    assert spearman(pd.Series([1.0, 1.0, 2.0]), pd.Series([1.0, 2.0, 3.0])) == pytest.approx(
        math.sqrt(3) / 2)
    assert math.isnan(spearman(pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0])))  # n < 3
    assert math.isnan(spearman(pd.Series([1.0, 2.0, math.nan]), first[:3]))    # 2 pairs


def stopping_tables():
    """Five runs to max_t 4 (rungs at epochs 1 and 2: grace 1, factor 2) whose order at epoch 1
    is the reverse of their final order and at epoch 2 the same; four stopped trials; a
    confirm re-run and a failed trial that must not count."""
    runs = {  # trial: (phase, status, values per epoch)
        "f1": ("baseline", "complete", [0.1, 0.5, 0.0, 0.9]),
        "f2": ("optuna", "complete", [0.2, 0.4, 0.0, 0.8]),
        "f3": ("optuna", "complete", [0.3, 0.3, 0.0, 0.7]),
        "f4": ("optuna", "complete", [0.4, 0.2, 0.0, 0.6]),
        "f5": ("optuna", "complete", [0.5, 0.1, 0.0, 0.5]),
        "s1": ("optuna", "stopped_early", [0.15]),         # above f1 (top third) at epoch 1
        "s2": ("optuna", "stopped_early", [0.05]),         # below every run at epoch 1
        "s3": ("optuna", "stopped_early", [0.0, 0.45]),    # above f2 (top third) at epoch 2
        "s4": ("optuna", "stopped_early", [0.9, 0.3]),     # below both top-third runs there
        "c1": ("confirm", "complete", [0.9, 0.0, 0.0, 0.0]),
        "e1": ("optuna", "error", [0.9, 0.9, 0.9, 0.9]),
    }
    trials = pd.DataFrame([{"experiment": "x", "trial_id": name, "phase": phase,
                            "status": status, "epochs_run": len(values)}
                           for name, (phase, status, values) in runs.items()])
    history = pd.DataFrame([{"experiment": "x", "trial_id": name, "epoch": epoch + 1,
                             "val_margin": value}
                            for name, (_, _, values) in runs.items()
                            for epoch, value in enumerate(values)])
    return trials, history


def test_early_stopping_check_on_known_histories():
    trials, history = stopping_tables()
    table = early_stopping_check(trials, history, AshaPlan(1, 2, 4))
    assert list(table.columns) == ["rung_epoch", "runs", "spearman_rho", "stopped",
                                   "stopped_above_a_top_third_run"]
    assert list(table.rung_epoch) == [1, 2] and list(table.runs) == [5, 5]
    assert list(table.spearman_rho) == pytest.approx([-1.0, 1.0])
    assert list(table.stopped) == [2, 2]
    assert list(table.stopped_above_a_top_third_run) == [1, 1]


def test_a_low_rho_names_the_grace_period_and_stopped_trials_ahead_are_counted():
    trials, history = stopping_tables()
    table = early_stopping_check(trials, history, AshaPlan(1, 2, 4))
    notes = early_stopping_notes(table, "profiles.quick.asha.grace_period")
    assert notes == [
        "ASHA's rung at epoch 1 orders the runs that finished unlike their final val_margin "
        "(Spearman ρ -1.00 over 5 runs): the rungs are too early for this data; give ASHA a "
        "longer grace period (profiles.quick.asha.grace_period).",
        "1 of the 2 trials stopped at epoch 1 were ahead there of a run that finished in the "
        "top third.",
        "1 of the 2 trials stopped at epoch 2 were ahead there of a run that finished in the "
        "top third."]


def test_too_few_finished_runs_cannot_be_checked():
    trials, history = stopping_tables()
    few = trials[trials.trial_id.isin(["f1", "f2", "s1"])]
    table = early_stopping_check(few, history, AshaPlan(1, 2, 4))
    assert list(table.runs) == [2, 2] and table.spearman_rho.isna().all()
    assert early_stopping_notes(table, "KEY")[0].startswith(
        "ASHA's rung at epoch 1 cannot be checked: 2 runs reached the last epoch")
    none_finished = early_stopping_check(trials[trials.status == "stopped_early"], history,
                                         AshaPlan(1, 2, 4))
    assert none_finished.stopped_above_a_top_third_run.isna().all()
    assert early_stopping_check(trials, history, AshaPlan(2, 3, 2)).empty  # no rung below max_t
