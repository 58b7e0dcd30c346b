"""PNG plots of a sweep, drawn from the results DataFrames only (no pyplot, no global state).

    paths = write_plots(load_sweep("results/NAME"))   # three PNGs in the sweep folder

- val_margin_by_epoch.png: val Δ per epoch, one line per trial; the baseline cells in
  colour and labelled, Optuna trials grey, a trial that ended early stops where it ended
  (x: stopped by ASHA, red x: failed); the warm-up end and the trivial predictors' Δ marked.
- val_margin_by_parameter.png: final val Δ against each searched hyperparameter.
- cos_next_vs_cos_prev.png: final val cos_next against val cos_prev per trial, with the
  Δ = 0 diagonal (above it: closer to the next chunk than to the last context chunk), the
  trivial predictors of every context marked and the Pareto set on (val Δ, cos_next, R@5)
  ringed.

Confirm re-runs (phase "confirm") are not drawn.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tune_p7.files import atomic_path
from tune_p7.results import Sweep

PLOT_FILES = ("val_margin_by_epoch.png", "val_margin_by_parameter.png",
              "cos_next_vs_cos_prev.png")
CELL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
PREDICTOR_STYLE = {"copy_last": ("s", "black"), "context_mean": ("D", "tab:olive"),
                   "orth_mean": ("^", "tab:red")}
DPI = 110


def write_plots(sweep: Sweep, folder: str | Path | None = None) -> list[Path]:
    """Draw the three plots of ``sweep`` into ``folder`` (default: the sweep folder).

    Returns the written paths. A sweep with no reported epoch yet still gets every file
    (with a note instead of data), so a dashboard or report never points at a missing file.
    Confirm re-runs are left out (tune_p7.confirm reports them).
    """
    sweep = dataclasses.replace(sweep, trials=sweep.trials[sweep.trials["phase"] != "confirm"],
                                history=sweep.history[sweep.history["phase"] != "confirm"])
    folder = Path(folder or sweep.path)
    folder.mkdir(parents=True, exist_ok=True)
    drawers = (_margin_by_epoch, _margin_by_parameter, _cos_next_vs_cos_prev)
    paths = []
    for name, draw in zip(PLOT_FILES, drawers):
        figure = draw(sweep)
        with atomic_path(folder / name) as temporary:
            figure.savefig(temporary, dpi=DPI, bbox_inches="tight")
        paths.append(folder / name)
    return paths


def _cell_colours(trials: pd.DataFrame) -> dict[str, str]:
    cells = sorted(trials.loc[trials["phase"] == "baseline", "cell"].unique())
    return {cell: CELL_COLOURS[i % len(CELL_COLOURS)] for i, cell in enumerate(cells)}


def _reported(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that reported at least one epoch (all have val_* columns then)."""
    return trials[trials["epochs_run"] > 0]


def _label(trial: pd.Series) -> str:
    return f"{trial['phase']}/{trial['cell']}" if trial["cell"] else str(trial["phase"])


def _note_if_empty(axes, frame: pd.DataFrame) -> bool:
    if frame.empty:
        axes.text(0.5, 0.5, "no epoch reported yet", ha="center", va="center",
                  transform=axes.transAxes)
    return frame.empty


def _margin_by_epoch(sweep: Sweep) -> Figure:
    """val Δ per epoch per trial (cells coloured), end markers, warm-up and trivial Δ lines."""
    figure = Figure(figsize=(9, 5.5))
    axes = figure.add_subplot()
    trials, history = sweep.trials, sweep.history
    axes.set(xlabel="epoch", ylabel="val Δ = cos_next − cos_prev",
             title=f"{sweep.path.name}: validation margin per epoch")
    if _note_if_empty(axes, history):
        return figure
    colours = _cell_colours(trials)
    epochs = {key: frame.sort_values("epoch") for key, frame in
              history.groupby(["experiment", "trial_id"], sort=False)}
    for _, trial in trials.sort_values("phase", ascending=False).iterrows():
        frame = epochs.get((trial["experiment"], trial["trial_id"]))
        if frame is None:
            continue
        is_cell = trial["phase"] == "baseline"
        colour = colours.get(trial["cell"], "tab:gray") if is_cell else "tab:gray"
        axes.plot(frame["epoch"], frame["val_margin"], color=colour,
                  linewidth=2.4 if is_cell else 1.0, alpha=1.0 if is_cell else 0.6,
                  marker="o", markersize=3, label=_label(trial) if is_cell else None,
                  zorder=3 if is_cell else 2)
        _end_marker(axes, trial, frame)
    warmup = pd.to_numeric(trials.get("warmup_epochs"), errors="coerce").dropna()
    if len(warmup) and warmup.max() > 0:
        axes.axvline(warmup.max() + 0.5, color="tab:gray", linestyle=":", linewidth=1,
                     label=f"warm-up ends (after epoch {int(warmup.max())})")
    _predictor_lines(axes, sweep)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.plot([], [], color="tab:gray", linewidth=1.0, label="Optuna trial")
    statuses = set(trials["status"])
    for status, colour, label in (("stopped_early", "black", "stopped early (ASHA)"),
                                  ("error", "red", "failed")):
        if status in statuses:
            axes.plot([], [], "x", color=colour, label=label)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize=8, loc="best")
    return figure


def _end_marker(axes, trial: pd.Series, frame: pd.DataFrame) -> None:
    """An x where a trial stopped early (black) or failed (red)."""
    colour = {"stopped_early": "black", "error": "red"}.get(trial["status"])
    if colour:
        last = frame.iloc[-1]
        axes.plot(last["epoch"], last["val_margin"], "x", color=colour, markersize=9,
                  markeredgewidth=2, zorder=4)


def _predictor_lines(axes, sweep: Sweep) -> None:
    """Dashed horizontal lines at each trivial predictor's val Δ (the sweep's main K)."""
    if sweep.baselines.empty:
        return
    context = _main_context(sweep)
    rows = sweep.baselines[sweep.baselines["context"] == context]
    for _, row in rows.iterrows():
        _, colour = PREDICTOR_STYLE.get(row["predictor"], ("o", "tab:gray"))
        axes.axhline(row["val_margin"], color=colour, linestyle="--", linewidth=1,
                     label=f"{row['predictor']} (K={context}) {row['val_margin']:+.3f}")


def _main_context(sweep: Sweep) -> int:
    """The context of the Optuna trials (sweep.json), else the most common one."""
    planned = sweep.plan.optuna.context
    if planned is not None:
        return int(planned)
    return int(sweep.trials["context"].mode().iloc[0])


def _margin_by_parameter(sweep: Sweep) -> Figure:
    """One panel per searched hyperparameter: final val Δ of every trial against its value."""
    parameters = sweep.parameters() or ["margin"]
    figure = Figure(figsize=(4.2 * len(parameters), 4.2))
    trials = _reported(sweep.trials)
    colours = _cell_colours(sweep.trials)
    ranges = sweep.plan.optuna.params
    for index, name in enumerate(parameters):
        axes = figure.add_subplot(1, len(parameters), index + 1)
        axes.set(xlabel=name, ylabel="final val Δ" if index == 0 else None)
        if _note_if_empty(axes, trials):
            continue
        for phase, group in trials.groupby("phase"):
            cells = phase == "baseline"
            axes.scatter(group[name], group["val_margin"], s=60 if cells else 25,
                         c=[colours.get(c, "tab:gray") for c in group["cell"]] if cells
                         else "tab:gray", edgecolors="black" if cells else "none",
                         label="baseline cells" if cells else f"{phase} trials", zorder=3)
        failed = trials[trials["status"] == "error"]
        if not failed.empty:
            axes.scatter(failed[name], failed["val_margin"], marker="x", c="red", s=50,
                         label="failed (last epoch)", zorder=4)
        if ranges.get(name, {}).get("log"):
            axes.set_xscale("log")
        axes.axhline(0, color="black", linewidth=0.8)
        axes.grid(alpha=0.3)
    if figure.axes[0].get_legend_handles_labels()[0]:
        figure.axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"{sweep.path.name}: final validation margin by hyperparameter")
    return figure


def _cos_next_vs_cos_prev(sweep: Sweep) -> Figure:
    """Final val cos_next vs cos_prev per trial, Δ = 0 diagonal, trivial predictors marked."""
    figure = Figure(figsize=(6.5, 6.5))
    axes = figure.add_subplot()
    axes.set(xlabel="val cos_prev = cos(p, last context chunk)",
             ylabel="val cos_next = cos(p, next chunk)",
             title=f"{sweep.path.name}: above the diagonal Δ > 0")
    trials = _reported(sweep.trials)
    points = [trials[["val_cos_prev", "val_cos_next"]].to_numpy(dtype=float)
              if not trials.empty else np.zeros((0, 2))]
    colours = _cell_colours(sweep.trials)
    for _, trial in trials.iterrows():
        is_cell = trial["phase"] == "baseline"
        axes.scatter(trial["val_cos_prev"], trial["val_cos_next"],
                     s=60 if is_cell else 25, zorder=3,
                     c=colours.get(trial["cell"], "tab:gray") if is_cell else "tab:gray",
                     edgecolors="black" if is_cell else "none",
                     label=_label(trial) if is_cell else None)
    _ring_pareto(axes, trials)
    main = _main_context(sweep) if not sweep.trials.empty else None
    for _, row in sweep.baselines.iterrows():
        marker, colour = PREDICTOR_STYLE.get(row["predictor"], ("o", "tab:gray"))
        filled = row["context"] == main  # other contexts hollow
        axes.scatter(row["val_cos_prev"], row["val_cos_next"], marker=marker, s=70, zorder=4,
                     facecolors=colour if filled else "none", edgecolors=colour,
                     linewidths=1.5, label=f"{row['predictor']} (K={row['context']})")
        points.append(np.array([[row["val_cos_prev"], row["val_cos_next"]]]))
    stacked = np.concatenate(points) if points else np.zeros((0, 2))
    low, high = _limits(stacked)
    axes.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--",
              label="Δ = 0")
    axes.set(xlim=(low, high), ylim=(low, high), aspect="equal")
    axes.scatter([], [], c="tab:gray", s=25, label="Optuna trials")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return figure


def _ring_pareto(axes, trials: pd.DataFrame) -> None:
    """A ring around each trial of the Pareto set (the trials table's "pareto" column)."""
    if "pareto" not in trials:
        return
    front = trials[trials["pareto"].fillna(False).astype(bool)]
    if not front.empty:
        axes.scatter(front["val_cos_prev"], front["val_cos_next"], s=180, zorder=2,
                     facecolors="none", edgecolors="gold", linewidths=2,
                     label="Pareto set on (val Δ, cos_next, R@5)")


def _limits(points: np.ndarray) -> tuple[float, float]:
    """Common x/y limits covering every finite point with a small margin."""
    finite = points[np.isfinite(points).all(axis=1)] if len(points) else points
    if not len(finite):
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = max(0.05, 0.08 * (high - low))
    return max(-1.05, low - pad), min(1.05, high + pad)
