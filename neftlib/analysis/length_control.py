"""How much of the paper's published gain is answer length?

GPT-4's published AlpacaEval 1 judgments of the paper's four released models (each against Text-Davinci-003's
answers to the same 805 prompts; `NEFTLIB_DATA_DIR/alpaca_eval/<model>/annotations_alpaca_eval_gpt4.json`), per
model:
  * `win_rate`: the leaderboard's counting, 100 * (wins + draws / 2) / judged (neftlib.evaluation.winrate).
  * `lc_win_rate_approx`: alpaca_eval's `length_controlled_minimal` GLM. GPT-4's preference for the model is fitted
    as sigmoid(b0 + b1 * tanh((reference chars - model chars) / sd)), sd over all rows, and read at zero length
    difference: 100 * sigmoid(b0). The same function scores the project's own arms
    (`winrate.length_controlled_win_rate`); it fits without a penalty, where alpaca_eval adds an L1 penalty of
    cross-validated strength (a change of under a point on these files).
  * `lc_win_rate_alpaca_eval`: alpaca_eval's own `length_controlled_v1` (with its instruction-difficulty term), only
    where alpaca_eval is installed and its hub file `df_gamed.csv` is given by path; else NaN and the reason.
  * Model-free checks: win rates within bins of the length difference to the reference, the share of pairs near zero
    difference (how far the fit's reading at zero extrapolates) and how often GPT-4 sides with the longer answer.
Per published pair (baseline -> NEFTune) the raw and length-controlled differences, and the win rates on the prompts
where the NEFTune answer is not longer than the baseline model's, with paired bootstrap intervals and p-values. No
verdict is given here: the project's verdict rule reads `difference, low, high, p_value` of `pair_table`'s rows.

    python -m neftlib.analysis.length_control 2026-12-03    # -> docs/evidence/published-length-2026-12-03/
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

from neftlib.analysis.paper import JUDGES, table, table_judge, table_name
from neftlib.analysis.plots import figure_legend, headline, new_figure, save
from neftlib.base.io import write_csv, write_text
from neftlib.base.paths import PROJ_ROOT, data_dir, figures_dir
from neftlib.evaluation.agreement import MODELS, annotations_path
from neftlib.evaluation.judge_alpaca_eval import INSTALL, alpaca_eval_lc
from neftlib.evaluation.winrate import (discrete_preference, length_controlled_win_rate, load_annotations,
                                        summarize_preferences, win_values)

# The paper's before/after pairs among the released models: the same prompts, the same reference, so paired.
PAIRS = {"alpaca": ("alpaca-7b", "alpaca-7b-neft"), "chat": ("llama-2-7b-chat-hf", "llama-2-chat-7b-evol70k-neft")}
NAMES = {"alpaca-7b": "Alpaca-7B", "alpaca-7b-neft": "Alpaca-7B-NEFT", "llama-2-7b-chat-hf": "LLaMA-2-7B-Chat",
         "llama-2-chat-7b-evol70k-neft": "LLaMA-2-7B-Chat-Evol70k-NEFT"}
# length_control.csv's first columns, as the evidence table names them; extra columns follow.
COLUMNS = ("model", "n", "win_rate", "lc_win_rate_approx", "lc_low", "lc_high", "longer_wins_agreement")
# Bins of (model chars - reference chars): narrow around zero, where the LC reading sits, wide in the long tail.
BIN_EDGES = (-math.inf, -250.0, -50.0, 50.0, 250.0, 500.0, 750.0, 1000.0, 1500.0, math.inf)
NEAR_ZERO_CHARS = 50.0  # "about the reference's length": within this many characters of it
MIN_BIN_N = 10  # fewer judged pairs in a bin give no interval worth drawing
TABLE5 = "table5_prompting_for_length_llama1_gpt4"
EVIDENCE = PROJ_ROOT / "docs" / "evidence"
DOCS_FIGURE = PROJ_ROOT / "docs" / "figures" / "length_control.png"
BASE_COLOR, NEFT_COLOR = "#1f77b4", "#ff7f0e"
WORDING = (
    "- **A GLM read at zero length difference extrapolates.** The LC win rate is the fitted curve's value where the "
    "model's answer is as long as the reference's. Where few pairs lie near zero (`near_zero_share`: within "
    f"{NEAR_ZERO_CHARS:.0f} characters), that value comes from the curve's shape (tanh of a standardised difference), "
    "not from judgments made at equal length; the binned rates show what GPT-4 did where pairs are.",
    "- **GPT-4 is the paper's judge, not ground truth.** These numbers say how much of GPT-4's preference follows "
    "length, not whether longer answers are better or worse for people; the paper's human study is another question.",
    "- **AlpacaEval 1's annotator is not AlpacaEval 2's.** These are the `alpaca_eval_gpt4` judgments against "
    "Text-Davinci-003 that the paper reports. AlpacaEval 2's length-controlled leaderboard uses another annotator "
    "(GPT-4 Turbo, weighted) against another baseline with the full GLM (`length_controlled_v1`), so its LC numbers "
    "are on another scale and do not compare with these.",
)


# ---------- reading the published judgments ----------

def judged_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Annotation rows (output_1 = reference, output_2 = model, preference) as a table with each answer's length in
    characters, their difference (model minus reference) and the discrete win value (0, 0.5, 1; NaN: no judgment)."""
    frame = pd.DataFrame(list(rows))
    frame["preference"] = pd.to_numeric(frame["preference"], errors="raise").astype(float)
    frame["model_chars"] = frame["output_2"].str.len().astype(float)
    frame["reference_chars"] = frame["output_1"].str.len().astype(float)
    frame["length_difference"] = frame["model_chars"] - frame["reference_chars"]
    values = [discrete_preference(p) for p in frame["preference"]]
    frame["win"] = [math.nan if v is None else v - 1.0 for v in values]
    return frame


def published_root() -> Path:
    """The real-data folder, or an error that says how to name it."""
    root = data_dir()
    if root is None:
        raise FileNotFoundError(
            "NEFTLIB_DATA_DIR is not set: the published GPT-4 annotations are read from "
            "$NEFTLIB_DATA_DIR/alpaca_eval/<model>/annotations_alpaca_eval_gpt4.json; export NEFTLIB_DATA_DIR="
            "/path/to/the/real-data/folder (docs/datasets.md)")
    return root


def read_model(root: Path, model: str) -> pd.DataFrame:
    """One published model's judged table; a missing file is named with the fix."""
    path = annotations_path(root, model)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: GPT-4's published AlpacaEval annotations of {model!r} are needed. Point "
            "NEFTLIB_DATA_DIR at the real-data folder that holds "
            f"alpaca_eval/{model}/annotations_alpaca_eval_gpt4.json (the alpaca_eval_gpt4 annotations.json of "
            "results/<model>/ in tatsu-lab/alpaca_eval)")
    return judged_frame(load_annotations(path))


def read_published(root: Path | None = None, models: Sequence[str] = MODELS) -> dict[str, pd.DataFrame]:
    """The published models' judged tables, checked to judge the same prompts in the same order (pairing needs it)."""
    root = published_root() if root is None else Path(root)
    frames = {model: read_model(root, model) for model in models}
    first_model, first = next(iter(frames.items()))
    for model, frame in frames.items():
        if list(frame["instruction"]) != list(first["instruction"]):
            raise ValueError(f"{annotations_path(root, model)} does not judge the same prompts in the same order as "
                             f"{annotations_path(root, first_model)}: a paired comparison needs both")
    return frames


# ---------- the numbers of one model ----------

def raw_win_rate(frame: pd.DataFrame) -> float:
    """The leaderboard's win rate (percent): wins plus half the draws over the judged pairs."""
    return float(summarize_preferences(frame["preference"].tolist())["win_rate"])


def lc_win_rate_approx(frame: pd.DataFrame) -> float:
    """alpaca_eval's `length_controlled_minimal` win rate (percent), by the project's one implementation."""
    return length_controlled_win_rate(frame["preference"].to_numpy(), frame["model_chars"].to_numpy(),
                                      frame["reference_chars"].to_numpy())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class LengthFit:
    """A fitted length curve: P(GPT-4 prefers the model) = sigmoid(logit(lc / 100) + slope * tanh(diff / sd)),
    diff = model chars - reference chars; slope > 0 means GPT-4 favours the longer answer."""

    lc_win_rate: float
    slope: float
    sd: float

    def predict(self, difference: np.ndarray) -> np.ndarray:
        """P(GPT-4 prefers the model), in percent, at each length difference (characters)."""
        d = np.asarray(difference, dtype=float)
        p = min(max(self.lc_win_rate / 100.0, 1e-12), 1.0 - 1e-12)
        x = np.tanh(d / self.sd) if self.sd > 0 else np.zeros_like(d)
        return 100.0 * _sigmoid(math.log(p / (1.0 - p)) + self.slope * x)


def length_fit(frame: pd.DataFrame) -> LengthFit:
    """The curve behind `lc_win_rate_approx`, for drawing: its intercept from that one implementation and its slope
    as the likelihood's best slope at that intercept. The soft-label likelihood is strictly concave, so this is the
    joint fit's slope: the curve drawn is the curve read at zero."""
    lc = lc_win_rate_approx(frame)
    d = frame["length_difference"].to_numpy(float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0  # over all rows, as the fit standardises
    if not (0.0 < lc < 100.0) or sd <= 0.0:
        return LengthFit(lc, 0.0, sd)
    x_all = np.tanh(d / sd)
    labels = [win_values([p]) for p in frame["preference"]]  # soft labels, rows without a judgment dropped
    keep = np.array([v.size > 0 for v in labels])
    y = np.array([v[0] for v in labels if v.size], dtype=float)
    x = x_all[keep]
    b0 = math.log(lc / (100.0 - lc))

    def nll(slope: float) -> float:
        z = b0 + slope * x
        return float(np.sum(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)))

    return LengthFit(lc, float(minimize_scalar(nll).x), sd)


def longer_wins(frame: pd.DataFrame) -> np.ndarray:
    """Per pair GPT-4 decided (not a draw) and whose answers differ in length: 1 when it preferred the longer
    answer, 0 when the shorter; the model-free measure of how much GPT-4 follows length."""
    decided = frame["win"].isin([0.0, 1.0]) & (frame["length_difference"] != 0)
    longer_is_model = frame.loc[decided, "length_difference"] > 0
    return (longer_is_model == (frame.loc[decided, "win"] == 1.0)).to_numpy(float)


def length_bins(frame: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                edges: Sequence[float] = BIN_EDGES) -> pd.DataFrame:
    """GPT-4's win rate within bins of the length difference to the reference, each with a bootstrap 95% interval
    (none below MIN_BIN_N judged pairs); every bin is listed, empty ones too, so the gaps show."""
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (frame["length_difference"] > low) & (frame["length_difference"] <= high)
        values = frame.loc[inside, "win"].dropna().to_numpy(float)
        rate, lo, hi = (100.0 * values.mean(), *_interval(values, n_boot, seed)) if values.size else (math.nan,) * 3
        if values.size < MIN_BIN_N:
            lo = hi = math.nan
        rows.append({"bin": _bin_name(low, high), "bin_low": low, "bin_high": high, "n": int(values.size),
                     "mean_difference": float(frame.loc[inside, "length_difference"].mean()) if inside.any()
                     else math.nan, "win_rate": rate, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def _bin_name(low: float, high: float) -> str:
    if math.isinf(low):
        return f"<= {high:+.0f}"
    if math.isinf(high):
        return f"> {low:+.0f}"
    return f"{low:+.0f} to {high:+.0f}"


def _interval(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of a mean, in percent (win values or agreement indicators)."""
    draws = 100.0 * values[resamples(values.size, n_boot, seed)].mean(axis=1)
    return percentile_interval(draws)


def near_zero(frame: pd.DataFrame, chars: float = NEAR_ZERO_CHARS) -> pd.Series:
    """Pairs whose answers are about equally long (within `chars` characters): where the LC reading is observed."""
    return frame["length_difference"].abs() <= chars


# ---------- bootstrap over prompts ----------

def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """n_boot resamples of n prompt positions (with replacement), seeded: the same seed gives the same prompts, so
    models resampled with the same array are compared on the same prompts (paired)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"a bootstrap needs at least one item and one resample, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap draws (non-finite draws dropped)."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(d, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_p_value(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'no difference': twice the smaller share of draws on either side of zero,
    counted with +1 so it is never 0 (the smallest level at which the percentile interval leaves out zero)."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below, above = (np.sum(d <= 0.0) + 1) / (d.size + 1), (np.sum(d >= 0.0) + 1) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def lc_draws(frame: pd.DataFrame, indices: np.ndarray) -> np.ndarray:
    """`lc_win_rate_approx` refitted on each resample of prompts (rows of `indices`), standardisation included."""
    prefs, model, ref = (frame[c].to_numpy(float) for c in ("preference", "model_chars", "reference_chars"))
    return np.array([length_controlled_win_rate(prefs[i], model[i], ref[i]) for i in indices], dtype=float)


def win_draws(frame: pd.DataFrame, indices: np.ndarray) -> np.ndarray:
    """The leaderboard win rate on each resample of prompts (non-judgments left out, as the leaderboard does)."""
    wins = frame["win"].to_numpy(float)[indices]
    with np.errstate(invalid="ignore"):
        return 100.0 * np.nanmean(wins, axis=1)


def paired_difference(base: np.ndarray, treat: np.ndarray, base_point: float, treat_point: float) -> dict:
    """treatment - baseline from estimates and their draws on the same resampled prompts: difference, paired
    interval and p-value."""
    draws = np.asarray(treat, dtype=float) - np.asarray(base, dtype=float)
    low, high = percentile_interval(draws)
    return {"baseline_value": base_point, "neftune_value": treat_point, "difference": treat_point - base_point,
            "low": low, "high": high, "p_value": bootstrap_p_value(draws)}


# ---------- alpaca_eval's own LC win rate, where it can run ----------

@contextlib.contextmanager
def _local_df_gamed(path: Path) -> Iterator[None]:
    """alpaca_eval's GLM asks the hub for df_gamed.csv; answer that one request from the given file, and no other
    (nothing is downloaded at run time)."""
    module = importlib.import_module("alpaca_eval.metrics.glm_winrate")
    hub = module.hf_hub_download

    def local(*args, filename: str | None = None, **kwargs) -> str:
        if filename == "df_gamed.csv":
            return str(path)
        raise OSError(f"alpaca_eval asked the hub for {filename!r}; only df_gamed.csv is given locally")

    module.hf_hub_download = local
    try:
        yield
    finally:
        module.hf_hub_download = hub


def official_lc(frame: pd.DataFrame, df_gamed: Path | None) -> tuple[float, str]:
    """alpaca_eval's `length_controlled_v1` win rate of a judged table, or NaN and why it could not run."""
    if df_gamed is None:
        return math.nan, ("not available: alpaca_eval's length_controlled_v1 needs df_gamed.csv (per-prompt "
                          "difficulties and gamed baselines) from the tatsu-lab/alpaca_eval hub data set, which "
                          "is not fetched at run time; pass a local copy with --df-gamed PATH")
    df_gamed = Path(df_gamed)
    if not df_gamed.is_file():
        raise FileNotFoundError(f"{df_gamed}: no such file; --df-gamed names a local copy of alpaca_eval's "
                                "df_gamed.csv (tatsu-lab/alpaca_eval hub data set)")
    if importlib.util.find_spec("alpaca_eval") is None:
        return math.nan, f"not available: alpaca_eval is not installed ({INSTALL})"
    rows = frame.drop(columns=["model_chars", "reference_chars", "length_difference", "win"]).to_dict("records")
    with _local_df_gamed(df_gamed):
        value, note = alpaca_eval_lc(rows)
    return value, ("alpaca_eval's length_controlled_v1 with the given df_gamed.csv" if note == "ok"
                   else f"not available: {note}")


# ---------- everything, for the four models and two pairs ----------

@dataclass
class LengthControl:
    """The analysis of the published answers: `models` (length_control.csv), `pairs` (paired_differences.csv),
    `bins` (length_bins.csv) and each model's fitted curve."""

    models: pd.DataFrame
    pairs: pd.DataFrame
    bins: pd.DataFrame
    fits: dict[str, LengthFit]
    n_boot: int
    seed: int


def model_row(model: str, frame: pd.DataFrame, win_boot: np.ndarray, lc_boot: np.ndarray, fit: LengthFit,
              n_boot: int, seed: int, official: tuple[float, str]) -> dict:
    """length_control.csv's row of one model: the evidence table's columns first, then what explains them."""
    stats = summarize_preferences(frame["preference"].tolist(), lengths=frame["model_chars"].tolist())
    agree = longer_wins(frame)
    near = near_zero(frame)
    near_values = frame.loc[near, "win"].dropna().to_numpy(float)
    near_low, near_high = _interval(near_values, n_boot, seed) if near_values.size >= MIN_BIN_N else (math.nan,) * 2
    d = frame["length_difference"]
    win_low, win_high = percentile_interval(win_boot)
    lc_low, lc_high = percentile_interval(lc_boot)
    return {
        "model": model, "n": stats["n_total"], "win_rate": stats["win_rate"], "lc_win_rate_approx": fit.lc_win_rate,
        "lc_low": lc_low, "lc_high": lc_high,
        "longer_wins_agreement": float(agree.mean()) if agree.size else math.nan,
        "longer_wins_n": int(agree.size), "win_low": win_low, "win_high": win_high,
        "n_wins": stats["n_wins"], "n_draws": stats["n_draws"], "n_losses": stats["n_wins_base"],
        "avg_chars": float(frame["model_chars"].mean()), "reference_avg_chars": float(frame["reference_chars"].mean()),
        "median_length_difference": float(d.median()), "length_sd": fit.sd, "length_slope": fit.slope,
        "share_longer_than_reference": float((d > 0).mean()),
        # what a judge that only picks the longer answer would score (ties split), beside GPT-4's win rate
        "length_only_win_rate": float(100.0 * ((d > 0).mean() + 0.5 * (d == 0).mean())),
        "near_zero_chars": NEAR_ZERO_CHARS, "near_zero_n": int(near.sum()), "near_zero_share": float(near.mean()),
        "near_zero_win_rate": float(100.0 * near_values.mean()) if near_values.size else math.nan,
        "near_zero_low": near_low, "near_zero_high": near_high,
        "lc_win_rate_alpaca_eval": official[0], "lc_alpaca_eval_note": official[1],
        "n_boot": n_boot, "seed": seed,
    }


def not_longer_difference(base: pd.DataFrame, neft: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Both models' win rates on the prompts where the NEFTune answer is not longer than the baseline model's, and
    the paired difference: a gain that survives there is not the extra length (though the prompts are selected by
    an outcome of training, so they are not a random sample)."""
    keep = (neft["model_chars"] <= base["model_chars"]).to_numpy()
    b, t = base[keep].reset_index(drop=True), neft[keep].reset_index(drop=True)
    if not keep.any():
        return {"n": 0, "baseline_value": math.nan, "neftune_value": math.nan, "difference": math.nan,
                "low": math.nan, "high": math.nan, "p_value": math.nan}
    idx = resamples(int(keep.sum()), n_boot, seed)
    out = paired_difference(win_draws(b, idx), win_draws(t, idx), raw_win_rate(b), raw_win_rate(t))
    return {"n": int(keep.sum()), **out}


def pair_table(frames: dict[str, pd.DataFrame], draws: dict[str, dict[str, np.ndarray]], models: pd.DataFrame,
               n_boot: int, seed: int) -> pd.DataFrame:
    """paired_differences.csv: per pair and measure, NEFTune minus baseline with its paired interval and p-value."""
    by_model = models.set_index("model")
    rows = []
    for pair, (base, neft) in PAIRS.items():
        if base not in frames or neft not in frames:
            continue
        head = {"pair": pair, "baseline": base, "neftune": neft}
        for measure, what in (("win_rate", "raw GPT-4 win rate (leaderboard counting)"),
                              ("lc_win_rate_approx", "alpaca_eval's length_controlled_minimal GLM read at zero "
                                                     "length difference")):
            out = paired_difference(draws[base][measure], draws[neft][measure], by_model.at[base, measure],
                                    by_model.at[neft, measure])
            rows.append({**head, "measure": measure, "n": len(frames[base]), **out, "what": what})
        rows.append({**head, "measure": "win_rate_where_neftune_not_longer",
                     **not_longer_difference(frames[base], frames[neft], n_boot, seed),
                     "what": "raw GPT-4 win rates on the prompts where the NEFTune answer is not longer than the "
                             "baseline model's (model-free; prompts selected by answer length)"})
    columns = ["pair", "baseline", "neftune", "measure", "n", "baseline_value", "neftune_value", "difference", "low",
               "high", "p_value", "what"]
    return pd.DataFrame(rows, columns=columns).assign(n_boot=n_boot, seed=seed)


def analyze(frames: dict[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0,
            df_gamed: Path | None = None) -> LengthControl:
    """Every number of the analysis from judged tables of the same prompts: one set of resampled prompts serves every
    model, so each model's interval and each pair's difference come from the same draws."""
    lengths = {len(f) for f in frames.values()}
    if len(lengths) != 1:
        raise ValueError(f"the judged tables differ in length ({sorted(lengths)}): they must judge the same prompts")
    indices = resamples(lengths.pop(), n_boot, seed)
    draws, rows, bins, fits = {}, [], [], {}
    for model, frame in frames.items():
        draws[model] = {"win_rate": win_draws(frame, indices), "lc_win_rate_approx": lc_draws(frame, indices)}
        fits[model] = length_fit(frame)
        rows.append(model_row(model, frame, draws[model]["win_rate"], draws[model]["lc_win_rate_approx"],
                              fits[model], n_boot, seed, official_lc(frame, df_gamed)))
        pair, arm = next(((p, "baseline" if m[0] == model else "neftune") for p, m in PAIRS.items() if model in m),
                         ("", ""))
        bins.append(length_bins(frame, n_boot, seed).assign(model=model, pair=pair, arm=arm))
    models = pd.DataFrame(rows)
    bins_table = pd.concat(bins, ignore_index=True)
    bins_table = bins_table[["model", "pair", "arm", *[c for c in bins_table if c not in ("model", "pair", "arm")]]]
    return LengthControl(models, pair_table(frames, draws, models, n_boot, seed), bins_table, fits, n_boot, seed)


def analyze_published(root: Path | None = None, n_boot: int = 2000, seed: int = 0,
                      df_gamed: Path | None = None) -> LengthControl:
    """`analyze` on the four published models read from the real-data folder (NEFTLIB_DATA_DIR unless `root`)."""
    return analyze(read_published(root), n_boot, seed, df_gamed)


# ---------- the figure ----------

def draw_length_control(result: LengthControl) -> Figure:
    """P(GPT-4 prefers the model) against the length difference to the reference, one panel per published pair:
    each model's fitted curve, its binned rates with 95% intervals, its raw win rate (dotted) and its LC win rate
    (the curve at zero, a star with its interval); the band around zero is where pairs are about equally long."""
    models = result.models.set_index("model")
    pairs = [(p, m) for p, m in PAIRS.items() if all(x in result.fits for x in m)]
    if not pairs:
        raise ValueError("no published pair to draw: the result holds neither "
                         + " nor ".join(f"{a} and {b}" for a, b in PAIRS.values()))
    fig, axes = new_figure(len(pairs), width=6.4, height=5.4, sharey=True)
    for ax, (pair, (base, neft)) in zip(axes, pairs):
        diffs = result.bins[result.bins["model"].isin([base, neft])]
        span = [models.at[m, "median_length_difference"] for m in (base, neft)]
        low = min(-300.0, *(b for b in diffs.loc[diffs["n"] > 0, "mean_difference"]), *span) - 100.0
        high = max(300.0, *(b for b in diffs.loc[diffs["n"] > 0, "mean_difference"]), *span) + 100.0
        ax.axvspan(-NEAR_ZERO_CHARS, NEAR_ZERO_CHARS, color="grey", alpha=0.18, lw=0,
                   label=f"answers within {NEAR_ZERO_CHARS:.0f} characters of the reference's length")
        grid = np.linspace(low, high, 400)
        for model, color in ((base, BASE_COLOR), (neft, NEFT_COLOR)):
            row, name = models.loc[model], NAMES.get(model, model)
            ax.plot(grid, result.fits[model].predict(grid), color=color, lw=1.8,
                    label=f"{name}: fitted GLM (length_controlled_minimal)")
            part = result.bins[(result.bins["model"] == model) & result.bins["low"].notna()]
            ax.errorbar(part["mean_difference"], part["win_rate"], fmt="o", ms=5, color=color, capsize=3, lw=1,
                        yerr=[part["win_rate"] - part["low"], part["high"] - part["win_rate"]],
                        label=f"{name}: GPT-4's rate within a length bin (at its mean difference), 95% interval")
            ax.axhline(row["win_rate"], color=color, ls=":", lw=1.4,
                       label=f"{name}: raw win rate {row['win_rate']:.1f}%")
            lc = row["lc_win_rate_approx"]
            ax.errorbar([0.0], [lc], yerr=[[lc - row["lc_low"]], [row["lc_high"] - lc]], fmt="*", ms=13, color=color,
                        mec="k", mew=0.6, capsize=4, lw=1.2, zorder=5,
                        label=f"{name}: LC win rate (the fit at 0) {lc:.1f}% [{row['lc_low']:.1f}, "
                              f"{row['lc_high']:.1f}]; {row['near_zero_share']:.0%} of its pairs in the band")
        ax.axvline(0.0, color="k", lw=0.6)
        ax.axhline(50.0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(low, high)
        ax.set_ylim(0, 100)
        ax.set_title(f"{NAMES.get(base, base)} -> {NAMES.get(neft, neft)}", fontsize=9)
        ax.set_xlabel("answer length minus the reference answer's length (characters)")
    axes[0].set_ylabel("P(GPT-4 prefers the model's answer) (%)")  # the panels share it
    figure_legend(fig, ncols=2)
    headline(fig, "How much of the published NEFTune gain is answer length? GPT-4's preference against length "
                  "difference",
             "GPT-4's AlpacaEval 1 annotations of the released answers vs Text-Davinci-003, 805 prompts. Curves: "
             "logistic fit on tanh of the standardised length difference (alpaca_eval's length_controlled_minimal); "
             "read at 0 it extrapolates where few pairs are near 0. Bins with fewer than "
             f"{MIN_BIN_N} pairs not drawn; 95% intervals from {result.n_boot} bootstrap resamples of prompts.")
    return fig


# ---------- the notebook's view ----------

def published_or_reason(n_boot: int = 1000, seed: int = 0) -> LengthControl | str:
    """The analysis of the published answers, or one line saying why it cannot run (no real data here)."""
    try:
        return analyze_published(n_boot=n_boot, seed=seed)
    except FileNotFoundError as err:
        return f"The published answers' length control is not computed: {err}"


def notebook_figure(result: LengthControl | str, run: str | None = None) -> Figure | None:
    """The figure (also saved as figures/<run>/length_control.png when `run` is given), or None without data."""
    if isinstance(result, str):
        return None
    fig = draw_length_control(result)
    if run:
        save(fig, figures_dir(run) / "length_control.png")
    return fig


def paper_table5_markdown() -> str:
    """The paper's Table 5 (prompting for length, GPT-4 judge) as printed, from paper_tables.json."""
    entry = table(TABLE5)
    lines = [f"**The paper's {table_name(TABLE5)}**, as printed (judge: {JUDGES[table_judge(TABLE5)]}): "
             f"{entry['what']}.", "",
             "| model | GPT-4 win rate (%) | average answer length (characters) |", "|---|---:|---:|"]
    lines += [f"| {name} | {win:.2f} | {chars:.0f} |" for name, (win, chars) in entry["rows"].items()]
    return "\n".join([*lines, "", f"The paper's note: {entry['note']}."])


def summary_markdown(result: LengthControl | str) -> str:
    """A compact table of the four models and each pair's differences, or the one-line reason there is none."""
    if isinstance(result, str):
        return result
    lines = ["| model | judged | raw win rate (%) | LC win rate, approx. (%) [95%] | GPT-4 sides with the longer "
             "answer | pairs within 50 characters |", "|---|---:|---:|---:|---:|---:|"]
    for r in result.models.itertuples():
        lines.append(f"| {NAMES.get(r.model, r.model)} | {r.n} | {r.win_rate:.1f} | {r.lc_win_rate_approx:.1f} "
                     f"[{r.lc_low:.1f}, {r.lc_high:.1f}] | {r.longer_wins_agreement:.1%} | {r.near_zero_share:.1%} |")
    lines += ["", "NEFTune minus baseline, paired over the same prompts (bootstrap 95% interval, two-sided p):", ""]
    for r in result.pairs.itertuples():
        lines.append(f"- {NAMES.get(r.baseline, r.baseline)} -> {NAMES.get(r.neftune, r.neftune)}, `{r.measure}` "
                     f"({r.n} prompts): {r.baseline_value:.1f} -> {r.neftune_value:.1f}, difference "
                     f"{r.difference:+.1f} [{r.low:+.1f}, {r.high:+.1f}], p = {r.p_value:.3g}")
    return "\n".join(lines)


# ---------- the committed evidence ----------

def evidence_dir(target: str) -> tuple[Path, bool]:
    """docs/evidence/published-length-<date>/ for a date (YYYY-MM-DD), else the folder named; and whether it is the
    committed evidence (then docs/figures/length_control.png is written too)."""
    try:
        datetime.date.fromisoformat(target)
    except ValueError:
        return Path(target), False
    if len(target) != 10:
        return Path(target), False
    return EVIDENCE / f"published-length-{target}", True


def _rounded(frame: pd.DataFrame) -> list[dict]:
    """Rows for a committed CSV: floats to 4 decimals (p-values and fractions keep what they need)."""
    return frame.apply(lambda c: c.round(4) if c.dtype.kind == "f" else c).to_dict("records")


def readme_text(result: LengthControl, command: str) -> str:
    """The evidence folder's README: what each file is, how it was made, the numbers and what they cannot show."""
    files = [
        ("length_control.csv", "one row per published model: `model, n` (judged pairs), `win_rate` (leaderboard "
         "counting), `lc_win_rate_approx` with its bootstrap 95% interval `lc_low, lc_high`, "
         "`longer_wins_agreement` (fraction 0-1 of GPT-4's decided, unequal-length pairs where it preferred the "
         "longer answer); then the raw win rate's interval, the counts, lengths, the fit's slope (on tanh of the "
         "standardised model-minus-reference difference; > 0 favours longer), the win rate a length-only judge "
         "would give, the share and win rate of pairs within 50 characters of the reference's length "
         "(`near_zero_*`), and alpaca_eval's own LC win rate or why it is not available"),
        ("paired_differences.csv", "per published pair and measure (`win_rate`, `lc_win_rate_approx`, "
         "`win_rate_where_neftune_not_longer`): baseline and NEFTune values, `difference` (NEFTune minus "
         "baseline), paired bootstrap 95% interval `low, high` and two-sided bootstrap `p_value`"),
        ("length_bins.csv", "per model and bin of the length difference to the reference (characters): judged "
         "pairs, their mean difference and GPT-4's win rate with a bootstrap 95% interval (none below "
         f"{MIN_BIN_N} pairs)"),
        ("length_control.png", "the figure (also docs/figures/length_control.png)"),
    ]
    lines = [
        "# How much of the published NEFTune gain is answer length?", "",
        "GPT-4's published AlpacaEval 1 annotations (`alpaca_eval_gpt4`) of the paper's four released models, each "
        "against Text-Davinci-003's answers to the same 805 prompts, set beside a length-controlled win rate. Made "
        f"by `{command}` with `NEFTLIB_DATA_DIR` naming the real-data folder ({result.n_boot} bootstrap resamples "
        f"of prompts, seed {result.seed}; the same resamples for every model, so the differences are paired).", "",
        "| file | what |", "|---|---|", *[f"| `{name}` | {what} |" for name, what in files], "",
        "Which number is which: `win_rate` is the leaderboard's; `lc_win_rate_approx` is alpaca_eval's "
        "`length_controlled_minimal` formula (a logistic fit per model of GPT-4's preference on tanh of the "
        "standardised length difference, read at zero difference; fitted without alpaca_eval's cross-validated L1 "
        "penalty, by the same function that scores the project's own arms); `lc_win_rate_alpaca_eval` is "
        "alpaca_eval's own `length_controlled_v1`, only when it could run.", "",
        "## Numbers", "", summary_markdown(result), "",
        f"With {result.n_boot} resamples the smallest p-value the bootstrap can report is "
        f"{2 / (result.n_boot + 1):.2g}. No verdict is written here: the project's verdict rule reads "
        "`difference, low, high, p_value` of `paired_differences.csv`.", "",
        "## Beside the paper's Table 5", "", paper_table5_markdown(), "",
        *_table5_note(result),
        "## What this can and cannot show", "", *WORDING,
        "- **The not-longer check selects prompts by an outcome of training** (where the NEFTune answer came out no "
        "longer than the baseline model's): a model-free view, but not a random sample of the prompts.", "",
    ]
    notes = sorted(set(result.models["lc_alpaca_eval_note"]))
    lines.append("alpaca_eval's own LC win rate here: " + "; ".join(notes) + ".")
    return "\n".join(lines) + "\n"


def _table5_note(result: LengthControl) -> list[str]:
    """Table 5's rows are the paper's own runs: say how the released Alpaca pair scores here, beside them."""
    models = result.models.set_index("model")
    if not {"alpaca-7b", "alpaca-7b-neft"} <= set(models.index):
        return []
    rows = table(TABLE5)["rows"]
    return [f"Table 5's rows are the paper's own runs. The released `alpaca-7b` and `alpaca-7b-neft` score "
            f"{models.at['alpaca-7b', 'win_rate']:.2f} and {models.at['alpaca-7b-neft', 'win_rate']:.2f} here "
            f"(Table 5: {rows['Alpaca-7B'][0]:.2f} and {rows['Alpaca-7B-NEFT'][0]:.2f}), with "
            f"{models.at['alpaca-7b', 'avg_chars']:.0f} and {models.at['alpaca-7b-neft', 'avg_chars']:.0f} "
            "characters on average.", ""]


def write_evidence(result: LengthControl, out: Path, command: str,
                   docs_figure: Path | None = None) -> list[Path]:
    """The three tables, the figure and the README into `out` (and the figure to `docs_figure`); the paths."""
    out = Path(out)
    written = []
    models = result.models[[*COLUMNS, *[c for c in result.models if c not in COLUMNS]]]
    for name, frame in (("length_control.csv", models), ("paired_differences.csv", result.pairs),
                        ("length_bins.csv", result.bins)):
        write_csv(out / name, _rounded(frame))
        written.append(out / name)
    fig = draw_length_control(result)
    written.append(save(fig, out / "length_control.png"))
    if docs_figure is not None:
        written.append(save(fig, docs_figure))
    write_text(out / "README.md", readme_text(result, command))
    written.append(out / "README.md")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neftlib.analysis.length_control",
        description="Length-controlled win rates of the paper's published answers (GPT-4 annotations in "
                    "NEFTLIB_DATA_DIR), with paired bootstrap intervals, a figure and a README")
    parser.add_argument("target", help="a date YYYY-MM-DD: writes docs/evidence/published-length-<date>/ and "
                                       "docs/figures/length_control.png; anything else: the output folder")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of prompts (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    parser.add_argument("--df-gamed", type=Path, default=None,
                        help="a local copy of alpaca_eval's df_gamed.csv: then alpaca_eval's own LC win rate is "
                             "computed too (needs alpaca_eval installed)")
    args = parser.parse_args(argv)
    out, committed = evidence_dir(args.target)
    command = f"python -m neftlib.analysis.length_control {args.target}" + (
        f" --n-boot {args.n_boot}" if args.n_boot != 2000 else "") + (f" --seed {args.seed}" if args.seed else "") + (
        " --df-gamed df_gamed.csv" if args.df_gamed else "")
    try:
        result = analyze_published(n_boot=args.n_boot, seed=args.seed, df_gamed=args.df_gamed)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    for path in write_evidence(result, out, command, DOCS_FIGURE if committed else None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
