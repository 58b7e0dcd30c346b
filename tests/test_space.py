"""Search space files: the shipped spaces, the three kinds of searched setting (float range,
integer range, choices) checked against TrainConfig, any profile name, one-sentence refusals
naming file and key, typed trials columns, and a real tiny sweep over every kind."""

import copy
import json
import subprocess
import sys

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from tune_p7 import sweep
from tune_p7.config import TrainConfig
from tune_p7.space import (DEFAULT_SPACE, Choices, FloatRange, IntRange, SpaceError,
                           from_spec, load_space, observed_param, searched_lambda_range,
                           typed_settings)

EXAMPLE_SPACE = DEFAULT_SPACE.parent / "architecture.yaml"


@pytest.fixture
def write_space(tmp_path):
    """Write the shipped space with ``change(content)`` applied; returns the path."""
    def write(change=None, text=None):
        path = tmp_path / "space.yaml"
        if text is None:
            content = copy.deepcopy(yaml.safe_load(DEFAULT_SPACE.read_text()))
            if change:
                change(content)
            text = yaml.safe_dump(content)
        path.write_text(text)
        return path
    return write


def test_shipped_space_has_the_four_baseline_cells():
    space = load_space()
    cells = {cell["cell"]: (cell["context"], cell["margin"], cell["anchor_lambda"])
             for cell in space.cell_configs("quick")}
    assert cells == {"baseline": (5, 0.07, 0.8), "strong_anchor": (5, 0.07, 0.6),
                     "higher_margin": (5, 0.10, 0.8), "larger_context": (7, 0.07, 0.8)}
    assert {name: (r.low, r.high, r.log) for name, r in space.params.items()} == {
        "margin": (0.02, 0.20, False), "temperature": (0.02, 0.20, True),
        "anchor_lambda": (0.5, 0.95, False)}


def test_full_profile_uses_the_original_settings():
    config = load_space().base_config("full")
    assert (config["d_model"], config["layers"], config["epochs"], config["batch_size"]) == (
        512, 4, 10, 64)


def test_profile_grace_period_is_longer_than_the_warm_up():
    space = load_space()
    for name, profile in space.profiles.items():
        assert profile.grace_period > space.base_config(name)["warmup_epochs"]


def _set(path, value):
    def change(content):
        target = content
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize("change, key", [
    (_set(["fixed", "marginn"], 0.1), "fixed.marginn"),
    (_set(["cells", "baseline", "lr_typo"], 0.1), "cells.baseline.lr_typo"),
    (_set(["optuna", "params", "margin", "hgih"], 0.1), "optuna.params.margin.hgih"),
    (_set(["extra"], 1), "extra"),
], ids=["fixed", "cell", "range", "top"])
def test_unknown_key_is_refused_naming_file_and_key(write_space, change, key):
    path = write_space(change)
    with pytest.raises(SpaceError, match=f"{path}: unknown key '{key}'"):
        load_space(path)


def test_empty_range_is_refused(write_space):
    path = write_space(_set(["optuna", "params", "margin"], {"low": 0.2, "high": 0.02}))
    with pytest.raises(SpaceError, match=r"key 'optuna.params.margin' has an empty range"):
        load_space(path)


def test_cell_outside_the_space_is_refused(write_space):
    path = write_space(_set(["cells", "higher_margin", "margin"], 0.5))
    with pytest.raises(SpaceError, match=r"key 'cells.higher_margin.margin' \(0.5\) lies outside"):
        load_space(path)


def test_malformed_yaml_is_refused_with_its_line(write_space):
    path = write_space(text="cells:\n  baseline: {context: 5\nfixed: {}\n")
    with pytest.raises(SpaceError, match=r"is not valid YAML .*line \d+"):
        load_space(path)


def test_wrong_type_is_refused(write_space):
    path = write_space(_set(["fixed", "lr"], "fast"))
    with pytest.raises(SpaceError, match=r"key 'fixed.lr' must be float, not 'fast'"):
        load_space(path)


def test_bf16_reads_the_booleans_of_older_files_and_refuses_other_words(write_space):
    cells = load_space(write_space(_set(["fixed", "bf16"], True))).cell_configs("quick")
    settings = {k: v for k, v in cells[0].items() if k not in ("phase", "cell")}
    assert TrainConfig.from_dict(settings).bf16 == "on"
    with pytest.raises(SpaceError, match=r"bf16 must be one of auto, on, off \(or a boolean\), "
                                         r"not 'fast'"):
        load_space(write_space(_set(["fixed", "bf16"], "fast")))


def test_grace_period_within_the_warm_up_is_refused(write_space):
    path = write_space(_set(["profiles", "quick", "asha", "grace_period"], 1))
    with pytest.raises(SpaceError, match=r"'profiles.quick.asha.grace_period' \(1\) must be "
                                         r"longer than the teacher warm-up"):
        load_space(path)


def test_cells_learn_lambda_in_the_original_range_and_optuna_trials_in_the_searched_one():
    space = load_space()
    assert {(cell["lambda_min"], cell["lambda_max"]) for cell in space.cell_configs("quick")} \
        == {(0.6, 0.9)}
    assert searched_lambda_range(space.param_specs()) == {"lambda_min": 0.5, "lambda_max": 0.95}


def test_a_cell_lambda_outside_its_learnable_range_is_refused(write_space):
    path = write_space(_set(["cells", "strong_anchor", "anchor_lambda"], 0.55))
    with pytest.raises(SpaceError, match=r"key 'cells.strong_anchor' gives an invalid trial "
                                         r"config \(anchor_lambda 0.55 lies outside its "
                                         r"learnable range \[0.6, 0.9\]"):
        load_space(path)


def test_command_line_settings_are_refused_in_the_file(write_space):
    path = write_space(_set(["fixed", "seed"], 3))
    with pytest.raises(SpaceError, match=r"key 'fixed.seed' is set on the command line \(--seed\)"):
        load_space(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(SpaceError, match="cannot be read"):
        load_space(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------
# Kinds of searched setting, profiles


def test_example_space_searches_a_categorical_an_integer_and_a_log_float_setting():
    space = load_space(EXAMPLE_SPACE)
    assert space.optuna_distributions() == {
        "architecture": CategoricalDistribution(("transformer", "lstm")),
        "layers": IntDistribution(1, 4, step=1),
        "lr": FloatDistribution(0.0001, 0.003, log=True),
        "batch_size": CategoricalDistribution((32, 64, 128))}
    assert list(space.profiles) == ["quick", "full", "smoke"]
    assert space.profile("smoke").train["d_model"] == 16


def test_specs_survive_sweep_json_and_older_specs_read_as_float_ranges():
    space = load_space(EXAMPLE_SPACE)
    saved = json.loads(json.dumps(space.param_specs()))
    assert {name: from_spec(spec) for name, spec in saved.items()} == space.params
    assert saved["layers"] == {"kind": "int", "low": 1, "high": 4, "step": 1, "log": False}
    assert from_spec({"low": 0.02, "high": 0.2, "log": True}) == FloatRange(0.02, 0.2, True)


def test_an_unknown_profile_is_refused_listing_the_defined_ones():
    with pytest.raises(SpaceError) as error:
        load_space(EXAMPLE_SPACE).profile("huge")
    assert str(error.value) == (f"{EXAMPLE_SPACE} defines no profile 'huge'; pass --profile "
                                f"with one of quick, full, smoke.")


def test_a_profile_of_any_name_runs_and_quick_stays_the_default(write_space, tmp_path, capsys):
    def rename(content):
        content["profiles"] = {"laptop": content["profiles"]["quick"]}
    path = write_space(rename)
    common = ["--space", str(path), "--storage-path", str(tmp_path), "--dry-run"]
    assert sweep.main([*common, "--profile", "laptop"]) == 0
    assert "profile laptop" in capsys.readouterr().out
    assert sweep.main(common) == 2
    assert capsys.readouterr().err == (f"error: {path} defines no profile 'quick'; pass "
                                       f"--profile with one of laptop.\n")


def _search(**params):
    """Add searched settings to the shipped space's optuna.params."""
    def change(content):
        content["optuna"]["params"].update(params)
    return change


BAD_SPECS = {
    "unknown field": (_search(layerz={"low": 1, "high": 3}),
                      "key 'optuna.params.layerz' is not a TrainConfig field; search one of "
                      "anchor_lambda, architecture, batch_size, bf16, context, d_model, "
                      "dropout, eval_batch_size, gate_low_weight, gate_threshold, "
                      "global_queries, grad_clip, hard_negatives, heads, lambda_max, "
                      "lambda_min, layers, learn_lambda, lr, margin, teacher_threshold, "
                      "temperature, train_eval_windows, warmup_epochs, weight_decay, "
                      "weight_margin, weight_rank, weight_teacher."),
    "empty choices": (_search(batch_size={"choices": []}),
                      "key 'optuna.params.batch_size.choices' must be a non-empty list of int "
                      "values, not []; list the values to try."),
    "integer range on a float field": (
        _search(dropout={"low": 0, "high": 1, "step": 1}),
        "key 'optuna.params.dropout' has a step, but it is a float setting, searched as "
        "{low, high, log}; remove step (integer ranges are for int settings)."),
    "float bounds on an int field": (
        _search(layers={"low": 1.5, "high": 4}),
        "key 'optuna.params.layers' is an integer range (an int setting) and needs integer "
        "low and high (got low 1.5); write whole numbers."),
    "low not below high": (_search(layers={"low": 3, "high": 3}),
                           "key 'optuna.params.layers' has an empty range (low 3 is not below "
                           "high 3); make low smaller than high."),
    "wrong choice type": (_search(batch_size={"choices": [32, "big"]}),
                          "key 'optuna.params.batch_size.choices[1]' must be int, not 'big'; "
                          "fix the value."),
    "number for a string field": (_search(architecture={"choices": ["lstm", 2]}),
                                  "key 'optuna.params.architecture.choices[1]' must be str, "
                                  "not 2; fix the value."),
    "range on a string field": (_search(architecture={"low": 0, "high": 1}),
                                "key 'optuna.params.architecture' is a range, but "
                                "architecture is a str setting; search it with "
                                "{choices: [...]}."),
    "repeated choice": (_search(hard_negatives={"choices": [4, 8, 4]}),
                        "key 'optuna.params.hard_negatives.choices' lists a value twice "
                        "([4, 8, 4]); list each value once."),
    "log with a step": (_search(hard_negatives={"low": 2, "high": 8, "step": 2, "log": True}),
                        "key 'optuna.params.hard_negatives' is log-scaled with step 2; Optuna "
                        "samples a log integer range only with step 1, so drop step or log."),
    "high off the step grid": (_search(hard_negatives={"low": 0, "high": 9, "step": 2}),
                               "key 'optuna.params.hard_negatives' has high 9 off the step "
                               "grid (low 0 plus multiples of 2); make high - low a multiple "
                               "of step."),
    "not a mapping": (_search(margin=0.1),
                      "key 'optuna.params.margin' must be a mapping ({low, high} or "
                      "{choices: [...]}), not float; see search_spaces/p7.yaml."),
    "command-line field": (_search(seed={"low": 0, "high": 3}),
                           "key 'optuna.params.seed' is set on the command line (--seed), so "
                           "it cannot be searched; remove it."),
    "the budget": (_search(epochs={"low": 2, "high": 9}),
                   "key 'optuna.params.epochs' is the trial budget (ASHA's max_t), so it "
                   "cannot be searched; set it in the profile or with --epochs."),
    "cell outside the choices": (
        _search(architecture={"choices": ["lstm"]}),
        "the TrainConfig default of architecture (cell baseline) ('transformer') lies outside "
        "'optuna.params.architecture' ({lstm}); move the cell inside or widen the search."),
    "cell outside the integer range": (
        _search(context={"low": 3, "high": 6}),
        "key 'cells.larger_context.context' (7) lies outside 'optuna.params.context' "
        "(integer 3–6); move the cell inside or widen the search."),
    "setting off the step grid": (
        _search(hard_negatives={"low": 1, "high": 9, "step": 2}),
        "key 'fixed.hard_negatives' (4) lies outside 'optuna.params.hard_negatives' (integer "
        "1–9 step 2); move the cell inside or widen the search."),
    "profile setting outside the range": (
        _search(layers={"low": 1, "high": 2}),
        "key 'profiles.full.train.layers' (4) lies outside 'optuna.params.layers' "
        "(integer 1–2); move the cell inside or widen the search."),
    "invalid searched value": (
        _search(d_model={"choices": [128, 130, 512]}),
        "key 'optuna.params.d_model' at 130 gives an invalid trial config (d_model 130 must "
        "be divisible by heads 8); fix that setting."),
    # d_model 24 and heads 16 are each valid with every profile's heads / d_model.
    "invalid combination": (
        _search(d_model={"choices": [24, 128, 512]}, heads={"choices": [4, 8, 16]}),
        "key 'optuna.params' at d_model=24, heads=16 gives an invalid trial config "
        "(d_model 24 must be divisible by heads 16); fix that setting."),
    "bad profile name": (_set(["profiles", "Big-One"], {}),
                         "key 'profiles.Big-One' is not a valid profile name; use lower-case "
                         "letters, digits and underscores."),
}


@pytest.mark.parametrize("change, message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_is_one_sentence_naming_file_and_key(write_space, change, message):
    path = write_space(change)
    with pytest.raises(SpaceError) as error:
        load_space(path)
    assert str(error.value) == f"{path}: {message}"


def test_the_sweep_refuses_a_bad_spec_with_exit_code_2(write_space, tmp_path, capsys):
    change, message = BAD_SPECS["float bounds on an int field"]
    path = write_space(change)
    code = sweep.main(["--space", str(path), "--storage-path", str(tmp_path), "--name", "bad"])
    assert code == 2
    assert capsys.readouterr().err == f"error: {path}: {message}\n"
    assert not (tmp_path / "bad").exists()


def test_float_choices_accept_a_cell_written_as_an_integer(write_space):
    def change(content):
        content["optuna"]["params"]["weight_margin"] = {"choices": [0.5, 1.0]}
        content["fixed"]["weight_margin"] = 1
    space = load_space(write_space(change))
    assert space.params["weight_margin"] == Choices((0.5, 1.0))
    assert space.params["weight_margin"].contains(1) and not Choices((1, 2)).contains(True)


# ---------------------------------------------------------------------------------------
# Readers of a sweep: typed columns, the kind of each varied setting


def test_typed_settings_give_each_complete_field_its_declared_type():
    frame = pd.DataFrame({"layers": [2.0, 3.0], "architecture": pd.Series(["lstm", "x"],
                                                                          dtype=object),
                          "learn_lambda": [True, None], "lr": [1, 2], "status": ["a", 1]})
    typed = typed_settings(frame)
    assert typed.dtypes.astype(str).to_dict() == {
        "layers": "int64", "architecture": "str", "learn_lambda": "object", "lr": "float64",
        "status": "object"}
    assert typed["layers"].tolist() == [2, 3]
    empty = typed_settings(pd.DataFrame(columns=["layers", "architecture", "learn_lambda"]))
    assert empty.dtypes.astype(str).to_dict() == {"layers": "int64", "architecture": "str",
                                                  "learn_lambda": "bool"}


@pytest.mark.parametrize("spec, values, expected", [
    (None, [5, 7, 5], IntRange(5, 7)),
    (None, [0.1, 0.3], FloatRange(0.1, 0.3)),
    (None, ["transformer", "lstm"], Choices(("lstm", "transformer"))),
    (None, [True, False], Choices((False, True))),
    (None, [5, 5], None),
    ({"kind": "float", "low": 0.02, "high": 0.2, "log": True}, [0.01, 0.1],
     FloatRange(0.01, 0.2, True)),
    ({"kind": "int", "low": 2, "high": 8, "step": 2, "log": False}, [4, 8],
     IntRange(2, 8, 2)),
    ({"kind": "int", "low": 2, "high": 8, "step": 2, "log": False}, [3], IntRange(2, 8, 1)),
    ({"kind": "categorical", "choices": [32, 64]}, [64, 16], Choices((32, 64, 16))),
], ids=["ints", "floats", "strings", "booleans", "one value", "log range widened",
        "on the grid", "off the grid", "choices widened"])
def test_observed_param_is_the_spec_widened_or_inferred_from_the_values(spec, values, expected):
    assert observed_param(spec, values) == expected


# ---------------------------------------------------------------------------------------
# A real sweep over every kind


def test_a_sweep_over_every_kind_lands_typed_values_from_the_space(tiny_data, tmp_path):
    """The example space's smoke profile: architecture and batch_size (choices), layers
    (integer range), lr (log float range); 4 cells + 3 Optuna trials of 3 epochs."""
    done = subprocess.run([sys.executable, "-m", "tune_p7.sweep", "--space", str(EXAMPLE_SPACE),
                           "--profile", "smoke", "--data", str(tiny_data), "--storage-path",
                           str(tmp_path), "--name", "kinds", "--num-samples", "3"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("over architecture {transformer, lstm}, layers integer 1–4, lr 0.0001–0.003 log, "
            "batch_size {32, 64, 128}") in done.stdout
    sweep_dir = tmp_path / "kinds"
    schema = pq.read_schema(sweep_dir / "trials.parquet")
    assert {name: str(schema.field(name).type) for name in
            ("architecture", "layers", "lr", "batch_size")} == {
        "architecture": "large_string", "layers": "int64", "lr": "double",
        "batch_size": "int64"}
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    cells, searched = trials[trials.phase == "baseline"], trials[trials.phase == "optuna"]
    assert len(cells) == 4 and len(searched) == 3
    assert (cells.architecture == "transformer").all() and (cells.layers == 1).all()
    assert searched.architecture.isin(["transformer", "lstm"]).all()
    assert searched.layers.between(1, 4).all()
    assert searched.batch_size.isin([32, 64, 128]).all()
    assert searched.lr.between(0.0001, 0.003).all()
    study = optuna.load_study(study_name="kinds", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    distributions = study.trials[-1].distributions
    assert distributions["architecture"] == CategoricalDistribution(("transformer", "lstm"))
    assert distributions["layers"] == IntDistribution(1, 4)
    assert distributions["batch_size"] == CategoricalDistribution((32, 64, 128))
    assert sorted(t.params["layers"] for t in study.trials) == sorted(trials.layers.tolist())
    assert (sweep_dir / "parallel_coordinates.png").stat().st_size > 10_000
