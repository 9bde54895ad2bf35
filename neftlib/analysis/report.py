"""Stage 06: the paper's numbers beside ours, and a verdict per claim computed from results/<run>/ alone.

Writes results/<run>/report/: paper_vs_ours.csv, claims.csv (one row per claim), claim_evidence.csv (one
row per measured part, with its interval), arms.csv (every trained arm and its metrics), summary.md and,
where the run has length-only arms, length_only.csv (them beside the paper's Table 5, neftlib.analysis.length_table).
The verdict rules and intervals are in `neftlib.analysis.claims`; the paper's numbers in `neftlib.analysis.paper`
(every table, set beside ours by `neftlib.analysis.paper_compare`); the smallest effect each verdict could have
detected in `neftlib.analysis.detectable`.
"""
from __future__ import annotations

import copy

import pandas as pd

from neftlib.analysis.claims import (CLAIMS, DIVERSITY_MARGIN, DIVERSITY_PART, FORMULA_PART, NOT_MEASURED, RELEASED,
                                     SEEDS_BASIS, RunEvidence, evidence_row, finalize, is_chat_model, pick_roles,
                                     read_table, unmeasured)
from neftlib.analysis.detectable import detectable_text
from neftlib.analysis.length_control import analyze_published
from neftlib.analysis.length_table import length_only_report
from neftlib.analysis.pairwise import published_win_rates
from neftlib.analysis.paper import PAPER, STATEMENTS
from neftlib.analysis.paper_compare import headline, paper_vs_ours
from neftlib.analysis.sweep import sweep_conclusion
from neftlib.analysis.verdict import interval_test, seeds_test, word
from neftlib.base.io import mark_done, write_csv
from neftlib.base.paths import run_dir

REPORT_TABLES = ("paper_vs_ours", "claims", "claim_evidence", "arms")


def measure_parts(ev: RunEvidence, roles: dict[str, dict]) -> list[dict]:
    """Every claim part measured on one set of arms. `roles`: {stage: {"baseline": arm, "neftune": arm,
    "gaussian": arm}}."""
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
    return parts


def roles_by_seed(arms: pd.DataFrame, stage: str, alpha: float | None) -> dict[int, dict]:
    """{training seed: roles} for every seed with a baseline and a NEFTune arm (a multi-seed run); empty
    when the stage's arms record no seed or only one."""
    rows = arms[arms["stage"] == stage]
    if "seed" not in rows or rows["seed"].isna().all():
        return {}
    out = {}
    for seed in sorted(rows["seed"].dropna().unique()):
        roles = pick_roles(rows[rows["seed"] == seed], stage, alpha)
        if roles["baseline"] and roles["neftune"]:
            out[int(seed)] = roles
    return out if len(out) >= 2 else {}


def combine_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """One row per claim part from its per-seed rows: the t test of the per-seed changes (the seeds design)."""
    rows = []
    for parts in zip(*per_seed):
        first = parts[0]
        measured = [p for p in parts if p["verdict"] != NOT_MEASURED and pd.notna(p["difference"])]
        if len(measured) < 2:
            rows.append(first)
            continue
        test = seeds_test([p["difference"] for p in measured])
        arms = ("; ".join(str(p["baseline_arm"]) for p in measured), "; ".join(str(p["treatment_arm"]) for p in measured))
        extra = {k: float(pd.Series([p.get(k) for p in measured], dtype=float).min())
                 for k in ("decided_baseline", "decided_treatment") if k in first}
        rows.append(evidence_row(first["claim_id"], first["part"], first["stage"], arms, first["expect"],
                                 f"{len(measured)} training seeds, {int(first['n_items'])} paired items each; "
                                 "per-seed changes " + ", ".join(f"{p['difference']:+.4g}" for p in measured),
                                 test=test, margin=first["margin"], basis=SEEDS_BASIS, n_items=first["n_items"],
                                 baseline=float(pd.Series([p["baseline"] for p in measured]).mean()),
                                 treatment=float(pd.Series([p["treatment"] for p in measured]).mean()), **extra))
    return rows


def our_evidence(ev: RunEvidence, roles: dict[str, dict] | None = None) -> list[dict]:
    """Every claim part measured on the run's arms: with several training seeds per arm, the t test of the
    per-seed changes; with one, the paired bootstrap over the prompts. `roles` (one seed's arms) overrides."""
    seeds = {} if roles else roles_by_seed(ev.arms, "train", ev.info["alpha"])
    if seeds:
        quick = copy.copy(ev)
        quick.n_boot = 0  # per seed only the change is needed
        qlora = pick_roles(ev.arms, "qlora", ev.info["alpha"])
        parts = combine_seeds([measure_parts(quick, {"train": r, "qlora": qlora}) for r in seeds.values()])
    else:
        roles = roles or {stage: pick_roles(ev.arms, stage, ev.info["alpha"]) for stage in ("train", "qlora")}
        parts = measure_parts(ev, roles)
    return [{"scope": "ours", **p} for p in parts]


def published_win_row(claim: str, pair: str, models: tuple, n_boot: int = 2000, seed: int = 0) -> dict:
    """The GPT-4 win rates of a published before/after pair, compared over the same 805 prompts (paired)."""
    w = published_win_rates(models, n_boot, seed)
    if w is None:
        return unmeasured(claim, "GPT-4 win rate, published answers", pair, models, "published annotations not found")
    return evidence_row(claim, "GPT-4 win rate, published answers", pair, models, "higher",
                        f"{w['n']} prompts judged for both models",
                        test=interval_test(w["difference"], w["low"], w["high"], w["n"]), n_items=w["n"],
                        basis="paired bootstrap 95% interval over the prompts judged for both models",
                        **{k: w[k] for k in ("baseline", "treatment")})


def published_evidence(run: str, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The paper's released answers measured the same way (analysis/published_diversity.csv): uncontrolled pairs,
    shown with their intervals and no verdict word (`finalize` marks them)."""
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
                                  "higher", "different answers of different models: each model's own interval",
                                  basis="each model's bootstrap 95% interval", baseline=b["avg_chars"],
                                  treatment=t["avg_chars"], difference=t["avg_chars"] - b["avg_chars"],
                                  baseline_low=b["avg_chars_low"], baseline_high=b["avg_chars_high"],
                                  treatment_low=t["avg_chars_low"], treatment_high=t["avg_chars_high"]))
        # Release-code log-diversity: the paper's Table 4 scale.
        col = "log_diversity_release" if "log_diversity_release_low" in table else "log_diversity"
        label = DIVERSITY_PART if col == "log_diversity_release" else FORMULA_PART
        kept = {k: int(r["n_kept"]) for k, r in (("baseline", b), ("treatment", t))
                if "n_kept" in r and pd.notna(r["n_kept"])}
        reach = (f"; answers reaching {int(b['cutoff'])} words: {kept['baseline']} and {kept['treatment']}"
                 if len(kept) == 2 else "")
        parts.append(evidence_row("length_diversity", f"{label} (cut at {int(b['cutoff'])} words), {pair} pair",
                                  pair, models, "unchanged", f"each model's own interval{reach}",
                                  margin=DIVERSITY_MARGIN * abs(b[col]), basis="each model's bootstrap 95% interval",
                                  baseline=b[col], treatment=t[col], difference=t[col] - b[col],
                                  baseline_low=b[f"{col}_low"], baseline_high=b[f"{col}_high"],
                                  treatment_low=t[f"{col}_low"], treatment_high=t[f"{col}_high"]))
    return [{"scope": "published", **p} for p in parts]


LENGTH_SCOPE = "released answers, length-controlled"


def length_control_evidence(n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The paper's Table 5 claim tested on its own released answers: does GPT-4's preference gain survive at equal
    answer length (alpaca_eval's length_controlled_minimal fit, neftlib.analysis.length_control)? A family of its
    own for Holm's correction; the pairs are uncontrolled, which the note says."""
    part = "GPT-4 win-rate gain at equal answer length"
    try:
        result = analyze_published(n_boot=n_boot, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        return [{"scope": LENGTH_SCOPE, **unmeasured("length_not_all", part, "-", (None, None), str(err))}]
    rows = []
    for r in result.pairs[result.pairs["measure"] == "lc_win_rate_approx"].itertuples():
        test = interval_test(r.difference, r.low, r.high, int(r.n))
        rows.append({"scope": LENGTH_SCOPE, **evidence_row(
            "length_not_all", f"{part}, {r.pair} pair", r.pair, (r.baseline, r.neftune), "higher",
            "the paper's released answers (uncontrolled pairs); the fit is read at zero length difference, where few "
            "pairs lie", test=test, basis="percentile bootstrap over the prompts, the fit redone per resample",
            baseline=r.baseline_value, treatment=r.neftune_value, n_items=int(r.n))})
    return rows


def _describe(r: pd.Series) -> str:
    """One evidence row in words: the two values, the change with its interval, and the verdict."""
    if r["verdict"] == NOT_MEASURED:
        return f"{r['part']}: not measured ({r['note']})"
    # a win rate from answers the judge saw clipped says so wherever it is shown
    clipped = f" ({str(r['note']).split('; ')[-1]})" if "clipped to fit" in str(r["note"]) else ""
    verdict = "" if r["verdict"] == RELEASED else f": {r['verdict']}"
    if pd.notna(r["baseline_low"]):
        text = (f"{r['part']}: {r['baseline']:.4g} [{r['baseline_low']:.4g}, {r['baseline_high']:.4g}] -> "
                f"{r['treatment']:.4g} [{r['treatment_low']:.4g}, {r['treatment_high']:.4g}]{verdict}")
    else:
        interval = f", 95% CI [{r['low']:.4g}, {r['high']:.4g}]" if pd.notna(r["low"]) else ""
        seeds = f", {int(r['n_seeds'])} seeds" if r.get("design") == "seeds" else ""
        text = (f"{r['part']}: {r['baseline']:.4g} -> {r['treatment']:.4g} "
                f"(difference {r['difference']:+.4g}{interval}{seeds}){verdict}")
    return text + clipped


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts': their word when they agree, else each part's word in order."""
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    words = [word(v) for v in measured]
    return measured[0] if len(set(words)) == 1 and len(set(measured)) == 1 else \
        (words[0] if len(set(words)) == 1 else " / ".join(measured))


def claims_table(evidence: pd.DataFrame, info: dict, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the paper's statement, table and numbers, ours, our numbers, the combined verdicts,
    and the smallest change each of our parts could have detected."""
    rows = []
    for claim, text in CLAIMS.items():
        ours = evidence[(evidence["claim_id"] == claim) & evidence["scope"].isin(["ours", LENGTH_SCOPE])]
        pub = evidence[(evidence["claim_id"] == claim) & (evidence["scope"] == "published")]
        source, setting, says = STATEMENTS[claim]
        arms = sorted({f"{r.stage}: {r.baseline_arm} -> {r.treatment_arm}" for r in ours.itertuples()
                       if r.baseline_arm and r.treatment_arm})
        detectable = [f"{r['part']}: {'at least ' if r['lower_bound'] else ''}{r['detectable_effect']:.3g}"
                      for _, r in ours.iterrows() if pd.notna(r["detectable_effect"])]
        rows.append({"claim_id": claim, "claim": text, "paper_says": says, "paper_source": f"{PAPER}, {source}",
                     "paper_table": source.split(" (")[0], "paper_numbers": headline(paper, claim),
                     "paper_setting": setting,
                     "our_setting": f"{info['model']} ({info['method']}) on {info['train_data']}; {info['scale']}",
                     "arms": "; ".join(arms), "measured": "; ".join(_describe(r) for _, r in ours.iterrows()),
                     "verdict": combine(list(ours["verdict"])),
                     "detectable_effect": "; ".join(detectable),
                     "design": "; ".join(sorted({str(d) for d in ours["design"] if d})),
                     "published_measured": "; ".join(_describe(r) for _, r in pub.iterrows()),
                     "published_verdict": RELEASED if (pub["verdict"] == RELEASED).any() else NOT_MEASURED})
    return pd.DataFrame(rows)


def summary_markdown(claims: pd.DataFrame, info: dict) -> str:
    """The claims in a few lines of Markdown under the one rule (docs/methodology.md), each beside the paper's
    number from its table."""
    one_seed = (claims["design"].str.contains("prompts")).any()
    lines = [f"### Claims at our scale: {info['model']} ({info['method']}) on {info['train_data']}",
             f"{info['scale']}; judge: {info['judge']}.",
             "Verdicts follow the project's one rule: beyond noise after Holm's correction over this run's tests, "
             "or the largest effect the interval still allows, or the smallest the design could detect (80% power, "
             "95% confidence)" + (" — with one training seed per arm a lower bound, marked 'at least'." if one_seed
                                  else "."), ""]
    for r in claims.itertuples():
        published = "" if r.published_verdict == NOT_MEASURED else f" The paper's released answers (uncontrolled): " \
                                                                    f"{r.published_measured}."
        lines.append(f"- **{r.claim}**: {r.verdict}. {r.measured}.{published}")
        lines.append(f"  - {r.paper_numbers}")
    counts = claims["verdict"].map(word).value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."]
    return "\n".join(lines)


def build_report(run: str, roles: dict[str, dict] | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Every report table of a run, from its results alone, written to results/<run>/report/ (rebuilt each
    call: the tables only derive from results, so a later sweep arm or analysis shows up on the next call)."""
    ev = RunEvidence(run, n_boot=n_boot, seed=seed)
    if ev.arms.empty:
        raise FileNotFoundError(f"{run_dir(run)} has no trained arms (train/summary.csv): run 01-05 first")
    evidence = finalize(pd.DataFrame(our_evidence(ev, roles) + published_evidence(run, n_boot, seed)
                                     + length_control_evidence(n_boot, seed)))
    roles = roles or {stage: pick_roles(ev.arms, stage, ev.info["alpha"]) for stage in ("train", "qlora")}
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
