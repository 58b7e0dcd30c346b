"""Metrics against hand-computed values on crafted windows."""

import numpy as np
import pytest
import torch

from tune_p7.data import BatchSource, chunk_dataset, device_table
from tune_p7.metrics import TRIVIAL_PREDICTORS, copy_last, data_signals, evaluate, orth_mean, \
    trivial_baselines


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


def test_one_pass_over_all_trivial_predictors_gives_each_its_own_metrics(small_synthetic):
    # The joint pass stacks the predictors' queries; ranks must not mix between predictors.
    source = source_of(small_synthetic, context=5)
    together = trivial_baselines(source, batch_size=37, global_queries=60)
    for name, predictor in TRIVIAL_PREDICTORS.items():
        alone = evaluate(predictor, source, batch_size=37, global_queries=60)
        assert together[name].keys() == alone.keys()
        for key, value in alone.items():
            assert together[name][key] == pytest.approx(value, abs=1e-6), (name, key)


# --- exact ranks (one score set, exclusion by index, ties) and streaming over far-apart documents


def oracle_for(source):
    """A predictor that returns each window's own target (p = next), keyed by its context."""
    contexts, targets = source.batch(torch.arange(len(source)))
    by_context = {c.numpy().tobytes(): t for c, t in zip(contexts, targets)}
    return lambda batch: torch.stack([by_context[c.numpy().tobytes()] for c in batch])


def test_an_oracle_on_the_shipped_data_ranks_first_in_document_and_globally():
    # Before the fix the target's own matmul score beat its separately summed score in
    # about half the queries: global R@1 was 0.57 here.
    from tune_p7.data import load_dataset

    source = source_of(load_dataset("default"), context=5)
    metrics = evaluate(oracle_for(source), source, global_queries=None)
    for name in ("r_at_1", "mrr_at_10", "global_r_at_1", "global_mrr_at_10"):
        assert metrics[name] == 1.0, name


def circle_with_a_duplicate():
    """Two documents of 8 chunks on a circle, 0.3 rad apart; the validation document's
    chunk 6 repeats its chunk 4 exactly. K=3: validation targets are its chunks 3..7."""
    angles = 0.3 * np.arange(8)
    circle = np.stack([np.cos(angles), np.sin(angles), np.zeros(8)], axis=1)
    val = circle.copy()
    val[6] = val[4]
    dataset = chunk_dataset(np.concatenate([circle, val]).astype(np.float32),
                            np.array([0, 8, 16]), val_docs=np.array([False, True]))
    return source_of(dataset, context=3), torch.as_tensor(val, dtype=torch.float32)


def test_a_duplicate_of_the_target_is_a_tie_counted_in_its_favour():
    source, _ = circle_with_a_duplicate()
    metrics = evaluate(oracle_for(source), source, global_queries=None)
    # The target chunk 6 has an exact duplicate (chunk 4) in-document and among the targets.
    assert metrics["r_at_1"] == 1.0 and metrics["global_r_at_1"] == 1.0


def test_chunks_closer_than_the_target_rank_above_it_and_equal_ones_do_not():
    source, val = circle_with_a_duplicate()
    oracle = oracle_for(source)
    first_context = source.batch(torch.arange(1))[0][0]

    def chunk_four_for_the_first_window(contexts):
        predictions = oracle(contexts)
        first = (contexts == first_context).flatten(1).all(1)
        predictions[first] = val[4]
        return predictions

    metrics = evaluate(chunk_four_for_the_first_window, source, global_queries=None)
    # First window (target chunk 3, cos 0.955 with chunk 4): chunks 4 and 6 (cos 1) beat
    # it, chunk 5 (also 0.3 rad from chunk 4) ties: rank 3. Globally the other targets are
    # chunks 4, 5, 6, 7: again 4 and 6 beat it, 5 ties: rank 3. The other 4 windows: rank 1.
    assert metrics["r_at_1"] == pytest.approx(4 / 5)
    assert metrics["mrr_at_10"] == pytest.approx((4 + 1 / 3) / 5)
    assert metrics["global_mrr_at_10"] == pytest.approx((4 + 1 / 3) / 5)


def test_recall_at_10_and_mrr_cut_at_10_have_their_definitions():
    from tune_p7.metrics import _rank_scores

    scores = _rank_scores(torch.tensor([1, 2, 10, 11, 40]), "")
    assert scores == {"r_at_1": 1, "r_at_5": 2, "r_at_10": 3,
                      "mrr_at_10": pytest.approx(1 + 1 / 2 + 1 / 10)}


def spread_dataset(num_docs=40, length=12, dim=8, seed=3):
    """Random-walk documents whose validation documents lie far apart in the table."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((num_docs, length, dim)).astype(np.float32)
    vectors = np.cumsum(steps, axis=1).reshape(-1, dim) + 0.1
    val_docs = np.zeros(num_docs, dtype=bool)
    val_docs[[0, 13, 27, 39]] = True
    return chunk_dataset(vectors, np.arange(num_docs + 1) * length, val_docs=val_docs)


def brute_force(dataset, context, predict):
    """Every metric of ``predict`` by a per-window loop over the definitions (float64)."""
    windows = dataset.windows(context, "val")
    unit = dataset.vectors / np.linalg.norm(dataset.vectors, axis=1, keepdims=True)
    unit = unit.astype(np.float64)
    targets = windows.starts + context
    sums = dict.fromkeys(["margin", "cos_next", "r_at_1", "r_at_5", "mrr_at_10",
                          "global_r_at_5", "global_mrr_at_10"], 0.0)
    for index, (start, lo, hi) in enumerate(zip(windows.starts, windows.doc_start,
                                                windows.doc_end)):
        p = predict(torch.as_tensor(unit[start:start + context][None], dtype=torch.float32))
        p = p[0].double().numpy()
        own = p @ unit[start + context]
        sums["cos_next"] += own
        sums["margin"] += own - p @ unit[start + context - 1]
        others = [row for row in range(lo, hi) if row != start + context]
        rank = 1 + sum(p @ unit[row] > own + 1e-6 for row in others)
        global_rank = 1 + sum(p @ unit[row] > own + 1e-6 for i, row in enumerate(targets)
                              if i != index)
        sums["r_at_1"] += rank <= 1
        sums["r_at_5"] += rank <= 5
        sums["mrr_at_10"] += 1 / rank if rank <= 10 else 0
        sums["global_r_at_5"] += global_rank <= 5
        sums["global_mrr_at_10"] += 1 / global_rank if global_rank <= 10 else 0
    return {name: value / len(windows) for name, value in sums.items()}


@pytest.mark.parametrize("batch_size", [5, 1024])
def test_far_apart_validation_documents_give_the_brute_force_metrics(batch_size):
    from tune_p7.metrics import context_mean

    dataset = spread_dataset()
    expected = brute_force(dataset, 3, context_mean)
    metrics = evaluate(context_mean, source_of(dataset, context=3), batch_size=batch_size,
                       global_queries=None)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name


def test_block_wise_data_signals_equal_the_whole_table_formula(monkeypatch):
    import tune_p7.data

    dataset = spread_dataset()
    windows = dataset.windows(4, "train")
    unit = dataset.vectors / np.linalg.norm(dataset.vectors, axis=1, keepdims=True)
    cos = lambda a, b: (unit[a] * unit[b]).sum(-1)  # noqa: E731
    last, target = windows.starts + 3, windows.starts + 4
    pairs = np.unique(windows.starts[:, None] + np.arange(4))
    expected = {"forward_signal": np.mean(cos(last, target) - cos(last, last - 1)),
                "recency": np.mean(cos(last, target) - cos(windows.starts, target)),
                "coherence": np.mean(cos(pairs, pairs + 1))}
    monkeypatch.setattr(tune_p7.data, "BLOCK_ROWS", 7)  # many blocks, a ragged last one
    signals = data_signals(windows)
    for name, value in expected.items():
        assert signals[name] == pytest.approx(value, abs=1e-6), name
    assert signals["windows"] == len(windows)


def test_a_validation_cap_takes_the_same_evenly_spaced_windows_every_time():
    windows = spread_dataset().windows(3, "val")
    capped = windows.evenly_spaced(10)
    assert len(capped) == 10 and capped.starts[0] == windows.starts[0]
    assert capped.starts[-1] == windows.starts[-1]
    np.testing.assert_array_equal(capped.starts, windows.evenly_spaced(10).starts)
    assert windows.evenly_spaced(0) is windows and windows.evenly_spaced(10_000) is windows
