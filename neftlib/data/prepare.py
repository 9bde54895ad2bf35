"""Instruction data: loading and validating rows, the paper's prompt formats, tokenization with loss on the response."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from neftlib.data import sources
from neftlib.base.io import read_json, read_jsonl
from neftlib.base.paths import MINI_EVAL, MINI_TRAIN, data_dir

IGNORE_INDEX = -100

# The Alpaca prompt exactly as the NEFTune experiment code trains with it (the Stanford Alpaca
# template); the response follows "### Response:" directly and ends with EOS.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
# Vicuna v1.1 (FastChat's "vicuna_v1.1" conversation template), used for ShareGPT.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_PROMPT = VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:"


@dataclass
class DataReport:
    """What happened to the rows: nothing disappears without a count and a reason."""

    source: str
    rows_read: int = 0  # rows in the file or hub split (ShareGPT: conversations)
    rows_used: int = 0  # examples kept after the row limit
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0  # examples cut to max_length
    longer_than_512: int = 0  # examples whose full tokenized length exceeds the paper's 512
    schema: str = ""  # "alpaca", "evol", "platypus" or "sharegpt" (train with prompt_format="vicuna")
    examples: int = 0  # examples built before the limit (ShareGPT: several per conversation)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".parquet":
        # Nested columns (ShareGPT turns) come back as numpy arrays; JSON-shaped Python objects are wanted.
        return [_plain(row) for row in pd.read_parquet(path).to_dict("records")]
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    return rows


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def validate_row(row: Any, index: int, path: Path | str) -> dict[str, str]:
    """An Alpaca-schema row (instruction, optional input, output), or a ValueError naming file, row and field."""
    return sources.alpaca_row(row, index, path)


def _local_file(key: str) -> Path | None:
    root = data_dir()
    found = [root / name for name in sources.local_candidates(key)] if root is not None else []
    return next((p for p in found if p.exists()), None)


def resolve_train_source(name: str) -> Path:
    """The local file behind a training-data name: 'mini', 'auto', a source name (sources.SOURCES) or a path.

    A source name (or 'hf:ORG/NAME') without a local copy raises FileNotFoundError (load_instructions then
    tries the hub);
    'mini' and 'auto' always resolve ('auto': the local Alpaca file, else the mini set).
    """
    if name == "mini":
        return MINI_TRAIN
    if name == "auto":
        return _local_file("alpaca") or MINI_TRAIN
    key = sources.source_key(name)
    if key is not None:
        found = _local_file(key)
        if found is None:
            raise FileNotFoundError(sources.missing_message(key, data_dir()))
        return found
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"train_data={name!r}: no such file; use 'mini', 'auto', one of {', '.join(sources.SOURCES)}, "
            "'hf:ORG/NAME' (a hub dataset) or a path")
    return path


def load_instructions(source: str, *, seed: int = 0, limit: int | None = None, drop_bad: bool = False,
                      columns: dict[str, str] | None = None, hub: sources.HubPin = sources.HubPin(),
                      ) -> tuple[list[dict[str, str]], DataReport]:
    """{instruction, input, output} rows of any of the paper's schemas, after a seeded shuffle and a row limit.

    A source name ('alpaca', ..., or 'hf:ORG/NAME') reads its file in NEFTLIB_DATA_DIR, else the hub's split,
    configuration and revision that `hub` names (FileNotFoundError offline). `columns` maps our field names to
    the data's own (ours -> theirs).
    """
    key = sources.source_key(source)
    if key is not None and _local_file(key) is None:
        raw, origin = sources.hub_rows(key, data_dir(), hub), hub.describe(sources.spec_of(key).hub_id)
    else:
        path = resolve_train_source(source)
        raw, origin = _read_rows(path), str(path)
    raw = sources.map_columns(raw, dict(columns or {}), origin)
    report = DataReport(source=origin, rows_read=len(raw))
    try:
        report.schema, rows = sources.convert_rows(raw, origin, drop_bad, report.drop)
    except sources.RowError as err:
        raise sources.RowError(f"{err}; fix the row, or set drop_bad_rows=True to drop and count bad rows",
                               err.reason) from None
    if not rows:  # every row dropped: refuse here rather than train on nothing later
        dropped = "; ".join(f"{n} x {why}" for why, n in report.dropped.items())
        raise ValueError(f"{origin}: no usable rows ({report.rows_read} read, all dropped: {dropped}); "
                         "fix the file or choose another train_data")
    report.examples = len(rows)
    random.Random(seed).shuffle(rows)
    if limit is not None:
        rows = rows[:limit]
    report.rows_used = len(rows)
    return rows, report


def load_eval_set(source: str = "auto", *, seed: int = 0, limit: int | None = None) -> tuple[list[dict], str]:
    """Evaluation prompts with reference answers (alpaca_eval format) and the file they came from."""
    if source in ("alpaca_eval", "auto"):
        root = data_dir()
        path = root / "alpaca_eval" / "text_davinci_003.json" if root else None
        if path is None or not path.exists():
            path = MINI_EVAL  # 'auto' never uses the hub: offline by default
            if source == "alpaca_eval":
                path = Path(f"hub:{sources.ALPACA_EVAL_HUB[0]}")
    elif source == "mini":
        path = MINI_EVAL
    else:
        path = Path(source).expanduser()
    rows = sources.alpaca_eval_hub_rows(data_dir()) if str(path).startswith("hub:") else _read_rows(path)
    for i, row in enumerate(rows):
        for name in ("instruction", "output"):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{path}: row {i}: field {name!r} missing or not a string")
    if limit is not None and limit < len(rows):
        # A seeded subset keeps the original order so outputs line up with the full set.
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    return rows, str(path)


def format_prompt(row: dict[str, str], fmt: str, tokenizer=None) -> str:
    """The prompt text of a row in the given format (alpaca, vicuna, or the model's chat template)."""
    instruction, inp = row["instruction"], row.get("input", "")
    if fmt == "alpaca":
        return (ALPACA_PROMPT_INPUT if inp else ALPACA_PROMPT).format(instruction=instruction, input=inp)
    user = f"{instruction}\n\n{inp}" if inp else instruction
    if fmt == "vicuna":
        return VICUNA_PROMPT.format(instruction=user)
    if fmt == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"prompt_format={fmt!r} is not one of alpaca, vicuna, chat")


def tokenize_example(row: dict[str, str], tokenizer, fmt: str, max_length: int) -> tuple[dict | None, str | None]:
    """input_ids and labels (prompt positions -100, EOS appended); (None, reason) when nothing is left to learn."""
    prompt_ids = tokenizer(format_prompt(row, fmt, tokenizer), add_special_tokens=fmt != "chat")["input_ids"]
    # The Alpaca template ends in "Response:"; the paper's code joins response text straight after it.
    response = row["output"] if fmt == "chat" else (" " + row["output"] if fmt == "vicuna" else row["output"])
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        return None, f"prompt alone is >= max_length ({max_length}) tokens"
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": ids, "labels": labels, "full_length": len(prompt_ids) + len(response_ids)}, None


def tokenize_rows(rows: list[dict], tokenizer, fmt: str, max_length: int,
                  report: DataReport | None = None) -> list[dict]:
    """Tokenized examples; truncations and drops are counted in `report`."""
    out = []
    for row in rows:
        example, reason = tokenize_example(row, tokenizer, fmt, max_length)
        if example is None:
            if report is not None:
                report.drop(reason)
            continue
        full = example.pop("full_length")
        if report is not None:
            report.truncated += full > max_length
            report.longer_than_512 += full > 512
        out.append(example)
    return out
