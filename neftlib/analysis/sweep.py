"""Alpha x seed sweeps: one tidy row per trained arm, effects against alpha 0 measured against the seed spread."""
from __future__ import annotations

import math

import pandas as pd

from neftlib.base.config import RunConfig
from neftlib.analysis.detectable import seed_changes
from neftlib.base.io import read_json, write_csv
from neftlib.base.run import stage_dir, trained_arms
from neftlib.analysis.power import Design, detectable_effect, seed_change_variance

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


def seed_detectable_effect(changes: pd.DataFrame, n_seeds: int) -> tuple[float, float]:
    """(MDE, variance of one per-seed change) for a t test on `n_seeds` per-seed changes (n_seeds - 1 degrees of
    freedom), their variance pooled over every comparison in `changes` (detectable.seed_changes). NaN with fewer
    than two seeds. The prompts are shared by every seed, so how the change varies between prompts is not in it."""
    var, df = seed_change_variance(changes)
    if n_seeds < 2 or not df or math.isnan(var):
        return math.nan, var
    return detectable_effect(Design(var / n_seeds, n_seeds - 1)), var


def alpha_effects(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per stage, distribution, alpha > 0 and metric: mean change against the same seeds' alpha-0 arms.

    `seed_spread` is the largest change between two alpha-0 arms of different seeds (the noise floor of
    the data order alone); `beyond_seeds` says whether every seed's change exceeds it in the same direction.
    `detectable_effect`: the smallest mean change a t test on this alpha's per-seed changes detects with 80%
    power at 95% confidence (neftlib.analysis.power), their variance pooled over the stage's alphas and distributions.
    """
    rows = []
    for stage, frame in metrics.groupby("stage"):
        base = frame[frame["alpha"] == 0].set_index("seed")
        for metric, predicted in METRICS.items():
            if metric not in frame or base.empty:
                continue
            changes = seed_changes(frame, stage, metric)
            spread = float(base[metric].max() - base[metric].min()) if len(base) > 1 else float("nan")
            for (dist, alpha), arms in frame[frame["alpha"] > 0].groupby(["distribution", "alpha"]):
                deltas = [float(r[metric] - base.loc[r["seed"], metric]) for _, r in arms.iterrows()
                          if r["seed"] in base.index]
                if not deltas:
                    continue
                same_sign = all(d > 0 for d in deltas) or all(d < 0 for d in deltas)
                beyond = len(deltas) > 1 and spread == spread and same_sign and min(abs(d) for d in deltas) > spread
                mde, var = seed_detectable_effect(changes, len(deltas))
                rows.append({"stage": stage, "distribution": dist, "alpha": alpha, "metric": metric,
                             "predicted": {1: "up", -1: "down", 0: "unchanged"}[predicted],
                             "mean_change": sum(deltas) / len(deltas), "min_change": min(deltas),
                             "max_change": max(deltas), "n_seeds": len(deltas), "seed_spread": spread,
                             "beyond_seeds": beyond, "seed_change_sd": math.sqrt(var) if var == var else var,
                             "detectable_effect": mde})
    return pd.DataFrame(rows)


# metric column -> how the written conclusion names it
METRIC_NAMES = {
    "train_loss_nonoise": "training loss without noise", "heldout_loss": "held-out loss",
    "other_loss": "loss on another kind of data", "rouge_l": "ROUGE-L on training prompts",
    "bleu": "BLEU on training prompts", "avg_chars": "answer length (chars)", "rep_2": "2-gram repetition %",
    "rep_3": "3-gram repetition %", "rep_4": "4-gram repetition %", "log_diversity": "log-diversity (formula as written, not the paper's scale)",
    "log_diversity_release": "log-diversity (release code: the paper's Table 4 scale)", "win_rate": "judge's win rate",
}


def effect_verdict(row: pd.Series) -> str:
    """What one alpha's change says about the paper's prediction, judged against the seed spread alone."""
    if pd.isna(row["mean_change"]):
        return "not measured"
    if row["n_seeds"] < 2:
        return "one seed, cannot tell"
    if pd.isna(row["seed_spread"]):
        return "no seed spread to compare with"
    if not row["beyond_seeds"]:
        return "as the paper says (within the seed spread)" if row["predicted"] == "unchanged" else "within the seed spread"
    direction = "up" if row["mean_change"] > 0 else "down"
    if row["predicted"] == "unchanged":
        return f"{direction}, beyond the seed spread; paper: unchanged"
    return "as the paper says, beyond the seed spread" if direction == row["predicted"] else \
        f"{direction}, beyond the seed spread; paper: {row['predicted']}"


def _detectable_note(row: pd.Series) -> str:
    """Beside a verdict that saw nothing: the smallest mean change this many seeds could have detected."""
    mde = row.get("detectable_effect", math.nan)
    if pd.isna(mde) or row.get("beyond_seeds") is True or "beyond" in effect_verdict(row):
        return ""
    n = int(row["n_seeds"])
    # The seed spread compares seeds trained on different data; paired per seed, the same change can be clear.
    same_sign = row["min_change"] > 0 or row["max_change"] < 0
    if same_sign and abs(row["mean_change"]) > mde:
        direction = "up" if row["mean_change"] > 0 else "down"
        return f" [paired per seed: {direction} on all {n} seeds, beyond the {mde:.3g} that {n} seeds detect]"
    return f" [smallest change {n} seeds detect: {mde:.3g}]"


def sweep_conclusion(effects: pd.DataFrame) -> str:
    """The sweep in a few lines of Markdown: per metric and alpha, the mean change against alpha 0 and what it says."""
    # A run of one seed per alpha (the plain profiles) is no sweep: its pairs are in the claims table.
    if effects.empty or effects["n_seeds"].max() < 2:
        return ""
    seeds = sorted({int(n) for n in effects["n_seeds"]})
    lines = [f"### Alpha sweep: changes against alpha 0, {' or '.join(map(str, seeds))} training seeds per alpha",
             "A change counts only when every seed's change exceeds the largest difference between the "
             "alpha-0 seeds, in the same direction. In brackets beside a change that does not: the smallest mean "
             "change a t test on that many per-seed changes detects with 80% power at 95% confidence, from the "
             "spread of this sweep's per-seed changes, or, when the change goes the same way on every seed and "
             "exceeds it, that it does: paired per seed, the change is clear although the seeds, trained on "
             "different data, differ more among themselves.", ""]
    for (stage, dist, metric), frame in effects.groupby(["stage", "distribution", "metric"], sort=False):
        parts = [f"alpha {r.alpha:g}: {r.mean_change:+.3g} ({effect_verdict(pd.Series(r._asdict()))})"
                 + _detectable_note(pd.Series(r._asdict())) for r in frame.sort_values("alpha").itertuples()]
        lines.append(f"- **{METRIC_NAMES.get(metric, metric)}** ({stage}, {dist} noise; paper: "
                     f"{frame['predicted'].iloc[0]}; seed spread {frame['seed_spread'].iloc[0]:.3g}): " + "; ".join(parts))
    return "\n".join(lines)


def sweep_tables(cfg: RunConfig) -> dict[str, pd.DataFrame]:
    """arm_metrics.csv and alpha_effects.csv under results/<run>/analysis/ (rebuilt from 04 and 05)."""
    out = stage_dir(cfg, "analysis")
    metrics = arm_metrics(cfg)
    effects = alpha_effects(metrics)
    write_csv(out / "arm_metrics.csv", metrics.to_dict("records"))
    write_csv(out / "alpha_effects.csv", effects.to_dict("records"))
    return {"arm_metrics": metrics, "alpha_effects": effects}

