"""Alpha x seed sweeps: arm names, training through the stage code, and the effect-vs-seed-spread table."""
from __future__ import annotations

import pandas as pd
import pytest

from neftlib.base.config import parse_arm
from neftlib.base.recipes import load_config
from neftlib.base.profiles import sweep_arms
from neftlib.analysis.sweep import alpha_effects


def test_sweep_arm_names_carry_alpha_distribution_and_seed():
    cfg = load_config("smoke")
    assert sweep_arms((0, 5, 12.5), (0, 1)) == ("alpha0-seed0", "alpha0-seed1", "alpha5-seed0", "alpha5-seed1",
                                                 "alpha12.5-seed0", "alpha12.5-seed1")
    arm = parse_arm("gauss5-seed3", cfg)
    assert (arm.alpha, arm.distribution, arm.seed) == (5.0, "gaussian", 3)
    assert parse_arm("neftune", cfg).seed is None
    with pytest.raises(ValueError, match="sweep arm like 'alpha10-seed1'"):
        load_config("smoke", arms=("alpha-5-seed0",))


def test_sweep_arms_train_with_their_own_seed(results):
    from neftlib.pipeline.stages import prepare_data, start_run, train_arms

    cfg = start_run("smoke", arms=("baseline", "alpha0-seed0", "alpha0-seed1", "alpha5-seed1"), max_steps=3)
    prepare_data(cfg)
    table = train_arms(cfg).set_index("arm")
    # The run seed is 0: its alpha-0 arm is the baseline to the last digit; another seed is another run.
    assert table.loc["alpha0-seed0", "final_loss"] == table.loc["baseline", "final_loss"]
    assert table.loc["alpha0-seed1", "final_loss"] != table.loc["baseline", "final_loss"]
    assert table.loc["alpha5-seed1", "seed"] == 1 and table.loc["alpha5-seed1", "alpha"] == 5.0
    assert table.loc["alpha5-seed1", "final_loss"] != table.loc["alpha0-seed1", "final_loss"]


def _metrics(values: dict[tuple[float, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"stage": "train", "arm": f"alpha{a:g}-seed{s}", "alpha": a, "distribution": "uniform",
                          "seed": s, "avg_chars": v} for (a, s), v in values.items()])


def test_alpha_effects_are_tested_per_seed_not_against_the_spread_of_levels():
    # Seeds trained on different data differ by 90; noise adds +52 / +53 / +53 on each seed: a spread-of-levels
    # yardstick would call it "within"; paired per seed the change is clear.
    frame = _metrics({(0, 0): 300, (0, 1): 390, (0, 2): 350, (15, 0): 352, (15, 1): 443, (15, 2): 403,
                      (5, 0): 301, (5, 1): 389, (5, 2): 352})
    effects = alpha_effects(frame).set_index("alpha")
    assert effects.loc[15.0, "mean_change"] == pytest.approx(52.667, abs=1e-3)
    assert effects.loc[15.0, "low"] > 50 and effects.loc[15.0, "verdict"] == "shown"
    assert effects.loc[15.0, "predicted"] == "up" and effects.loc[15.0, "n_seeds"] == 3
    assert effects.loc[5.0, "verdict"].startswith(("not shown", "excluded above"))
    assert (effects["p_holm"] >= effects["p_value"]).all()  # Holm over the table's tests


def test_one_seed_per_alpha_gets_no_sweep_verdict():
    effects = alpha_effects(_metrics({(0, 0): 300, (5, 0): 400}))
    assert effects["n_seeds"].tolist() == [1] and effects["verdict"].str.startswith("one seed").all()
    assert effects["detectable_effect"].isna().all() and effects["low"].isna().all()


def test_rebuild_all_draws_the_alpha_sweep_from_its_table(results):
    from neftlib.analysis.figures import rebuild_all
    from neftlib.base.io import write_csv

    frame = _metrics({(0, 0): 300, (0, 1): 310, (5, 0): 350, (5, 1): 360}).assign(model="tiny", rep_2=1.0)
    write_csv(results / "sw" / "analysis" / "arm_metrics.csv", frame.to_dict("records"))
    made = rebuild_all("sw")
    assert made["alpha_sweep"].endswith("alpha_sweep.png")
    assert (results.parent / "figures" / "sw" / "alpha_sweep.png").stat().st_size > 0
    # the other figures need the full pipeline's results and say so instead of failing
    assert made["win_rates"].startswith("skipped")


def test_a_stage_without_arms_leaves_the_arm_table_to_the_others(results):
    # A sweep profile has no QLoRA arms: its qlora/summary.csv holds no rows, not even a header.
    from neftlib.analysis.claims import arm_table
    from neftlib.base.io import write_csv

    write_csv(results / "sw" / "train" / "summary.csv", [{"arm": "alpha0-seed0", "alpha": 0.0,
                                                         "distribution": "uniform", "seed": 0}])
    write_csv(results / "sw" / "qlora" / "summary.csv", [])
    arms = arm_table("sw")
    assert arms[["stage", "arm"]].values.tolist() == [["train", "alpha0-seed0"]]


def test_sweep_conclusion_gives_each_change_its_interval_and_verdict():
    from neftlib.analysis.power import Design, detectable_effect
    from neftlib.analysis.sweep import sweep_conclusion

    # changes per seed: alpha 5 +40/+60, alpha 10 -4/+6, alpha 15 -50/-70
    frame = _metrics({(0, 0): 300, (0, 1): 310, (5, 0): 340, (5, 1): 370, (10, 0): 296, (10, 1): 316,
                      (15, 0): 250, (15, 1): 240})
    effects = alpha_effects(frame).set_index("alpha")
    # the detectable effect of a t test on the two per-seed changes of alpha 10 (sample variance 50, one df)
    assert effects.loc[10.0, "detectable_effect"] == pytest.approx(detectable_effect(Design(50 / 2, 1)))
    line = next(l for l in sweep_conclusion(alpha_effects(frame)).splitlines() if "answer length" in l)
    assert "paper: up" in line and f"alpha 10: +1 [{effects.loc[10.0, 'low']:.3g}, " in line
    assert all(f"({effects.loc[a, 'verdict']})" in line for a in (5.0, 10.0, 15.0))
    # one seed per alpha is no sweep: nothing to conclude from seeds
    assert sweep_conclusion(alpha_effects(_metrics({(0, 0): 300, (5, 0): 400}))) == ""
