"""Verdicts, flags, the trivial-predictor gate and the Pareto set: pure functions from the
trials/history/baselines DataFrames to columns.

    trials = annotate(trials, history, baselines, Criteria(pass_margin=0.15))

Every column is computed from columns of the tables (see docs/results.md for the
definitions), so anyone can recompute it from trials.parquet, history.parquet and
baselines.parquet. Flags are nullable booleans: <NA> where the data cannot tell (no epoch
reported yet, no trivial baseline for the trial's context). R@5 means the in-document
val_r_at_5 where the data has documents, else val_global_r_at_5 (window-level data has no
documents, so no in-document ranks): see :func:`r_at_5`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

PASS, MARGINAL, FAIL, WARM_UP, NO_DATA = "PASS", "MARGINAL", "FAIL", "warm-up", ""
FLAGS = {
    "backward": "val_margin < 0 at the last epoch, after the teacher warm-up",
    "train_val_sign_flip": "train_margin and val_margin of opposite sign at the last epoch",
    "collapse_after_warmup": "val_cos_next or val_cos_anchor fell by more than 30% in the "
                             "first epoch after the warm-up",
    "orthogonal_drift": "val_cos_anchor < 0.05 at the last epoch",
    "gate_stuck": "gate_weight_mean sat at one gate weight (every window full weight, or "
                  "every window down-weighted) in every epoch: the gate did not discriminate",
    "lambda_frozen": "learnable λ ended every epoch at its initial value",
    "below_copy_last": "val_cos_next or R@5 below the copy-last predictor's",
    "diverged": "a loss or metric became NaN/inf (TrainingDiverged)",
}
TRIVIAL = ("copy_last", "context_mean", "orth_mean")
R_AT_5 = "r_at_5"  # stands for val_r_at_5, or val_global_r_at_5 without documents (r_at_5)
BEAT_METRICS = ("val_margin", "val_cos_next", R_AT_5)
ANNOTATIONS = ("verdict", *FLAGS, "flags", "beats_trivial", "trivial_not_beaten", "pareto")


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the verdicts and flags; defaults are the original P7 criteria."""

    pass_margin: float = 0.20         # PASS: val_margin >= this ...
    pass_cos_next: float = 0.45       # ... and val_cos_next >= this ...
    pass_cos_anchor: float = 0.40     # ... and val_cos_anchor >= this
    marginal_margin: float = 0.10     # MARGINAL: not PASS, each at least its marginal value
    marginal_cos_next: float = 0.35
    marginal_cos_anchor: float = 0.30
    collapse_drop: float = 0.30       # collapse_after_warmup: relative drop above this
    orthogonal_cos_anchor: float = 0.05  # orthogonal_drift: val_cos_anchor below this
    tolerance: float = 1e-6           # "did not move" / "sat at" for lambda and gate weight
    require_beating_trivial: bool = True  # PASS/MARGINAL also need beats_trivial (the gate)


def verdicts(trials: pd.DataFrame, criteria: Criteria = Criteria(),
             beats_trivial: pd.Series | None = None) -> pd.Series:
    """PASS / MARGINAL / FAIL per trial from its last epoch.

    The thresholds are criteria's; with criteria.require_beating_trivial (the default)
    PASS and MARGINAL also need ``beats_trivial`` True (default: trials["beats_trivial"]),
    an unknown (<NA>) is not enough. No verdict while the data cannot tell: "" when no
    epoch was reported, WARM_UP ("warm-up") while every reported epoch was a teacher
    warm-up epoch (epochs_run <= warmup_epochs; the metrics jump when the warm-up ends).
    A failed trial (status error) is FAIL whatever its last reported epoch showed.
    """
    def at_least(prefix: str) -> pd.Series:
        return ((trials["val_margin"] >= getattr(criteria, f"{prefix}_margin"))
                & (trials["val_cos_next"] >= getattr(criteria, f"{prefix}_cos_next"))
                & (trials["val_cos_anchor"] >= getattr(criteria, f"{prefix}_cos_anchor")))

    if trials.empty or "val_margin" not in trials:
        return pd.Series(NO_DATA, index=trials.index, dtype="str")
    gate = np.ones(len(trials), dtype=bool)
    if criteria.require_beating_trivial:
        if beats_trivial is None:
            beats_trivial = trials.get("beats_trivial", pd.Series(pd.NA, index=trials.index))
        gate = beats_trivial.astype("boolean").fillna(False).to_numpy(dtype=bool)
    verdict = np.where(gate & at_least("pass"), PASS,
                       np.where(gate & at_least("marginal"), MARGINAL, FAIL))
    verdict = pd.Series(verdict, index=trials.index, dtype="str")
    verdict[trials["epochs_run"] <= _numeric(trials, "warmup_epochs").fillna(0)] = WARM_UP
    verdict[trials["epochs_run"] == 0] = NO_DATA
    verdict[trials["status"] == "error"] = FAIL
    return verdict


def flag_table(trials: pd.DataFrame, history: pd.DataFrame,
               baselines: pd.DataFrame | None, criteria: Criteria = Criteria()) -> pd.DataFrame:
    """One nullable boolean column per name in FLAGS, aligned with trials' index."""
    flags = pd.DataFrame(index=trials.index)
    has_data = trials["epochs_run"] > 0
    last = {name: _numeric(trials, name) for name in
            ("val_margin", "train_margin", "val_cos_anchor")}
    warmup = _numeric(trials, "warmup_epochs").fillna(0)
    flags["backward"] = (last["val_margin"] < 0) & (trials["epochs_run"] > warmup)
    flags["train_val_sign_flip"] = last["train_margin"] * last["val_margin"] < 0
    flags["orthogonal_drift"] = last["val_cos_anchor"] < criteria.orthogonal_cos_anchor
    per_trial = _per_trial_flags(trials, history, criteria)
    for name in ("collapse_after_warmup", "gate_stuck", "lambda_frozen", "diverged"):
        flags[name] = per_trial[name]
    flags["below_copy_last"] = _below_copy_last(trials, baselines)
    flags = flags[list(FLAGS)].astype("boolean")
    flags.loc[~has_data] = pd.NA
    error = trials.get("error", pd.Series("", index=trials.index)).fillna("").astype(str)
    flags.loc[error.str.contains("diverged", case=False), "diverged"] = True
    return flags


def r_at_5(frame: pd.DataFrame) -> pd.Series:
    """R@5 of each row (trial or trivial predictor): the in-document val_r_at_5 where it is a
    number, else val_global_r_at_5 (data without documents has no in-document ranks)."""
    return _numeric(frame, "val_r_at_5").fillna(_numeric(frame, "val_global_r_at_5"))


def _beat_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The BEAT_METRICS of each row as floats (R_AT_5 from :func:`r_at_5`)."""
    return pd.DataFrame({"val_margin": _numeric(frame, "val_margin"),
                         "val_cos_next": _numeric(frame, "val_cos_next"),
                         R_AT_5: r_at_5(frame)}, index=frame.index)


def trivial_comparison(trials: pd.DataFrame, baselines: pd.DataFrame | None) -> pd.DataFrame:
    """Whether each trial beats every trivial predictor on its own context, and where not.

    A trial beats a predictor when its val_margin, val_cos_next and R@5 are each strictly
    above the predictor's (a tie does not beat). Returns, aligned with trials' index:
    beats_trivial (nullable boolean: every predictor of TRIVIAL beaten on every metric) and
    trivial_not_beaten: the predictors not beaten, each with the metrics it is at least as
    good on (without the "val_" prefix), e.g. "copy_last(cos_next,r_at_5),orth_mean(margin)"
    (global_r_at_5 where the data has no documents); "" when it beats all. Both <NA>
    without an epoch, or without every trivial predictor's values for the trial's context.
    A NaN trial value (a diverged trial) beats nothing.
    """
    beats = pd.Series(pd.NA, index=trials.index, dtype="boolean")
    not_beaten = pd.Series(pd.NA, index=trials.index, dtype="str")
    if baselines is None or baselines.empty or "context" not in trials or trials.empty:
        return pd.DataFrame({"beats_trivial": beats, "trivial_not_beaten": not_beaten})
    own = _beat_values(trials)
    unknown = (trials["epochs_run"] <= 0).to_numpy(copy=True)
    gaps = [{} for _ in range(len(trials))]  # per trial: {predictor: [metrics not beaten]}
    for predictor in TRIVIAL:
        rows = baselines[baselines["predictor"] == predictor].drop_duplicates("context")
        rows = rows.set_index("context").reindex(trials["context"].to_numpy())
        reference = _beat_values(rows)
        unknown |= reference.isna().any(axis=1).to_numpy()
        r_at_5_name = np.where(_numeric(rows, "val_r_at_5").notna(), "r_at_5", "global_r_at_5")
        for metric in BEAT_METRICS:
            lost = ~(own[metric].to_numpy() > reference[metric].to_numpy())
            for row in np.flatnonzero(lost):
                name = r_at_5_name[row] if metric == R_AT_5 else metric.removeprefix("val_")
                gaps[row].setdefault(predictor, []).append(name)
    known = ~unknown
    beats[known] = [not gap for gap, ok in zip(gaps, known) if ok]
    not_beaten[known] = [",".join(f"{predictor}({','.join(metrics)})"
                                  for predictor, metrics in gap.items())
                         for gap, ok in zip(gaps, known) if ok]
    return pd.DataFrame({"beats_trivial": beats, "trivial_not_beaten": not_beaten})


def pareto(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial is in the Pareto set on (val_margin, val_cos_next, R@5), higher
    better: no other trial is at least as good on all three and better on one.

    Candidates are the trials that reported an epoch, did not fail, are not confirm re-runs
    and have all three values; the others are <NA>. Equal trials are all in the set.
    """
    result = pd.Series(pd.NA, index=trials.index, dtype="boolean")
    if trials.empty:
        return result
    values = _beat_values(trials)
    candidate = ((trials["epochs_run"] > 0) & (trials["status"] != "error")
                 & (trials.get("phase", "") != "confirm") & values.notna().all(axis=1))
    points = values[candidate].to_numpy(dtype=float)              # (n, 3)
    at_least = (points[None, :, :] >= points[:, None, :]).all(-1)  # [i, j]: j >= i on all
    better = (points[None, :, :] > points[:, None, :]).any(-1)     # [i, j]: j > i on one
    result[candidate] = ~(at_least & better).any(axis=1)
    return result


def annotate(trials: pd.DataFrame, history: pd.DataFrame, baselines: pd.DataFrame | None,
             criteria: Criteria = Criteria()) -> pd.DataFrame:
    """trials with the ANNOTATIONS columns (re)computed; "flags" lists the raised flags."""
    trials = trials.drop(columns=[c for c in ANNOTATIONS if c in trials.columns])
    if trials.empty:
        return trials.reindex(columns=[*trials.columns, *ANNOTATIONS])
    flags = flag_table(trials, history, baselines, criteria)
    raised = flags.fillna(False).astype(bool)
    names = raised.apply(lambda row: ",".join(name for name in FLAGS if row[name]),
                         axis=1).astype("str")
    trivial = trivial_comparison(trials, baselines)
    return trials.assign(verdict=verdicts(trials, criteria, trivial["beats_trivial"]), **flags,
                         flags=names, **trivial, pareto=pareto(trials))


def _numeric(frame: pd.DataFrame, name: str) -> pd.Series:
    """frame[name] as floats (NaN where missing or not a number)."""
    if name in frame:
        return pd.to_numeric(frame[name], errors="coerce").astype(float)
    return pd.Series(math.nan, index=frame.index)


def _below_copy_last(trials: pd.DataFrame, baselines: pd.DataFrame | None) -> pd.Series:
    if baselines is None or baselines.empty or "context" not in trials:
        return pd.Series(pd.NA, index=trials.index, dtype="boolean")
    copy_last = baselines[baselines["predictor"] == "copy_last"].set_index("context")
    reference = _beat_values(copy_last.reindex(trials["context"].to_numpy()))
    own = _beat_values(trials)
    below = pd.Series(False, index=trials.index, dtype="boolean")
    for metric in ("val_cos_next", R_AT_5):
        below |= pd.Series(own[metric].to_numpy() < reference[metric].to_numpy(),
                           index=trials.index)
    known = reference[["val_cos_next", R_AT_5]].notna().all(axis=1).to_numpy()
    below[~known] = pd.NA
    return below


def _per_trial_flags(trials: pd.DataFrame, history: pd.DataFrame,
                     criteria: Criteria) -> pd.DataFrame:
    """The history-based flags, one row per trial (same index as trials)."""
    groups = ({key: epochs.sort_values("epoch") for key, epochs in
               history.groupby(["experiment", "trial_id"], sort=False)}
              if not history.empty else {})
    rows = []
    for _, trial in trials.iterrows():
        epochs = groups.get((trial["experiment"], trial["trial_id"]))
        rows.append(_history_flags(trial, epochs, criteria) if epochs is not None
                    else dict.fromkeys(("collapse_after_warmup", "gate_stuck",
                                        "lambda_frozen", "diverged"), pd.NA))
    return pd.DataFrame(rows, index=trials.index)


def _history_flags(trial: pd.Series, epochs: pd.DataFrame, criteria: Criteria) -> dict:
    """collapse_after_warmup, gate_stuck, lambda_frozen, diverged for one trial's epochs."""
    return {"collapse_after_warmup": _collapsed(trial, epochs, criteria),
            "gate_stuck": _gate_stuck(trial, epochs, criteria),
            "lambda_frozen": _lambda_frozen(trial, epochs, criteria),
            "diverged": _non_finite(epochs)}


def _non_finite(epochs: pd.DataFrame) -> bool:
    """Any NaN/inf among the losses and margins (retrieval may be NaN by design: no documents)."""
    names = [c for c in epochs.columns if "loss" in c or c.endswith("margin")]
    values = epochs[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return bool(not np.isfinite(values).all())


def _collapsed(trial: pd.Series, epochs: pd.DataFrame, criteria: Criteria):
    """Relative drop of val_cos_next or val_cos_anchor from the last warm-up epoch to the next."""
    warmup = int(trial.get("warmup_epochs", 0) or 0)
    by_epoch = epochs.set_index("epoch")
    if warmup < 1 or warmup + 1 not in by_epoch.index or warmup not in by_epoch.index:
        return pd.NA
    for metric in ("val_cos_next", "val_cos_anchor"):
        before, after = by_epoch.at[warmup, metric], by_epoch.at[warmup + 1, metric]
        if before - after > criteria.collapse_drop * abs(before):
            return True
    return False


def _gate_stuck(trial: pd.Series, epochs: pd.DataFrame, criteria: Criteria):
    """gate_weight_mean equal to 1 or to gate_low_weight in every epoch.

    The gate weights depend on the data windows only, so their mean is the same in every
    epoch by design; what "stuck" means is that the mean equals one of the two weights: the
    gate treated every window alike (the original bug gave 0.25 everywhere).
    """
    if "gate_weight_mean" not in epochs:
        return pd.NA
    low = float(trial.get("gate_low_weight", 0.25))
    values = epochs["gate_weight_mean"].to_numpy(dtype=float)
    return bool(any(np.all(np.abs(values - weight) <= criteria.tolerance)
                    for weight in (1.0, low)))


def _lambda_frozen(trial: pd.Series, epochs: pd.DataFrame, criteria: Criteria):
    """A learnable λ whose value at the end of every epoch equals its initial value."""
    if not bool(trial.get("learn_lambda", True)) or "anchor_lambda" not in epochs:
        return False
    start = float(trial["anchor_lambda"])
    return bool(np.all(np.abs(epochs["anchor_lambda"].to_numpy(dtype=float) - start)
                       <= criteria.tolerance))
