"""tune_p7.plots on a hand-made sweep whose searched settings are one of each kind: a log
float range (temperature), an integer range (layers) and a categorical (architecture).

The end-to-end plot files of a real sweep are checked in tests/test_analyze.py.
"""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection

from tune_p7 import plots
from tune_p7.plan import OptunaPlan, Plan
from tune_p7.results import Sweep
from tune_p7.space import Choices, FloatRange, IntRange

SEARCHED = {"temperature": FloatRange(0.02, 0.2, log=True), "layers": IntRange(1, 3),
            "architecture": Choices(("transformer", "lstm"))}
# (phase, cell, temperature, layers, architecture, final val Δ)
TRIALS = [("baseline", "baseline", 0.07, 2, "transformer", -0.05),
          ("baseline", "strong_anchor", 0.07, 2, "transformer", -0.09),
          ("optuna", "", 0.02, 1, "lstm", -0.02),
          ("optuna", "", math.sqrt(0.02 * 0.2), 3, "transformer", -0.12),
          ("optuna", "", 0.2, 2, "lstm", 0.01),
          ("optuna", "", 0.035, 1, "transformer", float("nan"))]  # diverged: no final Δ


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    trials = pd.DataFrame(TRIALS, columns=["phase", "cell", "temperature", "layers",
                                           "architecture", "val_margin"])
    trials.insert(0, "trial_id", [f"t{index}" for index in range(len(trials))])
    trials.insert(1, "experiment", np.where(trials.phase == "baseline", "baseline", "optuna"))
    trials = trials.assign(status=["complete"] * 5 + ["error"], epochs_run=2, context=5,
                           warmup_epochs=1, val_cos_next=0.5,
                           val_cos_prev=0.5 - trials.val_margin)
    history = pd.concat([trials[["trial_id", "experiment", "phase", "cell", "val_margin"]]
                         .assign(epoch=epoch) for epoch in (1, 2)], ignore_index=True)
    cells = [row.to_dict() for _, row in trials[trials.phase == "baseline"].iterrows()]
    plan = Plan(cells=cells, optuna=OptunaPlan(
        context=5, params={name: param.spec() for name, param in SEARCHED.items()}))
    return Sweep(tmp_path, trials, history, pd.DataFrame(), pd.DataFrame(), plan, {}, "parquet")


def drawn(figure):
    """The figure drawn once (tick labels are set at draw time); returns its renderer."""
    FigureCanvasAgg(figure).draw()
    return figure.canvas.get_renderer()


def test_every_plot_is_written_for_float_int_and_categorical_settings(sweep, tmp_path):
    paths = plots.write_plots(sweep, tmp_path / "plots")
    assert [path.name for path in paths] == list(plots.PLOT_FILES)
    assert "parallel_coordinates.png" in plots.PLOT_FILES
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_by_parameter_ticks_are_round_whole_or_named_and_never_overlap(sweep):
    figure = plots._margin_by_parameter(sweep)
    renderer = drawn(figure)
    panels = {axes.get_xlabel(): axes for axes in figure.axes}
    labels = {name: [label.get_text() for label in axes.get_xticklabels()]
              for name, axes in panels.items()}
    assert labels == {"temperature": ["0.02", "0.05", "0.1", "0.2"], "layers": ["1", "2", "3"],
                      "architecture": ["transformer", "lstm"]}
    assert panels["temperature"].get_xscale() == "log"
    for axes in figure.axes:
        shown = [label for label in axes.get_xticklabels() + axes.get_xticklabels(minor=True)
                 if label.get_text() and label.get_visible()]
        boxes = [label.get_window_extent(renderer) for label in shown]
        for first, second in itertools.combinations(boxes, 2):
            assert not first.overlaps(second), axes.get_xlabel()


def test_parallel_coordinates_place_each_trial_on_its_normalised_axes(sweep):
    figure = plots._parallel_coordinates(sweep)
    drawn(figure)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == [
        "temperature", "layers", "architecture", "final val Δ"]
    lines = [tuple(round(y, 6) for _, y in segment) for collection in axes.collections
             if isinstance(collection, LineCollection) for segment in collection.get_segments()]
    # temperature on a log axis (0.02 -> 0, sqrt(0.02 * 0.2) -> 0.5, 0.2 -> 1), layers 1..3
    # -> 0..1, transformer 0 and lstm 1; final Δ -0.12 -> 0 .. 0.01 -> 1; the diverged trial
    # has no point on the Δ axis.
    def line(temperature, layers, architecture, *margin):
        log = math.log10(temperature / 0.02)
        return tuple(round(y, 6) for y in (log, (layers - 1) / 2, architecture,
                                           *((m + 0.12) / 0.13 for m in margin)))
    assert sorted(lines) == sorted([line(0.07, 2, 0, -0.05), line(0.07, 2, 0, -0.09),
                                    line(0.02, 1, 1, -0.02), line(math.sqrt(0.004), 3, 0, -0.12),
                                    line(0.2, 2, 1, 0.01), line(0.035, 1, 0)])
    coloured = [collection.get_array() for collection in axes.collections
                if isinstance(collection, LineCollection) and collection.get_array() is not None]
    assert sorted(np.concatenate(coloured)) == pytest.approx([-0.12, -0.09, -0.05, -0.02, 0.01])
