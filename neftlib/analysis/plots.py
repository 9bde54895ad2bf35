"""What every figure shares: figures made without pyplot, the measured columns in words with their units,
bars with their intervals, the paper's number as a marked reference, and an atomic save.

Figures are `matplotlib.figure.Figure` objects, never pyplot's: no backend is chosen here, nothing global
changes, and a notebook shows each figure once, as the value a figure function returns.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from neftlib.analysis.claims import arm_table, run_info
from neftlib.base.io import read_json
from neftlib.base.paths import figures_dir, run_dir

# A measured column -> how an axis names it, with its unit.
LABELS = {
    "train_loss_nonoise": "training loss without noise (nats / token)",
    "heldout_loss": "held-out loss (nats / token)",
    "other_loss": "loss on another set (nats / token)",
    "loss": "loss (nats / token)",
    "rouge_l": "ROUGE-L vs training responses (0-100)",
    "bleu": "BLEU vs training responses (0-100)",
    "avg_chars": "answer length (characters)",
    "avg_tokens": "answer length (words)",
    "rep_2": "2-gram repetition (%)",
    "rep_3": "3-gram repetition (%)",
    "rep_4": "4-gram repetition (%)",
    "log_diversity": "log-diversity (formula as written)",
    "log_diversity_release": "log-diversity (release code: the paper's scale)",
    "win_rate": "win rate vs Text-Davinci-003 (%)",
    "tokens": "tokens per example",
    "step": "optimizer step",
}
# Shorter names for a legend or a panel title.
NAMES = {
    "train_loss_nonoise": "training loss without noise", "heldout_loss": "held-out loss",
    "other_loss": "loss on another set", "rouge_l": "ROUGE-L on training prompts",
    "bleu": "BLEU on training prompts", "avg_chars": "answer length", "rep_2": "2-gram repetition",
    "rep_3": "3-gram repetition", "rep_4": "4-gram repetition", "log_diversity": "log-diversity (formula)",
    "log_diversity_release": "log-diversity (release code)", "win_rate": "win rate",
}
UNITS = {"train_loss_nonoise": "nats / token", "heldout_loss": "nats / token", "other_loss": "nats / token",
         "rouge_l": "points", "bleu": "points", "avg_chars": "characters", "rep_2": "% points", "rep_3": "% points",
         "rep_4": "% points", "log_diversity": "", "log_diversity_release": "", "win_rate": "% points"}
PAPER_COLOR, PUBLISHED_COLOR = "#7f7f7f", "#bcbd22"


def label(column: str) -> str:
    """An axis label in words with its unit; a column without one is refused rather than printed raw."""
    if column not in LABELS:
        raise KeyError(f"no axis label for column {column!r}: add it to neftlib.analysis.plots.LABELS")
    return LABELS[column]


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 5.0, height: float = 3.6,
               **subplots) -> tuple[Figure, list[Axes]]:
    """A figure of nrows x ncols panels (a flat list), laid out so titles and legends stay inside the canvas."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, [ax for row in axes for ax in row]


def headline(fig: Figure, title: str, about: str = "") -> None:
    """The figure's title and, below it, what it was measured on, wrapped to stay inside the canvas."""
    width = int(fig.get_figwidth() * 11)
    fig.suptitle("\n".join([textwrap.fill(title, width), *([textwrap.fill(about, int(width * 1.15))] if about else [])]),
                 fontsize=10)


def figure_legend(fig: Figure, ncols: int = 1) -> None:
    """One legend below the panels for every labelled artist of the figure, each label once and wrapped."""
    found: dict = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            found.setdefault(name, handle)
    if found:
        width = int(fig.get_figwidth() * 16 / ncols)
        fig.legend(list(found.values()), [textwrap.fill(name, width) for name in found], loc="outside lower center",
                   fontsize=7, ncols=ncols)


def short_number(value: float) -> str:
    """A value printed on a bar: three significant digits, never in exponent notation."""
    if not np.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def interval_bars(ax: Axes, frame: pd.DataFrame, x: str, hue: str, order: list, hues: list, y: str = "value",
                  low: str = "low", high: str = "high") -> None:
    """Whiskers for precomputed intervals on seaborn's bars (one container per hue level, in `hues` order)."""
    for container, level in zip(ax.containers, hues):
        for bar in container:
            where = order[int(round(bar.get_x() + bar.get_width() / 2))]
            row = frame[(frame[x] == where) & (frame[hue] == level)]
            if row.empty or pd.isna(row[low].iloc[0]):
                continue
            value = row[y].iloc[0]
            ax.errorbar(bar.get_x() + bar.get_width() / 2, value, fmt="none", color="k", capsize=3, lw=1,
                        yerr=[[value - row[low].iloc[0]], [row[high].iloc[0] - value]])


def order_of(frame: pd.DataFrame, column: str) -> list:
    """The values of a column in the order they first appear."""
    return list(dict.fromkeys(frame[column]))


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def empty_axes(fig: Figure) -> list[Axes]:
    """Panels that show nothing: no lines, bars, patches, images, tables or text of their own."""
    found = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        drawn = ax.lines or ax.patches or ax.collections or ax.images or ax.tables or ax.texts or ax.containers
        if not drawn:
            found.append(ax)
    return found


def grouped_bars(ax: Axes, groups: list[dict], *, rotation: float = 30) -> None:
    """Bars side by side in groups, a gap between groups: each group {"label": its legend entry (whose numbers,
    which judge, what scale), "color", "bars": [(name under the bar, value, low, high)]}. Intervals as whiskers,
    each value printed above its bar; the caller places the legend (figure_legend)."""
    x, ticks, names = 0.0, [], []
    for group in groups:
        for i, (name, value, low, high) in enumerate(group["bars"]):
            ax.bar(x, value, width=0.8, color=group["color"], edgecolor="k", linewidth=0.5,
                   label=group["label"] if i == 0 else "_nolegend_")
            top = value
            if np.isfinite(low) and np.isfinite(high):
                ax.errorbar(x, value, yerr=[[value - low], [high - value]], fmt="none", color="k", capsize=3, lw=1)
                top = high
            ax.annotate(short_number(value), (x, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
            ticks.append(x)
            names.append(name)
            x += 1
        x += 0.7
    ax.set_xticks(ticks, names, rotation=rotation, ha="right" if rotation else "center", fontsize=8)
    ax.margins(y=0.12)  # room for the printed values


def labelled_arms(run: str) -> pd.DataFrame:
    """Every trained arm of a run, with a label that says its noise and a name for its stage."""
    arms, method = arm_table(run), run_info(run)["method"]
    arms["label"] = [f"{a} (no noise)" if al == 0 else f"{a} ({d}, alpha {al:g})"
                     for a, al, d in zip(arms["arm"], arms["alpha"], arms["distribution"])]
    arms["stage_name"] = arms["stage"].map({"train": f"{method} fine-tune", "qlora": "QLoRA"}).fillna(arms["stage"])
    return arms


def run_about(run: str) -> dict[str, str]:
    """Our side of a figure in words: model, training data, judge (with its agreement with GPT-4) and scale."""
    info, folder = run_info(run), run_dir(run)
    data = read_json(folder / "data" / "report.json") if (folder / "data" / "report.json").exists() else {}
    epochs = info.get("epochs")
    scale = f"{data.get('train_examples', '?')} training examples" + (f", {epochs:g} epoch(s)" if epochs else "") + \
        f", {data.get('eval_prompts', '?')} prompts"
    return {"model": str(info["model"]), "train_data": info["train_data"], "scale": scale,
            "judge": info["judge"].replace(" vs Text-Davinci-003", "")}


def save_run(fig: Figure, run: str, name: str) -> Figure:
    """Save a run's figure as figures/<run>/<name>.png and return the figure (a notebook then shows it)."""
    save(fig, figures_dir(run) / f"{name}.png")
    return fig
