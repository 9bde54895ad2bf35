"""The powered study's path: answers only (judge='none'), with the share of answers the cap cut."""
from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest

from neftlib.base.recipes import load_config


def test_new_token_counts_and_the_cap(tokenizer):
    """Each answer's count is its tokens up to EOS; an answer without EOS ran to the cap."""
    from neftlib.evaluation.generate import cap_record, generate_with_lengths
    from neftlib.training.models import load_base

    model = load_base("tiny-random")
    prompts = ["Hi", "A much longer prompt than the first one, to force padding", "Mid length prompt"]
    answers, counts = generate_with_lengths(model, tokenizer, prompts, max_new_tokens=7, batch_size=3, progress=False)
    for prompt, answer, n in zip(prompts, answers, counts):
        enc = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens=7, repetition_penalty=1.2,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        expected = new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
        assert n == expected and 1 <= n <= 7
    record = cap_record([3, 7, 7, 2], 7)
    assert record["hit_cap"] == [False, True, True, False] and record["cap_share"] == 0.5


def test_study_profile_is_the_designed_study():
    cfg = load_config("cpu-study")
    assert cfg.prompt_format == "alpaca" and cfg.epochs == 3 and cfg.eval_limit >= 200 and cfg.judge == "none"
    arms = [cfg.for_arm(a) for a in cfg.arms]
    by_noise = {(a.distribution, a.alpha) for a in arms}
    assert by_noise == {("uniform", 0.0), ("uniform", 5.0), ("uniform", 15.0), ("gaussian", 5.0)}
    for noise in by_noise:
        assert len({a.seed for a in arms if (a.distribution, a.alpha) == noise}) >= 3


def test_answers_only_run_records_lengths_and_cap_share(results):
    """judge='none': 04 writes answers, their token counts and no win rate; 05 reports the cap share per arm."""
    from neftlib.analysis.overfitting import diversity_table
    from neftlib.evaluation.stage import evaluate
    from neftlib.base.io import read_json
    from neftlib.pipeline.stages import prepare_data, stage_dir, start_run, train_arms

    cfg = start_run("smoke", judge="none", arms=("baseline", "neftune"), max_steps=2)
    prepare_data(cfg)
    train_arms(cfg)
    table = evaluate(cfg, progress=False)
    assert set(table["judge"]) == {"none"} and table["win_rate"].isna().all()
    assert not (stage_dir(cfg, "eval") / "judge_cache.json").exists()
    record = read_json(stage_dir(cfg, "eval") / "train-neftune" / "model_outputs_lengths.json")
    assert len(record["new_tokens"]) == cfg.eval_limit and record["max_new_tokens"] == cfg.gen_max_new_tokens
    diversity = diversity_table(cfg).set_index("name")
    share = diversity.loc["train-neftune", "cap_share"]
    assert math.isclose(share, sum(record["hit_cap"]) / len(record["hit_cap"]))


@pytest.mark.slow
def test_dose_study_arm_is_measured_exported_and_never_run_twice(results, tmp_path):
    from neftlib.pipeline import dose_study

    evidence = tmp_path / "dose"
    target = dose_study.measure_arm("neftune", evidence, progress=False, profile="smoke")
    assert dose_study.exported(evidence, "neftune")
    assert sorted(p.name for p in target.iterdir()) == sorted((*dose_study.ARM_FILES, "DONE"))
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["alpha"] > 0 and 0 < metrics["noise_ratio"] < 10 and metrics["avg_chars"] >= 0
    probe = pd.read_csv(target / "length_probe.csv.gz")
    assert len(probe) == 6 and (probe["eos_logprob"] <= 0).all() and (probe["answer_nll"] > 0).all()
    answers = json.loads(gzip.decompress((target / "model_outputs.json.gz").read_bytes()))
    assert len(answers) == 6
    stamp = (target / "DONE").read_text()
    dose_study.measure_arm("neftune", evidence, progress=False, profile="smoke")  # found: nothing runs again
    assert (target / "DONE").read_text() == stamp
    with pytest.raises(ValueError, match="not an arm of smoke"):
        dose_study.measure_arm("alpha30-seed9", evidence, profile="smoke")
