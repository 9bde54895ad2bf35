"""Power: the minimum detectable effect against brute-force simulation, and variance components recovered
from simulated data whose components are known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from neftlib.analysis.detectable import detectable_text
from neftlib.analysis.power import design, minimum_detectable_effect, power_of, variance_components
from neftlib.analysis.verdict import interval_test


def _simulate(n: int, k: int, sd_prompt: float, sd_seed: float, sd_residual: float, effect: float,
              reps: int, rng: np.random.Generator) -> np.ndarray:
    """Per-prompt differences d[rep, seed, prompt] drawn from the model of neftlib.analysis.power."""
    iota = rng.normal(0, sd_prompt, (reps, 1, n))
    eta = rng.normal(0, math.sqrt(2) * sd_seed, (reps, k, 1))
    return effect + iota + eta + rng.normal(0, sd_residual, (reps, k, n))


def _rejects(d: np.ndarray) -> np.ndarray:
    """The rule's own test on each replicate: with one seed, the paired t test over the prompts (n - 1 degrees of
    freedom); with k seeds, the t test of the k per-seed mean changes (k - 1 degrees of freedom)."""
    reps, k, n = d.shape
    if k == 1:
        flat = d[:, 0, :]
        t = flat.mean(axis=1) / (flat.std(axis=1, ddof=1) / math.sqrt(n))
        return np.abs(t) > stats.t.ppf(0.975, n - 1)
    per_seed = d.mean(axis=2)
    t = per_seed.mean(axis=1) / (per_seed.std(axis=1, ddof=1) / math.sqrt(k))
    return np.abs(t) > stats.t.ppf(0.975, k - 1)


# Monte Carlo error of a rate near 0.8 over 10,000 replicates: ~0.004. The several-seed cases draw no prompt
# component: the seeds test speaks for the prompts it was run on, so a prompt effect shared by every seed is part
# of what it measures, not noise.
@pytest.mark.parametrize("n,k,sds,tol", [
    (24, 1, (30.0, 0.0, 10.0), 0.015),  # one seed, no seed variance: the plain paired t test
    (30, 3, (0.0, 3.0, 25.0), 0.015),  # three seeds
    (100, 6, (0.0, 2.0, 40.0), 0.015),  # six seeds, fresh noise per seed dominating
    (100, 2, (0.0, 5.0, 20.0), 0.015),  # two seeds, the seed dominating: one degree of freedom
])
def test_mde_is_detected_with_80_percent_power_in_simulation(n, k, sds, tol):
    mde = minimum_detectable_effect(n, k, *sds)
    assert power_of(mde, design(n, k, *sds)) == pytest.approx(0.80, abs=1e-6)
    rng = np.random.default_rng(7)
    simulated = _rejects(_simulate(n, k, *sds, effect=mde, reps=10000, rng=rng)).mean()
    assert simulated == pytest.approx(0.80, abs=tol)
    # Half the effect is clearly underpowered, and the formula says by how much.
    half = _rejects(_simulate(n, k, *sds, effect=mde / 2, reps=10000, rng=rng)).mean()
    assert half == pytest.approx(power_of(mde / 2, design(n, k, *sds)), abs=tol) and half < 0.5
    # No change: the test rejects at about its level.
    null = _rejects(_simulate(n, k, *sds, effect=0.0, reps=10000, rng=rng)).mean()
    assert null == pytest.approx(0.05, abs=0.015)


def test_one_seed_with_a_seed_share_detects_nothing():
    assert math.isinf(minimum_detectable_effect(50, 1, 30.0, 4.0, 0.0))
    assert design(50, 1, 30.0, 4.0).df == 0


def test_mde_scales_like_the_textbook_formula_and_falls_with_prompts_and_seeds():
    # many prompts, one seed, no seed variance: (z_0.975 + z_0.8) * sd / sqrt(n)
    assert minimum_detectable_effect(10_000, 1, 100.0, 0.0) == pytest.approx(2.8016 * 100 / 100, rel=1e-3)
    by_prompts = [minimum_detectable_effect(n, 3, 50.0, 5.0, 20.0) for n in (24, 100, 400)]
    by_seeds = [minimum_detectable_effect(100, k, 50.0, 5.0, 20.0) for k in (2, 3, 6)]
    assert by_prompts == sorted(by_prompts, reverse=True) and by_seeds == sorted(by_seeds, reverse=True)
    # Where the seed dominates, two seeds leave one degree of freedom: far weaker than three.
    seed_bound = [minimum_detectable_effect(100, k, 0.0, 10.0, 5.0) for k in (2, 3)]
    assert seed_bound[0] > 3 * seed_bound[1]
    assert design(100, 2, 0.0, 10.0, 0.0).df == 1 and design(100, 4, 30.0, 0.0, 0.0).df == 3
    assert design(100, 1, 30.0, 0.0, 0.0).df == 99
    with pytest.raises(ValueError, match="at least 2 prompts"):
        minimum_detectable_effect(1, 2, 1.0, 1.0)


def test_interval_test_mde_matches_the_design_it_came_from():
    n, sd = 24, 60.0
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    test = interval_test(0.0, -half, half, n)
    assert test.detectable == pytest.approx(minimum_detectable_effect(n, 1, sd, 0.0), rel=1e-6)
    assert math.isnan(interval_test(0.0, math.nan, 1.0, n).detectable)


def test_variance_components_recover_known_values():
    rng = np.random.default_rng(3)
    n, k, truth = 300, 6, {"sd_prompt": 30.0, "sd_seed": 4.0, "sd_residual": 20.0}
    frames = []
    for comparison in ("alpha5", "alpha10", "alpha15"):
        d = _simulate(n, k, truth["sd_prompt"], truth["sd_seed"], truth["sd_residual"], 10.0, 1, rng)[0]
        seeds, items = np.meshgrid(range(k), range(n), indexing="ij")
        frames.append(pd.DataFrame({"comparison": comparison, "seed": seeds.ravel(), "item": items.ravel(),
                                    "difference": d.ravel()}))
    found = variance_components(pd.concat(frames))
    assert (found["n_prompts"], found["n_seeds"], found["n_comparisons"]) == (n, k, 3)
    assert found["sd_prompt"] == pytest.approx(30.0, rel=0.1)
    assert found["sd_residual"] == pytest.approx(20.0, rel=0.05)
    assert found["sd_seed"] == pytest.approx(4.0, rel=0.35)  # 15 degrees of freedom for the seed part
    one_seed = variance_components(frames[0][frames[0]["seed"] == 0])
    assert math.isnan(one_seed["sd_seed"]) and one_seed["sd_prompt"] == pytest.approx(math.hypot(30, 20), rel=0.15)
    with pytest.raises(ValueError, match="columns"):
        variance_components(pd.DataFrame({"seed": [0]}))


def test_run_components_recover_the_variances_of_a_run_with_known_answers(results):
    """A results folder with 6 seeds of alpha 0 and alpha 5 whose answer lengths follow the model with known
    components: the run's own estimate recovers them, pairing each noised arm with its seed's baseline."""
    from neftlib.base.io import write_csv, write_json
    from neftlib.analysis.run_variance import per_item_differences, run_components

    rng = np.random.default_rng(11)
    n, k, sd_prompt, sd_seed, sd_residual = 300, 6, 40.0, 8.0, 30.0
    run = results / "sim"
    write_json(run / "config.json", {"model": "tiny-random", "seed": 0, "diversity_cutoff": 5})
    base_p, iota = rng.normal(0, 100, n), rng.normal(0, sd_prompt, n)
    summary, eta, eps = [], rng.normal(0, math.sqrt(2) * sd_seed, k), rng.normal(0, sd_residual, (k, n))
    for s in range(k):
        base = 400 + base_p + rng.normal(0, 5) + rng.normal(0, 20, n)
        treat = base + 50 + iota + eta[s] + eps[s]
        for alpha, lengths in ((0.0, base), (5.0, treat)):
            arm = f"alpha{alpha:g}-seed{s}"
            summary.append({"arm": arm, "alpha": alpha, "distribution": "uniform", "seed": s})
            write_json(run / "eval" / f"train-{arm}" / "model_outputs.json",
                       [{"instruction": f"p{i}", "output": "x" * max(0, round(v))} for i, v in enumerate(lengths)])
    write_csv(run / "train" / "summary.csv", summary)
    diffs = per_item_differences("sim", "avg_chars")
    assert len(diffs) == n * k and set(diffs["comparison"]) == {"uniform5"}
    assert diffs["difference"].mean() == pytest.approx(50, abs=10)
    comp = run_components("sim", metrics=("avg_chars", "rouge_l")).set_index("metric")
    row = comp.loc["avg_chars"]
    assert row["status"] == "ok" and (row["n_prompts"], row["n_seeds"]) == (n, k)
    assert row["sd_prompt"] == pytest.approx(sd_prompt, rel=0.15)
    assert row["sd_residual"] == pytest.approx(sd_residual, rel=0.1)
    # Six seeds say little about sd_seed itself; the estimate must match the seed effects this run drew
    # (each seed's mean moves by eta plus its prompts' mean noise, whose expected share is subtracted).
    drawn = np.var(eta + eps.mean(axis=1), ddof=1) - sd_residual**2 / n
    assert 2 * row["sd_seed"] ** 2 == pytest.approx(drawn, abs=2.0)
    assert row["mde"] == pytest.approx(minimum_detectable_effect(n, k, row["sd_prompt"], row["sd_seed"],
                                                                 row["sd_residual"]))
    assert comp.loc["rouge_l", "status"] == "no per-item results"


def test_a_spread_of_zero_is_not_read_as_sensitivity():
    # A judge that calls every pair a draw gives every prompt the same difference: the run's spread is 0, which
    # says nothing about what it could detect, so no detectable change is claimed.
    assert "not computable" in detectable_text(0.0) and "would" not in detectable_text(0.0)
    assert detectable_text(3.58).startswith("smallest change this run could detect: 3.58")
    assert detectable_text(math.nan) == "" and "no change" in detectable_text(math.inf)
