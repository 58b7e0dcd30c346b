"""Every metric tune_p7 computes, on two datasets, as JSON: to compare two code versions.

    git worktree add /tmp/landed 2687443
    PYTHONPATH=/tmp/landed python benchmarks/metric_snapshot.py /tmp/before.json
    python benchmarks/metric_snapshot.py /tmp/after.json [--tie-tolerance 0]
    python benchmarks/metric_snapshot.py --compare /tmp/before.json /tmp/after.json

The datasets: the shipped one, and a 50,000-chunk 768-d float16 file of random-walk
documents whose validation documents are spread over the table. For each: the whole
``python -m tune_p7.data inspect`` report (signals, lag cosines, norms, trivial predictors)
and the validation metrics of a seeded, untrained quick-profile model at K=5 and 7.
``--compare`` prints every number that moved by more than 1e-5 and the largest move per
metric name. ``--tie-tolerance`` sets metrics.TIE_TOLERANCE (0 compares ranks with the old
strict rule).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from tune_p7.data import BatchSource, chunk_dataset, device_table, load_dataset
from tune_p7.inspection import inspect_dataset
from tune_p7.metrics import evaluate
from tune_p7.model import Ranker
from tune_p7.train import TrainConfig  # (not tune_p7.config: the older code has none)


def spread_dataset(chunks: int = 50_000, dim: int = 768, doc_chunks: int = 50, seed: int = 1):
    """Random-walk documents, a seeded fifth of them (anywhere in the table) validation."""
    rng = np.random.default_rng(seed)
    docs = chunks // doc_chunks
    vectors = np.empty((docs, doc_chunks, dim), np.float16)
    point = rng.standard_normal((docs, dim)).astype(np.float32)
    for position in range(doc_chunks):
        point /= np.linalg.norm(point, axis=1, keepdims=True)
        vectors[:, position] = point
        point = point + 0.3 * rng.standard_normal((docs, dim)).astype(np.float32) / np.sqrt(dim)
    val_docs = np.zeros(docs, bool)
    val_docs[rng.permutation(docs)[:docs // 5]] = True
    return chunk_dataset(vectors.reshape(-1, dim), np.arange(docs + 1) * doc_chunks,
                         name="spread", val_docs=val_docs)


def snapshot() -> dict:
    numbers = {}
    for name, dataset in (("default", load_dataset("default")), ("spread", spread_dataset())):
        numbers[name] = {"inspect": inspect_dataset(dataset)}
        for context in (5, 7):
            torch.manual_seed(0)
            config = TrainConfig(context=context, d_model=128, layers=2, heads=4)
            model = Ranker(config.model_config(dataset.dim)).eval()
            source = BatchSource(dataset.windows(context, "val"),
                                 device_table(dataset.vectors, "cpu"))
            numbers[name][f"model_K{context}"] = evaluate(model, source)
    return numbers


def compare(before: dict, after: dict) -> None:
    largest: dict[str, float] = {}

    def walk(old, new, path: str) -> None:
        if isinstance(old, dict):
            for key in old:
                if key in new:
                    walk(old[key], new[key], f"{path}/{key}")
        elif isinstance(old, list):
            for index, (first, second) in enumerate(zip(old, new)):
                walk(first, second, f"{path}[{index}]")
        elif isinstance(old, (int, float)) and not isinstance(old, bool):
            both_nan = math.isnan(old) and math.isnan(new)
            moved = 0.0 if both_nan else abs(old - new)
            if moved > 1e-5:
                print(f"{path}: {old} -> {new}")
            name = path.rsplit("/", 1)[-1].split("[")[0]
            largest[name] = max(largest.get(name, 0.0), moved)

    walk(before, after, "")
    print("largest move per metric:", ", ".join(f"{name} {value:.1e}"
                                                for name, value in sorted(largest.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="JSON file to write")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tie-tolerance", type=float)
    args = parser.parse_args()
    if args.compare:
        with open(args.compare[0]) as first, open(args.compare[1]) as second:
            compare(json.load(first), json.load(second))
        return
    if args.tie_tolerance is not None:
        import tune_p7.metrics

        tune_p7.metrics.TIE_TOLERANCE = args.tie_tolerance
    with open(args.out, "w") as handle:
        json.dump(snapshot(), handle, indent=1, default=float)


if __name__ == "__main__":
    main()
