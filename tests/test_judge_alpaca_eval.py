"""The hand-off to the official alpaca_eval package, offline: its errors, its call, and the file format it reads."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pandas as pd
import pytest

from neftlib import judge_alpaca_eval as jae
from neftlib.config import load_config
from neftlib.generate import model_outputs
from neftlib.io import write_json

ROWS = [{"instruction": "Name a colour.", "output": "Blue.", "generator": "text_davinci_003", "dataset": "helpful_base"},
        {"instruction": "Add 2 and 2.", "output": "4", "generator": "text_davinci_003", "dataset": "oasst"}]
KEY = "sk-neftlib-test-not-a-real-key"


@pytest.fixture
def fake_alpaca_eval(monkeypatch):
    """An `alpaca_eval` module whose evaluate() records its arguments and returns a leaderboard."""
    calls = []

    def evaluate(**kwargs):
        calls.append(kwargs)
        board = pd.DataFrame({"win_rate": [50.0], "standard_error": [35.4], "n_total": [2], "avg_length": [3]},
                             index=["smoke-run"])
        return board, [{"preference": 1.0}, {"preference": 2.0}]

    module = types.ModuleType("alpaca_eval")
    module.__spec__ = importlib.machinery.ModuleSpec("alpaca_eval", None)
    module.evaluate = evaluate
    monkeypatch.setitem(sys.modules, "alpaca_eval", module)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return calls


def test_clear_error_names_the_package_and_the_key(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "alpaca_eval" else real(name, *a))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("NEFTLIB_JUDGE_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match=r"pip install alpaca-eval.*OPENAI_API_KEY"):
        jae.check_ready()


def test_key_alone_missing(fake_alpaca_eval, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("NEFTLIB_JUDGE_API_KEY", raising=False)
    with pytest.raises(RuntimeError) as err:
        jae.check_ready()
    assert "OPENAI_API_KEY" in str(err.value) and "pip install" not in str(err.value)


def test_model_outputs_have_exactly_alpaca_evals_fields():
    outs = model_outputs(ROWS, ["Red.", "4"], generator="smoke-train-neftune")
    assert all(list(o) == ["instruction", "output", "generator", "dataset"] for o in outs)
    jae.check_model_outputs(outs)
    with pytest.raises(ValueError, match="exactly"):
        jae.check_model_outputs([{**outs[0], "input": ""}])
    with pytest.raises(ValueError, match="exactly"):
        jae.check_model_outputs([{k: v for k, v in outs[0].items() if k != "dataset"}])
    with pytest.raises(ValueError, match="strings"):
        jae.check_model_outputs([{**outs[0], "output": None}])


def test_run_hands_each_arm_to_alpaca_eval(results, fake_alpaca_eval):
    from neftlib.stages import stage_dir

    cfg = load_config("smoke", run="ae")
    write_json(stage_dir(cfg, "data") / "eval.json", ROWS)
    for arm in ("train-baseline", "train-neftune"):
        write_json(stage_dir(cfg, "eval") / arm / "model_outputs.json",
                   model_outputs(ROWS, ["Red.", "4"], generator=f"ae-{arm}"))

    table = jae.alpaca_eval_run(cfg)
    assert list(table["arm"]) == ["train-baseline", "train-neftune"]
    assert (table["win_rate"] == 50.0).all() and (table["annotator"] == "alpaca_eval_gpt4").all()
    assert len(fake_alpaca_eval) == 2
    call = fake_alpaca_eval[0]
    assert call["annotators_config"] == "alpaca_eval_gpt4"  # the paper's GPT-4 judge
    assert call["model_outputs"].endswith("train-baseline/model_outputs.json")
    assert call["reference_outputs"] == ROWS  # the run's own prompts with Text-Davinci-003's answers
    assert call["fn_metric"] == "get_winrate" and call["is_return_instead_of_print"] is True
    assert call["output_path"].endswith("train-baseline/alpaca_eval")  # beside, not over, the local judge's files
    assert (stage_dir(cfg, "eval") / "alpaca_eval_gpt4.csv").exists()

    jae.alpaca_eval_run(cfg)  # judged arms are read back, never paid for twice
    assert len(fake_alpaca_eval) == 2
    written = "".join(p.read_text() for p in results.rglob("*") if p.is_file())
    assert KEY not in written  # the key stays in the environment


def test_outputs_must_line_up_with_the_reference(results, fake_alpaca_eval, tmp_path):
    path = tmp_path / "model_outputs.json"
    write_json(path, model_outputs(ROWS[::-1], ["4", "Red."], generator="x"))
    with pytest.raises(ValueError, match="same order"):
        jae.official_alpaca_eval(path, ROWS, tmp_path / "out")
    assert fake_alpaca_eval == []
