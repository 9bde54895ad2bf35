"""Judge agreement with GPT-4: hand-computed on inline fixtures, and on the published annotations when present."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from neftlib.evaluation.agreement import MODELS, annotations_path, judge_agreement, published_pairs
from neftlib.base.io import write_json


class FixedJudge:
    """Returns the given preferences, in order; records what it was asked."""

    name = "fixed"

    def __init__(self, prefs: list[float]):
        self.prefs, self.calls = prefs, []

    def judge(self, instructions, outputs, references, *, cache_path=None, progress=True):
        self.calls.append((list(instructions), list(outputs), list(references), cache_path))
        return list(self.prefs)


class LongerJudge:
    """Prefers the longer answer; a tie when equal."""

    name = "longer"

    def judge(self, instructions, outputs, references, *, cache_path=None, progress=True):
        return [2.0 if len(o) > len(r) else 1.0 if len(o) < len(r) else 1.5 for o, r in zip(outputs, references)]


def row(i: int, pref) -> dict:
    return {"instruction": f"q{i}", "output_1": f"ref{i}", "output_2": f"model answer {i}", "preference": pref,
            "generator_1": "text_davinci_003", "generator_2": "m"}


@pytest.fixture
def fake_data(tmp_path) -> Path:
    # m1: two draws (0 and 1.5) and one null dropped; m2: one null dropped
    write_json(annotations_path(tmp_path, "m1"), [row(0, 2), row(1, 0), row(2, 1.0), row(3, None), row(4, 2.0),
                                                  row(5, 1.5), row(6, 1)])
    write_json(annotations_path(tmp_path, "m2"), [row(0, 2), row(1, None), row(2, 2)])
    return tmp_path


def test_published_pairs_drop_draws_and_count_them(fake_data):
    pairs = published_pairs(fake_data, models=["m1", "m2"])
    assert pairs.dropped == {"m1": 3, "m2": 1}
    assert [(p["model"], p["index"], p["gpt4_preference"]) for p in pairs] == [
        ("m1", 0, 2.0), ("m1", 2, 1.0), ("m1", 4, 2.0), ("m1", 6, 1.0), ("m2", 0, 2.0), ("m2", 2, 2.0)]
    first = pairs[0]
    assert (first["instruction"], first["output"], first["reference"]) == ("q0", "model answer 0", "ref0")
    json.dumps(pairs)  # plain data


def test_published_pairs_seeded_subset(fake_data):
    a = published_pairs(fake_data, models=["m1", "m2"], limit_per_model=2, seed=3)
    assert a == published_pairs(fake_data, models=["m1", "m2"], limit_per_model=2, seed=3)
    assert [p["model"] for p in a] == ["m1", "m1", "m2", "m2"]
    m1 = [p["index"] for p in a if p["model"] == "m1"]
    assert m1 == sorted(m1) and set(m1) <= {0, 2, 4, 6}
    seeds = {tuple(p["index"] for p in published_pairs(fake_data, ["m1"], limit_per_model=2, seed=s))
             for s in range(10)}
    assert len(seeds) > 1


def test_published_pairs_missing_model(fake_data):
    with pytest.raises(FileNotFoundError, match="no published GPT-4 annotations for 'nope'"):
        published_pairs(fake_data, models=["nope"])


def test_agreement_hand_computed(fake_data):
    pairs = published_pairs(fake_data, models=["m1", "m2"])
    # GPT-4 sides: m1 model, ref, model, ref; m2 model, model
    # judge sides: m1 model, model, tie, ref -> agree 1, 0, 0.5, 1; m2 ref, model -> 0, 1
    judge = FixedJudge([2.0, 2.0, 1.5, 1.0, 1.2, 1.9])
    res = judge_agreement(judge, pairs, cache_path=Path("c.json"), progress=False)
    assert judge.calls[0][0] == ["q0", "q2", "q4", "q6", "q0", "q2"] and judge.calls[0][3] == Path("c.json")
    assert judge.calls[0][2][0] == "ref0" and judge.calls[0][1][0] == "model answer 0"
    assert res["judge"] == "fixed" and res["n"] == 6 and res["judge_ties"] == 1
    assert res["agreement"] == pytest.approx(3.5 / 6)
    assert res["cohen_kappa"] == pytest.approx(2 / 17)  # observed 21/36, chance 19/36
    assert res["per_model"]["m1"]["agreement"] == pytest.approx(0.625) and res["per_model"]["m1"]["n"] == 4
    assert res["per_model"]["m2"]["agreement"] == pytest.approx(0.5) and res["per_model"]["m2"]["n"] == 2
    assert res["per_model"]["m2"]["cohen_kappa"] == pytest.approx(0.0)  # GPT-4 one-sided: chance = judge's 1/2
    assert res["per_model"]["m1"]["gpt4_win_rate"] == pytest.approx(50.0)
    assert res["per_model"]["m1"]["judge_win_rate"] == pytest.approx(100 * (1 + 1 + 0.5 + 0) / 4)
    assert res["gpt4_draws_dropped"] == {"m1": 3, "m2": 1}
    assert 0.0 <= res["ci_low"] <= res["agreement"] <= res["ci_high"] <= 1.0
    assert res == judge_agreement(FixedJudge(judge.prefs), pairs, progress=False)  # seeded bootstrap
    json.dumps(res, allow_nan=False)


def test_perfect_and_contrary_judges(fake_data):
    pairs = published_pairs(fake_data, models=["m1"])
    gpt4 = [p["gpt4_preference"] for p in pairs]
    perfect = judge_agreement(FixedJudge(gpt4), pairs, progress=False)
    assert perfect["agreement"] == 1.0 and perfect["cohen_kappa"] == 1.0
    assert (perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0)
    contrary = judge_agreement(FixedJudge([3.0 - g for g in gpt4]), pairs, progress=False)
    assert contrary["agreement"] == 0.0 and contrary["cohen_kappa"] == -1.0
    one_sided = published_pairs(fake_data, models=["m2"])  # GPT-4 and judge both always "model"
    assert judge_agreement(FixedJudge([2.0, 2.0]), one_sided, progress=False)["cohen_kappa"] is None


def test_agreement_refuses_bad_input(fake_data):
    pairs = published_pairs(fake_data, models=["m1"])
    with pytest.raises(ValueError, match="returned 1 preferences for 4 pairs"):
        judge_agreement(FixedJudge([2.0]), pairs, progress=False)
    with pytest.raises(ValueError, match="not in \\[1, 2\\]"):
        judge_agreement(FixedJudge([2.0, 2.0, 0.0, 2.0]), pairs, progress=False)
    with pytest.raises(ValueError, match="no pairs"):
        judge_agreement(FixedJudge([]), [], progress=False)
    with pytest.raises(ValueError, match="draws or non-judgments"):
        judge_agreement(FixedJudge([2.0]), [{**pairs[0], "gpt4_preference": 1.5}], progress=False)


def test_real_annotations_dropped_counts_and_always_model_judge(data_dir):
    if not all(annotations_path(data_dir, m).exists() for m in MODELS):
        pytest.skip(f"published GPT-4 annotations absent under {data_dir}/alpaca_eval")
    pairs = published_pairs(data_dir)
    # draws (0) and nulls in the published files: 16, 2 null, 1, 0
    assert pairs.dropped == {"alpaca-7b": 16, "alpaca-7b-neft": 2, "llama-2-7b-chat-hf": 1,
                             "llama-2-chat-7b-evol70k-neft": 0}
    res = judge_agreement(FixedJudge([2.0] * len(pairs)), pairs, progress=False)
    # always "model": agreement is GPT-4's share of model wins (alpaca-7b: 205 wins of 789 judged)
    assert res["per_model"]["alpaca-7b"]["agreement"] == pytest.approx(205 / 789)
    assert res["per_model"]["alpaca-7b"]["n"] == 789


def test_real_annotations_longer_answer_judge(data_dir):
    if not all(annotations_path(data_dir, m).exists() for m in MODELS):
        pytest.skip(f"published GPT-4 annotations absent under {data_dir}/alpaca_eval")
    pairs = published_pairs(data_dir, limit_per_model=50, seed=0)
    assert len(pairs) == 200
    res = judge_agreement(LongerJudge(), pairs, progress=False)
    # direct computation from the raw files, by row index
    files = {m: json.loads(annotations_path(data_dir, m).read_text()) for m in MODELS}
    scores = []
    for p in pairs:
        raw = files[p["model"]][p["index"]]
        assert raw["output_2"] == p["output"] and raw["instruction"] == p["instruction"]
        longer = len(raw["output_2"]) - len(raw["output_1"])
        judge_side = 1.0 if longer > 0 else 0.0 if longer < 0 else 0.5
        gpt4_side = 1.0 if float(raw["preference"]) > 1.5 else 0.0
        scores.append(1.0 - abs(judge_side - gpt4_side))
    assert 0.0 < res["agreement"] < 1.0
    assert res["agreement"] == pytest.approx(sum(scores) / len(scores))
    assert res["ci_low"] < res["agreement"] < res["ci_high"]
    assert set(res["per_model"]) == set(MODELS) and all(m["n"] == 50 for m in res["per_model"].values())
