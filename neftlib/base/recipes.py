"""Where a run's settings come from: a profile or a user's YAML recipe (load_config), `--set FIELD=VALUE`
overrides typed by the field, and each profile written out as a recipe with every RunConfig field and its comment.

neftlib/base/profiles.py stays the one source of the profiles' values; configs/recipes/<profile>.yaml are
generated from it (`python -m neftlib recipes`) and tests/test_recipes.py fails when they drift apart.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from neftlib.base.config import RunConfig, with_qlora
from neftlib.base.io import write_text
from neftlib.base.paths import RECIPES_DIR
from neftlib.base.profiles import PROFILES

NOT_SETTABLE = {"profile": "--profile or --config", "run": "--run"}  # chosen by their own options
DATA_FIELDS = ("train_data", "eval_data")  # may name a file: made absolute, since notebooks run in notebooks/
_FALSE, _TRUE = ("false", "no", "off", "0"), ("true", "yes", "on", "1")


def _fields() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def unknown_field(name: str, where: str = "") -> ValueError:
    """The refusal of a name RunConfig does not have, with the closest ones and the full list."""
    names = _field_names()
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown setting {name!r}{where}{hint}; the settings are: {', '.join(names)}")


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if origin is tuple:
        return "a list, e.g. a,b or [a, b]"
    if origin is dict:
        return "a mapping, e.g. {key: value}"
    return "text"


def coerce(name: str, value: Any, hint: Any | None = None) -> Any:
    """`value` (typed, or text as on a command line or in YAML) as the type of RunConfig.<name>."""
    hint = _fields()[name] if hint is None else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    text = value.strip() if isinstance(value, str) else None
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (text is not None and text.lower() in ("none", "null", "~", "")):
            return None
        return coerce(name, value, next(a for a in args if a is not type(None)))
    bad = ValueError(f"{name}={value!r} is not {_expected(hint)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise bad
    if hint is float:
        try:
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(text)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return number
    if origin is tuple:
        if text is not None:
            value = _yaml(text, bad) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
            raise bad
        return tuple(str(v) for v in value)
    if origin is dict:
        if text is not None:
            value = _yaml(text, bad) if text else {}
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. `run: 2026` in YAML
    if not isinstance(value, str):
        raise bad
    return value


def _yaml(text: str, bad: ValueError) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise bad from None


def coerce_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Every value typed by its field; an unknown name refused."""
    hints = _fields()
    for name in values:
        if name not in hints:
            raise unknown_field(name)
    return {name: coerce(name, value, hints[name]) for name, value in values.items()}


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`--set FIELD=VALUE` items as {field: text}; a malformed item or unknown field refused before any work."""
    sets: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set learning_rate=1e-4")
        if name in NOT_SETTABLE:
            raise ValueError(f"--set {name}=...: choose it with {NOT_SETTABLE[name]}, not --set")
        if name not in _fields():
            raise unknown_field(name, " in --set")
        if name in sets and sets[name] != value:
            raise ValueError(f"--set {name} given twice ({sets[name]!r} and {value!r})")
        sets[name] = _absolute(name, value, Path.cwd())
    coerce_fields(sets)  # a bad value is named now, before anything runs
    return sets


def _absolute(name: str, value: Any, base: Path) -> Any:
    """A data setting naming an existing file relative to `base`, as an absolute path; anything else as given."""
    if name in DATA_FIELDS and isinstance(value, str) and value and not Path(value).is_absolute():
        candidate = base / Path(value).expanduser()
        if candidate.is_file():
            return str(candidate.resolve())
    return value


def split_seed_alpha(sets: dict[str, str], seed: int | None, alpha: float | None
                     ) -> tuple[dict[str, str], int | None, float | None]:
    """--set seed= / alpha= moved to --seed / --alpha (the notebooks' SEED / ALPHA); the two must agree."""
    sets = dict(sets)
    found = []
    for name, flag in (("seed", seed), ("alpha", alpha)):
        if name in sets:
            value = coerce(name, sets.pop(name))
            if flag is not None and flag != value:
                raise ValueError(f"{name} given twice: --{name} {flag} and --set {name}={value}")
            flag = value
        found.append(flag)
    return sets, found[0], found[1]


def read_recipe(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(profile name, field values) of a recipe file; unknown keys and bad values refused, naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in RECIPES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"recipe {path} not found; the profiles' recipes are in {RECIPES_DIR}: {found}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of settings (field: value), got {type(values).__name__}")
    for name in values:
        if name not in _fields():
            raise unknown_field(str(name), f" in {path}")
    values = {name: _absolute(name, value, path.parent) for name, value in values.items()}
    profile = str(values.pop("profile", "") or path.stem)
    if not values.get("run") and path.stem != profile:
        values["run"] = path.stem  # a copy of cpu.yaml saved as mine.yaml writes results/mine/, not results/cpu/
    try:
        return profile, coerce_fields(values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_config(profile: str = "", *, config: str | Path | None = None, **overrides: Any) -> RunConfig:
    """The config of a named profile, or of a recipe file (`config`), with field overrides typed by the field
    (values or text, as from papermill parameters or --set); None leaves a field as the profile has it."""
    if config:
        profile, base = read_recipe(config)
    elif profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}, "
                         "or give a recipe file (--config PATH.yaml)")
    else:
        base = dict(PROFILES[profile])
    fields = set(_field_names())
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    values = coerce_fields({**base, **{k: v for k, v in overrides.items() if v is not None}})
    return RunConfig(profile=profile, **with_qlora(values, profile))


def _comments() -> dict[str, tuple[str, str]]:
    """field -> (section heading above it or '', its comment), from RunConfig's source."""
    found, section = {}, ""
    for line in inspect.getsource(RunConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith("# ---"):
            section = stripped
        match = re.match(r"(\w+): [^=]+= .*?  # (.*)$", stripped)
        if match:
            found[match.group(1)] = (section, match.group(2))
            section = ""
    return found


def _value(value: Any) -> str:
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip().removesuffix("\n...").strip()


def recipe_text(profile: str) -> str:
    """The recipe of a profile: every RunConfig field with its value and comment (what configs/recipes/ holds)."""
    cfg = load_config(profile).to_dict()
    comments = _comments()
    lines = [f"# Recipe {profile!r}: every setting of a run, generated from neftlib/base/profiles.py by",
             "# `python -m neftlib recipes` (tests check that the two agree: edit profiles.py, then regenerate).",
             f"# Run it: python -m neftlib run --config configs/recipes/{profile}.yaml  (the same as --profile {profile})",
             "# For your own run copy this file, edit it, and run the copy; results go to results/<file name>/.",
             "# Any setting can also be changed on the command line: --set FIELD=VALUE (repeatable).", ""]
    for name, value in cfg.items():
        section, comment = comments.get(name, ("", ""))
        if section:
            lines += ["", section]
        lines.append(f"{name}: {_value(value)}  # {comment}" if comment else f"{name}: {_value(value)}")
    return "\n".join(lines) + "\n"


def write_recipes(folder: Path = RECIPES_DIR) -> list[Path]:
    """(Re)write configs/recipes/<profile>.yaml for every profile; returns the files written."""
    written = []
    for profile in PROFILES:
        path = folder / f"{profile}.yaml"
        write_text(path, recipe_text(profile))
        written.append(path)
    return written

