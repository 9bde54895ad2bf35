"""The hand-off to the official alpaca_eval package, offline: its errors, its call, and the file format it reads."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types

import pandas as pd
import pytest

from neftlib.evaluation import judge_alpaca_eval as jae
from neftlib.base.recipes import load_config
from neftlib.evaluation.generate import model_outputs
from neftlib.base.io import write_json

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
    from neftlib.pipeline.stages import stage_dir

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


# ---------- stage 04 runs it when the profile asks, and only then ----------

def _judged_run(run: str, fake_arms, **overrides):
    from neftlib.pipeline.stages import prepare_data, start_run

    cfg = start_run("smoke", run, arms=("baseline", "neftune"), qlora_arms=(), length_arms=(), agreement_pairs=0,
                    **overrides)
    prepare_data(cfg)
    fake_arms(cfg)
    return cfg


def test_profiles_never_pay_unasked():
    assert load_config("smoke").official_judge == "" and load_config("gpu-7b").official_judge == ""
    assert load_config("gpu-7b-gpt4").official_judge == "alpaca_eval_gpt4"
    with pytest.raises(ValueError, match="official_judge"):
        load_config("smoke", official_judge="gpt4")


def test_stage_04_runs_it_when_asked_and_never_pays_twice(results, fake_alpaca_eval, fake_arms, monkeypatch):
    import os

    from neftlib.evaluation.stage import evaluate
    from neftlib.pipeline.stages import stage_dir

    # the endpoint given the project's way: handed to alpaca_eval's OpenAI client for the call only
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NEFTLIB_JUDGE_API_KEY", KEY)
    monkeypatch.setenv("NEFTLIB_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    seen = []
    module = sys.modules["alpaca_eval"]
    real = module.evaluate
    monkeypatch.setattr(module, "evaluate", lambda **kw: seen.append(
        (os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL"))) or real(**kw))

    cfg = _judged_run("gpt4", fake_arms, official_judge="alpaca_eval_gpt4")
    wins = evaluate(cfg, progress=False).set_index("arm")
    assert len(fake_alpaca_eval) == 2 and seen == [(KEY, "http://127.0.0.1:9/v1")] * 2
    assert "OPENAI_API_KEY" not in os.environ and "OPENAI_BASE_URL" not in os.environ
    assert (wins["alpaca_eval_gpt4_win_rate"] == 50.0).all() and wins["win_rate"].between(0, 100).all()
    assert (stage_dir(cfg, "eval") / "alpaca_eval_gpt4.csv").exists()

    (stage_dir(cfg, "eval") / "DONE.json").unlink()  # stage 04 again: the judged arms are read back
    evaluate(cfg, progress=False)
    assert len(fake_alpaca_eval) == 2
    written = "".join(p.read_text(errors="replace") for p in results.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    assert KEY not in written


def test_asked_for_but_not_installed_fails_before_anything_is_generated(results, monkeypatch):
    from neftlib.evaluation.stage import evaluate
    from neftlib.pipeline.stages import stage_dir, start_run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "alpaca_eval" else real(name, *a))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = start_run("smoke", "refused", official_judge="alpaca_eval_gpt4")
    with pytest.raises(RuntimeError, match="pip install alpaca-eval"):
        evaluate(cfg, progress=False)
    assert not stage_dir(cfg, "eval").exists()


# ---------- alpaca_eval's own length-controlled win rate ----------

def test_its_length_controlled_win_rate_where_the_package_and_inputs_allow(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "alpaca_eval" else real(name, *a))
    value, note = jae.alpaca_eval_lc([{"instruction": "x", "preference": 2}])
    assert math.isnan(value) and "not installed" in note
    monkeypatch.undo()

    frames = []

    def get_length_controlled_winrate(frame, save_weights_dir="auto"):
        frames.append((frame, save_weights_dir))
        return {"win_rate": 50.0, "length_controlled_winrate": 42.0}

    package, metrics = types.ModuleType("alpaca_eval"), types.ModuleType("alpaca_eval.metrics")
    package.__spec__ = importlib.machinery.ModuleSpec("alpaca_eval", None)
    metrics.get_length_controlled_winrate = get_length_controlled_winrate
    package.metrics = metrics
    monkeypatch.setitem(sys.modules, "alpaca_eval", package)
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics", metrics)

    # its GLM's instruction difficulty is per AlpacaEval prompt: other prompts cannot be scored
    reference = tmp_path / "data"
    write_json(reference / "alpaca_eval" / "text_davinci_003.json", ROWS)
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(reference))
    value, note = jae.alpaca_eval_lc([{"instruction": "Not an AlpacaEval prompt", "preference": 2}])
    assert math.isnan(value) and "805" in note and frames == []

    rows = [{"instruction": r["instruction"], "output_1": r["output"], "output_2": "y", "generator_1": "ref",
             "generator_2": "m", "preference": p} for r, p in zip(ROWS[::-1], (2.0, 1.0))]
    assert jae.alpaca_eval_lc(rows) == (42.0, "ok")
    frame, weights_dir = frames[0]
    assert list(frame["index"]) == [1, 0] and weights_dir is None  # positions in the 805; nothing written into it

    metrics.get_length_controlled_winrate = lambda *a, **k: (_ for _ in ()).throw(OSError("offline: no hub"))
    value, note = jae.alpaca_eval_lc(rows)
    assert math.isnan(value) and "OSError: offline" in note
