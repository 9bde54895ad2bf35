"""AlpacaEval-style win rates from pairwise preferences.

Two win rates, both as alpaca_eval defines them (tatsu-lab/alpaca_eval, src/alpaca_eval/metrics/helpers.py):
  * `win_rate`, discrete: alpaca_eval's ZeroOneScoringRule (its `discrete_win_rate`). Each preference is a
    vote: 1.5 or 0 is a draw, anything else is rounded to 1 (the baseline wins) or 2 (the model wins); votes
    outside [1, 2] after rounding and null/NaN are dropped. win_rate = 100 * (n_wins + n_draws / 2) / n_total,
    so the three counts add up to it. This is how AlpacaEval 1's GPT-4 votes are counted.
  * `win_rate_soft`: alpaca_eval's AbsoluteScoringRule (its `win_rate` for weighted annotators): the mean of
    p - 1 over preferences p in [1, 2] (0 is the legacy draw code, 1.5), e.g. a judge's probabilities.
On discrete preferences (1, 1.5, 2) the two agree. standard_error is 100 * the sample SEM (ddof=1) of the
discrete values. `avg_length` is the leaderboard's `int(model_outputs["output"].str.len().mean())`, i.e. the
mean character length of the model's answers over all rows, truncated to an integer.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from neftlib.evaluation.textstats import read_json_rows


def win_values(preferences: Sequence[Optional[float]]) -> np.ndarray:
    """Map alpaca_eval preferences to win values in [0, 1], dropping non-judgments."""
    out = []
    for p in preferences:
        if p is None or isinstance(p, bool):
            continue
        p = float(p)
        if math.isnan(p):
            continue
        if p == 0.0:  # legacy draw code
            p = 1.5
        if 1.0 <= p <= 2.0:
            out.append(p - 1.0)
    return np.asarray(out, dtype=float)


def discrete_preference(p: Optional[float]) -> Optional[float]:
    """One preference as alpaca_eval's zero-one rule counts it: 1.5 (a draw; 0 is the legacy code), 1 or 2 (the
    value rounded, half to even as pandas does), None when it is no judgment (null, NaN, outside [1, 2])."""
    if p is None or isinstance(p, bool):
        return None
    p = float(p)
    if math.isnan(p):
        return None
    rounded = 0.0 if p == 1.5 else float(round(p))
    if rounded == 0.0:
        return 1.5
    return rounded if 1.0 <= rounded <= 2.0 else None


def discrete_win_values(preferences: Sequence[Optional[float]]) -> np.ndarray:
    """Win values 0, 0.5 or 1 of the judgments among `preferences`, counted by alpaca_eval's zero-one rule."""
    return np.asarray([d - 1.0 for d in map(discrete_preference, preferences) if d is not None], dtype=float)


def summarize_preferences(
    preferences: Sequence[Optional[float]], lengths: Optional[Sequence[int]] = None,
    soft: Optional[Sequence[Optional[float]]] = None,
) -> dict[str, Any]:
    """Leaderboard metrics for one model; `lengths` are character lengths of its answers. `win_rate` and the counts
    come from `preferences` counted as discrete votes; `win_rate_soft` from `soft` (default: `preferences`)."""
    v = discrete_win_values(preferences)
    n = len(v)
    s = win_values(preferences if soft is None else soft)
    avg_length = None
    if lengths is not None and len(lengths) > 0:
        avg_length = int(np.mean(np.asarray(lengths, dtype=float)))
    return {
        "win_rate": float(v.mean() * 100) if n else math.nan,
        # pandas' Series.sem (ddof=1) is what alpaca_eval calls; undefined below two values.
        "standard_error": float(v.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else math.nan,
        "n_wins": int((v == 1.0).sum()),
        "n_wins_base": int((v == 0.0).sum()),
        "n_draws": int((v == 0.5).sum()),
        "n_total": n,
        "avg_length": avg_length,
        "win_rate_soft": float(s.mean() * 100) if s.size else math.nan,
    }


def load_annotations(path: Path) -> list[dict[str, Any]]:
    """Read an alpaca_eval annotations file, checking the fields the metrics need."""
    path = Path(path)
    rows = read_json_rows(path)
    for i, row in enumerate(rows):
        for key in ("preference", "output_1", "output_2"):
            if key not in row:
                raise ValueError(f"{path}: row {i} has no {key!r} field")
        for key in ("output_1", "output_2"):
            if not isinstance(row[key], str):
                raise ValueError(f"{path}: row {i} {key!r} is not a string")
        p = row["preference"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))):
            raise ValueError(f"{path}: row {i} preference {p!r} is not a number or null")
    return rows


def summarize_annotations(path: Path) -> dict[str, Any]:
    """Leaderboard metrics of an annotations file (output_1 = baseline, output_2 = model); `win_rate_soft` from
    the rows' `preference_soft` where neftlib wrote one, else from `preference`."""
    rows = load_annotations(path)
    soft = [r.get("preference_soft", r["preference"]) for r in rows]
    return summarize_preferences([r["preference"] for r in rows], lengths=[len(r["output_2"]) for r in rows],
                                 soft=soft)


def prompt_win_values(path: Path) -> np.ndarray:
    """Per row of an annotations file, in file order: its discrete win value (0, 0.5, 1), NaN where no judgment;
    what a paired comparison of two arms judged on the same prompts resamples."""
    values = [discrete_preference(r["preference"]) for r in load_annotations(path)]
    return np.array([math.nan if v is None else v - 1.0 for v in values], dtype=float)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the win rate (in percent) from win values in [0, 1]
    (see `win_values`). Same seed, same interval."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1) * 100
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def length_controlled_win_rate(
    preferences: Sequence[Optional[float]],
    model_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
    l2: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> float:
    """Length-controlled win rate (percent) from a two-parameter logistic model.

    Fits  P(model wins_i) = sigmoid(b0 + b1 * tanh(d_i / sd(d)))  with
    d_i = baseline_len_i - model_len_i (alpaca_eval's `std_delta_len`, sd over all rows)
    by Newton/IRLS on the soft labels p - 1 in [0, 1] (the cross-entropy alpaca_eval also
    minimises), rows without a judgment dropped. The LC win rate is the predicted win
    probability at zero length difference, 100 * sigmoid(b0). `l2` penalises b1 only.

    Differs from alpaca_eval's `length_controlled_v1` GLM, which also has a per-instruction
    difficulty term (precomputed weights downloaded from the hub), is fitted jointly with
    two "gamed" length-exploiting baselines as a regulariser (weight 0.2), uses L1 with
    5-fold cross-validated strength, and averages predictions over instructions. So the
    numbers here approximate, and will not equal, the official LC column.
    """
    n = len(preferences)
    if not (len(model_lengths) == len(baseline_lengths) == n):
        raise ValueError("preferences, model_lengths and baseline_lengths must have equal length")
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    sd = delta.std(ddof=1) if n > 1 else 0.0
    x_all = np.tanh(delta / sd) if sd > 0 else np.zeros(n)
    keep, y = [], []
    for i, p in enumerate(preferences):
        v = win_values([p])
        if v.size:
            keep.append(i)
            y.append(v[0])
    if not keep:
        return math.nan
    y_arr = np.asarray(y)
    x = x_all[keep]
    ybar = y_arr.mean()
    if ybar in (0.0, 1.0):
        return 100.0 * ybar  # every judgment the same: the intercept is at infinity
    X = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([0.0, l2])
    # Without length variation the slope is unidentified: fit the intercept alone.
    if np.ptp(x) == 0.0 and l2 == 0.0:
        return 100.0 * ybar
    beta = np.array([math.log(ybar / (1 - ybar)), 0.0])

    def objective(b: np.ndarray) -> float:
        z = X @ b
        # negative soft-label log-likelihood, written with logaddexp for stability
        nll = np.sum(y_arr * np.logaddexp(0.0, -z) + (1 - y_arr) * np.logaddexp(0.0, z))
        return float(nll + 0.5 * b @ penalty @ b)

    for _ in range(max_iter):
        mu = _sigmoid(X @ beta)
        grad = X.T @ (mu - y_arr) + penalty @ beta
        hess = X.T @ (X * (mu * (1 - mu))[:, None]) + penalty
        step = np.linalg.solve(hess, grad)
        # Halve the Newton step until the objective does not increase (keeps IRLS stable).
        f0, t = objective(beta), 1.0
        while objective(beta - t * step) > f0 + 1e-12 and t > 1e-8:
            t /= 2.0
        beta = beta - t * step
        if np.max(np.abs(t * step)) < tol:
            break
    return float(100.0 * _sigmoid(np.array(beta[0])))


def length_controlled_from_annotations(path: Path, **kwargs: Any) -> float:
    """`length_controlled_win_rate` on an annotations file (output_1 baseline, output_2 model)."""
    rows = load_annotations(path)
    return length_controlled_win_rate(
        [r["preference"] for r in rows],
        model_lengths=[len(r["output_2"]) for r in rows],
        baseline_lengths=[len(r["output_1"]) for r in rows],
        **kwargs,
    )
