"""Statistical power: the smallest effect a design detects, under the project's one verdict rule
(docs/methodology.md, neftlib.analysis.verdict), and the variance components it is computed from.

The model, for one metric and one treatment arm against the baseline arm of the same training seed, when
every seed answers the same n prompts (as every run here does):

    d[s, p] = y_treatment[s, p] - y_baseline[s, p] = delta + iota[p] + eta[s] + eps[s, p]

    iota[p]   between prompts: how the change differs from prompt to prompt, the same for every seed;
              variance sd_prompt^2
    eta[s]    between training seeds: each arm's mean moves by sd_seed from seed to seed, independently
              of the other arm; variance 2 sd_seed^2
    eps[s, p] per-prompt noise that changes with the seed; variance sd_residual^2

The rule's tests, and so their detectable effects (`design`):

- k >= 2 seeds: the t test of the k per-seed changes, each the mean of d[s, .] over the same n prompts. Their
  variance is 2 sd_seed^2 + sd_residual^2 / n (the prompts' own share, iota, is the same for every seed: the
  test speaks for these prompts), the estimate's is that over k, with k - 1 degrees of freedom.
- one seed: the paired change over n prompts, variance (sd_prompt^2 + sd_residual^2) / n, plus 2 sd_seed^2 that
  a single seed cannot estimate. With sd_seed > 0 the design cannot tell the noise's effect from the seed's:
  its detectable effect is infinite, and what a one-seed run reports is `one_seed_lower_bound`, the seed's
  share left out.

So more seeds never detect less. The power at a change delta is the noncentral t's (scipy.stats.nct), and
the minimum detectable effect (MDE) is the smallest delta detected with 80% power, two-sided at 95%.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import integrate, optimize, stats

ALPHA, POWER = 0.05, 0.80


@dataclass(frozen=True)
class Design:
    """What the test of one design works with: the variance of its estimate and the degrees of freedom of
    that variance's estimate."""
    variance: float
    df: float


def design(n_prompts: int, n_seeds: int, sd_prompt: float, sd_seed: float, sd_residual: float = 0.0) -> Design:
    """The tested change's variance and degrees of freedom for n prompts and k seeds per arm (module docstring);
    one seed with a seed share gets 0 degrees of freedom (nothing detectable)."""
    if n_prompts < 2 or n_seeds < 1:
        raise ValueError(f"a design needs at least 2 prompts and 1 seed, got {n_prompts} prompts, {n_seeds} seeds")
    if min(sd_prompt, sd_seed, sd_residual) < 0 or not all(map(math.isfinite, (sd_prompt, sd_seed, sd_residual))):
        raise ValueError(f"standard deviations must be finite and >= 0, got {sd_prompt}, {sd_seed}, {sd_residual}")
    n, k = n_prompts, n_seeds
    if k == 1:
        bound = one_seed_lower_bound(n, sd_prompt, sd_residual)
        return Design(bound.variance + 2 * sd_seed**2, bound.df if sd_seed == 0 else 0.0)
    return Design((2 * sd_seed**2 + sd_residual**2 / n) / k, k - 1)


def one_seed_lower_bound(n_prompts: int, sd_prompt: float, sd_residual: float = 0.0) -> Design:
    """What a one-seed run's paired test over n prompts sees, the seed's share left out: a lower bound."""
    return Design((sd_prompt**2 + sd_residual**2) / n_prompts, n_prompts - 1)


def power_of(effect: float, d: Design, alpha: float = ALPHA) -> float:
    """Probability that the two-sided t test at level alpha rejects 'no change' when the change is `effect`."""
    if d.df <= 0:
        return alpha  # no degrees of freedom: the test cannot reject more often than by chance
    if d.variance <= 0:
        return 1.0 if effect != 0 else alpha
    crit, shift = stats.t.ppf(1 - alpha / 2, d.df), effect / math.sqrt(d.variance)
    power = stats.nct.sf(crit, d.df, shift) + stats.nct.cdf(-crit, d.df, shift)
    if math.isfinite(power):
        return float(power)
    # scipy's noncentral t fails far in the tail at few degrees of freedom: average the normal power
    # over the chi-square spread of the estimated standard error instead (the same quantity).
    def given(u: float) -> float:
        scale = crit * math.sqrt(stats.chi2.ppf(u, d.df) / d.df)
        return stats.norm.sf(scale - shift) + stats.norm.cdf(-scale - shift)
    return float(integrate.quad(given, 0.0, 1.0, limit=200)[0])


def detectable_effect(d: Design, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest change the design's test detects with `power` at level `alpha`, in the metric's units
    (infinite with no degrees of freedom)."""
    if d.df <= 0:
        return math.inf
    if d.variance <= 0:
        return 0.0
    high = math.sqrt(d.variance)
    while power_of(high, d, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda e: power_of(e, d, alpha) - power, 0.0, high, xtol=1e-10 * high))


def minimum_detectable_effect(n_prompts: int, n_seeds: int, sd_prompt: float, sd_seed: float,
                              sd_residual: float = 0.0, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest change of a metric that n prompts and k seeds per arm detect at two-sided level alpha
    (95% confidence) with 80% power, from the variance components of the module docstring."""
    return detectable_effect(design(n_prompts, n_seeds, sd_prompt, sd_seed, sd_residual), alpha, power)


# ---------- variance components from per-prompt differences ----------

def variance_components(diffs: pd.DataFrame) -> dict:
    """sd_prompt, sd_seed and sd_residual from per-prompt paired differences.

    `diffs`: columns `comparison` (e.g. 'alpha5'), `seed`, `item`, `difference` (treatment minus the same seed's
    baseline on that item). Each comparison is a seeds x items table (items missing for a seed are dropped);
    its two-way mean squares, pooled over comparisons by their degrees of freedom, give
        sd_residual^2 = MS_res,  sd_prompt^2 = (MS_items - MS_res) / k,  sd_seed^2 = (MS_seeds - MS_res) / (2 n)
    (each floored at 0). With one seed only sd_prompt^2 + sd_residual^2 is identified: it is returned as
    sd_prompt (the cautious split) and sd_seed is NaN.
    """
    missing = {"comparison", "seed", "item", "difference"} - set(diffs.columns)
    if missing:
        raise ValueError(f"per-prompt differences need columns {sorted(missing)}")
    sums = {"items": [0.0, 0], "seeds": [0.0, 0], "res": [0.0, 0]}
    shapes = []
    for _, frame in diffs.dropna(subset=["difference"]).groupby("comparison"):
        table = frame.pivot_table(index="seed", columns="item", values="difference", aggfunc="mean").dropna(axis=1)
        k, n = table.shape
        if n < 2:
            continue
        y = table.to_numpy(float)
        grand, by_seed, by_item = y.mean(), y.mean(axis=1, keepdims=True), y.mean(axis=0, keepdims=True)
        shapes.append((k, n))
        sums["items"][0] += k * ((by_item - grand) ** 2).sum()
        sums["items"][1] += n - 1
        if k > 1:
            sums["seeds"][0] += n * ((by_seed - grand) ** 2).sum()
            sums["seeds"][1] += k - 1
            sums["res"][0] += ((y - by_seed - by_item + grand) ** 2).sum()
            sums["res"][1] += (k - 1) * (n - 1)
    if not shapes:
        raise ValueError("no comparison has at least 2 items answered by every seed")
    k, n = (float(np.mean([s[i] for s in shapes])) for i in (0, 1))
    ms = {key: (total / df if df else math.nan) for key, (total, df) in sums.items()}
    if k < 2 or math.isnan(ms["res"]):
        return {"sd_prompt": math.sqrt(ms["items"]), "sd_seed": math.nan, "sd_residual": 0.0,
                "n_prompts": n, "n_seeds": k, "n_comparisons": len(shapes)}
    return {"sd_prompt": math.sqrt(max(0.0, (ms["items"] - ms["res"]) / k)),
            "sd_seed": math.sqrt(max(0.0, (ms["seeds"] - ms["res"]) / (2 * n))),
            "sd_residual": math.sqrt(ms["res"]), "n_prompts": n, "n_seeds": k, "n_comparisons": len(shapes)}
