"""The paper's four instruction sets: where each lives (local file or hub) and its schema's conversion to
{instruction, input, output} rows. See docs/datasets.md for the facts behind each entry."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from neftlib.base.config import MAPPABLE

Row = dict[str, str]


@dataclass(frozen=True)
class Source:
    """One training set of the paper: its hub copy and the file names looked for in NEFTLIB_DATA_DIR."""

    hub_id: str
    files: tuple[str, ...]  # local names tried first, in order; "<name>.json/.jsonl/.parquet" are tried after
    data_files: str | None = None  # hub repos holding several files of different schemas need one named
    prompt_format: str = "alpaca"  # the format the paper trained this set with


SOURCES: dict[str, Source] = {
    "alpaca": Source("tatsu-lab/alpaca", ("alpaca_data.json", "alpaca_5000.json")),
    "evol-instruct": Source("WizardLMTeam/WizardLM_evol_instruct_70k", ("alpaca_evol_instruct_70k.json",)),
    "open-platypus": Source("garage-bAInd/Open-Platypus", ("open_platypus.parquet",)),
    # The repo also holds raw HTML dumps and scripts; the cleaned, split V3 file is the Vicuna-style one.
    "sharegpt": Source("anon8231489123/ShareGPT_Vicuna_unfiltered", ("ShareGPT_V3_unfiltered_cleaned_split.json",),
                       data_files="ShareGPT_V3_unfiltered_cleaned_split.json", prompt_format="vicuna"),
}
HF_PREFIX = "hf:"  # train_data="hf:ORG/NAME": any hub dataset with instruction/input/output or conversation columns
# The 805 AlpacaEval prompts with Text-Davinci-003's answers, as the hub dataset ships them.
ALPACA_EVAL_HUB = ("tatsu-lab/alpaca_eval", "alpaca_eval.json")
# ShareGPT speaker names; FastChat's data uses human/gpt, other exports user/assistant.
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


class RowError(ValueError):
    """Bad input: the message names file, row and field; `reason` is the short, stable form counted in reports."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _bad(path: Path | str, index: int, reason: str, hint: str = "") -> RowError:
    return RowError(f"{path}: row {index}: {reason}{hint}", reason)


def _seen(row: dict) -> str:
    return f" (fields seen: {', '.join(map(str, row)) or 'none'})"


def source_key(name: str) -> str | None:
    """The key behind a training-data name: 'Open_Platypus' -> 'open-platypus', 'hf:ORG/NAME' as it is; else None."""
    if name.strip().startswith(HF_PREFIX):
        hub_id = name.strip()[len(HF_PREFIX):]
        org, _, repo = hub_id.partition("/")
        if not org or not repo or "/" in repo:
            raise ValueError(f"train_data={name!r}: write a hub dataset as 'hf:ORG/NAME', e.g. 'hf:tatsu-lab/alpaca'")
        return HF_PREFIX + hub_id
    key = name.strip().lower().replace("_", "-")
    return key if key in SOURCES else None


def spec_of(key: str) -> Source:
    """The Source of a key from source_key: a named set, or any hub dataset (local copy: <NAME>.json...)."""
    if key.startswith(HF_PREFIX):
        hub_id = key[len(HF_PREFIX):]
        return Source(hub_id, tuple(f"{hub_id.split('/')[1]}.{ext}" for ext in ("json", "jsonl", "parquet")))
    return SOURCES[key]


def local_candidates(key: str) -> tuple[str, ...]:
    """File names looked for in NEFTLIB_DATA_DIR for a source, in order."""
    if key.startswith(HF_PREFIX):
        return spec_of(key).files
    return SOURCES[key].files + tuple(f"{key}.{ext}" for ext in ("json", "jsonl", "parquet"))


def missing_message(key: str, root: Path | None, why: str = "") -> str:
    """Which file to put where, for a source that has no local copy (and, when `why` says so, no hub)."""
    spec = spec_of(key)
    names = ", ".join(local_candidates(key))
    return (f"train_data={key!r}: {why + '; ' if why else ''}put one of {names} in NEFTLIB_DATA_DIR "
            f"(now {str(root) if root else 'unset'}), e.g. the train split of the hub dataset {spec.hub_id} "
            "saved on a machine with network, or set train_data to that file's path; or use train_data='mini'")


def _hub_disabled() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    # OSError covers ConnectionError, requests' errors and datasets' FileNotFound-based ones;
    # huggingface_hub talks through httpx, whose transport errors are not OSErrors.
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    return tuple(errors)


@dataclass(frozen=True)
class HubPin:
    """What is read of a hub dataset: its configuration (subset), split and revision (RunConfig.train_data_*)."""

    config: str = ""  # empty: the dataset's default configuration
    split: str = "train"
    revision: str = ""  # empty: the default branch

    def describe(self, hub_id: str) -> str:
        """The dataset as a run records it: hub:ORG/NAME, with whatever differs from the defaults."""
        parts = [f"config={self.config}"] * bool(self.config) + [f"split={self.split}"] * (self.split != "train")
        parts += [f"revision={self.revision}"] * bool(self.revision)
        return f"hub:{hub_id}" + (f" ({', '.join(parts)})" if parts else "")


def hub_rows(key: str, root: Path | None, pin: HubPin = HubPin()) -> list[dict]:
    """The chosen split of a source from the hub; FileNotFoundError naming the local file when the hub is off."""
    spec = spec_of(key)
    if _hub_disabled():
        raise FileNotFoundError(missing_message(key, root, "no local file and the hub is off (HF_HUB_OFFLINE)"))
    import datasets

    extra = {"data_files": spec.data_files} if spec.data_files else {}
    extra |= {"name": pin.config} if pin.config else {}
    extra |= {"revision": pin.revision} if pin.revision else {}
    try:
        ds = datasets.load_dataset(spec.hub_id, split=pin.split, **extra)
    except _unreachable_errors() as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        why = f"no local file and {spec.hub_id} could not be loaded ({type(err).__name__}: {cause})"
        raise FileNotFoundError(missing_message(key, root, why)) from None
    return [dict(row) for row in ds]


def alpaca_eval_hub_rows(root: Path | None) -> list[dict]:
    """AlpacaEval's 805 prompts with Text-Davinci-003's answers from the hub; FileNotFoundError when it is off."""
    hub_id, filename = ALPACA_EVAL_HUB

    def missing(why: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"eval_data='alpaca_eval': {why}; put alpaca_eval/text_davinci_003.json (the dataset {hub_id}'s "
            f"{filename}, saved on a machine with network) in NEFTLIB_DATA_DIR (now {str(root) if root else 'unset'}), "
            "or set eval_data to a local file's path; or use eval_data='mini'")

    if _hub_disabled():
        raise missing(f"no local file and the hub is off (HF_HUB_OFFLINE), so {hub_id} cannot be read")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(hub_id, filename, repo_type="dataset")
    except _unreachable_errors() as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise missing(f"no local file and {hub_id} could not be loaded ({type(err).__name__}: {cause})") from None
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    others = sorted({r.get("generator") for r in rows} - {"text_davinci_003"}, key=str)
    if others:  # the paper's win rates are against Text-Davinci-003; another reference would change them all
        raise ValueError(f"{hub_id}/{filename} holds answers of {others}, not only text_davinci_003's")
    return rows


def map_columns(raw: list[Any], columns: dict[str, str], origin: str) -> list[Any]:
    """Rows with a dataset's own column names renamed to ours (`columns`: ours -> theirs).

    A `messages` column (role/content turns) counts as `conversations` unless the mapping says otherwise.
    """
    unknown = sorted(set(columns) - set(MAPPABLE))
    if unknown:
        raise ValueError(f"train_columns maps {unknown}, which are not fields of ours; map any of "
                         f"{', '.join(MAPPABLE)} to the dataset's column names, e.g. {{instruction: question}}")
    first = next((r for r in raw if isinstance(r, dict)), {})
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in first}
    if missing:
        raise ValueError(f"{origin}: train_columns maps {missing}, but its first row has no such column "
                         f"(columns: {', '.join(map(str, first)) or 'none'})")
    if "conversations" not in columns and "messages" in first and "conversations" not in first:
        columns = {**columns, "conversations": "messages"}
    if not columns:
        return raw

    def rename(row: Any) -> Any:
        if not isinstance(row, dict):
            return row  # refused, with its index, by the conversion
        out = {k: v for k, v in row.items() if k not in columns and k not in columns.values()}
        out.update({ours: row[theirs] for ours, theirs in columns.items() if theirs in row})
        return out

    return [rename(r) for r in raw]


def detect_schema(rows: list[Any], path: Path | str) -> str:
    """'alpaca', 'evol', 'platypus' or 'sharegpt', from the first row whose fields one of them knows."""
    for row in rows:
        if isinstance(row, dict):
            if "conversations" in row:
                return "sharegpt"
            if "instruction" in row and "output" in row:
                return "platypus" if "data_source" in row else "alpaca" if "input" in row else "evol"
    if not rows:
        raise ValueError(f"{path}: holds no rows")
    first = rows[0]
    seen = sorted(first) if isinstance(first, dict) else f"a {type(first).__name__}, not an object"
    raise ValueError(f"{path}: row 0: unknown schema, fields seen: {seen}; expected instruction/input/output "
                     "(Alpaca, Open-Platypus), instruction/output (Evol-Instruct) or conversations (ShareGPT)")


def alpaca_row(row: Any, index: int, path: Path | str) -> Row:
    """An instruction/(input)/output row (Alpaca, Evol-Instruct, Open-Platypus) as a Row, or RowError."""
    if not isinstance(row, dict):
        raise RowError(f"{path}: row {index} is a {type(row).__name__}, expected an object with "
                       "instruction/input/output", "row is not an object")
    if "conversations" in row:
        raise RowError(f"{path}: row {index} is a conversation (ShareGPT schema) in a file of instruction rows",
                       "conversation in a file of instruction rows")
    out = {}
    for name in ("instruction", "input", "output"):
        value = row.get(name)
        if value is None and name == "input":
            value = ""  # Evol-Instruct has no input; some exports write null
        if value is None:
            raise _bad(path, index, f"missing field {name!r}", _seen(row))
        if not isinstance(value, str):
            raise _bad(path, index, f"field {name!r} is {type(value).__name__}", ", expected a string")
        out[name] = value
    if not out["instruction"].strip():
        raise _bad(path, index, "field 'instruction' is empty")
    if not out["output"].strip():
        raise _bad(path, index, "field 'output' is empty", " (nothing to learn)")
    return out


def sharegpt_examples(row: Any, index: int, path: Path | str) -> tuple[list[Row], list[RowError], list[str]]:
    """Single-turn examples of one conversation, the bad pairs, and the turns skipped by rule (docs/datasets.md).

    Each human turn directly followed by a gpt turn becomes one example; the pair's earlier turns are not
    carried along. Other turns are skipped and counted: a gpt turn with no human turn just before it
    (e.g. a conversation that starts with gpt), a human turn with no gpt reply, and other speakers (system...).
    """
    if not isinstance(row, dict):
        raise RowError(f"{path}: row {index} is a {type(row).__name__}, expected an object with conversations",
                       "row is not an object")
    turns = row.get("conversations")
    if turns is None:
        raise _bad(path, index, "missing field 'conversations'", _seen(row))
    if not isinstance(turns, list):
        raise _bad(path, index, f"field 'conversations' is {type(turns).__name__}", ", expected a list of turns")
    if not turns:
        raise _bad(path, index, "field 'conversations' is empty", " (nothing to learn)")
    roles: list[str | None] = []  # "user", "assistant", or None for a turn that cannot take part in a pair
    errors: list[RowError] = []
    skipped: list[str] = []
    for j, turn in enumerate(turns):
        speaker = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        if not isinstance(speaker, str):
            got = type(turn).__name__ if not isinstance(turn, dict) else _kind(speaker)
            field = f"conversations[{j}]" if not isinstance(turn, dict) else f"conversations[{j}].from"
            errors.append(_bad(path, index, f"field {field!r} is {got}", ", expected a turn with string from/value (or role/content)"))
            roles.append(None)
            continue
        role = speaker.strip().lower()
        if role in USER_ROLES or role in ASSISTANT_ROLES:
            roles.append("user" if role in USER_ROLES else "assistant")
        else:
            skipped.append(f"sharegpt: turn from {role!r} skipped (not human/gpt)")
            roles.append(None)
    examples: list[Row] = []
    j = 0
    while j < len(turns):
        if roles[j] == "user" and j + 1 < len(turns) and roles[j + 1] == "assistant":
            # The pair's texts are checked only here, so a broken text costs one example and one count.
            problems = [(k, _text_problem(_text(turns[k]))) for k in (j, j + 1)]
            k, problem = next(((k, p) for k, p in problems if p), (j, ""))
            if problem:
                errors.append(_bad(path, index, f"field 'conversations[{k}].value' is {problem}",
                                   " (a human/gpt pair needs text on both sides)"))
            else:
                examples.append({"instruction": _text(turns[j]), "input": "", "output": _text(turns[j + 1])})
            j += 2
            continue
        if roles[j] == "assistant":
            skipped.append("sharegpt: gpt turn without a human turn before it skipped")
        elif roles[j] == "user":
            skipped.append("sharegpt: human turn without a gpt reply skipped")
        j += 1
    return examples, errors, skipped


def _text(turn: dict) -> Any:
    """A turn's text: ShareGPT's `value`, or `content` in role/content (chat-messages) turns."""
    return turn.get("value", turn.get("content"))


def _kind(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


def _text_problem(value: Any) -> str:
    """'' for usable turn text, else what is wrong with it."""
    if not isinstance(value, str):
        return _kind(value)
    return "" if value.strip() else "empty"


def convert_rows(raw: list[Any], path: Path | str, drop_bad: bool,
                 drop: Callable[[str], None]) -> tuple[str, list[Row]]:
    """The file's schema and its rows as Rows; bad input raises unless drop_bad, and every drop is counted."""
    schema = detect_schema(raw, path)
    rows: list[Row] = []
    for i, row in enumerate(raw):
        try:
            if schema == "sharegpt":
                examples, errors, skipped = sharegpt_examples(row, i, path)
            else:
                examples, errors, skipped = [alpaca_row(row, i, path)], [], []
        except RowError as err:
            examples, errors, skipped = [], [err], []
        if errors and not drop_bad:
            raise errors[0]
        for reason in [e.reason for e in errors] + skipped:
            drop(reason)
        rows += examples
    return schema, rows
