"""Figures rebuilt from results/<run>/ alone (no retraining), saved under figures/<run>/."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless papermill kernels have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

import numpy as np  # noqa: E402

from neftlib.claims import arm_table, paired_bootstrap, pick_roles, read_table, run_info  # noqa: E402
from neftlib.io import read_json  # noqa: E402
from neftlib.paper import FIGURE1, cell  # noqa: E402
from neftlib.paper_rows import T4  # noqa: E402
from neftlib.paths import figures_dir, run_dir  # noqa: E402
from neftlib.textstats import bleu  # noqa: E402


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
    if not frames:  # a profile may train no arm in a stage (the sweep skips QLoRA)
        print(f"no training log under {run_dir(run) / stage}: no loss curves to draw")
        return None
    frame = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(frame, x="step", y="loss", hue="arm", ax=ax)
    ax.set(title=f"Training loss, {stage} stage ({model}, run {run})", xlabel="optimizer step",
           ylabel="loss (noisy inputs for noised arms)")
    _save(fig, run, f"loss_{stage}")
    return fig


def _interval_bars(ax, frame: pd.DataFrame, x: str, hue: str, order: list, hues: list, y: str = "value",
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


def _labelled_arms(run: str) -> pd.DataFrame:
    """Every trained arm, with a legend label that says its noise and a name for its stage."""
    arms, method = arm_table(run), run_info(run)["method"]
    arms["label"] = [f"{a} (no noise)" if al == 0 else f"{a} ({d}, alpha {al:g})"
                     for a, al, d in zip(arms["arm"], arms["alpha"], arms["distribution"])]
    arms["stage_name"] = arms["stage"].map({"train": f"{method} fine-tune", "qlora": "QLoRA"}).fillna(arms["stage"])
    return arms


def _about(info: dict) -> str:
    return f"{info['model']} trained on {info['train_data']}, run {info['run']}"


def _order(frame: pd.DataFrame, column: str) -> list:
    return list(dict.fromkeys(frame[column]))


def win_rates(run: str, judge: str | None = None):
    """Figure-1 style bars: each arm's win rate against the reference answers, grouped by stage, with its
    bootstrap 95% interval; the judge and its agreement with GPT-4 in the title (`judge` is kept for
    older callers: the judge is read from the results)."""
    info = run_info(run)
    frame = pd.read_csv(run_dir(run) / "eval" / "winrates.csv")
    if not frame["win_rate"].notna().any():  # judge='none': answers only, nothing to draw
        return None
    frame = frame.merge(
        _labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="left")
    frame["label"] = frame["label"].fillna(frame["arm"])
    frame["stage_name"] = frame["stage_name"].fillna(frame["stage"].replace({"length": "length-only (baseline model)"}))
    order, hues = _order(frame, "stage_name"), _order(frame, "label")
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(frame)), 4))
    sns.barplot(frame, x="stage_name", y="win_rate", hue="label", order=order, hue_order=hues, ax=ax)
    _interval_bars(ax, frame, "stage_name", "label", order, hues, "win_rate", "ci_low", "ci_high")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="", ylabel="win rate (%, discrete votes), 95% bootstrap interval", ylim=(0, 100))
    clipped = int(frame["n_clipped"].fillna(0).sum()) if "n_clipped" in frame else 0
    note = f"; {clipped} answers clipped to fit its context" if clipped else ""
    ax.set_title(f"Win rate vs Text-Davinci-003 on AlpacaEval prompts\n{_about(info)}\njudge: {info['judge']}{note}",
                 fontsize=9)
    ax.legend(title="arm", fontsize=8)
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
    # The release-code column is on the paper's scale (Table 4); tables written before it existed still draw.
    column = "log_diversity_release" if "log_diversity_release" in frame else "log_diversity"
    sns.barplot(frame, x="name", y=column, ax=b)
    paper = (f"; paper, Table 4 (Alpaca): {cell(T4, 'log_diversity.LLaMA-2 7B', 'Alpaca (alpha=5)'):.2f} -> "
             f"{cell(T4, 'log_diversity.+NEFT', 'Alpaca (alpha=5)'):.2f}") if column == "log_diversity_release" else ""
    b.set(title=f"Log-diversity, release code (answers cut at {int(frame['cutoff'].iloc[0])} words{paper})"
          if paper else f"Log-diversity, formula as written (answers cut at {int(frame['cutoff'].iloc[0])} words)",
          xlabel="", ylabel="log-diversity")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    _save(fig, run, "length_diversity")
    return fig


def figure1(run: str):
    """The paper's Figure 1 beside the paper's published answers (GPT-4 judgments, recomputed) and ours."""
    info = run_info(run)
    paper = pd.DataFrame([{"data": name, "arm": arm, "win_rate": value} for name, pair in FIGURE1.items()
                          for arm, value in zip(("baseline", "NEFTune"), pair)])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 1.4, 1.6]})
    sns.barplot(paper, x="data", y="win_rate", hue="arm", ax=a)
    for container in a.containers:
        a.bar_label(container, fmt="%.1f", fontsize=7)
    a.set(title="Paper, Figure 1: LLaMA-2-7B full fine-tune,\nGPT-4 judge, 805 prompts", xlabel="training data",
          ylabel="win rate vs Text-Davinci-003 (%)", ylim=(0, 100))
    published = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    if published is not None and "win_rate" in published and (published["status"] == "ok").all():
        published = published.assign(pair=published["pair"].map({"alpaca": "Alpaca-7B", "chat": "LLaMA-2-7B-Chat"}))
        sns.barplot(published, x="pair", y="win_rate", hue="arm", hue_order=["baseline", "neftune"], ax=b)
        _interval_bars(b, published, "pair", "arm", _order(published, "pair"), ["baseline", "neftune"],
                       "win_rate", "ci_low", "ci_high")
        b.set(title="Paper's published answers\n(GPT-4 annotations, recomputed)", xlabel="", ylim=(0, 100), ylabel="")
    else:
        b.text(0.5, 0.5, "published answers not available\n(NEFTLIB_DATA_DIR unset)", ha="center", va="center")
        b.set_axis_off()
    ours = pd.read_csv(run_dir(run) / "eval" / "winrates.csv").merge(  # trained arms only: the length arms are Table 5's
        _labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="inner")
    order, hues = _order(ours, "stage_name"), _order(ours, "label")
    sns.barplot(ours, x="stage_name", y="win_rate", hue="label", order=order, hue_order=hues, ax=c)
    _interval_bars(c, ours, "stage_name", "label", order, hues, "win_rate", "ci_low", "ci_high")
    c.set(title=f"Ours: {info['model']} on {info['train_data']}\njudge {info['judge'].split(' ')[0]}", xlabel="",
          ylim=(0, 100), ylabel="")
    c.legend(fontsize=7)
    _save(fig, run, "figure1_paper_vs_ours")
    return fig


def loss_histograms(run: str):
    """Distributions of per-example loss without noise (the paper's Figure 4): on the training subset, held-out
    rows and another set, for every arm (analysis/example_losses.csv)."""
    info = run_info(run)
    frame = pd.read_csv(run_dir(run) / "analysis" / "example_losses.csv").merge(
        _labelled_arms(run)[["stage", "arm", "label", "stage_name"]], how="left").dropna(subset=["loss"])
    if frame.empty:
        raise ValueError("example_losses.csv has no losses")
    names = {"train": "training subset", "heldout": "held-out rows (same data)",
             "other": f"other set: {info['other_data']}"}
    stages, sets = _order(frame, "stage_name"), [s for s in names if s in set(frame["set"])]
    fig, axes = plt.subplots(len(stages), len(sets), figsize=(4.2 * len(sets), 3.2 * len(stages)), squeeze=False)
    for i, stage in enumerate(stages):
        for j, name in enumerate(sets):
            part = frame[(frame["stage_name"] == stage) & (frame["set"] == name)]
            sns.histplot(part, x="loss", hue="label", element="step", stat="density", common_norm=False, bins=20,
                         ax=axes[i][j], legend=(i, j) == (0, len(sets) - 1))
            axes[i][j].set(title=f"{stage}: {names[name]}", xlabel="loss per example (nats / response token)")
    if axes[0][-1].get_legend() is not None:
        axes[0][-1].get_legend().set_title("arm")
    fig.suptitle(f"Per-example loss without noise, baseline vs noised arms\n{_about(info)}", fontsize=10)
    _save(fig, run, "loss_histograms")
    return fig


def rouge_bleu(run: str, n_boot: int = 500):
    """ROUGE-L and BLEU of each arm's answers to training prompts against the training responses, with
    bootstrap 95% intervals over the prompts (lower: less copying of the training set)."""
    info, refs = run_info(run), read_json(run_dir(run) / "data" / "train_rows.json")
    from rouge_score import rouge_scorer

    scorer, rows = rouge_scorer.RougeScorer(["rougeL"]), []
    for arm in _labelled_arms(run).itertuples():
        path = run_dir(run) / "eval" / f"{arm.stage}-{arm.arm}" / "train_prompt_outputs.json"
        if not path.exists():
            continue
        answers = [o["output"] for o in read_json(path)]
        truth = [r["output"] for r in refs[: len(answers)]]
        per = np.array([100 * scorer.score(t, p)["rougeL"].fmeasure for p, t in zip(answers, truth)])
        for metric, stat, boots in (("ROUGE-L", lambda i: per[i].mean(), n_boot),
                                    ("BLEU", lambda i: bleu([answers[k] for k in i], [truth[k] for k in i]),
                                     min(n_boot, 300))):
            value, low, high = paired_bootstrap(stat, len(answers), boots)
            rows.append({"stage_name": arm.stage_name, "label": arm.label, "metric": metric, "value": value,
                         "low": low, "high": high, "n": len(answers)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise FileNotFoundError(f"no train_prompt_outputs.json under {run_dir(run) / 'eval'}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("ROUGE-L", "BLEU")):
        part = frame[frame["metric"] == metric]
        order, hues = _order(part, "stage_name"), _order(part, "label")
        sns.barplot(part, x="stage_name", y="value", hue="label", order=order, hue_order=hues, ax=ax,
                    legend=metric == "BLEU")
        _interval_bars(ax, part, "stage_name", "label", order, hues)
        if metric == "BLEU":
            ax.legend(title="arm", fontsize=7)
        ax.set(title=f"{metric}, answers to training prompts vs training responses", xlabel="", ylabel=metric)
    fig.suptitle(f"Copying of the training set: {int(frame['n'].max())} training prompts\n{_about(info)}", fontsize=10)
    _save(fig, run, "rouge_bleu")
    return fig


def length_diversity_table(run: str):
    """The length and diversity table as a figure: our arms and, when analysed, the paper's published answers."""
    info = run_info(run)
    ours = pd.read_csv(run_dir(run) / "analysis" / "diversity.csv").assign(source=f"ours: {info['model']}")
    published = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    frames = [ours]
    if published is not None and (published["status"] == "ok").all():
        frames.append(published.rename(columns={"model": "name"}).assign(source="paper's published answers"))
    frame = pd.concat(frames, ignore_index=True)
    columns = {"source": "from", "name": "model / arm", "cutoff": "cut at (words)", "n_kept": "answers kept",
               "avg_chars": "avg chars", "avg_tokens": "avg words", "rep_2": "rep-2 %", "rep_3": "rep-3 %",
               "rep_4": "rep-4 %", "log_diversity_release": "log-diversity (release code; paper's scale)",
               "log_diversity": "log-div. (formula as written)"}
    # Tables written before the release-code column existed still draw.
    columns = {key: label for key, label in columns.items() if key in frame}
    cells = [[("-" if np.isnan(v) else f"{v:.2f}") if isinstance(v, float) else str(v) for v in row]
             for row in frame[list(columns)].itertuples(index=False)]
    fig, ax = plt.subplots(figsize=(13, 0.9 + 0.32 * len(cells)))
    ax.set_axis_off()
    table = ax.table(cellText=cells, colLabels=list(columns.values()), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))
    ax.set_title("Answer length, n-gram repetition and log-diversity on AlpacaEval prompts\n"
                 f"(repetition on answers cut at the cutoff, shorter ones dropped; ours: {_about(info)})", fontsize=9)
    _save(fig, run, "length_diversity_table")
    return fig


def gaussian_ablation(run: str, n_boot: int = 2000):
    """Uniform vs Gaussian noise at the same alpha, beside the baseline: average answer length and win rate,
    each with a bootstrap 95% interval."""
    info, arms = run_info(run), _labelled_arms(run)
    roles = pick_roles(arms, "train", info["alpha"])
    if roles["gaussian"] is None:
        raise ValueError("no Gaussian-noise arm in this run's training stage")
    wins = pd.read_csv(run_dir(run) / "eval" / "winrates.csv")
    rows = []
    for role in ("baseline", "neftune", "gaussian"):
        arm = roles[role]
        if arm is None:
            continue
        label = arms[(arms["stage"] == "train") & (arms["arm"] == arm)]["label"].iloc[0]
        texts = read_json(run_dir(run) / "eval" / f"train-{arm}" / "model_outputs.json")
        chars = np.array([len(o["output"]) for o in texts], dtype=float)
        value, low, high = paired_bootstrap(lambda i: chars[i].mean(), len(chars), n_boot)
        rows.append({"label": label, "panel": "length", "value": value, "low": low, "high": high})
        win = wins[(wins["stage"] == "train") & (wins["arm"] == arm)].iloc[0]
        rows.append({"label": label, "panel": "win rate", "value": win["win_rate"], "low": win["ci_low"],
                     "high": win["ci_high"]})
    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, panel, ylabel in zip(axes, ("length", "win rate"), ("characters", "win rate (%)")):
        part = frame[frame["panel"] == panel]
        order = _order(part, "label")
        sns.barplot(part, x="label", y="value", hue="label", order=order, hue_order=order, ax=ax, legend=False)
        _interval_bars(ax, part, "label", "label", order, order)
        ax.set(title=f"Average answer {panel}" if panel == "length" else f"Win rate ({info['judge'].split(' ')[0]})",
               xlabel="", ylabel=f"{ylabel}, 95% bootstrap interval")
        ax.tick_params(axis="x", rotation=15)
    alpha = float(arms.loc[(arms["stage"] == "train") & (arms["arm"] == roles["gaussian"]), "alpha"].iloc[0])
    fig.suptitle(f"Gaussian vs uniform noise at alpha {alpha:g}, {len(chars)} AlpacaEval prompts\n{_about(info)}",
                 fontsize=10)
    _save(fig, run, "gaussian_ablation")
    return fig


def _alpha_sweep(run: str):
    # Imported here: the sweep module pulls in the training stages, which plain figure users do not need.
    from neftlib.sweep import sweep_figure

    return sweep_figure(run)


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
        "alpha_sweep": lambda: _alpha_sweep(run),
    }
    made = {}
    for name, draw in jobs.items():
        try:
            fig = draw()
        except (FileNotFoundError, KeyError, ValueError, IndexError) as err:
            made[name] = f"skipped: {type(err).__name__}: {err}"
            continue
        made[name] = str(figures_dir(run) / f"{name}.png") if fig is not None else "skipped: nothing to draw"
        plt.close(fig)
    return made
