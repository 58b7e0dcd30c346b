"""The plan of a sweep: everything decided before Ray starts, as typed dataclasses.

    plan = Plan.from_dict(json.loads(Path("results/NAME/sweep.json").read_text()))
    plan.optuna.asha.grace_period, plan.contexts(), plan.cells[0]["margin"]

``python -m tune_p7.sweep`` builds the plan from its arguments and the search space
(tune_p7.sweep.make_plan) and saves it as sweep.json (tune_p7.folder); every later reader
(the Tuner wiring, results, plots, the Optuna export, confirm) gets it back through
:meth:`Plan.from_dict`. ``to_dict`` gives sweep.json's layout exactly (the file also
holds the sweep's run state, which is not part of the plan: see tune_p7.folder). A reader
is lenient: keys missing from an older or hand-written sweep.json take the defaults below.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tune_p7.config import TrainConfig
from tune_p7.space import from_spec, searched_lambda_range

# Arguments that define what a sweep computes, or where its results are logged (Ray restores
# a sweep's loggers as first built); a resumed sweep keeps the saved ones.
PLAN_ARGUMENTS = ("space", "data", "val_data", "profile", "epochs", "epoch_windows",
                  "max_val_windows", "num_samples", "seed", "log_to", "mlflow_uri")


@dataclass(frozen=True)
class AshaPlan:
    """Successive halving of the Optuna trials on val_margin (tune_p7.scheduler)."""

    grace_period: int = 1         # epochs before the first rung
    reduction_factor: float = 3.0  # a rung keeps the top 1/reduction_factor
    max_t: int = 1                # epochs of a trial that is never stopped

    @property
    def first_rung(self) -> int:
        """The fewest epochs an Optuna trial runs: the first rung, or max_t without rungs."""
        return min(max(self.grace_period, 1), self.max_t)

    def rung_epochs(self) -> list[int]:
        return rung_epochs(self.grace_period, self.reduction_factor, self.max_t)


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """ASHA's rungs: ceil(grace_period * reduction_factor**k) for k = 0, 1, ... while below
    max_t (grace 2, factor 3, max_t 8: epochs 2 and 6)."""
    epochs, k = [], 0
    while (epoch := math.ceil(max(grace_period, 1) * reduction_factor ** k)) < max_t:
        epochs.append(epoch)
        k += 1
    return sorted(set(epochs))


@dataclass(frozen=True)
class OptunaPlan:
    """The TPE extension: how many trials, their K, the searched ranges, TPE's start-up."""

    trials: int = 0
    context: int | None = None    # K of every Optuna trial
    params: dict = field(default_factory=dict)  # field -> spec (tune_p7.space.from_spec)
    startup_trials: int = 1       # TPE samples at random until this many trials are done
    asha: AshaPlan = field(default_factory=AshaPlan)

    @classmethod
    def from_dict(cls, values: dict) -> "OptunaPlan":
        return cls(**{**values, "asha": AshaPlan(**values.get("asha", {}))})

    def trial_settings(self) -> dict:
        """TrainConfig settings every Optuna trial takes on top of Plan.fixed: the
        learnable-λ range of the search (searched_lambda_range)."""
        return searched_lambda_range(self.params)


@dataclass(frozen=True)
class Plan:
    """One sweep's plan (sweep.json without its run state).

    arguments: the PLAN_ARGUMENTS as given (None where the profile decides). fixed: the
    TrainConfig dict every trial starts from (profile and overrides applied). cells: one
    full trial config per baseline cell (TrainConfig fields plus "phase" and "cell").
    space: the search space file's parsed content, so a resume uses the file as it was.
    """

    arguments: dict = field(default_factory=dict)
    name: str = ""
    sweep_dir: str = ""
    space_file: str = ""
    space: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    cells: list = field(default_factory=list)
    optuna: OptunaPlan = field(default_factory=OptunaPlan)
    data: str = "default"
    val_data: str | None = None   # a separate validation file (--val-data), else None
    seed: int = 0
    versions: dict = field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_dict(cls, values: dict) -> "Plan":
        """A plan from sweep.json's content; run-state and unknown keys are ignored."""
        known = {item.name for item in dataclasses.fields(cls)}
        given = {key: value for key, value in values.items() if key in known}
        if "optuna" in given:
            given["optuna"] = OptunaPlan.from_dict(given["optuna"])
        if given.get("fixed"):  # settings added to TrainConfig since take their defaults
            given["fixed"] = {**TrainConfig().to_dict(), **given["fixed"]}
        return cls(**given)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def epochs(self) -> int:
        """Epochs of every trial (the cells' and the Optuna trials' budget)."""
        return int(self.fixed["epochs"])

    def contexts(self) -> list[int]:
        """Every context K the sweep trains on: the cells', the Optuna trials' and, where
        context is searched, every K the search can give."""
        used = {cell["context"] for cell in self.cells}
        if self.optuna.context is not None:
            used.add(self.optuna.context)
        if "context" in self.optuna.params:
            used.update(from_spec(self.optuna.params["context"]).values())
        return sorted(used)

    def budget(self) -> "EpochBudget":
        """The epochs the sweep's trials may run: cells all, Optuna trials from the first rung."""
        return EpochBudget(len(self.cells), self.optuna.trials, self.epochs,
                           self.optuna.asha.first_rung)

    def most_epochs(self) -> int:
        """Epochs the sweep runs if no trial is stopped early."""
        return self.budget().most()


@dataclass(frozen=True)
class EpochBudget:
    """The epochs a set of trials may run: each of the ``fixed`` ones (cells, confirm
    re-runs) all ``epochs``; each of the ``searched`` ones at least ``first_rung`` (ASHA may
    stop it there) and at most ``epochs``."""

    fixed: int
    searched: int
    epochs: int
    first_rung: int

    @property
    def trials(self) -> int:
        return self.fixed + self.searched

    def most(self) -> int:
        """Epochs if no trial is stopped early."""
        return self.trials * self.epochs

    def fewest(self) -> int:
        """Epochs if every searched trial is stopped at the first rung."""
        return self.fixed * self.epochs + self.searched * self.first_rung
