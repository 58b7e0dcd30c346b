"""``python -m tune_p7.analyze results/NAME``: what a sweep found, and what it is worth.

Prints the data's directional signals and the trivial predictors, the baseline cells, the
leaderboard with verdicts and flags, the best trial (and whether it beats the trivial
predictors) with its config, the Pareto set on (val Δ, cos_next, R@5), the check of ASHA's
early stopping (tune_p7.early_stopping) and Optuna's parameter importances, then where the
outputs went. Writes into the sweep folder: trials.parquet and history.parquet (when Ray's
files are newer), the plots (tune_p7.plots) and summary.txt (this report as a table); the
importances come from the sweep's live Optuna study (optuna.db, tune_p7.study), which the
sweep itself writes.

    python -m tune_p7.analyze results/NAME --sort val_cos_next --top 5 --format json
    python -m tune_p7.analyze results/NAME --export-best best/   # best.pt + config.json

``write_outputs(sweep_dir)`` does the writing without printing (the sweep calls it at its end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import torch

from tune_p7 import command, plots, results, study
from tune_p7.early_stopping import early_stopping_check, early_stopping_notes
from tune_p7.files import atomic_path, write_json, write_text
from tune_p7.folder import RAY_FOLDER, SweepFolder, latest_checkpoint
from tune_p7.sweep_progress import format_progress
from tune_p7.verdicts import FLAGS, Criteria

DISPLAY = ("rank", "trial_id", "phase", "cell", "context", "margin", "temperature",
           "anchor_lambda", "status", "epochs_run", "val_margin", "val_cos_next",
           "val_cos_prev", "val_cos_anchor", "val_r_at_5", "train_margin", "verdict",
           "beats_trivial", "trivial_not_beaten", "pareto", "flags")
CELL_COLUMNS = ("cell", "context", "margin", "anchor_lambda", "status", "epochs_run",
                "val_margin", "best_val_margin", "val_cos_next", "val_cos_prev",
                "val_cos_anchor", "val_r_at_5", "verdict", "beats_trivial", "flags")
# The three Pareto metrics (R@5 in-document, or global where the data has no documents).
PARETO_COLUMNS = ("trial_id", "phase", "cell", "context", "margin", "temperature",
                  "anchor_lambda", "val_margin", "val_cos_next", "val_r_at_5",
                  "val_global_r_at_5", "beats_trivial", "verdict")
BEST_COLUMNS = ("trial_id", "experiment", "phase", "cell", "context", "val_margin",
                "val_cos_next", "val_r_at_5", "val_global_r_at_5", "beats_trivial",
                "trivial_not_beaten", "verdict")
BASELINE_COLUMNS = ("context", "predictor", "val_margin", "val_cos_next", "val_cos_prev",
                    "val_cos_anchor", "val_r_at_5", "val_mrr_at_10")
SUMMARY_FILE = "summary.txt"


class AnalysisError(ValueError):
    """A user error: the message is one sentence naming the input and the fix."""


class EveryTrialFailed(RuntimeError):
    """Every trial of the sweep ended in an error, so nothing can be ranked or plotted; the
    message is one sentence, then each trial's error line (see failure_report)."""


def failure_report(trials: pd.DataFrame) -> str | None:
    """When every trial failed: one sentence saying so, then per trial its label and the
    error line of its error.txt (trials' "error"); None when any trial did not fail."""
    if trials.empty or not trials["status"].eq("error").all():
        return None
    lines = [f"every trial failed ({len(trials)} of {len(trials)}), so there is nothing to "
             f"rank; fix the cause below and start a new sweep (--resume does not re-run "
             f"failed trials):"]
    labels = [(f"{row.phase}/{row.cell or row.trial_id}", row.error)
              for row in trials.itertuples()]
    for label, error in sorted(labels):  # trial ids are random: sort by label to read alike
        lines.append(f"  {label}: {error or 'no error.txt'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Writing the outputs


def write_outputs(sweep_dir: str | Path, criteria: Criteria = Criteria(),
                  sort: str = "val_margin", top: int = 10) -> tuple[results.Sweep, dict]:
    """Refresh the tables, draw the plots, read the importances from optuna.db, write
    summary.txt.

    Returns the loaded sweep and {"tables" | "plots" | "optuna" | "summary": paths}, plus
    "importances" (a DataFrame). Raises results.NotASweep for a folder that is not a sweep,
    and EveryTrialFailed, after writing that report as summary.txt, when every trial failed.
    """
    sweep_dir = Path(sweep_dir)
    written: dict = {}
    folder = SweepFolder(sweep_dir)
    if (sweep_dir / RAY_FOLDER).is_dir() and not folder.tables_are_fresh():
        results.write_tables(sweep_dir)
        written["tables"] = [folder.table_path("trials"), folder.table_path("history")]
    sweep = results.load_sweep(sweep_dir, criteria)
    failed = failure_report(sweep.trials)
    if failed is not None:
        write_text(sweep_dir / SUMMARY_FILE, failed + "\n")
        raise EveryTrialFailed(failed)
    if not sweep.trials.empty and sort not in sweep.trials.columns:
        raise AnalysisError(f"--sort {sort!r} is not a column of the trials table; use one of "
                            f"{', '.join(results.metric_columns(sweep.trials))}.")
    written["plots"] = plots.write_plots(sweep)
    live = study.load_study(sweep_dir)
    written["optuna"] = [sweep_dir / study.STUDY_FILE] if live is not None else []
    written["importances"] = study.importances(live)
    written["summary"] = [sweep_dir / SUMMARY_FILE]
    sections = report(sweep, sort, top, written)
    write_text(sweep_dir / SUMMARY_FILE, format_table(sections, sweep, sort) + "\n")
    return sweep, written


def export_best(sweep: results.Sweep, metric: str, folder: str | Path) -> dict:
    """Write the best trial's last checkpoint as folder/best.pt plus config.json, metrics.json.

    best.pt = {"model": state dict, "config": TrainConfig dict, "dim": D, "epoch",
    "val_margin", "trial_id", "sweep"}, reloadable with tune_p7.train.load_model. The sweep
    keeps each trial's latest checkpoint, so the export is the model after its last epoch:
    the one whose metrics the leaderboard shows. The best trial is results.best_trial's
    (those that beat the trivial predictors first); metrics.json records its beats_trivial
    and trivial_not_beaten beside that epoch's history row. Returns metrics.json's content.
    """
    try:
        trial = results.best_trial(sweep.trials, metric)
    except ValueError as error:
        raise AnalysisError(f"--export-best: {error}") from None
    checkpoint = latest_checkpoint(sweep.path / trial["trial_dir"])
    if checkpoint is None:
        raise AnalysisError(f"--export-best: trial {trial['trial_id']} has no checkpoint in "
                            f"{sweep.path / trial['trial_dir']}; re-run it or copy the whole "
                            f"sweep folder.")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    epochs = sweep.history[(sweep.history["experiment"] == trial["experiment"])
                           & (sweep.history["trial_id"] == trial["trial_id"])]
    metrics = epochs[epochs["epoch"] == state["epoch"]].iloc[0].to_dict()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dim = int(state["model"]["input.weight"].shape[1])
    with atomic_path(folder / "best.pt") as temporary:
        torch.save({"model": state["model"], "config": state["config"], "dim": dim,
                    "epoch": int(state["epoch"]), "val_margin": float(metrics["val_margin"]),
                    "trial_id": str(trial["trial_id"]), "sweep": str(sweep.path)}, temporary)
    labels = {name: results.plain(trial[name]) for name in (*results.KEYS, "trial_dir")}
    write_json(folder / "config.json",
               {**state["config"], **labels, "dim": dim, "sweep": str(sweep.path)})
    metrics = {name: results.plain(value) for name, value in
               {**metrics, "beats_trivial": trial["beats_trivial"],
                "trivial_not_beaten": trial["trivial_not_beaten"]}.items()}
    write_json(folder / "metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------------------------------
# The report: sections of DataFrames, formatted three ways


def report(sweep: results.Sweep, sort: str, top: int, written: dict) -> dict:
    """{section: DataFrame} in print order; best_config and notes are DataFrames too."""
    trials = sweep.trials
    board = results.leaderboard(trials, sort, top) if not trials.empty else trials
    shown = [c for c in DISPLAY if c in board.columns]
    if sort in board.columns and sort not in shown:
        shown.insert(shown.index("verdict") if "verdict" in shown else len(shown), sort)
    try:
        best_trial = trials.loc[[results.best_trial(trials, sort).name]]
        best = results.best_config(trials, sort)
    except ValueError:
        best_trial, best = pd.DataFrame(), {}
    best_shown = list(dict.fromkeys(c for c in (*BEST_COLUMNS[:5], sort, *BEST_COLUMNS[5:])
                                    if c in best_trial.columns))
    front = trials[trials["pareto"].fillna(False).astype(bool)] if not trials.empty else trials
    cells = trials[trials["phase"] == "baseline"] if not trials.empty else trials
    files = [str(path) for key in ("tables", "plots", "optuna", "summary")
             for path in written.get(key, [])]
    return {
        "sweep": _overview(sweep),
        "data_signals": sweep.data_signals,
        "trivial_predictors": sweep.baselines[[c for c in BASELINE_COLUMNS
                                               if c in sweep.baselines.columns]],
        "baseline_cells": cells[[c for c in CELL_COLUMNS if c in cells.columns]],
        "leaderboard": board[shown],
        "best_trial": best_trial[best_shown],
        "best_config": pd.DataFrame(list(best.items()), columns=["setting", "value"]),
        "pareto": front[[c for c in PARETO_COLUMNS if c in front.columns]],
        "early_stopping": early_stopping_check(trials, sweep.history, sweep.plan.optuna.asha),
        "importances": written.get("importances", pd.DataFrame()),
        "files": pd.DataFrame({"file": files}),
    }


def _overview(sweep: results.Sweep) -> pd.DataFrame:
    """One row: name, sweep state, where the tables came from, trials per status/verdict."""
    trials = sweep.trials
    row = {"sweep": sweep.path.name, "state": sweep.run_state.get("state", "unknown"),
           "read_from": sweep.source, "trials": len(trials)}
    if not trials.empty:
        row.update({f"status_{k}": int(v) for k, v in trials["status"].value_counts().items()})
        row.update({f"verdict_{k or 'none'}": int(v)
                    for k, v in trials["verdict"].value_counts().items()})
        row["beat_all_trivial"] = int(trials["beats_trivial"].fillna(False).sum())
        row["pareto"] = int(trials["pareto"].fillna(False).sum())
    return pd.DataFrame([row])


def reading(sweep: results.Sweep, sort: str = "val_margin") -> list[str]:
    """Plain sentences that say what the numbers mean (printed in the table format)."""
    lines = []
    if SweepFolder(sweep.path).is_running() and sweep.run_state.get("state") == "running":
        lines.append("The sweep is still running: every number below is provisional.")
        if "progress" in sweep.run_state:
            lines.append(f"Progress at {sweep.run_state['progress'].get('updated', '?')}: "
                         f"{format_progress(sweep.run_state['progress'])}.")
    signals = sweep.data_signals
    if not signals.empty:
        val = signals[signals["split"] == "val"]
        forward = ", ".join(f"K={int(r.context)}: {r.forward_signal:+.4f}"
                            for r in val.itertuples())
        lines.append(f"Forward signal of the validation data ({forward}): on real text it is "
                     f"near 0, and a positive val Δ is then hard to reach.")
    trials = sweep.trials
    if not trials.empty:
        beating = int(trials["beats_trivial"].fillna(False).sum())
        lines.append(f"{beating} of {len(trials)} trials beat all three trivial predictors "
                     f"on val Δ, cos_next and R@5 at once (the bar for an interesting trial).")
        lines.append(results.best_statement(trials, sort))
        lines.append(f"{int(trials['pareto'].fillna(False).sum())} trials are in the Pareto "
                     f"set on (val Δ, cos_next, R@5): none of the others is at least as good "
                     f"on all three (section pareto).")
    profile = sweep.plan.arguments.get("profile", "quick")
    grace_key = (f"profiles.{profile}.asha.grace_period in "
                 f"{sweep.plan.space_file or 'the search space file'}")
    lines += early_stopping_notes(
        early_stopping_check(trials, sweep.history, sweep.plan.optuna.asha), grace_key)
    return lines


def format_table(sections: dict, sweep: results.Sweep | None = None,
                 sort: str = "val_margin") -> str:
    """Human-readable report: each section as an aligned table under a title, after the
    plain sentences of :func:`reading` when ``sweep`` is given."""
    out = []
    if sweep is not None:
        out += reading(sweep, sort)
    for name, frame in sections.items():
        out.append(f"\n== {name.replace('_', ' ')} ==")
        if frame.empty:
            out.append("(none)")
            continue
        if name == "best_config":
            settings = ", ".join(f"{r.setting}={r.value}" for r in frame.itertuples())
            out.append(textwrap.fill(settings, width=100))
            continue
        out.append(frame.to_string(index=False, float_format=_float, na_rep="-"))
    out.append("\nflags:")
    out += [f"  {name}: {meaning}" for name, meaning in FLAGS.items()]
    return "\n".join(out).lstrip("\n")


def format_csv(sections: dict) -> str:
    """Every section as CSV, each block headed by a "# <section>" line."""
    return "\n".join(f"# {name}\n{frame.to_csv(index=False)}" for name, frame in sections.items())


def format_json(sections: dict) -> str:
    """One JSON object: {section: [records]}, NaN/NA as null."""
    return json.dumps({name: [{k: results.plain(v) for k, v in row.items()}
                              for row in frame.to_dict(orient="records")]
                       for name, frame in sections.items()}, indent=2)


def _float(value: float) -> str:
    return f"{value:.4f}"



# ---------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_p7.analyze",
        description="Analyse a sweep folder: signals, trivial predictors, cells, leaderboard "
                    "with verdicts and flags, best config, importances from optuna.db; writes "
                    "plots and summary.")
    results.add_ranking_arguments(parser, top=10, top_help="leaderboard rows")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--export-best", metavar="DIR",
                        help="write the best trial's model as DIR/best.pt + config.json")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="change a verdict/flag threshold, e.g. pass_margin=0.15 "
                             f"(names: {', '.join(threshold_names())})")
    parser.add_argument("--no-trivial-gate", dest="trivial_gate", action="store_false",
                        help="give PASS/MARGINAL on the thresholds alone, without requiring "
                             "the trial to beat copy_last, context_mean and orth_mean")
    return parser


def threshold_names() -> list[str]:
    """The numeric Criteria fields, which --threshold sets."""
    return [field.name for field in dataclasses.fields(Criteria) if field.type == "float"]


def parse_criteria(settings: list[str], trivial_gate: bool = True) -> Criteria:
    """Criteria from NAME=VALUE strings (and whether PASS/MARGINAL need beating the trivial
    predictors); raises AnalysisError naming a bad one."""
    names = set(threshold_names())
    values = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        try:
            if name not in names:
                raise ValueError
            values[name] = float(value)
        except ValueError:
            raise AnalysisError(f"--threshold {setting!r} is not NAME=NUMBER with NAME one "
                                f"of {', '.join(sorted(names))}.") from None
    return Criteria(**values, require_beating_trivial=trivial_gate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        criteria = parse_criteria(args.threshold, args.trivial_gate)
        if args.top < 1:
            raise AnalysisError(f"--top {args.top} must be at least 1.")
        sweep, written = write_outputs(args.sweep, criteria, args.sort, args.top)
        exported = (export_best(sweep, args.sort, args.export_best)
                    if args.export_best else None)
    except (results.NotASweep, AnalysisError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except EveryTrialFailed as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    sections = report(sweep, args.sort, args.top, written)
    if exported is not None:
        best_pt = Path(args.export_best) / "best.pt"
        sections["files"] = pd.concat([sections["files"], pd.DataFrame(
            {"file": [str(best_pt), str(Path(args.export_best) / "config.json")]})])
    formatter = {"table": lambda s: format_table(s, sweep, args.sort), "csv": format_csv,
                 "json": format_json}[args.format]
    print(formatter(sections))
    if exported is not None and args.format == "table":
        print(f"\nexported trial {exported.get('trial_id')} epoch {exported.get('epoch')} "
              f"(val_margin {exported.get('val_margin'):+.4f}); reload with: "
              f"from tune_p7.train import load_model; model = load_model('{best_pt}')")
        print(results.best_statement(sweep.trials, args.sort))
    return 0


if __name__ == "__main__":
    command.run(main)
