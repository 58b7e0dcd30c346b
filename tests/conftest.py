"""Shared fixtures: small real datasets written to real files."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from tune_p7.data import chunk_dataset, make_synthetic


@pytest.fixture(scope="session")
def small_synthetic():
    """A small chunk-level synthetic Dataset (80 documents, 16-d) split 80/20 by document."""
    vectors, offsets = make_synthetic(num_docs=80, dim=16, seed=1)
    return chunk_dataset(vectors, offsets, name="small-synthetic")


@pytest.fixture
def chunk_file(tmp_path):
    """Write a chunk-level NPZ from (vectors, doc_ids or offsets) keyword arrays; returns path."""
    def write(name="data.npz", **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path
    return write


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A chunk-level NPZ of 40 short synthetic documents (16-d, ~630 chunks) for tiny sweeps."""
    vectors, offsets = make_synthetic(num_docs=40, dim=16, min_chunks=12, max_chunks=20, seed=3)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, vectors=vectors, offsets=offsets)
    return path


TINY_SPACE = Path(__file__).parent / "sweep" / "tiny.yaml"  # 16-wide model: seconds per trial


def write_tiny_space(path: Path, epochs: int = 3, optuna_trials: int = 3,
                     reduction_factor: int = 3, startup_trials: int = 2,
                     extra_cells: dict | None = None) -> Path:
    """tests/sweep/tiny.yaml with a test's own budget and extra cells, written to ``path``."""
    space = yaml.safe_load(TINY_SPACE.read_text())
    for profile in space["profiles"].values():
        profile["train"]["epochs"] = epochs
        profile["optuna_trials"] = optuna_trials
        profile["asha"]["reduction_factor"] = reduction_factor
    space["optuna"]["startup_trials"] = startup_trials
    space["cells"].update(extra_cells or {})
    path.write_text(yaml.safe_dump(space))
    return path
