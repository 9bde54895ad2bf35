"""Paired win rates: two arms answer the same prompts, so the prompts are resampled together (the paired
bootstrap of neftlib.analysis.verdict); the same for the paper's published GPT-4 annotations."""
from __future__ import annotations

import math
import numpy as np

from neftlib.analysis.verdict import decided_share, paired_interval
from neftlib.base.io import read_json
from neftlib.base.paths import data_dir
from neftlib.evaluation.winrate import prompt_win_values


def paired_win_rates(base: np.ndarray, treat: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Two arms' per-prompt win values (0, 0.5, 1; NaN: no judgment) on the same prompts, in the same order: both
    win rates (percent) on the prompts judged for both, the difference and its paired bootstrap 95% interval, and
    the share of each arm's pairs the judge decided (draws aside)."""
    base, treat = np.asarray(base, dtype=float), np.asarray(treat, dtype=float)
    if base.shape != treat.shape:
        raise ValueError(f"paired win rates need the same prompts: {base.size} and {treat.size} judgments")
    both = np.isfinite(base) & np.isfinite(treat)
    b, t = 100 * base[both], 100 * treat[both]
    point, low, high = paired_interval(lambda i: t[i].mean() - b[i].mean(), len(b), n_boot, seed)
    return {"baseline": float(b.mean()) if len(b) else math.nan, "treatment": float(t.mean()) if len(t) else math.nan,
            "difference": point, "low": low, "high": high, "n": int(len(b)),
            "decided_baseline": decided_share(base[both]), "decided_treatment": decided_share(treat[both])}


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
