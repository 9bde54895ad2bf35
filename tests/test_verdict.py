"""The one verdict rule (docs/methodology.md): tests, detectable effects, Holm's correction, judges that cannot decide."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from neftlib.analysis.claims import evidence_row, finalize
from neftlib.analysis.power import design, detectable_effect, one_seed_lower_bound
from neftlib.analysis.verdict import (CANNOT_DECIDE, NOT_MEASURED, Test, calibration_passes, decide, holm,
                                      interval_test, judge_can_decide, paired_interval, seeds_test, word)


def test_paired_changes_see_what_the_spread_of_levels_hides():
    # Three seeds whose alpha-0 levels differ by a lot (data order), and a noise that adds 0.05 on every seed.
    levels = np.array([1.00, 1.20, 0.85])
    treated = levels + np.array([0.050, 0.052, 0.049])
    paired = seeds_test(treated - levels)
    unpaired = stats.ttest_ind(treated, levels, equal_var=False)
    assert paired.low > 0 and paired.p_value < 0.001 and decide(paired, "higher") == "shown"
    assert unpaired.pvalue > 0.5  # the levels' spread swamps the change: the wrong yardstick sees nothing
    assert paired.df == 2 and paired.design == "seeds" and not paired.lower_bound
    # the detectable effect comes from the same variance and degrees of freedom as the test
    assert paired.detectable == pytest.approx(detectable_effect(design_like(treated - levels)), rel=1e-9)


def design_like(changes):
    from neftlib.analysis.power import Design

    c = np.asarray(changes)
    return Design(c.var(ddof=1) / len(c), len(c) - 1)


def test_more_seeds_never_detect_less():
    n, sd_prompt, sd_seed, sd_res = 200, 300.0, 15.0, 100.0
    mdes = [detectable_effect(design(n, k, sd_prompt, sd_seed, sd_res)) for k in range(1, 8)]
    assert math.isinf(mdes[0])  # one seed cannot tell the noise's effect from the seed's
    assert all(a >= b for a, b in zip(mdes, mdes[1:])) and mdes[2] < mdes[1]
    # what a one-seed run reports is a lower bound: it leaves the seed's share out
    bound = detectable_effect(one_seed_lower_bound(n, sd_prompt, sd_res))
    assert 0 < bound < math.inf
    # with no seed variance at all, one seed's number is the whole story
    assert detectable_effect(design(n, 1, sd_prompt, 0.0, sd_res)) == pytest.approx(bound)


def test_one_seed_interval_test_marks_a_lower_bound_and_reads_the_width():
    test = interval_test(2.0, 0.5, 3.5, 100)
    se = 1.5 / stats.t.ppf(0.975, 99)
    assert test.p_value == pytest.approx(2 * stats.t.sf(2.0 / se, 99))
    assert test.lower_bound and test.design == "prompts" and test.detectable > 0
    assert "at least" in decide(interval_test(0.9, -0.2, 2.0, 100), "higher")
    assert decide(interval_test(math.nan, 0, 1, 10), "higher") == NOT_MEASURED


@pytest.mark.parametrize("est,low,high,expect,verdict", [
    (2.0, 1.0, 3.0, "higher", "shown"), (-2.0, -3.0, -1.0, "higher", "opposite"),
    (-2.0, -3.0, -1.0, "lower", "shown"), (0.1, -0.2, 0.4, "higher", "excluded above"),
    (0.9, -0.2, 2.0, "higher", "not shown"),
])
def test_decide_words(est, low, high, expect, verdict):
    se = (high - low) / (2 * 1.96)
    p = 2 * stats.norm.sf(abs(est) / se)
    test = Test(est, low, high, p, 1000, "prompts", 1000, 2.8 * se, True)
    assert word(decide(test, expect)) == verdict


def test_unchanged_claims_need_the_whole_interval_inside_the_margin():
    inside = Test(0.05, -0.1, 0.2, 0.6, 10, "seeds", 11, 0.3, False)
    wide = Test(0.05, -0.5, 0.6, 0.8, 10, "seeds", 11, 0.9, False)
    moved = Test(1.0, 0.8, 1.2, 1e-6, 10, "seeds", 11, 0.2, False)
    assert decide(inside, "unchanged", margin=0.25) == "shown"
    assert word(decide(wide, "unchanged", margin=0.25)) == "not shown"
    assert decide(moved, "unchanged", margin=0.25) == "opposite"
    with pytest.raises(ValueError, match="margin"):
        decide(inside, "unchanged")


def test_holm_matches_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, math.nan, 0.02], equal_nan=True)


def _row(part: str, est: float, low: float, high: float, n: int = 200, **extra) -> dict:
    return {"scope": "ours", **evidence_row("c", part, "train", ("a", "b"), "higher",
                                            test=interval_test(est, low, high, n), baseline=0.0, treatment=est,
                                            n_items=n, **extra)}


def test_multiplicity_rule_is_applied_and_every_test_reported():
    # one change beyond noise alone (p about 0.03), among ten that are not: after Holm it is not shown
    rows = [_row("answer length (characters)", 2.2, 0.2, 4.2)] + \
        [_row(f"metric {i}", 0.1, -2.0, 2.2) for i in range(9)]
    ev = finalize(pd.DataFrame(rows))
    first = ev.iloc[0]
    assert first["p_value"] < 0.05 <= first["p_holm"]
    assert first["verdict"].startswith("not shown: the paper's direction before Holm's correction only")
    assert ev["p_holm"].notna().all() and len(ev) == 10  # every test reported with both p values
    alone = finalize(pd.DataFrame(rows[:1]))
    assert alone.iloc[0]["verdict"] == "shown"


def test_a_judge_that_cannot_decide_gets_no_verdict_and_no_detectable_effect():
    rows = [_row("win rate", 1.7, -1.0, 4.0, n=30, decided_baseline=0.07, decided_treatment=0.03),
            _row("win rate, Gaussian vs uniform", 1.7, 1.0, 2.4, n=30, decided_baseline=0.6, decided_treatment=0.5)]
    ev = finalize(pd.DataFrame(rows))
    assert ev.iloc[0]["verdict"] == CANNOT_DECIDE and math.isnan(ev.iloc[0]["detectable_effect"])
    assert "decided only 3%" in ev.iloc[0]["note"] and math.isnan(ev.iloc[0]["p_holm"])
    assert ev.iloc[1]["verdict"] == "shown"  # a judge that decides is read as usual
    failed = finalize(pd.DataFrame(rows[1:]), calibrated=False)
    assert failed.iloc[0]["verdict"] == CANNOT_DECIDE and "calibration" in failed.iloc[0]["note"]
    assert judge_can_decide([0.9, 0.8]) == (True, "")


def test_calibration_rule():
    assert calibration_passes(5.0, 20.0, 12.0, 35.0)  # beyond noise and a third of GPT-4's jump
    assert not calibration_passes(-2.0, 10.0, 4.0, 35.0)  # not beyond noise
    assert not calibration_passes(1.0, 6.0, 3.0, 35.0)  # beyond noise but under a quarter
    assert not calibration_passes(-20.0, -5.0, -12.0, 35.0)  # the other way


def test_paired_interval_is_seeded_and_exact_for_a_constant_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=50)
    b = a + 2.0  # every item moves by exactly 2: the paired interval has no width
    point, low, high = paired_interval(lambda i: b[i].mean() - a[i].mean(), 50, n_boot=200)
    assert (point, low, high) == pytest.approx((2.0, 2.0, 2.0))
    noisy = a + rng.normal(size=50)
    first = paired_interval(lambda i: noisy[i].mean() - a[i].mean(), 50, n_boot=300, seed=3)
    assert first == paired_interval(lambda i: noisy[i].mean() - a[i].mean(), 50, n_boot=300, seed=3)
    assert first[1] < first[0] < first[2]
    assert all(math.isnan(v) for v in paired_interval(lambda i: 0.0, 0))
    assert seeds_test([1.0, 1.0, 1.0]).p_value == 0.0  # no spread: nothing to size, and no pretence of one
    with pytest.raises(ValueError, match="at least 2"):
        seeds_test([1.0])
