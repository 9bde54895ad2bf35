"""Judging that does not hide what it measures: discrete votes counted as alpaca_eval counts them beside the soft
win rate, counts that add up, and whole answers judged (clipped only where the judge's context cannot hold them)."""
from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from neftlib.evaluation.judge import Judgments, LocalJudge, annotations, context_length
from neftlib.evaluation.winrate import discrete_preference, summarize_annotations, summarize_preferences


def test_one_vote_per_order_averaged_over_the_two_orders():
    # P(model better) when shown first / second: both orders for it, split (a draw), both against, a tie and a win
    judged = Judgments([(0.9, 0.8), (0.9, 0.2), (0.3, 0.1), (0.5, 0.9)])
    assert judged.discrete() == [2.0, 1.5, 1.0, 2.0]  # 1.75 (a tie and a win) counts as a win, as alpaca_eval rounds
    assert judged.soft() == pytest.approx([1.85, 1.55, 1.2, 1.7])
    assert judged.clipped_output == [False] * 4 and judged.clipped_reference == [False] * 4


def test_a_judge_that_always_answers_a_draws_every_pair():
    # Position bias alone: it prefers the first answer in both orders, so each pair is a draw and the discrete
    # win rate is exactly 50, while the soft one is whatever its probabilities say.
    judged = Judgments([(0.51, 0.49)] * 6)
    stats = summarize_preferences(judged.discrete(), soft=judged.soft())
    assert (stats["n_wins"], stats["n_wins_base"], stats["n_draws"], stats["n_total"]) == (0, 0, 6, 6)
    assert stats["win_rate"] == 50.0 and stats["win_rate_soft"] == pytest.approx(50.0)
    soft = summarize_preferences(Judgments([(0.9, 0.45)] * 4).discrete(), soft=Judgments([(0.9, 0.45)] * 4).soft())
    assert soft["win_rate"] == 50.0 and soft["win_rate_soft"] == pytest.approx(67.5)


@pytest.mark.parametrize("p,counted", [(2, 2.0), (1, 1.0), (1.5, 1.5), (0, 1.5), (1.25, 1.0), (1.75, 2.0),
                                       (1.5000001, 2.0), (2.4, 2.0), (2.6, None), (None, None), (math.nan, None),
                                       (0.4, 1.5)])
def test_discrete_preference_is_alpaca_evals_zero_one_rule(p, counted):
    # ZeroOneScoringRule: 1.5 -> 0, round (half to even), 0 is a draw, then only [1, 2] is kept
    assert discrete_preference(p) == counted


def test_counts_add_up_to_the_discrete_win_rate():
    rng = np.random.default_rng(0)
    prefs = list(rng.choice([1.0, 1.5, 2.0, 0.0, None, 1.3, 1.8, 1.5], size=200))
    s = summarize_preferences(prefs)
    assert s["n_wins"] + s["n_wins_base"] + s["n_draws"] == s["n_total"] == sum(p is not None for p in prefs)
    assert s["win_rate"] == pytest.approx(100 * (s["n_wins"] + 0.5 * s["n_draws"]) / s["n_total"])
    # soft: 1.3 and 1.8 count as 0.3 and 0.8 of a win; discrete: as a loss and a win
    assert summarize_preferences([1.3, 1.8])["win_rate"] == 50.0
    assert summarize_preferences([1.3, 1.8])["win_rate_soft"] == pytest.approx(55.0)


@pytest.fixture(scope="module")
def tiny_judge():
    from neftlib.training.models import load_base, load_tokenizer

    return load_base("tiny-random"), load_tokenizer("tiny-random")


def test_whole_answers_are_judged_and_clipped_only_past_the_context(tiny_judge):
    model, tok = tiny_judge
    judge = LocalJudge(model, tok, name="local:tiny")
    assert judge.max_context == context_length(model, tok) == 2048  # the model's position table
    long = " ".join(f"word{i}" for i in range(400))  # ~1,600 tokens: more than the old 256-token clip
    assert judge.fit("Say it.", long, "short") == (long, "short", False, False)

    small = LocalJudge(model, tok, name="local:tiny", max_context=400)
    out, ref, clipped_out, clipped_ref = small.fit("Say it.", long, "a short reference")
    assert (clipped_out, clipped_ref) == (True, False) and ref == "a short reference" and out.endswith(" ...")
    text = small._text("Say it.", out, ref)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 400  # the whole prompt fits
    both = small.fit("Say it.", long, long + " again")
    assert both[2] and both[3]  # both too long: both clipped, sharing the room

    judged = small.judge_orders(["Say it.", "Say it."], [long, "ok"], ["a short reference", "fine"], progress=False)
    assert judged.clipped_output == [True, False] and judged.clipped_reference == [False, False]
    rows = annotations([{"instruction": "Say it.", "output": "a short reference"}, {"instruction": "Say it.",
                        "output": "fine"}], [{"output": long, "generator": "m"}, {"output": "ok", "generator": "m"}],
                       judged, small.name)
    assert [r["clipped_output"] for r in rows] == [True, False]
    assert [r["preference"] for r in rows] == judged.discrete() and [r["preference_soft"] for r in rows] == judged.soft()


def test_winrates_carry_discrete_soft_and_clipped_counts_that_the_cli_reproduces(results, monkeypatch, capsys,
                                                                                 fake_arms):
    """Stage 04 on the smoke profile with a judge whose context is too short for some pairs."""
    import neftlib.evaluation.judge
    from neftlib.__main__ import WINRATE_KEYS, main
    from neftlib.evaluation.stage import evaluate
    from neftlib.pipeline.stages import prepare_data, stage_dir, start_run

    arms = ("baseline", "neftune")
    cfg = start_run("smoke", "judging", arms=arms, qlora_arms=(), length_arms=(), agreement_pairs=0)
    prepare_data(cfg)
    fake_arms(cfg)
    monkeypatch.setattr(neftlib.evaluation.judge, "context_length", lambda model, tok: 200)
    # a key in the environment is no request to pay: the official GPT-4 judging stays off unless the profile asks
    paid = types.ModuleType("alpaca_eval")
    paid.__spec__ = importlib.machinery.ModuleSpec("alpaca_eval", None)
    paid.evaluate = lambda **kw: pytest.fail("alpaca_eval called although official_judge is off")
    monkeypatch.setitem(sys.modules, "alpaca_eval", paid)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-neftlib-test-not-a-key")
    wins = evaluate(cfg, progress=False).set_index("arm")
    assert not any(c.startswith("alpaca_eval_gpt4") for c in wins.columns)

    for arm in arms:
        row = wins.loc[arm]
        assert row["n_wins"] + row["n_wins_base"] + row["n_draws"] == row["n_total"] == cfg.eval_limit
        assert row["win_rate"] == pytest.approx(100 * (row["n_wins"] + 0.5 * row["n_draws"]) / row["n_total"])
        assert 0 <= row["win_rate_soft"] <= 100 and 0 <= row["lc_win_rate_approx"] <= 100
        notes = json.loads((stage_dir(cfg, "eval") / f"train-{arm}" / "annotations.json").read_text())
        assert row["n_clipped"] == sum(n["clipped_output"] for n in notes)
        assert row["n_clipped_reference"] == sum(n["clipped_reference"] for n in notes)
        assert row["judge_context"] == 200
        # the CLI reads the same annotations and reports the same numbers
        assert main(["winrate", str(stage_dir(cfg, "eval") / f"train-{arm}" / "annotations.json")]) == 0
        cli = json.loads(capsys.readouterr().out)
        assert tuple(cli) == WINRATE_KEYS
        assert cli["win_rate"] == pytest.approx(row["win_rate"]) and cli["win_rate_soft"] == pytest.approx(
            row["win_rate_soft"])
        assert summarize_annotations(stage_dir(cfg, "eval") / f"train-{arm}" / "annotations.json")["n_draws"] == (
            row["n_draws"])
    assert wins["n_clipped_reference"].sum() > 0  # the smoke references do not fit in 200 tokens beside the prompt
    written = pd.read_csv(stage_dir(cfg, "eval") / "winrates.csv")
    assert {"win_rate", "win_rate_soft", "lc_win_rate_approx", "n_clipped"} <= set(written.columns)
    assert "lc_win_rate" not in written.columns
