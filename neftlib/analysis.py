"""Stage 05: the paper's overfitting and length-vs-diversity analyses on a run's results."""
from __future__ import annotations

import pandas as pd

from neftlib.config import RunConfig
from neftlib.evaluate import arm_outputs
from neftlib.io import is_done, mark_done, read_json, write_csv
from neftlib.models import load_tokenizer
from neftlib.stages import stage_dir, trained_arms
from neftlib.textstats import bleu, length_diversity_table, rouge_l


def overfitting_table(cfg: RunConfig, progress: bool = True) -> pd.DataFrame:
    """Per arm: noise-free training loss, held-out and other-set loss, ROUGE-L / BLEU on training prompts."""
    train_rows = read_json(stage_dir(cfg, "data") / "train_rows.json")[: cfg.overlap_limit]
    tok = load_tokenizer(cfg.model)
    table = []
    for stage, arm, folder in trained_arms(cfg):
        summary = read_json(folder / "summary.json")
        outs = arm_outputs(cfg, stage, arm, folder, train_rows, tok, name="train_prompt_outputs", progress=progress)
        answers, references = [o["output"] for o in outs], [r["output"] for r in train_rows]
        table.append({
            "run": cfg.run_name, "stage": stage, "arm": arm, "alpha": summary["alpha"],
            "distribution": summary["distribution"], "final_train_loss_noisy": summary["final_loss"],
            "train_loss_nonoise": summary.get("train_nonoise_loss"), "heldout_loss": summary.get("heldout_loss"),
            "other_loss": summary.get("other_loss"), "rouge_l": rouge_l(answers, references),
            "bleu": bleu(answers, references), "n_prompts": len(train_rows),
        })
    return pd.DataFrame(table)


def diversity_table(cfg: RunConfig) -> pd.DataFrame:
    """Length, n-gram repetition and log-diversity of each arm's evaluation answers."""
    outputs = {f"{stage}-{arm}": [o["output"] for o in read_json(stage_dir(cfg, "eval") / f"{stage}-{arm}" / "model_outputs.json")]
               for stage, arm, _ in trained_arms(cfg)}
    rows = length_diversity_table(outputs, cfg.diversity_cutoff)
    return pd.DataFrame([{"run": cfg.run_name, "cutoff": cfg.diversity_cutoff, **r} for r in rows])


def analyze_run(cfg: RunConfig, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Both tables, written to results/<run>/analysis/ (overfitting.csv, diversity.csv)."""
    out = stage_dir(cfg, "analysis")
    if is_done(out):
        return {name: pd.read_csv(out / f"{name}.csv") for name in ("overfitting", "diversity")}
    tables = {"overfitting": overfitting_table(cfg, progress), "diversity": diversity_table(cfg)}
    for name, frame in tables.items():
        write_csv(out / f"{name}.csv", frame.to_dict("records"))
    mark_done(out)
    return tables
