"""Stage 06: the paper's numbers beside ours, and a verdict per claim computed from results/<run>/ alone.

Writes results/<run>/report/: paper_vs_ours.csv, claims.csv (one row per claim), claim_evidence.csv (one
row per measured part, with its interval), arms.csv (every trained arm and its metrics), summary.md and,
where the run has length-only arms, length_only.csv (them beside the paper's Table 5, neftlib.analysis.length_table).
The verdict rules and intervals are in `neftlib.analysis.claims`; the paper's numbers in `neftlib.analysis.paper`
(every table, set beside ours by `neftlib.analysis.paper_compare`); the smallest effect each verdict could have
detected in `neftlib.analysis.detectable`.
"""
from __future__ import annotations

import pandas as pd

from neftlib.analysis.claims import (CLAIMS, DIVERSITY_MARGIN, DIVERSITY_PART, FORMULA_PART, NOISE, NOT_HELD,
                                     NOT_MEASURED, WIN_BASIS, RunEvidence, combine, difference_verdict, evidence_row,
                                     flat_verdict, interval_verdict, is_chat_model, pick_roles, read_table, unmeasured)
from neftlib.analysis.detectable import add_detectable_effects, detectable_text
from neftlib.analysis.length_table import length_only_report
from neftlib.analysis.pairwise import published_win_rates
from neftlib.analysis.paper import PAPER, STATEMENTS
from neftlib.analysis.paper_compare import headline, paper_vs_ours
from neftlib.analysis.sweep import sweep_conclusion
from neftlib.base.io import mark_done, write_csv
from neftlib.base.paths import run_dir

REPORT_TABLES = ("paper_vs_ours", "claims", "claim_evidence", "arms")


def our_evidence(ev: RunEvidence, roles: dict[str, dict] | None = None) -> list[dict]:
    """Every claim part measured on the run's arms. `roles`: {stage: {"baseline": arm, "neftune": arm,
    "gaussian": arm}}; by default chosen from the arms' recorded noise (claims.pick_roles)."""
    roles = roles or {stage: pick_roles(ev.arms, stage, ev.info["alpha"]) for stage in ("train", "qlora")}
    train, qlora = roles.get("train", {}), roles.get("qlora", {})
    neft = (train.get("baseline"), train.get("neftune"))
    parts = [ev.win_rate("win_rate_up", "train", neft),
             ev.win_rate("qlora", "qlora", (qlora.get("baseline"), qlora.get("neftune")))]
    if is_chat_model(ev.info["model"]):
        parts.append(ev.win_rate("chat_gain", "train", neft, part="win rate (starting from a chat model)"))
    else:
        parts.append(unmeasured("chat_gain", "win rate", "train", neft, f"the run starts from {ev.info['model']}, "
                                "not an instruction- or chat-tuned model"))
    parts += ev.openllm("openllm_flat", "train", neft)
    parts.append(ev.loss("loss", "train", neft, "train", "higher", "loss without noise on the training subset"))
    other = ev.loss("loss", "train", neft, "other", "lower", f"loss on another set ({ev.info['other_data']})")
    if other["verdict"] == NOT_MEASURED:  # no second kind of data: the held-out rows stand in, and say so
        other = ev.loss("loss", "train", neft, "heldout", "lower", "loss on held-out training-set rows")
    parts.append(other)
    parts += [ev.overlap("overlap", "train", neft, "ROUGE-L"), ev.overlap("overlap", "train", neft, "BLEU")]
    parts += [ev.length("length_diversity", "train", neft), ev.diversity("length_diversity", "train", neft)]
    gauss = (train.get("neftune"), train.get("gaussian"))
    parts += [ev.length("gaussian", "train", gauss),
              ev.win_rate("gaussian", "train", gauss, expect="lower", part="win rate, Gaussian vs uniform")]
    return [{"scope": "ours", **p} for p in parts]


def published_win_row(claim: str, pair: str, models: tuple, n_boot: int = 2000, seed: int = 0) -> dict:
    """The GPT-4 win rates of a published before/after pair, compared over the same 805 prompts (paired)."""
    w = published_win_rates(models, n_boot, seed)
    if w is None:
        return unmeasured(claim, "GPT-4 win rate, published answers", pair, models, "published annotations not found")
    return evidence_row(claim, "GPT-4 win rate, published answers", pair, models,
                        difference_verdict(w["low"], w["high"]), f"{w['n']} prompts judged for both models",
                        basis=WIN_BASIS, **{k: w[k] for k in ("baseline", "treatment", "difference", "low", "high")})


def published_evidence(run: str, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The same claims on the paper's published answers (analysis/published_diversity.csv), where they apply."""
    table = read_table(run_dir(run) / "analysis" / "published_diversity.csv")
    if table is None or "win_rate" not in table or not (table["status"] == "ok").all():
        why = "published answers not analysed" if table is None else str(table["status"].iloc[0])
        return [{"scope": "published", **unmeasured(c, "published answers", "-", (None, None), why)}
                for c in ("win_rate_up", "chat_gain", "length_diversity")]
    parts = []
    for pair, claim in (("alpaca", "win_rate_up"), ("chat", "chat_gain")):
        b, t = (table[(table["pair"] == pair) & (table["arm"] == arm)].iloc[0] for arm in ("baseline", "neftune"))
        models = (b["model"], t["model"])
        parts.append(published_win_row(claim, pair, models, n_boot, seed))
        parts.append(evidence_row("length_diversity", f"answer length (characters), {pair} pair", pair, models,
                                  interval_verdict((b["avg_chars_low"], b["avg_chars_high"]),
                                                   (t["avg_chars_low"], t["avg_chars_high"])),
                                  basis="each model's bootstrap 95% interval", baseline=b["avg_chars"],
                                  treatment=t["avg_chars"], difference=t["avg_chars"] - b["avg_chars"],
                                  baseline_low=b["avg_chars_low"], baseline_high=b["avg_chars_high"],
                                  treatment_low=t["avg_chars_low"], treatment_high=t["avg_chars_high"]))
        # Different answers, not paired: the difference's interval is bounded by the two models' intervals.
        # Release-code log-diversity: the paper's Table 4 scale.
        col = "log_diversity_release" if "log_diversity_release_low" in table else "log_diversity"
        low = t[f"{col}_low"] - b[f"{col}_high"]
        high = t[f"{col}_high"] - b[f"{col}_low"]
        margin = DIVERSITY_MARGIN * abs(b[col])
        verdict, diff = flat_verdict(low, high, margin), t[col] - b[col]
        moved = {NOT_HELD: "; diversity rose, less repetition" if diff > 0 else "; diversity fell"}.get(verdict, "")
        label = DIVERSITY_PART if col == "log_diversity_release" else FORMULA_PART
        parts.append(evidence_row("length_diversity", f"{label} (cut at {int(b['cutoff'])} words), {pair} pair",
                                  pair, models, verdict, f"'unchanged' means within +-{margin:.3g}{moved}",
                                  basis="difference bounded by each model's bootstrap 95% interval (conservative)",
                                  baseline=b[col], treatment=t[col], difference=diff, low=low, high=high))
    return [{"scope": "published", **p} for p in parts]


def _describe(r: pd.Series) -> str:
    if r["verdict"] == NOT_MEASURED:
        return f"{r['part']}: not measured ({r['note']})"
    # a win rate from answers the judge saw clipped says so wherever it is shown
    clipped = f" ({str(r['note']).split('; ')[-1]})" if "clipped to fit" in str(r["note"]) else ""
    if pd.notna(r["baseline_low"]):
        text = (f"{r['part']}: {r['baseline']:.4g} [{r['baseline_low']:.4g}, {r['baseline_high']:.4g}] -> "
                f"{r['treatment']:.4g} [{r['treatment_low']:.4g}, {r['treatment_high']:.4g}]: {r['verdict']}")
    else:
        interval = f", 95% CI [{r['low']:.4g}, {r['high']:.4g}]" if pd.notna(r["low"]) else ""
        moved = f" ({str(r['note']).split('; diversity ')[1].split(';')[0]})" if "; diversity " in str(r["note"]) else ""
        text = (f"{r['part']}: {r['baseline']:.4g} -> {r['treatment']:.4g} "
                f"(difference {r['difference']:+.4g}{interval}): {r['verdict']}{moved}")
    if r["verdict"] == NOISE and pd.notna(r.get("detectable_effect")):
        text += f" ({detectable_text(r['detectable_effect'])})"
    return text + clipped


def claims_table(evidence: pd.DataFrame, info: dict, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the paper's statement, table and numbers, ours, our numbers, the combined verdicts,
    and the smallest change each of our parts could have detected."""
    rows = []
    for claim, text in CLAIMS.items():
        ours = evidence[(evidence["claim_id"] == claim) & (evidence["scope"] == "ours")]
        pub = evidence[(evidence["claim_id"] == claim) & (evidence["scope"] == "published")]
        source, setting, says = STATEMENTS[claim]
        arms = sorted({f"{r.stage}: {r.baseline_arm} -> {r.treatment_arm}" for r in ours.itertuples()
                       if r.baseline_arm and r.treatment_arm})
        detectable = [f"{r['part']}: {r['detectable_effect']:.3g}" for _, r in ours.iterrows()
                      if pd.notna(r["detectable_effect"])]
        rows.append({"claim_id": claim, "claim": text, "paper_says": says, "paper_source": f"{PAPER}, {source}",
                     "paper_table": source.split(" (")[0], "paper_numbers": headline(paper, claim),
                     "paper_setting": setting,
                     "our_setting": f"{info['model']} ({info['method']}) on {info['train_data']}; {info['scale']}",
                     "arms": "; ".join(arms), "measured": "; ".join(_describe(r) for _, r in ours.iterrows()),
                     "verdict": combine(list(ours["verdict"])),
                     "detectable_effect": "; ".join(detectable),
                     "detectable_basis": "; ".join(sorted({str(b) for b in ours["detectable_basis"] if b})),
                     "published_measured": "; ".join(_describe(r) for _, r in pub.iterrows()),
                     "published_verdict": combine(list(pub["verdict"])) if len(pub) else NOT_MEASURED})
    return pd.DataFrame(rows)


def summary_markdown(claims: pd.DataFrame, info: dict) -> str:
    """The claims in a few lines of Markdown: which held at our scale and which did not, each beside the paper's
    number from its table, and beside every 'within noise' the smallest change the run could have detected."""
    lines = [f"### Claims at our scale: {info['model']} ({info['method']}) on {info['train_data']}",
             f"{info['scale']}; judge: {info['judge']}.",
             "Beside every *within noise*: the smallest change this run could detect with 80% power at 95% "
             "confidence, from its own variances" + (" (one training seed per arm: the seed's share is not measured "
             "and taken as 0, so these are lower bounds)." if claims["detectable_basis"].str.contains(
                 "one training seed").any() else "."), ""]
    for r in claims.itertuples():
        published = ("" if r.published_verdict == NOT_MEASURED
                     else f" (paper's published answers: {r.published_verdict})")
        lines.append(f"- **{r.claim}**: {r.verdict}{published}. {r.measured}")
        lines.append(f"  - {r.paper_numbers}")
    counts = claims["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."]
    return "\n".join(lines)


def build_report(run: str, roles: dict[str, dict] | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Every report table of a run, from its results alone, written to results/<run>/report/ (rebuilt each
    call: the tables only derive from results, so a later sweep arm or analysis shows up on the next call)."""
    ev = RunEvidence(run, n_boot=n_boot, seed=seed)
    if ev.arms.empty:
        raise FileNotFoundError(f"{run_dir(run)} has no trained arms (train/summary.csv): run 01-05 first")
    roles = roles or {stage: pick_roles(ev.arms, stage, ev.info["alpha"]) for stage in ("train", "qlora")}
    evidence = pd.DataFrame(our_evidence(ev, roles) + published_evidence(run, n_boot, seed))
    evidence = add_detectable_effects(evidence, ev.arms)
    effects = read_table(run_dir(run) / "analysis" / "alpha_effects.csv")
    paper = paper_vs_ours(evidence, ev.info, ev.arms, roles, effects)
    tables = {"claims": claims_table(evidence, ev.info, paper), "paper_vs_ours": paper,
              "claim_evidence": evidence, "arms": ev.arms}
    out = run_dir(run) / "report"
    for name in REPORT_TABLES:
        write_csv(out / f"{name}.csv", tables[name].astype(object).where(tables[name].notna(), None).to_dict("records"))
    summary = summary_markdown(tables["claims"], ev.info)
    if effects is not None:
        conclusion = sweep_conclusion(effects)
        summary += f"\n\n{conclusion}" if conclusion else ""
    length, length_text = length_only_report(run)  # the paper's Table 5 beside our length-only arms
    if not length.empty:
        tables["length_only"] = length
        write_csv(out / "length_only.csv", length.astype(object).where(length.notna(), None).to_dict("records"))
        summary += f"\n\n{length_text}"
    tmp = out / ".summary.md.tmp"
    tmp.write_text(summary + "\n", encoding="utf-8")
    tmp.replace(out / "summary.md")
    mark_done(out, tables=list(REPORT_TABLES))
    tables["summary"] = summary
    return tables
