"""tune_p7.confirm: confidence intervals by hand, and a real confirm run on a real tiny sweep."""

import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tune_p7 import confirm, results



def test_t_interval_matches_the_textbook():
    stats = confirm.mean_interval(pd.Series([1.0, 2.0, 3.0]))
    half = 4.303 * 1.0 / math.sqrt(3)                   # t_{0.975, 2} s / sqrt(n)
    assert stats["mean"] == 2.0 and stats["std"] == 1.0 and stats["seeds_run"] == 3
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert math.isnan(confirm.mean_interval(pd.Series([0.5]))["ci_low"])
    assert confirm.t_quantile(30) == 2.042
    assert confirm.t_quantile(120) == pytest.approx(1.980, abs=0.002)
    assert confirm.t_quantile(2.7) == 4.303             # fractional df rounds down: wider


def test_welch_difference_of_two_samples():
    a, b = pd.Series([1.0, 2.0, 3.0]), pd.Series([0.0, 0.5, 1.0])
    va, vb = 1.0 / 3, 0.25 / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)   # 2.94 -> 2
    half = confirm.t_quantile(math.floor(df)) * math.sqrt(va + vb)
    diff = confirm.welch_difference(a, b)
    assert diff["difference"] == 1.5
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((1.5 - half, 1.5 + half))


@pytest.fixture(scope="module")
def confirmed(finished_sweep, tmp_path_factory):
    """confirm --top 1 --seeds 2 on a copy of the shared finished sweep (conftest: 4 cells,
    a diverging cell and 4 Optuna trials, 3 epochs); the copy keeps the original unchanged
    for the other tests that read it."""
    sweep_dir = tmp_path_factory.mktemp("confirm") / finished_sweep["dir"].name
    # Without the temporaries (".name.pid-n.tmp.ext") of an analysis that another test
    # process may be writing into the shared sweep at this moment: they come and go.
    shutil.copytree(finished_sweep["dir"], sweep_dir, ignore=shutil.ignore_patterns(".*.tmp*"))
    before = results.load_sweep(sweep_dir).trials
    run = subprocess.run([sys.executable, "-m", "tune_p7.confirm", sweep_dir, "--top", "1",
                          "--seeds", "2", "--max-concurrent", "2"],
                         capture_output=True, text=True, timeout=300)
    return sweep_dir, before, run


def test_confirm_reruns_top_configs_and_the_cell_on_new_seeds(confirmed):
    sweep_dir, before, run = confirmed
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trials = results.load_sweep(sweep_dir).trials
    reruns = trials[trials.phase == "confirm"]
    top = results.leaderboard(before[before.status != "error"], "val_margin").iloc[0]
    configs = 1 if top.cell == "baseline" else 2
    assert len(reruns) == 2 * configs and (reruns.status == "complete").all()
    assert set(reruns.seed) == {int(before.seed.max()) + 1, int(before.seed.max()) + 2}
    assert "baseline" in set(reruns.cell)
    assert (reruns.epochs_run == reruns.epochs).all()   # full budget, no ASHA
    assert results.best_statement(before) in run.stdout  # the best, and whether it beats


def test_confirm_reports_mean_and_interval_of_the_new_seeds_only(confirmed):
    sweep_dir, _, run = confirmed
    table = pd.read_parquet(sweep_dir / f"{confirm.SUMMARY_TABLE}.parquet")
    trials = results.load_sweep(sweep_dir).trials
    reruns = trials[trials.phase == "confirm"]
    cell = table[table.cell == "baseline"].iloc[0]
    values = reruns.loc[reruns.cell == "baseline", "val_margin"]
    assert cell.seeds_run == 2 and cell.val_margin_mean == pytest.approx(values.mean())
    half = 12.706 * values.std(ddof=1) / math.sqrt(2)
    assert cell.val_margin_ci_high == pytest.approx(values.mean() + half)
    source = trials[(trials.phase == "baseline") & (trials.cell == "baseline")].iloc[0]
    assert cell.original_val_margin == source.val_margin
    assert cell.beats_trivial == source.beats_trivial
    verdict = run.stdout.strip().splitlines()[-2]
    assert ("beyond noise" in verdict or "within noise" in verdict
            or "no searched config beats it" in verdict), verdict


def test_confirm_refuses_bad_arguments_with_exit_2(tmp_path, capsys):
    for args in ([tmp_path], [tmp_path, "--seeds", "0"]):
        assert confirm.main([str(arg) for arg in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
