"""Stage 05: the paper's overfitting and length-vs-diversity analyses on a run's results, and the
same length / diversity / GPT-4 win-rate measures on the paper's own published before/after answers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neftlib.analysis.claims import log_diversity_of, ngram_counts, release_values
from neftlib.analysis.length_table import length_only_table
from neftlib.analysis.verdict import paired_interval
from neftlib.analysis.run_variance import run_components
from neftlib.base.config import RunConfig, stage_config
from neftlib.base.io import is_done, mark_done, read_json, write_csv
from neftlib.base.paths import data_dir
from neftlib.base.progress import tqdm
from neftlib.base.run import LENGTH_STAGE, load_prepared, stage_dir, trained_arms
from neftlib.data.batching import collate
from neftlib.data.prepare import IGNORE_INDEX
from neftlib.evaluation.stage import arm_outputs
from neftlib.evaluation.textstats import analyze_files, bleu, length_diversity_table, load_model_outputs, rouge_l
from neftlib.evaluation.winrate import bootstrap_ci, load_annotations, summarize_preferences, win_values
from neftlib.training.models import load_tokenizer
from neftlib.training.train import load_trained

EXAMPLE_LOSSES = "example_losses.csv"  # per-example losses without noise, in each finished arm's folder

# The paper's before/after answers as published on the AlpacaEval leaderboard (NEFTLIB_DATA_DIR/alpaca_eval/).
# `cutoff`: whitespace tokens per answer for repetition / diversity, as the paper cuts by training set
# (50 for Alpaca-trained models, 100 for Evol-Instruct-trained ones).
PUBLISHED = (
    {"pair": "alpaca", "model": "alpaca-7b", "arm": "baseline", "cutoff": 50,
     "about": "Alpaca-7B: LLaMA-7B fine-tuned on Alpaca 52k without noise (Stanford's release)"},
    {"pair": "alpaca", "model": "alpaca-7b-neft", "arm": "neftune", "cutoff": 50,
     "about": "Alpaca-7B-NEFT: LLaMA-7B fine-tuned on Alpaca with NEFTune, submitted by the paper's authors"},
    {"pair": "chat", "model": "llama-2-7b-chat-hf", "arm": "baseline", "cutoff": 100,
     "about": "LLaMA-2-7B-Chat (RLHF), no further training"},
    {"pair": "chat", "model": "llama-2-chat-7b-evol70k-neft", "arm": "neftune", "cutoff": 100,
     "about": "LLaMA-2-7B-Chat fine-tuned on Evol-Instruct 70k with NEFTune, by the paper's authors"},
)
PUBLISHED_JUDGE = "GPT-4 (alpaca_eval_gpt4) vs Text-Davinci-003, 805 prompts"


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
    """Length, n-gram repetition and log-diversity of each arm's evaluation answers (length arms included)."""
    labels = [f"{stage}-{arm}" for stage, arm, _ in trained_arms(cfg)] + [f"{LENGTH_STAGE}-{a}" for a in cfg.length_arms]
    folders = {label: stage_dir(cfg, "eval") / label for label in labels}
    outputs = {label: [o["output"] for o in read_json(folder / "model_outputs.json")] for label, folder in folders.items()}
    rows = length_diversity_table(outputs, cfg.diversity_cutoff)
    for row in rows:
        lengths = folders[row["name"]] / "model_outputs_lengths.json"
        if lengths.exists():  # answers generated before the cap was recorded have none
            record = read_json(lengths)
            row.update(max_new_tokens=record["max_new_tokens"], cap_share=record["cap_share"],
                       avg_new_tokens=sum(record["new_tokens"]) / max(1, len(record["new_tokens"])))
    return pd.DataFrame([{"run": cfg.run_name, "cutoff": cfg.diversity_cutoff, **r} for r in rows])


def published_table(run: str, seed: int = 0) -> pd.DataFrame:
    """Length, rep-2/3/4, log-diversity and GPT-4 win rate (with a bootstrap 95% interval) of the
    paper's published answers; a row says why when a file (or NEFTLIB_DATA_DIR) is missing."""
    try:
        root = data_dir()
    except FileNotFoundError as err:
        root, reason = None, f"skipped: {err}"
    else:
        reason = "skipped: NEFTLIB_DATA_DIR is not set, so the published answers are not available"
    rows = []
    for spec in PUBLISHED:
        row = {"run": run, **spec}
        folder = root / "alpaca_eval" / spec["model"] if root is not None else None
        if folder is None or not (folder / "model_outputs.json").exists():
            why = reason if folder is None else f"skipped: {folder / 'model_outputs.json'} not found"
            rows.append({**row, "status": why})
            continue
        stats = analyze_files([folder / "model_outputs.json"], cutoff=spec["cutoff"])[0]
        row.update(status="ok", **{k: v for k, v in stats.items() if k not in ("name", "path")})
        # Bootstrap 95% intervals over the answers, for the report's verdicts on the published pairs.
        texts = load_model_outputs(folder / "model_outputs.json")[1]
        chars, counts = np.array([len(t) for t in texts], dtype=float), ngram_counts(texts, spec["cutoff"])
        _, row["avg_chars_low"], row["avg_chars_high"] = paired_interval(lambda i: chars[i].mean(), len(texts),
                                                                          seed=seed)
        _, row["log_diversity_low"], row["log_diversity_high"] = paired_interval(
            lambda i: log_diversity_of(counts[i]), len(texts), seed=seed)
        release = release_values(texts, spec["cutoff"])  # the paper's Table 4 scale
        _, row["log_diversity_release_low"], row["log_diversity_release_high"] = paired_interval(
            lambda i: np.nanmean(release[i]) if np.isfinite(release[i]).any() else np.nan, len(texts), seed=seed)
        annotations = folder / "annotations_alpaca_eval_gpt4.json"
        if annotations.exists():
            annotated = load_annotations(annotations)
            prefs = [r["preference"] for r in annotated]
            wins = summarize_preferences(prefs, [len(r["output_2"]) for r in annotated])
            low, high = bootstrap_ci(win_values(prefs), seed=seed)
            row.update(judge=PUBLISHED_JUDGE, win_rate=wins["win_rate"], standard_error=wins["standard_error"],
                       n_judged=wins["n_total"], ci_low=low, ci_high=high)
        rows.append(row)
    return pd.DataFrame(rows)


def example_losses(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(mean loss over its response tokens, response tokens) per example, in eval mode, so without noise.

    The token-weighted mean of these is `batching.mean_loss` of the same examples.
    """
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[s:s + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            flat = logits[:, :-1].reshape(-1, logits.size(-1))
            nll = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                                    reduction="none").view(targets.shape)
            counts = (targets != IGNORE_INDEX).sum(dim=1)
            for total, n in zip(nll.sum(dim=1).tolist(), counts.tolist()):
                out.append((total / n if n else float("nan"), int(n)))
    return out


def example_losses_table(cfg: RunConfig, progress: bool = True, stages: tuple[str, ...] = ("train",)) -> pd.DataFrame:
    """Per-example loss without noise of every trained arm of `stages` on the training subset whose loss
    train.py measures (first `loss_subset` rows), the held-out rows and the other set: the paper's Figure 4
    (full fine-tuning; the QLoRA arms are left out by default, as a 4-bit forward pass is slow on CPU)."""
    sets = {"train": load_prepared(cfg, "train")[: cfg.loss_subset], "heldout": load_prepared(cfg, "heldout"),
            "other": load_prepared(cfg, "other")}
    pad_id = load_tokenizer(cfg.model).pad_token_id
    frames = []
    arms = [(stage, arm, folder) for stage, arm, folder in trained_arms(cfg) if stage in stages]
    for stage, arm, folder in tqdm(arms, desc="per-example losses", disable=not progress):
        table = _arm_example_losses(cfg, stage, folder, sets, pad_id)
        frames.append(table.assign(run=cfg.run_name, stage=stage, arm=arm))
    columns = ["run", "stage", "arm", "set", "example", "tokens", "loss"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _arm_example_losses(cfg: RunConfig, stage: str, folder: Path, sets: dict[str, list[dict]], pad_id: int) -> pd.DataFrame:
    """One finished arm's per-example losses, kept beside its weights (EXAMPLE_LOSSES): a finished arm's weights
    and the run's sets never change, and a rerun of the analysis then loads no model. A file whose sets or
    sizes differ from the run's is computed again."""
    path = folder / EXAMPLE_LOSSES
    if path.exists():
        kept = pd.read_csv(path)
        if kept.groupby("set").size().to_dict() == {name: len(rows) for name, rows in sets.items() if rows}:
            return kept
    model = load_trained(stage_config(cfg, stage)[0], folder)
    rows = [{"set": name, "example": i, "tokens": tokens, "loss": loss}
            for name, examples in sets.items()
            for i, (loss, tokens) in enumerate(example_losses(model, examples, pad_id, cfg.batch_size))]
    del model
    write_csv(path, rows)
    return pd.DataFrame(rows, columns=["set", "example", "tokens", "loss"])


def _variance_components(cfg: RunConfig) -> pd.DataFrame:
    # reads the tables analyze_run wrote just before it
    return run_components(cfg.run_name).assign(run=cfg.run_name)


ANALYSIS_TABLES = ("overfitting", "diversity", "example_losses", "published_diversity", "variance_components")


def analyze_run(cfg: RunConfig, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Every table, written to results/<run>/analysis/: overfitting.csv, diversity.csv, example_losses.csv
    (per-example loss without noise), published_diversity.csv (the paper's published answers),
    variance_components.csv (the run's own spread between prompts and seeds, and the change it could detect)
    and, when the profile has length arms, length_only.csv (neftlib.analysis.length_table).

    Each table is written atomically and kept: a rerun (or a run finished by an older version) only
    computes the tables that are missing.
    """
    out = stage_dir(cfg, "analysis")
    build = {"overfitting": lambda: overfitting_table(cfg, progress), "diversity": lambda: diversity_table(cfg),
             "example_losses": lambda: example_losses_table(cfg, progress),
             "published_diversity": lambda: published_table(cfg.run_name, seed=cfg.seed),
             "variance_components": lambda: _variance_components(cfg)}
    if cfg.length_arms:  # the paper's Table 5: length-only arms beside baseline and NEFTune, paired
        build["length_only"] = lambda: length_only_table(cfg.run_name, cfg.diversity_cutoff, seed=cfg.seed)
    tables = {}
    for name in build:
        path = out / f"{name}.csv"
        if path.exists():
            tables[name] = pd.read_csv(path)
            continue
        tables[name] = build[name]()
        write_csv(path, tables[name].to_dict("records"))
    if not is_done(out):
        mark_done(out, tables=list(build))
    return tables
