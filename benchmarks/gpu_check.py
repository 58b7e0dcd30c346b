"""GPU check: tune_p7's training on one GPU, full size, in one command of a few minutes.

    python3 benchmarks/gpu_check.py --json gpu.json          # an H100/H200-class GPU
    python3 benchmarks/gpu_check.py --small --json cpu.json  # tiny sizes: shows it runs (CPU)

Needs torch and numpy only (no Ray, Optuna or pandas; run from a plain checkout, nothing
installed). The data is generated in memory, seeded: documents of 40 chunks, each a random
walk on the unit sphere, split 80/20 by document, sized so that the training split holds about
87k windows of K=5 768-d vectors (--small: 2k windows of 32-d). Every figure comes from
tune_p7's own training code (``tune_p7.train.Run.train_epoch``, ``tune_p7.train.train``):

1. Seconds per training epoch, fp32 and bf16 autocast, B=64 and B=256: the second epoch
   (warm) and the first (with start-up), the evaluation pass, and peak GPU memory
   (torch.cuda.max_memory_allocated) of each run.
2. Four trials as four processes sharing the device vs one alone: each process builds its
   own data and Run, trains one warm-up epoch, waits until all are ready, then trains one
   timed epoch; together = 4 epochs of windows / (last end - first start), so a process
   that finishes early only makes the figure lower. Settings: B=64 (--small: 16), bf16
   "auto", torch threads = CPUs / 4 each.
3. Exact resume: train 2 epochs straight, keep the state after epoch 1 (through
   torch.save / torch.load(weights_only=True), as a checkpoint), resume from it, and compare
   both histories value by value; once with torch's default kernels, once with
   torch.use_deterministic_algorithms(True, warn_only=True) (CUBLAS_WORKSPACE_CONFIG=:4096:8),
   each in its own process.
4. Where a warm B=64 step's time goes (bf16 "auto"): torch.profiler over 50 steps, the
   device's busy time (the sum of its kernels) against the wall time, and the top kernels.
5. --compile (last, so a slow compiler costs no other figure): the B=64 epoch with bf16
   "auto" again with torch.compile(model), mode "default" and "reduce-overhead" (CUDA
   graphs), and the first epoch's train loss against the eager run's (compiled kernels round
   differently, so it is not exact).

Targets (issue 13): <= 5 s per 87k-window epoch (B=64, bf16 as "auto" resolves it),
four sharing >= 3x one alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Run from a plain checkout: the device machine has torch and numpy but not this package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune_p7.config import TrainConfig  # noqa: E402
from tune_p7.data import Dataset, chunk_dataset  # noqa: E402
from tune_p7.devices import bf16_is_fast, resolve_device  # noqa: E402
from tune_p7.train import Run, train  # noqa: E402

CHUNKS_PER_DOCUMENT = 40
VAL_FRACTION = 0.2
CONTEXT = 5
SHARING_PROCESSES = 4
WORKER_TIMEOUT_S = 600         # a worker that takes longer is killed and reported
TIMING_KEYS = ("seconds", "sequences_per_second")  # differ between runs by nature
TARGETS = {"epoch_seconds_b64": 5.0, "sharing_ratio": 3.0}
COMPILE_MODES = ("default", "reduce-overhead")   # reduce-overhead: CUDA graphs
PROFILED_STEPS = 50


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one check: data, model and the batch sizes timed."""

    train_windows: int         # about this many training windows of K=5
    dim: int                   # D of the generated vectors
    d_model: int
    layers: int
    heads: int
    batches: tuple             # batch sizes of the epoch timing
    resume_windows: int        # training windows of the resume check
    threads: int               # torch CPU threads of every run (0: torch's default)


FULL = Scale(train_windows=87_000, dim=768, d_model=512, layers=4, heads=8, batches=(64, 256),
             resume_windows=8_000, threads=0)
# One thread: tiny ops on a busy CPU spend longer in OpenMP barriers than in arithmetic.
SMALL = Scale(train_windows=2_000, dim=32, d_model=32, layers=2, heads=4, batches=(16, 64),
              resume_windows=400, threads=1)


@functools.lru_cache(maxsize=2)
def generated_dataset(windows: int, dim: int, seed: int = 0) -> Dataset:
    """Documents of 40 chunks, random walks on the unit sphere; about ``windows`` train windows.

    Neighbouring chunks are similar, as in real text; the content does not change speed.
    Cached: the sections of one process share it (a Run only reads it).
    """
    per_document = CHUNKS_PER_DOCUMENT - CONTEXT
    documents = math.ceil(windows / (1 - VAL_FRACTION) / per_document)
    rng = np.random.default_rng(seed)
    walks = np.cumsum(rng.standard_normal((documents, CHUNKS_PER_DOCUMENT, dim),
                                          dtype=np.float32), axis=1)
    vectors = walks.reshape(-1, dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.arange(0, documents * CHUNKS_PER_DOCUMENT + 1, CHUNKS_PER_DOCUMENT)
    return chunk_dataset(vectors, offsets, name="generated", val_fraction=VAL_FRACTION,
                         split_seed=seed)


def trial_config(scale: Scale, device: str, batch: int, bf16: str, epochs: int = 1,
                 threads: int | None = None) -> TrainConfig:
    return TrainConfig(context=CONTEXT, d_model=scale.d_model, layers=scale.layers,
                       heads=scale.heads, batch_size=batch, bf16=bf16, device=device,
                       epochs=epochs, threads=scale.threads if threads is None else threads)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------
# 1. Seconds per epoch

def time_epochs(dataset: Dataset, config: TrainConfig, compile_mode: str | None = None) -> dict:
    """Two training epochs and one evaluation of one Run: seconds, throughput, peak memory.

    compile_mode: None (eager) or a torch.compile mode for the model."""
    run = Run(config, dataset)
    if compile_mode:
        run.model = torch.compile(run.model, mode=compile_mode)
    _peak_reset(run.device)
    first, second = run.train_epoch(), run.train_epoch()
    started = time.perf_counter()
    run.evaluate()
    windows = len(run.train_source)
    return {"batch": config.batch_size, "bf16": run.bf16, "compiled": compile_mode,
            "windows": windows, "first_epoch_seconds": windows / first["sequences_per_second"],
            "epoch_seconds": windows / second["sequences_per_second"],
            "sequences_per_second": second["sequences_per_second"],
            "eval_seconds": time.perf_counter() - started, "peak_gpu_mib": _peak_mib(run.device),
            "first_epoch_train_loss": first["train_loss"]}


def epoch_rows(scale: Scale, device: str) -> list[dict]:
    dataset = generated_dataset(scale.train_windows, scale.dim)
    rows = []
    for batch in scale.batches:
        for bf16 in ("off", "on"):
            rows.append(time_epochs(dataset, trial_config(scale, device, batch, bf16)))
            print(_epoch_line(rows[-1]), flush=True)
    return rows


def compiled_rows(scale: Scale, device: str, eager_rows: list[dict]) -> list[dict]:
    """The B=64 (--small: 16) epoch with bf16 "auto", compiled in each mode; a mode the
    compiler fails on is reported and skipped."""
    dataset = generated_dataset(scale.train_windows, scale.dim)
    batch, auto = scale.batches[0], bf16_is_fast(resolve_device(device))
    eager = next((row for row in eager_rows if row["batch"] == batch and row["bf16"] == auto),
                 None)
    rows = []
    for mode in COMPILE_MODES:
        try:
            row = time_epochs(dataset, trial_config(scale, device, batch, "auto"), mode)
        except Exception as error:  # noqa: BLE001 - report any compiler failure, go on
            print(f"torch.compile mode {mode} failed ({type(error).__name__}: {error}); "
                  f"skipped", flush=True)
            continue
        row["train_loss_difference_to_eager"] = (
            abs(row["first_epoch_train_loss"] - eager["first_epoch_train_loss"])
            if eager else None)
        rows.append(row)
        print(_epoch_line(row), flush=True)
    return rows


# ---------------------------------------------------------------------------------------
# 4. Where a step's time goes

def step_profile(scale: Scale, device: str) -> dict:
    """torch.profiler over PROFILED_STEPS warm training steps (B=64, bf16 auto; fewer steps
    if the data holds fewer windows): the time the device is busy in kernels (on a CPU: the
    operators' own CPU time) against the wall time, and the kernels that take most of it."""
    from torch.profiler import ProfilerActivity, profile

    dataset = generated_dataset(scale.resume_windows, scale.dim)
    config = dataclasses.replace(trial_config(scale, device, scale.batches[0], "auto"),
                                 epoch_windows=PROFILED_STEPS * scale.batches[0])
    run = Run(config, dataset)
    run.train_epoch()                                        # warm-up: kernels, allocator
    on_device = run.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        windows = run.train_epoch()["train_windows"]         # ends with the epoch's one sync
        wall = time.perf_counter() - started
    steps = math.ceil(windows / config.batch_size)
    events = profiler.key_averages()
    attribute = "self_device_time_total" if on_device else "self_cpu_time_total"
    busy = sum(getattr(event, attribute) for event in events
               if not on_device or event.device_type.name == "CUDA") / 1e6
    top = sorted(events, key=lambda event: getattr(event, attribute), reverse=True)[:8]
    return {"steps": steps, "wall_seconds": wall, "device_busy_seconds": busy,
            "kernel_launches": sum(event.count for event in events
                                   if on_device and event.device_type.name == "CUDA"),
            "top": [{"name": event.key[:70], "count": event.count,
                     "seconds": getattr(event, attribute) / 1e6} for event in top]}


def _epoch_line(row: dict) -> str:
    memory = f", peak {row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] is not None else ""
    difference = row.get("train_loss_difference_to_eager")
    compiled = (f", compiled {row['compiled']} (first-epoch loss differs from eager by "
                f"{'?' if difference is None else f'{difference:.1e}'})"
                if row["compiled"] else "")
    return (f"epoch B={row['batch']:<4} {'bf16' if row['bf16'] else 'fp32'}: "
            f"{row['epoch_seconds']:.2f} s per {row['windows']} windows "
            f"({row['sequences_per_second']:.0f} seq/s; first epoch "
            f"{row['first_epoch_seconds']:.2f} s), evaluation {row['eval_seconds']:.2f} s"
            f"{memory}{compiled}")


# ---------------------------------------------------------------------------------------
# Workers: one process per trial (sharing) or per resume check

def worker(task: dict) -> dict:
    """Run one worker task in this process; the result is printed as the last JSON line."""
    scale = SMALL if task["small"] else FULL
    if task["kind"] == "resume":
        return resume_check(scale, task["device"], task["deterministic"])
    dataset = generated_dataset(scale.train_windows, scale.dim)
    run = Run(trial_config(scale, task["device"], scale.batches[0], "auto",
                           threads=task["threads"]), dataset)
    run.train_epoch()                                       # warm-up
    print("ready", flush=True)
    sys.stdin.readline()                                    # "go": every worker is warm
    started = time.time()
    run.train_epoch()
    return {"windows": len(run.train_source), "start": started, "end": time.time(),
            "bf16": run.bf16}


def run_workers(tasks: list[dict], environment: dict | None = None) -> list[dict]:
    """Start one worker process per task, release them together, return their results."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    processes = [subprocess.Popen(command + [json.dumps(task)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, **(environment or {})})
                 for task in tasks]
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        if tasks[0]["kind"] == "share":
            for process in processes:  # readline returns "" if a worker died: fail below
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a sharing worker failed before its timed epoch")
            for process in processes:
                process.stdin.write("go\n")
                process.stdin.flush()
        results = []
        for process in processes:
            output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            if process.returncode != 0:
                raise RuntimeError(f"a worker exited with status {process.returncode}")
            results.append(json.loads(output.strip().splitlines()[-1]))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


# ---------------------------------------------------------------------------------------
# 2. Four trials sharing the device

def sharing(small: bool, device: str) -> dict:
    """Throughput of four concurrent trial processes against one alone."""
    threads = 1 if small else max(1, (os.cpu_count() or 1) // SHARING_PROCESSES)
    task = {"kind": "share", "small": small, "device": device, "threads": threads}
    alone = run_workers([task])[0]
    together = run_workers([task] * SHARING_PROCESSES)
    alone_rate = alone["windows"] / (alone["end"] - alone["start"])
    span = max(r["end"] for r in together) - min(r["start"] for r in together)
    together_rate = sum(r["windows"] for r in together) / span
    return {"processes": SHARING_PROCESSES, "bf16": alone["bf16"], "threads": threads,
            "alone_sequences_per_second": alone_rate,
            "together_sequences_per_second": together_rate,
            "per_process_sequences_per_second": [r["windows"] / (r["end"] - r["start"])
                                                 for r in together],
            "ratio": together_rate / alone_rate}


# ---------------------------------------------------------------------------------------
# 3. Exact resume

def resume_check(scale: Scale, device: str, deterministic: bool) -> dict:
    """Train 2 epochs; resume from the saved state after epoch 1; compare the histories."""
    if deterministic:  # warn_only: an op without a deterministic kernel warns, the check runs
        torch.use_deterministic_algorithms(True, warn_only=True)
    dataset = generated_dataset(scale.resume_windows, scale.dim, seed=1)
    config = trial_config(scale, device, 64, "auto", epochs=2)
    saved = []

    def keep_first(metrics: dict, state: dict) -> None:
        if metrics["epoch"] == 1:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            saved.append(buffer.getvalue())

    straight = train(config, dataset, on_epoch=keep_first).history
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    resumed = train(config, dataset, resume_state=state).history
    strip = lambda rows: [{k: v for k, v in row.items() if k not in TIMING_KEYS}  # noqa: E731
                          for row in rows]
    differences = [abs(a[key] - b[key]) for a, b in zip(strip(straight), strip(resumed))
                   for key in a if isinstance(a[key], (int, float))]
    return {"deterministic_algorithms": deterministic, "exact": strip(straight) == strip(resumed),
            "max_difference": max(differences), "bf16": straight[0]["bf16_resolved"],
            "device": str(resolve_device(device))}


def resume_checks(small: bool, device: str) -> list[dict]:
    task = {"kind": "resume", "small": small, "device": device}
    default = run_workers([{**task, "deterministic": False}])[0]
    deterministic = run_workers([{**task, "deterministic": True}],
                                environment={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})[0]
    return [default, deterministic]


# ---------------------------------------------------------------------------------------
# Report

def describe(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__,
            "bf16_auto": bf16_is_fast(device), "cpus": os.cpu_count()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, capability=f"{properties.major}.{properties.minor}",
                    memory_gib=properties.total_memory / 2**30)
    return info


def targets_met(report: dict) -> dict:
    """{target: (measured, target, met)} of the sections that ran; the epoch target reads
    B=64 with bf16 as "auto" resolves it."""
    targets = {}
    if isinstance(report.get("epochs"), list):
        auto = report["device"]["bf16_auto"]
        epoch = next(row for row in report["epochs"]
                     if row["batch"] == 64 and row["bf16"] == auto)
        value = epoch["epoch_seconds"]
        targets["epoch_seconds_b64"] = (value, TARGETS["epoch_seconds_b64"],
                                        value <= TARGETS["epoch_seconds_b64"])
    if "ratio" in report.get("sharing", {}):
        value = report["sharing"]["ratio"]
        targets["sharing_ratio"] = (value, TARGETS["sharing_ratio"],
                                    value >= TARGETS["sharing_ratio"])
    return targets


def _print_sharing(shared: dict) -> None:
    rates = ", ".join(f"{rate:.0f}" for rate in shared["per_process_sequences_per_second"])
    print(f"alone {shared['alone_sequences_per_second']:.0f} seq/s; together "
          f"{shared['together_sequences_per_second']:.0f} seq/s (per process {rates}) -> "
          f"{shared['ratio']:.2f}x", flush=True)


def _print_profile(profiled: dict) -> None:
    print(f"{profiled['steps']} steps: wall {profiled['wall_seconds'] * 1e3:.1f} ms, busy "
          f"{profiled['device_busy_seconds'] * 1e3:.1f} ms "
          f"({profiled['device_busy_seconds'] / profiled['wall_seconds']:.0%}), "
          f"{profiled['kernel_launches'] / profiled['steps']:.0f} kernels per step", flush=True)
    for row in profiled["top"]:
        print(f"  {row['seconds'] * 1e3:8.2f} ms  {row['count']:6d}x  {row['name']}", flush=True)


def _print_resume(rows: list[dict]) -> None:
    for row in rows:
        kernels = "deterministic algorithms" if row["deterministic_algorithms"] else "defaults"
        print(f"{kernels:<24} on {row['device']}: history "
              f"{'identical' if row['exact'] else 'DIFFERENT'} (max |difference| "
              f"{row['max_difference']:.2e}, bf16 {row['bf16']})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes (2k windows, 32-d, d_model 32): a smoke run, e.g. CPU")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda > mps > cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the B=64 epoch with torch.compile(model), last")
    parser.add_argument("--json", help="also write the figures to this JSON file (after every "
                                       "section, so an interrupted run keeps what finished)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one worker process
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    scale = SMALL if args.small else FULL
    device = resolve_device(args.device)
    started = time.perf_counter()
    report = {"device": describe(device), "scale": "small" if args.small else "full"}
    print(" ".join(f"{key} {value}" for key, value in report["device"].items()), flush=True)
    sections = [
        ("epochs", f"1. seconds per epoch (generated data, D={scale.dim}, d_model "
                   f"{scale.d_model} x {scale.layers} layers, K={CONTEXT})",
         lambda: epoch_rows(scale, args.device), None),
        ("sharing", f"2. {SHARING_PROCESSES} trial processes sharing {device} vs one alone "
                    f"(B={scale.batches[0]}, bf16 auto)",
         lambda: sharing(args.small, args.device), _print_sharing),
        ("resume", "3. exact resume from the state after epoch 1 of 2",
         lambda: resume_checks(args.small, args.device), _print_resume),
        ("profile", f"4. where a warm B={scale.batches[0]} step's time goes (bf16 auto)",
         lambda: step_profile(scale, args.device), _print_profile),
    ]
    if args.compile:
        sections.append((
            "compiled", f"5. torch.compile(model), B={scale.batches[0]}, bf16 auto",
            lambda: compiled_rows(scale, args.device, report.get("epochs") or []), None))
    failed = False
    for name, heading, measure, show in sections:
        print(f"\n{heading}", flush=True)
        try:
            report[name] = measure()
        except Exception as error:  # noqa: BLE001 - one broken section keeps the others
            failed = True
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"{name} failed: {report[name]['error']}", flush=True)
        else:
            if show:
                show(report[name])
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    report["seconds"] = time.perf_counter() - started
    report["targets"] = targets_met(report)
    print(f"\ntotal {report['seconds']:.0f} s")
    for name, (value, target, met) in report["targets"].items():
        bound = "<=" if name.startswith("epoch") else ">="
        print(f"target {name}: {value:.2f} vs {bound} {target:g}: {'met' if met else 'MISSED'}"
              + (" (small sizes: not the target's scale)" if args.small else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
