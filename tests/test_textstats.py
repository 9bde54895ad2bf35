"""Length / repetition / diversity analysis and ROUGE-L / BLEU."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from neftlib.evaluation.textstats import (
    analyze_files,
    bleu,
    diversity,
    length_diversity_table,
    load_model_outputs,
    log_diversity,
    log_diversity_release,
    rep_n,
    rouge_l,
    whitespace_tokens,
)


def _data_dir() -> Path:
    env = os.environ.get("NEFTLIB_DATA_DIR", "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data"


def _outputs(model: str) -> Path:
    path = _data_dir() / "alpaca_eval" / model / "model_outputs.json"
    if not path.is_file():
        pytest.skip(f"real AlpacaEval model outputs not found at {path} (set NEFTLIB_DATA_DIR)")
    return path


def test_whitespace_tokens():
    assert whitespace_tokens(" a  b\n c\t") == ["a", "b", "c"]
    assert whitespace_tokens("") == []


def test_rep_n_by_hand():
    # bigrams ab, ba, ab: 2 unique of 3
    assert rep_n([["a", "b", "a", "b"]], 2) == pytest.approx(100 / 3)
    # counts summed over answers: (2 + 1) unique of (3 + 1)
    assert rep_n([["a", "b", "a", "b"], ["c", "d"]], 2) == pytest.approx(25.0)
    # the same bigram in two answers repeats only when pooled
    assert rep_n([["a", "b"], ["a", "b"]], 2) == 0.0
    assert rep_n([["a", "b"], ["a", "b"]], 2, pooled=True) == pytest.approx(50.0)
    assert math.isnan(rep_n([["a", "b"]], 3))
    with pytest.raises(ValueError):
        rep_n([["a"]], 0)


def test_diversity_by_hand():
    toks = [whitespace_tokens("a b a b a")]
    # rep2 = 1 - 2/4 = 50%, rep3 = 1 - 2/3, rep4 = 0  ->  diversity = .5 * 2/3 * 1
    assert diversity(toks) == pytest.approx(1 / 3)
    assert log_diversity(toks) == pytest.approx(-math.log(2 / 3))
    # nothing repeated: diversity 1, log-diversity at Kirchenbauer et al.'s cap of 20
    assert diversity([["a", "b", "c", "d", "e"]]) == 1.0
    assert log_diversity([["a", "b", "c", "d", "e"]]) == pytest.approx(20.0)


def test_log_diversity_release_by_hand():
    # "a b" x 5: the released loop drops the last n-gram, so 8 bigrams / 7 trigrams / 6 4-grams,
    # 2 distinct of each; repetition stays a fraction and is divided by 100 again.
    toks = [["a", "b"] * 5]
    div = (1 - (1 - 2 / 8) / 100) * (1 - (1 - 2 / 7) / 100) * (1 - (1 - 2 / 6) / 100)
    assert log_diversity_release(toks) == pytest.approx(-math.log(1 - div))
    # an answer with no repeat sits at the cap; the set's value is the mean over answers
    assert log_diversity_release([["a", "b", "c", "d", "e", "f"]]) == pytest.approx(20.0)
    assert log_diversity_release(toks + [list("abcdef")]) == pytest.approx((-math.log(1 - div) + 20) / 2)
    # too short for any 4-gram once the last is dropped: left out of the mean, NaN when all are
    assert log_diversity_release(toks + [["a", "b", "c", "d"]]) == pytest.approx(-math.log(1 - div))
    assert math.isnan(log_diversity_release([["a", "b", "c", "d"]]))


def test_length_diversity_table_by_hand():
    rows = length_diversity_table({"m": ["a b c", "a b", "x y z w"], "r": ["a a a a"]}, cutoff=3)
    m, r = rows
    assert m["name"] == "m"
    assert (m["n_answers"], m["n_kept"], m["n_dropped"]) == (3, 2, 1)
    assert m["avg_chars"] == pytest.approx((5 + 3 + 7) / 3)
    assert m["avg_tokens"] == pytest.approx(3.0)  # uncut lengths 3, 2, 4
    assert m["rep_2"] == 0.0 and m["rep_3"] == 0.0
    # a 3-token cut has no 4-grams, so rep_4 and the diversity built on it are undefined
    assert math.isnan(m["rep_4"]) and math.isnan(m["diversity"])
    # "a a a a" cut to "a a a": bigram aa twice (rep2 50%), trigram once (rep3 0%)
    assert r["rep_2"] == pytest.approx(50.0) and r["rep_3"] == 0.0
    rows = length_diversity_table({"m": ["a b c d e", "a b c d"]}, cutoff=4)
    assert rows[0]["n_kept"] == 2 and rows[0]["diversity"] == pytest.approx(1.0)
    # two identical answers: nothing repeats within an answer (the SimCTG counting)
    rows = length_diversity_table({"m": ["a b c d", "a b c d"]}, cutoff=4)
    assert rows[0]["rep_2"] == 0.0


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def test_analyze_files_names(tmp_path):
    a = _write(tmp_path / "m1" / "model_outputs.json",
               [{"instruction": "q", "output": "one two three", "generator": "gen-a", "dataset": "d"}])
    b = _write(tmp_path / "folder-b" / "model_outputs.json", [{"instruction": "q", "output": "x y z"}])
    c = _write(tmp_path / "m3" / "model_outputs.json",
               [{"instruction": "q", "output": "p q r", "generator": "gen-a"}])
    rows = analyze_files([a, b, c], cutoff=2)
    assert [r["name"] for r in rows] == ["gen-a", "folder-b", "gen-a (m3)"]
    assert rows[0]["n_kept"] == 1 and rows[0]["path"] == str(a)


def test_bad_input_names_file_and_row(tmp_path):
    bad = tmp_path / "notjson.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="notjson.json"):
        analyze_files([bad])
    rows = [{"output": "fine"}, {"instruction": "no output here"}]
    missing = _write(tmp_path / "missing.json", rows)
    with pytest.raises(ValueError, match=r"missing\.json: row 1 has no 'output'"):
        load_model_outputs(missing)
    with pytest.raises(ValueError, match="row 0"):
        load_model_outputs(_write(tmp_path / "nonstr.json", [{"output": 5}]))
    with pytest.raises(ValueError, match="not_a_list.json"):
        load_model_outputs(_write(tmp_path / "not_a_list.json", {"output": "x"}))


def test_rouge_l_and_bleu_by_hand():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    # LCS 3, precision 3/4, recall 3/3 -> F1 = 6/7
    assert rouge_l(["the cat sat on"], ["the cat sat"]) == pytest.approx(600 / 7)
    assert rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(50.0)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["completely different words here"], ["the cat sat on the mat"]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        rouge_l(["a"], [])
    with pytest.raises(ValueError):
        bleu([], [])


# ---------------------------------------------------------------- real AlpacaEval outputs


def test_real_alpaca_pair_cutoff_50():
    before, after = analyze_files([_outputs("alpaca-7b"), _outputs("alpaca-7b-neft")], cutoff=50)
    assert before["name"] == "alpaca-7b"
    for row in (before, after):
        assert row["n_answers"] == 805 and row["n_kept"] + row["n_dropped"] == 805
    # mean characters agree with the leaderboard's avg_length (396 and 1067, truncated)
    assert int(before["avg_chars"]) == 396 and int(after["avg_chars"]) == 1067
    # the paper's finding: NEFT answers are far longer and no more repetitive
    assert after["avg_tokens"] > 2 * before["avg_tokens"]
    assert after["rep_2"] < before["rep_2"]
    # regression values of this code on these files (not numbers from the paper)
    assert (before["n_kept"], after["n_kept"]) == (468, 759)
    assert before["rep_2"] == pytest.approx(5.189, abs=1e-3)
    assert after["log_diversity"] == pytest.approx(3.768, abs=1e-3)
    assert (before["log_diversity_release"], after["log_diversity_release"]) == pytest.approx((11.054, 16.454), abs=1e-3)


def test_real_llama_pair_cutoff_100():
    before, after = analyze_files(
        [_outputs("llama-2-7b-chat-hf"), _outputs("llama-2-chat-7b-evol70k-neft")], cutoff=100
    )
    assert (before["name"], after["name"]) == ("llama-2-7b-chat-hf", "llama-2-chat-7b-evol70k-neft")
    assert int(before["avg_chars"]) == 1479 and int(after["avg_chars"]) == 1612
    assert (before["n_kept"], after["n_kept"]) == (699, 740)
    assert before["log_diversity"] == pytest.approx(2.448, abs=1e-3)
