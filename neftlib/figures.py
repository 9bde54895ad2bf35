"""Figures rebuilt from results/<run>/ alone (no retraining), saved under figures/<run>/."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless papermill kernels have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from neftlib.paths import figures_dir, run_dir  # noqa: E402


def _save(fig, run: str, name: str) -> Path:
    folder = figures_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def token_lengths(run: str, model: str, source: str, max_length: int):
    """Histogram of tokens per example for each prepared set."""
    frame = pd.read_csv(run_dir(run) / "data" / "lengths.csv")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(frame, x="tokens", hue="set", element="step", bins=40, ax=ax)
    ax.axvline(max_length, color="k", ls="--", lw=1, label=f"max_length={max_length}")
    ax.set(title=f"Tokens per example ({model} tokenizer)\n{Path(source).name}", xlabel="tokens", ylabel="examples")
    _save(fig, run, "token_lengths")
    return fig


def loss_curves(run: str, stage: str, model: str):
    """Training loss per step for each arm of a stage (with noise where the arm has it)."""
    frames = [pd.read_csv(p) for p in sorted((run_dir(run) / stage).glob("*/log.csv"))]
    frame = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(frame, x="step", y="loss", hue="arm", ax=ax)
    ax.set(title=f"Training loss, {stage} stage ({model}, run {run})", xlabel="optimizer step",
           ylabel="loss (noisy inputs for noised arms)")
    _save(fig, run, f"loss_{stage}")
    return fig


def win_rates(run: str, judge: str):
    """Figure-1 style bars: win rate against the reference answers with 95% bootstrap intervals."""
    frame = pd.read_csv(run_dir(run) / "eval" / "winrates.csv")
    frame["label"] = frame["stage"] + "-" + frame["arm"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(frame, x="label", y="win_rate", hue="arm", dodge=False, ax=ax)
    ax.errorbar(range(len(frame)), frame["win_rate"], yerr=[frame["win_rate"] - frame["ci_low"],
                frame["ci_high"] - frame["win_rate"]], fmt="none", color="k", capsize=4)
    title = f"Win rate vs reference answers (judge: {judge}, run {run})"
    if "judge_agreement" in frame and frame["judge_agreement"].notna().any():
        # How far to trust the judge, on the figure itself.
        title += (f"\njudge agrees with GPT-4 on {frame['judge_agreement'].iloc[0]:.0%} of "
                  f"{int(frame['agreement_n'].iloc[0])} published pairs")
    ax.set(title=title, xlabel="", ylabel="win rate (%)", ylim=(0, 100))
    _save(fig, run, "win_rates")
    return fig


def overfitting(run: str):
    """Noise-free training loss vs held-out loss, and ROUGE-L / BLEU on training prompts, per arm."""
    frame = pd.read_csv(run_dir(run) / "analysis" / "overfitting.csv")
    frame["label"] = frame["stage"] + "-" + frame["arm"]
    losses = frame.melt(id_vars="label", value_vars=[c for c in ("train_loss_nonoise", "heldout_loss", "other_loss")
                                                     if c in frame and frame[c].notna().any()],
                        var_name="measured on", value_name="loss")
    overlap = frame.melt(id_vars="label", value_vars=["rouge_l", "bleu"], var_name="metric", value_name="score")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.barplot(losses, x="label", y="loss", hue="measured on", ax=a)
    a.set(title=f"Loss without noise (run {run})", xlabel="")
    sns.barplot(overlap, x="label", y="score", hue="metric", ax=b)
    b.set(title="Answers to training prompts vs training responses", xlabel="")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    _save(fig, run, "overfitting")
    return fig


def lengths(run: str):
    """Average answer length and log-diversity per arm."""
    frame = pd.read_csv(run_dir(run) / "analysis" / "diversity.csv")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    sns.barplot(frame, x="name", y="avg_chars", ax=a)
    a.set(title=f"Average answer length (run {run})", xlabel="", ylabel="characters")
    sns.barplot(frame, x="name", y="log_diversity", ax=b)
    b.set(title=f"Log-diversity (answers cut at {int(frame['cutoff'].iloc[0])} words)", xlabel="")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    _save(fig, run, "length_diversity")
    return fig
