"""Figures rebuilt from results/<run>/ alone (no retraining): each function saves its PNG under figures/<run>/
and returns the figure, so a notebook shows it inline. The paper-beside-ours drawings are in
neftlib.analysis.draw; the report's detail figures in neftlib.analysis.figures_detail."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from neftlib.analysis.claims import read_table, run_info
from neftlib.analysis.draw import draw_alpha_sweep, draw_figure1, draw_lengths, draw_win_rates
from neftlib.analysis.figures_detail import gaussian_ablation, length_diversity_table, loss_histograms, rouge_bleu
from neftlib.analysis.plots import figure_legend, headline, label, labelled_arms, new_figure, run_about, save_run
from neftlib.base.io import read_json
from neftlib.base.paths import figures_dir, run_dir

SET_NAMES = {"train": "training set", "heldout": "held-out rows (same source)", "other": "another set"}


def token_lengths(run: str, model: str, source: str, max_length: int) -> Figure:
    """Histogram of tokens per example for each prepared set, with the length examples were cut at."""
    frame = pd.read_csv(run_dir(run) / "data" / "lengths.csv")
    frame["set"] = frame["set"].map(lambda s: f"{SET_NAMES.get(s, s)} ({(frame['set'] == s).sum()})")
    fig, (ax,) = new_figure(width=7, height=3.8)
    sns.histplot(frame, x="tokens", hue="set", element="step", bins=40, ax=ax)
    ax.axvline(max_length, color="k", ls="--", lw=1)
    ax.annotate(f"cut at max_length = {max_length}", (max_length, ax.get_ylim()[1] * 0.9), xytext=(-4, 0),
                textcoords="offset points", ha="right", fontsize=8)
    ax.set(xlabel=label("tokens"), ylabel="examples")
    headline(fig, f"Tokens per example after formatting ({model} tokenizer)", f"training data: {Path(source).name}")
    return save_run(fig, run, "token_lengths")


def loss_curves(run: str, stage: str, model: str) -> Figure | None:
    """Training loss per step for each arm of a stage (on noisy inputs where the arm adds noise), with the loss
    measured without noise after training marked at the end; None when the stage trained no arm."""
    frames = [pd.read_csv(p) for p in sorted((run_dir(run) / stage).glob("*/log.csv"))]
    if not frames:  # a profile may train no arm in a stage (the sweep skips QLoRA)
        return None
    frame = pd.concat(frames, ignore_index=True)
    fig, (ax,) = new_figure(width=7.5, height=4)
    sns.lineplot(frame, x="step", y="loss", hue="arm", ax=ax)
    summary = read_table(run_dir(run) / stage / "summary.csv")
    if summary is not None and "train_nonoise_loss" in summary:
        palette = {line.get_label(): line.get_color() for line in ax.get_lines()}
        for row in summary.itertuples():
            ax.scatter(row.steps, row.train_nonoise_loss, marker="x", s=50, color=palette.get(row.arm, "k"),
                       zorder=5, label="_nolegend_")
    ax.set(xlabel=label("step"), ylabel="training loss (nats / token)")
    ax.legend(title="arm", fontsize=8)
    method = "QLoRA" if stage == "qlora" else f"{run_info(run)['method']} fine-tune"
    headline(fig, f"Training loss per step, {method} ({model})",
             "lines: loss on the inputs as trained (noisy for noised arms); x: loss without noise after training")
    return save_run(fig, run, f"loss_{stage}")


def win_rates(run: str, judge: str | None = None) -> Figure | None:
    """Each arm's win rate against the reference answers, with its bootstrap 95% interval, beside the paper's
    Table 1 pair (the judge is read from the results; `judge` is kept for older callers). None without a judge."""
    frame = pd.read_csv(run_dir(run) / "eval" / "winrates.csv")
    if "win_rate" not in frame or not frame["win_rate"].notna().any():  # judge='none': answers only
        return None
    ours = frame.merge(labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="left")
    ours["label"] = ours["label"].fillna(ours["arm"])
    ours["stage_name"] = ours["stage_name"].fillna(ours["stage"].replace({"length": "length-only (baseline model)"}))
    fig = draw_win_rates(ours, run_about(run))
    return save_run(fig, run, "win_rates") if fig is not None else None


OVERFITTING = {"train_loss_nonoise": "training subset\n(paper: higher)", "heldout_loss": "held-out rows\n(paper: lower)",
               "other_loss": "another set\n(paper: lower)", "rouge_l": "ROUGE-L\n(paper: lower)",
               "bleu": "BLEU\n(paper: lower)"}


def overfitting_changes(run: str) -> pd.DataFrame:
    """Per noised arm and metric of overfitting.csv: its change from the no-noise arm of the same stage and seed."""
    frame = pd.read_csv(run_dir(run) / "analysis" / "overfitting.csv")
    arms = labelled_arms(run)
    frame = frame.merge(arms[[c for c in ("stage", "arm", "label", "seed") if c in arms]], how="left")
    if "seed" not in frame or frame["seed"].isna().all():
        frame["seed"] = run_info(run)["seed"]
    rows = []
    for (stage, _), part in frame.groupby(["stage", "seed"], sort=False):
        base = part[part["alpha"] == 0]
        if base.empty:
            continue
        for row in part[part["alpha"] > 0].itertuples():
            rows += [{"arm": f"{stage}: {row.label}", "metric": OVERFITTING[m],
                      "change": getattr(row, m) - base[m].iloc[0], "kind": "copy" if m in ("rouge_l", "bleu") else "loss"}
                     for m in OVERFITTING if m in part and pd.notna(getattr(row, m))]
    return pd.DataFrame(rows, columns=["arm", "metric", "change", "kind"])


def overfitting(run: str) -> Figure:
    """The change, from the no-noise arm of the same stage and seed, of the losses without noise (training subset,
    held-out rows, another set) and of ROUGE-L / BLEU against the training responses (the paper's Figures 4-5)."""
    changes = overfitting_changes(run)
    if changes.empty:
        raise ValueError(f"{run_dir(run) / 'analysis' / 'overfitting.csv'} has no noised arm beside a no-noise arm")
    fig, (a, b) = new_figure(2, width=6, height=4.4)
    for ax, kind, ylabel in ((a, "loss", "change in loss without noise (nats / token)"),
                             (b, "copy", "change in score (points of 0-100)")):
        sns.barplot(changes[changes["kind"] == kind], x="metric", y="change", hue="arm", ax=ax, legend=ax is a)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="", ylabel=ylabel)
    a.set_title("Losses without noise after training", fontsize=10)
    b.set_title("Answers to training prompts against the training responses", fontsize=10)
    a.get_legend().remove()
    figure_legend(fig, ncols=2)
    headline(fig, "Memorising the training set: each noised arm's change from the no-noise arm",
             f"{_about_line(run)}. The paper (Figures 4-5, LLaMA-2-7B on Alpaca) prints no numbers: with NEFTune, "
             "training loss higher, other-set loss lower, ROUGE-L and BLEU lower. Intervals: notebook 06.")
    return save_run(fig, run, "overfitting")


def lengths(run: str) -> Figure:
    """Answer length, log-diversity and 2-gram repetition per arm, beside the paper's Table 4 and its published
    answers (when measured in analysis/published_diversity.csv)."""
    ours = pd.read_csv(run_dir(run) / "analysis" / "diversity.csv")
    return save_run(draw_lengths(ours, _published(run), run_about(run)), run, "length_diversity")


def figure1(run: str) -> Figure:
    """The paper's Figure 1 beside the paper's published answers (GPT-4 judgments, recomputed) and our win
    rates; a panel with nothing to show is left out."""
    wins = read_table(run_dir(run) / "eval" / "winrates.csv")
    ours = None
    if wins is not None and "win_rate" in wins:
        # trained arms only: the length-only arms belong to Table 5, not Figure 1
        ours = wins.merge(labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="inner")
    return save_run(draw_figure1(ours, _published(run), run_about(run)), run, "figure1_paper_vs_ours")


def sweep_figure(run: str) -> Figure | None:
    """Every metric's change from the same seed's alpha-0 arm against alpha, with the 95% t interval of the per-seed
    paired changes (analysis/arm_metrics.csv, written by sweep.sweep_tables); None with one seed per alpha."""
    metrics = pd.read_csv(run_dir(run) / "analysis" / "arm_metrics.csv")
    fig = draw_alpha_sweep(metrics, _about_line(run), judge=run_about(run)["judge"].split(" (")[0])
    return save_run(fig, run, "alpha_sweep") if fig is not None else None


def _published(run: str) -> pd.DataFrame | None:
    table = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    return table if table is not None and (table["status"] == "ok").all() else None


def _about_line(run: str) -> str:
    about = run_about(run)
    return f"{about['model']} on {about['train_data']}, {about['scale']}"


def rebuild_all(run: str) -> dict[str, str]:
    """Every figure of a run from results/<run>/ alone; returns each figure's path, or why it was skipped."""
    info = run_info(run)
    data = read_json(run_dir(run) / "data" / "report.json") if (run_dir(run) / "data" / "report.json").exists() else {}
    config = read_json(run_dir(run) / "config.json") if (run_dir(run) / "config.json").exists() else {}
    jobs = {
        "token_lengths": lambda: token_lengths(run, info["model"], data["train_source"], config["max_length"]),
        "loss_train": lambda: loss_curves(run, "train", info["model"]),
        "loss_qlora": lambda: loss_curves(run, "qlora", info["model"]),
        "win_rates": lambda: win_rates(run), "figure1_paper_vs_ours": lambda: figure1(run),
        "overfitting": lambda: overfitting(run), "loss_histograms": lambda: loss_histograms(run),
        "rouge_bleu": lambda: rouge_bleu(run), "length_diversity": lambda: lengths(run),
        "length_diversity_table": lambda: length_diversity_table(run),
        "gaussian_ablation": lambda: gaussian_ablation(run),
        "alpha_sweep": lambda: sweep_figure(run),
    }
    made = {}
    for name, draw in jobs.items():
        try:
            fig = draw()
        except (FileNotFoundError, KeyError, ValueError, IndexError) as err:
            made[name] = f"skipped: {type(err).__name__}: {err}"
            continue
        made[name] = str(figures_dir(run) / f"{name}.png") if fig is not None else "skipped: nothing to draw"
    return made
