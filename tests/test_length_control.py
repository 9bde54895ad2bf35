"""Length control of the published answers: the LC win rate is the logistic fit it claims to be, the raw
win rate is the leaderboard's, differences are paired, missing data is named, and the command writes its evidence."""
import importlib.machinery
import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.optimize import minimize

from neftlib.analysis import length_control as lc
from neftlib.evaluation.winrate import length_controlled_from_annotations


def _rows(prefs, model_chars, reference_chars, prefix="p"):
    return [{"instruction": f"{prefix}{i}", "output_1": "r" * ref, "output_2": "m" * mod, "preference": p}
            for i, (p, mod, ref) in enumerate(zip(prefs, model_chars, reference_chars))]


def _synthetic(seed=0, n=120, slope=2.0, intercept=-0.7, shift=150, prefix="p"):
    """A judged table drawn from the length model itself: preferences from sigmoid(b0 + b1 * tanh(d / sd))."""
    rng = np.random.default_rng(seed)
    reference = rng.integers(100, 900, n)
    model = np.maximum(1, reference + rng.normal(shift, 300, n).astype(int))
    d = model - reference
    p = 1 / (1 + np.exp(-(intercept + slope * np.tanh(d / d.std(ddof=1)))))
    prefs = np.where(rng.random(n) < p, 2, 1).tolist()
    prefs[3], prefs[7] = 0, None  # a legacy draw and a missing judgment
    return lc.judged_frame(_rows(prefs, model, reference, prefix))


# ---------- (a) lc_win_rate_approx is the logistic fit read at zero length difference ----------

def test_lc_win_rate_has_the_closed_form_answer_of_a_symmetric_two_group_table():
    # Half the pairs 100 characters longer than the reference, half 100 shorter: tanh(d / sd) takes two values
    # +t and -t, so the fit is saturated: each group's fitted rate is its observed rate, 3/4 and 1/4... and the
    # intercept is the mean of the two logits, here 0 (a 50% LC win rate). With rates 4/5 and 2/5 the intercept is
    # (logit 0.8 + logit 0.4) / 2.
    longer, shorter = [2, 2, 2, 1], [2, 1, 1, 1]
    frame = lc.judged_frame(_rows(longer + shorter, [600] * 4 + [400] * 4, [500] * 8))
    assert lc.lc_win_rate_approx(frame) == pytest.approx(50.0, abs=1e-6)
    longer, shorter = [2, 2, 2, 2, 1], [2, 2, 1, 1, 1]
    frame = lc.judged_frame(_rows(longer + shorter, [600] * 5 + [400] * 5, [500] * 10))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = 100 / (1 + math.exp(-(logit(0.8) + logit(0.4)) / 2))
    assert lc.lc_win_rate_approx(frame) == pytest.approx(expected, abs=1e-6)
    assert lc.raw_win_rate(frame) == pytest.approx(60.0)  # the raw rate is not the LC one


def test_lc_win_rate_equals_a_logistic_fit_computed_here():
    frame = _synthetic()
    d = (frame["reference_chars"] - frame["model_chars"]).to_numpy()  # alpaca_eval's delta: reference - model
    x = np.tanh(d / d.std(ddof=1))  # standardised over all rows, the unjudged one included
    p = frame["preference"].to_numpy()
    keep = ~np.isnan(p)
    y = np.where(p[keep] == 0, 1.5, p[keep]) - 1  # 0 is a draw: half a win
    X = np.column_stack([np.ones(keep.sum()), x[keep]])

    def nll(b):
        z = X @ b
        return np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))

    fit = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    assert lc.lc_win_rate_approx(frame) == pytest.approx(100 / (1 + math.exp(-fit.x[0])), abs=1e-4)
    # the drawn curve is the same fit: its slope on tanh((model - reference) / sd) is minus the slope here
    curve = lc.length_fit(frame)
    assert curve.slope == pytest.approx(-fit.x[1], abs=1e-4)
    assert curve.predict(np.array([0.0]))[0] == pytest.approx(lc.lc_win_rate_approx(frame))


# ---------- (b) the raw win rate is the leaderboard's counting ----------

def test_raw_win_rate_is_wins_plus_half_the_draws_over_the_judged():
    frame = lc.judged_frame(_rows([2, 2, 1, 0, None, 1.5, 1], [9] * 7, [5] * 7))
    # judged: 6 (the null is left out); wins 2, draws 2 (0 and 1.5)
    assert lc.raw_win_rate(frame) == pytest.approx(100 * (2 + 2 / 2) / 6)
    assert lc.win_draws(frame, np.arange(7)[None, :])[0] == pytest.approx(lc.raw_win_rate(frame))


# ---------- (c) paired differences ----------

def test_paired_difference_is_paired_and_its_interval_holds_the_estimate():
    base = _synthetic(seed=1)
    same = lc.analyze({"alpaca-7b": base, "alpaca-7b-neft": base.copy()}, n_boot=200, seed=0)
    for row in same.pairs[same.pairs["measure"] != "win_rate_where_neftune_not_longer"].itertuples():
        # the same answers on the same resampled prompts: every draw's difference is 0, so the interval is [0, 0];
        # resampling the two models' prompts independently would not give that
        assert (row.difference, row.low, row.high, row.p_value) == (0.0, 0.0, 0.0, 1.0)

    neft = _synthetic(seed=2, shift=500, intercept=0.3)
    result = lc.analyze({"alpaca-7b": base, "alpaca-7b-neft": neft}, n_boot=300, seed=0)
    pairs = result.pairs.set_index("measure")
    models = result.models.set_index("model")
    for measure in ("win_rate", "lc_win_rate_approx"):
        row = pairs.loc[measure]
        change = models.at["alpaca-7b-neft", measure] - models.at["alpaca-7b", measure]
        assert row["difference"] == pytest.approx(change)
        assert row["low"] <= row["difference"] <= row["high"] and 0 < row["p_value"] <= 1
    # every model's interval comes from the same resampled prompts
    idx = lc.resamples(len(base), 300, 0)
    expected = lc.percentile_interval(lc.lc_draws(neft, idx))
    assert (models.at["alpaca-7b-neft", "lc_low"], models.at["alpaca-7b-neft", "lc_high"]) == pytest.approx(expected)

    with pytest.raises(ValueError, match="same prompts"):
        lc.analyze({"alpaca-7b": base, "alpaca-7b-neft": neft.iloc[:-1]}, n_boot=10)


def test_bootstrap_p_value_is_two_sided_and_never_zero():
    assert lc.bootstrap_p_value(np.full(99, 3.0)) == pytest.approx(2 / 100)
    assert lc.bootstrap_p_value(np.full(99, -3.0)) == pytest.approx(2 / 100)
    assert lc.bootstrap_p_value(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == 1.0


def test_not_longer_check_keeps_only_prompts_where_neftune_is_not_longer():
    base = lc.judged_frame(_rows([1, 2, 1, 2], [100, 100, 300, 300], [200] * 4))
    neft = lc.judged_frame(_rows([2, 2, 2, 1], [50, 100, 900, 900], [200] * 4))
    out = lc.not_longer_difference(base, neft, n_boot=50, seed=0)
    assert out["n"] == 2 and out["baseline_value"] == 50.0 and out["neftune_value"] == 100.0


def test_longer_wins_agreement_and_bins():
    # the model is longer in pairs 0-2, shorter in 3, as long in 4; GPT-4 decides all but the draw (pair 2)
    frame = lc.judged_frame(_rows([2, 1, 0, 1, 2], [300, 300, 300, 100, 200], [200] * 5))
    assert lc.longer_wins(frame).tolist() == [1.0, 0.0, 1.0]  # pair 2 is a draw, pair 4 has no longer answer
    bins = lc.length_bins(frame, n_boot=20)
    assert list(bins["bin_high"][:-1]) == list(bins["bin_low"][1:])  # the bins tile the whole line
    assert bins.set_index("bin")["n"].to_dict() == {"<= -250": 0, "-250 to -50": 1, "-50 to +50": 1, "+50 to +250": 3,
                                                    "+250 to +500": 0, "+500 to +750": 0, "+750 to +1000": 0,
                                                    "+1000 to +1500": 0, "> +1500": 0}
    assert bins["low"].isna().all()  # too few pairs in every bin for an interval


# ---------- (d) missing data: clear errors ----------

def test_missing_annotations_are_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("NEFTLIB_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="NEFTLIB_DATA_DIR is not set.*export NEFTLIB_DATA_DIR"):
        lc.read_published()
    (tmp_path / "alpaca_eval" / "alpaca-7b").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        lc.read_published(tmp_path)
    message = str(err.value)
    assert "alpaca-7b/annotations_alpaca_eval_gpt4.json is missing" in message
    assert "Point NEFTLIB_DATA_DIR at the real-data folder" in message
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(tmp_path))
    assert "annotations_alpaca_eval_gpt4.json is missing" in lc.published_or_reason(n_boot=5)
    assert lc.notebook_figure(lc.published_or_reason(n_boot=5)) is None
    assert lc.summary_markdown("no data here") == "no data here"


def test_command_without_data_exits_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NEFTLIB_DATA_DIR", raising=False)
    with pytest.raises(SystemExit) as code:
        lc.main([str(tmp_path / "out")])
    assert code.value.code == 2 and "NEFTLIB_DATA_DIR is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------- alpaca_eval's own LC win rate, only where it can run ----------

def test_official_lc_needs_df_gamed_and_alpaca_eval(tmp_path, monkeypatch):
    frame = lc.judged_frame(_rows([2, 1], [10, 20], [15, 15]))
    value, note = lc.official_lc(frame, None)
    assert math.isnan(value) and "df_gamed.csv" in note and "--df-gamed" in note
    with pytest.raises(FileNotFoundError, match="no such file"):
        lc.official_lc(frame, tmp_path / "absent.csv")


def test_official_lc_reads_the_given_df_gamed_and_nothing_from_the_hub(tmp_path, monkeypatch):
    gamed = tmp_path / "df_gamed.csv"
    gamed.write_text("index,instruction_difficulty\n0,0.5\n1,0.7\n")
    asked = []

    def hub(*args, filename=None, **kwargs):
        raise OSError("offline")

    def get_length_controlled_winrate(frame, save_weights_dir="auto"):
        path = glm.hf_hub_download(repo_id="tatsu-lab/alpaca_eval", filename="df_gamed.csv", repo_type="dataset")
        asked.append((path, list(frame["index"])))
        return {"length_controlled_winrate": 40.0 + len(pd.read_csv(path))}

    package, metrics, glm = (types.ModuleType(n) for n in ("alpaca_eval", "alpaca_eval.metrics",
                                                              "alpaca_eval.metrics.glm_winrate"))
    package.__spec__ = importlib.machinery.ModuleSpec("alpaca_eval", None)
    glm.hf_hub_download = hub
    metrics.get_length_controlled_winrate = get_length_controlled_winrate
    metrics.glm_winrate, package.metrics = glm, metrics
    for name, module in (("alpaca_eval", package), ("alpaca_eval.metrics", metrics),
                         ("alpaca_eval.metrics.glm_winrate", glm)):
        monkeypatch.setitem(sys.modules, name, module)
    data = tmp_path / "data"
    (data / "alpaca_eval").mkdir(parents=True)
    (data / "alpaca_eval" / "text_davinci_003.json").write_text(json.dumps(
        [{"instruction": f"p{i}", "output": "r"} for i in range(2)]))
    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(data))
    rows = [{**r, "generator_1": "text_davinci_003", "generator_2": "m"} for r in _rows([2, 1], [10, 20], [15, 15])]
    value, note = lc.official_lc(lc.judged_frame(rows), gamed)
    assert value == 42.0 and "length_controlled_v1" in note
    assert asked == [(str(gamed), [0, 1])] and glm.hf_hub_download is hub  # the hub is restored afterwards


# ---------- the figure and the command ----------

def test_figure_has_one_titled_panel_per_pair_with_words_and_units():
    frames = {m: _synthetic(seed=i, shift=150 + 250 * i) for i, m in enumerate(lc.MODELS)}
    fig = lc.draw_length_control(lc.analyze(frames, n_boot=50))
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and fig._suptitle.get_text()
    assert all("(characters)" in ax.get_xlabel() for ax in fig.axes) and "(%)" in fig.axes[0].get_ylabel()
    assert [ax.get_title() for ax in fig.axes] == ["Alpaca-7B -> Alpaca-7B-NEFT",
                                                   "LLaMA-2-7B-Chat -> LLaMA-2-7B-Chat-Evol70k-NEFT"]
    assert "Table 5" in lc.paper_table5_markdown() and "61.99" in lc.paper_table5_markdown()


def test_evidence_dir_from_a_date_or_a_folder(tmp_path):
    folder, committed = lc.evidence_dir("2026-12-03")
    assert committed and folder == lc.EVIDENCE / "published-length-2026-12-03"
    assert lc.evidence_dir(str(tmp_path)) == (tmp_path, False)


def test_real_published_answers(data_dir, tmp_path, monkeypatch):
    frames = lc.read_published(data_dir)
    # the leaderboard's AlpacaEval 1 win rates of the two Alpaca models, and the one LC implementation
    assert lc.raw_win_rate(frames["alpaca-7b"]) == pytest.approx(26.46, abs=0.005)
    assert lc.raw_win_rate(frames["alpaca-7b-neft"]) == pytest.approx(61.64, abs=0.005)
    for model, frame in frames.items():
        path = data_dir / "alpaca_eval" / model / "annotations_alpaca_eval_gpt4.json"
        assert lc.lc_win_rate_approx(frame) == length_controlled_from_annotations(path)

    monkeypatch.setenv("NEFTLIB_DATA_DIR", str(data_dir))
    out = tmp_path / "evidence"
    assert lc.main([str(out), "--n-boot", "40"]) == 0
    table = pd.read_csv(out / "length_control.csv")
    assert list(table.columns[:7]) == list(lc.COLUMNS) and list(table["model"]) == list(lc.MODELS)
    assert ((table["lc_low"] <= table["lc_win_rate_approx"]) & (table["lc_win_rate_approx"] <= table["lc_high"])).all()
    assert table["longer_wins_agreement"].between(0.5, 1).all()  # GPT-4 sides with the longer answer more often
    pairs = pd.read_csv(out / "paired_differences.csv")
    assert len(pairs) == 6 and {"difference", "low", "high", "p_value"} <= set(pairs.columns)
    assert (pairs["low"] <= pairs["difference"]).all() and (pairs["difference"] <= pairs["high"]).all()
    bins = pd.read_csv(out / "length_bins.csv")
    assert (bins.groupby("model")["n"].sum().reindex(table["model"]).to_numpy() == table["n"].to_numpy()).all()
    readme = (out / "README.md").read_text()
    assert "extrapolates" in readme and "not ground truth" in readme and "AlpacaEval 2" in readme
    assert str(data_dir) not in readme and (out / "length_control.png").stat().st_size > 0
