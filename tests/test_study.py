"""The powered study's path: answers only (judge='none'), with the share of answers the cap cut."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
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


def _fake_dose_arms(folder, seeds=(0, 1, 2), slope=100.0):
    """Exported arms whose answer length rises by `slope` characters per unit of noise ratio, plus seed noise."""
    rng = np.random.default_rng(0)
    for seed in seeds:
        for alpha, ratio in ((0, 0.0), (15, 0.31), (30, 0.62), (60, 1.23)):
            arm = folder / "arms" / f"alpha{alpha}-seed{seed}"
            arm.mkdir(parents=True)
            metrics = {"arm": arm.name, "alpha": alpha, "seed": seed, "noise_ratio": ratio or None,
                       "avg_chars": 400 + slope * ratio + rng.normal(0, 5), "rouge_l": 40 + rng.normal(0, 1),
                       "heldout_loss": 2.0 + 0.01 * ratio + rng.normal(0, 0.001),
                       "log_diversity_release": 16 + rng.normal(0, 0.1)}
            (arm / "metrics.json").write_text(json.dumps(metrics))
            probe = pd.DataFrame({"prompt": range(4), "eos_logprob": -1.0 - 0.5 * ratio + rng.normal(0, 0.01, 4),
                                  "answer_nll": 2.0 + rng.normal(0, 0.01, 4), "answer_tokens": [10, 20, 30, 40]})
            with gzip.open(arm / "length_probe.csv.gz", "wt") as fh:
                probe.to_csv(fh, index=False)
            (arm / "DONE").write_text("{}")


def test_dose_response_fits_a_slope_per_seed_and_tests_it_over_seeds(tmp_path):
    from neftlib.analysis import dose_response as dr

    _fake_dose_arms(tmp_path)
    arms = dr.arm_table(tmp_path)
    assert len(arms) == 12 and (arms.loc[arms["alpha"] == 0, "noise_ratio"] == 0).all()
    table = dr.dose_response(arms).set_index("metric")
    assert list(table.columns[:0]) == [] and {"slope", "low", "high", "n_seeds", "detectable_slope",
                                              "verdict"} <= set(table.columns)
    length = table.loc["avg_chars"]
    assert length["n_seeds"] == 3 and length["low"] < 100 < length["high"] and length["verdict"] == "shown"
    assert table.loc["eos_logprob", "verdict"] == "shown"  # falls with the dose: the paper's direction
    assert table.loc["heldout_loss", "verdict"] == "opposite"  # rises, where the paper says it falls
    assert table.loc["answer_nll", "verdict"].startswith("reported, no verdict")
    assert table["p_holm"].notna().sum() == 5  # Holm over the five metrics with a direction


def test_dose_response_waits_for_three_complete_seeds(tmp_path, capsys):
    from neftlib.analysis import dose_response as dr

    _fake_dose_arms(tmp_path, seeds=(0, 1))
    assert dr.main([str(tmp_path)]) == 0
    assert "no slope reported yet" in capsys.readouterr().out
    assert (tmp_path / "arm_metrics.csv").exists() and not (tmp_path / "dose_response.csv").exists()
