"""Directional and retrieval metrics, trivial predictors and data signals (DESIGN.md).

For a window (c_{t-K+1} .. c_t) with target next = c_{t+1}, prev = c_t and prediction p:
    cos_next = cos(p, next); cos_prev = cos(p, prev); margin = cos_next - cos_prev
    cos_anchor = cos(p, normalize(mean context))
Averages are over windows (sample-weighted). Retrieval ranks `next` by cos with p among
all other chunks of the window's document (r_at_k, mrr_at_10: "in-document") and among the
targets of all other evaluated windows (global_r_at_k, global_mrr_at_10). The target is
excluded by index, never compared with itself; a candidate within TIE_TOLERANCE of the
target's cosine is a tie, and ties count in the target's favour.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tune_p7.data import BatchSource, Dataset, WindowSet, device_table, evenly_spaced, \
    row_blocks

Predictor = Callable[[torch.Tensor], torch.Tensor]  # contexts (B, K, D) -> p (B, D) unit
RANKS = (1, 5, 10)
DIRECTIONAL = ("cos_next", "cos_prev", "margin", "cos_anchor")
RETRIEVAL = tuple(f"{scope}{name}" for scope in ("", "global_")
                  for name in [f"r_at_{k}" for k in RANKS] + ["mrr_at_10"])
CANDIDATE_CHUNK = 16384  # candidates scored per matmul, bounds memory at ~B x this
# Cosines within this of the target's own are ties: float32 dot products of unit vectors
# summed in a different order differ by up to ~1e-6, so an exact duplicate of the target
# row may score that much above it.
TIE_TOLERANCE = 1e-6


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


def evaluate(predict: Predictor, source: BatchSource, batch_size: int = 1024,
             global_queries: int | None = 4096, directional_only: bool = False) -> dict:
    """Metrics of ``predict`` on every window of ``source``, averaged over windows.

    global_queries: the global ranking scores each query against all N targets, O(N^2 D);
    above this many windows it uses an evenly spaced, fixed subset of queries (the candidate
    pool stays all targets). None ranks every window. directional_only skips retrieval
    (used for the train-split margin). Returns {name: float} plus "windows" (count).
    """
    return evaluate_together({"": predict}, source, batch_size, global_queries,
                             directional_only)[""]


@torch.no_grad()
def evaluate_together(predictors: dict[str, Predictor], source: BatchSource,
                      batch_size: int = 1024, global_queries: int | None = 4096,
                      directional_only: bool = False) -> dict[str, dict]:
    """:func:`evaluate` of several predictors in one pass: {name: metrics}.

    Each batch's windows, each document's candidate rows and each block of global
    candidates are read (and cast, and normalized) once and scored against the predictions
    of every predictor at once; each predictor's metrics are those evaluate gives it alone.
    """
    names = list(predictors)
    sums = {name: dict.fromkeys(DIRECTIONAL + RETRIEVAL, 0.0) for name in names}
    count = len(source)
    query_mask = np.zeros(count, dtype=bool)
    query_mask[evenly_spaced(count, global_queries or 0)] = True
    queries = []  # (P, q, D) predictions of the global queries, ranked once all are known
    for start in range(0, count, batch_size):
        positions = torch.arange(start, min(start + batch_size, count), device=source.table.device)
        contexts, targets = source.batch(positions)
        predictions = torch.stack([predictors[name](contexts).float() for name in names])
        for name, predicted in zip(names, predictions):
            _add(sums[name], _directional(predicted, contexts, targets))
        if directional_only:
            continue
        if source.doc_start is not None:
            # The P predictors' queries side by side, as P times the batch's windows.
            ranks = _in_document_ranks(predictions.flatten(0, 1), targets.repeat(len(names), 1),
                                       positions.repeat(len(names)), source)
            for name, own_ranks in zip(names, ranks.view(len(names), -1)):
                _add(sums[name], _rank_scores(own_ranks, ""))
        queries.append(predictions[:, torch.as_tensor(query_mask[start:start + len(positions)],
                                                      device=positions.device)])
    metrics = {name: {key: sums[name][key] / count for key in DIRECTIONAL} for name in names}
    if not directional_only:
        query_positions = torch.as_tensor(np.flatnonzero(query_mask), device=source.table.device)
        ranks = _global_ranks(torch.cat(queries, dim=1).flatten(0, 1),
                              query_positions.repeat(len(names)), source, batch_size)
        for name, own_ranks in zip(names, ranks.view(len(names), -1)):
            _add(sums[name], _rank_scores(own_ranks, "global_"))
        in_document = source.doc_start is not None
        for name in names:
            for key in RETRIEVAL:
                global_key = key.startswith("global_")
                denominator = len(query_positions) if global_key else count
                metrics[name][key] = (sums[name][key] / denominator
                                      if (global_key or in_document) else float("nan"))
    for name in names:
        metrics[name]["windows"] = count
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
    """1-based rank (B,) of each target among all chunks of its own document.

    Per document, not per span: the batch's windows are grouped by document, and each group
    is scored (one batched matmul) against its own document's rows only, however far apart
    the documents lie in the table, in blocks of about CANDIDATE_CHUNK rows.
    """
    doc_start, doc_end = source.doc_start[positions], source.doc_end[positions]
    starts, window_document = torch.unique(doc_start, return_inverse=True)   # (U,), (B,)
    lengths = torch.empty_like(starts).scatter_(0, window_document, doc_end) - starts
    # Slot of each window inside its document's group of queries: (U, W, D) queries.
    counts = torch.bincount(window_document, minlength=len(starts))
    grouped = torch.argsort(window_document, stable=True)
    slot = torch.empty_like(window_document)
    slot[grouped] = torch.arange(len(grouped), device=slot.device) - (
        torch.cumsum(counts, 0) - counts)[window_document[grouped]]
    queries = predictions.new_zeros(len(starts), int(counts.max()), predictions.shape[1])
    queries[window_document, slot] = predictions
    own = (predictions * targets).sum(-1)
    target_row = source.starts[positions] + source.windows.context
    beaten = torch.zeros(len(predictions), dtype=torch.long, device=predictions.device)
    width = max(1, CANDIDATE_CHUNK // len(starts))  # rows per document and block
    for first in range(0, int(lengths.max()), width):
        offsets = torch.arange(first, min(first + width, int(lengths.max())),
                               device=starts.device)
        inside = offsets < lengths[:, None]                                   # (U, C)
        rows = torch.where(inside, starts[:, None] + offsets, starts[:, None])
        scores = torch.bmm(queries, source.rows(rows).transpose(1, 2))        # (U, W, C)
        window_scores = scores[window_document, slot]                         # (B, C)
        eligible = inside[window_document] & (rows[window_document] != target_row[:, None])
        beaten += ((window_scores > own[:, None] + TIE_TOLERANCE) & eligible).sum(-1)
    return beaten + 1


def _global_ranks(predictions, positions, source: BatchSource, batch_size: int) -> torch.Tensor:
    """1-based rank (Q,) of each query's target among the targets of all the source's windows.

    predictions (Q, D) of the windows at ``positions`` (Q,). Each block of candidates is
    normalized once and scored against every query; a query's own target is excluded by
    index: counted like any candidate, then taken back out of its count.
    """
    target_rows = source.starts + source.windows.context
    own = (predictions * source.rows(target_rows[positions])).sum(-1)
    beaten = torch.zeros(len(predictions), dtype=torch.long, device=predictions.device)
    for block in range(0, len(target_rows), CANDIDATE_CHUNK):
        candidates = source.rows(target_rows[block:block + CANDIDATE_CHUNK])
        for query in range(0, len(predictions), batch_size):
            chosen = slice(query, query + batch_size)
            # In place, 1.0 where the candidate is above (scores - own > 0 exactly where
            # scores > own): no second (queries, candidates) tensor; sums of ones are exact.
            above = (predictions[chosen] @ candidates.T).sub_(
                own[chosen, None] + TIE_TOLERANCE).gt_(0)
            beaten[chosen] += above.sum(-1).long()
            column = positions[chosen] - block        # the query's own target in this block
            here = torch.nonzero((column >= 0) & (column < len(candidates))).flatten()
            beaten[query + here] -= above[here, column[here]].long()
    return beaten + 1


def trivial_baselines(source: BatchSource, **evaluate_options) -> dict[str, dict]:
    """Metrics of every trivial predictor on the same windows, in one pass: {name: metrics}."""
    return evaluate_together(TRIVIAL_PREDICTORS, source, **evaluate_options)


def reference_metrics(dataset: Dataset, context: int, global_queries: int | None = 4096,
                      max_val_windows: int = 0,
                      lag_rows: np.ndarray | None = None) -> dict[str, dict]:
    """What every trial of context K is judged against: trivial predictors and data signals.

    Returns {"baselines": {predictor: {"val_<metric>": value}}, "signals": {"train" | "val":
    data_signals(...)}}: the trivial predictors on the validation windows a trial of K
    evaluates (at most ``max_val_windows``, evenly spaced, as TrainConfig.max_val_windows;
    0: all), under the names of a trial's val_* metrics plus "val_windows" (the count), and
    the directional signals of both splits over all their windows. global_queries: as in
    :func:`evaluate`. lag_rows: ``lag_cosine_rows(dataset.vectors, (1, context))`` when the
    caller already has it (see :func:`data_signals`). The one place train, the sweep and
    ``python -m tune_p7.data inspect`` get these numbers from.
    """
    splits = {split: dataset.windows(context, split) for split in ("train", "val")}
    evaluated = splits["val"].evenly_spaced(max_val_windows)
    table = device_table(dataset.vectors, "cpu")
    scores = trivial_baselines(BatchSource(evaluated, table), global_queries=global_queries)
    if lag_rows is None:
        lag_rows = lag_cosine_rows(dataset.vectors, (1, context))
    return {"baselines": {name: {f"val_{key}": value for key, value in metrics.items()}
                          for name, metrics in scores.items()},
            "signals": {split: data_signals(windows, lag_rows)
                        for split, windows in splits.items()}}


def data_signals(windows: WindowSet, lag_rows: np.ndarray | None = None) -> dict[str, float]:
    """Directional signals of the data itself, averaged over windows (DESIGN.md).

    forward_signal = mean cos(c_t, c_{t+1}) - cos(c_t, c_{t-1});
    recency = mean cos(c_t, c_{t+1}) - cos(c_{t-K+1}, c_{t+1});
    coherence = mean cos over the distinct adjacent chunk pairs inside the windows.
    Every term is a cosine of rows 1 or K apart, so both come from one block-wise pass over
    the table, ``lag_rows = lag_cosine_rows(windows.vectors, (1, K))`` (pass it when already
    computed: the splits share the table), and the windows only index them.
    """
    starts, context = windows.starts, windows.context
    if lag_rows is None:
        lag_rows = lag_cosine_rows(windows.vectors, (1, context))
    next_row, k_ahead = lag_rows
    last = starts + context - 1
    cos_next = next_row[last]
    # Each adjacent pair inside any window once, though windows overlap.
    in_pair = np.zeros(len(next_row), dtype=bool)
    for offset in range(context):
        in_pair[starts + offset] = True
    return {"forward_signal": float(np.mean(cos_next - next_row[last - 1], dtype=np.float64)),
            "recency": float(np.mean(cos_next - k_ahead[starts], dtype=np.float64)),
            "coherence": float(np.mean(next_row[in_pair], dtype=np.float64)),
            "windows": len(windows)}


def lag_cosine_rows(vectors: np.ndarray, lags: tuple[int, ...]) -> np.ndarray:
    """(len(lags), M) float32: [i, r] = cos(row r, row r + lags[i]) of an (M, D) table.

    NaN where r + lag lies past the table; rows of different documents are not told apart
    (callers index only pairs inside one document). One pass over contiguous row blocks,
    each cast to float32 once, so memory stays at a block whatever M and the table's dtype;
    cos = x_r . x_s / (|x_r| |x_s|) from row dot products (einsum: no (rows, D) temporary).
    """
    count, reach = len(vectors), max(lags)
    cosines = np.full((len(lags), count), np.nan, dtype=np.float32)
    for block in row_blocks(count):
        rows = device_table(vectors[block.start:min(block.stop + reach, count)],
                            "cpu").float().numpy()
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        for index, lag in enumerate(lags):
            pairs = min(block.stop - block.start, len(rows) - lag)
            if pairs > 0:
                dots = np.einsum("ij,ij->i", rows[:pairs], rows[lag:lag + pairs])
                cosines[index, block.start:block.start + pairs] = dots / (
                    norms[:pairs] * norms[lag:lag + pairs])
    return cosines
