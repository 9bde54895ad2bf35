"""What notebooks 05 and 06 show, in a few computed sentences: each claim part measured on the run's arms
with its interval and verdict (the one rule of neftlib.analysis.verdict), and the report's verdicts counted."""
from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

from neftlib.analysis.claims import CLAIMS, NOT_MEASURED, RunEvidence, finalize, pick_roles, read_table
from neftlib.analysis.report import our_evidence
from neftlib.analysis.verdict import word
from neftlib.base.paths import run_dir

ANALYSIS_CLAIMS = ("loss", "overlap", "length_diversity", "gaussian")


def _part(row: pd.Series) -> str:
    """One measured claim part in words: baseline -> treatment, the interval of the change and the verdict."""
    if row["verdict"] == NOT_MEASURED:
        return f"{row['part']}: not measured ({row['note']})"
    interval = ""
    if pd.notna(row.get("low")) and pd.notna(row.get("high")):
        interval = f", 95% interval {row['low']:+.3g} to {row['high']:+.3g}"
    elif pd.notna(row.get("baseline_low")):
        interval = (f", intervals [{row['baseline_low']:.3g}, {row['baseline_high']:.3g}] and "
                    f"[{row['treatment_low']:.3g}, {row['treatment_high']:.3g}]")
    return (f"{row['part']}, `{row['baseline_arm']}` -> `{row['treatment_arm']}`: {row['baseline']:.4g} -> "
            f"{row['treatment']:.4g} "
            f"(change {row['treatment'] - row['baseline']:+.3g}{interval}): **{row['verdict']}**")


def analysis_summary(run: str, n_boot: int = 1000, seed: int = 0) -> str:
    """What the overfitting, length and diversity analysis of a run shows, claim by claim, in Markdown."""
    ev = RunEvidence(run, n_boot=n_boot, seed=seed)
    if ev.arms.empty:
        return f"{run_dir(run)} has no trained arm yet: nothing to analyse."
    roles = {stage: pick_roles(ev.arms, stage, ev.info["alpha"]) for stage in ("train", "qlora")}
    parts = finalize(pd.DataFrame(our_evidence(ev)))
    lines = [f"Baseline `{roles['train']['baseline']}` against NEFTune `{roles['train']['neftune']}`"
             + (f" and the Gaussian control `{roles['train']['gaussian']}`" if roles["train"]["gaussian"] else "")
             + f"; {ev.info['scale']}. Each change with its 95% interval and its verdict under the one rule "
             "(docs/methodology.md; Holm's correction here covers these parts only, notebook 06 covers the run):"]
    for claim in ANALYSIS_CLAIMS:
        rows = parts[(parts["claim_id"] == claim) & ~parts["part"].str.startswith("win rate")]
        if rows.empty:
            continue
        lines.append(f"- **{CLAIMS[claim]}**")
        lines += [f"  - {_part(r)}" for _, r in rows.iterrows()]
    if parts["verdict"].map(word).isin(["not shown", "excluded above"]).any():
        lines.append("\n*Not shown* is not *absent*: the number beside it is the smallest change this design could "
                     "detect; *excluded above X* means the interval rules out any change of X or more in the paper's "
                     "direction.")
    return "\n".join(lines)


def published_summary(run: str) -> str:
    """The paper's own before/after answers measured the same way (analysis/published_diversity.csv), or why not."""
    table = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    if table is None or not (table["status"] == "ok").all():
        why = "not analysed" if table is None else str(table["status"].iloc[0])
        return f"The paper's published answers: {why}."
    lines = ["The paper's published answers, measured with the same code (GPT-4's own judgments for the win rate):"]
    for pair, rows in table.groupby("pair", sort=False):
        base, neft = (rows[rows["arm"] == arm].iloc[0] for arm in ("baseline", "neftune"))
        lines.append(f"- **{base['model']} -> {neft['model']}**: length {base['avg_chars']:.0f} -> "
                     f"{neft['avg_chars']:.0f} characters, 2-gram repetition {base['rep_2']:.2f} -> "
                     f"{neft['rep_2']:.2f}%, log-diversity (release code) {base['log_diversity_release']:.2f} -> "
                     f"{neft['log_diversity_release']:.2f}"
                     + (f", GPT-4 win rate {base['win_rate']:.1f} -> {neft['win_rate']:.1f}%" if "win_rate" in rows
                        and pd.notna(base["win_rate"]) else "") + ".")
    return "\n".join(lines)


def report_summary(claims: pd.DataFrame) -> str:
    """The report's verdicts counted by word, and the claims each word applies to."""
    words = claims["verdict"].map(word)
    lines = ["Verdicts on this run's arms: " + ", ".join(f"{n} *{v}*" for v, n in words.value_counts().items()) + "."]
    for verdict in ("shown", "opposite", "excluded above", "not shown", "judge cannot decide", "not testable here"):
        names = claims.loc[words == verdict, "claim"].tolist()
        if names:
            lines.append(f"- **{verdict}**: " + "; ".join(names) + ".")
    return "\n".join(lines)


def sweep_table(effects: pd.DataFrame) -> pd.DataFrame | Markdown:
    """The sweep's tests a reader needs, or a one-line note when the run has one seed per alpha (no sweep)."""
    if effects.empty or effects["n_seeds"].max() < 2:
        return Markdown("One training seed per alpha: no sweep to test (each noised arm's change is in notebook 06's "
                        "claims table, with its paired interval over the prompts).")
    return effects[["distribution", "alpha", "metric", "mean_change", "low", "high", "p_holm", "verdict"]]
