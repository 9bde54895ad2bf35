"""A run's own variance components, from its per-prompt results: every noised arm against the alpha-0 arm
of the same training seed, item by item (answers, training prompts, per-example losses).

`run_components(run)` gives, per judge-free metric, sd_prompt / sd_seed / sd_residual (neftlib.power's model)
and the MDE of the run's own design; with one seed per arm only sd_prompt is identified.
"""
from __future__ import annotations

import math

import pandas as pd

from neftlib.claims import _json, arm_table, read_table, run_info
from neftlib.paths import run_dir
from neftlib.power import minimum_detectable_effect, variance_components
from neftlib.textstats import log_diversity_release_values, whitespace_tokens

# metric -> (what one item is, where its per-item values come from)
ITEM_METRICS = {
    "avg_chars": "AlpacaEval answer (characters)",
    "log_diversity_release": "AlpacaEval answer cut at the cutoff (release-code log-diversity)",
    "rouge_l": "training prompt (ROUGE-L F1 x 100)",
    "bleu": "training prompt (sentence BLEU: an approximation of the corpus BLEU's spread)",
    "train_loss_nonoise": "training example (loss without noise, unweighted by tokens)",
    "heldout_loss": "held-out example (loss, unweighted by tokens)",
    "other_loss": "example of another set (loss, unweighted by tokens)",
}
_LOSS_SETS = {"train_loss_nonoise": "train", "heldout_loss": "heldout", "other_loss": "other"}


def per_item_values(run: str, stage: str, arm: str, metric: str) -> pd.Series | None:
    """One arm's value of `metric` on every item (indexed by item), or None when the run has no such file."""
    folder = run_dir(run)
    if metric in ("avg_chars", "log_diversity_release"):
        rows = _json(folder / "eval" / f"{stage}-{arm}" / "model_outputs.json")
        if rows is None:
            return None
        texts = [r["output"] for r in rows]
        if metric == "avg_chars":
            return pd.Series([float(len(t)) for t in texts])
        cutoff = int(run_info(run)["cutoff"])
        cut = [whitespace_tokens(t)[:cutoff] if len(whitespace_tokens(t)) >= cutoff else [] for t in texts]
        return pd.Series(log_diversity_release_values(cut))
    if metric in ("rouge_l", "bleu"):
        rows, refs = _json(folder / "eval" / f"{stage}-{arm}" / "train_prompt_outputs.json"), \
            _json(folder / "data" / "train_rows.json")
        if rows is None or refs is None:
            return None
        pairs = [(r["output"], ref["output"]) for r, ref in zip(rows, refs)]
        if metric == "bleu":
            import sacrebleu

            return pd.Series([sacrebleu.sentence_bleu(p, [r]).score for p, r in pairs])
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        return pd.Series([100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs])
    if metric in _LOSS_SETS:
        losses = read_table(folder / "analysis" / "example_losses.csv")
        if losses is None:
            return None
        mine = losses[(losses["stage"] == stage) & (losses["arm"] == arm) & (losses["set"] == _LOSS_SETS[metric])]
        return mine.set_index("example")["loss"].astype(float) if len(mine) else None
    raise ValueError(f"metric {metric!r} has no per-item values; choose from {', '.join(ITEM_METRICS)}")


def per_item_differences(run: str, metric: str, stage: str = "train") -> pd.DataFrame:
    """Rows (comparison, seed, item, difference): each noised arm minus the alpha-0 arm of its training seed."""
    arms = arm_table(run)
    arms = arms[arms["stage"] == stage]
    if "seed" not in arms:
        arms = arms.assign(seed=run_info(run)["seed"])
    base = arms[arms["alpha"] == 0].drop_duplicates("seed").set_index("seed")["arm"]
    rows = []
    for _, arm in arms[arms["alpha"] > 0].iterrows():
        if arm["seed"] not in base.index:
            continue
        values = [per_item_values(run, stage, a, metric) for a in (base[arm["seed"]], arm["arm"])]
        if any(v is None for v in values):
            continue
        change = (values[1] - values[0]).dropna()
        rows += [{"comparison": f"{arm['distribution']}{arm['alpha']:g}", "seed": arm["seed"], "item": i,
                  "difference": float(d)} for i, d in change.items()]
    return pd.DataFrame(rows, columns=["comparison", "seed", "item", "difference"])


def run_components(run: str, metrics=tuple(ITEM_METRICS), stage: str = "train") -> pd.DataFrame:
    """Per metric: the variance components of the run's per-item differences and the MDE of its own design
    (its prompts and seeds). With one seed per arm, sd_seed is not measured: the MDE then assumes it is 0."""
    rows = []
    for metric in metrics:
        diffs = per_item_differences(run, metric, stage)
        if diffs.empty:
            rows.append({"metric": metric, "items": ITEM_METRICS[metric], "status": "no per-item results"})
            continue
        try:
            comp = variance_components(diffs)
        except ValueError as err:
            rows.append({"metric": metric, "items": ITEM_METRICS[metric], "status": str(err)})
            continue
        seed_known = not math.isnan(comp["sd_seed"])
        n, k = int(round(comp["n_prompts"])), int(round(comp["n_seeds"]))
        mde = minimum_detectable_effect(n, k, comp["sd_prompt"], comp["sd_seed"] if seed_known else 0.0,
                                        comp["sd_residual"])
        rows.append({"metric": metric, "items": ITEM_METRICS[metric], **comp, "mde": mde,
                     "status": "ok" if seed_known else "one seed: seed variance not measured, taken as 0"})
    return pd.DataFrame(rows)
