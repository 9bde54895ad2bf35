"""The report's verdict rules, its intervals, and a whole report built from a small made-up results folder."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neftlib.claims import (HELD, NOISE, NOT_HELD, NOT_MEASURED, PARTLY, combine, difference_verdict, flat_verdict,
                            interval_verdict, is_chat_model, log_diversity_of, ngram_counts, paired_bootstrap,
                            pick_roles)
from neftlib.io import write_csv, write_json
from neftlib.paper import FIGURE1, paper_dataset
from neftlib.textstats import log_diversity, whitespace_tokens

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"


# ---------- verdict rules ----------

@pytest.mark.parametrize("base,treat,expect,verdict", [
    ((25, 35), (55, 65), "higher", HELD),  # intervals apart, the expected way
    ((25, 35), (30, 40), "higher", NOISE),  # overlap: no call
    ((55, 65), (25, 35), "higher", NOT_HELD),  # apart, the other way
    ((55, 65), (25, 35), "lower", HELD),
    ((25, 35), (35, 45), "higher", NOISE),  # touching counts as overlapping
    ((25, math.nan), (55, 65), "higher", NOT_MEASURED),
])
def test_interval_verdict(base, treat, expect, verdict):
    assert interval_verdict(base, treat, expect) == verdict


@pytest.mark.parametrize("low,high,expect,verdict", [
    (0.1, 0.5, "higher", HELD), (-0.5, -0.1, "higher", NOT_HELD), (-0.1, 0.3, "higher", NOISE),
    (-0.5, -0.1, "lower", HELD), (0.0, 0.4, "higher", NOISE), (math.nan, 1.0, "higher", NOT_MEASURED),
])
def test_difference_verdict(low, high, expect, verdict):
    assert difference_verdict(low, high, expect) == verdict


@pytest.mark.parametrize("low,high,verdict", [
    (-0.1, 0.1, HELD),  # inside the margin: unchanged
    (0.05, 0.15, HELD),  # a real but negligible change still counts as unchanged
    (0.5, 0.9, NOT_HELD),  # a clear change past the margin
    (-0.9, -0.5, NOT_HELD),
    (-0.5, 0.6, NOISE),  # too wide to tell
    (0.1, 0.5, NOISE),  # excludes 0 but may still be within the margin
])
def test_flat_verdict(low, high, verdict):
    assert flat_verdict(low, high, margin=0.2) == verdict


@pytest.mark.parametrize("parts,verdict", [
    ([HELD, HELD], HELD), ([HELD, NOISE], PARTLY), ([HELD, NOT_HELD], NOT_HELD), ([NOISE, NOISE], NOISE),
    ([HELD, NOT_MEASURED], PARTLY), ([NOT_MEASURED], NOT_MEASURED), ([NOISE, NOT_MEASURED], NOISE),
])
def test_combine(parts, verdict):
    assert combine(parts) == verdict


# ---------- intervals and measures ----------

def test_paired_bootstrap_is_seeded_and_exact_for_a_constant_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=50)
    b = a + 2.0  # every item moves by exactly 2: the paired interval has no width
    point, low, high = paired_bootstrap(lambda i: b[i].mean() - a[i].mean(), 50, n_boot=200)
    assert point == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    noisy = a + rng.normal(size=50)
    first = paired_bootstrap(lambda i: noisy[i].mean() - a[i].mean(), 50, n_boot=300, seed=3)
    assert first == paired_bootstrap(lambda i: noisy[i].mean() - a[i].mean(), 50, n_boot=300, seed=3)
    assert first[1] < first[0] < first[2]
    assert all(math.isnan(v) for v in paired_bootstrap(lambda i: 0.0, 0))


def test_log_diversity_from_counts_matches_textstats():
    answers = ["the cat sat on the mat and the cat sat again on a mat", "a b c d e f g h i j",
               "short one", "yes yes yes yes yes yes yes yes yes"]
    cutoff = 6
    cut = [whitespace_tokens(a)[:cutoff] for a in answers if len(whitespace_tokens(a)) >= cutoff]
    assert log_diversity_of(ngram_counts(answers, cutoff)) == pytest.approx(log_diversity(cut))


def test_paper_numbers_are_consistent():
    rows = [v for k, v in FIGURE1.items() if k != "Average"]
    assert FIGURE1["Average"][0] == pytest.approx(np.mean([r[0] for r in rows]), abs=0.01)
    assert FIGURE1["Average"][1] == pytest.approx(np.mean([r[1] for r in rows]), abs=0.01)
    assert FIGURE1["Alpaca"] == (29.79, 64.69)  # the abstract's numbers
    assert paper_dataset("/x/alpaca_5000.json") == "Alpaca" and paper_dataset("mini_instruct.json") is None
    assert is_chat_model("smollm2-135m-instruct") and not is_chat_model("meta-llama/Llama-2-7b-hf")


def test_roles_follow_the_recorded_noise_not_the_names():
    arms = pd.DataFrame({"stage": ["train"] * 5, "arm": ["a0-s1", "a5-s1", "a10-s1", "g5-s1", "g10-s1"],
                         "alpha": [0, 5, 10, 5, 10], "distribution": ["uniform"] * 3 + ["gaussian"] * 2})
    assert pick_roles(arms, "train", alpha=10) == {"baseline": "a0-s1", "neftune": "a10-s1", "gaussian": "g10-s1"}
    assert pick_roles(arms, "train", alpha=5) == {"baseline": "a0-s1", "neftune": "a5-s1", "gaussian": "g5-s1"}
    assert pick_roles(arms, "qlora", alpha=5) == {"baseline": None, "neftune": None, "gaussian": None}
    seeds = pd.DataFrame({"stage": ["train"] * 4, "arm": ["a0-s2", "a5-s1", "a5-s2", "a0-s1"], "alpha": [0, 5, 5, 0],
                          "distribution": ["uniform"] * 4, "seed": [2, 1, 2, 1]})
    assert pick_roles(seeds, "train", alpha=5)["neftune"] == "a5-s2"  # the baseline's seed: only the noise differs


# ---------- a whole report from a made-up run with clear effects ----------

ARMS = {"baseline": (0.0, "uniform"), "neftune": (5.0, "uniform"), "gaussian": (5.0, "gaussian")}


def _make_run(root: Path, names: dict[str, str]) -> str:
    """A results folder with the files stages 01-05 write, where NEFTune clearly wins, is longer, copies less
    and overfits less; the Gaussian arm is longer still and wins less than uniform noise."""
    run = root / "fake"
    write_json(run / "config.json", {"model": "tiny-random", "method": "full", "alpha": 5.0, "seed": 0,
                                     "epochs": 1.0, "max_length": 64, "diversity_cutoff": 5})
    write_json(run / "data" / "report.json", {"train_source": "/x/alpaca_5000.json", "other_source": "/x/mini.json",
                                              "train_examples": 40, "eval_prompts": 60})
    refs = [{"instruction": f"q{i}", "input": "", "output": f"the training answer number {i} says this"}
            for i in range(20)]
    write_json(run / "data" / "train_rows.json", refs)
    wins = {"baseline": (30, 25, 35), "neftune": (60, 55, 65), "gaussian": (40, 35, 45)}
    words = {"baseline": 8, "neftune": 40, "gaussian": 60}
    summary, table, losses = [], [], []
    for role, (alpha, dist) in ARMS.items():
        arm = names[role]
        summary.append({"run": "fake", "arm": arm, "alpha": alpha, "distribution": dist, "method": "full",
                        "model": "tiny-random", "steps": 5, "examples": 40})
        rate, low, high = wins[role]
        table.append({"run": "fake", "stage": "train", "arm": arm, "judge": "local:tiny-random", "win_rate": rate,
                      "ci_low": low, "ci_high": high, "judge_agreement": 0.6, "agreement_n": 40})
        n = words[role] + np.arange(60) % 7  # every word unique: log-diversity at its cap for every arm
        write_json(run / "eval" / f"train-{arm}" / "model_outputs.json",
                   [{"instruction": f"p{i}", "output": " ".join(f"w{i}x{k}" for k in range(n[i])),
                     "generator": arm, "dataset": "x"} for i in range(60)])
        copied = [r["output"] if role == "baseline" else f"something else entirely {i}" for i, r in enumerate(refs)]
        write_json(run / "eval" / f"train-{arm}" / "train_prompt_outputs.json",
                   [{"instruction": r["instruction"], "output": o} for r, o in zip(refs, copied)])
        rng = np.random.default_rng(len(losses))
        for subset, base, shift in (("train", 1.0, 0.5), ("other", 2.0, -0.3)):
            for i in range(24):
                loss = base + (shift if role != "baseline" else 0.0) + 0.05 * rng.normal()
                losses.append({"run": "fake", "stage": "train", "arm": arm, "set": subset, "example": i,
                               "tokens": 10 + i, "loss": loss})
    # OpenLLM accuracies as openllm_table writes them (fractions, lm-eval's standard errors): flat within 2 points
    write_csv(run / "eval" / "openllm.csv", [
        {"run": "fake", "stage": "train", "arm": names[role], "task": task, "num_fewshot": 0, "metric": "acc",
         "value": acc, "stderr": 0.003, "n": 1000, "limit": None}
        for task in ("arc", "mmlu") for role, acc in (("baseline", 0.400), ("neftune", 0.402))])
    write_csv(run / "train" / "summary.csv", summary)
    write_csv(run / "eval" / "winrates.csv", table)
    write_csv(run / "analysis" / "example_losses.csv", losses)
    write_csv(run / "analysis" / "published_diversity.csv",
              [{"run": "fake", "model": "alpaca-7b", "status": "skipped: NEFTLIB_DATA_DIR is not set"}])
    return "fake"


@pytest.mark.parametrize("names", [{r: r for r in ARMS},  # the default arms, and sweep-style names
                                   {"baseline": "alpha0-seed1", "neftune": "alpha5-seed1", "gaussian": "gauss5-seed1"}])
def test_report_verdicts_from_results(tmp_path, monkeypatch, names):
    from neftlib.report import REPORT_TABLES, build_report

    monkeypatch.setenv("NEFTLIB_RESULTS_DIR", str(tmp_path))
    run = _make_run(tmp_path, names)
    tables = build_report(run, n_boot=300)
    verdicts = tables["claims"].set_index("claim_id")["verdict"]
    assert verdicts["win_rate_up"] == HELD
    assert verdicts["loss"] == HELD and verdicts["overlap"] == HELD
    assert verdicts["length_diversity"] == HELD and verdicts["gaussian"] == HELD
    assert verdicts["qlora"] == NOT_MEASURED  # no QLoRA stage in this run
    assert verdicts["chat_gain"] == NOT_MEASURED  # tiny-random is not a chat model
    assert verdicts["openllm_flat"] == HELD  # eval/openllm.csv: (stage, arm, task, value, stderr)
    assert tables["claims"].set_index("claim_id")["published_verdict"]["win_rate_up"] == NOT_MEASURED
    assert names["neftune"] in tables["claims"].set_index("claim_id")["arms"]["win_rate_up"]

    folder = tmp_path / run / "report"
    assert {p.name for p in folder.iterdir()} >= {f"{t}.csv" for t in REPORT_TABLES} | {"summary.md", "DONE.json"}
    paper = pd.read_csv(folder / "paper_vs_ours.csv")
    alpaca = paper[paper["metric"] == "win rate (%), Alpaca"].iloc[0]
    assert (alpaca["paper_before"], alpaca["paper_after"]) == (29.79, 64.69)
    assert (alpaca["ours_before"], alpaca["ours_after"]) == (30, 60) and alpaca["ours_verdict"] == HELD
    for side in ("paper", "ours"):  # model, data, judge and scale stated on both sides
        assert alpaca[[f"{side}_model", f"{side}_data", f"{side}_judge", f"{side}_scale"]].notna().all()
    evidence = pd.read_csv(folder / "claim_evidence.csv")
    length = evidence[(evidence["claim_id"] == "length_diversity") & evidence["part"].str.startswith("answer length")]
    assert length["low"].iloc[0] > 0 and length["verdict"].iloc[0] == HELD
    assert "held" in (folder / "summary.md").read_text()


def test_published_table_says_why_it_is_skipped(monkeypatch):
    from neftlib.analysis import published_table

    monkeypatch.delenv("NEFTLIB_DATA_DIR", raising=False)
    table = published_table("r")
    assert len(table) == 4 and table["status"].str.contains("NEFTLIB_DATA_DIR is not set").all()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs the published AlpacaEval answers in ../shared/data")
def test_published_table_on_the_papers_answers(monkeypatch):
    from neftlib.analysis import published_table

    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(REAL_DATA.parent))
    table = published_table("r").set_index("model")
    assert (table["status"] == "ok").all() and list(table["cutoff"]) == [50, 50, 100, 100]
    # The leaderboard's GPT-4 win rate of Alpaca-7B and LLaMA-2-7B-Chat, from the annotations
    assert table.loc["alpaca-7b", "win_rate"] == pytest.approx(26.46, abs=0.01)
    assert table.loc["llama-2-7b-chat-hf", "win_rate"] == pytest.approx(71.37, abs=0.01)
    for model, row in table.iterrows():
        assert row["ci_low"] < row["win_rate"] < row["ci_high"]
        assert row["avg_chars_low"] < row["avg_chars"] < row["avg_chars_high"]
    assert table.loc["alpaca-7b-neft", "avg_chars"] > 2 * table.loc["alpaca-7b", "avg_chars"]
