"""What notebook 04 shows: a few prompts answered by every arm side by side, and the win rates set beside how
far the judge can be trusted, in words, all read from results/<run>/eval/."""
from __future__ import annotations

import html
import math

import pandas as pd

from neftlib.base.config import RunConfig
from neftlib.base.io import read_json
from neftlib.base.run import stage_dir, trained_arms

SHOWN_CHARS = 600  # an answer is cut here for display; its full text is in model_outputs.json


def answers(cfg: RunConfig, n: int = 3) -> list[dict]:
    """The first `n` evaluation prompts, each with the reference answer and every finished arm's answer."""
    prompts = read_json(stage_dir(cfg, "data") / "eval.json")[:n]
    shown = [{"instruction": p["instruction"], "answers": {"reference (Text-Davinci-003)": p["output"]}}
             for p in prompts]
    for stage, arm, _ in trained_arms(cfg):
        path = stage_dir(cfg, "eval") / f"{stage}-{arm}" / "model_outputs.json"
        if path.exists():
            for row, out in zip(shown, read_json(path)):
                row["answers"][f"{stage}-{arm}"] = out["output"]
    return shown


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f" [... {len(text) - SHOWN_CHARS} more characters]"


def answers_html(cfg: RunConfig, n: int = 3) -> str:
    """The answers of `answers` as an HTML table per prompt: one column per arm, the text escaped as written."""
    blocks = []
    for i, row in enumerate(answers(cfg, n), 1):
        heads = "".join(f"<th style='text-align:left'>{html.escape(name)}</th>" for name in row["answers"])
        cells = "".join("<td style='vertical-align:top;text-align:left;white-space:pre-wrap'>"
                        f"{html.escape(_cut(text))}<br><i>({len(text)} characters)</i></td>"
                        for text in row["answers"].values())
        blocks.append(f"<p><b>Prompt {i}:</b> {html.escape(row['instruction'])}</p>"
                      f"<table><tr>{heads}</tr><tr>{cells}</tr></table>")
    return "\n".join(blocks)


def agreement_words(agreement: dict) -> str:
    """How far the judge's verdicts can be trusted, from its measured agreement with GPT-4."""
    if not agreement:
        return ("The judge's agreement with GPT-4 was not measured (no published judgments in NEFTLIB_DATA_DIR, "
                "or agreement_pairs = 0): these win rates come with no check of the judge.")
    share, n = agreement["agreement"], agreement["n"]
    majority = agreement.get("majority_baseline")
    kappa = agreement.get("cohen_kappa")
    text = (f"The judge `{agreement['judge']}` sides with GPT-4 on {share:.0%} of {n} published answer pairs "
            f"(95% interval {agreement['ci_low']:.0%} to {agreement['ci_high']:.0%})")
    if majority is not None:
        text += f"; a judge that always named the more frequent winner would score {majority:.0%}"
    if kappa is not None:
        text += f" (Cohen's kappa {kappa:.2f}: 0 is chance, 1 full agreement)"
    if agreement["ci_low"] <= max(0.5, majority or 0.5):
        text += (". That is not distinguishable from chance, so its win rates say little about which answers "
                 "GPT-4, the paper's judge, would prefer.")
    else:
        text += ". It agrees with GPT-4 more often than chance, but it is not GPT-4: compare its win rates with "\
                "each other, not with the paper's."
    return text


def winrate_summary(cfg: RunConfig) -> str:
    """What the evaluation shows: answer lengths and, when judged, the win rates with their intervals and the
    judge's trustworthiness, in Markdown."""
    table = pd.read_csv(stage_dir(cfg, "eval") / "winrates.csv")
    agreement_path = stage_dir(cfg, "eval") / "judge_agreement.json"
    agreement = read_json(agreement_path) if agreement_path.exists() else {}
    lines = []
    for row in table.itertuples():
        rate = getattr(row, "win_rate", math.nan)
        judged = f"win rate {rate:.1f}% (95% interval {row.ci_low:.1f} to {row.ci_high:.1f})" \
            if pd.notna(rate) else "not judged"
        lines.append(f"- **{row.stage}-{row.arm}:** {judged}; answers average {row.avg_length:.0f} characters.")
    if table["win_rate"].notna().any():
        lines.append("")
        lines.append(agreement_words(agreement))
    else:
        lines.append("\nNo judge ran (judge='none'): the answers are measured for length, repetition and "
                     "diversity in notebook 05.")
    return "\n".join(lines)


WINRATE_COLUMNS = ("stage", "arm", "win_rate", "ci_low", "ci_high", "win_rate_soft", "n_wins", "n_draws", "n_total",
                   "lc_win_rate_approx", "avg_length", "n_clipped")


def winrate_table(winrates: pd.DataFrame) -> pd.DataFrame:
    """The columns of winrates.csv a reader needs, those this run has (a run without a judge has lengths only)."""
    keep = [c for c in WINRATE_COLUMNS if c in winrates and winrates[c].notna().any()]
    return winrates[keep or list(winrates.columns)]
