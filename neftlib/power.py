"""Statistical power: the smallest effect a design detects, and the variance components it is computed from.

The model, for one metric and one treatment arm against the baseline arm of the same training seed, when
every seed answers the same n prompts (as every run here does):

    d[s, p] = y_treatment[s, p] - y_baseline[s, p] = delta + iota[p] + eta[s] + eps[s, p]

    iota[p]   between prompts: how the change differs from prompt to prompt, the same for every seed;
              variance sd_prompt^2
    eta[s]    between training seeds: each arm's mean moves by sd_seed from seed to seed, independently
              of the other arm; variance 2 sd_seed^2
    eps[s, p] per-prompt noise that changes with the seed; variance sd_residual^2

The estimate of delta is the mean of d over k seeds and n prompts:

    Var(estimate) = sd_prompt^2 / n + 2 sd_seed^2 / k + sd_residual^2 / (n k).

(With fresh prompts for every seed, sd_prompt = 0 and this is 2 (sd_seed^2 + sd_arm^2 / n) / k for
independent per-arm noise sd_arm^2 = sd_residual^2 / 2.) A run of one seed sees only sd_prompt^2 +
sd_residual^2, the variance of the per-prompt paired difference; putting all of it in sd_prompt is the
cautious choice (more seeds then do not average it away).

The test, two-sided at 95% confidence, divides the estimate by a standard error that holds every component,
estimated from the two-way (seeds x prompts) mean squares: with k >= 2 seeds its degrees of freedom are
Satterthwaite's (k - 1 when the seed dominates, n - 1 when the prompts do); with one seed the seed's share
cannot be estimated and is taken as known (n - 1 degrees of freedom). The power at a change delta is then the
noncentral t's (scipy.stats.nct; exact when one component dominates), and the minimum detectable effect
(MDE) is the smallest delta detected with 80% power.
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


def mean_squares(n: int, k: int, sd_prompt: float, sd_seed: float, sd_residual: float) -> dict[str, float]:
    """Expected two-way mean squares of d (seeds x prompts), divided by n k: what the estimate's variance is
    built from, Var = items + seeds - residual."""
    return {"items": (k * sd_prompt**2 + sd_residual**2) / (n * k),
            "seeds": (2 * n * sd_seed**2 + sd_residual**2) / (n * k), "residual": sd_residual**2 / (n * k)}


def design(n_prompts: int, n_seeds: int, sd_prompt: float, sd_seed: float, sd_residual: float = 0.0) -> Design:
    """The estimate's variance (module docstring) for n prompts and k seeds per arm, and its degrees of freedom."""
    if n_prompts < 2 or n_seeds < 1:
        raise ValueError(f"a design needs at least 2 prompts and 1 seed, got {n_prompts} prompts, {n_seeds} seeds")
    if min(sd_prompt, sd_seed, sd_residual) < 0 or not all(map(math.isfinite, (sd_prompt, sd_seed, sd_residual))):
        raise ValueError(f"standard deviations must be finite and >= 0, got {sd_prompt}, {sd_seed}, {sd_residual}")
    n, k = n_prompts, n_seeds
    variance = sd_prompt**2 / n + 2 * sd_seed**2 / k + sd_residual**2 / (n * k)
    if k == 1:
        return Design(variance, n - 1)
    ms = mean_squares(n, k, sd_prompt, sd_seed, sd_residual)
    spread = ms["items"] ** 2 / (n - 1) + ms["seeds"] ** 2 / (k - 1) + ms["residual"] ** 2 / ((n - 1) * (k - 1))
    return Design(variance, variance**2 / spread if spread > 0 else n - 1)


def power_of(effect: float, d: Design, alpha: float = ALPHA) -> float:
    """Probability that the two-sided t test at level alpha rejects 'no change' when the change is `effect`."""
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
    """The smallest change the design's test detects with `power` at level `alpha`, in the metric's units."""
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


def interval_detectable_effect(low: float, high: float, n_items: int, seed_variance: float = 0.0,
                               level: float = 0.95, power: float = POWER) -> float:
    """The MDE of a one-seed comparison read from its paired 95% interval over n items: the interval's width
    gives the prompts' share of the variance; `seed_variance` (2 sd_seed^2, what the training seed alone adds
    to a difference between two arms) is added as known. NaN without an interval."""
    if not (math.isfinite(low) and math.isfinite(high)) or n_items < 2:
        return math.nan
    se = (high - low) / (2 * stats.norm.ppf(0.5 + level / 2))
    return detectable_effect(Design(se**2 + seed_variance, n_items - 1), 1 - level, power)


def overlap_detectable_effect(base: tuple[float, float], treat: tuple[float, float], seed_variance: float = 0.0,
                              level: float = 0.95, power: float = POWER) -> float:
    """The MDE of the 'two independent intervals do not overlap' rule: the change must exceed
    z * (se_base + se_treat), and the estimate spreads by sqrt(se_base^2 + se_treat^2 + seed_variance)
    (normal theory; the far tail, a change the wrong way past the threshold, is left out)."""
    if not all(math.isfinite(v) for v in (*base, *treat)):
        return math.nan
    z = stats.norm.ppf(0.5 + level / 2)
    se_b, se_t = (base[1] - base[0]) / (2 * z), (treat[1] - treat[0]) / (2 * z)
    return float(z * (se_b + se_t) + stats.norm.ppf(power) * math.sqrt(se_b**2 + se_t**2 + seed_variance))


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


def seed_change_variance(per_seed: pd.DataFrame) -> tuple[float, int]:
    """Pooled variance, over training seeds, of each comparison's per-seed change, and its degrees of freedom.

    `per_seed`: columns `comparison`, `seed`, `change` (one arm's metric minus the same seed's baseline, on the
    same prompts). Its expectation is 2 sd_seed^2 + sd_residual^2 / n: what a seed adds to a change measured on
    fixed prompts. Comparisons sharing a baseline are not independent, so the degrees of freedom are an upper
    bound."""
    total, df = 0.0, 0
    for _, frame in per_seed.dropna(subset=["change"]).groupby("comparison"):
        if len(frame) > 1:
            total += float(((frame["change"] - frame["change"].mean()) ** 2).sum())
            df += len(frame) - 1
    return (total / df if df else math.nan), df


def design_table(components: pd.DataFrame, prompts=(24, 50, 100, 200, 400), seeds=(1, 2, 3, 4, 6),
                 alpha: float = ALPHA, power: float = POWER) -> pd.DataFrame:
    """The MDE of every design (prompts x seeds) for each row of `components` (columns metric, sd_prompt,
    sd_seed, sd_residual; any others, e.g. `baseline` or `assumption`, are carried along). `mde_percent` is
    the MDE as a share of `baseline` when a row has one."""
    rows = []
    for _, comp in components.iterrows():
        for n in prompts:
            for k in seeds:
                d = design(n, k, comp["sd_prompt"], comp["sd_seed"], comp.get("sd_residual", 0.0))
                mde = detectable_effect(d, alpha, power)
                row = {**comp.to_dict(), "n_prompts": n, "n_seeds": k, "df": d.df, "se": math.sqrt(d.variance),
                       "mde": mde}
                if pd.notna(comp.get("baseline", math.nan)) and comp.get("baseline"):
                    row["mde_percent"] = 100 * mde / abs(comp["baseline"])
                rows.append(row)
    return pd.DataFrame(rows)


def components_from_summaries(sd_diff: float, change_var: float, n_items: int) -> dict[str, dict]:
    """The two ends of what a run's summaries allow, when its per-prompt answers are gone: `sd_diff`, the SD of
    the per-prompt paired difference at one seed (from a paired interval: half-width / 1.96 * sqrt(n)), and
    `change_var`, the variance of per-seed changes measured on the same `n_items` prompts (seed_change_variance).

    'prompts_shared': the per-prompt variation is the same for every seed (sd_residual 0), so all per-seed
    variation is the seed's; 'prompts_vary': as much of it as `change_var` allows changes with the seed.
    The truth lies between; neither end gives the larger MDE for every design."""
    residual_var = min(sd_diff**2, n_items * change_var)
    return {"prompts_shared": {"sd_prompt": sd_diff, "sd_seed": math.sqrt(change_var / 2), "sd_residual": 0.0},
            "prompts_vary": {"sd_prompt": math.sqrt(sd_diff**2 - residual_var),
                             "sd_seed": math.sqrt(max(0.0, change_var - residual_var / n_items) / 2),
                             "sd_residual": math.sqrt(residual_var)}}
