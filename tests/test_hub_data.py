"""Data by name from anywhere: train_data="hf:ORG/NAME" with a column mapping, AlpacaEval from the hub, and the
offline errors that name the dataset, the local file to use instead and NEFTLIB_DATA_DIR."""
from __future__ import annotations

import json

import pytest

from neftlib.base.recipes import load_config
from neftlib.data.prepare import load_eval_set, load_instructions

QA = [{"question": f"q{i}", "context": "", "answer": f"a{i}", "id": i} for i in range(3)]
CHAT = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}]


@pytest.fixture
def offline_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture
def fake_hub(offline_dir, monkeypatch):
    """The hub switched on, with datasets.load_dataset serving made-up datasets by id (nothing is downloaded)."""
    import datasets

    served = {"someone/qa": QA, "someone/chat": CHAT}
    calls = []

    def load_dataset(hub_id, **kwargs):
        calls.append((hub_id, kwargs))
        return served[hub_id]

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_any_hub_dataset_with_a_column_mapping(fake_hub):
    rows, report = load_instructions("hf:someone/qa", columns={"instruction": "question", "input": "context",
                                                                "output": "answer"})
    assert fake_hub == [("someone/qa", {"split": "train"})]
    assert report.source == "hub:someone/qa" and report.schema == "alpaca"
    assert sorted(r["instruction"] for r in rows) == ["q0", "q1", "q2"]
    assert {r["instruction"]: r["output"] for r in rows}["q1"] == "a1" and all(set(r) == {"instruction", "input", "output"}
                                                                             for r in rows)


def test_a_pinned_configuration_split_and_revision(fake_hub, results):
    from neftlib.data.sources import HubPin
    from neftlib.pipeline.stages import hub_pin

    pin = HubPin(config="plain", split="train[:2]", revision="abc123")
    _, report = load_instructions("hf:someone/qa", columns={"instruction": "question", "output": "answer"}, hub=pin)
    assert fake_hub == [("someone/qa", {"split": "train[:2]", "name": "plain", "revision": "abc123"})]
    assert report.source == "hub:someone/qa (config=plain, split=train[:2], revision=abc123)"
    # TRL's names of the same settings, as a recipe or --set gives them
    cfg = load_config("smoke", dataset_name="someone/qa", dataset_config="plain", dataset_train_split="train[:2]",
                      train_data_revision="abc123")
    assert cfg.train_data == "hf:someone/qa" and hub_pin(cfg) == pin
    with pytest.raises(ValueError, match="train_data='mini' is local"):
        load_config("smoke", train_data_revision="abc123")


def test_messages_columns_are_conversations(fake_hub):
    rows, report = load_instructions("hf:someone/chat", drop_bad=True)
    assert rows == [{"instruction": "hi", "input": "", "output": "hello"}]
    assert report.schema == "sharegpt" and report.dropped == {"sharegpt: turn from 'system' skipped (not human/gpt)": 1}


def test_mapping_names_a_missing_column_and_our_fields(fake_hub):
    with pytest.raises(ValueError, match=r"no such column \(columns: question, context, answer, id\)"):
        load_instructions("hf:someone/qa", columns={"instruction": "prompt"})
    with pytest.raises(ValueError, match="train_columns=.*map any of instruction, input, output, conversations"):
        load_config("smoke", train_columns={"question": "q"})
    with pytest.raises(ValueError, match="'hf:ORG/NAME'"):
        load_instructions("hf:no-slash")


def test_local_copy_in_the_data_folder_wins(fake_hub, offline_dir):
    (offline_dir / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    rows, report = load_instructions("hf:someone/qa", columns={"instruction": "question", "output": "answer"})
    assert report.source == str(offline_dir / "qa.jsonl") and fake_hub == [] and len(rows) == 3


def test_offline_hub_dataset_names_dataset_local_file_and_data_dir(offline_dir, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub used while offline"))
    with pytest.raises(FileNotFoundError) as err:
        load_instructions("hf:someone/qa")
    message = str(err.value)
    for part in ("someone/qa", "HF_HUB_OFFLINE", "qa.json", "NEFTLIB_DATA_DIR", str(offline_dir), "file's path"):
        assert part in message, (part, message)


def test_offline_alpaca_eval_names_dataset_local_file_and_data_dir(offline_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub used while offline"))
    with pytest.raises(FileNotFoundError) as err:
        load_eval_set("alpaca_eval")
    message = str(err.value)
    for part in ("tatsu-lab/alpaca_eval", "HF_HUB_OFFLINE", "alpaca_eval/text_davinci_003.json", "NEFTLIB_DATA_DIR",
                 str(offline_dir)):
        assert part in message, (part, message)
    rows, source = load_eval_set("auto")  # 'auto' stays offline: the embedded prompts
    assert source.endswith("mini_eval.json") and rows


def test_alpaca_eval_from_the_hub_when_no_local_file(offline_dir, monkeypatch, tmp_path):
    import huggingface_hub

    served = tmp_path / "alpaca_eval.json"
    rows = [{"instruction": f"p{i}", "output": f"r{i}", "generator": "text_davinci_003", "dataset": "x"}
            for i in range(5)]
    served.write_text(json.dumps(rows))
    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, repo_type: asked.append((repo, name, repo_type)) or str(served))
    got, source = load_eval_set("alpaca_eval", limit=3)
    assert asked == [("tatsu-lab/alpaca_eval", "alpaca_eval.json", "dataset")]
    assert source == "hub:tatsu-lab/alpaca_eval" and len(got) == 3
    served.write_text(json.dumps(rows[:4] + [{**rows[4], "generator": "gpt4"}]))
    with pytest.raises(ValueError, match="not only text_davinci_003"):
        load_eval_set("alpaca_eval")
