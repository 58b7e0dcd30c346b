"""Search spaces: ``search_spaces/*.yaml`` read into baseline cells, Optuna distributions and profiles.

    space = load_space("search_spaces/p7.yaml")
    profile = space.profile("quick")              # any profile the file defines
    configs = space.cell_configs("quick")         # [{...TrainConfig fields, phase, cell}]
    space.optuna_distributions()                  # {"margin": FloatDistribution, ...}

The file has four sections (see search_spaces/p7.yaml): ``cells`` (name -> TrainConfig
settings, run at full budget), ``optuna`` (``params``: TrainConfig field -> spec;
``startup_trials``), ``fixed`` (TrainConfig settings of every trial) and ``profiles``
(name -> ``train`` settings, ``optuna_trials``, ``asha``). A spec is one of three kinds,
checked against the type TrainConfig declares for the field:

- ``{low, high, log}``: a float range (float fields), FloatRange;
- ``{low, high, step, log}``: an integer range (int fields; step 1 by default), IntRange;
- ``{choices: [...]}``: a categorical (any field; every choice of the field's type), Choices.

Anything malformed, unknown, empty or inconsistent raises :class:`SpaceError` with one
sentence naming the file and the key. Nothing here knows about Ray or training.
"""

from __future__ import annotations

import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from tune_p7.config import TrainConfig
from tune_p7.files import UnreadableFile, read_yaml

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "p7.yaml"
DEFAULT_PROFILE = "quick"
SECTIONS = ("cells", "optuna", "fixed", "profiles")
# Set by the command line (--seed, --device, --cpus-per-trial), never by the file.
COMMAND_LINE_FIELDS = {"seed": "--seed", "device": "--device", "threads": "--cpus-per-trial"}
# What every trial must share to be compared: never searched. {field: (what it is, flag)}
BUDGET_FIELDS = {"epochs": ("the trial budget (ASHA's max_t)", "--epochs"),
                 "epoch_windows": ("the size of every trial's epoch", "--epoch-windows"),
                 "max_val_windows": ("the validation windows every trial is compared on",
                                     "--max-val-windows")}
FIELD_TYPES: dict[str, type] = typing.get_type_hints(TrainConfig)
# Values a file may give besides the declared type: older files' bf16 true/false (on/off).
ALSO_READ: dict[str, tuple] = {"bf16": (str, bool)}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # cell and profile names


class SpaceError(ValueError):
    """A bad search space file; the message is one sentence naming the file and key."""


# ---------------------------------------------------------------------------------------
# The three kinds of searched setting


@dataclass(frozen=True)
class FloatRange:
    """Optuna FloatDistribution: low..high inclusive, log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    def contains(self, value) -> bool:
        return _is_number(value) and self.low <= value <= self.high

    def ends(self) -> tuple:
        """The values whose trial configs are checked before a sweep starts."""
        return self.low, self.high

    def optuna(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

    def spec(self) -> dict:
        """The plain form saved in sweep.json (read back by :func:`from_spec`)."""
        return {"kind": "float", "low": self.low, "high": self.high, "log": self.log}

    def describe(self) -> str:
        return f"{self.low:g}–{self.high:g}{' log' if self.log else ''}"

    def widened(self, values: list) -> "FloatRange":
        """The range stretched to hold every value (a trial read back from a sweep)."""
        return FloatRange(min([self.low, *values]), max([self.high, *values]), self.log)


@dataclass(frozen=True)
class IntRange:
    """Optuna IntDistribution: low, low + step, ... high; log-uniform (step 1) when ``log``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def contains(self, value) -> bool:
        return (_is_integer(value) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def ends(self) -> tuple:
        return self.low, self.high

    def values(self) -> list[int]:
        """Every value the range can give."""
        return list(range(self.low, self.high + 1, self.step))

    def optuna(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def spec(self) -> dict:
        return {"kind": "int", "low": self.low, "high": self.high, "step": self.step,
                "log": self.log}

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"integer {self.low}–{self.high}{step}{' log' if self.log else ''}"

    def widened(self, values: list) -> "IntRange":
        """Stretched to hold every value; step 1 once a value lies off the step grid."""
        ints = [int(value) for value in values]
        if all(self.contains(value) for value in ints):
            return self
        return IntRange(min([self.low, *ints]), max([self.high, *ints]), 1, self.log)


@dataclass(frozen=True)
class Choices:
    """Optuna CategoricalDistribution: one of ``choices`` (in the file's order)."""

    choices: tuple

    def contains(self, value) -> bool:
        # 1 == 1.0 matches (a float setting written as 1), True == 1 does not.
        return any(value == choice and isinstance(value, bool) == isinstance(choice, bool)
                   for choice in self.choices)

    def ends(self) -> tuple:
        return self.choices

    def values(self) -> list:
        return list(self.choices)

    def optuna(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def spec(self) -> dict:
        return {"kind": "categorical", "choices": list(self.choices)}

    def describe(self) -> str:
        return "{" + ", ".join(str(choice) for choice in self.choices) + "}"

    def widened(self, values: list) -> "Choices":
        """The choices plus any other value seen, in order of appearance."""
        return Choices(tuple(dict.fromkeys([*self.choices, *values])))


Param = FloatRange | IntRange | Choices


def searched_lambda_range(params: dict) -> dict:
    """The learnable-λ bounds of the Optuna trials from the searched specs ({field:
    Param.spec()}): the span of anchor_lambda's range or choices when it is searched, so
    every sampled initial λ is valid and λ learns inside what was searched; {} when it is
    not. The baseline cells keep their own lambda_min/lambda_max (TrainConfig's default is
    the original [0.6, 0.9])."""
    if "anchor_lambda" not in params:
        return {}
    ends = from_spec(params["anchor_lambda"]).ends()
    return {"lambda_min": float(min(ends)), "lambda_max": float(max(ends))}


def from_spec(spec: dict) -> Param:
    """A searched setting from its sweep.json form (``Param.spec()``); a spec without
    "kind" (a sweep.json written before integer and categorical settings) is a float range."""
    kind = spec.get("kind", "float")
    if kind == "categorical":
        return Choices(tuple(spec["choices"]))
    if kind == "int":
        return IntRange(int(spec["low"]), int(spec["high"]), int(spec.get("step", 1)),
                        bool(spec.get("log", False)))
    return FloatRange(float(spec["low"]), float(spec["high"]), bool(spec.get("log", False)))


def observed_param(spec: dict | None, values: list) -> Param | None:
    """How a reader of a sweep treats one varied setting: the plan's spec (sweep.json) widened
    to hold every trial's value; for a field only the cells vary (no spec), a kind inferred
    from the values: integers -> IntRange, numbers -> FloatRange, strings and booleans ->
    Choices (sorted). None when there is no spec and at most one distinct value.

    values: the setting's non-missing values, as plain Python values (``Series.tolist()``).
    """
    if spec:
        return from_spec(spec).widened(values)
    distinct = list(dict.fromkeys(values))
    if len(distinct) < 2:
        return None
    if all(_is_integer(value) for value in distinct):
        return IntRange(min(distinct), max(distinct))
    if all(_is_number(value) for value in distinct):
        return FloatRange(float(min(distinct)), float(max(distinct)))
    return Choices(tuple(sorted(distinct, key=str)))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------
# The space


@dataclass(frozen=True)
class Profile:
    """A named budget: TrainConfig settings, number of Optuna trials, ASHA rungs."""

    train: dict
    optuna_trials: int
    grace_period: int             # epochs before ASHA may stop a trial
    reduction_factor: float       # ASHA keeps 1/reduction_factor of the trials at each rung


@dataclass(frozen=True)
class SearchSpace:
    path: str                     # the file, as named in messages
    cells: dict[str, dict]        # cell name -> TrainConfig settings of that cell
    params: dict[str, Param]      # searched TrainConfig field -> its range or choices
    startup_trials: int           # TPE samples at random until this many trials are done
    fixed: dict                   # TrainConfig settings of every trial
    profiles: dict[str, Profile]  # in the file's order
    content: dict                 # the parsed file, for sweep.json

    def profile(self, name: str) -> Profile:
        """The profile ``name``; raises SpaceError listing the profiles the file defines."""
        if name not in self.profiles:
            raise SpaceError(f"{self.path} defines no profile '{name}'; pass --profile with "
                             f"one of {', '.join(self.profiles)}.")
        return self.profiles[name]

    def base_config(self, profile: str, overrides: dict | None = None) -> dict:
        """Settings shared by every trial of ``profile``: fixed, then profile, then overrides."""
        return {**self.fixed, **self.profile(profile).train, **(overrides or {})}

    def cell_configs(self, profile: str, overrides: dict | None = None) -> list[dict]:
        """One trial config per cell: every TrainConfig field (defaults filled in), labelled
        phase="baseline", cell=<name>."""
        base = {**TrainConfig().to_dict(), **self.base_config(profile, overrides)}
        return [{**base, **settings, "phase": "baseline", "cell": name}
                for name, settings in self.cells.items()]

    def optuna_distributions(self) -> dict:
        """{field: optuna Float/Int/CategoricalDistribution} for OptunaSearch(space=...)."""
        return {name: value.optuna() for name, value in self.params.items()}

    def param_specs(self) -> dict[str, dict]:
        """{field: spec}: the searched settings as plain values (sweep.json), e.g.
        {"kind": "int", "low": 1, "high": 4, "step": 1, "log": false}; see from_spec."""
        return {name: value.spec() for name, value in self.params.items()}


def load_space(path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """Read and check a search space file; raises SpaceError naming file and key."""
    name = str(path)
    try:
        content = read_yaml(path)
    except UnreadableFile as error:
        raise SpaceError(f"{name}: {error}; fix the file or pass another one with "
                         f"--space.") from None
    return parse_space(content, name)


def parse_space(content, name: str) -> SearchSpace:
    """Check a search space's parsed content (as in a file, or as saved in sweep.json);
    ``name`` is the file named in messages. Raises SpaceError naming name and key."""
    if not isinstance(content, dict):
        raise SpaceError(f"{name}: must be a mapping with keys {list(SECTIONS)}, not "
                         f"{type(content).__name__}; see search_spaces/p7.yaml.")
    _check_keys(content, SECTIONS, name, "", required=True)
    fixed = _settings(content["fixed"], name, "fixed")
    cells = _cells(content["cells"], name)
    params, startup_trials = _optuna(content["optuna"], name)
    profiles = _profiles(content["profiles"], name)
    space = SearchSpace(name, cells, params, startup_trials, fixed, profiles, content)
    for profile in profiles:
        check_profile(space, profile)
    return space


def check_profile(space: SearchSpace, profile: str, overrides: dict | None = None) -> None:
    """Raise SpaceError unless every trial of ``profile`` (with overrides) is a valid config.

    Checks each cell, each cell inside every searched range or choice list, each searched
    end (low and high of a range, every choice) alone and every combination of the ends,
    and the ASHA grace period against the teacher warm-up. The Optuna trials are checked
    with their own learnable-λ range (searched_lambda_range).
    """
    name, prefix = space.path, f"profiles.{profile}"
    base = space.base_config(profile, overrides)
    for config in space.cell_configs(profile, overrides):
        _check_config(config, name, f"key 'cells.{config['cell']}'")
        for param, searched in space.params.items():
            if not searched.contains(config[param]):
                key = _setting_key(space, profile, config["cell"], param, overrides)
                raise SpaceError(f"{name}: {key} ({config[param]!r}) lies outside "
                                 f"'optuna.params.{param}' ({searched.describe()}); move the "
                                 f"cell inside or widen the search.")
    optuna_base = {**base, **searched_lambda_range(space.param_specs())}
    for param, searched in space.params.items():
        for value in searched.ends():
            _check_config({**optuna_base, param: value}, name,
                          f"key 'optuna.params.{param}' at {value!r}")
    names = list(space.params)
    for corner in itertools.product(*(space.params[param].ends() for param in names)):
        values = _smallest_invalid(optuna_base, dict(zip(names, corner)))
        shown = ", ".join(f"{param}={value!r}" for param, value in values.items())
        _check_config({**optuna_base, **values}, name, f"key 'optuna.params' at {shown}")
    warmups = [TrainConfig.from_dict(base).warmup_epochs]
    if "warmup_epochs" in space.params:
        warmups += space.params["warmup_epochs"].ends()
    warmup = max(warmups)
    grace = space.profiles[profile].grace_period
    if grace <= warmup:
        raise SpaceError(f"{name}: key '{prefix}.asha.grace_period' ({grace}) must be longer "
                         f"than the teacher warm-up (warmup_epochs {warmup}), because "
                         f"val_margin jumps when warm-up ends; raise it above {warmup}.")


def _smallest_invalid(base: dict, values: dict) -> dict:
    """``values`` less every setting that the config stays invalid without (the ones a
    message must name); all of ``values`` when they give a valid config."""
    if _invalid_reason({**base, **values}) is None:
        return values
    for param in list(values):
        fewer = {key: value for key, value in values.items() if key != param}
        if _invalid_reason({**base, **fewer}) is not None:
            values = fewer
    return values


def _setting_key(space: SearchSpace, profile: str, cell: str, param: str,
                 overrides: dict | None) -> str:
    """Where a cell's value of ``param`` comes from, as named in messages."""
    if param in space.cells[cell]:
        return f"key 'cells.{cell}.{param}'"
    if param in (overrides or {}):
        return f"the command line's {param}"
    if param in space.profiles[profile].train:
        return f"key 'profiles.{profile}.train.{param}'"
    if param in space.fixed:
        return f"key 'fixed.{param}'"
    return f"the TrainConfig default of {param} (cell {cell})"


def _check_keys(mapping, allowed, name: str, prefix: str, required: bool = False) -> None:
    """Refuse a non-mapping, unknown keys and (when required) missing keys."""
    where = f"key '{prefix}'" if prefix else "the top level"
    if not isinstance(mapping, dict):
        raise SpaceError(f"{name}: {where} must be a mapping, not "
                         f"{type(mapping).__name__}; see search_spaces/p7.yaml.")
    for key in mapping:
        if key not in allowed:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise SpaceError(f"{name}: unknown key '{full}'; allowed here: "
                             f"{', '.join(allowed)}.")
    missing = [key for key in allowed if key not in mapping] if required else []
    if missing:
        raise SpaceError(f"{name}: {where} lacks key '{missing[0]}'; add it (see "
                         f"search_spaces/p7.yaml).")


def _settings(mapping, name: str, prefix: str) -> dict:
    """TrainConfig settings with the right types; command-line fields refused."""
    if mapping is None:
        return {}
    _check_keys(mapping, list(FIELD_TYPES), name, prefix)
    for key, value in mapping.items():
        if key in COMMAND_LINE_FIELDS:
            raise SpaceError(f"{name}: key '{prefix}.{key}' is set on the command line "
                             f"({COMMAND_LINE_FIELDS[key]}); remove it from the file.")
        _check_type(value, ALSO_READ.get(key, FIELD_TYPES[key]), name, f"{prefix}.{key}")
    return dict(mapping)


def _check_type(value, expected: type, name: str, key: str) -> None:
    """Floats accept integers; integers and booleans must be exactly that."""
    if expected is float:
        ok = _is_number(value)
    elif expected is int:
        ok = _is_integer(value)
    else:
        ok = isinstance(value, expected)
    if not ok:
        kinds = expected if isinstance(expected, tuple) else (expected,)
        raise SpaceError(f"{name}: key '{key}' must be "
                         f"{' or '.join(kind.__name__ for kind in kinds)}, not {value!r}; "
                         f"fix the value.")


def _cells(mapping, name: str) -> dict[str, dict]:
    if not isinstance(mapping, dict) or not mapping:
        raise SpaceError(f"{name}: key 'cells' must map cell names to settings and hold at "
                         f"least one cell; see search_spaces/p7.yaml.")
    cells = {}
    for cell, settings in mapping.items():
        _check_name(cell, name, f"cells.{cell}", "cell")
        cells[cell] = _settings(settings, name, f"cells.{cell}")
    return cells


def _check_name(value, name: str, key: str, what: str) -> None:
    if not isinstance(value, str) or not NAME.match(value):
        raise SpaceError(f"{name}: key '{key}' is not a valid {what} name; use lower-case "
                         f"letters, digits and underscores.")


def _optuna(mapping, name: str) -> tuple[dict[str, Param], int]:
    _check_keys(mapping, ("params", "startup_trials"), name, "optuna")
    params = mapping.get("params")
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{name}: key 'optuna.params' must map at least one TrainConfig "
                         f"field to a spec ({{low, high}} or {{choices}}); see "
                         f"search_spaces/p7.yaml.")
    searched = {param: _param(param, spec, name) for param, spec in params.items()}
    startup_trials = mapping.get("startup_trials", 5)
    _check_type(startup_trials, int, name, "optuna.startup_trials")
    if startup_trials < 1:
        raise SpaceError(f"{name}: key 'optuna.startup_trials' must be at least 1.")
    return searched, startup_trials


def _param(field: str, spec, name: str) -> Param:
    """One searched setting: its spec's kind checked against the field's declared type."""
    key = f"optuna.params.{field}"
    if field not in FIELD_TYPES:
        searchable = sorted(set(FIELD_TYPES) - set(COMMAND_LINE_FIELDS) - set(BUDGET_FIELDS))
        raise SpaceError(f"{name}: key '{key}' is not a TrainConfig field; search one of "
                         f"{', '.join(searchable)}.")
    if field in COMMAND_LINE_FIELDS:
        raise SpaceError(f"{name}: key '{key}' is set on the command line "
                         f"({COMMAND_LINE_FIELDS[field]}), so it cannot be searched; remove it.")
    if field in BUDGET_FIELDS:
        meaning, flag = BUDGET_FIELDS[field]
        raise SpaceError(f"{name}: key '{key}' is {meaning}, so it cannot be searched; set "
                         f"it in the profile or with {flag}.")
    if not isinstance(spec, dict):
        raise SpaceError(f"{name}: key '{key}' must be a mapping ({{low, high}} or "
                         f"{{choices: [...]}}), not {type(spec).__name__}; see "
                         f"search_spaces/p7.yaml.")
    expected = FIELD_TYPES[field]
    if "choices" in spec:
        return _choices(spec, expected, name, key)
    if expected is float:
        return _float_range(spec, name, key)
    if expected is int:
        return _int_range(spec, name, key)
    raise SpaceError(f"{name}: key '{key}' is a range, but {field} is a {expected.__name__} "
                     f"setting; search it with {{choices: [...]}}.")


def _choices(spec: dict, expected: type, name: str, key: str) -> Choices:
    _check_keys(spec, ("choices",), name, key)
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{name}: key '{key}.choices' must be a non-empty list of "
                         f"{expected.__name__} values, not {choices!r}; list the values to try.")
    for index, choice in enumerate(choices):
        _check_type(choice, expected, name, f"{key}.choices[{index}]")
    values = tuple(float(choice) if expected is float else choice for choice in choices)
    if len(set(values)) < len(values):
        raise SpaceError(f"{name}: key '{key}.choices' lists a value twice ({choices}); "
                         f"list each value once.")
    return Choices(values)


def _float_range(spec, name: str, key: str) -> FloatRange:
    if "step" in spec:
        raise SpaceError(f"{name}: key '{key}' has a step, but it is a float setting, "
                         f"searched as {{low, high, log}}; remove step (integer ranges are "
                         f"for int settings).")
    _check_keys(spec, ("low", "high", "log"), name, key)
    low, high, log = _bounds(spec, name, key)
    for end, value in (("low", low), ("high", high)):
        _check_type(value, float, name, f"{key}.{end}")
    _check_order(low, high, log, name, key)
    return FloatRange(float(low), float(high), log)


def _int_range(spec, name: str, key: str) -> IntRange:
    _check_keys(spec, ("low", "high", "step", "log"), name, key)
    low, high, log = _bounds(spec, name, key)
    for end, value in (("low", low), ("high", high)):
        if not _is_integer(value):
            raise SpaceError(f"{name}: key '{key}' is an integer range (an int setting) and "
                             f"needs integer low and high (got {end} {value!r}); write whole "
                             f"numbers.")
    step = spec.get("step", 1)
    if not _is_integer(step) or step < 1:
        raise SpaceError(f"{name}: key '{key}.step' must be a whole number of at least 1, "
                         f"not {step!r}.")
    _check_order(low, high, log, name, key)
    if log and step != 1:
        raise SpaceError(f"{name}: key '{key}' is log-scaled with step {step}; Optuna samples "
                         f"a log integer range only with step 1, so drop step or log.")
    if (high - low) % step:
        raise SpaceError(f"{name}: key '{key}' has high {high} off the step grid (low {low} "
                         f"plus multiples of {step}); make high - low a multiple of step.")
    return IntRange(low, high, step, log)


def _bounds(spec: dict, name: str, key: str) -> tuple:
    """(low, high, log) of a range spec; both ends required, log a boolean."""
    for end in ("low", "high"):
        if end not in spec:
            raise SpaceError(f"{name}: key '{key}' lacks '{end}'; give both low and high "
                             f"(or choices).")
    log = spec.get("log", False)
    _check_type(log, bool, name, f"{key}.log")
    return spec["low"], spec["high"], log


def _check_order(low, high, log: bool, name: str, key: str) -> None:
    if not low < high:
        raise SpaceError(f"{name}: key '{key}' has an empty range (low {low} is "
                         f"not below high {high}); make low smaller than high.")
    if log and low <= 0:
        raise SpaceError(f"{name}: key '{key}' is log-scaled but low is {low}; "
                         f"a log range needs low > 0.")


def _profiles(mapping, name: str) -> dict[str, Profile]:
    if not isinstance(mapping, dict) or not mapping:
        raise SpaceError(f"{name}: key 'profiles' must map profile names (e.g. quick) to "
                         f"budgets and hold at least one; see search_spaces/p7.yaml.")
    profiles = {}
    for profile, spec in mapping.items():
        prefix = f"profiles.{profile}"
        _check_name(profile, name, prefix, "profile")
        _check_keys(spec, ("train", "optuna_trials", "asha"), name, prefix, required=True)
        _check_keys(spec["asha"], ("grace_period", "reduction_factor"), name,
                    f"{prefix}.asha", required=True)
        _check_type(spec["optuna_trials"], int, name, f"{prefix}.optuna_trials")
        _check_type(spec["asha"]["grace_period"], int, name, f"{prefix}.asha.grace_period")
        _check_type(spec["asha"]["reduction_factor"], float, name,
                    f"{prefix}.asha.reduction_factor")
        if spec["optuna_trials"] < 0:
            raise SpaceError(f"{name}: key '{prefix}.optuna_trials' must be 0 or more.")
        if spec["asha"]["reduction_factor"] <= 1:
            raise SpaceError(f"{name}: key '{prefix}.asha.reduction_factor' must be above 1.")
        profiles[profile] = Profile(_settings(spec["train"], name, f"{prefix}.train"),
                                    spec["optuna_trials"], spec["asha"]["grace_period"],
                                    float(spec["asha"]["reduction_factor"]))
    return profiles


def _check_config(config: dict, name: str, where: str) -> None:
    """Refuse a config that a trial could not run with. ``where``: the part of the file
    that gave it, e.g. "key 'cells.baseline'"."""
    reason = _invalid_reason(config)
    if reason is not None:
        raise SpaceError(f"{name}: {where} gives an invalid trial config ({reason}); fix "
                         f"that setting.")


def _invalid_reason(config: dict) -> str | None:
    """Why the TrainConfig (and its model config) of ``config`` cannot be built, or None."""
    settings = {k: v for k, v in config.items() if k not in ("phase", "cell")}
    try:
        TrainConfig.from_dict(settings).model_config(1)
    except ValueError as error:
        return str(error).rstrip(".")
    return None


# ---------------------------------------------------------------------------------------
# Typed tables


def typed_settings(frame):
    """``frame`` (a pandas DataFrame) with every complete TrainConfig field column cast to
    the type the field declares: int -> int64, float -> float64, bool -> bool, str -> str.
    A trials table then keeps integer and categorical settings typed however its rows were
    read (an empty table included). A column with a missing value (a trial folder written
    before the field existed) keeps what pandas made of it, NaN where the value is missing,
    so readers treat it as before. Other columns are left as they are.
    """
    declared = {int: "int64", float: "float64", bool: "bool", str: "str"}
    return frame.astype({column: declared[FIELD_TYPES[column]]
                         for column in frame.columns.intersection(list(FIELD_TYPES))
                         if not frame[column].isna().any()})
