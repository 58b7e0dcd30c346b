"""Scale figures (not tests): inspect and a short sweep on chunk files of 100k to 1M chunks.

    python benchmarks/scale_benchmark.py [--chunks 100000 300000 1000000]
        [--dtypes float16 float32] [--dim 768] [--skip-sweep] [--source DIR] [--work DIR]

For each dtype and size it writes a chunk-level NPZ (documents of 50 chunks, each a seeded
random walk on the unit sphere, so the data has real next-chunk structure), then runs the
real commands on it, each in its own process:

1. ``python -m tune_p7.data inspect FILE``: wall seconds and peak memory;
2. ``python -m tune_p7.sweep --data FILE --epochs 1 --num-samples 2``: seconds from launch to
   the first trial epoch line, wall seconds and peak memory.

Peak memory is the largest sum, over the command's process and all its descendants (Ray's
daemons and trial workers included), of each process's proportional set size (PSS: a page
shared by n processes counts 1/n in each, so Ray's shared object store counts once),
sampled every 0.2 s from /proc (Linux only). The growth ratios compare each size with the
smallest: time ratio and memory ratio beside the chunk ratio (linear growth keeps them at or
below it). ``--source DIR`` runs the commands with the code in DIR (e.g. a worktree of an
earlier commit) instead of this checkout.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(r"^\[\s*\d+s\] .*epoch 1/")
GIB = 2 ** 30


def make_chunk_file(path: Path, chunks: int, dim: int, dtype: str, doc_chunks: int = 50,
                    step: float = 0.3, seed: int = 0) -> None:
    """Write ``chunks`` vectors (dim-d, ``dtype``) as documents of ``doc_chunks`` chunks.

    Each document is a random walk on the unit sphere: x_{t+1} = normalize(x_t + step * g),
    g isotropic Gaussian scaled by 1/sqrt(dim); all documents advance together, one chunk
    position at a time, so memory stays at the file's size plus one (n_docs, dim) block.
    """
    rng = np.random.default_rng(seed)
    docs = chunks // doc_chunks
    vectors = np.empty((docs, doc_chunks, dim), dtype=dtype)
    point = _unit_rows(rng.standard_normal((docs, dim), dtype=np.float32))
    for position in range(doc_chunks):
        vectors[:, position] = point
        noise = rng.standard_normal((docs, dim), dtype=np.float32) / np.sqrt(dim)
        point = _unit_rows(point + step * noise)
    offsets = np.arange(docs + 1, dtype=np.int64) * doc_chunks
    np.savez(path, vectors=vectors.reshape(docs * doc_chunks, dim), offsets=offsets)


def _unit_rows(block: np.ndarray) -> np.ndarray:
    return block / np.linalg.norm(block, axis=1, keepdims=True)


@dataclass
class Measurement:
    wall_s: float
    peak_bytes: int
    first_epoch_s: float | None  # seconds from launch to the first "epoch 1/" line
    returncode: int
    tail: str                    # the output's last lines, for a failed command


def tree_pss(root: int) -> int:
    """Bytes of PSS summed over process ``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def run_measured(command: list[str], source: Path, timeout_s: float) -> Measurement:
    """Run ``command`` in ``source``, sampling its process tree's PSS until it ends."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=source, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1",
                                    "PYTHONPATH": str(source)})  # Ray's workers too
    peak, first_epoch, lines = [0], [None], []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout_s, lambda: os.killpg(process.pid, 9))
    timer.start()
    for line in process.stdout:
        lines.append(line.rstrip())
        if first_epoch[0] is None and EPOCH_LINE.match(line):
            first_epoch[0] = time.perf_counter() - started
    returncode = process.wait()
    timer.cancel()
    done.set()
    sampler.join()
    return Measurement(time.perf_counter() - started, peak[0], first_epoch[0], returncode,
                       "\n".join(lines[-15:]))


def measure_size(path: Path, work: Path, source: Path, skip_sweep: bool) -> dict:
    """Inspect and (unless skipped) a short sweep on ``path``; figures as a dict."""
    python = sys.executable
    inspect = run_measured([python, "-m", "tune_p7.data", "inspect", str(path)], source, 3600)
    figures = {"inspect_s": inspect.wall_s, "inspect_peak": inspect.peak_bytes}
    _check(inspect, "inspect")
    if not skip_sweep:
        sweep = run_measured([python, "-m", "tune_p7.sweep", "--data", str(path), "--epochs", "1",
                              "--num-samples", "2", "--storage-path", str(work),
                              "--name", path.stem], source, 3600)
        _check(sweep, "sweep")
        figures.update(sweep_s=sweep.wall_s, first_epoch_s=sweep.first_epoch_s,
                       sweep_peak=sweep.peak_bytes)
    return figures


def _check(measurement: Measurement, name: str) -> None:
    if measurement.returncode != 0:
        sys.exit(f"{name} failed (exit {measurement.returncode}):\n{measurement.tail}")


def format_rows(dtype: str, rows: list[tuple[int, int, dict]]) -> list[str]:
    """One table line per size, with growth ratios against the smallest size."""
    lines = [f"\n{dtype}: chunks | file GiB | inspect s (x) | inspect peak GiB (x, / file) | "
             f"first epoch s | sweep s (x) | sweep peak GiB (x, / file)"]
    base_chunks, _, base = rows[0]
    ratio = lambda key, figures: figures[key] / base[key] if base.get(key) else float("nan")  # noqa: E731
    for chunks, file_bytes, figures in rows:
        line = (f"{chunks:>9,} ({chunks / base_chunks:.1f}x) | {file_bytes / GIB:.2f} | "
                f"{figures['inspect_s']:.1f} ({ratio('inspect_s', figures):.1f}x) | "
                f"{figures['inspect_peak'] / GIB:.2f} ({ratio('inspect_peak', figures):.1f}x, "
                f"{figures['inspect_peak'] / file_bytes:.2f})")
        if "sweep_s" in figures:
            first = figures["first_epoch_s"]
            line += (f" | {first:.1f}" if first is not None else " | -") + (
                f" | {figures['sweep_s']:.1f} ({ratio('sweep_s', figures):.1f}x) | "
                f"{figures['sweep_peak'] / GIB:.2f} ({ratio('sweep_peak', figures):.1f}x, "
                f"{figures['sweep_peak'] / file_bytes:.2f})")
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"],
                        choices=["float16", "float32"])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--skip-sweep", action="store_true", help="only time inspect")
    parser.add_argument("--source", type=Path, default=HERE, help="checkout whose code runs")
    parser.add_argument("--work", type=Path, help="folder for the files (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as folder:
        work = Path(folder)
        print(f"load average {os.getloadavg()[0]:.1f}; code from {args.source}", flush=True)
        for dtype in args.dtypes:
            rows = []
            for chunks in sorted(args.chunks):
                path = work / f"scale-{chunks}-{dtype}.npz"
                make_chunk_file(path, chunks, args.dim, dtype)
                figures = measure_size(path, work, args.source, args.skip_sweep)
                rows.append((chunks, path.stat().st_size, figures))
                print(format_rows(dtype, rows)[-1], flush=True)
                path.unlink()
            print("\n".join(format_rows(dtype, rows)), flush=True)


if __name__ == "__main__":
    main()
