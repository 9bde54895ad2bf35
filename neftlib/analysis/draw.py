"""The figures that set the paper's numbers beside ours, drawn from tables alone: a run's results
(neftlib.analysis.figures reads them) or a committed evidence snapshot (neftlib.analysis.evidence).

`about` describes our side: {"model", "train_data", "judge", "scale", "prompts"}; every legend names the judge and
the scale of its numbers, and a panel with nothing to show is left out.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from neftlib.analysis.paper import FIGURE1, cell, paper_dataset, table
from neftlib.analysis.paper_rows import T4, T6
from neftlib.analysis.plots import (NAMES, PAPER_COLOR, PUBLISHED_COLOR, UNITS, figure_legend, grouped_bars, headline,
                                    label, new_figure)
from neftlib.analysis.sweep import METRICS
from neftlib.analysis.verdict import judge_decides, seeds_test

OURS_COLOR, OURS_QLORA_COLOR = "#1f77b4", "#2ca02c"
PAPER_MODEL = "LLaMA-2-7B"
# Metrics of the alpha-sweep figure, in reading order: memorising, copying, answers, the judge.
SWEEP_PANELS = ("train_loss_nonoise", "heldout_loss", "other_loss", "rouge_l", "bleu", "avg_chars", "rep_2",
                "log_diversity_release", "win_rate")
# Table 6's Alpaca columns by metric: the paper's change at each alpha of uniform noise (LLaMA-2-7B).
T6_ALPACA = {"avg_chars": "Alpaca chars", "win_rate": "Alpaca win"}
T4_ALPACA = {"avg_chars": "char_length", "rep_2": "rep2_percent", "log_diversity_release": "log_diversity"}


def paper_column(train_data: str) -> str:
    """Figure 1's data set matching our training data; Alpaca when none does (the data every profile uses)."""
    return paper_dataset(train_data) or "Alpaca"


def arm_bar(label_: str, value: float, low: float = math.nan, high: float = math.nan) -> tuple:
    return (label_, float(value), low, high)


def _ours_label(about: dict, judged: bool = True, stage: str = "") -> str:
    judge = f", judge {about['judge']}" if judged else ""
    return f"ours{', ' + stage if stage else ''}: {about['model']} on {about['train_data']}, {about['scale']}{judge}"


def draw_win_rates(ours: pd.DataFrame, about: dict, calibrated: bool | None = None) -> Figure | None:
    """Each of our arms' win rate with its 95% interval, beside the paper's Table 1 pair for the same data
    (GPT-4 judge); `ours` has label, stage_name, win_rate, ci_low, ci_high (and n_clipped, n_draws, n_total). A
    judge that cannot decide (neftlib.analysis.verdict) is drawn on an axis of its own, never on GPT-4's. None when
    nothing was judged."""
    ours = ours[ours["win_rate"].notna()]
    if ours.empty:
        return None
    data = paper_column(about["train_data"])
    before, after = FIGURE1[data]
    paper = {"label": f"paper, Table 1: {PAPER_MODEL} full fine-tune on {data}, 805 prompts, judge GPT-4",
             "color": PAPER_COLOR, "bars": [arm_bar("no noise", before), arm_bar("NEFTune alpha 5", after)]}
    groups = []
    for stage, part in ours.groupby("stage_name", sort=False):
        groups.append({"label": _ours_label(about, stage=stage), "color": OURS_COLOR if not groups else
                       OURS_QLORA_COLOR,
                       "bars": [arm_bar(r.label, r.win_rate, r.ci_low, r.ci_high) for r in part.itertuples()]})
    decides, why = judge_decides(ours, calibrated)
    n_ours = sum(len(g["bars"]) for g in groups)
    if decides:
        fig, (ax,) = new_figure(width=max(8.0, 0.9 * (n_ours + 2) + 3), height=5.2)
        grouped_bars(ax, [paper, *groups])
        axes = [ax]
    else:
        fig, axes = new_figure(2, width=max(4.0, 0.9 * n_ours + 2), height=5.2,
                               gridspec_kw={"width_ratios": [3, max(3, n_ours)]})
        grouped_bars(axes[0], [paper])
        axes[0].set_title("the paper (GPT-4 judge)", fontsize=9)
        grouped_bars(axes[1], groups)
        axes[1].set_title(f"ours: judge cannot decide\n({why}); not on GPT-4's scale", fontsize=8)
    figure_legend(fig)
    for ax in axes:
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set(ylabel=label("win_rate"), ylim=(0, 100))
    clipped = int(ours["n_clipped"].fillna(0).sum()) if "n_clipped" in ours else 0
    headline(fig, "Win rate against Text-Davinci-003's answers: the paper beside this run",
             "Discrete votes with 95% intervals. A win rate is only comparable with one from the same judge; "
             "50% = as good as the reference."
             + (f" Our judge saw {clipped} answers clipped to fit its context." if clipped else ""))
    return fig


def _length_groups(metric: str, ours: pd.DataFrame, published: pd.DataFrame | None, about: dict) -> list[dict]:
    """The paper's Table 4 pair, the paper's published answers (when measured) and our arms, for one metric."""
    data = paper_column(about["train_data"])
    column = next((c for c in table(T4)["columns"] if c.startswith(data)), None)
    groups = []
    if column is not None:
        prefix = T4_ALPACA[metric]
        groups.append({"label": f"paper, Table 4: {PAPER_MODEL} on {data}, 805 prompts",
                       "color": PAPER_COLOR, "bars": [
                           arm_bar("no noise", cell(T4, f"{prefix}.LLaMA-2 7B", column)),
                           arm_bar(f"NEFTune {column.split('(')[-1].rstrip(')').replace('=', ' ')}",
                                   cell(T4, f"{prefix}.+NEFT", column))]})
    if published is not None and metric in published:
        pair = published[published["pair"] == "alpaca"]
        if len(pair) == 2 and pair[metric].notna().all():
            groups.append({"label": "paper's published answers: Alpaca-7B without / with NEFTune, 805 prompts",
                           "color": PUBLISHED_COLOR,
                           "bars": [arm_bar(m, v) for m, v in zip(pair["model"], pair[metric])]})
    if metric in ours and ours[metric].notna().any():
        groups.append({"label": _ours_label(about, judged=False), "color": OURS_COLOR,
                       "bars": [arm_bar(n, v) for n, v in zip(ours["name"], ours[metric]) if pd.notna(v)]})
    return groups


def draw_lengths(ours: pd.DataFrame, published: pd.DataFrame | None, about: dict) -> Figure:
    """Answer length, log-diversity (release code) and 2-gram repetition: the paper's Table 4 and its published
    answers beside our arms (`ours`: diversity.csv, one row per arm named in `name`)."""
    groups = {m: _length_groups(m, ours, published, about) for m in ("avg_chars", "log_diversity_release", "rep_2")}
    groups = {m: g for m, g in groups.items() if any(group["label"].startswith("ours") for group in g)}
    # Wide enough that the values printed above the bars do not run into each other, tall enough for the
    # slanted arm names under them and the axis label beside them.
    bars = max((sum(len(group["bars"]) for group in g) for g in groups.values()), default=0)
    fig, axes = new_figure(len(groups), width=max(5.2, 0.45 * bars + 1.2), height=4.6 if bars <= 8 else 5.4)
    for ax, (metric, metric_groups) in zip(axes, groups.items()):
        grouped_bars(ax, metric_groups)
        ax.set(title=NAMES[metric], ylabel=label(metric))
    figure_legend(fig)
    cutoff = int(ours["cutoff"].iloc[0]) if "cutoff" in ours else 50
    headline(fig, "Answer length and diversity: the paper beside this run",
             f"Repetition and diversity on answers cut at {cutoff} words (the paper: 50 for Alpaca); no judge involved")
    return fig


def paper_sweep_note(metric: str) -> str:
    """The paper's change from no noise for a metric of the sweep, in words, or why there is none."""
    if metric in T6_ALPACA:
        column = T6_ALPACA[metric]
        base = cell(T6, "LLaMA-2-7b", column)
        changes = ", ".join(f"{cell(T6, f'+Uniform Noise {a}', column) - base:+.3g} at {a}" for a in (5, 10, 15))
        judge = " (ChatGPT judge)" if metric == "win_rate" else ""
        return f"paper, Table 6, {PAPER_MODEL} on Alpaca{judge}: {changes}"
    if metric in T4_ALPACA:
        prefix, column = T4_ALPACA[metric], "Alpaca (alpha=5)"
        change = cell(T4, f"{prefix}.+NEFT", column) - cell(T4, f"{prefix}.LLaMA-2 7B", column)
        return f"paper, Table 4, {PAPER_MODEL} on Alpaca: {change:+.3g} at 5"
    return "paper: Figures 4-5, no printed numbers"


def draw_alpha_sweep(metrics: pd.DataFrame, about: str, judge: str = "") -> Figure | None:
    """Each metric's change from the alpha-0 arm of the same training seed, against alpha: seeds as points, their
    mean as a line, and the 95% t interval of the per-seed paired changes as a bar (the interval the verdict reads,
    neftlib.analysis.verdict.seeds_test); the paper's change under each panel. `metrics`: arm_metrics.csv (one row
    per arm). None with fewer than two training seeds: one seed has no interval to draw (the claims table has it)."""
    frame = metrics[metrics["distribution"] == "uniform"]
    panels = [m for m in SWEEP_PANELS if m in frame and frame[m].notna().any()]
    seeds = sorted(frame["seed"].dropna().unique()) if "seed" in frame else []
    if frame.empty or not panels or len(seeds) < 2:
        return None
    cols = min(3, len(panels))
    fig, axes = new_figure(cols, math.ceil(len(panels) / cols), width=4.4, height=3.4)
    for ax, metric in zip(axes, panels):
        for i, (stage, part) in enumerate(frame.groupby("stage", sort=False)):
            base = part[part["alpha"] == 0].drop_duplicates("seed").set_index("seed")[metric]
            noised = part[part["seed"].isin(base.index)].copy()
            noised["change"] = noised[metric].to_numpy(float) - base.loc[noised["seed"]].to_numpy(float)
            color = OURS_COLOR if i == 0 else OURS_QLORA_COLOR
            ax.scatter(noised["alpha"], noised["change"], s=14, color=color, alpha=0.7, zorder=3,
                       label=f"{stage} stage: one training seed")
            mean = noised.groupby("alpha")["change"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=color, marker="o", lw=1.5, zorder=4,
                    label=f"{stage} stage: mean of the per-seed changes")
            for alpha, changes in noised[noised["alpha"] > 0].groupby("alpha")["change"]:
                if len(changes) >= 2:
                    test = seeds_test(changes.tolist())
                    ax.vlines(alpha, test.low, test.high, color=color, lw=5, alpha=0.3, zorder=2,
                              label="95% interval of the change (t over the seeds' paired changes)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(sorted(frame["alpha"].unique()))
        direction = {1: "up", -1: "down", 0: "unchanged"}[METRICS[metric]]
        unit = f" ({UNITS[metric]})" if UNITS.get(metric) else ""
        title = NAMES[metric] + (f", judge {judge}" if metric == "win_rate" and judge else "")
        ax.set_title(f"{title}\n(paper: {direction})", fontsize=9)
        ax.set(ylabel=f"change from alpha 0{unit}")
        ax.set_xlabel("alpha (noise scale)\n" + textwrap.fill(paper_sweep_note(metric), 60), fontsize=8)
    for ax in axes[len(panels):]:  # a grid cell with no panel is left out, not drawn empty
        fig.delaxes(ax)
    figure_legend(fig, ncols=3)
    headline(fig, "NEFTune alpha sweep: each metric's change from the same training seed's alpha-0 arm",
             f"{about}; {len(seeds)} training seeds, paired per seed")
    return fig


PUBLISHED_NAMES = {"alpaca-7b": "Alpaca-7B", "alpaca-7b-neft": "Alpaca-7B-NEFT", "llama-2-7b-chat-hf": "LLaMA-2-7B-Chat",
                   "llama-2-chat-7b-evol70k-neft": "LLaMA-2-7B-Chat\n+Evol70k-NEFT"}


def draw_figure1(ours: pd.DataFrame | None, published: pd.DataFrame | None, about: dict) -> Figure:
    """The paper's Figure 1 (GPT-4 judge), the paper's published answers (GPT-4 annotations, recomputed) and our
    win rates (`ours`: label, stage_name, win_rate, ci_low, ci_high), one panel each on one scale; a panel with
    nothing to show is left out."""
    has_published = bool(published is not None and len(published) and "win_rate" in published
                         and published["win_rate"].notna().all())
    part = ours[ours["win_rate"].notna()] if ours is not None and "win_rate" in ours else pd.DataFrame()
    widths = [10.0] + ([len(published) + 1.0] if has_published else []) + ([len(part) + 1.5] if len(part) else [])
    fig, axes = new_figure(len(widths), width=14 / len(widths), height=5.2, sharey=True,
                           gridspec_kw={"width_ratios": widths})
    _paper_panel(axes[0])
    rest = list(axes[1:])
    if has_published:
        ax = rest.pop(0)
        bars = [arm_bar(PUBLISHED_NAMES.get(r.model, r.model), r.win_rate, r.ci_low, r.ci_high)
                for r in published.itertuples()]
        grouped_bars(ax, [{"label": "the paper's published answers (LLaMA-7B on Alpaca; LLaMA-2-7B-Chat), GPT-4's "
                                    "annotations recomputed, 805 prompts", "color": PUBLISHED_COLOR, "bars": bars}],
                     rotation=60)
        ax.set_title("Published answers\njudge GPT-4", fontsize=9)
    if not part.empty:
        ax = rest.pop(0)
        groups = [{"label": _ours_label(about, stage=stage), "color": color,
                   "bars": [arm_bar(r.label, r.win_rate, r.ci_low, r.ci_high) for r in rows.itertuples()]}
                  for (stage, rows), color in zip(part.groupby("stage_name", sort=False),
                                                  (OURS_COLOR, OURS_QLORA_COLOR))]
        grouped_bars(ax, groups, rotation=60)
        ax.set_title(f"Ours: {about['model']}\njudge {about['judge'].split(' (')[0]}", fontsize=9)
    for ax in axes:
        ax.axhline(50, color="grey", lw=0.8, ls=":")
    figure_legend(fig)
    missing = [what for what, ok in (("the published answers (NEFTLIB_DATA_DIR unset)", has_published),
                                     ("our win rates (no judge ran)", not part.empty)) if not ok]
    headline(fig, "Win rate against Text-Davinci-003: the paper's Figure 1 beside this run",
             "Only win rates from the same judge compare; 50% = as good as the reference"
             + (f". Left out, with nothing to show: {', '.join(missing)}" if missing else ""))
    return fig


def _paper_panel(ax) -> None:
    """The paper's Figure 1 as grouped bars: one pair per data set."""
    names = list(FIGURE1)
    width = 0.38
    for offset, i, (arm, color) in zip((-width / 2, width / 2), (0, 1), (("no noise", PAPER_COLOR),
                                                                       ("NEFTune, alpha 5", "#ff7f0e"))):
        bars = ax.bar(np.arange(len(names)) + offset, [FIGURE1[n][i] for n in names], width, color=color,
                      edgecolor="k", lw=0.5, label=f"paper, Figure 1: {PAPER_MODEL} full fine-tune, {arm}, "
                                                   "805 prompts, judge GPT-4")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set(ylim=(0, 100), ylabel=label("win_rate") + ", 95% interval", xlabel="training data")
    ax.set_title(f"Paper, Figure 1: {PAPER_MODEL}\njudge GPT-4", fontsize=9)
