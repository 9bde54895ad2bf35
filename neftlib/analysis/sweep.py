"""Alpha x seed sweeps: one tidy row per trained arm, and each alpha's change against alpha 0 tested per seed."""
from __future__ import annotations

import math

import pandas as pd

from neftlib.base.config import RunConfig
from neftlib.analysis.verdict import CANNOT_DECIDE, Test, decide, holm, judge_decides, seeds_test
from neftlib.base.io import read_json, write_csv
from neftlib.base.run import stage_dir, trained_arms

# metric column -> what the paper predicts NEFTune does to it (+1 up, -1 down, 0 unchanged)
METRICS = {
    "train_loss_nonoise": +1,  # higher training loss (less overfitting)
    "heldout_loss": -1,  # lower loss on held-out data of the same kind
    "other_loss": -1,  # lower loss on another instruction set
    "rouge_l": -1,  # less copying of training responses
    "bleu": -1,
    "avg_chars": +1,  # longer answers
    # unchanged diversity; release-code log-diversity is on the paper's scale (Table 4), the formula as written is not
    "rep_2": 0, "rep_3": 0, "rep_4": 0, "log_diversity_release": 0, "log_diversity": 0,
    "win_rate": +1,  # the headline claim
}


def arm_metrics(cfg: RunConfig) -> pd.DataFrame:
    """One row per trained arm: its alpha, distribution, training seed and every measured metric (04 and 05 done)."""
    over = pd.read_csv(stage_dir(cfg, "analysis") / "overfitting.csv")
    div = pd.read_csv(stage_dir(cfg, "analysis") / "diversity.csv").rename(columns={"name": "label"})
    wins = pd.read_csv(stage_dir(cfg, "eval") / "winrates.csv")
    rows = []
    for stage, arm, folder in trained_arms(cfg):
        summary = read_json(folder / "summary.json")
        label = f"{stage}-{arm}"
        row = {"run": cfg.run_name, "stage": stage, "arm": arm, "model": cfg.model, "alpha": summary["alpha"],
               "distribution": summary["distribution"], "seed": summary.get("seed", cfg.seed)}
        if (folder / "log.csv").exists():  # the dose: ||noise|| / ||embedding|| averaged over the training steps
            row["noise_ratio"] = float(pd.read_csv(folder / "log.csv")["noise_ratio"].mean())
        for frame, key in ((over, over["stage"] + "-" + over["arm"]), (div, div["label"]),
                           (wins, wins["stage"] + "-" + wins["arm"])):
            match = frame[key == label]
            if not match.empty:
                row.update({k: v for k, v in match.iloc[0].items() if k in METRICS or k in (
                    "ci_low", "ci_high", "judge_agreement", "n_kept", "cap_share", "avg_new_tokens", "win_rate_soft",
                    "n_clipped")})
        rows.append(row)
    return pd.DataFrame(rows)


EXPECT = {1: "higher", -1: "lower", 0: "unchanged"}
UNCHANGED_MARGIN = 0.10  # an "unchanged" metric: within +-10% of the alpha-0 arms' mean (as claims.DIVERSITY_MARGIN)


def alpha_effects(metrics: pd.DataFrame, judge: tuple[bool, str] = (True, "")) -> pd.DataFrame:
    """Per stage, distribution, alpha > 0 and metric: the change against the same seeds' alpha-0 arms, tested
    under the one rule (neftlib.analysis.verdict): the t test of the per-seed paired changes (`low`, `high`: its
    95% interval; `p_value`, and `p_holm` after Holm's correction over every test of the table), the smallest
    change that design detects, and the verdict. With one seed per alpha there is no interval and no verdict:
    the sweep then says nothing the claims table does not. `judge`: whether the judge can decide, and why not
    (neftlib.analysis.verdict.judge_can_decide); win rates of a judge that cannot get that verdict and no test."""
    rows = []
    for stage, frame in metrics.groupby("stage"):
        base = frame[frame["alpha"] == 0].set_index("seed")
        for metric, predicted in METRICS.items():
            if metric not in frame or base.empty or frame[metric].isna().all():
                continue
            for (dist, alpha), arms in frame[frame["alpha"] > 0].groupby(["distribution", "alpha"]):
                deltas = [float(r[metric] - base.loc[r["seed"], metric]) for _, r in arms.iterrows()
                          if r["seed"] in base.index and pd.notna(r[metric])]
                if not deltas:
                    continue
                row = {"stage": stage, "distribution": dist, "alpha": alpha, "metric": metric,
                       "predicted": {1: "up", -1: "down", 0: "unchanged"}[predicted],
                       "baseline_mean": float(base[metric].mean()),
                       "mean_change": sum(deltas) / len(deltas), "min_change": min(deltas),
                       "max_change": max(deltas), "n_seeds": len(deltas), "low": math.nan, "high": math.nan,
                       "p_value": math.nan, "detectable_effect": math.nan}
                if len(deltas) >= 2:
                    test = seeds_test(deltas)
                    row.update(low=test.low, high=test.high, p_value=test.p_value, detectable_effect=test.detectable)
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    undecided = (table["metric"] == "win_rate") & (not judge[0])
    table.loc[undecided, ["p_value", "detectable_effect"]] = math.nan
    table["p_holm"] = holm(table["p_value"].to_numpy(float))
    table["verdict"] = [f"{CANNOT_DECIDE} ({judge[1]})" if u else _verdict(r)
                        for u, (_, r) in zip(undecided, table.iterrows())]
    return table


def _verdict(row: pd.Series) -> str:
    if row["n_seeds"] < 2:
        return "one seed: no verdict (see the claims table)"
    test = Test(row["mean_change"], row["low"], row["high"], row["p_value"], row["n_seeds"] - 1, "seeds",
                int(row["n_seeds"]), row["detectable_effect"], False)
    expect = EXPECT[METRICS[row["metric"]]]
    margin = UNCHANGED_MARGIN * abs(row["baseline_mean"]) if expect == "unchanged" else None
    return decide(test, expect, row["p_holm"] if pd.notna(row["p_holm"]) else None, margin)


# metric column -> how the written conclusion names it
METRIC_NAMES = {
    "train_loss_nonoise": "training loss without noise", "heldout_loss": "held-out loss",
    "other_loss": "loss on another kind of data", "rouge_l": "ROUGE-L on training prompts",
    "bleu": "BLEU on training prompts", "avg_chars": "answer length (chars)", "rep_2": "2-gram repetition %",
    "rep_3": "3-gram repetition %", "rep_4": "4-gram repetition %", "log_diversity": "log-diversity (formula as written, not the paper's scale)",
    "log_diversity_release": "log-diversity (release code: the paper's Table 4 scale)", "win_rate": "judge's win rate",
}


def effect_verdict(row: pd.Series) -> str:
    """The verdict alpha_effects computed for one alpha and metric (older tables without one: not tested)."""
    return str(row["verdict"]) if "verdict" in row and pd.notna(row.get("verdict")) else "not tested (no verdict)"


def sweep_conclusion(effects: pd.DataFrame) -> str:
    """The sweep in a few lines of Markdown: per metric and alpha, the mean change against alpha 0, its interval
    and the verdict under the one rule."""
    # A run of one seed per alpha (the plain profiles) is no sweep: its pairs are in the claims table.
    if effects.empty or effects["n_seeds"].max() < 2 or "verdict" not in effects:
        return ""
    seeds = sorted({int(n) for n in effects["n_seeds"]})
    lines = [f"### Alpha sweep: changes against alpha 0, {' or '.join(map(str, seeds))} training seeds per alpha",
             "Each change is the mean of the per-seed paired changes (each seed's noised arm minus its own alpha-0 "
             "arm), with the t interval of those changes; verdicts follow the one rule (docs/methodology.md), after "
             f"Holm's correction over the {len(effects)} tests below.", ""]
    for (stage, dist, metric), frame in effects.groupby(["stage", "distribution", "metric"], sort=False):
        parts = [f"alpha {r.alpha:g}: {r.mean_change:+.3g} [{r.low:.3g}, {r.high:.3g}] ({r.verdict})"
                 for r in frame.sort_values("alpha").itertuples()]
        lines.append(f"- **{METRIC_NAMES.get(metric, metric)}** ({stage}, {dist} noise; paper: "
                     f"{frame['predicted'].iloc[0]}): " + "; ".join(parts))
    return "\n".join(lines)


def sweep_tables(cfg: RunConfig) -> dict[str, pd.DataFrame]:
    """arm_metrics.csv and alpha_effects.csv under results/<run>/analysis/ (rebuilt from 04 and 05)."""
    out = stage_dir(cfg, "analysis")
    metrics = arm_metrics(cfg)
    effects = alpha_effects(metrics, judge_decides(pd.read_csv(stage_dir(cfg, "eval") / "winrates.csv")))
    write_csv(out / "arm_metrics.csv", metrics.to_dict("records"))
    write_csv(out / "alpha_effects.csv", effects.to_dict("records"))
    return {"arm_metrics": metrics, "alpha_effects": effects}

