"""The search space of `rnntext tune`: which settings a trial samples, and from where.

Each entry is one setting of a run (config.py), by its name (`lr`, `hidden_dim`) or `section.name`
(`train.lr`), with one of:

- `low`, `high` (and optionally `log = true`, `step`): a range; integers for an integer setting;
- `choices = [...]`: one of these values (any type the setting takes: strings, numbers, true/false);
- `value = X`: fixed at X in every trial (no longer searched);
- `search = false`: not searched: the base configuration's value (defaults < --preset < --config < options).

Every bound and choice is checked against the setting's declaration (a dropout of 1.5 is refused when the
space is read, not in trial 7). A TOML file (`--space FILE`) changes the default space entry by entry: one
table per setting, replacing that setting's entry or adding one; `defaults = false` at its top starts from
an empty space instead. A setting given as an option on the command line is fixed at that value and leaves
the space. Data settings may be searched too; the data are then prepared again for each distinct set of
them (the vocabulary depends on them), which costs time."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SECTIONS, check_value, field_of, kinds, read_config_file
from ..errors import ConfigError
from ..model.registry import model_names

ENTRY_KEYS = {"low", "high", "log", "step", "choices", "value", "search"}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting. `name` is the setting's field name (the Optuna parameter's name),
    `section` its section of config.json."""

    section: str
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None
    fixed: bool = False

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def is_int(self) -> bool:
        return kinds(SECTIONS[self.section])[self.name].base is int

    def describe(self) -> str:
        if self.fixed:
            return f"fixed at {_show(self.value)}"
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        text = f"{_show(self.low)} to {_show(self.high)}"
        if self.log:
            text += ", log scale"
        if self.step is not None:
            text += f", step {_show(self.step)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The entry as a space file writes it."""
        if self.fixed:
            return {"value": self.value}
        if self.choices is not None:
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# The default search space: what a run's accuracy depends on most (rnntext's own sweep, the 0.1.0 changelog),
# around the defaults. Data settings stay out: each change of them means preparing the data again.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model": {"choices": ["gru", "lstm", "cnn"]},
    "lr": {"low": 1e-3, "high": 2e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "embed_dim": {"choices": [64, 128, 256]},
    "hidden_dim": {"choices": [64, 128, 256]},
    "dropout": {"low": 0.0, "high": 0.5},
    "embed_dropout": {"low": 0.0, "high": 0.5},
    "weight_decay": {"low": 1e-3, "high": 0.3, "log": True},
    "epochs": {"low": 2, "high": 6},
}


def resolve(name: str, source: str) -> tuple[str, str]:
    """`lr` or `train.lr` -> ("train", "lr"); an unknown or ambiguous name is a ConfigError."""
    section, dot, field = name.partition(".")
    if dot:
        candidates = [(section, field)] if section in SECTIONS else []
    else:
        candidates = [(s, name) for s in SECTIONS]
    found = []
    for s, f in candidates:
        try:
            meta = field_of(SECTIONS[s], f).metadata
        except KeyError:
            continue
        if meta.get("cli", True):
            found.append((s, f))
    if not found:
        raise ConfigError(f"{source}: {name!r} is not a setting of a run (see `rnntext train --help`)")
    if len(found) > 1:
        raise ConfigError(f"{source}: {name!r} is ambiguous; write {' or '.join(f'{s}.{f}' for s, f in found)}")
    return found[0]


def _checked(section: str, name: str, value: Any, display: str) -> Any:
    f = field_of(SECTIONS[section], name)
    value = check_value(f, kinds(SECTIONS[section])[name], value, display)
    if (section, name) == ("model", "model") and value not in model_names():
        raise ConfigError(f"{display} must be one of {', '.join(model_names())}, got {value!r}")
    return value


def parse_entry(name: str, entry: Any, source: str) -> Param | None:
    """One entry of a space (a TOML table) -> a Param; None for `search = false`."""
    section, field = resolve(name, source)
    where = f"{source}: [{name}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table (low/high, choices, value or search), got {entry!r}")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected {', '.join(sorted(ENTRY_KEYS))}")
    search = entry.get("search", True)
    if not isinstance(search, bool):
        raise ConfigError(f"{where}: search must be true or false, got {search!r}")
    given = [k for k in ("choices", "value") if k in entry] + (["low/high"] if "low" in entry or "high" in entry
                                                               else [])
    if not search:
        if given:
            raise ConfigError(f"{where}: search = false takes no {', '.join(given)}")
        return None
    if len(given) != 1:
        raise ConfigError(f"{where} needs exactly one of: low and high, choices, value")
    kind = kinds(SECTIONS[section])[field].base
    if "value" in entry:
        return Param(section, field, value=_checked(section, field, entry["value"], f"{where} value"), fixed=True)
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        values = tuple(_checked(section, field, c, f"{where} choice") for c in choices)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choices must be distinct")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"{where}: choices must be numbers, strings or true/false")
        return Param(section, field, choices=values)
    if kind not in (int, float):
        raise ConfigError(f"{where}: low/high are for numeric settings; give choices")
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where} needs both low and high")
    low = _checked(section, field, entry["low"], f"{where} low")
    high = _checked(section, field, entry["high"], f"{where} high")
    if low is None or high is None or not low < high:
        raise ConfigError(f"{where}: low must be < high, got {low} and {high}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise ConfigError(f"{where}: step must be a number > 0, got {step!r}")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
        if kind is int and not float(step).is_integer():
            raise ConfigError(f"{where}: step must be an integer for an integer setting")
        step = int(step) if kind is int else float(step)
    return Param(section, field, low=low, high=high, log=log, step=step)


@dataclass
class Space:
    """The search space: setting key (`train.lr`) -> Param, in order."""

    params: dict[str, Param] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "space", base: Space | None = None) -> Space:
        """`base` (default: the default space, unless `defaults = false`) changed by the entries of `d`. Nested
        section tables (`[train.lr]` in TOML) are taken as dotted names."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a table of settings")
        d = dict(d)
        use_defaults = d.pop("defaults", True)
        if not isinstance(use_defaults, bool):
            raise ConfigError(f"{source}: defaults must be true or false, got {use_defaults!r}")
        if base is None:
            base = default_space() if use_defaults else Space()
        elif not use_defaults:
            base = Space()
        params = dict(base.params)
        for name, entry in _entries(d):
            param = parse_entry(name, entry, source)
            key = ".".join(resolve(name, source))
            if param is None:
                params.pop(key, None)
            else:
                params[key] = param  # a default entry keeps its place
        return cls(params)

    def to_dict(self) -> dict[str, Any]:
        return {"defaults": False, **{key: p.to_dict() for key, p in self.params.items()}}

    def without(self, keys: Iterable[str]) -> Space:
        keys = set(keys)
        return Space({k: p for k, p in self.params.items() if k not in keys})

    def searched(self) -> list[Param]:
        return [p for p in self.params.values() if not p.fixed]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """A trial's settings: `train.lr` -> value, sampled with the trial's suggest_* methods."""
        out: dict[str, Any] = {}
        for key, p in self.params.items():
            if p.fixed:
                out[key] = p.value
            elif p.choices is not None:
                out[key] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.is_int:
                out[key] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[key] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return out

    def table(self) -> list[tuple[str, str]]:
        return [(key, p.describe()) for key, p in self.params.items()]


def _entries(d: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for name, entry in d.items():
        if name in SECTIONS and isinstance(entry, Mapping) and not (set(entry) & ENTRY_KEYS):
            for sub, e in entry.items():  # [train.lr] in TOML: {"train": {"lr": {...}}}
                yield f"{name}.{sub}", e
        else:
            yield name, entry


def default_space() -> Space:
    return Space.from_dict({"defaults": False, **DEFAULT_SPACE}, "the default space", base=Space())


def load_space(path: str | Path | None) -> Space:
    """The default space changed by the TOML (or JSON) file at `path`; the default space without one."""
    if path is None:
        return default_space()
    return Space.from_dict(read_config_file(path, "search space"), str(path))
