"""The Ray Tune trainable: a thin wrapper around :func:`tune_p7.train.train`.

    trainable = tune.with_parameters(p7_trainable, dataset=dataset)  # dataset in object store

A trial's config is every TrainConfig field plus the labels ``phase`` and ``cell``. Each
epoch is reported with ``tune.report(metrics, checkpoint=...)``; the checkpoint holds
train's state (``state.pt``), so a retried or restored trial continues from its last
finished epoch exactly. A NaN/inf loss raises TrainingDiverged, which ends the trial as an
error with that sentence in its error.txt; the sweep goes on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ray import tune

from tune_p7.data import Dataset
from tune_p7.folder import CHECKPOINT_FILE
from tune_p7.train import TrainConfig, train

LABELS = ("phase", "cell")


def p7_trainable(config: dict, dataset: Dataset) -> None:
    """Train one config on ``dataset``, reporting every epoch with its checkpoint.

    config: TrainConfig fields plus labels "phase" and "cell" (labels are not training
    settings and are dropped here). dataset: the validated dataset, shared read-only.
    """
    settings = TrainConfig.from_dict({k: v for k, v in config.items() if k not in LABELS})
    train(settings, dataset, on_epoch=report_epoch, resume_state=checkpoint_state())


def report_epoch(metrics: dict, state: dict) -> None:
    """Report one epoch's metrics to Tune with train's state as the checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def checkpoint_state() -> dict | None:
    """train's state from the trial's latest checkpoint, or None for a fresh trial."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return saved_state(Path(folder))


def saved_state(folder: Path) -> dict | None:
    """train's state in checkpoint folder ``folder``; None when the folder holds none: an
    empty checkpoint, which the sweep puts under a name Ray deleted when nothing after it
    can be continued (tune_p7.folder.restore_named_checkpoint), starts the trial over."""
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
