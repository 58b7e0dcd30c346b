"""Core benchmark: the P7 training step and loss against a naive reference of the same math.

    python benchmarks/core_benchmark.py            # full run (D=768, K=5, d_model 512, 4 layers)
    python benchmarks/core_benchmark.py --quick    # smoke run: same code path, small sizes
    python benchmarks/core_benchmark.py --steps-only --step-batches 64 --no-memory --rounds 8
    python benchmarks/core_benchmark.py ... --threads 1 --cpu-time   # a busy shared machine

Prints figures, asserts nothing about speed (speed lives here, not in tests).

*fast* is tune_p7's own training step (``tune_p7.train.training_step`` with the optimizer
``tune_p7.train._optimizer`` builds, fused AdamW). The naive reference is the original P7
scripts' step, written here; it computes the same objective as ``tune_p7.losses.p7_loss``
and the same model as ``tune_p7.model.Ranker``:

* ``naive_p7_loss``: a Python loop fills a (B, B+1+H, D) candidate tensor (every batch target,
  prev_i, H hard negatives of row i) and scores it with bmm, then the same duplicate mask,
  prev-repel hinge, per-sample gate and teacher pull. At B=1024 the tensor is 3.2 GB fp32.
* ``FullSequenceRanker``: the same weights, but every encoder layer, the last included, runs
  over the whole sequence and position -1 is taken afterwards.
* ``reference_optimizer``: ``torch.optim.AdamW(model.parameters(), ...)`` with torch's
  default kernel (a loop over the tensors on CPU), as the original built it.

Before any timing the benchmark checks (and prints) that both give the same model output,
the same loss components, the same gradients and the same AdamW update: a speed-up over
different math means nothing.

Method. Throughput: every variant (fast and naive, fp32 and bf16 autocast) lives in one
process; after warm-up each round calls each once, in an order rotated and reversed from round
to round, so the shared, noisy machine slows all alike; the figure is the median step time,
and the speed-up is the median of the per-round ratios (the ratio of the fastest calls is
printed beside it: noise only ever adds time). The bf16 row also gives fast bf16 against
naive fp32, the issue's bf16 target (the original scripts had no bf16). The compute bound of the
step speed-up is the ratio of matmul FLOPs (torch.utils.flop_counter), printed with the
same-math check. Memory: each variant runs in a fresh subprocess with a fixed glibc mmap
threshold (MALLOC_MMAP_THRESHOLD_=65536, so freed large blocks leave RSS at once and the peak
is the peak of live memory, not of what the allocator happened to keep); after setup (model,
AdamW state, batch, one tiny warm-up call) freed heap is returned with malloc_trim, the
kernel's peak-RSS mark is reset (/proc/self/clear_refs "5"; getrusage ru_maxrss delta where
that is refused), and the extra memory is peak RSS during one measured call minus RSS right
before it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tune_p7.losses import DUPLICATE_COSINE, LossConfig, p7_loss
from tune_p7.model import ModelConfig, Ranker
from tune_p7.train import TrainConfig, _optimizer, training_step

HARD_NEGATIVES = 4  # H
MMAP_THRESHOLD = "65536"  # glibc: blocks above this are mmapped and unmapped when freed
TARGETS = {"step_speedup_b64_fp32": 1.6, "step_speedup_b64_bf16_vs_naive_fp32": 2.5,  # issue 13
           "loss_speedup_b1024": 150.0, "loss_memory_ratio_b1024": 90.0}  # issue 2


@dataclass(frozen=True)
class Sizes:
    """One benchmark scale: model shape, batch sizes and repeat counts."""

    dim: int
    context: int
    d_model: int
    layers: int
    heads: int
    step_batches: tuple        # B for the full training step
    loss_batches: tuple        # B for the loss alone
    step_repeats: dict         # B -> (warm-up rounds, timed rounds)
    loss_repeats: dict         # B -> (warm-up rounds, timed rounds)


FULL = Sizes(dim=768, context=5, d_model=512, layers=4, heads=8,
             step_batches=(64, 1024), loss_batches=(64, 256, 1024),
             step_repeats={64: (2, 20), 1024: (1, 5)},
             loss_repeats={64: (3, 30), 256: (2, 20), 1024: (1, 8)})
QUICK = Sizes(dim=64, context=5, d_model=64, layers=2, heads=4,
              step_batches=(16, 64), loss_batches=(16, 64),
              step_repeats={16: (1, 3), 64: (1, 3)},
              loss_repeats={16: (1, 3), 64: (1, 3)})


# ---------------------------------------------------------------------------------------
# The naive reference (same math, the original's construction)

class FullSequenceRanker(Ranker):
    """The same Ranker, but the final encoder layer also runs over every position."""

    def encode(self, contexts: torch.Tensor) -> torch.Tensor:
        x = self.input(contexts) + self.positions[: contexts.shape[1]]  # (B, K, d_model)
        for block in self.blocks:
            x = block(x)                                                 # (B, K, d_model)
        return self.final_norm(x[:, -1])


def naive_p7_loss(predictions, contexts, targets, hard_negatives, epoch, config: LossConfig):
    """p7_loss's objective built as the original did: a loop-filled (B, B+1+H, D) tensor + bmm.

    Returns (total, rank, margin, teacher) with the meanings of LossParts.
    """
    batch, dim = targets.shape
    previous = contexts[:, -1]                                            # (B, D)
    negatives = 0 if hard_negatives is None else hard_negatives.shape[1]
    candidates = targets.new_empty(batch, batch + 1 + negatives, dim)     # (B, B+1+H, D)
    for row in range(batch):
        pool = [targets, previous[row:row + 1]]
        if negatives:
            pool.append(hard_negatives[row])
        candidates[row] = torch.cat(pool)
    scores = torch.bmm(candidates, predictions[:, :, None])[..., 0]       # (B, B+1+H)
    duplicate = torch.bmm(candidates, targets[:, :, None])[..., 0] >= DUPLICATE_COSINE
    positive = torch.arange(batch)
    duplicate[positive, positive] = False
    logits = scores.masked_fill(duplicate, float("-inf")) / config.temperature
    rank = -torch.log_softmax(logits, dim=1)[positive, positive]         # (B,)

    cos_next = (predictions * targets).sum(-1)
    cos_prev = (predictions * previous).sum(-1)
    hinge = torch.clamp(config.margin - cos_next + cos_prev, min=0)
    forward = (previous * targets).sum(-1) - (previous * contexts[:, -2]).sum(-1)
    weights = torch.where(forward >= config.gate_threshold, torch.tensor(1.0),
                          torch.tensor(config.gate_low_weight))
    teacher = predictions.new_zeros(())
    far = cos_next < config.teacher_threshold
    if epoch < config.warmup_epochs and far.any():
        teacher = (1 - cos_next[far]).mean()
    weighted = lambda values: (weights * values).sum() / weights.sum()  # noqa: E731
    total = (weighted(config.weight_rank * rank + config.weight_margin * hinge)
             + config.weight_teacher * teacher)
    return total, weighted(rank), weighted(hinge), teacher


def fast_loss(predictions, contexts, targets, hard_negatives, epoch, config):
    parts = p7_loss(predictions, contexts, targets, hard_negatives, epoch, config)
    return parts.total, parts.rank, parts.margin, parts.teacher


LOSSES = {"fast": fast_loss, "naive": naive_p7_loss}  # models: see make_models


# ---------------------------------------------------------------------------------------
# Setup shared by timing, memory probes and the equivalence check

def make_batch(batch: int, sizes: Sizes, seed: int = 0, plant_duplicates: bool = False):
    """Unit-row contexts (B, K, D), targets (B, D), hard negatives (B, H, D).

    plant_duplicates: copy a target into another row, into a hard negative and into a prev,
    so that the duplicate masks of both losses are exercised by the equivalence check.
    """
    generator = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1)

    contexts = unit(batch, sizes.context, sizes.dim)
    targets = unit(batch, sizes.dim)
    negatives = unit(batch, HARD_NEGATIVES, sizes.dim)
    if plant_duplicates:
        targets[7] = targets[3]
        negatives[5, 0] = targets[5]
        contexts[2, -1] = targets[2]
    return contexts, targets, negatives


def make_models(sizes: Sizes, seed: int = 0) -> dict:
    """{"fast": Ranker, "naive": FullSequenceRanker} with identical weights."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=sizes.dim, context=sizes.context, d_model=sizes.d_model,
                         layers=sizes.layers, heads=sizes.heads)
    fast = Ranker(config)
    naive = FullSequenceRanker(config)
    naive.load_state_dict(fast.state_dict())
    return {"fast": fast, "naive": naive}


def fast_step(model, optimizer, batch, bf16: bool, loss_config) -> None:
    """tune_p7's training step itself (tune_p7.train.training_step, as Run.train_epoch runs it)."""
    training_step(model, optimizer, *batch, 0, loss_config, 1.0, bf16)


def reference_step(model, optimizer, batch, bf16: bool, loss_config) -> None:
    """The original scripts' step: full-sequence model, loop-built loss, torch's default AdamW."""
    contexts, targets, negatives = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        predictions = model(contexts)
    total = naive_p7_loss(predictions, contexts, targets, negatives, 0, loss_config)[0]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.project_lambda()


def reference_optimizer(model) -> torch.optim.AdamW:
    """The original's AdamW: every parameter decayed, torch's default kernel (a per-tensor
    loop on CPU)."""
    return torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)


STEPS = {"fast": fast_step, "naive": reference_step}
OPTIMIZERS = {"fast": lambda model: _optimizer(model, TrainConfig()),  # lr 5e-4, wd 1e-4
              "naive": reference_optimizer}


def loss_call(loss_function, predictions, batch, loss_config) -> None:
    """The loss alone: forward and backward to the predictions."""
    contexts, targets, negatives = batch
    predictions.grad = None
    loss_function(predictions, contexts, targets, negatives, 0, loss_config)[0].backward()


def make_predictions(batch, sizes: Sizes) -> torch.Tensor:
    """Unit predictions (B, D) near the targets, a leaf that takes a gradient."""
    _, targets, _ = batch
    noise = torch.randn(targets.shape, generator=torch.Generator().manual_seed(1))
    return F.normalize(targets + 1.5 * noise / sizes.dim ** 0.5, dim=-1).requires_grad_()


# ---------------------------------------------------------------------------------------
# Same math check

def check_equivalence(sizes: Sizes) -> list[tuple[str, float, float, bool]]:
    """(what, max |fast - naive|, tolerance, ok) for model output, loss parts and gradients."""
    loss_config = LossConfig()
    models = make_models(sizes)
    batch = make_batch(32, sizes, seed=2, plant_duplicates=True)
    contexts = batch[0]
    rows = []
    with torch.no_grad():
        for model in models.values():
            model.eval()
        outputs = {name: model(contexts) for name, model in models.items()}
        rows.append(("model output, fp32 (eval)", outputs["fast"], outputs["naive"], 1e-5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = {name: model(contexts) for name, model in models.items()}
        rows.append(("model output, bf16 autocast (eval)", bf16["fast"], bf16["naive"], 2e-2))

    predictions = make_predictions(batch, sizes)
    parts, gradients = {}, {}
    for name, loss_function in LOSSES.items():
        predictions.grad = None
        parts[name] = loss_function(predictions, *batch, 0, loss_config)
        parts[name][0].backward()
        gradients[name] = predictions.grad.clone()
    for index, part in enumerate(("total", "rank", "margin", "teacher")):
        rows.append((f"loss {part}", parts["fast"][index], parts["naive"][index], 1e-5))
    rows.append(("loss gradient d total / d predictions", gradients["fast"],
                 gradients["naive"], 1e-5))

    # One whole step's gradients (model + loss), dropout off so both see the same network.
    model_gradients = {}
    for name, loss_function in LOSSES.items():
        model = models[name]
        model.zero_grad(set_to_none=True)
        loss_function(model(contexts), *batch, 0, loss_config)[0].backward()
        model_gradients[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    rows.append(("training-step parameter gradients", model_gradients["fast"],
                 model_gradients["naive"], 1e-4))

    # The optimizers: tune_p7's (fused) and the original's (per-tensor loop), same gradients.
    updated = {}
    for name, make_optimizer in OPTIMIZERS.items():
        model = copy.deepcopy(models["fast"])  # the weights and gradients of the step above
        make_optimizer(model).step()
        updated[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    rows.append(("parameters after one AdamW update", updated["fast"], updated["naive"], 1e-5))
    results = []
    for what, fast, naive, tolerance in rows:
        difference = (fast - naive).abs().max().item()
        scale = max(naive.abs().max().item(), 1e-12)
        ok = torch.allclose(fast, naive, rtol=tolerance, atol=tolerance * scale)
        results.append((what, difference, tolerance, ok))
    return results


def step_flops(sizes: Sizes, batch_size: int) -> dict:
    """Matmul FLOPs (forward + backward) of one training step per variant: the compute bound."""
    models = make_models(sizes)
    batch = make_batch(batch_size, sizes)
    flops = {}
    for name, loss_function in LOSSES.items():
        with FlopCounterMode(display=False) as counter:
            loss_function(models[name](batch[0]), *batch, 0, LossConfig())[0].backward()
        flops[name] = counter.get_total_flops()
    return flops


# ---------------------------------------------------------------------------------------
# Timing (both variants in this process, interleaved)

def interleaved_times(calls: dict, warmup: int, rounds: int, clock=time.perf_counter) -> dict:
    """{name: per-call seconds}: every call once per round after warm-up, the order rotated
    and reversed from round to round, so slow spells of a shared machine hit all alike.
    clock: time.perf_counter (wall) or time.thread_time (this thread's CPU time)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order[::-1] if index % 2 else order:
            started = clock()
            calls[name]()
            times[name].append(clock() - started)
    return times


def summarise(fast: list, naive: list) -> dict:
    """Median seconds of both, and the speed-up: median of the per-round ratios, and the
    ratio of the fastest calls (noise only ever adds time)."""
    return {"fast_seconds": statistics.median(fast), "naive_seconds": statistics.median(naive),
            "speedup": statistics.median(n / f for f, n in zip(fast, naive)),
            "speedup_fastest": min(naive) / min(fast), "rounds": len(fast)}


def time_steps(sizes: Sizes, batch_size: int, clock=time.perf_counter) -> list[dict]:
    """Rows for fp32 and bf16: both variants in both dtypes timed in one interleaved loop.

    The bf16 row also gives fast bf16 against the naive fp32 step (the original had no bf16).
    """
    loss_config = LossConfig()
    models = make_models(sizes)
    optimizers = {name: OPTIMIZERS[name](model) for name, model in models.items()}
    batch = make_batch(batch_size, sizes)
    calls = {(name, bf16): (lambda name=name, bf16=bf16: STEPS[name](
                 models[name], optimizers[name], batch, bf16, loss_config))
             for bf16 in (False, True) for name in STEPS}
    times = interleaved_times(calls, *sizes.step_repeats[batch_size], clock)
    rows = []
    for bf16 in (False, True):
        row = {"batch": batch_size, "dtype": "bf16" if bf16 else "fp32",
               **summarise(times["fast", bf16], times["naive", bf16])}
        if bf16:
            against_fp32 = summarise(times["fast", True], times["naive", False])
            row["speedup_vs_naive_fp32"] = against_fp32["speedup"]
        rows.append(row)
    return rows


def time_loss(sizes: Sizes, batch_size: int, clock=time.perf_counter) -> dict:
    loss_config = LossConfig()
    batch = make_batch(batch_size, sizes)
    predictions = make_predictions(batch, sizes)
    calls = {name: (lambda name=name: loss_call(LOSSES[name], predictions, batch, loss_config))
             for name in LOSSES}
    times = interleaved_times(calls, *sizes.loss_repeats[batch_size], clock)
    return summarise(times["fast"], times["naive"])


def profile_step(sizes: Sizes, batch_size: int, bf16: bool, steps: int = 4) -> list[tuple]:
    """[(op, share of self CPU time)] of tune_p7's step under torch.profiler, largest first.

    The profiler adds a little per op, so small ops read somewhat high.
    """
    from torch.profiler import ProfilerActivity, profile

    loss_config = LossConfig()
    model = make_models(sizes)["fast"]
    optimizer = OPTIMIZERS["fast"](model)
    batch = make_batch(batch_size, sizes)
    for _ in range(2):
        fast_step(model, optimizer, batch, bf16, loss_config)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            fast_step(model, optimizer, batch, bf16, loss_config)
    events = [event for event in profiler.key_averages() if event.key.startswith("aten::")]
    total = sum(event.self_cpu_time_total for event in events)
    return sorted(((event.key, event.self_cpu_time_total / total) for event in events),
                  key=lambda item: -item[1])


# ---------------------------------------------------------------------------------------
# Memory (one fresh subprocess per variant)

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark; False where /proc/self/clear_refs is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def memory_probe(sizes: Sizes, kind: str, variant: str, batch_size: int, bf16: bool) -> dict:
    """Peak RSS above the post-setup baseline of one call, in this (fresh) process."""
    loss_config = LossConfig()
    batch = make_batch(batch_size, sizes)
    tiny = make_batch(4, sizes, seed=3)
    if kind == "step":
        # The tiny step creates the AdamW state and leaves gradients, as a running loop does.
        model = make_models(sizes)[variant]
        optimizer = OPTIMIZERS[variant](model)

        def call(data, _):
            STEPS[variant](model, optimizer, data, bf16, loss_config)
    else:
        def call(data, predictions):
            loss_call(LOSSES[variant], predictions, data, loss_config)
    predictions = make_predictions(batch, sizes)
    call(tiny, make_predictions(tiny, sizes))
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if _reset_peak():
        method, baseline = "VmHWM reset", _status_kib("VmRSS")
    else:
        method, baseline = "ru_maxrss delta", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call(batch, predictions)
    peak = (_status_kib("VmHWM") if method == "VmHWM reset"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {"baseline_mib": baseline / 1024, "extra_mib": max(peak - baseline, 0) / 1024,
            "method": method}


def measure_memory(sizes_name: str, threads: int, kind: str, variant: str, batch_size: int,
                   bf16: bool) -> dict:
    probe = json.dumps({"sizes": sizes_name, "threads": threads, "kind": kind,
                        "variant": variant, "batch_size": batch_size, "bf16": bf16})
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    finished = subprocess.run([sys.executable, __file__, "--memory-probe", probe],
                              capture_output=True, text=True, check=False, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(f"memory probe {probe} failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Report

def run(sizes: Sizes, sizes_name: str, threads: int, skip_memory: bool,
        steps_only: bool = False, clock=time.perf_counter) -> dict:
    started = time.perf_counter()
    timing = "thread CPU time" if clock is time.thread_time else "wall time"
    print(f"torch {torch.__version__}, {threads} threads ({timing}), {os.cpu_count()} CPUs; "
          f"sizes {sizes_name}: D={sizes.dim} K={sizes.context} d_model={sizes.d_model} "
          f"layers={sizes.layers} heads={sizes.heads} H={HARD_NEGATIVES}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    print("\nSame math (fast vs naive):", flush=True)
    checks = check_equivalence(sizes)
    for what, difference, tolerance, ok in checks:
        print(f"  {what:<40} max |diff| {difference:.2e}  (rtol {tolerance:g})  "
              f"{'same' if ok else 'DIFFERENT'}", flush=True)
    if not all(ok for *_, ok in checks):
        raise SystemExit("fast and naive disagree: the figures below would compare "
                         "different math; fix the reference first.")
    flop_batch = sizes.step_batches[0]
    flops = step_flops(sizes, flop_batch)
    print(f"  matmul FLOPs of one training step (fwd+bwd) at B={flop_batch}: fast "
          f"{flops['fast'] / 1e9:.2f} G, naive {flops['naive'] / 1e9:.2f} G -> compute bound "
          f"of the step speed-up {flops['naive'] / flops['fast']:.2f}x", flush=True)

    steps = []
    for batch_size in sizes.step_batches:
        for row in time_steps(sizes, batch_size, clock):
            if not skip_memory:
                for variant in STEPS:
                    memory = measure_memory(sizes_name, threads, "step", variant, batch_size,
                                            row["dtype"] == "bf16")
                    row[f"{variant}_extra_mib"] = memory["extra_mib"]
                    row["memory_method"] = memory["method"]
            steps.append(row)
            print(_step_line(row), flush=True)

    losses = []
    for batch_size in () if steps_only else sizes.loss_batches:
        row = {"batch": batch_size, **time_loss(sizes, batch_size, clock)}
        if not skip_memory:
            for variant in LOSSES:
                memory = measure_memory(sizes_name, threads, "loss", variant, batch_size, False)
                row[f"{variant}_extra_mib"] = memory["extra_mib"]
        losses.append(row)
        print(_loss_line(row), flush=True)

    seconds = time.perf_counter() - started
    print(f"\ntotal {seconds:.0f} s, load average at the end {os.getloadavg()[0]:.1f}",
          flush=True)
    report = {"checks": checks, "flops": {"batch": flop_batch, **flops}, "steps": steps,
              "losses": losses, "seconds": seconds}
    if sizes_name == "full":
        report["targets"] = targets_met(report)
        for name, (value, target, met) in report["targets"].items():
            print(f"target {name}: {value:.2f} vs >= {target:g}: {'met' if met else 'MISSED'}")
    return report


def targets_met(report: dict) -> dict:
    """{target: (measured, target, met)} for the figures of TARGETS that this run measured."""
    step = {row["dtype"]: row for row in report["steps"] if row["batch"] == 64}
    measured = {"step_speedup_b64_fp32": step["fp32"]["speedup"],
                "step_speedup_b64_bf16_vs_naive_fp32": step["bf16"]["speedup_vs_naive_fp32"]}
    loss = [row for row in report["losses"] if row["batch"] == 1024]
    if loss:
        measured.update(loss_speedup_b1024=loss[0]["speedup"],
                        loss_memory_ratio_b1024=_ratio(loss[0]))
    return {name: (value, TARGETS[name], value >= TARGETS[name])
            for name, value in measured.items()}


def _ratio(row: dict) -> float:
    if "fast_extra_mib" not in row:
        return float("nan")
    return row["naive_extra_mib"] / max(row["fast_extra_mib"], 1e-9)


def _step_line(row: dict) -> str:
    memory = (f"  extra MiB fast {row['fast_extra_mib']:.0f} naive {row['naive_extra_mib']:.0f}"
              if "fast_extra_mib" in row else "")
    throughput = {name: row["batch"] / row[f"{name}_seconds"] for name in STEPS}
    against_fp32 = (f", {row['speedup_vs_naive_fp32']:.2f}x the naive fp32 step"
                    if "speedup_vs_naive_fp32" in row else "")
    return (f"step B={row['batch']:<5} {row['dtype']}: fast {throughput['fast']:.1f}"
            f" seq/s, naive {throughput['naive']:.1f} seq/s, speed-up "
            f"{row['speedup']:.2f}x (fastest calls {row['speedup_fastest']:.2f}x, "
            f"{row['rounds']} rounds){against_fp32}{memory}")


def _loss_line(row: dict) -> str:
    memory = (f"  extra MiB fast {row['fast_extra_mib']:.1f} naive {row['naive_extra_mib']:.1f}"
              f" ({_ratio(row):.0f}x less)" if "fast_extra_mib" in row else "")
    return (f"loss B={row['batch']:<5}: fast {1e3 * row['fast_seconds']:.2f} ms, naive "
            f"{1e3 * row['naive_seconds']:.1f} ms, speed-up {row['speedup']:.0f}x "
            f"(fastest calls {row['speedup_fastest']:.0f}x, {row['rounds']} rounds){memory}")


def markdown(report: dict) -> str:
    """The figures as the markdown tables of benchmarks/README.md."""
    lines = ["| step | B | dtype | fast seq/s | naive seq/s | speed-up (median of rounds) "
             "| speed-up (fastest calls) | fast vs naive fp32 | fast extra MiB "
             "| naive extra MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["steps"]:
        against_fp32 = row.get("speedup_vs_naive_fp32", row["speedup"])
        lines.append(f"| train step | {row['batch']} | {row['dtype']} | "
                     f"{row['batch'] / row['fast_seconds']:.1f} | "
                     f"{row['batch'] / row['naive_seconds']:.1f} | {row['speedup']:.2f}× | "
                     f"{row['speedup_fastest']:.2f}× | {against_fp32:.2f}× | "
                     f"{row.get('fast_extra_mib', float('nan')):.0f} | "
                     f"{row.get('naive_extra_mib', float('nan')):.0f} |")
    lines += ["", "| loss (fwd+bwd) | B | fast ms | naive ms | speed-up (median of rounds) "
              "| speed-up (fastest calls) | fast extra MiB | naive extra MiB | memory ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in report["losses"]:
        lines.append(f"| p7_loss | {row['batch']} | {1e3 * row['fast_seconds']:.2f} | "
                     f"{1e3 * row['naive_seconds']:.1f} | {row['speedup']:.0f}× | "
                     f"{row['speedup_fastest']:.0f}× | "
                     f"{row.get('fast_extra_mib', float('nan')):.1f} | "
                     f"{row.get('naive_extra_mib', float('nan')):.0f} | {_ratio(row):.0f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--rounds", type=int,
                        help="timed rounds of every step and loss timing (default: per size)")
    parser.add_argument("--steps-only", action="store_true", help="skip the loss tables")
    parser.add_argument("--step-batches", type=int, nargs="+",
                        help="batch sizes of the step timing (default: per size)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time calls by this thread's CPU time (needs --threads 1): other "
                             "jobs on a shared machine then cost nothing but cache")
    parser.add_argument("--profile", action="store_true",
                        help="only profile tune_p7's B=64 fp32 step: its largest ops")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time counts one thread's time only; add --threads 1.")
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        probe = json.loads(args.memory_probe)
        torch.set_num_threads(probe["threads"])
        sizes = QUICK if probe["sizes"] == "quick" else FULL
        print(json.dumps(memory_probe(sizes, probe["kind"], probe["variant"],
                                      probe["batch_size"], probe["bf16"])))
        return 0
    sizes_name = "quick" if args.quick else "full"
    sizes = QUICK if args.quick else FULL
    if args.step_batches:
        sizes = dataclasses.replace(sizes, step_batches=tuple(args.step_batches), step_repeats={
            b: sizes.step_repeats.get(b, (1, 3)) for b in args.step_batches})
    if args.rounds:
        sizes = dataclasses.replace(
            sizes, step_repeats={b: (w, args.rounds) for b, (w, _) in sizes.step_repeats.items()},
            loss_repeats={b: (w, args.rounds) for b, (w, _) in sizes.loss_repeats.items()})
    if args.profile:
        shares = profile_step(sizes, 64 if not args.quick else 16, bf16=False)
        print(f"tune_p7 step, B=64 fp32, {args.threads} threads: share of aten self CPU time")
        matmul = sum(share for op, share in shares if op in ("aten::mm", "aten::addmm",
                                                             "aten::bmm"))
        print(f"  matmuls (mm, addmm, bmm) {100 * matmul:.1f}%")
        for op, share in shares[:12]:
            print(f"  {op:<32} {100 * share:5.1f}%")
        return 0
    clock = time.thread_time if args.cpu_time else time.perf_counter
    report = run(sizes, sizes_name, args.threads, args.no_memory, args.steps_only, clock)
    print("\n" + markdown(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
