"""The project's one verdict rule (docs/methodology.md): every verdict word comes from `decide` on a `Test`.

A Test is one change (noised arm minus its baseline) of one metric, in the metric's own units:
- several training seeds per arm: `seeds_test`, the t test of the per-seed paired changes (k - 1 degrees of
  freedom), its detectable effect from the same variance and degrees of freedom;
- one training seed: `bootstrap_test` / `interval_test`, a paired bootstrap over the prompts (or examples),
  its detectable effect a lower bound (the seed's share is not seen).
Holm's correction (`holm`) runs over one run's tests before `decide` reads them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from neftlib.analysis.power import Design, detectable_effect

LEVEL = 0.95
SIGNIFICANCE = 1 - LEVEL
MIN_DECIDED = 0.25  # a judge that decides fewer pairs than this (draws aside) cannot decide
CALIBRATION_SHARE = 0.25  # of GPT-4's jump a local judge must recover, beyond noise, to be trusted

SHOWN, OPPOSITE, EXCLUDED, NOT_SHOWN = "shown", "opposite", "excluded above", "not shown"
NOT_TESTABLE, CANNOT_DECIDE, NOT_MEASURED = "not testable here", "judge cannot decide", "not measured here"
WORDS = (SHOWN, OPPOSITE, EXCLUDED, NOT_SHOWN, NOT_TESTABLE, CANNOT_DECIDE, NOT_MEASURED)


@dataclass(frozen=True)
class Test:
    """One tested change and what its design could detect."""
    estimate: float
    low: float
    high: float
    p_value: float
    df: float
    design: str  # "seeds" or "prompts"
    n: int  # seeds (seeds design) or paired items (prompts design)
    detectable: float
    lower_bound: bool  # the detectable effect leaves the training seed's share out

    def as_row(self) -> dict:
        return asdict(self)


def _nan_test(design: str, n: int, estimate: float = math.nan) -> Test:
    """A change with no interval to test it by (e.g. a per-seed change measured without resampling)."""
    return Test(estimate, math.nan, math.nan, math.nan, math.nan, design, n, math.nan, design == "prompts")


def seeds_test(changes: Sequence[float]) -> Test:
    """The t test of k >= 2 per-seed paired changes: mean, t interval, p value and detectable effect, all with
    k - 1 degrees of freedom."""
    c = np.asarray([x for x in changes if x is not None and math.isfinite(x)], dtype=float)
    k = len(c)
    if k < 2:
        raise ValueError(f"a seeds test needs at least 2 per-seed changes, got {k}: use the prompts design")
    mean, sd = float(c.mean()), float(c.std(ddof=1))
    if sd == 0:  # every seed moved by exactly the same amount (or none moved): no spread to test against
        return Test(mean, mean, mean, 0.0 if mean else 1.0, k - 1, "seeds", k, math.nan, False)
    se = sd / math.sqrt(k)
    crit = stats.t.ppf(1 - SIGNIFICANCE / 2, k - 1)
    p = float(2 * stats.t.sf(abs(mean) / se, k - 1))
    return Test(mean, mean - crit * se, mean + crit * se, p, k - 1, "seeds", k,
                detectable_effect(Design(se**2, k - 1)), False)


def interval_test(estimate: float, low: float, high: float, n_items: int) -> Test:
    """A one-seed change read from its paired 95% interval over n items: the half-width as a t standard error
    with n - 1 degrees of freedom gives the p value and the detectable effect (a lower bound: one seed)."""
    values = (estimate, low, high)
    if n_items < 2 or not all(v is not None and math.isfinite(v) for v in values):
        keep = estimate if estimate is not None and math.isfinite(estimate) else math.nan
        return _nan_test("prompts", int(n_items or 0), keep)
    df = n_items - 1
    se = (high - low) / (2 * stats.t.ppf(1 - SIGNIFICANCE / 2, df))
    if se <= 0:  # every resample gave the same difference: no spread to size a detectable effect by
        return Test(estimate, low, high, 0.0 if estimate else 1.0, df, "prompts", n_items, math.nan, True)
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return Test(estimate, low, high, p, df, "prompts", n_items, detectable_effect(Design(se**2, df)), True)


def paired_interval(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """stat(indices) on all n items and its 95% paired bootstrap interval: the same items are resampled for both
    arms, since `stat` computes the difference from one index array (scipy's BCa; percentile where BCa is
    undefined, e.g. a statistic with no spread)."""
    if n < 1:
        return math.nan, math.nan, math.nan
    point = float(stat(np.arange(n)))
    if n < 2 or n_boot < 1:
        return point, math.nan, math.nan
    data = (np.arange(n),)
    for method in ("BCa", "percentile"):
        try:
            # a degenerate BCa (e.g. every resample equal) comes back as NaN with a warning: the percentile serves
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.DegenerateDataWarning)
                res = stats.bootstrap(data, lambda idx: stat(np.asarray(idx, dtype=int)), vectorized=False,
                                      n_resamples=n_boot, confidence_level=LEVEL, method=method,
                                      random_state=np.random.default_rng(seed))
        except (ValueError, ZeroDivisionError):
            continue
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return point, low, high
    return point, math.nan, math.nan


def bootstrap_test(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 2000, seed: int = 0) -> Test:
    """The prompts design: a paired bootstrap interval of the change over n items, read by `interval_test`."""
    return interval_test(*paired_interval(stat, n, n_boot, seed), n)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p values (NaN stays NaN): the k-th smallest of m is multiplied by m - k + 1, and
    the adjusted values are made non-decreasing. statsmodels' multipletests does the same; it is not a
    dependency for these few lines."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    adjusted = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def decided_share(win_values: Sequence[float]) -> float:
    """Share of judged pairs the judge decided (a win value other than 0.5; NaN means not judged)."""
    v = np.asarray(win_values, dtype=float)
    v = v[np.isfinite(v)]
    return float((v != 0.5).mean()) if v.size else math.nan


def judge_can_decide(shares: Sequence[float], calibrated: bool | None = None) -> tuple[bool, str]:
    """Whether win rates from this judge get a verdict: every arm's decided share reaches MIN_DECIDED, and the
    judge did not fail its calibration (None: not calibrated, e.g. GPT-4 itself)."""
    low = [s for s in shares if not (isinstance(s, float) and math.isnan(s))]
    if calibrated is False:
        return False, "the judge failed its calibration on the paper's own answers"
    if low and min(low) < MIN_DECIDED:
        return False, (f"the judge decided only {min(low):.0%} of the pairs (draws aside), under the "
                       f"{MIN_DECIDED:.0%} a verdict needs")
    return True, ""


def judge_decides(wins, calibrated: bool | None = None) -> tuple[bool, str]:
    """`judge_can_decide` for a win-rate table (winrates.csv: n_draws and n_total per arm); a table without those
    columns (an older run) is read as decided."""
    shares = []
    if "n_draws" in wins and "n_total" in wins:
        shares = [1 - d / t for d, t in zip(wins["n_draws"], wins["n_total"]) if d == d and t]  # d == d: not NaN
    return judge_can_decide(shares, calibrated)


def calibration_passes(local_low: float, local_high: float, local_estimate: float, gpt4_estimate: float) -> bool:
    """The calibration rule: the local judge's paired difference excludes 0 in GPT-4's direction and reaches at
    least CALIBRATION_SHARE of GPT-4's jump."""
    if not all(math.isfinite(v) for v in (local_low, local_high, local_estimate, gpt4_estimate)) or gpt4_estimate == 0:
        return False
    direction = math.copysign(1.0, gpt4_estimate)
    beyond = (local_low > 0) if direction > 0 else (local_high < 0)
    return bool(beyond and direction * local_estimate >= CALIBRATION_SHARE * abs(gpt4_estimate))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def decide(test: Test | None, expect: str, p_holm: float | None = None, margin: float | None = None) -> str:
    """The verdict words of one test (methodology.md): `expect` is the paper's direction ("higher", "lower") or
    "unchanged" (then `margin`, in the metric's units, says what counts as unchanged). `p_holm`: the test's
    p value after Holm's correction over the run (default: its own p value)."""
    if expect not in ("higher", "lower", "unchanged"):
        raise ValueError(f"expect={expect!r}: use 'higher', 'lower' or 'unchanged'")
    if test is None or not all(math.isfinite(v) for v in (test.estimate, test.low, test.high)):
        return NOT_MEASURED
    p = test.p_value if p_holm is None else p_holm
    beyond = math.isfinite(p) and p < SIGNIFICANCE and not (test.low <= 0 <= test.high)
    bound = "at least " if test.lower_bound else ""
    could = (f"{NOT_SHOWN}, could detect {bound}{_fmt(test.detectable)}" if math.isfinite(test.detectable)
             else f"{NOT_SHOWN} (no spread to size what it could detect)")
    if expect == "unchanged":
        if margin is None or not math.isfinite(margin):
            raise ValueError("an 'unchanged' claim needs a finite margin")
        if -margin <= test.low and test.high <= margin:
            return SHOWN
        if beyond and abs(test.estimate) > margin:
            return OPPOSITE
        return could
    sign = 1.0 if expect == "higher" else -1.0
    if beyond:
        return SHOWN if sign * test.estimate > 0 else OPPOSITE
    if math.isfinite(test.p_value) and test.p_value < SIGNIFICANCE and not (test.low <= 0 <= test.high):
        side = "the paper's direction" if sign * test.estimate > 0 else "against the paper's direction"
        return f"{NOT_SHOWN}: {side} before Holm's correction only (p = {test.p_value:.2g})"
    paper_side = test.high if sign > 0 else -test.low  # the largest change in the paper's direction still allowed
    if math.isfinite(test.detectable) and paper_side <= test.detectable:
        return f"{EXCLUDED} {_fmt(max(paper_side, 0.0))}"
    return could


def word(verdict: str) -> str:
    """The verdict's word without its number: 'excluded above 0.3' -> 'excluded above'."""
    return next((w for w in WORDS if str(verdict).startswith(w)), str(verdict))
