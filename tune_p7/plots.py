"""PNG plots of a sweep, drawn from the results DataFrames only (no pyplot, no global state).

    paths = write_plots(load_sweep("results/NAME"))   # PLOT_FILES in the sweep folder

- val_margin_by_epoch.png: val Δ per epoch, one line per trial; the baseline cells in
  colour and labelled, Optuna trials grey, a trial that ended early stops where it ended
  (x: stopped by ASHA, red x: failed); the warm-up end and the trivial predictors' Δ marked.
- val_margin_by_parameter.png: final val Δ against each searched hyperparameter; a log
  range on a log axis with round tick values, an integer range on integer ticks, a
  categorical on one tick per choice.
- cos_next_vs_cos_prev.png: final val cos_next against val cos_prev per trial, with the
  Δ = 0 diagonal (above it: closer to the next chunk than to the last context chunk), the
  trivial predictors of every context marked and the Pareto set on (val Δ, cos_next, R@5)
  ringed.
- parallel_coordinates.png: one line per trial across an axis per searched hyperparameter
  and one for final val Δ, coloured by final val Δ (baseline cells dashed).

Confirm re-runs (phase "confirm") are not drawn.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

from tune_p7.files import atomic_path
from tune_p7.results import Sweep
from tune_p7.space import Choices, FloatRange, IntRange, Param, observed_param

PLOT_FILES = ("val_margin_by_epoch.png", "val_margin_by_parameter.png",
              "cos_next_vs_cos_prev.png", "parallel_coordinates.png")
CELL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
PREDICTOR_STYLE = {"copy_last": ("s", "black"), "context_mean": ("D", "tab:olive"),
                   "orth_mean": ("^", "tab:red")}
DPI = 110
PANELS_PER_ROW = 4  # by-parameter panels side by side before the next row


def write_plots(sweep: Sweep, folder: str | Path | None = None) -> list[Path]:
    """Draw the plots of ``sweep`` (PLOT_FILES) into ``folder`` (default: the sweep folder).

    Returns the written paths. A sweep with no reported epoch yet still gets every file
    (with a note instead of data), so a dashboard or report never points at a missing file.
    Confirm re-runs are left out (tune_p7.confirm reports them).
    """
    sweep = dataclasses.replace(sweep, trials=sweep.trials[sweep.trials["phase"] != "confirm"],
                                history=sweep.history[sweep.history["phase"] != "confirm"])
    folder = Path(folder or sweep.path)
    folder.mkdir(parents=True, exist_ok=True)
    drawers = (_margin_by_epoch, _margin_by_parameter, _cos_next_vs_cos_prev,
               _parallel_coordinates)
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
    params = _parameter_axes(sweep) or {"margin": None}
    columns = min(len(params), PANELS_PER_ROW)
    rows = math.ceil(len(params) / columns)
    figure = Figure(figsize=(4.2 * columns, 4.0 * rows), layout="constrained")
    panels = figure.subplots(rows, columns, sharey=True, squeeze=False).flatten()
    for unused in panels[len(params):]:
        unused.set_visible(False)
    trials = _reported(sweep.trials)
    colours = _cell_colours(sweep.trials)
    for index, (axes, (name, param)) in enumerate(zip(panels, params.items())):
        axes.set(xlabel=name, ylabel="final val Δ" if index % columns == 0 else None)
        if _note_if_empty(axes, trials):
            continue
        for phase, group in trials.groupby("phase"):
            cells = phase == "baseline"
            axes.scatter(_coordinates(param, group[name]), group["val_margin"],
                         s=60 if cells else 25,
                         c=[colours.get(c, "tab:gray") for c in group["cell"]] if cells
                         else "tab:gray", edgecolors="black" if cells else "none",
                         label="baseline cells" if cells else f"{phase} trials", zorder=3)
        failed = trials[trials["status"] == "error"]
        if not failed.empty:
            axes.scatter(_coordinates(param, failed[name]), failed["val_margin"], marker="x",
                         c="red", s=50, label="failed (last epoch)", zorder=4)
        if param is not None:
            _parameter_ticks(axes, param)
        axes.axhline(0, color="black", linewidth=0.8)
        axes.grid(alpha=0.3)
    if panels[0].get_legend_handles_labels()[0]:
        panels[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"{sweep.path.name}: final validation margin by hyperparameter")
    return figure


def _parameter_axes(sweep: Sweep) -> dict[str, Param]:
    """{parameter: its kind and span} for every searched or cell-varied parameter
    (tune_p7.space.observed_param); parameters with no spec and one value are left out."""
    params = {}
    for name in sweep.parameters():
        param = observed_param(sweep.plan.optuna.params.get(name),
                               sweep.trials[name].dropna().tolist())
        if param is not None:
            params[name] = param
    return params


def _coordinates(param: Param | None, values: pd.Series) -> np.ndarray:
    """Values as plot coordinates: a choice's position in Choices, else the number itself."""
    if isinstance(param, Choices):
        position = {choice: index for index, choice in enumerate(param.choices)}
        return values.map(position).to_numpy(dtype=float)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _ticks(param: Param) -> tuple[list, list[str]]:
    """(tick coordinates, labels) of a parameter axis: one per choice; round values on a
    log range (see _log_ticks); a few round values, whole numbers for an integer range."""
    if isinstance(param, Choices):
        return list(range(len(param.choices))), [str(choice) for choice in param.choices]
    if param.log:
        values = _log_ticks(param.low, param.high)
    else:
        values = _inside(MaxNLocator(nbins=5, integer=isinstance(param, IntRange))
                         .tick_values(param.low, param.high), param.low, param.high)
    if isinstance(param, IntRange):
        values = sorted({int(round(value)) for value in values})
    return list(values), [f"{value:g}" for value in values]


def _log_ticks(low: float, high: float) -> list[float]:
    """Round values between low and high for a log axis, at most about six: 1, 2, 5 × 10^k
    within one decade, 1, 3 × 10^k within two, 10^k beyond (every n-th decade past six);
    linear round values where fewer than two of those fall inside (a range narrower than
    1..2)."""
    decades = math.log10(high / low)
    steps = (1, 2, 5) if decades <= 1 else (1, 3) if decades <= 2 else (1,)
    stride = max(1, math.ceil(decades / 6))
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    values = _inside([step * 10.0 ** exponent for exponent in range(first, last + 1, stride)
                      for step in steps], low, high)
    return values if len(values) >= 2 else _inside(
        MaxNLocator(nbins=4).tick_values(low, high), low, high)


def _inside(values, low: float, high: float) -> list[float]:
    tolerance = 1e-9 * (abs(low) + abs(high))
    return [float(value) for value in values if low - tolerance <= value <= high + tolerance]


def _parameter_ticks(axes, param: Param) -> None:
    """The x axis of a by-parameter panel: the parameter's whole span, its scale and ticks
    (no minor tick labels, which overlap on a log axis shorter than a decade)."""
    ticks, labels = _ticks(param)
    if isinstance(param, Choices):
        axes.set_xlim(-0.5, len(ticks) - 0.5)
    elif param.log:
        axes.set_xscale("log")
        pad = (param.high / param.low) ** 0.05
        axes.set_xlim(param.low / pad, param.high * pad)
    else:
        pad = 0.05 * (param.high - param.low)
        axes.set_xlim(param.low - pad, param.high + pad)
    axes.set_xticks(ticks, labels)
    axes.xaxis.set_minor_formatter(NullFormatter())


def _normalized(param: Param, coordinates: np.ndarray) -> np.ndarray:
    """Coordinates mapped to 0..1 over the parameter's span (log-scaled for a log range,
    choices evenly spaced)."""
    if isinstance(param, Choices):
        last = len(param.choices) - 1
        return coordinates / last if last else np.full_like(coordinates, 0.5)
    if param.log:
        return ((np.log(coordinates) - math.log(param.low))
                / (math.log(param.high) - math.log(param.low)))
    return (coordinates - param.low) / (param.high - param.low)


def _parallel_coordinates(sweep: Sweep) -> Figure:
    """One line per trial: an axis per searched hyperparameter (its whole span; see _ticks)
    and a last one for final val Δ, the line coloured by final val Δ; baseline cells dashed,
    trials without a finite final val Δ grey (drawn over the parameter axes only)."""
    params = _parameter_axes(sweep)
    trials = _reported(sweep.trials)
    figure = Figure(figsize=(max(6.0, 1.8 * (len(params) + 1) + 2.0), 5.0))
    axes = figure.add_subplot()
    axes.set_title(f"{sweep.path.name}: searched settings by final val Δ")
    if _note_if_empty(axes, trials):
        return figure
    if not params:
        axes.text(0.5, 0.5, "no searched setting varies", ha="center", va="center",
                  transform=axes.transAxes)
        return figure
    margins = trials["val_margin"].to_numpy(dtype=float)
    finite = np.isfinite(margins)
    axis_params = {**params, "final val Δ": _margin_span(margins[finite])}
    lines = np.column_stack([_normalized(param, _coordinates(param, trials[name]))
                             for name, param in params.items()]
                            + [_normalized(axis_params["final val Δ"], margins)])
    x = np.arange(len(axis_params), dtype=float)
    order = np.argsort(np.where(finite, margins, -np.inf))  # best drawn last, on top
    colours = Normalize(axis_params["final val Δ"].low, axis_params["final val Δ"].high)
    cells = (trials["phase"] == "baseline").to_numpy()
    coloured = None
    for is_cell, style, width in ((False, "solid", 1.3), (True, "dashed", 2.4)):
        rows = [row for row in order if cells[row] == is_cell and finite[row]]
        if rows:
            coloured = LineCollection([np.column_stack([x, lines[row]]) for row in rows],
                                      array=margins[rows], cmap="viridis", norm=colours,
                                      linestyles=style, linewidths=width, zorder=3)
            axes.add_collection(coloured)
    grey = [np.column_stack([x[:-1], lines[row, :-1]]) for row in order if not finite[row]]
    if grey:
        axes.add_collection(LineCollection(grey, colors="tab:gray", linewidths=1.0, zorder=2))
    for index, param in enumerate(axis_params.values()):
        axes.axvline(index, color="black", linewidth=0.8, zorder=1)
        ticks, labels = _ticks(param)
        for position, label in zip(_normalized(param, np.asarray(ticks, dtype=float)), labels):
            axes.plot([index - 0.03, index], [position, position], color="black",
                      linewidth=0.8, zorder=1)
            axes.text(index - 0.05, position, label, ha="right", va="center", fontsize=7,
                      zorder=5, bbox={"facecolor": "white", "edgecolor": "none",
                                      "alpha": 0.8, "pad": 0.5})
    axes.set(xlim=(-0.6, len(axis_params) - 0.7), ylim=(-0.05, 1.05), yticks=[])
    axes.set_xticks(x, list(axis_params))
    axes.tick_params(axis="x", length=0)
    axes.spines[:].set_visible(False)
    if coloured is not None:
        figure.colorbar(coloured, ax=axes, label="final val Δ", pad=0.02)
    handles = [Line2D([], [], color="tab:gray", linestyle=style, linewidth=width, label=label)
               for style, width, label in (("solid", 1.3, "Optuna trial"),
                                           ("dashed", 2.4, "baseline cell"))]
    if grey:
        handles.append(Line2D([], [], color="tab:gray", linewidth=1.0,
                              label="no finite final val Δ"))
    axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.08),
                ncol=len(handles), frameon=False)
    return figure


def _margin_span(margins: np.ndarray) -> FloatRange:
    """The final val Δ axis: the finite margins' span (±0.001 around a single value)."""
    if not len(margins):
        return FloatRange(-1.0, 1.0)
    low, high = float(margins.min()), float(margins.max())
    return FloatRange(low, high) if low < high else FloatRange(low - 1e-3, high + 1e-3)


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
