import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftlib.__main__ import WINRATE_KEYS

PROJ = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "neftlib", *args], cwd=PROJ, capture_output=True, text=True,
                          timeout=120)


def test_winrate_cli_gives_the_leaderboard_numbers(data_dir):
    proc = _cli("winrate", str(data_dir / "alpaca_eval" / "alpaca-7b" / "annotations_alpaca_eval_gpt4.json"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert tuple(stats) == WINRATE_KEYS
    # AlpacaEval leaderboard (alpaca_eval_gpt4): alpaca-7b 26.46 +- 1.54, 205 / 584 / 16 of 805, length 396.
    assert round(stats["win_rate"], 2) == 26.46 and round(stats["standard_error"], 2) == 1.54
    assert (stats["n_wins"], stats["n_wins_base"], stats["n_draws"], stats["n_total"]) == (205, 584, 16, 805)
    assert stats["avg_length"] == 396


def test_analyze_cli_on_published_outputs(data_dir):
    base = data_dir / "alpaca_eval"
    proc = _cli("analyze", str(base / "alpaca-7b" / "model_outputs.json"),
                str(base / "alpaca-7b-neft" / "model_outputs.json"), "--cutoff", "50")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 2 and rows[1]["avg_chars"] > 2 * rows[0]["avg_chars"]  # NEFT answers are longer
    assert all(r["n_kept"] + r["n_dropped"] == 805 for r in rows)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _cli("winrate", str(bad))
    assert proc.returncode == 2 and "bad.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_packaged_smollm2_loads_offline_and_answers(monkeypatch):
    """The real packaged weights (converted once into .cache/) answer a simple question."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from neftlib.data.prepare import format_prompt
    from neftlib.evaluation.generate import generate_answers
    from neftlib.training.models import load_base, load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_base("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = format_prompt({"instruction": "What is the capital of France?", "input": ""}, "chat", tok)
    answer, = generate_answers(model, tok, [prompt], max_new_tokens=20, progress=False)
    assert "Paris" in answer


def test_unknown_model_is_named():
    from neftlib.training.models import model_path

    with pytest.raises(ValueError, match="unknown model 'smollm3'.*smollm2-135m-instruct"):
        model_path("smollm3")


def test_generation_is_batched_left_padded_and_order_preserving(tokenizer):
    """Batched answers equal one-at-a-time answers, in the input order."""
    from neftlib.evaluation.generate import generate_answers
    from neftlib.training.models import load_base

    model = load_base("tiny-random")
    prompts = ["Hi", "A much longer prompt than the first one, to force padding", "Mid length prompt"]
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
              for p in prompts]
    assert batched == single
