"""Figures a reader can trust, checked on a made-up run without the paper's published answers: every figure is
returned (for a notebook to show) without pyplot, has no empty panel, keeps its titles and legend inside the
canvas, labels its axes in words, and sets the paper's number beside ours."""
from __future__ import annotations

import importlib

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neftlib.analysis import figures, figures_detail
from neftlib.analysis.plots import LABELS, empty_axes
from neftlib.base.io import write_csv
from test_report import ARMS, _make_run

# Column names a figure must never show as an axis label, and seaborn's defaults.
RAW = {*LABELS, "value", "score", "change", "win_rate", "avg_chars", "loss", "tokens", "alpha", "metric", "label",
       "stage_name", "name", "count"}


@pytest.fixture
def run(results):
    """test_report's run (no published answers) with the tables stage 05 writes added."""
    _make_run(results, {r: r for r in ARMS})
    rows = [{"run": "fake", "stage": "train", "arm": arm, "alpha": alpha, "distribution": dist,
             "train_loss_nonoise": 1.0 + 0.1 * (alpha > 0), "heldout_loss": 2.0, "other_loss": 2.1 - 0.05 * (alpha > 0),
             "rouge_l": 30.0 - 5 * (alpha > 0), "bleu": 10.0, "n_prompts": 20} for arm, (alpha, dist) in ARMS.items()]
    write_csv(results / "fake" / "analysis" / "overfitting.csv", rows)
    write_csv(results / "fake" / "analysis" / "diversity.csv", [
        {"run": "fake", "cutoff": 5, "name": f"train-{arm}", "avg_chars": 100.0 + 50 * i, "rep_2": 1.0,
         "log_diversity": 3.0, "log_diversity_release": 15.0} for i, arm in enumerate(ARMS)])
    return "fake"


def _inside(fig: Figure) -> list[str]:
    """The title, panel titles, axis labels and legends that reach outside the canvas once drawn."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out as savefig does
    renderer = canvas.get_renderer()
    box = fig.bbox.padded(1)
    texts = [fig._suptitle, *fig.legends] + [a for ax in fig.axes for a in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    outside = []
    for artist in texts:
        if artist is None or not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
            continue
        extent = artist.get_window_extent(renderer)
        if extent.x0 < box.x0 or extent.y0 < box.y0 or extent.x1 > box.x1 or extent.y1 > box.y1:
            outside.append(getattr(artist, "get_text", lambda: type(artist).__name__)())
    return outside


FIGURES = {"win_rates": lambda r: figures.win_rates(r), "figure1": lambda r: figures.figure1(r),
           "overfitting": lambda r: figures.overfitting(r), "lengths": lambda r: figures.lengths(r),
           "gaussian_ablation": lambda r: figures_detail.gaussian_ablation(r, n_boot=100),
           "rouge_bleu": lambda r: figures_detail.rouge_bleu(r, n_boot=50),
           "loss_histograms": lambda r: figures_detail.loss_histograms(r)}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_is_returned_whole_and_labelled_in_words(run, name):
    plt.close("all")
    fig = FIGURES[name](run)
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == [], "drawn through pyplot: a notebook would show it twice"
    assert not empty_axes(fig), f"{name}: a panel with nothing drawn"
    assert not _inside(fig), f"{name}: cut off at the canvas edge: {_inside(fig)}"
    for ax in fig.axes:
        if ax.axison:
            shared = [a for a in ax.get_shared_y_axes().get_siblings(ax) if a is not ax and a.get_ylabel()]
            assert ax.get_ylabel() or shared, f"{name}: a panel without a y label"
            assert ax.get_ylabel() not in RAW, f"{name}: y axis labelled {ax.get_ylabel()!r}"
            assert ax.get_xlabel() not in RAW, f"{name}: x axis labelled {ax.get_xlabel()!r}"


def test_a_panel_without_data_is_left_out(run):
    fig = figures.figure1(run)  # this run has no published answers
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2 and not any("ublished" in t for t in titles)
    assert "Left out" in fig.get_suptitle() and "published answers" in fig.get_suptitle()


def test_the_papers_number_sits_beside_ours_with_its_judge(run):
    fig = figures.win_rates(run)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(text.startswith("paper, Table 1") and "GPT-4" in text for text in labels)
    assert any(text.startswith("ours") and "local:tiny-random" in text for text in labels)
    values = [t.get_text() for t in fig.axes[0].texts]
    assert "29.8" in values and "64.7" in values  # Table 1, LLaMA-2-7B on Alpaca, read from the paper's tables


def test_sweep_figure_shows_each_change_with_its_paired_interval(results):
    from matplotlib.collections import LineCollection

    from neftlib.analysis.verdict import seeds_test

    rows = [{"stage": "train", "arm": f"alpha{a}-seed{s}", "alpha": float(a), "distribution": "uniform", "seed": s,
             "model": "tiny", "avg_chars": 300 + 10 * s + 5 * a + (3 if a == 15 and s == 1 else 0),
             "heldout_loss": 2.0 + 0.001 * a + 0.0002 * s} for a in (0, 5, 15) for s in (0, 1)]
    write_csv(results / "sw" / "analysis" / "arm_metrics.csv", rows)
    fig = figures.sweep_figure("sw")
    assert len(fig.axes) == 2 and not empty_axes(fig) and not _inside(fig)
    for ax in fig.axes:
        assert ax.get_ylabel().startswith("change from alpha 0")
    length = next(ax for ax in fig.axes if ax.get_title().startswith("answer length"))
    bars = [seg for c in length.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    test = seeds_test([75.0, 78.0])  # alpha 15's per-seed changes: paired, the seeds' levels (300, 310) cancel
    assert any(seg[0][0] == 15 and seg[0][1] == pytest.approx(test.low) and seg[1][1] == pytest.approx(test.high)
               for seg in bars)
    assert "Table 6" in length.get_xlabel()  # the paper's change in characters, from its table


def test_one_seed_per_alpha_draws_no_sweep_figure(results):
    rows = [{"stage": "train", "arm": a, "alpha": al, "distribution": "uniform", "seed": 0, "model": "tiny",
             "avg_chars": 300 + al} for a, al in (("baseline", 0.0), ("neftune", 5.0))]
    write_csv(results / "one" / "analysis" / "arm_metrics.csv", rows)
    assert figures.sweep_figure("one") is None


def test_no_backend_forced_on_import():
    matplotlib.use("svg", force=True)
    for module in ("neftlib.analysis.plots", "neftlib.analysis.draw", "neftlib.analysis.figures_detail",
                   "neftlib.analysis.figures"):
        importlib.reload(importlib.import_module(module))
    assert matplotlib.get_backend() == "svg"
    matplotlib.use("agg", force=True)


def test_empty_axes_finds_an_empty_panel():
    fig = Figure()
    full, empty = fig.subplots(1, 2)
    full.plot(np.arange(3))
    assert empty_axes(fig) == [empty]


def test_readme_figures_are_drawn_from_the_committed_evidence():
    from matplotlib.collections import LineCollection

    from neftlib.analysis import evidence
    from neftlib.analysis.verdict import seeds_test

    made = evidence.figures()
    assert set(made) == {"alpha_sweep", "win_rates", "length_diversity"}
    docs = (evidence.PROJ_ROOT / "README.md").read_text() + (evidence.PROJ_ROOT / "docs" / "results.md").read_text()
    for name, fig in made.items():
        assert not empty_axes(fig) and not _inside(fig), name
        assert (evidence.OUT / f"{name}.png").stat().st_size > 0, f"docs/figures/{name}.png: run make readme-figures"
        assert f"figures/{name}.png" in docs, f"{name}.png is shown neither in the README nor in docs/results.md"
    # the sweep's bars are the t intervals of the per-seed paired changes, read from the snapshot it is drawn from
    metrics = pd.read_csv(evidence.EVIDENCE / evidence.SNAPSHOTS["alpha_sweep"] / "arm_metrics.csv")
    uni = metrics[(metrics["stage"] == "train") & (metrics["distribution"] == "uniform")]
    base = uni[uni["alpha"] == 0].set_index("seed")["train_loss_nonoise"]
    a15 = uni[uni["alpha"] == 15].set_index("seed")["train_loss_nonoise"]
    test = seeds_test((a15 - base.loc[a15.index]).tolist())
    loss = next(ax for ax in made["alpha_sweep"].axes if ax.get_title().startswith("training loss"))
    bars = [seg for c in loss.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert any(seg[0][0] == 15 and seg[0][1] == pytest.approx(test.low) and seg[1][1] == pytest.approx(test.high)
               for seg in bars)