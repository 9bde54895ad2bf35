"""Beside every verdict, the smallest effect the run could have detected (80% power, 95% confidence), computed
with neftlib.analysis.power from the run's own variances: the width of the verdict's interval (between prompts or
examples) and, when the run trained several seeds per alpha, the spread of the per-seed changes.

With one training seed per arm the seed's share cannot be measured; it is then taken as 0, which makes the
number the smallest difference between the two trained models that the run could see, a lower bound for
an effect of the noise itself.
"""
from __future__ import annotations

import math

import pandas as pd

from neftlib.analysis.claims import NOT_MEASURED, WIN_BASIS
from neftlib.analysis.power import POWER, interval_detectable_effect, overlap_detectable_effect, seed_change_variance

# the start of an evidence part -> the arm-table column holding the same metric per arm
PART_METRICS = (("answer length", "avg_chars"), ("log-diversity (release", "log_diversity_release"),
                ("ROUGE-L", "rouge_l"), ("BLEU", "bleu"), ("loss without noise", "train_loss_nonoise"),
                ("loss on another set", "other_loss"), ("loss on held-out", "heldout_loss"), ("win rate", "win_rate"))
UNKNOWN_ITEMS = 1000  # an interval with no item count (OpenLLM's normal interval): normal theory
Z95 = 1.959963984540054  # a 95% interval's half-width in standard errors


def part_metric(part: str) -> str | None:
    """The arm-table column of an evidence part, e.g. 'answer length (characters)' -> 'avg_chars'."""
    return next((column for start, column in PART_METRICS if str(part).startswith(start)), None)


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


def _seed_share(arms: pd.DataFrame, stage: str, metric: str | None, test_var: float) -> tuple[float, str]:
    """2 sd_seed^2 (what the seed adds to a difference between two arms) and how it was found."""
    if metric is None or arms is None or stage not in set(arms.get("stage", [])):
        return 0.0, "no training seed to compare with"
    changes = seed_changes(arms, stage, metric)
    var, df = seed_change_variance(changes)
    if not df or math.isnan(var):
        return 0.0, ("one training seed per arm: the seed's share is not measured and taken as 0 (the smallest "
                     "difference between these two trained models)")
    # The per-seed changes also carry the prompts' noise, which the interval already holds: what is left over
    # is the seed's share at least (all of the prompts' noise counted as changing with the seed).
    return max(0.0, var - test_var), (f"the seed's share from the spread of {len(changes)} per-seed changes "
                                      f"({df} degree(s) of freedom)")


def detectable(row: pd.Series, arms: pd.DataFrame | None) -> tuple[float, str]:
    """(MDE, basis) of one evidence row, for the rule that gave its verdict."""
    if row["verdict"] == NOT_MEASURED:
        return math.nan, ""
    metric = part_metric(row["part"])
    scope = row.get("scope", "ours")
    own_arms = arms if scope == "ours" else None
    if pd.notna(row.get("low")) and pd.notna(row.get("high")):
        n = int(row["n_items"]) if pd.notna(row.get("n_items")) else UNKNOWN_ITEMS
        seed_var, how = _seed_share(own_arms, row["stage"], metric, ((row["high"] - row["low"]) / (2 * Z95)) ** 2)
        items = f"{n} items" if pd.notna(row.get("n_items")) else "normal theory"
        return interval_detectable_effect(row["low"], row["high"], n, seed_var), f"95% interval ({items}); {how}"
    bounds = [row.get(k) for k in ("baseline_low", "baseline_high", "treatment_low", "treatment_high")]
    if all(pd.notna(b) for b in bounds):
        test_var = ((bounds[1] - bounds[0]) / (2 * Z95)) ** 2 + ((bounds[3] - bounds[2]) / (2 * Z95)) ** 2
        seed_var, how = _seed_share(own_arms, row["stage"], metric, test_var)
        rule = "two independent 95% intervals that must not overlap" if row.get("basis") in (WIN_BASIS, "") \
            else str(row.get("basis"))
        return overlap_detectable_effect(tuple(bounds[:2]), tuple(bounds[2:]), seed_variance=seed_var), \
            f"{rule}; {how}"
    return math.nan, "no interval to compute it from"


def add_detectable_effects(evidence: pd.DataFrame, arms: pd.DataFrame | None) -> pd.DataFrame:
    """The evidence table with `detectable_effect` (in the part's units) and `detectable_basis` columns."""
    found = [detectable(r, arms) for _, r in evidence.iterrows()]
    return evidence.assign(detectable_effect=[f[0] for f in found], detectable_basis=[f[1] for f in found])


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
