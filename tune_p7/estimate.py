"""How long a sweep's trials take on this machine, from a few timed training steps.

    estimate = estimate_sweep(plan, dataset, slots=2, threads=1, device="auto")
    format_estimate(estimate)   # '2m10s–4m30s of trials at 2 at once (...)'

Each distinct model cost among the cells and the Optuna trials (architecture, width, depth,
heads, batch, K, hard negatives, bf16) is timed once with tune_p7.train's own Run on random
unit vectors of the data's width and dtype: one batch to warm up, then two timed batches
and one timed evaluation. The seconds per training window and per evaluated
window, times the windows an epoch trains on and evaluates (epoch_windows, max_val_windows),
give the seconds per epoch of every trial. The wall
time is a range, every Optuna trial stopped at the first rung .. none stopped, spread over
``slots`` trials at once: max(total trial time / slots, the longest trial). Ray's start, the
tails where fewer trials than slots are left, and the end are not counted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from tune_p7.config import TrainConfig
from tune_p7.data import Dataset, chunk_dataset
from tune_p7.plan import Plan
from tune_p7.sweep_progress import format_duration
from tune_p7.train import Run, window_counts

TIMED_BATCHES = 2        # timed training batches (after one warm-up batch)
EVAL_WINDOWS = 128       # validation windows of the timed evaluation
DOCUMENT_CHUNKS = 12     # chunks beyond K per random document (hard negatives need some)
COST_FIELDS = ("architecture", "d_model", "layers", "heads", "batch_size", "context",
               "hard_negatives", "bf16")
FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class StepTiming:
    """Measured cost of one model: seconds per training window and per evaluated window."""

    train_s_per_window: float
    eval_s_per_window: float

    def epoch_seconds(self, config: TrainConfig, dataset: Dataset) -> float:
        """Seconds of one epoch of ``config`` on ``dataset``: the training windows an epoch
        trains on, the validation windows it evaluates and the training windows it
        evaluates."""
        counts = window_counts(config, dataset)
        train_eval = min(counts.trained, config.train_eval_windows or counts.trained)
        return (counts.per_epoch * self.train_s_per_window
                + (counts.evaluated + train_eval) * self.eval_s_per_window)


@dataclass(frozen=True)
class SweepEstimate:
    """Wall seconds of a sweep's trials (low: every Optuna trial stopped at the first rung,
    high: none stopped), at ``slots`` trials at once, and the models timed."""

    low_s: float
    high_s: float
    slots: int
    timed_models: int
    timing_s: float  # how long the timing itself took


TIMING_LR = 1e-4  # any finite rate times the same step


def time_model(config: TrainConfig, dim: int, dtype, batches: int = TIMED_BATCHES) -> StepTiming:
    """Time ``config``'s training step and evaluation on random data of width ``dim``.

    One batch warms up (allocations, kernel choice), then ``batches`` batches and one
    evaluation are timed. Uses config's device and threads; the process's torch threads and
    RNG are left as they were.
    """
    threads = torch.get_num_threads()
    # The step's speed does not depend on the learning rate, but a diverging one (a
    # deliberately failing cell) would end the timing with TrainingDiverged.
    config = dataclasses.replace(config, lr=TIMING_LR)
    try:
        with torch.random.fork_rng(devices=[]):
            Run(config, timing_dataset(config.context, dim, dtype, config.batch_size)).train_epoch()
            run = Run(config, timing_dataset(config.context, dim, dtype,
                                             batches * config.batch_size))
            trained = run.train_epoch()
            started = time.perf_counter()
            run.evaluate()
            evaluated = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    windows = len(run.val_source) + len(run.train_eval_source)
    return StepTiming(1.0 / trained["sequences_per_second"], evaluated / windows)


def warm_up(dim: int, dtype) -> None:
    """Pay torch's one-time costs (its optimizer's first import takes seconds) before any
    timing, e.g. in a thread while Ray starts: one batch of a tiny model."""
    time_model(TrainConfig(d_model=8, layers=1, heads=1, batch_size=4, threads=1,
                           device="cpu"), dim, dtype, batches=1)


def timing_dataset(context: int, dim: int, dtype, train_windows: int) -> Dataset:
    """Random unit vectors in documents of context + DOCUMENT_CHUNKS chunks: at least
    ``train_windows`` training windows, then EVAL_WINDOWS validation windows."""
    per_document = DOCUMENT_CHUNKS
    train_docs = math.ceil(train_windows / per_document)
    val_docs = math.ceil(EVAL_WINDOWS / per_document)
    length = context + per_document
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal(((train_docs + val_docs) * length, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.arange(train_docs + val_docs + 1, dtype=np.int64) * length
    val = np.arange(train_docs + val_docs) >= train_docs
    return chunk_dataset(vectors.astype(dtype), offsets, name="timing", val_docs=val)


def estimate_sweep(plan: Plan, dataset: Dataset, slots: int, threads: int,
                   device: str) -> SweepEstimate:
    """The wall-time range of ``plan``'s trials on ``dataset`` (see the module)."""
    started = time.perf_counter()
    execution = {"threads": threads, "device": device}
    cells = [_train_config({**cell, **execution}) for cell in plan.cells]
    trial = _train_config({**plan.fixed, **execution})
    timings: dict[tuple, StepTiming] = {}
    for config in [*cells, trial]:
        key = tuple(getattr(config, name) for name in COST_FIELDS)
        if key not in timings:
            timings[key] = time_model(config, dataset.dim, dataset.vectors.dtype)

    def epoch_seconds(config: TrainConfig) -> float:
        key = tuple(getattr(config, name) for name in COST_FIELDS)
        return timings[key].epoch_seconds(config, dataset)

    cell_seconds = [config.epochs * epoch_seconds(config) for config in cells]
    low, high = wall_range(cell_seconds, epoch_seconds(trial), plan.optuna.trials,
                           plan.optuna.asha.first_rung, trial.epochs, slots)
    return SweepEstimate(low, high, slots, len(timings), time.perf_counter() - started)


def wall_range(cell_seconds: list[float], trial_epoch_s: float, trials: int, first_rung: int,
               epochs: int, slots: int) -> tuple[float, float]:
    """(low, high) wall seconds: every one of ``trials`` Optuna trials (``trial_epoch_s``
    per epoch) stopped at ``first_rung`` .. none stopped (``epochs``), beside the cells
    (``cell_seconds`` each), ``slots`` at once: max(total / slots, the longest trial)."""
    bounds = []
    for trial_epochs in (first_rung, epochs):
        trial_seconds = trial_epochs * trial_epoch_s
        total = sum(cell_seconds) + trials * trial_seconds
        bounds.append(max([total / max(1, slots), *cell_seconds,
                           *([trial_seconds] if trials else [])]))
    return bounds[0], bounds[1]


def format_estimate(estimate: SweepEstimate) -> str:
    """One line for the plan."""
    return (f"  estimate on this machine: {format_duration(estimate.low_s)}–"
            f"{format_duration(estimate.high_s)} of trials at {estimate.slots} at once "
            f"(every Optuna trial stopped at the first rung .. none stopped), from "
            f"{TIMED_BATCHES} training batches and one evaluation of each of "
            f"{estimate.timed_models} model sizes timed in {estimate.timing_s:.1f} s; Ray's "
            f"start and the end add seconds")


def _train_config(config: dict) -> TrainConfig:
    return TrainConfig.from_dict({name: config[name] for name in FIELDS if name in config})
