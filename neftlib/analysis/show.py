"""What notebooks 05 and 06 show, in a few computed sentences: each claim part measured on the run's arms
with its interval and verdict (the rules of neftlib.analysis.claims), and the report's verdicts counted."""
from __future__ import annotations

import pandas as pd

from neftlib.analysis.claims import CLAIMS, NOISE, NOT_MEASURED, RunEvidence, pick_roles, read_table
from neftlib.analysis.report import our_evidence
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
    parts = pd.DataFrame(our_evidence(ev, roles))
    lines = [f"Baseline `{roles['train']['baseline']}` against NEFTune `{roles['train']['neftune']}`"
             + (f" and the Gaussian control `{roles['train']['gaussian']}`" if roles["train"]["gaussian"] else "")
             + f"; {ev.info['scale']}. Paired bootstrap intervals over the same items (verdict rules as notebook 06):"]
    for claim in ANALYSIS_CLAIMS:
        rows = parts[(parts["claim_id"] == claim) & ~parts["part"].str.startswith("win rate")]
        if rows.empty:
            continue
        lines.append(f"- **{CLAIMS[claim]}**")
        lines += [f"  - {_part(r)}" for _, r in rows.iterrows()]
    if (parts["verdict"] == NOISE).any():
        lines.append("\n*Within noise* means the interval of the change includes no change: this run is too small "
                     "to tell, which is not the same as no effect (06 says how large a change it could have seen).")
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
    """The report's verdicts counted, and which claims held here and on the paper's published answers."""
    counts = claims["verdict"].value_counts()
    lines = ["Verdicts on this run's arms: " + ", ".join(f"{n} *{v}*" for v, n in counts.items()) + "."]
    for verdict in ("held", "not held", "partly held"):
        names = claims.loc[claims["verdict"] == verdict, "claim"].tolist()
        if names:
            lines.append(f"- **{verdict}** here: " + "; ".join(names) + ".")
    held_published = claims.loc[claims["published_verdict"] == "held", "claim"].tolist()
    if held_published:
        lines.append("- On the paper's published answers (GPT-4 judgments) these claims **held**: "
                     + "; ".join(held_published) + ": the paper's effect is there at 7B with GPT-4 as judge.")
    noise = claims.loc[claims["verdict"] == NOISE, "claim"].tolist()
    if noise:
        lines.append(f"- *within noise* here ({len(noise)}): the run could not tell; its report gives, beside each, "
                     "the smallest change it could have detected.")
    return "\n".join(lines)
