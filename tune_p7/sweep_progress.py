"""How far a run of trials is: trials and epochs done of the most it can run, time so far
and a rough time left. Plain arithmetic, no Ray: the sweep's callback measures, sweep.json
keeps the figures ("progress"), and the analysis prints them for a reader in another
terminal.

    progress = measure([TrialCount(8, 8, searched=False, ended=True),
                        TrialCount(1, 8, searched=True, ended=False)],
                       EpochBudget(4, 12, 8, 2), elapsed_s=97.0, epochs_per_s=0.4)
    format_progress(progress)
    # 'trials 1/16 done, epochs 9 of at most 128, 1m37s elapsed, about 1m58s–4m58s left'

Time left is a range: the epochs still to run if every Optuna trial that has not passed the
first rung stops there, and if none stops, each divided by the epochs per second the slots
have run so far in this session (cost differences between trials, tails and the end are
left out: rough).
"""

from __future__ import annotations

from dataclasses import dataclass

from tune_p7.plan import EpochBudget


@dataclass(frozen=True)
class TrialCount:
    """One trial as the progress sees it: epochs it ran of its planned ``epochs``, whether
    ASHA may stop it (an Optuna trial, not a cell) and whether it ended."""

    epochs_run: int
    epochs: int
    searched: bool
    ended: bool


def measure(trials: list[TrialCount], budget: EpochBudget, elapsed_s: float,
            epochs_per_s: float | None) -> dict:
    """The progress figures (sweep.json's "progress").

    trials: the trials that exist so far; the rest of ``budget`` has not started.
    epochs_per_s: epochs all slots ran per second, None until known. Returns trials_done,
    trials_total, epochs_run, epochs_at_most (run + still possible; an ended trial's unrun
    epochs are no longer possible), elapsed_s and left_s ([low, high] seconds, or None).
    """
    waiting_fixed = max(0, budget.fixed - sum(not trial.searched for trial in trials))
    waiting_searched = max(0, budget.searched - sum(trial.searched for trial in trials))
    running = [trial for trial in trials if not trial.ended]
    epochs_run = sum(trial.epochs_run for trial in trials)
    most_left = (sum(max(0, trial.epochs - trial.epochs_run) for trial in running)
                 + (waiting_fixed + waiting_searched) * budget.epochs)
    fewest_left = (sum(max(0, _fewest(trial, budget) - trial.epochs_run) for trial in running)
                   + waiting_fixed * budget.epochs + waiting_searched * budget.first_rung)
    left = ([round(fewest_left / epochs_per_s), round(most_left / epochs_per_s)]
            if epochs_per_s else None)
    return {"trials_done": sum(trial.ended for trial in trials), "trials_total": budget.trials,
            "epochs_run": epochs_run, "epochs_at_most": epochs_run + most_left,
            "elapsed_s": round(elapsed_s), "left_s": left}


def _fewest(trial: TrialCount, budget: EpochBudget) -> int:
    return min(budget.first_rung, trial.epochs) if trial.searched else trial.epochs


def format_progress(progress: dict) -> str:
    """One line from measure()'s figures."""
    left = progress.get("left_s")
    when = (f"about {format_duration(left[0])}–{format_duration(left[1])} left"
            if left else "time left known after the first epochs")
    return (f"trials {progress['trials_done']}/{progress['trials_total']} done, epochs "
            f"{progress['epochs_run']} of at most {progress['epochs_at_most']}, "
            f"{format_duration(progress['elapsed_s'])} elapsed, {when}")


def format_duration(seconds: float) -> str:
    """45s, 3m20s, 2h05m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
