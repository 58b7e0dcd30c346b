"""bf16 check: does bf16 autocast change what a trial reports? fp32 vs bf16, seeds each.

    python benchmarks/bf16_check.py                       # the quick profile's 8 epochs, 3 seeds
    python benchmarks/bf16_check.py --epochs 1 --seeds 2  # smoke run

Trains the quick profile's baseline cell (search_spaces/p7.yaml: d_model 128, 2 layers, K=5,
margin 0.07, lambda 0.8) on the shipped dataset (load_dataset("default"), Austen MiniLM) once
per seed with bf16 "off" and once with "on", the same seeds, and prints the final val Δ
(val_margin), val_cos_next and val_r_at_5 of every run, the means, the difference of means
(bf16 - fp32) and its 95% interval: Welch's t-interval of the difference of two means,
d ± t(0.975, ν) · sqrt(s_fp32² / n + s_bf16² / n) with Welch–Satterthwaite ν, so the width
is what seed-to-seed variation alone would give. PASS for a metric when 0 lies inside it (the
difference is smaller than the seeds' own spread); the check passes when all three do.
bf16 runs at its native speed only where devices.bf16_is_fast says so; elsewhere this check
still answers the question, just slowly.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from tune_p7.config import TrainConfig
from tune_p7.data import load_dataset
from tune_p7.space import load_space
from tune_p7.train import train

METRICS = ("val_margin", "val_cos_next", "val_r_at_5")
CONFIDENCE = 0.95


def cell_config(profile: str, cell: str, seed: int, bf16: str, epochs: int | None,
                threads: int) -> TrainConfig:
    """The trial config a sweep gives ``cell`` under ``profile``, with this seed and bf16."""
    overrides = {"seed": seed, "bf16": bf16, "threads": threads}
    if epochs is not None:
        overrides["epochs"] = epochs
    configs = {config["cell"]: config for config in load_space().cell_configs(profile, overrides)}
    settings = {key: value for key, value in configs[cell].items()
                if key not in ("phase", "cell")}
    return TrainConfig.from_dict(settings)


def student_t_quantile(probability: float, dof: float) -> float:
    """The Student-t quantile for probability in (0.5, 1) and dof > 0 (real-valued).

    Bisection on the CDF 0.5 + integral_0^t of the density (Simpson's rule, 2000 intervals),
    accurate to ~1e-8 for the quantiles used here; no scipy needed.
    """
    scale = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def density(x: float) -> float:
        return scale * (1 + x * x / dof) ** (-(dof + 1) / 2)

    def cdf(t: float, steps: int = 2000) -> float:
        width = t / steps
        inner = sum((4 if i % 2 else 2) * density(i * width) for i in range(1, steps))
        return 0.5 + width / 3 * (density(0.0) + inner + density(t))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def difference_interval(fp32: list[float], bf16: list[float]) -> dict:
    """Difference of means (bf16 - fp32) and Welch's 95% t-interval around it."""
    difference = statistics.mean(bf16) - statistics.mean(fp32)
    variances = [statistics.variance(values) / len(values) for values in (fp32, bf16)]
    standard_error = math.sqrt(sum(variances))
    if standard_error == 0:
        half_width = 0.0
    else:
        dof = sum(variances) ** 2 / sum(v ** 2 / (len(x) - 1)
                                        for v, x in zip(variances, (fp32, bf16)))
        half_width = student_t_quantile(0.5 + CONFIDENCE / 2, dof) * standard_error
    return {"difference": difference, "low": difference - half_width,
            "high": difference + half_width, "passed": abs(difference) <= half_width}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the profile's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per precision (>= 2)")
    parser.add_argument("--profile", default="quick", help="profile of search_spaces/p7.yaml")
    parser.add_argument("--cell", default="baseline", help="cell of search_spaces/p7.yaml")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: an interval needs at least 2 seeds per precision.")
    dataset = load_dataset("default")
    runs = {"fp32": [], "bf16": []}
    started = time.perf_counter()
    for seed in range(args.seeds):
        for name, setting in (("fp32", "off"), ("bf16", "on")):
            config = cell_config(args.profile, args.cell, seed, setting, args.epochs,
                                 args.threads)
            run_started = time.perf_counter()
            final = train(config, dataset).history[-1]
            runs[name].append({"seed": seed, "seconds": time.perf_counter() - run_started,
                               **{metric: final[metric] for metric in METRICS}})
            row = runs[name][-1]
            print(f"seed {seed} {name}: " + "  ".join(f"{m} {row[m]:+.4f}" for m in METRICS)
                  + f"  ({row['seconds']:.0f} s, {config.epochs} epochs)", flush=True)
    print(f"\n{args.profile} profile, cell {args.cell}, {args.seeds} seeds, "
          f"{time.perf_counter() - started:.0f} s. Interval: Welch 95% t-interval of the "
          f"difference of means (bf16 - fp32); PASS when it holds 0.")
    results = {}
    for metric in METRICS:
        fp32 = [row[metric] for row in runs["fp32"]]
        bf16 = [row[metric] for row in runs["bf16"]]
        results[metric] = {"fp32_mean": statistics.mean(fp32),
                           "bf16_mean": statistics.mean(bf16),
                           **difference_interval(fp32, bf16)}
        result = results[metric]
        print(f"{metric:<13} fp32 {result['fp32_mean']:+.4f}  bf16 {result['bf16_mean']:+.4f}"
              f"  difference {result['difference']:+.4f}  interval "
              f"[{result['low']:+.4f}, {result['high']:+.4f}]  "
              f"{'PASS' if result['passed'] else 'FAIL'}")
    passed = all(result["passed"] for result in results.values())
    print(f"bf16 vs fp32: {'PASS' if passed else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"runs": runs, "metrics": results, "passed": passed,
                       "epochs": args.epochs, "seeds": args.seeds, "profile": args.profile,
                       "cell": args.cell}, out, indent=2)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
