import json
from pathlib import Path

import pytest

from neftlib.data.prepare import (ALPACA_PROMPT, IGNORE_INDEX, VICUNA_PROMPT, format_prompt, load_eval_set,
                          load_instructions, tokenize_example, tokenize_rows, validate_row, DataReport)
from neftlib.base.paths import MINI_EVAL, MINI_TRAIN, data_notice


def test_alpaca_prompt_matches_the_paper_code_exactly():
    assert format_prompt({"instruction": "Name a colour.", "input": ""}, "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a colour.\n\n### Response:")
    with_input = format_prompt({"instruction": "Translate.", "input": "Bonjour"}, "alpaca")
    assert "paired with an input that provides further context" in with_input
    assert with_input.endswith("### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:")


def test_vicuna_and_chat_formats(tokenizer):
    v = format_prompt({"instruction": "Hi", "input": ""}, "vicuna")
    assert v.startswith("A chat between a curious user") and v.endswith("USER: Hi ASSISTANT:")
    chat = format_prompt({"instruction": "Hi", "input": ""}, "chat", tokenizer)
    assert "<|im_start|>user\nHi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")


def test_loss_only_on_response_with_eos(tokenizer):
    row = {"instruction": "Say yes.", "input": "", "output": "Yes."}
    ex, reason = tokenize_example(row, tokenizer, "alpaca", 512)
    assert reason is None
    prompt_len = len(tokenizer(format_prompt(row, "alpaca"))["input_ids"])
    assert ex["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert ex["labels"][prompt_len:] == ex["input_ids"][prompt_len:]
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex["input_ids"][prompt_len:-1]).strip() == "Yes."


def test_truncation_and_drops_are_counted(tokenizer):
    long = {"instruction": "Repeat.", "input": "", "output": "word " * 400}
    huge_prompt = {"instruction": "x " * 400, "input": "", "output": "ok"}
    short = {"instruction": "Hi", "input": "", "output": "Hello"}
    report = DataReport(source="inline")
    out = tokenize_rows([long, huge_prompt, short], tokenizer, "alpaca", 64, report)
    assert len(out) == 2 and all(len(e["input_ids"]) <= 64 for e in out)
    assert report.truncated == 1
    assert sum(report.dropped.values()) == 1 and "max_length" in next(iter(report.dropped))


@pytest.mark.parametrize("row,field", [
    ({"input": "", "output": "x"}, "missing field 'instruction'"),
    ({"instruction": "a", "input": 3, "output": "x"}, "field 'input' is int"),
    ({"instruction": "a", "input": "", "output": "  "}, "field 'output' is empty"),
    ({"conversations": []}, "ShareGPT schema"),
    (["a", "b"], "row 7 is a list"),
])
def test_bad_rows_name_file_row_and_field(row, field):
    with pytest.raises(ValueError, match=f"bad.json: row 7.*{field}" if "row 7 is" not in field else field):
        validate_row(row, 7, "bad.json")


def test_bad_rows_dropped_and_counted_on_request(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""},
                                {"instruction": "d", "input": None, "output": "e"}]))
    with pytest.raises(ValueError, match="row 1: field 'output' is empty"):
        load_instructions(str(path))
    rows, report = load_instructions(str(path), drop_bad=True)
    assert len(rows) == 2 and report.rows_read == 3 and sum(report.dropped.values()) == 1


def test_invalid_json_is_one_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a",')
    with pytest.raises(ValueError) as err:
        load_instructions(str(path))
    assert "broken.json: not valid JSON" in str(err.value) and "\n" not in str(err.value)


def test_jsonl_and_seeded_shuffle(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(20)))
    a, _ = load_instructions(str(path), seed=1, limit=5)
    b, _ = load_instructions(str(path), seed=1, limit=5)
    c, _ = load_instructions(str(path), seed=2, limit=5)
    assert a == b and a != c and len(a) == 5


def test_embedded_mini_set_is_valid():
    rows = json.loads(MINI_TRAIN.read_text())
    assert len(rows) >= 300
    for i, row in enumerate(rows):
        assert set(row) == {"instruction", "input", "output"}
        validate_row(row, i, MINI_TRAIN)
    evals = json.loads(MINI_EVAL.read_text())
    assert len(evals) >= 50 and not {e["instruction"] for e in evals} & {r["instruction"] for r in rows}


def test_auto_falls_back_to_mini_without_real_data(no_real_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # 'alpaca' would otherwise try the hub
    rows, source = load_eval_set("auto", limit=5)
    assert source == str(MINI_EVAL) and len(rows) == 5
    _, report = load_instructions("auto", limit=3)
    assert report.source == str(MINI_TRAIN)
    with pytest.raises(FileNotFoundError, match="NEFTLIB_DATA_DIR"):
        load_instructions("alpaca")


def test_real_alpaca_and_alpaca_eval(data_dir, monkeypatch):
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(data_dir))
    rows, report = load_instructions("alpaca", drop_bad=True)
    n = len(json.loads(Path(report.source).read_text()))
    assert report.rows_read == n and len(rows) + sum(report.dropped.values()) == n
    evals, source = load_eval_set("alpaca_eval")
    assert len(evals) == 805 and source.endswith("text_davinci_003.json")
    sub, _ = load_eval_set("alpaca_eval", seed=0, limit=50)
    assert len(sub) == 50 and all(r in evals for r in sub)


def test_data_notice_says_which_data_a_run_reads(no_real_data, monkeypatch, tmp_path):
    assert "not set" in data_notice() and "mini" in data_notice()
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(tmp_path))
    assert data_notice() == f"data: NEFTLIB_DATA_DIR={tmp_path}"
