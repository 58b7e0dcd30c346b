"""Search space files: the shipped space, and one-sentence refusals naming file and key."""

import copy

import pytest
import yaml

from tune_p7.config import TrainConfig
from tune_p7.space import DEFAULT_SPACE, SpaceError, load_space


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


def test_searched_lambda_outside_the_learnable_range_is_refused(write_space):
    path = write_space(_set(["fixed", "lambda_min"], 0.6))
    with pytest.raises(SpaceError, match=r"key 'optuna.params \(every 'low' end\)' gives an "
                                         r"invalid trial config"):
        load_space(path)


def test_command_line_settings_are_refused_in_the_file(write_space):
    path = write_space(_set(["fixed", "seed"], 3))
    with pytest.raises(SpaceError, match=r"key 'fixed.seed' is set on the command line \(--seed\)"):
        load_space(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(SpaceError, match="cannot be read"):
        load_space(tmp_path / "nope.yaml")
