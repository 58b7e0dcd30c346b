"""``python -m tune_p7.confirm results/NAME --top 3 --seeds 3``: is the winner real, or noise?

A sweep ranks configs by one training run each, and the top of that ranking is partly luck
(the winner's curse). This re-trains the top configs and the baseline cell on new seeds,
through the same Ray machinery (tune_p7.tuner.run_fixed_trials, experiment
``ray/confirm-<sort>-top<N>-seeds<S>``, at full budget, no early stopping), then reports per
config the mean of the final val_margin over the new seeds with a 95% t confidence
interval, and whether the best confirmed config beats the baseline cell beyond noise (the
95% Welch interval of the difference of means lies above 0). The original runs are shown
but not averaged in: they are the ones selected for being high.

The re-runs join trials.parquet / history.parquet with phase="confirm" and the cell label of
their source; the summary is written to confirmation.parquet. Running the same command again
continues (or reuses) the same experiment.
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from tune_p7 import command, results
from tune_p7.data import DataError, load_dataset
from tune_p7.folder import FolderInUse, SweepFolder
from tune_p7.plan import Plan
from tune_p7.progress import progress_printer
from tune_p7.tuner import (SweepError, add_trial_arguments, run_fixed_trials, start_ray,
                           trial_options)

# Settings that do not make a config different: the seed is what confirm varies, threads
# and device are how a trial runs, not what it computes.
NOT_IDENTITY = ("seed", "threads", "device")
# Two-sided 95% Student t quantiles t_{0.975, df}; above 30 see t_quantile.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
SUMMARY_TABLE = "confirmation"  # confirmation.parquet in the sweep folder
BASELINE_CELL = "baseline"


class ConfirmError(ValueError):
    """A user error: the message is one sentence naming the input and the fix."""


def t_quantile(df: float) -> float:
    """t_{0.975, df}: the table for df <= 30 (a fractional df rounds down, which widens the
    interval), the Cornish-Fisher expansion z + (z^3 + z) / (4 df) above (error < 0.002)."""
    if df < 1:
        return math.nan
    if df <= len(T_975):
        return T_975[int(df) - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


def mean_interval(values: pd.Series) -> dict:
    """mean, std (n-1), n and the 95% t interval of the mean; NaN bounds for n < 2."""
    values = values.dropna()
    n, mean = len(values), float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"seeds_run": n, "mean": mean, "std": std, "ci_low": mean - half,
            "ci_high": mean + half}


def welch_difference(first: pd.Series, second: pd.Series) -> dict:
    """mean(first) - mean(second) with its 95% Welch interval (df rounded down)."""
    a, b = first.dropna(), second.dropna()
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"difference": difference, "ci_low": math.nan, "ci_high": math.nan}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    spread = math.sqrt(va + vb)
    if spread == 0:
        return {"difference": difference, "ci_low": difference, "ci_high": difference}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(math.floor(df)) * spread
    return {"difference": difference, "ci_low": difference - half,
            "ci_high": difference + half}


def config_key(row: pd.Series) -> tuple:
    """What makes two trials the same config: every TrainConfig field but NOT_IDENTITY."""
    return tuple((name, row[name]) for name in results.CONFIG_FIELDS
                 if name not in NOT_IDENTITY and name in row.index)


def select_candidates(trials: pd.DataFrame, top: int, sort: str) -> pd.DataFrame:
    """The top ``top`` distinct configs of results.leaderboard by ``sort`` (those that beat
    the trivial predictors first; trials that reported an epoch and did not fail, confirm
    runs left out) plus the baseline cell; one row per config."""
    usable = trials[(trials["epochs_run"] > 0) & (trials["status"] != "error")
                    & (trials["phase"] != "confirm")]
    if usable.empty:
        raise ConfirmError("the sweep has no trial with a reported epoch yet; run or resume "
                           "the sweep first.")
    ranked = results.leaderboard(usable, sort)
    ranked = ranked.assign(_key=ranked.apply(config_key, axis=1)).drop_duplicates("_key")
    chosen = ranked.head(top)
    cell = ranked[(ranked["phase"] == "baseline") & (ranked["cell"] == BASELINE_CELL)]
    return pd.concat([chosen, cell]).drop_duplicates("_key").drop(columns="_key")


def new_seeds(trials: pd.DataFrame, count: int) -> list[int]:
    """``count`` seeds above every seed the sweep itself used (confirm runs aside)."""
    used = pd.to_numeric(trials.loc[trials["phase"] != "confirm", "seed"], errors="coerce")
    start = int(used.max()) + 1 if used.notna().any() else 1
    return list(range(start, start + count))


def confirm_configs(candidates: pd.DataFrame, seeds: list[int]) -> list[dict]:
    """Full trial configs: each candidate's TrainConfig fields, once per seed, labelled
    phase="confirm" and the candidate's cell."""
    configs = []
    for _, row in candidates.iterrows():
        settings = {name: results.plain(row[name]) for name in results.CONFIG_FIELDS
                    if name in row.index}
        configs += [{**settings, "seed": seed, "phase": "confirm", "cell": row["cell"]}
                    for seed in seeds]
    return configs


def confirmation(trials: pd.DataFrame, candidates: pd.DataFrame, experiment: str,
                 metric: str = "val_margin") -> pd.DataFrame:
    """One row per candidate config: its source trial, searched settings, original value,
    and over the completed re-runs of ``experiment``: seeds_run, mean, std, 95% interval
    (columns <metric>_mean, ...) and the means of val_cos_next and val_r_at_5 beside it;
    beats_trivial is the source trial's (tune_p7.verdicts)."""
    reruns = trials[(trials["experiment"] == experiment) & (trials["status"] == "complete")]
    rerun_keys = reruns.apply(config_key, axis=1) if not reruns.empty else pd.Series([])
    rows = []
    for _, candidate in candidates.iterrows():
        mine = reruns[rerun_keys == config_key(candidate)] if not reruns.empty else reruns
        stats = mean_interval(mine[metric] if not mine.empty else pd.Series([], dtype=float))
        rows.append({
            "source_trial": candidate["trial_id"], "phase": candidate["phase"],
            "cell": candidate["cell"], "context": candidate["context"],
            "margin": candidate["margin"], "temperature": candidate["temperature"],
            "anchor_lambda": candidate["anchor_lambda"],
            f"original_{metric}": candidate[metric],
            "beats_trivial": candidate.get("beats_trivial", pd.NA),
            **{f"{metric}_{k}" if k != "seeds_run" else k: v for k, v in stats.items()},
            "val_cos_next_mean": mine["val_cos_next"].mean() if not mine.empty else math.nan,
            "val_r_at_5_mean": mine["val_r_at_5"].mean() if not mine.empty else math.nan})
    return pd.DataFrame(rows).sort_values(f"{metric}_mean", ascending=False,
                                          na_position="last", ignore_index=True)


def verdict_line(table: pd.DataFrame, trials: pd.DataFrame, experiment: str,
                 metric: str = "val_margin") -> str:
    """One sentence: does the best confirmed config beat the baseline cell beyond noise?
    It names whether that config's sweep trial beat the trivial predictors."""
    baseline = table[(table["phase"] == "baseline") & (table["cell"] == BASELINE_CELL)]
    scored = table.dropna(subset=[f"{metric}_mean"])
    if baseline.empty or scored.empty:
        return "No comparison: the baseline cell or every candidate lacks completed re-runs."
    winner = scored.iloc[0]
    if winner["source_trial"] == baseline.iloc[0]["source_trial"]:
        return (f"The baseline cell{_trivial_phrase(winner)} has the best confirmed mean "
                f"{metric} ({winner[f'{metric}_mean']:+.4f}); no searched config beats it.")
    reruns = trials[(trials["experiment"] == experiment) & (trials["status"] == "complete")]
    keys = reruns.apply(config_key, axis=1)
    source = lambda trial_id: trials[trials["trial_id"] == trial_id].iloc[0]  # noqa: E731
    winner_runs = reruns.loc[keys == config_key(source(winner["source_trial"])), metric]
    baseline_runs = reruns.loc[keys == config_key(source(baseline.iloc[0]["source_trial"])),
                               metric]
    diff = welch_difference(winner_runs, baseline_runs)
    label = (winner["cell"] or f"trial {winner['source_trial']}") + _trivial_phrase(winner)
    if math.isnan(diff["ci_low"]):
        return (f"Best confirmed config {label} is {diff['difference']:+.4f} above the "
                f"baseline cell, but with fewer than 2 seeds each noise cannot be judged; "
                f"use --seeds 2 or more.")
    beyond = diff["ci_low"] > 0
    return (f"Best confirmed config {label} vs the baseline cell: {metric} difference "
            f"{diff['difference']:+.4f} (95% CI {diff['ci_low']:+.4f} to "
            f"{diff['ci_high']:+.4f}): " + ("beyond noise." if beyond else
                                           "within noise, not a real improvement."))


def _trivial_phrase(candidate: pd.Series) -> str:
    """Whether a candidate's sweep trial beat the trivial predictors, as a parenthesis."""
    beats = candidate.get("beats_trivial", pd.NA)
    if pd.isna(beats):
        return " (not compared with the trivial predictors)"
    return (" (its sweep trial beats all three trivial predictors)" if beats
            else " (its sweep trial does not beat all three trivial predictors)")


# ---------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    # --help shows the module's explanation: why the top of a sweep needs confirming.
    parser = argparse.ArgumentParser(prog="python -m tune_p7.confirm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_ranking_arguments(parser, top=3, top_help="configs to confirm")
    parser.add_argument("--seeds", type=int, default=3, help="new seeds per config (default 3)")
    add_trial_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = SweepFolder(args.sweep)
    try:
        options = trial_options(args)
        plan, candidates, configs, experiment = _prepare(args)
        dataset = load_dataset(plan.data, split_seed=0, val_source=plan.val_data,
                               progress=progress_printer(sys.stdout))
        lock = folder.lock()  # the sweep, or another confirm, must not run in it meanwhile
    except (results.NotASweep, ConfirmError, DataError, SweepError, FolderInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results.best_statement(candidates, args.sort))
    with lock:
        return _run(args, folder, options, candidates, configs, experiment, dataset)


def _run(args, folder: SweepFolder, options, candidates: pd.DataFrame, configs: list[dict],
         experiment: str, dataset) -> int:
    """Start Ray, run the re-runs, write and print the confirmation table."""
    print(f"confirming {len(candidates)} configs x {args.seeds} seeds "
          f"({len(configs)} trials) in {folder.path / 'ray' / experiment}", flush=True)
    try:
        start_ray(args.address, dashboard=False, options=options)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, interrupted = run_fixed_trials(folder, experiment, configs, dataset, options)
    trials, _ = results.write_tables(folder.path)
    table = confirmation(trials, candidates, experiment)
    folder.write_table(SUMMARY_TABLE, table)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    print(verdict_line(table, trials, experiment))
    print(f"re-runs: {folder.table_path('trials')} (phase confirm, experiment "
          f"{experiment}); summary: {folder.table_path(SUMMARY_TABLE)}")
    return 130 if interrupted else 0


def _prepare(args) -> tuple[Plan, pd.DataFrame, list[dict], str]:
    """Check the arguments, load the sweep, pick candidates, seeds and configs."""
    if args.top < 1 or args.seeds < 1:
        raise ConfirmError(f"--top ({args.top}) and --seeds ({args.seeds}) must be at least 1.")
    sweep = results.load_sweep(args.sweep)
    if not SweepFolder(args.sweep).holds_sweep():
        raise ConfirmError(f"{args.sweep} has no sweep.json, so its data cannot be reloaded; "
                           f"confirm needs the folder the sweep wrote.")
    if sweep.trials.empty or args.sort not in sweep.trials.columns:
        raise ConfirmError(f"--sort {args.sort!r} is not a column of the trials table (or the "
                           f"sweep has no trials); use e.g. val_margin.")
    candidates = select_candidates(sweep.trials, args.top, args.sort)
    configs = confirm_configs(candidates, new_seeds(sweep.trials, args.seeds))
    experiment = f"confirm-{args.sort}-top{args.top}-seeds{args.seeds}"
    return sweep.plan, candidates, configs, experiment


if __name__ == "__main__":
    command.run(main)
