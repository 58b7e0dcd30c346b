"""The sweep's Ray Tune searcher: the baseline cells first, then TPE, all in the live study.

    searcher = SweepSearch(plan.cells, space.optuna_distributions(), recorded, base,
                           "val_margin", "max", sampler, folder.path, plan.name)
    tune.TuneConfig(search_alg=searcher, num_samples=len(plan.cells) + plan.optuna.trials)

Ray's OptunaSearch with an SQLite storage (tune_p7.study): the study in ``optuna.db`` is
written while the sweep runs. The first suggestions are the cells, each a trial of the
study whose parameters are fixed to the cell's settings (``enqueue_trial``), so TPE learns
from each cell the moment it ends and the scheduler (tune_p7.scheduler) puts its values at
the rungs as they arrive; the suggestions after them are TPE's. What this class adds to
OptunaSearch:

- every trial records the same parameters (tune_p7.study.recorded_distributions), the cells
  with their own values, the Optuna trials with their sampled and fixed ones;
- intermediate values at step = epoch (the trainable's own count, the one the tables and
  the rungs use, not Ray's training_iteration); user attrs trial_id, phase, cell (given with
  the trial, so a reader never sees it without them) and at the end the last epoch's
  metrics;
- a trial that ASHA stopped before its last epoch ends PRUNED, not COMPLETE; a failed one,
  or one ending without a finite metric, FAIL;
- ``Tuner.restore`` brings back the searcher as last saved; trials the study holds that it
  does not know (asked just before a hard kill) end FAIL, and trials it knows that the study
  already ended are not reported to again.
"""

from __future__ import annotations

import math

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tune_p7.study import create_study_file, fail_stale_trials, open_storage

FINAL_METRICS = ("val_cos_next", "val_cos_prev", "val_r_at_5", "train_margin")


class SweepSearch(OptunaSearch):
    """Cells (full trial configs, suggested in order) then TPE, in the sweep's live study.

    cells: full configs of the baseline cells. searched: {field: distribution} TPE samples.
    recorded: searched plus the fields the cells vary (tune_p7.study.recorded_distributions).
    base: the Optuna trials' config (their values of the recorded, unsearched fields).
    metric, mode: what TPE maximises/minimises. sampler: the Optuna sampler (TPE).
    sweep_dir, study_name: where the study lives (sweep_dir/optuna.db) and its name.
    """

    def __init__(self, cells: list[dict], searched: dict, recorded: dict, base: dict,
                 metric: str, mode: str, sampler, sweep_dir, study_name: str):
        create_study_file(sweep_dir, study_name, "maximize" if mode == "max" else "minimize")
        super().__init__(searched, metric=metric, mode=mode, sampler=sampler,
                         study_name=study_name, storage=open_storage(sweep_dir))
        self._cells = list(cells)
        self._recorded = recorded
        self._base = base
        self._planned_epochs: dict[str, int] = {}
        self._reported: dict[str, int] = {}  # trial_id -> last epoch reported to the study
        self._ot_study.set_user_attr("metric", f"{metric} (final epoch)")
        fail_stale_trials(self._ot_study)  # a new searcher: no trial in the file is live

    def suggest(self, trial_id: str) -> dict:
        cell = self._cells.pop(0) if self._cells else None
        settings = cell or self._base
        fixed = {name: settings[name] for name in self._recorded
                 if cell is not None or name not in self._space}
        # Enqueued with its labels, so a reader of the study never sees the trial without.
        self._ot_study.enqueue_trial(fixed, user_attrs={
            "trial_id": trial_id, "phase": settings["phase"], "cell": settings["cell"]})
        trial = self._ot_study.ask(fixed_distributions=self._recorded)
        self._ot_trials[trial_id] = trial
        self._planned_epochs[trial_id] = int(settings["epochs"])
        if cell is not None:
            return dict(cell)
        return {name: trial.params[name] for name in self._space}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials or "epoch" not in result:
            return
        epoch = int(result["epoch"])
        if epoch > self._reported.get(trial_id, 0):  # a retried epoch is reported once
            trial.report(float(result[self.metric]), epoch)
            self._reported[trial_id] = epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials:
            return
        result = result or {}
        self.on_trial_result(trial_id, result)  # Ray tells a stopped trial's last epoch only here
        value = result.get(self.metric)
        for name in FINAL_METRICS:
            if name in result:
                trial.set_user_attr(name, result[name])
        if "epoch" in result:
            trial.set_user_attr("epochs_run", int(result["epoch"]))
        if error or not (isinstance(value, (int, float)) and math.isfinite(value)):
            self._ot_study.tell(trial, state=TrialState.FAIL)
        elif int(result.get("epoch", 0)) < self._planned_epochs[trial_id]:
            self._ot_study.tell(trial, state=TrialState.PRUNED)  # value: its last epoch's
        else:
            self._ot_study.tell(trial, float(value))
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """The searcher as last saved, brought in line with the study, which a hard kill can
        leave ahead of that save: trials it ended stay ended, epochs it holds are not
        reported again, trials no saved Ray trial knows end FAIL."""
        super().restore(checkpoint_path)
        stored = {trial.number: trial for trial in self._ot_study.get_trials(deepcopy=False)}
        for trial_id, trial in self._ot_trials.items():
            if trial.number not in stored:
                continue
            if stored[trial.number].state.is_finished():
                self._completed_trials.add(trial_id)
            self._reported[trial_id] = max(stored[trial.number].intermediate_values, default=0)
        fail_stale_trials(self._ot_study, {trial.number for trial_id, trial in
                                           self._ot_trials.items()
                                           if trial_id not in self._completed_trials})
