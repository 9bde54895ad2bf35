"""The paper's Table 5 at our scale: length-only arms of the baseline model, generated, measured and reported."""
from __future__ import annotations

import json
import math

import pytest
import torch

from neftlib.base.recipes import load_config
from neftlib.base.profiles import LENGTH_ARMS
from neftlib.analysis.verdict import WORDS, word
from neftlib.evaluation.length_arms import META_PROMPTS, generation_of, min_new_tokens, prompted_rows

NAMES = ["prompt-long", "prompt-comprehensive", "prompt-long-comprehensive", "min-new-tokens", "min-new-tokens-paper"]
MINIMA = {"min-new-tokens": 3, "min-new-tokens-paper": 12}  # smoke's cap of 12: 250/1,024 of it, and the paper's 250 capped


def test_the_five_arms_their_prompts_and_the_minima():
    assert list(LENGTH_ARMS) == NAMES
    assert META_PROMPTS == {"prompt-long": "Generate a long response",
                            "prompt-comprehensive": "Generate a comprehensive response",
                            "prompt-long-comprehensive": "Generate a long and comprehensive response"}
    # the paper's 250 of 1,024 tokens, scaled to each profile's cap
    assert [min_new_tokens(c) for c in (1024, 128, 12, 1)] == [250, 31, 3, 1]
    # the paper's own 250, as far as the cap allows
    assert [min_new_tokens(c, "min-new-tokens-paper") for c in (1024, 128, 12)] == [250, 128, 12]
    for profile in ("smoke", "cpu"):
        assert load_config(profile).length_arms == tuple(NAMES)
    assert load_config("gpu-7b").length_arms == tuple(NAMES[:4])  # at a cap of 1,024 the two minima are one
    assert generation_of(load_config("cpu"), "min-new-tokens-paper")["min_new_tokens"] == 128
    cfg = load_config("cpu")
    assert generation_of(cfg, "min-new-tokens") == {"meta_prompt": "", "min_new_tokens": 31, "base_arm": "train-baseline"}
    assert generation_of(cfg, "prompt-long")["min_new_tokens"] == 0
    rows = prompted_rows([{"instruction": "Name a colour.", "output": "Blue."}], "Generate a long response")
    assert rows[0]["instruction"] == "Name a colour.\nGenerate a long response" and rows[0]["output"] == "Blue."
    with pytest.raises(ValueError, match="not among"):
        load_config("smoke", length_arms=("prompt-short",))
    with pytest.raises(ValueError, match="no alpha-0 arm"):
        load_config("smoke", arms=("neftune",), qlora_arms=())
    sweep = load_config("smoke", arms=("alpha0-seed1", "alpha5-seed1"), qlora_arms=())
    assert generation_of(sweep, "prompt-long")["base_arm"] == "train-alpha0-seed1"


def test_min_new_tokens_blocks_eos_until_the_minimum(tokenizer):
    from neftlib.evaluation.generate import generate_with_lengths
    from neftlib.training.models import load_base

    model = load_base("tiny-random")
    bonus = torch.zeros(model.config.vocab_size)
    bonus[tokenizer.eos_token_id] = 100.0  # a model that wants to stop at once
    model.lm_head.register_forward_hook(lambda module, args, out: out + bonus)
    prompts = ["Hi", "Say something longer than that, please"]
    _, free = generate_with_lengths(model, tokenizer, prompts, max_new_tokens=8, batch_size=2, progress=False)
    _, held = generate_with_lengths(model, tokenizer, prompts, max_new_tokens=8, batch_size=2, progress=False,
                                    min_new_tokens=5)
    assert free == [1, 1] and held == [6, 6]  # EOS as soon as it is allowed: after 5 new tokens


def _run_with_arms(run: str, fake_arms, **overrides):
    """A smoke run with a baseline and a NEFTune arm (stand-ins: see conftest.fake_arms) and its prepared data."""
    from neftlib.pipeline.stages import prepare_data, start_run

    cfg = start_run("smoke", run, arms=("baseline", "neftune"), qlora_arms=(), agreement_pairs=0, **overrides)
    prepare_data(cfg)
    fake_arms(cfg)
    return cfg


def test_a_smoke_run_measures_and_reports_the_length_arms(results, monkeypatch, fake_arms):
    """04 writes the five arms' answers and win rates, 05 their paired comparison, 06 them beside Table 5."""
    from neftlib.analysis.length_table import length_only_table
    from neftlib.analysis.overfitting import diversity_table
    from neftlib.analysis.report import build_report
    from neftlib.base.io import read_json, write_csv
    from neftlib.base.run import stage_dir
    from neftlib.evaluation import generate, length_arms
    from neftlib.evaluation.stage import evaluate

    cfg = _run_with_arms("lengths", fake_arms)
    calls, real = {}, generate.generate_with_lengths

    def recording(model, tok, prompts, **kwargs):
        calls[kwargs["desc"]] = (prompts, kwargs.get("min_new_tokens", 0))
        return real(model, tok, prompts, **kwargs)

    monkeypatch.setattr(length_arms, "generate_with_lengths", recording)  # the length arms' answers
    wins = evaluate(cfg, progress=False)
    length = wins[wins["stage"] == "length"].set_index("arm")
    assert list(length.index) == NAMES and (length["base_arm"] == "train-baseline").all()
    assert length.loc["min-new-tokens", "min_new_tokens"] == 3 and length.loc["prompt-long", "min_new_tokens"] == 0
    assert length.loc["min-new-tokens-paper", "min_new_tokens"] == 12
    assert length.loc["prompt-long-comprehensive", "meta_prompt"] == "Generate a long and comprehensive response"
    eval_rows = read_json(stage_dir(cfg, "data") / "eval.json")
    for arm in NAMES:
        folder = stage_dir(cfg, "eval") / f"length-{arm}"
        outputs = read_json(folder / "model_outputs.json")
        # the judge sees the original instruction, as for every other arm
        assert [o["instruction"] for o in outputs] == [r["instruction"] for r in eval_rows]
        record = read_json(folder / "model_outputs_lengths.json")
        assert record["meta_prompt"] == META_PROMPTS.get(arm, "") and len(record["new_tokens"]) == cfg.eval_limit
        assert (folder / "annotations.json").exists()
    assert min(read_json(stage_dir(cfg, "eval") / "length-min-new-tokens" / "model_outputs_lengths.json")[
        "new_tokens"]) >= 3
    # what the model was asked: the meta-prompt after each instruction; the minimum only for min-new-tokens
    for arm in NAMES:
        prompts, minimum = calls[f"length-{arm}"]
        assert len(prompts) == cfg.eval_limit and minimum == MINIMA.get(arm, 0)
        meta = META_PROMPTS.get(arm)
        assert all((r["instruction"] + "\n" + meta in p) if meta else (r["instruction"] in p and "Generate a" not in p)
                   for r, p in zip(eval_rows, prompts))

    table = length_only_table(cfg.run_name, cfg.diversity_cutoff, n_boot=200).set_index("arm")
    assert list(table.index) == ["baseline", *NAMES, "neftune"]
    assert list(diversity_table(cfg)["name"])[-5:] == [f"length-{a}" for a in NAMES]
    write_csv(stage_dir(cfg, "analysis") / "length_only.csv", table.reset_index().to_dict("records"))
    chars = {a: sum(len(o["output"]) for o in read_json(stage_dir(cfg, "eval") / f"length-{a}" / "model_outputs.json"))
             / cfg.eval_limit for a in NAMES}
    for arm in NAMES:
        row = table.loc[arm]
        assert row["avg_chars"] == pytest.approx(chars[arm])
        assert row["avg_chars_vs_baseline"] == pytest.approx(chars[arm] - table.loc["baseline", "avg_chars"])
        assert row["avg_chars_vs_baseline_low"] <= row["avg_chars_vs_baseline"] <= row["avg_chars_vs_baseline_high"]
        assert row["win_rate_vs_neftune_low"] <= row["win_rate_vs_neftune"] <= row["win_rate_vs_neftune_high"]
        assert row["win_rate_vs_neftune"] == pytest.approx(row["win_rate"] - table.loc["neftune", "win_rate"])

    report = build_report(cfg.run_name, n_boot=200)
    beside = report["length_only"].set_index("arm")
    assert beside.loc["min-new-tokens", "paper_row"] == "Alpaca-7B (Min New Tokens)"
    assert beside.loc["min-new-tokens", "paper_win_rate"] == 38.58 and beside.loc["baseline", "paper_win_rate"] == 32.36
    assert all(word(v) in WORDS for v in beside.loc[NAMES, "verdict"])  # the one rule's words only
    assert (beside.loc[NAMES, "cap_share"] >= 0).all()  # the share of answers that hit the cap, per arm
    summary = (stage_dir(cfg, "report") / "summary.md").read_text()
    assert "Length alone and the gain" in summary and "at the cap" in summary
    assert (stage_dir(cfg, "report") / "length_only.csv").exists()


def test_without_a_judge_the_length_arms_are_measured_but_not_judged(results, fake_arms):
    from neftlib.evaluation.stage import evaluate
    from neftlib.analysis.length_table import beside_table5, length_only_table

    cfg = _run_with_arms("lengths-none", fake_arms, judge="none")
    wins = evaluate(cfg, progress=False)
    assert list(wins.loc[wins["stage"] == "length", "arm"]) == NAMES and wins["win_rate"].isna().all()
    table = length_only_table(cfg.run_name, cfg.diversity_cutoff, n_boot=100)
    assert table["avg_chars"].notna().all() and table["win_rate_vs_neftune"].isna().all()
    beside, text = beside_table5(table, "none")
    assert (beside.loc[beside["kind"] == "length-only", "verdict"] == "not measured here").all()
    assert "not measured here" in text and not math.isnan(beside["paper_win_rate"].iloc[0])
    assert json.dumps(text)  # plain text for summary.md
