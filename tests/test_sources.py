"""The paper's four instruction sets: schema detection, conversion, ShareGPT splitting, hub and local loading."""
import json

import pytest

from neftlib.data.prepare import (IGNORE_INDEX, VICUNA_SYSTEM, format_prompt, load_instructions, resolve_train_source,
                          tokenize_example)
from neftlib.base.paths import MINI_TRAIN
from neftlib.data.sources import SOURCES, local_candidates


def write(path, rows):
    """Rows as JSON, JSONL or parquet, by the file's suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text(json.dumps(rows))
    return str(path)


def by_instruction(rows):
    return sorted(rows, key=lambda r: (r["instruction"], r["output"]))


@pytest.fixture
def offline_dir(tmp_path, monkeypatch):
    """An empty NEFTLIB_DATA_DIR with the hub switched off, so nothing can reach the network."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


# ---------- instruction/output schemas ----------

def test_alpaca_rows_with_and_without_input(tmp_path):
    path = write(tmp_path / "a.json", [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
                                       {"instruction": "Name a colour.", "input": "", "output": "Red"}])
    rows, report = load_instructions(path)
    assert report.schema == "alpaca" and report.rows_read == 2 and report.dropped == {}
    assert by_instruction(rows) == [{"instruction": "Name a colour.", "input": "", "output": "Red"},
                                    {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}]
    without, with_input = (format_prompt(r, "alpaca") for r in by_instruction(rows))
    assert "### Input:\nBonjour\n\n### Response:" in with_input and "### Input:" not in without


def test_evol_instruct_row_has_no_input(tmp_path):
    raw = [{"instruction": "Explain recursion.", "output": "A function calling itself."}]
    path = write(tmp_path / "evol.jsonl", raw)
    rows, report = load_instructions(path)
    assert report.schema == "evol"
    assert rows == [{"instruction": "Explain recursion.", "input": "", "output": "A function calling itself."}]
    assert format_prompt(rows[0], "alpaca").endswith("### Instruction:\nExplain recursion.\n\n### Response:")


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_open_platypus_rows_drop_data_source(tmp_path, suffix):
    raw = [{"input": "", "output": "4", "instruction": "What is 2+2?", "data_source": "MATH/PRM-800K"},
           {"input": "x = 3", "output": "6", "instruction": "Double x.", "data_source": "scibench"}]
    rows, report = load_instructions(write(tmp_path / f"platypus{suffix}", raw))
    assert report.schema == "platypus"
    assert by_instruction(rows) == [{"instruction": "Double x.", "input": "x = 3", "output": "6"},
                                    {"instruction": "What is 2+2?", "input": "", "output": "4"}]


# ---------- ShareGPT ----------

CONVERSATIONS = [
    {"id": "multi", "conversations": [
        {"from": "system", "value": "You are ChatGPT."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello! How can I help?"},
        {"from": "human", "value": "Name a prime."},
        {"from": "gpt", "value": "7"},
        {"from": "human", "value": "Thanks, bye"},  # no reply: skipped
    ]},
    {"id": "starts-with-gpt", "conversations": [
        {"from": "gpt", "value": "Welcome back."},  # nothing asked it: skipped
        {"from": "human", "value": "Spell cat."},
        {"from": "gpt", "value": "C-A-T"},
    ]},
    {"id": "odd", "conversations": [
        {"from": "human", "value": "First question"},  # followed by another human turn: skipped
        {"from": "user", "value": "Second question"},
        {"from": "assistant", "value": "Second answer"},
        {"from": "bing", "value": "Search results"},  # unknown speaker: skipped
        {"from": "gpt", "value": "Orphan reply"},  # after a skipped turn, not a reply to a human: skipped
    ]},
]


def test_sharegpt_split_rule(tmp_path):
    rows, report = load_instructions(write(tmp_path / "sg.json", CONVERSATIONS))
    assert report.schema == "sharegpt" and report.rows_read == 3 and report.examples == 4
    assert by_instruction(rows) == [
        {"instruction": "Hi", "input": "", "output": "Hello! How can I help?"},
        {"instruction": "Name a prime.", "input": "", "output": "7"},
        {"instruction": "Second question", "input": "", "output": "Second answer"},
        {"instruction": "Spell cat.", "input": "", "output": "C-A-T"},
    ]
    assert report.dropped == {
        "sharegpt: turn from 'system' skipped (not human/gpt)": 1,
        "sharegpt: turn from 'bing' skipped (not human/gpt)": 1,
        "sharegpt: human turn without a gpt reply skipped": 2,
        "sharegpt: gpt turn without a human turn before it skipped": 2,
    }


def test_sharegpt_limit_counts_examples_and_is_seeded(tmp_path):
    path = write(tmp_path / "sg.jsonl", CONVERSATIONS)
    a, report = load_instructions(path, seed=3, limit=3)
    b, _ = load_instructions(path, seed=3, limit=3)
    assert len(a) == 3 and a == b and report.rows_used == 3 and report.examples == 4


def test_sharegpt_rows_in_vicuna_format(tmp_path, tokenizer):
    rows, _ = load_instructions(write(tmp_path / "sg.json", CONVERSATIONS[1:2]))
    prompt = format_prompt(rows[0], "vicuna")
    assert prompt == VICUNA_SYSTEM + " USER: Spell cat. ASSISTANT:"
    ex, reason = tokenize_example(rows[0], tokenizer, "vicuna", 512)
    n = len(tokenizer(prompt)["input_ids"])
    assert reason is None and ex["labels"][:n] == [IGNORE_INDEX] * n
    assert tokenizer.decode(ex["input_ids"][n:-1]).strip() == "C-A-T"


def test_sharegpt_parquet_nested_turns(tmp_path):
    rows, report = load_instructions(write(tmp_path / "sg.parquet", CONVERSATIONS[1:2]))
    assert report.schema == "sharegpt" and rows == [{"instruction": "Spell cat.", "input": "", "output": "C-A-T"}]


# ---------- bad input, every schema ----------

GOOD_ALPACA = {"instruction": "a", "input": "", "output": "b"}
GOOD_EVOL = {"instruction": "a", "output": "b"}
GOOD_PLATYPUS = {"instruction": "a", "input": "", "output": "b", "data_source": "s"}
GOOD_CONV = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]}


def conv(*turns):
    return {"conversations": list(turns)}


@pytest.mark.parametrize("good,bad,message,reason", [
    (GOOD_EVOL, {"instruction": "c"}, "row 1: missing field 'output' (fields seen: instruction)",
     "missing field 'output'"),
    (GOOD_EVOL, {"instruction": "c", "output": 5}, "row 1: field 'output' is int, expected a string",
     "field 'output' is int"),
    (GOOD_ALPACA, {"instruction": "c", "input": ["x"], "output": "d"}, "row 1: field 'input' is list",
     "field 'input' is list"),
    (GOOD_ALPACA, {"instruction": " ", "input": "", "output": "d"}, "row 1: field 'instruction' is empty",
     "field 'instruction' is empty"),
    (GOOD_PLATYPUS, {"instruction": "c", "input": "", "output": "", "data_source": "s"},
     "row 1: field 'output' is empty (nothing to learn)", "field 'output' is empty"),
    (GOOD_ALPACA, GOOD_CONV, "row 1 is a conversation (ShareGPT schema)", "conversation in a file of instruction rows"),
    (GOOD_ALPACA, "just text", "row 1 is a str, expected an object", "row is not an object"),
    (GOOD_CONV, {"id": "x"}, "row 1: missing field 'conversations' (fields seen: id)",
     "missing field 'conversations'"),
    (GOOD_CONV, {"conversations": "hi"}, "row 1: field 'conversations' is str", "field 'conversations' is str"),
    (GOOD_CONV, {"conversations": []}, "row 1: field 'conversations' is empty", "field 'conversations' is empty"),
    (GOOD_CONV, conv("hello"), "row 1: field 'conversations[0]' is str", "field 'conversations[0]' is str"),
    (GOOD_CONV, conv({"value": "q"}), "row 1: field 'conversations[0].from' is missing",
     "field 'conversations[0].from' is missing"),
    (GOOD_CONV, conv({"from": "human", "value": "q"}, {"from": "gpt", "value": 3}),
     "row 1: field 'conversations[1].value' is int", "field 'conversations[1].value' is int"),
    (GOOD_CONV, conv({"from": "human", "value": "q"}, {"from": "gpt"}),
     "row 1: field 'conversations[1].value' is missing", "field 'conversations[1].value' is missing"),
    (GOOD_CONV, conv({"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}),
     "row 1: field 'conversations[1].value' is empty", "field 'conversations[1].value' is empty"),
    (GOOD_CONV, conv({"from": "human", "value": ""}, {"from": "gpt", "value": "r"}),
     "row 1: field 'conversations[0].value' is empty", "field 'conversations[0].value' is empty"),
])
def test_bad_rows_raise_with_file_row_field_or_are_dropped(tmp_path, good, bad, message, reason):
    path = write(tmp_path / "bad.json", [good, bad])
    with pytest.raises(ValueError) as err:
        load_instructions(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)
    rows, report = load_instructions(path, drop_bad=True)
    kept = {"instruction": "q", "input": "", "output": "r"} if good is GOOD_CONV else GOOD_ALPACA
    assert rows == [kept] and report.dropped == {reason: 1}


def test_sharegpt_bad_pair_dropped_alone(tmp_path):
    row = conv({"from": "human", "value": "q1"}, {"from": "gpt", "value": "r1"},
               {"from": "human", "value": "q2"}, {"from": "gpt", "value": ""})
    rows, report = load_instructions(write(tmp_path / "sg.json", [row]), drop_bad=True)
    assert rows == [{"instruction": "q1", "input": "", "output": "r1"}]
    assert report.dropped == {"field 'conversations[3].value' is empty": 1}


@pytest.mark.parametrize("raw,seen", [
    ([{"prompt": "x", "completion": "y"}], "fields seen: ['completion', 'prompt']"),
    (["text", "more"], "fields seen: a str, not an object"),
])
def test_unknown_schema_names_file_row_and_fields(tmp_path, raw, seen):
    path = write(tmp_path / "unknown.json", raw)
    for drop_bad in (False, True):
        with pytest.raises(ValueError, match="unknown.json: row 0: unknown schema") as err:
            load_instructions(path, drop_bad=drop_bad)
        assert seen in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty.json: holds no rows"):
        load_instructions(write(tmp_path / "empty.json", []))


# ---------- names: local file first, then the hub ----------

HUB_ROWS = {
    "alpaca": ([{"instruction": "i", "input": "", "output": "o", "text": "..."}], "alpaca"),
    "evol-instruct": ([{"instruction": "i", "output": "o"}], "evol"),
    "open-platypus": ([{"input": "", "output": "o", "instruction": "i", "data_source": "leetcode"}], "platypus"),
    "sharegpt": ([{"id": "1", "conversations": [{"from": "human", "value": "i"}, {"from": "gpt", "value": "o"}]}],
                 "sharegpt"),
}


@pytest.fixture
def fake_hub(offline_dir, monkeypatch):
    """datasets.load_dataset replaced by a recorder serving HUB_ROWS; the hub switched back on."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(hub_id, **kwargs):
        calls.append((hub_id, kwargs))
        key = next(k for k, s in SOURCES.items() if s.hub_id == hub_id)
        return HUB_ROWS[key][0]

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", list(SOURCES))
def test_hub_path_takes_the_right_id_and_converts(fake_hub, name):
    rows, report = load_instructions(name)
    spec = SOURCES[name]
    expected_kwargs = {"split": "train", **({"data_files": spec.data_files} if spec.data_files else {})}
    assert fake_hub == [(spec.hub_id, expected_kwargs)]
    assert report.source == f"hub:{spec.hub_id}" and report.schema == HUB_ROWS[name][1]
    assert rows == [{"instruction": "i", "input": "", "output": "o"}]


def test_hub_ids_are_the_papers_sets():
    assert {k: s.hub_id for k, s in SOURCES.items()} == {
        "alpaca": "tatsu-lab/alpaca", "evol-instruct": "WizardLMTeam/WizardLM_evol_instruct_70k",
        "open-platypus": "garage-bAInd/Open-Platypus", "sharegpt": "anon8231489123/ShareGPT_Vicuna_unfiltered"}
    assert SOURCES["sharegpt"].prompt_format == "vicuna" and SOURCES["alpaca"].prompt_format == "alpaca"


def test_local_file_wins_over_hub(fake_hub, offline_dir):
    write(offline_dir / "alpaca_evol_instruct_70k.json", [{"instruction": "local", "output": "row"}])
    write(offline_dir / "sharegpt.jsonl", [GOOD_CONV])
    evol, report = load_instructions("Evol_Instruct")
    assert evol == [{"instruction": "local", "input": "", "output": "row"}]
    assert report.source == str(offline_dir / "alpaca_evol_instruct_70k.json")
    sg, _ = load_instructions("sharegpt")
    assert sg == [{"instruction": "q", "input": "", "output": "r"}] and fake_hub == []


@pytest.mark.parametrize("name", list(SOURCES))
def test_offline_raises_file_not_found_naming_the_file(offline_dir, monkeypatch, name):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub used while offline"))
    with pytest.raises(FileNotFoundError) as err:
        load_instructions(name)
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and local_candidates(name)[0] in message
    assert str(offline_dir) in message and SOURCES[name].hub_id in message


def test_unreachable_hub_raises_file_not_found(fake_hub, monkeypatch):
    import datasets
    import httpx

    def failing(error):
        def load_dataset(*args, **kwargs):
            raise error
        return load_dataset

    for error in (ConnectionError("no route to host"), httpx.ConnectError("dns failed")):
        monkeypatch.setattr(datasets, "load_dataset", failing(error))
        with pytest.raises(FileNotFoundError) as err:
            load_instructions("open-platypus")
        assert type(error).__name__ in str(err.value) and "open-platypus.parquet" in str(err.value)


def test_resolve_train_source_contract(offline_dir):
    assert resolve_train_source("mini") == MINI_TRAIN
    assert resolve_train_source("auto") == MINI_TRAIN  # no Alpaca file in the data folder
    with pytest.raises(FileNotFoundError, match="ShareGPT_V3_unfiltered_cleaned_split.json"):
        resolve_train_source("sharegpt")
    write(offline_dir / "alpaca_5000.json", [GOOD_ALPACA])
    assert resolve_train_source("auto") == offline_dir / "alpaca_5000.json"
    assert resolve_train_source("alpaca") == offline_dir / "alpaca_5000.json"
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_train_source(str(offline_dir / "missing.json"))


# ---------- the real files, when present ----------

@pytest.mark.parametrize("name", list(SOURCES))
def test_real_file_in_data_dir(data_dir, monkeypatch, name):
    present = [data_dir / f for f in local_candidates(name) if (data_dir / f).exists()]
    if not present:
        pytest.skip(f"no {name} file in {data_dir} (looked for {', '.join(local_candidates(name))})")
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(data_dir))
    rows, report = load_instructions(name, drop_bad=True, limit=200)
    assert report.source == str(present[0]) and report.rows_read > 0 and len(rows) == min(200, report.examples)
    assert report.schema == {"alpaca": "alpaca", "evol-instruct": "evol", "open-platypus": "platypus",
                             "sharegpt": "sharegpt"}[name]
    assert all(set(r) == {"instruction", "input", "output"} and r["output"].strip() for r in rows)
