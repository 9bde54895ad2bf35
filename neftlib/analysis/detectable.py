"""The per-seed changes of a sweep's arms (what the seeds design tests), and the smallest detectable change in
words. The detectable effect itself comes with each test (neftlib.analysis.verdict)."""
from __future__ import annotations

import math

import pandas as pd

from neftlib.analysis.power import POWER


def seed_changes(arms: pd.DataFrame, stage: str, metric: str) -> pd.DataFrame:
    """Rows (comparison, seed, change): each noised arm's metric minus the alpha-0 arm of the same training seed."""
    rows = arms[arms["stage"] == stage] if "stage" in arms else arms
    if metric not in rows or "seed" not in rows:
        return pd.DataFrame(columns=["comparison", "seed", "change"])
    base = rows[rows["alpha"] == 0].drop_duplicates("seed").set_index("seed")[metric]
    noised = rows[(rows["alpha"] > 0) & rows["seed"].isin(base.index)]
    return pd.DataFrame({"comparison": [f"{d}{a:g}" for d, a in zip(noised["distribution"], noised["alpha"])],
                         "seed": noised["seed"].to_numpy(),
                         "change": noised[metric].to_numpy(float) - base.loc[noised["seed"]].to_numpy(float)},
                        columns=["comparison", "seed", "change"])


def detectable_text(value: float) -> str:
    """'could have detected a change of 95.3 or more (80% power, 95% confidence)', or '' when not computed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "no change this run could detect with 80% power"
    if value == 0:
        # Zero spread (e.g. a judge that calls every pair a draw) is no evidence of sensitivity: say so.
        return ("not computable: every item gave the same difference, so the run's spread says nothing about "
                "the change it could detect")
    return f"smallest change this run could detect: {value:.3g} ({POWER:.0%} power, 95% confidence)"
