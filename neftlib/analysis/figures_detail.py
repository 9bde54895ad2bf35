"""The report's detail figures, rebuilt from results/<run>/ alone: per-example losses (the paper's Figure 4),
ROUGE-L / BLEU with intervals (Figure 5), the length and diversity table (Table 4) and the Gaussian ablation
(Table 6). Each saves its PNG under figures/<run>/ and returns the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from rouge_score import rouge_scorer

from neftlib.analysis.claims import pick_roles, read_table, run_info
from neftlib.analysis.verdict import paired_interval
from neftlib.analysis.paper import cell
from neftlib.analysis.paper_rows import T6
from neftlib.analysis.plots import (PAPER_COLOR, figure_legend, grouped_bars, headline, interval_bars, label,
                                    labelled_arms, new_figure, order_of, run_about, save_run)
from neftlib.base.io import read_json
from neftlib.base.paths import run_dir
from neftlib.evaluation.textstats import bleu

OURS_COLOR = "#1f77b4"


def _about(run: str) -> str:
    about = run_about(run)
    return f"{about['model']} on {about['train_data']}, {about['scale']}"


def loss_histograms(run: str) -> Figure:
    """Distributions of per-example loss without noise (the paper's Figure 4): on the training subset, held-out
    rows and another set, for every arm (analysis/example_losses.csv)."""
    info = run_info(run)
    frame = pd.read_csv(run_dir(run) / "analysis" / "example_losses.csv").merge(
        labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="left").dropna(subset=["loss"])
    if frame.empty:
        raise ValueError("example_losses.csv has no losses")
    names = {"train": "training subset", "heldout": "held-out rows (same data)",
             "other": f"other set: {info['other_data']}"}
    stages, sets = order_of(frame, "stage_name"), [s for s in names if s in set(frame["set"])]
    fig, axes = new_figure(len(sets), len(stages), width=4.2, height=3.2, sharex=True)
    for i, stage in enumerate(stages):
        for j, name in enumerate(sets):
            ax = axes[i * len(sets) + j]
            part = frame[(frame["stage_name"] == stage) & (frame["set"] == name)]
            sns.histplot(part, x="loss", hue="label", element="step", stat="density", common_norm=False, bins=20,
                         ax=ax, legend=(i, j) == (0, len(sets) - 1))
            ax.set(title=f"{stage}: {names[name]}", xlabel="loss per example (nats / response token)",
                   ylabel="density of examples")
    if axes[len(sets) - 1].get_legend() is not None:  # beside the panels, where it hides no bar
        sns.move_legend(axes[len(sets) - 1], "upper left", bbox_to_anchor=(1.02, 1), title="arm", fontsize=7,
                        title_fontsize=8, frameon=False)
    headline(fig, "Per-example loss without noise, baseline against noised arms (the paper's Figure 4)",
             f"{_about(run)}; paper: no printed numbers, NEFTune's training losses higher, other-set losses lower")
    return save_run(fig, run, "loss_histograms")


def rouge_bleu(run: str, n_boot: int = 500) -> Figure:
    """ROUGE-L and BLEU of each arm's answers to training prompts against the training responses, with
    bootstrap 95% intervals over the prompts (lower: less copying of the training set)."""
    refs = read_json(run_dir(run) / "data" / "train_rows.json")
    scorer, rows = rouge_scorer.RougeScorer(["rougeL"]), []
    for arm in labelled_arms(run).itertuples():
        path = run_dir(run) / "eval" / f"{arm.stage}-{arm.arm}" / "train_prompt_outputs.json"
        if not path.exists():
            continue
        answers = [o["output"] for o in read_json(path)]
        truth = [r["output"] for r in refs[: len(answers)]]
        per = np.array([100 * scorer.score(t, p)["rougeL"].fmeasure for p, t in zip(answers, truth)])
        for metric, stat, boots in (("rouge_l", lambda i: per[i].mean(), n_boot),
                                    ("bleu", lambda i: bleu([answers[k] for k in i], [truth[k] for k in i]),
                                     min(n_boot, 300))):
            value, low, high = paired_interval(stat, len(answers), boots)
            rows.append({"stage_name": arm.stage_name, "label": arm.label, "metric": metric, "value": value,
                         "low": low, "high": high, "n": len(answers)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise FileNotFoundError(f"no train_prompt_outputs.json under {run_dir(run) / 'eval'}")
    fig, axes = new_figure(2, width=5.6, height=4, sharey=True)
    for ax, metric in zip(axes, ("rouge_l", "bleu")):
        part = frame[frame["metric"] == metric]
        order, hues = order_of(part, "stage_name"), order_of(part, "label")
        sns.barplot(part, x="stage_name", y="value", hue="label", order=order, hue_order=hues, ax=ax,
                    legend=metric == "bleu")
        interval_bars(ax, part, "stage_name", "label", order, hues)
        ax.set(title={"rouge_l": "ROUGE-L", "bleu": "BLEU"}[metric], xlabel="", ylabel=label(metric))
    axes[1].legend(title="arm", fontsize=7)
    headline(fig, f"Copying of the training set: answers to {int(frame['n'].max())} training prompts "
             "(the paper's Figure 5)", f"{_about(run)}; whiskers: bootstrap 95% intervals over the prompts; paper: no "
             "printed numbers, NEFTune lower on both")
    return save_run(fig, run, "rouge_bleu")


def length_diversity_table(run: str) -> Figure:
    """The length and diversity table as a figure: our arms and, when analysed, the paper's published answers."""
    ours = pd.read_csv(run_dir(run) / "analysis" / "diversity.csv").assign(source=f"ours: {run_info(run)['model']}")
    published = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    frames = [ours]
    if published is not None and (published["status"] == "ok").all():
        frames.append(published.rename(columns={"model": "name"}).assign(source="paper's published answers"))
    frame = pd.concat(frames, ignore_index=True)
    columns = {"source": "from", "name": "model / arm", "cutoff": "cut at (words)", "n_kept": "answers kept",
               "avg_chars": "avg chars", "avg_tokens": "avg words", "rep_2": "rep-2 %", "rep_3": "rep-3 %",
               "rep_4": "rep-4 %", "log_diversity_release": "log-div. (release code, paper's scale)",
               "log_diversity": "log-div. (formula as written)"}
    columns = {key: name for key, name in columns.items() if key in frame}  # older tables lack a column
    cells = [[("-" if np.isnan(v) else f"{v:.2f}") if isinstance(v, float) else str(v) for v in row]
             for row in frame[list(columns)].itertuples(index=False)]
    fig, (ax,) = new_figure(width=13, height=1.1 + 0.26 * len(cells))
    ax.set_axis_off()
    # Columns as wide as their longest text, scaled to fill the axes: the table then stays inside the canvas.
    widths = [max(len(head), *(len(row[i]) for row in cells)) + 2 for i, head in enumerate(columns.values())]
    table = ax.table(cellText=cells, colLabels=list(columns.values()), cellLoc="center", bbox=[0, 0, 1, 1],
                     colWidths=[w / sum(widths) for w in widths])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    headline(fig, "Answer length, n-gram repetition and log-diversity on AlpacaEval prompts",
             f"repetition on answers cut at the cutoff, shorter ones dropped; ours: {_about(run)}")
    return save_run(fig, run, "length_diversity_table")


def gaussian_ablation(run: str, n_boot: int = 2000) -> Figure:
    """Uniform against Gaussian noise at the same alpha, beside the baseline: answer length and win rate, each
    with a bootstrap 95% interval, beside the paper's Table 6 (LLaMA-2-7B on Alpaca, ChatGPT judge)."""
    about, arms = run_about(run), labelled_arms(run)
    roles = pick_roles(arms, "train", run_info(run)["alpha"])
    if roles["gaussian"] is None:
        raise ValueError("no Gaussian-noise arm in this run's training stage")
    wins = pd.read_csv(run_dir(run) / "eval" / "winrates.csv")
    length, rate, n_prompts = [], [], 0
    for role in ("baseline", "neftune", "gaussian"):
        arm = roles[role]
        if arm is None:
            continue
        name = arms[(arms["stage"] == "train") & (arms["arm"] == arm)]["label"].iloc[0]
        chars = np.array([len(o["output"]) for o in read_json(
            run_dir(run) / "eval" / f"train-{arm}" / "model_outputs.json")], dtype=float)
        n_prompts = len(chars)
        length.append((name, *paired_interval(lambda i: chars[i].mean(), len(chars), n_boot)))
        win = wins[(wins["stage"] == "train") & (wins["arm"] == arm)].iloc[0]
        if "win_rate" in win and pd.notna(win["win_rate"]):
            rate.append((name, win["win_rate"], win["ci_low"], win["ci_high"]))
    alpha = float(arms.loc[(arms["stage"] == "train") & (arms["arm"] == roles["gaussian"]), "alpha"].iloc[0])
    paper_rows = (("no noise", "LLaMA-2-7b"), ("uniform, alpha 5", "+Uniform Noise 5"),
                  ("Gaussian, alpha 5", "+Gaussian Noise 5"))
    judged = f" (win rates judged by {about['judge']})" if rate else ""
    panels = [("avg_chars", "Alpaca chars", length, judged)]
    if rate:
        panels.append(("win_rate", "Alpaca win", rate, judged))
    fig, axes = new_figure(len(panels), width=5.6, height=4.8)
    for ax, (metric, column, ours, judge) in zip(axes, panels):
        grouped_bars(ax, [
            {"label": "paper, Table 6: LLaMA-2-7B on Alpaca, 805 prompts (win rates judged by ChatGPT)",
             "color": PAPER_COLOR, "bars": [(n, cell(T6, row, column), np.nan, np.nan) for n, row in paper_rows]},
            {"label": f"ours: {about['model']}, {n_prompts} prompts{judge}", "color": OURS_COLOR,
             "bars": [(n, v, lo, hi) for n, v, lo, hi in ours]}])
        ax.set(title={"avg_chars": "Average answer length", "win_rate": "Win rate"}[metric],
               ylabel=label(metric) + ", 95% interval")
        if metric == "win_rate":
            ax.set_ylim(0, 100)
    figure_legend(fig)
    headline(fig, f"Gaussian against uniform noise at the same alpha ({alpha:g})", _about(run))
    return save_run(fig, run, "gaussian_ablation")
