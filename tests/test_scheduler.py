"""SeededASHA (tune_p7.scheduler) decisions on crafted results, without a Ray cluster.

Trials are Ray's own Trial objects (a cell is one whose config names it, as in the sweep);
results are dicts as Ray passes them (flattened, with Ray's fields beside the trainable's
metrics); histories are result.json files in Ray's format (one JSON object per line).
"""

import json
from pathlib import Path

import pytest
from ray import tune
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tune_p7.folder import read_history
from tune_p7.scheduler import SeededASHA, rung_epochs
from tune_p7.tuner import EpochPrinter

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _noop(config):
    """A registered trainable name is all a Trial needs; nothing is run."""


tune.register_trainable("noop", _noop)


@pytest.fixture
def storage(tmp_path):
    return StorageContext(storage_path=str(tmp_path), experiment_dir_name="optuna")


def new_trial(storage, trial_id, cell=""):
    """A trial as the searcher creates it: no folder yet; a cell when ``cell`` names one."""
    return Trial("noop", config={"epochs": 8, "cell": cell}, trial_id=trial_id,
                 storage=storage, _setup_default_resource=False)


def restored_trial(storage, trial_id, lines, cell="", status=Trial.TERMINATED):
    """A trial as Tuner.restore re-adds it: its folder name is known and holds result.json."""
    trial = new_trial(storage, trial_id, cell)
    trial.relative_logdir = trial.storage.trial_dir_name = f"p7_{trial_id}_{cell or 'optuna'}"
    trial.set_status(status)
    write_results(trial.path, trial_id, lines)
    return trial


def result(trial_id, epoch, margin, done=False):
    """One reported epoch as Ray hands it to a scheduler."""
    return {"epoch": epoch, "val_margin": margin, "val_cos_next": 0.2, "seconds": 1.5,
            "training_iteration": epoch, "trial_id": trial_id, "done": done,
            "time_this_iter_s": 1.6, "config/epochs": 8}


def write_results(folder, trial_id, lines):
    """result.json in Ray's format from (epoch, margin[, done]) tuples."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "result.json").write_text("".join(
        json.dumps(result(trial_id, *line)) + "\n" for line in lines))


def scheduler(storage=None, cells=None, mode="max"):
    """A scheduler whose cells ({name: {epoch: margin}}) have run and ended, as when the
    cells finish before the Optuna trials start."""
    asha = SeededASHA("val_margin", mode, grace_period=2, reduction_factor=3, max_t=8)
    for name, values in (cells or {}).items():
        cell = new_trial(storage, name, cell=name)
        asha.on_trial_add(None, cell)
        for epoch, margin in sorted(values.items()):
            assert report(asha, cell, epoch, margin) == CONTINUE  # a cell is never stopped
        asha.on_trial_complete(None, cell, {})
    return asha


def report(asha, trial, epoch, margin):
    return asha.on_trial_result(None, trial, result(trial.trial_id, epoch, margin))


def test_rungs_are_grace_times_powers_of_the_factor_below_max_t():
    assert rung_epochs(2, 3, 8) == [2, 6]
    assert rung_epochs(3, 3, 10) == [3, 9]
    assert rung_epochs(1, 2, 8) == [1, 2, 4]
    assert rung_epochs(2, 2.5, 13) == [2, 5]          # 12.5 rounds up to 13 = max_t
    assert rung_epochs(2, 3, 2) == []                 # no rung below max_t
    assert list(scheduler().rungs) == [2, 6]


def test_without_seeds_the_best_so_far_continues_and_the_top_third_after_that(storage):
    asha = scheduler()
    trials = [new_trial(storage, f"t{i}") for i in range(7)]
    assert report(asha, trials[0], 1, -0.30) == CONTINUE     # before the first rung
    assert report(asha, trials[0], 2, -0.10) == CONTINUE     # alone: rank 1 of 1
    assert report(asha, trials[1], 2, -0.20) == STOP         # rank 2 of 2 > max(1, 2/3)
    assert report(asha, trials[2], 2, -0.05) == CONTINUE     # new best
    assert report(asha, trials[3], 2, -0.15) == STOP         # rank 3 of 4
    assert report(asha, trials[4], 2, -0.25) == STOP         # rank 5 of 5
    assert report(asha, trials[5], 2, -0.08) == CONTINUE     # rank 2 of 6 <= 6/3
    assert report(asha, trials[6], 2, -0.08) == CONTINUE     # tie for 2nd counts in its favour
    assert report(asha, trials[0], 3, -0.50) == CONTINUE     # between rungs: no judgement
    assert asha.stopped == {
        "t1": "rung at epoch 2: rank 2 among 2 trials and 0 cells, continuing needs rank <= 1",
        "t3": "rung at epoch 2: rank 3 among 4 trials and 0 cells, continuing needs rank <= 1.33",
        "t4": "rung at epoch 2: rank 5 among 5 trials and 0 cells, continuing needs rank <= 1.67"}


def test_a_trial_is_judged_once_per_rung_and_again_at_the_next(storage):
    asha = scheduler()
    first, second = new_trial(storage, "a"), new_trial(storage, "b")
    assert report(asha, first, 2, -0.1) == CONTINUE
    assert report(asha, second, 2, -0.05) == CONTINUE
    assert report(asha, first, 2, -0.9) == CONTINUE         # repeated report (retry): kept
    assert asha.rungs[2]["a"] == -0.1
    assert report(asha, second, 6, -0.02) == CONTINUE
    assert report(asha, first, 6, -0.03) == STOP            # rank 2 of 2 at epoch 6
    assert report(asha, first, 7, 0.5) == STOP              # a stopped trial stays stopped


def test_the_cells_values_are_the_reference_from_the_first_trial_on(storage):
    cells = {"baseline": {1: -0.20, 2: -0.10, 6: -0.06, 8: -0.05},
             "strong_anchor": {2: -0.12, 6: -0.07},
             "higher_margin": {2: -0.11},
             "larger_context": {1: -0.15, 2: -0.09, 3: -0.08}}
    asha = scheduler(storage, cells)
    assert asha.cells == {2: {"baseline": -0.10, "strong_anchor": -0.12, "higher_margin": -0.11,
                              "larger_context": -0.09},
                          6: {"baseline": -0.06, "strong_anchor": -0.07}}
    assert asha.rungs == {2: {}, 6: {}} and asha.stopped == {}
    worse, best = new_trial(storage, "worse"), new_trial(storage, "best")
    # The first trial at a rung continues only if it is at least as good as every cell.
    assert report(asha, worse, 2, -0.095) == STOP
    assert asha.stopped["worse"] == ("rung at epoch 2: rank 2 among 1 trials and 4 cells, "
                                     "continuing needs rank <= 1")
    assert report(asha, best, 2, -0.09) == CONTINUE           # ties the best cell
    assert report(asha, best, 6, -0.065) == STOP              # one cell is better at epoch 6


def test_weak_cells_add_no_places_and_very_good_cells_take_them_all(storage):
    asha = scheduler(storage, {f"weak{i}": {2: -1.0} for i in range(4)})
    assert report(asha, new_trial(storage, "a"), 2, -0.1) == CONTINUE
    assert report(asha, new_trial(storage, "b"), 2, -0.2) == STOP    # 2nd of 2 trials: as unseeded
    asha = scheduler(storage, {f"good{i}": {2: 0.5} for i in range(4)})
    decisions = [report(asha, new_trial(storage, f"t{i}"), 2, 0.1 * i) for i in range(4)]
    assert decisions == [STOP] * 4      # rank 5 at best, places max(1, m / 3) for m <= 4
    assert len(asha.rungs[2]) == 4 and len(asha.cells[2]) == 4


def test_mode_min_and_missing_or_nan_values(storage):
    asha = scheduler(mode="min")
    low, high = new_trial(storage, "low"), new_trial(storage, "high")
    assert report(asha, low, 2, 0.1) == CONTINUE
    assert report(asha, high, 2, 0.2) == STOP
    asha = scheduler(storage, {"cell": {2: -0.5}})
    assert report(asha, new_trial(storage, "nan"), 2, float("nan")) == STOP
    missing = new_trial(storage, "missing")
    assert asha.on_trial_result(None, missing, {"val_margin": 1.0}) == CONTINUE  # no epoch


def test_resumed_rungs_are_rebuilt_from_the_trials_results(storage):
    """Tuner.restore re-adds every trial: their recorded values fill the rungs again (a
    cell's the cells' values), and a trial whose results end with done before max_t stays
    stopped."""
    asha = scheduler()
    cell = restored_trial(storage, "cel", [(1, -0.3), (2, -0.10), (3, -0.08), (4, -0.07),
                                           (5, -0.06), (6, -0.06), (7, -0.05), (8, -0.05, True)],
                          cell="baseline")
    finished = restored_trial(storage, "fin", [(1, -0.3), (2, -0.08), (3, -0.07), (4, -0.06),
                                               (5, -0.05), (6, -0.04), (7, -0.03),
                                               (8, -0.02, True)])
    stopped = restored_trial(storage, "stp", [(1, -0.3), (2, -0.2, True)])
    running = restored_trial(storage, "run", [(1, -0.2), (2, -0.05), (3, -0.04)],
                             status=Trial.RUNNING)
    for trial in (cell, finished, stopped, running, new_trial(storage, "new")):
        asha.on_trial_add(None, trial)
    assert asha.rungs == {2: {"fin": -0.08, "stp": -0.2, "run": -0.05}, 6: {"fin": -0.04}}
    assert asha.cells == {2: {"cel": -0.10}, 6: {"cel": -0.06}}
    assert asha.running_cells == set()  # the cell had ended
    assert asha.stopped == {"stp": "stopped at epoch 2 before the resume"}
    assert report(asha, stopped, 3, 0.9) == STOP          # Ray's state had not caught up
    assert report(asha, running, 4, -0.03) == CONTINUE    # already judged at epoch 2
    assert report(asha, running, 6, -0.05) == STOP        # 2nd of 2 trials at epoch 6
    later = new_trial(storage, "later")
    assert report(asha, later, 2, -0.06) == STOP          # rank 2 > 4 trials / 3


def test_read_history_keeps_the_last_report_of_an_epoch_and_skips_a_half_line(tmp_path):
    write_results(tmp_path, "t", [(1, -0.3), (2, -0.2), (2, -0.25), (3, -0.1, True)])
    with open(tmp_path / "result.json", "a") as handle:
        handle.write('{"epoch": 4, "val_ma')
    assert read_history(tmp_path / "result.json", "val_margin") == (
        {1: -0.3, 2: -0.25, 3: -0.1}, 3)
    assert read_history(tmp_path / "missing.json", "val_margin") == ({}, None)


def test_a_trial_at_a_rung_waits_for_the_cells_still_running(storage):
    """With Optuna trials beside the cells, a trial judged before a running cell reached the
    rung would be judged against fewer cells; it runs on until the cell reports the rung."""
    asha = scheduler()
    slow, failing = new_trial(storage, "slow", cell="larger_context"), new_trial(
        storage, "failing", cell="diverging")
    for cell in (slow, failing):
        asha.on_trial_add(None, cell)
    trial = new_trial(storage, "t")
    asha.on_trial_add(None, trial)
    assert report(asha, slow, 1, -0.30) == CONTINUE
    assert report(asha, trial, 2, -0.10) == CONTINUE      # recorded, waits for both cells
    assert asha.unjudged == {"t": [2]} and asha.rungs[2] == {"t": -0.10}
    asha.on_trial_error(None, failing)                    # a failed cell is not waited for
    assert report(asha, trial, 3, -0.50) == CONTINUE      # still waits for the slow cell
    assert report(asha, slow, 2, -0.05) == CONTINUE       # a cell better than the trial
    assert report(asha, trial, 4, -0.09) == STOP          # judged with its epoch-2 value
    assert asha.stopped["t"] == ("rung at epoch 2: rank 2 among 1 trials and 1 cells, "
                                 "continuing needs rank <= 1")
    assert asha.unjudged == {"t": []}


def test_the_progress_line_says_why_a_trial_was_stopped(storage, capsys):
    asha = scheduler()
    printer = EpochPrinter(asha.stopped)   # built before any stop, as the sweep does
    report(asha, new_trial(storage, "kept"), 2, -0.1)
    stopped = new_trial(storage, "stopped")
    stopped.config.update(phase="optuna", margin=0.1, temperature=0.05, anchor_lambda=0.8)
    assert report(asha, stopped, 2, -0.2) == STOP
    stopped.update_last_result(result("stopped", 2, -0.2, done=True))
    printer.on_trial_complete(0, [], stopped)
    assert capsys.readouterr().out.rstrip().endswith(
        "optuna m=0.100 T=0.050 λ=0.80  stopped by ASHA at epoch 2 (rung at epoch 2: rank 2 "
        "among 2 trials and 0 cells, continuing needs rank <= 1)")
