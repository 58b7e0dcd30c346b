"""Shared fixtures: small real datasets written to real files."""

import numpy as np
import pytest

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
