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

from tune_p7.data import DataError, Dataset, load_dataset
from tune_p7.metrics import reference_metrics

MAX_LAG = 10
SIGNALS = ("forward_signal", "recency", "coherence")


def lag_cosines(dataset: Dataset, split: str, max_lag: int = MAX_LAG) -> list[float]:
    """Mean cos(c_i, c_{i+lag}) over chunk pairs inside one document, for lag 1..max_lag.

    Returns a list of max_lag floats (NaN where no document is long enough).
    """
    docs = np.flatnonzero(dataset.val_docs if split == "val" else ~dataset.val_docs)
    starts, ends = dataset.offsets[docs], dataset.offsets[docs + 1]
    unit = dataset.vectors.astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    curve = []
    for lag in range(1, max_lag + 1):
        rows = np.concatenate([np.arange(s, e - lag) for s, e in zip(starts, ends)] or [[]])
        rows = rows.astype(np.int64)
        cosines = np.sum(unit[rows] * unit[rows + lag], axis=1)
        curve.append(float(cosines.mean()) if len(rows) else float("nan"))
    return curve


def inspect_dataset(dataset: Dataset, contexts: tuple[int, ...] = (5, 7)) -> dict:
    """A JSON-ready report of ``dataset`` for each context K in ``contexts``."""
    norms = np.linalg.norm(dataset.vectors.astype(np.float32), axis=1)
    lengths = np.diff(dataset.offsets)
    report = {
        "source": dataset.source, "metadata": dataset.metadata,
        "documents": dataset.num_documents,
        "validation_documents": int(dataset.val_docs.sum()),
        "chunks": int(len(dataset.vectors)), "dimension": dataset.dim,
        "dtype": str(dataset.vectors.dtype),
        "chunks_per_document": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                "max": int(lengths.max())},
        "norm": {"min": float(norms.min()), "mean": float(norms.mean()),
                 "max": float(norms.max())},
        "zero_rows": int(np.sum(norms < 1e-6)),
        "duplicate_rows": _duplicate_rows(dataset.vectors),
        "knows_documents": dataset.knows_documents,
        "lag_cosine": {split: lag_cosines(dataset, split) for split in ("train", "val")}
        if dataset.knows_documents else {},
        "contexts": {},
    }
    for context in contexts:
        try:
            reference = reference_metrics(dataset, context)
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


def _duplicate_rows(vectors: np.ndarray) -> int:
    """Rows that exactly repeat an earlier row."""
    contiguous = np.ascontiguousarray(vectors)
    as_bytes = contiguous.view(np.dtype((np.void, contiguous.dtype.itemsize * contiguous.shape[1])))
    return int(len(vectors) - len(np.unique(as_bytes)))


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
        lines.append("  trivial predictors on validation windows:")
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
    inspect.add_argument("--context", type=int, nargs="+", default=[5, 7])
    inspect.add_argument("--val-fraction", type=float, default=0.2)
    inspect.add_argument("--split-seed", type=int, default=0)
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data, args.val_fraction, args.split_seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = inspect_dataset(dataset, tuple(args.context))
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0
