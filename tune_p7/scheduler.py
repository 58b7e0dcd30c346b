"""Asynchronous successive halving whose rungs start with the baseline cells and survive a resume.

    scheduler = SeededASHA("val_margin", "max", grace_period=2, reduction_factor=3, max_t=8,
                           seeds={"baseline": {1: -0.09, 2: -0.08, ...}, ...})
    tune.TuneConfig(scheduler=scheduler, ...)

Rungs are the epochs ceil(grace_period * reduction_factor**k) below max_t (grace 2, factor 3,
max_t 8: epochs 2 and 6). The first time a trial reports an epoch at or past a rung, its
metric is recorded at the highest such rung (unless it is recorded there already) and judged:
with m trials recorded at that rung so far, itself included, it continues only if its rank
among all values there, the seeded cells' included (1 = best; ties count in its favour; NaN
is worst), is at most max(1, m / reduction_factor). That is ASHA's "top 1/reduction_factor
of the trials", where every cell better than the trial takes one of the places and a cell
worse than it changes nothing. So the first trial at a rung continues only if it is at least
as good as every cell; with 9 trials recorded (factor 3) the best 3 values continue, cells
among them.

Cells take places but add none: ASHA's plain rule with seeds, top 1/reduction_factor of all
values, would give each weak cell 1/reduction_factor of an extra place and let more trials
through than no seeds at all (measured in docs/sweep.md, "Early stopping").

Seeds are the baseline cells' values at the rung epochs: the reference every Optuna trial is
measured against from its first rung on. They are part of the scheduler, so Ray pickles them
with the Tuner and ``Tuner.restore`` gets them back. A trial that ``Tuner.restore`` re-adds
(finished, stopped, errored or unfinished) brings its recorded results (its result.json) into
the rungs, and one whose results end with ``done`` before max_t was stopped by the rule and is
stopped again should Ray's saved state not yet know it; so a resumed sweep judges with the
same values as an uninterrupted one. Ray marks a stopped trial TERMINATED before its last
epoch, which the results call ``stopped_early``; :attr:`SeededASHA.stopped` holds the reason.
"""

from __future__ import annotations

import math
from pathlib import Path

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_p7.folder import read_history
from tune_p7.plan import rung_epochs


class SeededASHA(FIFOScheduler):
    """ASHA on ``metric`` by epoch whose rungs hold reference runs' values (see the module).

    seeds: {name: {epoch: metric value}} of reference runs (the baseline cells); only their
    values at rung epochs are used. ``rungs`` holds the trials' values ({epoch: {trial_id:
    value}}), ``cells`` the seeds' ({epoch: [value]}), both with higher = better.
    """

    def __init__(self, metric: str, mode: str, grace_period: int, reduction_factor: float,
                 max_t: int, seeds: dict[str, dict[int, float]] | None = None):
        super().__init__()
        self._metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.reduction_factor, self.max_t = reduction_factor, max_t
        epochs = rung_epochs(grace_period, reduction_factor, max_t)
        self.rungs: dict[int, dict[str, float]] = {epoch: {} for epoch in epochs}
        self.cells: dict[int, list[float]] = {
            epoch: [self._score(values[epoch]) for values in (seeds or {}).values()
                    if epoch in values] for epoch in epochs}
        self.stopped: dict[str, str] = {}  # trial_id -> why the rule stopped it

    def add_history(self, trial_id: str, values: dict[int, float]) -> None:
        """Record a trial's values at the rung epochs it reported, without judging it."""
        for epoch, rung in self.rungs.items():
            if epoch in values:
                rung[trial_id] = self._score(values[epoch])

    def judge(self, trial_id: str, epoch: int, value: float) -> str | None:
        """Record ``value`` at the highest rung <= epoch unless the trial is recorded there
        already, and judge it; None to continue, else the reason to stop."""
        reached = [rung_epoch for rung_epoch in self.rungs if rung_epoch <= epoch]
        if not reached or trial_id in self.rungs[reached[-1]]:
            return None
        trials, cells = self.rungs[reached[-1]], self.cells[reached[-1]]
        trials[trial_id] = score = self._score(value)
        rank = 1 + sum(other > score for other in [*trials.values(), *cells])
        places = max(1.0, len(trials) / self.reduction_factor)
        if rank <= places:
            return None
        return (f"rung at epoch {reached[-1]}: rank {rank} among {len(trials)} trials and "
                f"{len(cells)} cells, continuing needs rank <= {places:.3g}")

    def _score(self, value) -> float:
        """The value with higher = better; NaN/None is worse than any number."""
        value = float("nan") if value is None else float(value)
        return -math.inf if math.isnan(value) else self.sign * value

    def on_trial_add(self, tune_controller, trial) -> None:
        """A trial re-added by Tuner.restore brings its recorded results into the rungs."""
        if not trial.relative_logdir:  # a new trial: no folder, nothing recorded yet
            return
        values, stopped_at = read_history(Path(trial.path) / "result.json", self._metric)
        self.add_history(trial.trial_id, values)
        if stopped_at is not None and stopped_at < self.max_t:
            self.stopped[trial.trial_id] = f"stopped at epoch {stopped_at} before the resume"

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.stopped:
            return TrialScheduler.STOP
        if "epoch" not in result:
            return TrialScheduler.CONTINUE
        reason = self.judge(trial.trial_id, int(result["epoch"]), result.get(self._metric))
        if reason is None:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = reason
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {epoch}: {len(trials)} trials, {len(self.cells[epoch])} cells"
                          for epoch, trials in self.rungs.items())
        return f"SeededASHA on {self._metric}: {len(self.stopped)} stopped; rungs {rungs}"

