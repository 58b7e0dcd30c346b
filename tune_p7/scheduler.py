"""Asynchronous successive halving whose rungs hold the baseline cells and survive a resume.

    scheduler = SeededASHA("val_margin", "max", grace_period=2, reduction_factor=3, max_t=8)
    tune.TuneConfig(scheduler=scheduler, ...)   # cells and Optuna trials in one experiment

Rungs are the epochs ceil(grace_period * reduction_factor**k) below max_t (grace 2, factor 3,
max_t 8: epochs 2 and 6). A trial whose config names a ``cell`` is a baseline cell: it is
never stopped, and its metric at every rung epoch is put into that rung as a reference the
moment it reports it. Every other trial is judged: the first time it reports an epoch at or
past a rung, its metric is recorded at the highest such rung (unless it is recorded there
already), and once every cell still running has reported that rung too, it is judged: with
m trials recorded at that rung, itself included, it continues only if its rank among all
values there, the cells' included (1 = best; ties count in its favour; NaN is worst), is at
most max(1, m / reduction_factor). That is ASHA's "top 1/reduction_factor of the trials",
where every cell better than the trial takes one of the places and a cell worse than it
changes nothing. So the first trial at a rung continues only if it is at least as good as
every cell; with 9 trials recorded (factor 3) the best 3 values continue, cells among them.
Waiting for the cells keeps that meaning when Optuna trials run beside the cells (more slots
than cells, or a slower cell): a trial then runs on past the rung until the cells catch up,
and is stopped at a later epoch if the rule says so.

Cells take places but add none: ASHA's plain rule with seeds, top 1/reduction_factor of all
values, would give each weak cell 1/reduction_factor of an extra place and let more trials
through than no seeds at all (measured in docs/sweep.md, "Early stopping").

Ray's ``Tuner.restore`` brings back the scheduler as first built, not its state. It re-adds
every trial of the experiment (finished, stopped, errored or unfinished), and each brings its
recorded results (its result.json) back into the rungs, a cell's into the cells' values; a
trial whose results end with ``done`` before max_t was stopped by the rule and is stopped
again should Ray's saved state not yet know it. So a resumed sweep judges with the same values
as an uninterrupted one. Ray marks a stopped trial TERMINATED before its last epoch, which
the results call ``stopped_early``; :attr:`SeededASHA.stopped` holds the reason.
"""

from __future__ import annotations

import math
from pathlib import Path

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_p7.folder import read_history
from tune_p7.plan import rung_epochs


class SeededASHA(FIFOScheduler):
    """ASHA on ``metric`` by epoch whose rungs hold the cells' values (see the module).

    ``rungs`` holds the judged trials' values ({epoch: {trial_id: value}}), ``cells`` the
    cells' ({epoch: {trial_id: value}}), both with higher = better; ``running_cells`` the
    cells that may still report; ``unjudged`` {trial_id: [rung epochs]} the rungs at which a
    trial is recorded but waits for the cells.
    """

    def __init__(self, metric: str, mode: str, grace_period: int, reduction_factor: float,
                 max_t: int):
        super().__init__()
        self._metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.reduction_factor, self.max_t = reduction_factor, max_t
        epochs = rung_epochs(grace_period, reduction_factor, max_t)
        self.rungs: dict[int, dict[str, float]] = {epoch: {} for epoch in epochs}
        self.cells: dict[int, dict[str, float]] = {epoch: {} for epoch in epochs}
        self.running_cells: set[str] = set()
        self.unjudged: dict[str, list[int]] = {}
        self.stopped: dict[str, str] = {}  # trial_id -> why the rule stopped it

    def add_history(self, trial_id: str, values: dict[int, float], cell: bool = False) -> None:
        """Record a trial's (or a cell's) values at the rung epochs it reported, unjudged."""
        recorded = self.cells if cell else self.rungs
        for epoch, rung in recorded.items():
            if epoch in values:
                rung[trial_id] = self._score(values[epoch])

    def judge(self, trial_id: str, epoch: int, value) -> str | None:
        """Record ``value`` at the highest rung <= epoch unless the trial is recorded there
        already, and judge every rung it waits at once no running cell is missing there;
        None to continue, else the reason to stop."""
        reached = [rung_epoch for rung_epoch in self.rungs if rung_epoch <= epoch]
        waiting = self.unjudged.setdefault(trial_id, [])
        if reached and trial_id not in self.rungs[reached[-1]]:
            self.rungs[reached[-1]][trial_id] = self._score(value)
            waiting.append(reached[-1])
        while waiting and not self._cells_missing(waiting[0]):
            reason = self._rank(trial_id, waiting.pop(0))
            if reason is not None:
                return reason
        return None

    def _cells_missing(self, rung: int) -> bool:
        return any(cell not in self.cells[rung] for cell in self.running_cells)

    def _rank(self, trial_id: str, rung: int) -> str | None:
        trials, cells = self.rungs[rung], list(self.cells[rung].values())
        score = trials[trial_id]
        rank = 1 + sum(other > score for other in [*trials.values(), *cells])
        places = max(1.0, len(trials) / self.reduction_factor)
        if rank <= places:
            return None
        return (f"rung at epoch {rung}: rank {rank} among {len(trials)} trials and "
                f"{len(cells)} cells, continuing needs rank <= {places:.3g}")

    def _score(self, value) -> float:
        """The value with higher = better; NaN/None is worse than any number."""
        value = float("nan") if value is None else float(value)
        return -math.inf if math.isnan(value) else self.sign * value

    def on_trial_add(self, tune_controller, trial) -> None:
        """A cell counts as running until it ends; a trial re-added by Tuner.restore brings
        its recorded results into the rungs (a cell's into the cells' values)."""
        cell = is_cell(trial)
        if cell and trial.status not in (Trial.TERMINATED, Trial.ERROR):
            self.running_cells.add(trial.trial_id)
        if not trial.relative_logdir:  # a new trial: no folder, nothing recorded yet
            return
        values, stopped_at = read_history(Path(trial.path) / "result.json", self._metric)
        self.add_history(trial.trial_id, values, cell)
        if not cell and stopped_at is not None and stopped_at < self.max_t:
            self.stopped[trial.trial_id] = f"stopped at epoch {stopped_at} before the resume"

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "epoch" not in result:
            return TrialScheduler.CONTINUE
        if is_cell(trial):
            self.add_history(trial.trial_id, {int(result["epoch"]): result.get(self._metric)},
                             cell=True)
            return TrialScheduler.CONTINUE
        if trial.trial_id in self.stopped:
            return TrialScheduler.STOP
        reason = self.judge(trial.trial_id, int(result["epoch"]), result.get(self._metric))
        if reason is None:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = reason
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.running_cells.discard(trial.trial_id)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.running_cells.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.running_cells.discard(trial.trial_id)

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {epoch}: {len(trials)} trials, {len(self.cells[epoch])} cells"
                          for epoch, trials in self.rungs.items())
        return f"SeededASHA on {self._metric}: {len(self.stopped)} stopped; rungs {rungs}"


def is_cell(trial) -> bool:
    """Whether a trial is a baseline cell (its config names one)."""
    return bool(trial.config.get("cell"))
