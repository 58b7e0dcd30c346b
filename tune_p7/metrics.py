"""Directional and retrieval metrics, trivial predictors and data signals (DESIGN.md).

For a window (c_{t-K+1} .. c_t) with target next = c_{t+1}, prev = c_t and prediction p:
    cos_next = cos(p, next); cos_prev = cos(p, prev); margin = cos_next - cos_prev
    cos_anchor = cos(p, normalize(mean context))
Averages are over windows (sample-weighted). Retrieval ranks `next` by cos with p among
all chunks of the window's document (r_at_k, mrr_at_10: "in-document") and among all
validation targets (global_r_at_k, global_mrr_at_10). Ties count in the target's favour.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tune_p7.data import BatchSource, Dataset, WindowSet, device_table

Predictor = Callable[[torch.Tensor], torch.Tensor]  # contexts (B, K, D) -> p (B, D) unit
RANKS = (1, 5, 10)
DIRECTIONAL = ("cos_next", "cos_prev", "margin", "cos_anchor")
RETRIEVAL = tuple(f"{scope}{name}" for scope in ("", "global_")
                  for name in [f"r_at_{k}" for k in RANKS] + ["mrr_at_10"])
CANDIDATE_CHUNK = 16384  # global candidates scored per matmul, bounds memory at ~B x this


def copy_last(contexts: torch.Tensor) -> torch.Tensor:
    """p = c_t. Its margin is cos(c_t, next) - 1: never positive."""
    return contexts[:, -1]


def context_mean(contexts: torch.Tensor) -> torch.Tensor:
    """p = normalize(mean context)."""
    return F.normalize(contexts.mean(dim=1), dim=-1)


def orth_mean(contexts: torch.Tensor) -> torch.Tensor:
    """p = normalize(m - (m . c_t) c_t): the context mean with the last chunk projected out.

    cos_prev is 0 by construction, so its margin looks good while its retrieval is poor:
    the reason every report shows margin beside cos_next and retrieval.
    """
    mean, last = contexts.mean(dim=1), contexts[:, -1]
    return F.normalize(mean - (mean * last).sum(-1, keepdim=True) * last, dim=-1)


TRIVIAL_PREDICTORS: dict[str, Predictor] = {
    "copy_last": copy_last, "context_mean": context_mean, "orth_mean": orth_mean}


@torch.no_grad()
def evaluate(predict: Predictor, source: BatchSource, batch_size: int = 1024,
             global_queries: int | None = 4096, directional_only: bool = False) -> dict:
    """Metrics of ``predict`` on every window of ``source``, averaged over windows.

    global_queries: the global ranking scores each query against all N targets, O(N^2 D);
    above this many windows it uses an evenly spaced, fixed subset of queries (the candidate
    pool stays all targets). None ranks every window. directional_only skips retrieval
    (used for the train-split margin). Returns {name: float} plus "windows" (count).
    """
    sums = dict.fromkeys(DIRECTIONAL + RETRIEVAL, 0.0)
    count = len(source)
    query_mask = _global_query_mask(count, global_queries)
    for start in range(0, count, batch_size):
        positions = torch.arange(start, min(start + batch_size, count), device=source.table.device)
        contexts, targets = source.batch(positions)
        predictions = predict(contexts).float()
        _add(sums, _directional(predictions, contexts, targets))
        if directional_only:
            continue
        if source.doc_start is not None:
            _add(sums, _rank_scores(_in_document_ranks(predictions, targets, positions, source), ""))
        chosen = torch.as_tensor(query_mask[start:start + len(positions)], device=positions.device)
        if chosen.any():
            ranks = _global_ranks(predictions[chosen], targets[chosen], source)
            _add(sums, _rank_scores(ranks, "global_"))
    metrics = {name: sums[name] / count for name in DIRECTIONAL}
    if not directional_only:
        in_document = source.doc_start is not None
        for name in RETRIEVAL:
            global_name = name.startswith("global_")
            denominator = int(query_mask.sum()) if global_name else count
            metrics[name] = (sums[name] / denominator if (global_name or in_document)
                             else float("nan"))
    metrics["windows"] = count
    return metrics


def _add(sums: dict, values: dict) -> None:
    for name, value in values.items():
        sums[name] += value


def _directional(predictions, contexts, targets) -> dict:
    """Sums over the batch of cos_next, cos_prev, margin, cos_anchor."""
    cos_next = (predictions * targets).sum(-1)
    cos_prev = (predictions * contexts[:, -1]).sum(-1)
    cos_anchor = (predictions * context_mean(contexts)).sum(-1)
    return {"cos_next": cos_next.sum().item(), "cos_prev": cos_prev.sum().item(),
            "margin": (cos_next - cos_prev).sum().item(), "cos_anchor": cos_anchor.sum().item()}


def _rank_scores(ranks: torch.Tensor, prefix: str) -> dict:
    """Sums of hit@k and reciprocal rank (cut at 10) for 1-based ranks (B,)."""
    scores = {f"{prefix}r_at_{k}": (ranks <= k).sum().item() for k in RANKS}
    scores[f"{prefix}mrr_at_10"] = torch.where(ranks <= 10, 1.0 / ranks, 0.0).sum().item()
    return scores


def _in_document_ranks(predictions, targets, positions, source: BatchSource) -> torch.Tensor:
    """1-based rank (B,) of each target among all chunks of its own document."""
    doc_start, doc_end = source.doc_start[positions], source.doc_end[positions]
    span_start = int(doc_start.min())
    rows = torch.arange(span_start, int(doc_end.max()), device=predictions.device)  # (S,)
    scores = predictions @ source.rows(rows).T                                     # (B, S)
    own = (predictions * targets).sum(-1, keepdim=True)                            # (B, 1)
    target_row = source.starts[positions] + source.windows.context
    in_document = (rows >= doc_start[:, None]) & (rows < doc_end[:, None])
    beats = (scores > own) & in_document & (rows != target_row[:, None])
    return beats.sum(-1) + 1


def _global_ranks(predictions, targets, source: BatchSource) -> torch.Tensor:
    """1-based rank (B,) of each target among all targets of the source's windows."""
    own = (predictions * targets).sum(-1, keepdim=True)
    target_rows = source.starts + source.windows.context
    beats = torch.zeros(len(predictions), dtype=torch.long, device=predictions.device)
    for start in range(0, len(target_rows), CANDIDATE_CHUNK):
        candidates = source.rows(target_rows[start:start + CANDIDATE_CHUNK])
        beats += ((predictions @ candidates.T) > own).sum(-1)
    # A query's own target scores exactly `own` and is never counted, so no self-exclusion.
    return beats + 1


def _global_query_mask(count: int, limit: int | None) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    if limit is None or count <= limit:
        mask[:] = True
    else:
        mask[np.linspace(0, count - 1, limit).round().astype(int)] = True
    return mask


def trivial_baselines(source: BatchSource, **evaluate_options) -> dict[str, dict]:
    """Metrics of every trivial predictor on the same windows: {name: metrics}."""
    return {name: evaluate(predictor, source, **evaluate_options)
            for name, predictor in TRIVIAL_PREDICTORS.items()}


def reference_metrics(dataset: Dataset, context: int,
                      global_queries: int | None = 4096) -> dict[str, dict]:
    """What every trial of context K is judged against: trivial predictors and data signals.

    Returns {"baselines": {predictor: {"val_<metric>": value}}, "signals": {"train" | "val":
    data_signals(...)}}: the trivial predictors on the validation windows of K (under the
    names of a trial's val_* metrics, the window count left out: the signals carry it) and
    the directional signals of both splits. global_queries: as in :func:`evaluate`. The one
    place train, the sweep and ``python -m tune_p7.data inspect`` get these numbers from.
    """
    splits = {split: dataset.windows(context, split) for split in ("train", "val")}
    table = device_table(dataset.vectors, "cpu")
    scores = trivial_baselines(BatchSource(splits["val"], table), global_queries=global_queries)
    return {"baselines": {name: {f"val_{key}": value for key, value in metrics.items()
                                 if key != "windows"}
                          for name, metrics in scores.items()},
            "signals": {split: data_signals(windows) for split, windows in splits.items()}}


def data_signals(windows: WindowSet) -> dict[str, float]:
    """Directional signals of the data itself, averaged over windows (DESIGN.md).

    forward_signal = mean cos(c_t, c_{t+1}) - cos(c_t, c_{t-1});
    recency = mean cos(c_t, c_{t+1}) - cos(c_{t-K+1}, c_{t+1});
    coherence = mean cos over the distinct adjacent chunk pairs inside the windows.
    """
    vectors = windows.vectors
    unit = lambda rows: _unit_rows(vectors[rows])  # noqa: E731
    target = unit(windows.starts + windows.context)
    last = unit(windows.starts + windows.context - 1)
    second_last = unit(windows.starts + windows.context - 2)
    first = unit(windows.starts)
    cos = lambda a, b: (a * b).sum(-1)  # noqa: E731
    # Each adjacent pair inside any window once, though windows overlap.
    pair_starts = np.unique(windows.starts[:, None] + np.arange(windows.context))
    adjacent = cos(unit(pair_starts), unit(pair_starts + 1))
    return {"forward_signal": float(np.mean(cos(last, target) - cos(last, second_last))),
            "recency": float(np.mean(cos(last, target) - cos(first, target))),
            "coherence": float(np.mean(adjacent)),
            "windows": len(windows)}


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
