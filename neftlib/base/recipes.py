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
# TRL (SFTConfig, ModelConfig, ScriptArguments) and transformers' TrainingArguments names of our settings: accepted
# wherever a setting is named (recipes, --set, the notebooks' SET), so a TRL recipe's keys carry over.
ALIASES = {
    "neftune_noise_alpha": "alpha",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "model_name_or_path": "model",
    "max_seq_length": "max_length",  # SFTConfig before TRL 0.20
    "save_steps": "save_every",
    "lora_target_modules": "lora_targets",
    "dataset_name": "train_data",  # a hub id ORG/NAME becomes hf:ORG/NAME
    "dataset_config": "train_data_config",
    "dataset_train_split": "train_data_split",
    "max_new_tokens": "gen_max_new_tokens",
}
# TRL / TrainingArguments names that have no setting of their own here, and what to use instead.
INSTEAD = {
    "bf16": "precision=bf16", "fp16": "precision=fp16", "torch_dtype": "precision (fp32, bf16 or fp16)",
    "dtype": "precision (fp32, bf16 or fp16)", "load_in_4bit": "method=qlora", "use_peft": "method=lora (or qlora)",
    "output_dir": "--run NAME (results/<run>/)", "run_name": "--run NAME (results/<run>/)",
    "lr_scheduler_type": "warmup_ratio; the schedule itself is fixed: linear warmup, then cosine decay",
    "warmup_steps": "warmup_ratio (a share of the optimizer steps)",
    "per_device_eval_batch_size": "gen_batch_size (prompts per generate call)",
    "packing": "padding_free=true (a batch's examples in one row, positions restarting per example)",
    "dataset_text_field": "train_columns (our field -> the data's column)",
    "save_strategy": "save_every (optimizer steps between checkpoints)",
    "hub_model_id": "hub_repo (with push_to_hub=true)",
}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DATA_FIELDS = ("train_data", "eval_data")  # may name a file: made absolute, since notebooks run in notebooks/
_FALSE, _TRUE = ("false", "no", "off", "0"), ("true", "yes", "on", "1")


def _fields() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def unknown_field(name: str, where: str = "") -> ValueError:
    """The refusal of a name RunConfig does not have: what to use instead of a TRL / TrainingArguments name, else
    the closest names (a TRL alias shown with the setting it stands for) and the full list."""
    names = _field_names()
    if name in INSTEAD:
        return ValueError(f"unknown setting {name!r}{where}: TRL / TrainingArguments' {name} has no setting of its "
                          f"own here; use {INSTEAD[name]}")
    close = difflib.get_close_matches(name, [*names, *ALIASES], n=3)
    shown = [f"{c} (= {ALIASES[c]})" if c in ALIASES else c for c in close]
    hint = f" (did you mean {', '.join(shown)}?)" if close else ""
    return ValueError(f"unknown setting {name!r}{where}{hint}; the settings are: {', '.join(names)}")


def canonical(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Settings with TRL / TrainingArguments names renamed to ours; the same setting named twice with two values
    refused. Unknown names pass through (the caller refuses them with unknown_field)."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in values.items():
        ours = ALIASES.get(name, name)
        if ours == "train_data" and name != ours:
            value = _hub_dataset(value)
        if ours in out and out[ours] != value:
            raise ValueError(f"{ours}{where} given twice, as {given[ours]}={out[ours]!r} and {name}={value!r}")
        out[ours], given[ours] = value, name
    return out


def _hub_dataset(value: Any) -> Any:
    """TRL's dataset_name (a hub id) as our train_data ('hf:ORG/NAME'); a path to a file stays a path."""
    if isinstance(value, str) and _HUB_ID.fullmatch(value.strip()) and not Path(value).expanduser().exists():
        return "hf:" + value.strip()
    return value


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if origin in (tuple, list):
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
    if origin in (tuple, list):
        if text is not None:
            value = _yaml(text, bad) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, str):
            value = [value]  # one item named alone, as TrainingArguments takes report_to="tensorboard"
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
            raise bad
        return origin(str(v) for v in value)
    if origin is dict:
        if text is not None:
            value = _yaml(text, bad) if text else {}
        if not isinstance(value, dict):
            raise bad
        # the QLoRA stage's settings are settings too: TRL names allowed there as well
        return canonical(dict(value), f" in {name}") if name == "qlora" else dict(value)
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
        given, eq, value = item.partition("=")
        given = given.strip()
        if not eq or not given:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set learning_rate=1e-4")
        name = ALIASES.get(given, given)
        value = _hub_dataset(value) if name == "train_data" and given != name else value
        if name in NOT_SETTABLE:
            raise ValueError(f"--set {name}=...: choose it with {NOT_SETTABLE[name]}, not --set")
        if name not in _fields():
            raise unknown_field(name, " in --set")
        if name in sets and sets[name] != value:
            named = name if given == name else f"{name} (as {given})"
            raise ValueError(f"--set {named} given twice ({sets[name]!r} and {value!r})")
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
    values = canonical({str(k): v for k, v in values.items()}, f" in {path}")
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
    overrides = canonical({k: v for k, v in overrides.items() if v is not None})
    for name in overrides:
        if name not in _fields():
            raise unknown_field(name)
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


def config_text(cfg: RunConfig, header: list[str]) -> str:
    """Every setting of `cfg` as YAML, one line each with its comment (and its TRL name where it has one)."""
    comments = _comments()
    trl_names: dict[str, list[str]] = {}
    for alias, ours in ALIASES.items():
        trl_names.setdefault(ours, []).append(alias)
    lines = [f"# {line}" if line else "" for line in header] + [""]
    for name, value in cfg.to_dict().items():
        section, comment = comments.get(name, ("", ""))
        if name in trl_names:
            comment += f" (TRL / TrainingArguments: {', '.join(trl_names[name])})"
        if section:
            lines += ["", section]
        lines.append(f"{name}: {_value(value)}  # {comment}" if comment else f"{name}: {_value(value)}")
    return "\n".join(lines) + "\n"


def recipe_text(profile: str) -> str:
    """The recipe of a profile: every RunConfig field with its value and comment (what configs/recipes/ holds)."""
    return config_text(load_config(profile), [
        f"Recipe {profile!r}: every setting of a run, generated from neftlib/base/profiles.py by",
        "`python -m neftlib recipes` (tests check that the two agree: edit profiles.py, then regenerate).",
        f"Run it: python -m neftlib run --config configs/recipes/{profile}.yaml  (the same as --profile {profile})",
        "For your own run copy this file, edit it, and run the copy; results go to results/<file name>/.",
        "Any setting can also be changed on the command line: --set FIELD=VALUE (repeatable).",
        "TRL / TrainingArguments names are accepted too, in this file and in --set: each is named beside its setting."])


def write_recipes(folder: Path = RECIPES_DIR) -> list[Path]:
    """(Re)write configs/recipes/<profile>.yaml for every profile; returns the files written."""
    written = []
    for profile in PROFILES:
        path = folder / f"{profile}.yaml"
        write_text(path, recipe_text(profile))
        written.append(path)
    return written

