"""Metrics against hand-computed values on crafted windows."""

import numpy as np
import pytest
import torch

from tune_p7.data import BatchSource, chunk_dataset, device_table
from tune_p7.metrics import copy_last, data_signals, evaluate, orth_mean, trivial_baselines


def crafted_dataset(acceleration=0.0):
    """Two documents of points on a circle in 3-D, one per split.

    Chunk k sits at angle 0.3 k + acceleration k^2 (radians): steps of 0.3 rad, growing
    when acceleration > 0 so that the previous chunk is strictly closer than the next.
    """
    steps = np.arange(8)
    angles = 0.3 * steps + acceleration * steps**2
    circle = np.stack([np.cos(angles), np.sin(angles), np.zeros(8)], axis=1)
    other = np.stack([np.zeros(8), np.cos(angles), np.sin(angles)], axis=1)
    vectors = np.concatenate([circle, other]).astype(np.float32)
    return chunk_dataset(vectors, np.array([0, 8, 16]), val_docs=np.array([False, True]))


def source_of(dataset, context=3, split="val"):
    return BatchSource(dataset.windows(context, split), device_table(dataset.vectors, "cpu"))


def test_copy_last_and_orth_mean_have_their_defining_values():
    source = source_of(crafted_dataset())
    copy = evaluate(copy_last, source)
    assert copy["cos_prev"] == pytest.approx(1.0)
    assert copy["cos_next"] == pytest.approx(np.cos(0.3), abs=1e-6)
    assert copy["margin"] == pytest.approx(np.cos(0.3) - 1, abs=1e-6)
    # With growing steps, c_t (cos 1) and c_{t-1} rank above the next chunk: rank 3 always.
    accelerating = evaluate(copy_last, source_of(crafted_dataset(acceleration=0.02)))
    assert accelerating["r_at_1"] == 0 and accelerating["r_at_5"] == 1
    assert accelerating["mrr_at_10"] == pytest.approx(1 / 3)
    orth = evaluate(orth_mean, source)
    assert orth["cos_prev"] == pytest.approx(0.0, abs=1e-6)


def test_an_oracle_ranks_first_everywhere():
    source = source_of(crafted_dataset())
    positions = torch.arange(len(source))
    _, targets = source.batch(positions)
    by_context = {tuple(c.flatten().tolist()): t for c, t in zip(source.batch(positions)[0], targets)}
    oracle = lambda contexts: torch.stack(  # noqa: E731
        [by_context[tuple(c.flatten().tolist())] for c in contexts])
    metrics = evaluate(oracle, source)
    assert metrics["cos_next"] == pytest.approx(1.0)
    for name in ("r_at_1", "global_r_at_1", "mrr_at_10", "global_mrr_at_10"):
        assert metrics[name] == pytest.approx(1.0)


def test_averages_are_over_windows_not_batch_means(small_synthetic):
    source = source_of(small_synthetic, context=5)
    whole = evaluate(copy_last, source, batch_size=10_000)
    uneven = evaluate(copy_last, source, batch_size=7)  # last batch much smaller
    for name in ("cos_next", "margin", "r_at_5", "global_mrr_at_10"):
        assert uneven[name] == pytest.approx(whole[name], rel=1e-6)
    positions = torch.arange(len(source))
    contexts, targets = source.batch(positions)
    assert whole["cos_next"] == pytest.approx((contexts[:, -1] * targets).sum(-1).mean().item())


def test_global_retrieval_subset_keeps_all_candidates(small_synthetic):
    source = source_of(small_synthetic, context=5)
    full = evaluate(copy_last, source, global_queries=None)
    subset = evaluate(copy_last, source, global_queries=50)
    assert 0 < subset["global_r_at_10"] <= 1
    assert abs(subset["global_r_at_10"] - full["global_r_at_10"]) < 0.2
    assert subset["r_at_5"] == full["r_at_5"]  # in-document retrieval always uses every window


def test_data_signals_equal_hand_computed_values():
    dataset = crafted_dataset()
    signals = data_signals(dataset.windows(3, "val"))
    step = np.cos(0.3)
    assert signals["forward_signal"] == pytest.approx(0.0, abs=1e-6)  # constant speed
    assert signals["recency"] == pytest.approx(step - np.cos(0.9), abs=1e-6)
    assert signals["coherence"] == pytest.approx(step, abs=1e-6)


def test_trivial_baselines_are_reported_side_by_side(small_synthetic):
    baselines = trivial_baselines(source_of(small_synthetic, context=5))
    assert set(baselines) == {"copy_last", "context_mean", "orth_mean"}
    assert baselines["copy_last"]["margin"] < 0
    assert baselines["orth_mean"]["cos_prev"] == pytest.approx(0, abs=1e-5)
