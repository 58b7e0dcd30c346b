"""`python -m tune_p7.data inspect FILE`: what a dataset holds and whether it has direction.

Before spending hours on a sweep, look at the data: sizes, norms, zero and duplicate rows,
the directional signals of DESIGN.md (forward signal, recency, coherence, the lag-cosine
curve), the trivial predictors' validation metrics, and a train/validation parity check.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tune_p7.config import TrainConfig
from tune_p7.data import ZERO_NORM, DataError, Dataset, load_dataset, row_blocks, row_norms
from tune_p7.metrics import lag_cosine_rows, reference_metrics
from tune_p7.progress import Progress, progress_printer, silent

MAX_LAG = 10
DUPLICATE_BLOCK = 4096  # rows hashed at once (as uint64 words: 24 MB for 768-d)
SIGNALS = ("forward_signal", "recency", "coherence")


def lag_cosines(dataset: Dataset, max_lag: int = MAX_LAG,
                cosines: np.ndarray | None = None) -> dict[str, list[float]]:
    """Mean cos(c_i, c_{i+lag}) over chunk pairs inside one document, for lag 1..max_lag.

    Returns {"train" | "val": list of max_lag floats} (NaN where no document of the split is
    long enough), from one block-wise pass over the table: cosines, the first max_lag rows
    of ``metrics.lag_cosine_rows(vectors, (1, 2, ...))``, when the caller has them.
    """
    lags = np.arange(1, max_lag + 1)
    if cosines is None:
        cosines = lag_cosine_rows(dataset.vectors, tuple(lags.tolist()))
    cosines = cosines[:max_lag]                                            # (max_lag, M)
    lengths = np.diff(dataset.offsets)
    row_document = np.repeat(np.arange(dataset.num_documents), lengths)
    # Rows still lag or more chunks before their document's end: the pairs inside it.
    to_end = np.repeat(dataset.offsets[1:], lengths) - np.arange(len(row_document))
    inside = to_end[None, :] > lags[:, None]                                # (max_lag, M)
    curves = {}
    for split, is_val in (("train", False), ("val", True)):
        chosen = inside & (dataset.val_docs[row_document] == is_val)[None, :]
        with np.errstate(invalid="ignore"):
            curves[split] = (np.where(chosen, cosines, 0).sum(axis=1, dtype=np.float64)
                             / chosen.sum(axis=1)).tolist()
    return curves


def inspect_dataset(dataset: Dataset, contexts: tuple[int, ...] = (5, 7),
                    max_val_windows: int = TrainConfig.max_val_windows,
                    progress: Progress = silent) -> dict:
    """A JSON-ready report of ``dataset`` for each context K in ``contexts``.

    max_val_windows: the trivial predictors are measured on this many validation windows
    (evenly spaced, 0: all), as a trial with that TrainConfig setting is. progress(message)
    is told as each long step starts.
    """
    progress("norms and duplicate rows")
    norms = row_norms(dataset.vectors)
    lengths = np.diff(dataset.offsets)
    report = {
        "source": dataset.source, "metadata": dataset.metadata,
        "documents": dataset.num_documents,
        "validation_documents": int(dataset.val_docs.sum()),
        "chunks": int(len(dataset.vectors)), "dimension": dataset.dim,
        "dtype": str(dataset.vectors.dtype),
        "chunks_per_document": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                "max": int(lengths.max())},
        "norm": {"min": float(norms.min()), "mean": float(norms.mean(dtype=np.float64)),
                 "max": float(norms.max())},
        "zero_rows": int(np.sum(norms < ZERO_NORM)),
        "duplicate_rows": duplicate_rows(dataset.vectors),
        "knows_documents": dataset.knows_documents,
        "lag_cosine": {},
        "contexts": {},
    }
    # One pass gives every lag the curve and each K's signals need (rows lag-1 = lag).
    progress("lag cosines")
    cosines = lag_cosine_rows(dataset.vectors, tuple(range(1, max(MAX_LAG, *contexts) + 1)))
    if dataset.knows_documents:
        report["lag_cosine"] = lag_cosines(dataset, cosines=cosines)
    for context in contexts:
        progress(f"signals and trivial predictors for K={context}")
        try:
            reference = reference_metrics(dataset, context, max_val_windows=max_val_windows,
                                          lag_rows=cosines[[0, context - 1]])
        except DataError as error:
            report["contexts"][str(context)] = {"error": str(error)}
            continue
        signals = reference["signals"]
        report["contexts"][str(context)] = {
            "windows": {split: values["windows"] for split, values in signals.items()},
            "signals": signals,
            "parity": {name: signals["val"][name] - signals["train"][name] for name in SIGNALS},
            "baselines": reference["baselines"],
        }
    return report


def duplicate_rows(vectors: np.ndarray) -> int:
    """Rows that exactly repeat an earlier row (byte for byte).

    Each row is hashed in blocks (a random linear hash of its 16/32-bit words, exact
    arithmetic mod 2^64); only rows whose hash occurs more than once are then compared
    byte for byte, so the count is exact while memory stays at one block.
    """
    words_type = {2: np.uint16, 4: np.uint32}[vectors.dtype.itemsize]
    multipliers = np.random.default_rng(0).integers(1, 2 ** 63, vectors.shape[1],
                                                    dtype=np.uint64) | np.uint64(1)
    hashes = np.empty(len(vectors), dtype=np.uint64)
    for block in row_blocks(len(vectors), DUPLICATE_BLOCK):
        words = np.ascontiguousarray(vectors[block]).view(words_type).astype(np.uint64)
        hashes[block] = (words * multipliers).sum(axis=1, dtype=np.uint64)
    _, inverse, repeats = np.unique(hashes, return_inverse=True, return_counts=True)
    candidates = np.ascontiguousarray(vectors[np.flatnonzero(repeats[inverse] > 1)])
    if len(candidates) == 0:
        return 0
    as_bytes = candidates.view(np.dtype((np.void, candidates.dtype.itemsize
                                         * candidates.shape[1])))
    return int(len(candidates) - len(np.unique(as_bytes)))


def format_report(report: dict) -> str:
    """The report as text a person reads top to bottom."""
    lines = [
        f"{report['source']}: {report['documents']} documents "
        f"({report['validation_documents']} validation), {report['chunks']} chunks, "
        f"D={report['dimension']} {report['dtype']}",
        f"chunks per document: min {report['chunks_per_document']['min']}, median "
        f"{report['chunks_per_document']['median']:g}, max {report['chunks_per_document']['max']}",
        f"norms: min {report['norm']['min']:.4f} mean {report['norm']['mean']:.4f} max "
        f"{report['norm']['max']:.4f}; zero rows {report['zero_rows']}; duplicate rows "
        f"{report['duplicate_rows']}",
    ]
    if report["metadata"]:
        meta = report["metadata"]
        named = lambda value: value.get("name", value) if isinstance(value, dict) else value  # noqa: E731
        lines.append("provenance: " + ", ".join(f"{key}={named(meta[key])}" for key in
                                                ("corpus", "encoder", "license") if key in meta))
    for split, curve in report["lag_cosine"].items():
        lines.append(f"lag cosine ({split}, lag 1..{len(curve)}): "
                     + " ".join(f"{value:.3f}" for value in curve))
    for context, part in report["contexts"].items():
        lines.append(f"\nK={context}")
        if "error" in part:
            lines.append(f"  {part['error']}")
            continue
        lines.append(f"  windows: train {part['windows']['train']}, val {part['windows']['val']}")
        for name in SIGNALS:
            values = part["signals"]
            lines.append(f"  {name:<15} train {values['train'][name]:+.4f}  val "
                         f"{values['val'][name]:+.4f}  (val - train {part['parity'][name]:+.4f})")
        evaluated = next(iter(part["baselines"].values()))["val_windows"]
        lines.append(f"  trivial predictors on {evaluated} validation windows (evenly spaced):")
        for name, metrics in part["baselines"].items():
            lines.append(f"    {name:<13} Δ {metrics['val_margin']:+.4f}  cos_next "
                         f"{metrics['val_cos_next']:.4f}  cos_prev {metrics['val_cos_prev']:.4f}  "
                         f"R@5 {metrics['val_r_at_5']:.3f}  global R@5 "
                         f"{metrics['val_global_r_at_5']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune_p7.data",
                                     description="Inspect a vector dataset.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="sizes, norms, signals, trivial baselines")
    inspect.add_argument("data", help="NPZ file, 'default' or 'synthetic'")
    inspect.add_argument("--val-data", help="a second NPZ of the same D and shape that is the "
                                            "validation split (every document of DATA trains)")
    inspect.add_argument("--context", type=int, nargs="+", default=[5, 7])
    inspect.add_argument("--val-fraction", type=float, default=0.2)
    inspect.add_argument("--split-seed", type=int, default=0)
    inspect.add_argument("--max-val-windows", type=int, default=TrainConfig.max_val_windows,
                         help="validation windows the trivial predictors are measured on, "
                              "evenly spaced, as a trial with this setting (0: all; default "
                              "%(default)s)")
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    say = progress_printer()
    try:
        dataset = load_dataset(args.data, args.val_fraction, args.split_seed,
                               val_source=args.val_data, progress=say)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = inspect_dataset(dataset, tuple(args.context), args.max_val_windows, say)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0
