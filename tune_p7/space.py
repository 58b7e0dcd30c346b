"""Search spaces: ``search_spaces/*.yaml`` read into baseline cells, Optuna ranges and profiles.

    space = load_space("search_spaces/p7.yaml")
    configs = space.cell_configs("quick")        # [{...TrainConfig fields, phase, cell}]
    space.optuna_distributions()                  # {"margin": FloatDistribution, ...}

The file has four sections (see search_spaces/p7.yaml): ``cells`` (name -> TrainConfig
settings, run at full budget), ``optuna`` (``params``: name -> {low, high, log};
``startup_trials``), ``fixed`` (TrainConfig settings of every trial) and ``profiles``
(``quick`` and ``full``: ``train`` settings, ``optuna_trials``, ``asha``). Anything
malformed, unknown, empty or inconsistent raises :class:`SpaceError` with one sentence
naming the file and the key. Nothing here knows about Ray or training.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from tune_p7.config import TrainConfig
from tune_p7.files import UnreadableFile, read_yaml

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "p7.yaml"
PROFILES = ("quick", "full")
SECTIONS = ("cells", "optuna", "fixed", "profiles")
# Set by the command line (--seed, --device, --cpus-per-trial), never by the file.
COMMAND_LINE_FIELDS = {"seed": "--seed", "device": "--device", "threads": "--cpus-per-trial"}
FIELD_TYPES = {field.name: type(field.default) for field in dataclasses.fields(TrainConfig)}
FIELD_TYPES["bf16"] = (str, bool)  # "auto" | "on" | "off"; older files' true/false still read
CELL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SpaceError(ValueError):
    """A bad search space file; the message is one sentence naming the file and key."""


@dataclass(frozen=True)
class Range:
    """One Optuna float distribution: low..high inclusive, log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def optuna(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)


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
    params: dict[str, Range]      # searched TrainConfig field -> range
    startup_trials: int           # TPE samples at random until this many trials are done
    fixed: dict                   # TrainConfig settings of every trial
    profiles: dict[str, Profile]
    content: dict                 # the parsed file, for sweep.json

    def base_config(self, profile: str, overrides: dict | None = None) -> dict:
        """Settings shared by every trial of ``profile``: fixed, then profile, then overrides."""
        return {**self.fixed, **self.profiles[profile].train, **(overrides or {})}

    def cell_configs(self, profile: str, overrides: dict | None = None) -> list[dict]:
        """One trial config per cell: every TrainConfig field (defaults filled in), labelled
        phase="baseline", cell=<name>."""
        base = {**TrainConfig().to_dict(), **self.base_config(profile, overrides)}
        return [{**base, **settings, "phase": "baseline", "cell": name}
                for name, settings in self.cells.items()]

    def optuna_distributions(self) -> dict:
        """{field: optuna FloatDistribution} for OptunaSearch(space=...)."""
        return {name: value.optuna() for name, value in self.params.items()}

    def param_specs(self) -> dict[str, dict]:
        """{field: {"low", "high", "log"}}: the searched ranges as plain values (sweep.json)."""
        return {name: dataclasses.asdict(value) for name, value in self.params.items()}


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

    Checks each cell, the Optuna ranges' both ends, cells inside the ranges and the ASHA
    grace period against the teacher warm-up.
    """
    name, prefix = space.path, f"profiles.{profile}"
    base = space.base_config(profile, overrides)
    for config in space.cell_configs(profile, overrides):
        _check_config(config, name, f"cells.{config['cell']}")
        for param, value_range in space.params.items():
            if not value_range.contains(config[param]):
                key = (f"cells.{config['cell']}.{param}" if param in space.cells[config["cell"]]
                       else f"fixed.{param}")
                raise SpaceError(f"{name}: key '{key}' ({config[param]}) lies outside the "
                                 f"range [{value_range.low}, {value_range.high}] of "
                                 f"'optuna.params.{param}'; move the cell inside or widen "
                                 f"the range.")
    for end in ("low", "high"):
        values = {param: getattr(value_range, end) for param, value_range in space.params.items()}
        _check_config({**base, **values}, name, f"optuna.params (every '{end}' end)")
    warmup = TrainConfig.from_dict(base).warmup_epochs
    grace = space.profiles[profile].grace_period
    if grace <= warmup:
        raise SpaceError(f"{name}: key '{prefix}.asha.grace_period' ({grace}) must be longer "
                         f"than the teacher warm-up (warmup_epochs {warmup}), because "
                         f"val_margin jumps when warm-up ends; raise it above {warmup}.")


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
        _check_type(value, FIELD_TYPES[key], name, f"{prefix}.{key}")
    return dict(mapping)


def _check_type(value, expected: type, name: str, key: str) -> None:
    """Floats accept integers; integers and booleans must be exactly that."""
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
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
        if not isinstance(cell, str) or not CELL_NAME.match(cell):
            raise SpaceError(f"{name}: key 'cells.{cell}' is not a valid cell name; use "
                             f"lower-case letters, digits and underscores.")
        cells[cell] = _settings(settings, name, f"cells.{cell}")
    return cells


def _optuna(mapping, name: str) -> tuple[dict[str, Range], int]:
    _check_keys(mapping, ("params", "startup_trials"), name, "optuna")
    params = mapping.get("params")
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{name}: key 'optuna.params' must map at least one TrainConfig "
                         f"field to {{low, high}}; see search_spaces/p7.yaml.")
    ranges = {}
    for param, spec in params.items():
        key = f"optuna.params.{param}"
        if param not in FIELD_TYPES or FIELD_TYPES[param] is not float:
            raise SpaceError(f"{name}: key '{key}' is not a float TrainConfig field; search "
                             f"one of {sorted(k for k, t in FIELD_TYPES.items() if t is float)}.")
        _check_keys(spec, ("low", "high", "log"), name, key)
        for end in ("low", "high"):
            if end not in spec:
                raise SpaceError(f"{name}: key '{key}' lacks '{end}'; give both low and high.")
            _check_type(spec[end], float, name, f"{key}.{end}")
        log = spec.get("log", False)
        _check_type(log, bool, name, f"{key}.log")
        if not spec["low"] < spec["high"]:
            raise SpaceError(f"{name}: key '{key}' has an empty range (low {spec['low']} is "
                             f"not below high {spec['high']}); make low smaller than high.")
        if log and spec["low"] <= 0:
            raise SpaceError(f"{name}: key '{key}' is log-scaled but low is {spec['low']}; "
                             f"a log range needs low > 0.")
        ranges[param] = Range(float(spec["low"]), float(spec["high"]), log)
    startup_trials = mapping.get("startup_trials", 5)
    _check_type(startup_trials, int, name, "optuna.startup_trials")
    if startup_trials < 1:
        raise SpaceError(f"{name}: key 'optuna.startup_trials' must be at least 1.")
    return ranges, startup_trials


def _profiles(mapping, name: str) -> dict[str, Profile]:
    _check_keys(mapping, PROFILES, name, "profiles", required=True)
    profiles = {}
    for profile, spec in mapping.items():
        prefix = f"profiles.{profile}"
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


def _check_config(config: dict, name: str, key: str) -> None:
    """Build the TrainConfig (and its model config) a trial would get; refuse what fails."""
    settings = {k: v for k, v in config.items() if k not in ("phase", "cell")}
    try:
        TrainConfig.from_dict(settings).model_config(1)
    except ValueError as error:
        reason = str(error).rstrip(".")
        raise SpaceError(f"{name}: key '{key}' gives an invalid trial config "
                         f"({reason}); fix that setting.") from None
