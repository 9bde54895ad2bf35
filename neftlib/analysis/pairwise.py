"""Paired comparisons: two arms answer the same prompts, so the prompts are resampled together (a paired bootstrap
of the difference); here for win rates, in neftlib.analysis.claims for every other metric of the report."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from neftlib.base.io import read_json
from neftlib.base.paths import data_dir
from neftlib.evaluation.winrate import prompt_win_values


def paired_bootstrap(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """stat(indices) on all n items, and its percentile interval over n_boot resamples of the items."""
    if n < 1:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float(stat(np.arange(n))), math.nan, math.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(stat(np.arange(n))), float(low), float(high)


def paired_win_rates(base: np.ndarray, treat: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Two arms' per-prompt win values (0, 0.5, 1; NaN: no judgment) on the same prompts, in the same order: both
    win rates (percent) on the prompts judged for both, the difference and its paired bootstrap 95% interval."""
    base, treat = np.asarray(base, dtype=float), np.asarray(treat, dtype=float)
    if base.shape != treat.shape:
        raise ValueError(f"paired win rates need the same prompts: {base.size} and {treat.size} judgments")
    both = np.isfinite(base) & np.isfinite(treat)
    b, t = 100 * base[both], 100 * treat[both]
    point, low, high = paired_bootstrap(lambda i: t[i].mean() - b[i].mean(), len(b), n_boot, seed)
    return {"baseline": float(b.mean()) if len(b) else math.nan, "treatment": float(t.mean()) if len(t) else math.nan,
            "difference": point, "low": low, "high": high, "n": int(len(b))}


def published_win_rates(models: tuple[str, str], n_boot: int = 2000, seed: int = 0) -> dict | None:
    """`paired_win_rates` of two published models' GPT-4 annotations (the same 805 prompts), None without them."""
    try:
        root = data_dir()
    except FileNotFoundError:  # NEFTLIB_DATA_DIR names no folder: the published files are not there
        return None
    paths = [root / "alpaca_eval" / m / "annotations_alpaca_eval_gpt4.json" for m in models] if root else []
    if not paths or not all(p.exists() for p in paths):
        return None
    rows = [read_json(p) for p in paths]
    if [r["instruction"] for r in rows[0]] != [r["instruction"] for r in rows[1]]:
        raise ValueError(f"{paths[0]} and {paths[1]} do not judge the same prompts in the same order")
    return paired_win_rates(prompt_win_values(paths[0]), prompt_win_values(paths[1]), n_boot, seed)
