"""Power of the CPU designs, from the variances the cpu-sweep of 2026-11-26 measured (its committed snapshot).

    python docs/evidence/power-2026-11-30/make_tables.py

Writes, beside this file, variance_components.csv (per judge-free metric: what was measured, what is assumed,
and the model's components at both ends of what the summaries allow) and mde_by_design.csv (the minimum
detectable effect at 95% confidence and 80% power for 24-400 prompts x 1-6 seeds). The sweep's per-prompt
answers were not kept, so the per-prompt spread is read back from the report's paired 95% intervals (one
seed, alpha 0 vs 5) and the seed spread from the per-arm table (2 seeds x 4 alphas); see README.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from neftlib.analysis.detectable import seed_changes
from neftlib.base.io import write_csv
from neftlib.analysis.power import components_from_summaries, design_table, seed_change_variance
from neftlib.evaluation.textstats import log_diversity_release_values, whitespace_tokens

HERE = Path(__file__).resolve().parent
SWEEP = HERE.parent / "cpu-sweep-2026-11-26"
PROMPTS, SEEDS = (24, 50, 100, 200, 400), (1, 2, 3, 4, 6)

# metric -> (the part of claims.csv holding its paired interval, the config field counting its items, items)
METRICS = {
    "avg_chars": ("answer length (characters)", "eval_limit", "AlpacaEval prompts"),
    "rouge_l": ("ROUGE-L of answers to training prompts", "overlap_limit", "training prompts"),
    "bleu": ("BLEU of answers to training prompts", "overlap_limit", "training prompts"),
    "train_loss_nonoise": ("loss without noise on the training subset", "loss_subset", "training examples"),
    "heldout_loss": (None, "heldout_limit", "held-out examples"),
    "other_loss": ("loss on another set", "heldout_limit", "examples of another set"),
    "log_diversity_release": (None, "eval_limit", "AlpacaEval prompts (answers of 50 words or more)"),
}
NUMBER = r"([-+]?[\d.]+(?:e[-+]?\d+)?)"


def paired_intervals(claims: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """part -> (low, high) of every paired 95% interval the report printed."""
    found = {}
    for text in claims["measured"].dropna():
        for part in str(text).split("; "):
            hit = re.match(rf"(.+?): .*95% CI \[{NUMBER}, {NUMBER}\]", part)
            if hit:
                found[hit.group(1)] = (float(hit.group(2)), float(hit.group(3)))
    return found


def published_release_sd(cutoff: int = 50) -> float:
    """SD over prompts of the paired difference in release-code log-diversity between the paper's published
    Alpaca-7B and Alpaca-7B-NEFT answers, on prompts where both reach the cutoff (NaN without the data)."""
    root = os.environ.get("NEFTLIB_DATA_DIR")
    if not root:
        return math.nan
    values = []
    for model in ("alpaca-7b", "alpaca-7b-neft"):
        rows = json.loads((Path(root) / "alpaca_eval" / model / "model_outputs.json").read_text(encoding="utf-8"))
        cut = [whitespace_tokens(r["output"])[:cutoff] if len(whitespace_tokens(r["output"])) >= cutoff else []
               for r in rows]
        values.append(np.array(log_diversity_release_values(cut)))
    diff = values[1] - values[0]
    return float(np.nanstd(diff, ddof=1))


def main() -> None:
    cfg = json.loads((SWEEP / "config.json").read_text())
    arms = pd.read_csv(SWEEP / "arm_metrics.csv")
    intervals = paired_intervals(pd.read_csv(SWEEP / "claims.csv"))
    release_sd = published_release_sd(cfg["diversity_cutoff"])
    rows = []
    for metric, (part, count, items) in METRICS.items():
        n0 = int(cfg[count])
        change_var, df = seed_change_variance(seed_changes(arms, "train", metric)[lambda f: f["comparison"]
                                                                                   .str.startswith("uniform")])
        if part is not None:
            low, high = next(v for k, v in intervals.items() if k.startswith(part))
            sd_diff = (high - low) / (2 * 1.959964) * math.sqrt(n0)
            source = f"paired 95% interval [{low:g}, {high:g}] of alpha0-seed0 vs alpha5-seed0 over {n0} items"
        elif metric == "heldout_loss":
            low, high = next(v for k, v in intervals.items() if k.startswith("loss on another set"))
            sd_diff = (high - low) / (2 * 1.959964) * math.sqrt(n0)
            source = ("ASSUMED: the other set's paired interval (the held-out rows' was not reported); both are "
                      f"{n0} unseen instruction examples scored by the same models")
        else:
            sd_diff = release_sd
            source = ("ASSUMED: per-prompt SD of the difference between the paper's published Alpaca-7B and "
                      "Alpaca-7B-NEFT answers (LLaMA-1-7B, prompts where both reach 50 words)")
        baseline = float(arms.loc[arms["alpha"] == 0, metric].mean())
        for end, comp in components_from_summaries(sd_diff, change_var, n0).items():
            rows.append({"metric": metric, "items": items, "split": end, "baseline": baseline, "n_items_run": n0,
                         "sd_diff": sd_diff, "sd_diff_source": source, "seed_change_var": change_var,
                         "seed_change_df": df, "seed_change_source": f"per-seed changes of alpha 5/10/15 vs alpha 0, "
                         f"2 seeds each (arm_metrics.csv; comparisons share their baseline, so fewer than {df} "
                         "independent degrees of freedom)", **comp})
    components = pd.DataFrame(rows)
    write_csv(HERE / "variance_components.csv", components.to_dict("records"))
    table = design_table(components.drop(columns=["sd_diff_source", "seed_change_source"]), PROMPTS, SEEDS)
    keep = ["metric", "items", "split", "n_prompts", "n_seeds", "df", "se", "mde", "mde_percent", "baseline",
            "sd_prompt", "sd_seed", "sd_residual"]
    write_csv(HERE / "mde_by_design.csv", table[keep].to_dict("records"))
    wide = table.pivot_table(index=["metric", "n_prompts"], columns=["n_seeds", "split"], values="mde_percent")
    print(wide.round(1).to_string())
    write_csv(HERE / "mde_of_runs.csv", runs_table(components, cfg).to_dict("records"))


def runs_table(components: pd.DataFrame, sweep_cfg: dict) -> pd.DataFrame:
    """The MDE of the sweep as it ran (beside the changes it measured) and of the cpu-study profile as designed
    (whose own variances, at another training setting, will replace these)."""
    from neftlib.base.recipes import load_config
    from neftlib.analysis.power import minimum_detectable_effect

    study = load_config("cpu-study")
    designs = {"cpu-sweep (as run, 2 seeds)": (sweep_cfg, 2),
               "cpu-study (as designed, 3 seeds)": (dataclasses.asdict(study), 3)}
    effects = pd.read_csv(SWEEP / "alpha_effects.csv")
    rows = []
    for _, comp in components.iterrows():
        count = METRICS[comp["metric"]][1]
        for name, (cfg, seeds) in designs.items():
            n = int(cfg[count])
            mde = minimum_detectable_effect(n, seeds, comp["sd_prompt"], comp["sd_seed"], comp["sd_residual"])
            row = {"metric": comp["metric"], "split": comp["split"], "design": name, "n_items": n,
                   "n_seeds": seeds, "mde": mde, "mde_percent": 100 * mde / abs(comp["baseline"])}
            if name.startswith("cpu-sweep"):
                seen = effects[(effects["metric"] == comp["metric"]) & (effects["distribution"] == "uniform")]
                row.update({f"measured_change_alpha{a:g}": c for a, c in zip(seen["alpha"], seen["mean_change"])})
            rows.append(row)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
