"""Dose-response: does a downstream effect of NEFTune rise with the noise dose? The analysis fixed in advance in
docs/evidence/dose-<date>/preregistration.md, on the arms neftlib.pipeline.dose_study exported there.

Per training seed, the least-squares slope of each metric on the measured dose (||noise|| / ||embedding||) over
that seed's arms; across seeds, the t test of the slopes (neftlib.analysis.verdict.seeds_test), Holm over the
metrics with a stated direction, and the verdict under the one rule.

    python -m neftlib.analysis.dose_response docs/evidence/dose-2026-12-03
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from neftlib.analysis.draw import OURS_COLOR, paper_sweep_note
from neftlib.analysis.plots import PAPER_COLOR, figure_legend, headline, new_figure, save
from neftlib.analysis.verdict import Test, decide, holm, seeds_test

# metric -> (name in words, the paper's direction or None for "reported, no verdict")
METRICS = {"avg_chars": ("answer length (characters)", "higher"),
           "eos_logprob": ("log-probability of EOS after the reference answer (nats)", "lower"),
           "rouge_l": ("ROUGE-L on training prompts", "lower"),
           "heldout_loss": ("held-out loss (nats/token)", "lower"),
           "log_diversity_release": ("log-diversity (release code)", "unchanged"),
           "answer_nll": ("NLL of the reference answers (nats/token)", None)}
PRIMARY = "avg_chars"
UNCHANGED_MARGIN = 0.10  # of the alpha-0 arms' mean, per unit of ratio
MIN_SEEDS = 3  # the preregistered floor: fewer seeds per dose and no slope is reported


def arm_table(folder: Path) -> pd.DataFrame:
    """One row per exported arm: alpha, seed, measured noise ratio (0 for alpha 0) and every metric."""
    rows = []
    for done in sorted((folder / "arms").glob("*/DONE")):
        arm = done.parent
        metrics = json.loads((arm / "metrics.json").read_text())
        with gzip.open(arm / "length_probe.csv.gz", "rt") as fh:
            probe = pd.read_csv(fh)
        metrics["noise_ratio"] = 0.0 if metrics["alpha"] == 0 else metrics["noise_ratio"]
        metrics.update(eos_logprob=float(probe["eos_logprob"].mean()), answer_nll=float(
            np.average(probe["answer_nll"].dropna(), weights=probe.loc[probe["answer_nll"].notna(), "answer_tokens"])))
        rows.append(metrics)
    return pd.DataFrame(rows)


def seed_slopes(arms: pd.DataFrame, metric: str) -> pd.Series:
    """Per training seed with at least two doses, the least-squares slope of `metric` on the noise ratio."""
    out = {}
    for seed, frame in arms.groupby("seed"):
        frame = frame.dropna(subset=[metric, "noise_ratio"])
        if frame["noise_ratio"].nunique() >= 2:
            out[seed] = float(np.polyfit(frame["noise_ratio"], frame[metric], 1)[0])
    return pd.Series(out, name=metric, dtype=float)


def complete_seeds(arms: pd.DataFrame) -> list[int]:
    """Seeds with every dose of the study measured."""
    doses = arms["alpha"].nunique()
    return sorted(s for s, f in arms.groupby("seed") if f["alpha"].nunique() == doses)


def dose_response(arms: pd.DataFrame) -> pd.DataFrame:
    """dose_response.csv: metric, slope, low, high, n_seeds, detectable_slope, verdict (and p values), on the
    seeds that measured every dose."""
    seeds = complete_seeds(arms)
    kept = arms[arms["seed"].isin(seeds)]
    rows = []
    for metric, (name, expect) in METRICS.items():
        slopes = seed_slopes(kept, metric)
        if len(slopes) < 2:
            continue
        test = seeds_test(slopes.tolist())
        base = kept.loc[kept["alpha"] == 0, metric].mean()
        rows.append({"metric": metric, "name": name, "expect": expect or "", "slope": test.estimate, "low": test.low,
                     "high": test.high, "n_seeds": test.n, "detectable_slope": test.detectable,
                     "p_value": test.p_value, "baseline_mean": base, "primary": metric == PRIMARY,
                     "seed_slopes": " ".join(f"{s:+.4g}" for s in slopes),
                     "change_at_0.62": 0.62 * test.estimate})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    tested = table["expect"] != ""
    table["p_holm"] = np.nan
    table.loc[tested, "p_holm"] = holm(table.loc[tested, "p_value"].to_numpy(float))
    verdicts = []
    for _, r in table.iterrows():
        if not r["expect"]:
            verdicts.append("reported, no verdict (the paper states no direction)")
            continue
        test = Test(r["slope"], r["low"], r["high"], r["p_value"], r["n_seeds"] - 1, "seeds", int(r["n_seeds"]),
                    r["detectable_slope"], False)
        margin = UNCHANGED_MARGIN * abs(r["baseline_mean"]) if r["expect"] == "unchanged" else None
        verdicts.append(decide(test, r["expect"], r["p_holm"], margin))
    table["verdict"] = verdicts
    return table


def dose_figure(arms: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Each metric against the measured ratio: one line per seed, the mean slope, and the paper's change."""
    metrics = [m for m in METRICS if m in arms]
    cols = 3
    fig, axes = new_figure(cols, int(np.ceil(len(metrics) / cols)), width=4.4, height=3.4)
    for ax, metric in zip(axes, metrics):
        for seed, frame in arms.sort_values("noise_ratio").groupby("seed"):
            ax.plot(frame["noise_ratio"], frame[metric], marker="o", lw=1, alpha=0.6, color=OURS_COLOR,
                    label="one training seed")
        row = table[table["metric"] == metric] if not table.empty else table
        if len(row):
            r = row.iloc[0]
            xs = np.linspace(0, arms["noise_ratio"].max(), 20)
            ax.plot(xs, r["baseline_mean"] + r["slope"] * xs, color="k", lw=2,
                    label="mean slope over the seeds (from the alpha-0 mean)")
            ax.set_title(f"{METRICS[metric][0]}\nslope {r['slope']:+.3g} [{r['low']:.3g}, {r['high']:.3g}]: "
                         f"{r['verdict']}"[:110], fontsize=8)
        else:
            ax.set_title(METRICS[metric][0], fontsize=8)
        if metric == "avg_chars":  # the paper's +687 at alpha 5 (Table 4, LLaMA-2-7B): far off this axis
            ax.annotate(f"{paper_sweep_note(metric)}", xy=(0.02, 0.95), xycoords="axes fraction", fontsize=6,
                        va="top", color=PAPER_COLOR)
        ax.set(xlabel="noise / embedding norm ratio (measured)", ylabel=METRICS[metric][0].split(" (")[0])
    for ax in axes[len(metrics):]:
        fig.delaxes(ax)
    figure_legend(fig, ncols=2)
    headline(fig, "NEFTune dose-response at 135M: each metric against the measured noise dose",
             f"SmolLM2-135M-Instruct, cpu-study recipe; {arms['seed'].nunique()} training seed(s), "
             f"{arms['alpha'].nunique()} doses; slopes tested over seeds (t), Holm over the metrics")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neftlib.analysis.dose_response", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the study's evidence folder, e.g. docs/evidence/dose-2026-12-03")
    args = parser.parse_args(argv)
    arms = arm_table(args.folder)
    if arms.empty:
        print(f"{args.folder}: no exported arm yet (neftlib.pipeline.dose_study run)", file=sys.stderr)
        return 2
    arms.to_csv(args.folder / "arm_metrics.csv", index=False)
    seeds = complete_seeds(arms)
    if len(seeds) < MIN_SEEDS:
        print(f"{len(arms)} arms exported; {len(seeds)} seed(s) with every dose, under the preregistered "
              f"{MIN_SEEDS}: arm_metrics.csv written, no slope reported yet")
        return 0
    table = dose_response(arms)
    table.to_csv(args.folder / "dose_response.csv", index=False)
    print(save(dose_figure(arms[arms["seed"].isin(seeds)], table), args.folder / "dose_response.png"))
    print(table[["metric", "slope", "low", "high", "n_seeds", "detectable_slope", "verdict"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
