"""The paper's claims measured on a run's results: one evidence row per measured part of a claim.

Each row holds the change (treatment minus baseline arm) of one metric, its 95% interval and the test that
gives its verdict under the project's one rule (neftlib.analysis.verdict, docs/methodology.md): a paired
bootstrap over the prompts or examples both arms answered (one training seed), or the t test of the per-seed
changes (several seeds; neftlib.analysis.report combines them). `finalize` applies Holm's correction over a
run's rows and writes each verdict. A win rate's per-prompt values are the judge's discrete votes
(eval/<stage>-<arm>/annotations.json). Everything is read from results/<run>/; nothing is retrained.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from neftlib.analysis.pairwise import paired_win_rates
from neftlib.analysis.verdict import (CANNOT_DECIDE, NOT_MEASURED, Test, decide, holm, interval_test,
                                      judge_can_decide, paired_interval)
from neftlib.base.paths import run_dir
from neftlib.evaluation.textstats import LOG_DIVERSITY_CAP, bleu, log_diversity_release_values, whitespace_tokens
from neftlib.evaluation.winrate import prompt_win_values

DIVERSITY_MARGIN = 0.10  # "unchanged" log-diversity: the change's interval within +-10% of the baseline's value
OPENLLM_MARGIN = 2.0  # "flat" OpenLLM accuracy: the change's interval within +-2 points
RELEASED = "the paper's released answers (uncontrolled): no verdict"


def ngram_counts(outputs: Sequence[str], cutoff: int) -> np.ndarray:
    """(answers, n=2..4, [unique, total]) n-gram counts of each answer cut to `cutoff` whitespace tokens;
    shorter answers count zero (dropped), as in textstats' table."""
    counts = np.zeros((len(outputs), 3, 2))
    for i, text in enumerate(outputs):
        tokens = whitespace_tokens(text)
        if len(tokens) < cutoff:
            continue
        tokens = tokens[:cutoff]
        for j, n in enumerate((2, 3, 4)):
            grams = [tuple(tokens[k:k + n]) for k in range(len(tokens) - n + 1)]
            counts[i, j] = (len(set(grams)), len(grams))
    return counts


def log_diversity_of(counts: np.ndarray) -> float:
    """textstats.log_diversity from summed counts (so a bootstrap resample costs one sum)."""
    unique, total = counts.sum(axis=0).T
    if (total == 0).any():
        return math.nan
    diversity = float(np.prod(unique / total))
    return -math.log(max(1.0 - diversity, math.exp(-LOG_DIVERSITY_CAP)))


DIVERSITY_PART = "log-diversity (release code, per answer: the paper's Table 4 scale)"
FORMULA_PART = "log-diversity, formula as written over the whole set"


def release_values(outputs: Sequence[str], cutoff: int) -> np.ndarray:
    """Per answer, the release-code log-diversity of its first `cutoff` whitespace tokens; NaN for an answer
    shorter than the cutoff (dropped, as in textstats' table)."""
    cut = [whitespace_tokens(t)[:cutoff] if len(whitespace_tokens(t)) >= cutoff else [] for t in outputs]
    return np.array(log_diversity_release_values(cut), dtype=float)


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


# ---------- reading a run ----------

def read_table(path: Path) -> pd.DataFrame | None:
    """A CSV of the run, or None when the stage has not written it or the file is empty (write_csv of no rows)."""
    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # e.g. the qlora stage of a profile with no QLoRA arms
        return None


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_info(run: str) -> dict:
    """Model, data, judge and scale of a run, from its config.json, data/report.json and winrates.csv."""
    folder = run_dir(run)
    cfg, data = _json(folder / "config.json") or {}, _json(folder / "data" / "report.json") or {}
    wins = read_table(folder / "eval" / "winrates.csv")
    judge = "no judge run"
    if wins is not None and len(wins):
        judge = f"{wins['judge'].iloc[0]} vs Text-Davinci-003"
        if "judge_agreement" in wins and pd.notna(wins["judge_agreement"].iloc[0]):
            judge += (f" (agrees with GPT-4 on {wins['judge_agreement'].iloc[0]:.0%} of "
                      f"{int(wins['agreement_n'].iloc[0])} published pairs)")
    train = Path(str(data.get("train_source", cfg.get("train_data", "?")))).name
    other = Path(str(data.get("other_source", ""))).name or "none"
    return {"run": run, "model": cfg.get("model", "?"), "method": cfg.get("method", "?"), "alpha": cfg.get("alpha"),
            "train_data": train, "other_data": other, "judge": judge, "seed": cfg.get("seed"),
            "scale": (f"{data.get('train_examples', '?')} training examples, {cfg.get('epochs')} epoch(s), "
                      f"max length {cfg.get('max_length')}, {data.get('eval_prompts', '?')} AlpacaEval prompts"),
            "cutoff": cfg.get("diversity_cutoff", 50), "overlap_limit": cfg.get("overlap_limit"),
            "epochs": cfg.get("epochs")}


def arm_table(run: str) -> pd.DataFrame:
    """One row per trained (stage, arm): its noise, method and every per-arm metric the stages wrote."""
    folder = run_dir(run)
    frames = [read_table(folder / stage / "summary.csv") for stage in ("train", "qlora")]
    frames = [f.assign(stage=stage) for f, stage in zip(frames, ("train", "qlora")) if f is not None]
    if not frames:
        return pd.DataFrame(columns=["stage", "arm", "alpha", "distribution"])
    arms = pd.concat(frames, ignore_index=True)
    arms = arms[[c for c in ("stage", "arm", "alpha", "distribution", "seed", "method", "model", "steps",
                             "examples") if c in arms]]
    wins = read_table(folder / "eval" / "winrates.csv")
    if wins is not None:
        keep = [c for c in ("win_rate", "win_rate_soft", "ci_low", "ci_high", "lc_win_rate_approx", "n_clipped",
                            "avg_length") if c in wins]
        arms = arms.merge(wins[["stage", "arm", *keep]], how="left")
    over = read_table(folder / "analysis" / "overfitting.csv")
    if over is not None:
        keep = [c for c in ("train_loss_nonoise", "heldout_loss", "other_loss", "rouge_l", "bleu") if c in over]
        arms = arms.merge(over[["stage", "arm", *keep]], how="left")
    div = read_table(folder / "analysis" / "diversity.csv")
    if div is not None:
        div = div.assign(stage=div["name"].str.split("-", n=1).str[0], arm=div["name"].str.split("-", n=1).str[1])
        keep = [c for c in ("avg_chars", "avg_tokens", "rep_2", "rep_3", "rep_4", "log_diversity",
                            "log_diversity_release") if c in div]
        arms = arms.merge(div[["stage", "arm", *keep]], how="left")
    return arms


def pick_roles(arms: pd.DataFrame, stage: str, alpha: float | None = None) -> dict[str, str | None]:
    """Which arm of a stage plays baseline (alpha 0), neftune (uniform noise) and gaussian (Gaussian noise
    at the neftune arm's alpha), chosen by their recorded noise, so sweep arms ('alpha10-seed1') work too.
    Among several candidates the arm named like the role wins, else the one at the run's alpha, else the first;
    noised arms prefer the baseline's training seed where arms record one (same data order, only the noise differs)."""
    rows = arms[arms["stage"] == stage]
    seed = None

    def choose(cands: pd.DataFrame, role: str) -> str | None:
        if cands.empty:
            return None
        if role in set(cands["arm"]):
            return role
        if seed is not None and (cands["seed"] == seed).any():
            cands = cands[cands["seed"] == seed]
        at_alpha = cands[cands["alpha"] == alpha] if alpha is not None else cands.iloc[0:0]
        return str((at_alpha if len(at_alpha) else cands)["arm"].iloc[0])

    base = choose(rows[rows["alpha"] == 0], "baseline")
    if base is not None and "seed" in rows:
        seed = rows.loc[rows["arm"] == base, "seed"].iloc[0]
    uniform = rows[(rows["alpha"] > 0) & (rows["distribution"] == "uniform")]
    neft = choose(uniform, "neftune")
    neft_alpha = float(uniform.loc[uniform["arm"] == neft, "alpha"].iloc[0]) if neft else alpha
    gauss = rows[(rows["alpha"] > 0) & (rows["distribution"] == "gaussian")]
    matched = gauss[gauss["alpha"] == neft_alpha]
    return {"baseline": base, "neftune": neft, "gaussian": choose(matched if len(matched) else gauss, "gaussian")}


def is_chat_model(name: str) -> bool:
    """An instruction- or chat-tuned starting model (the paper's LLaMA-2-Chat case), judged by its name."""
    lowered = str(name).lower()
    return any(tag in lowered for tag in ("instruct", "chat", "-it"))


# ---------- evidence, one row per measured part of a claim ----------

CLAIMS = {
    "win_rate_up": "Win rate goes up",
    "qlora": "It works with QLoRA",
    "chat_gain": "Chat models gain",
    "openllm_flat": "OpenLLM tasks stay flat",
    "loss": "Higher training loss but lower cross-set loss",
    "overlap": "Lower ROUGE-L / BLEU on training prompts",
    "length_diversity": "Longer answers with unchanged diversity",
    "gaussian": "Gaussian noise: longer answers without the gain",
    "length_not_all": "The gain is not explained by answer length",
}
WIN_BASIS = "paired bootstrap 95% interval of the difference over the prompts judged for both arms (discrete votes)"
PAIRED_BASIS = "paired bootstrap 95% interval of the difference (BCa)"
SEEDS_BASIS = "t interval of the per-seed paired changes"
VALUES = ("baseline", "treatment", "difference", "low", "high", "baseline_low", "baseline_high", "treatment_low",
          "treatment_high", "n_items")
TEST_COLUMNS = ("design", "n_seeds", "df", "p_value", "detectable_effect", "lower_bound")


def evidence_row(claim: str, part: str, stage: str, arms: tuple, expect: str, note: str = "",
                 test: Test | None = None, margin: float = math.nan, **values) -> dict:
    """One tidy row of claim_evidence.csv: the two arms compared, their values, the interval, the test and (once
    `finalize` has run) the verdict. `expect`: the paper's direction ("higher", "lower" or "unchanged")."""
    row = {"claim_id": claim, "part": part, "stage": stage, "baseline_arm": arms[0], "treatment_arm": arms[1],
           **{k: values.get(k, math.nan) for k in VALUES}, "basis": values.get("basis", ""), "expect": expect,
           "margin": margin, "design": "", "n_seeds": math.nan, "df": math.nan, "p_value": math.nan,
           "detectable_effect": math.nan, "lower_bound": False, "verdict": values.get("verdict", ""), "note": note}
    if test is not None:
        row.update(difference=test.estimate, low=test.low, high=test.high, design=test.design, df=test.df,
                   p_value=test.p_value, detectable_effect=test.detectable, lower_bound=test.lower_bound,
                   n_seeds=test.n if test.design == "seeds" else 1)
    row.update({k: values[k] for k in ("decided_baseline", "decided_treatment") if k in values})
    return row


def unmeasured(claim: str, part: str, stage: str, arms: tuple, note: str, expect: str = "higher") -> dict:
    """A claim part this run cannot measure, and why."""
    return evidence_row(claim, part, stage, arms, expect, note, verdict=NOT_MEASURED)


def row_test(row: pd.Series | dict) -> Test | None:
    """The Test an evidence row holds (None for a row with no measurement)."""
    if not row.get("design"):
        return None
    n = row["n_seeds"] if row["design"] == "seeds" else row["n_items"]
    return Test(float(row["difference"]), float(row["low"]), float(row["high"]), float(row["p_value"]),
                float(row["df"]), str(row["design"]), int(n) if pd.notna(n) else 0, float(row["detectable_effect"]),
                bool(row["lower_bound"]))


def finalize(evidence: pd.DataFrame, calibrated: bool | None = None) -> pd.DataFrame:
    """Every row's verdict under the one rule: the published answers get none (uncontrolled pairs); a win rate from
    a judge that cannot decide gets "judge cannot decide"; the others are decided after Holm's correction over the
    run's tests (`p_holm`). `calibrated`: the judge's calibration on the paper's own answers, where known."""
    ev = evidence.copy()
    ev["p_holm"] = math.nan
    ev["verdict"] = ev["verdict"].fillna("").astype(object)
    published = ev.get("scope", pd.Series("ours", index=ev.index)) == "published"
    ev.loc[published & (ev["verdict"] != NOT_MEASURED), "verdict"] = RELEASED
    judged = ev["part"].astype(str).str.contains("win rate") & ~published & (ev["design"] != "")
    for i in ev.index[judged]:
        shares = [ev.at[i, k] for k in ("decided_baseline", "decided_treatment") if k in ev]
        ok, why = judge_can_decide([float(x) for x in shares if pd.notna(x)], calibrated)
        if not ok:
            ev.at[i, "verdict"] = CANNOT_DECIDE
            ev.at[i, "detectable_effect"] = math.nan
            ev.at[i, "note"] = f"{ev.at[i, 'note']}; {why}".lstrip("; ")
    tested = (~published) & (ev["design"] != "") & (ev["verdict"] == "") & ev["p_value"].notna()
    scopes = ev.get("scope", pd.Series("ours", index=ev.index))
    for scope in scopes[tested].unique():  # one family per scope: this run's arms, or the released answers' test
        family = tested & (scopes == scope)
        ev.loc[family, "p_holm"] = holm(ev.loc[family, "p_value"].to_numpy(float))
    for i in ev.index[(~published) & (ev["verdict"] == "")]:
        test = row_test(ev.loc[i])
        margin = ev.at[i, "margin"] if pd.notna(ev.at[i, "margin"]) else None
        p = ev.at[i, "p_holm"] if pd.notna(ev.at[i, "p_holm"]) else None
        ev.at[i, "verdict"] = decide(test, ev.at[i, "expect"], p, margin)
        if test is not None and pd.notna(ev.at[i, "p_value"]) and ev.at[i, "p_value"] < 0.05 and \
                not (p is not None and p < 0.05):
            ev.at[i, "note"] = f"{ev.at[i, 'note']}; beyond noise before Holm's correction (p = " \
                               f"{ev.at[i, 'p_value']:.2g}), not after (p = {p:.2g})".lstrip("; ")
    return ev


class RunEvidence:
    """A run's results, read once, and the measurement of each claim part on a pair of its arms. `n_boot` 0
    skips the intervals (the per-seed measurements of a multi-seed run need only the change)."""

    def __init__(self, run: str, n_boot: int = 2000, seed: int = 0):
        self.run, self.folder, self.n_boot, self.seed = run, run_dir(run), n_boot, seed
        self.info, self.arms = run_info(run), arm_table(run)
        self.losses = read_table(self.folder / "analysis" / "example_losses.csv")

    def _arm(self, stage: str, arm: str) -> pd.Series | None:
        rows = self.arms[(self.arms["stage"] == stage) & (self.arms["arm"] == arm)]
        return rows.iloc[0] if len(rows) else None

    def _texts(self, stage: str, arm: str, name: str = "model_outputs") -> list[str] | None:
        rows = _json(self.folder / "eval" / f"{stage}-{arm}" / f"{name}.json")
        return None if rows is None else [r["output"] for r in rows]

    def _wins(self, stage: str, arm: str) -> np.ndarray | None:
        path = self.folder / "eval" / f"{stage}-{arm}" / "annotations.json"
        return prompt_win_values(path) if path.exists() else None

    def _clipped(self, stage: str, pair: tuple) -> str:
        """A note when the judge saw answers of these arms clipped to fit its context."""
        if "n_clipped" not in self.arms:
            return ""
        rows = self.arms[(self.arms["stage"] == stage) & self.arms["arm"].isin(pair)]
        n = int(rows["n_clipped"].fillna(0).sum())
        return f"; the judge saw {n} of these arms' answers clipped to fit its context" if n else ""

    def win_rate(self, claim: str, stage: str, pair: tuple, expect: str = "higher", part: str = "win rate") -> dict:
        if None in pair:
            return unmeasured(claim, part, stage, pair, f"no such pair of arms in stage {stage!r}", expect)
        values = [self._wins(stage, a) for a in pair]
        if any(v is None for v in values) or len(values[0]) != len(values[1]):
            return unmeasured(claim, part, stage, pair,
                              "no per-prompt judgments (eval/<stage>-<arm>/annotations.json) for these arms", expect)
        w = paired_win_rates(values[0], values[1], self.n_boot, self.seed)
        return evidence_row(claim, part, stage, pair, expect,
                            f"judge: {self.info['judge']}; {w['n']} prompts judged for both arms"
                            + self._clipped(stage, pair), test=interval_test(w["difference"], w["low"], w["high"],
                                                                             w["n"]),
                            basis=WIN_BASIS, n_items=w["n"],
                            **{k: w[k] for k in ("baseline", "treatment", "decided_baseline", "decided_treatment")})

    def _paired(self, claim, part, stage, pair, stat_b, stat_t, n, expect, margin=math.nan, n_boot=None) -> dict:
        point, low, high = paired_interval(lambda i: stat_t(i) - stat_b(i), n,
                                           self.n_boot if n_boot is None else min(n_boot, self.n_boot), self.seed)
        everything = np.arange(n)
        return evidence_row(claim, part, stage, pair, expect, f"{n} paired items",
                            test=interval_test(point, low, high, n), margin=margin, basis=PAIRED_BASIS,
                            baseline=stat_b(everything), treatment=stat_t(everything), n_items=n)

    def length(self, claim: str, stage: str, pair: tuple) -> dict:
        texts = [self._texts(stage, a) for a in pair] if None not in pair else [None]
        if any(t is None for t in texts) or len(texts[0]) != len(texts[1]):
            return unmeasured(claim, "answer length (characters)", stage, pair, "no matching model_outputs.json")
        lb, lt = (np.array([len(x) for x in t], dtype=float) for t in texts)
        return self._paired(claim, "answer length (characters)", stage, pair, lambda i: lb[i].mean(),
                            lambda i: lt[i].mean(), len(lb), "higher")

    def diversity(self, claim: str, stage: str, pair: tuple) -> dict:
        """Log-diversity on the paper's scale (Table 4): the released per-answer code, averaged over the answers
        that reach the cutoff; the formula as written over the whole set rides along in the note."""
        cutoff = int(self.info["cutoff"])
        part = f"{DIVERSITY_PART} (answers cut at {cutoff} words)"
        texts = [self._texts(stage, a) for a in pair] if None not in pair else [None]
        if any(t is None for t in texts) or len(texts[0]) != len(texts[1]):
            return unmeasured(claim, part, stage, pair, "no matching model_outputs.json", "unchanged")
        vb, vt = (release_values(t, cutoff) for t in texts)
        if np.isnan(vb).all() or np.isnan(vt).all():
            return unmeasured(claim, part, stage, pair, f"no answer of an arm reaches {cutoff} words", "unchanged")
        margin = DIVERSITY_MARGIN * abs(float(np.nanmean(vb)))
        row = self._paired(claim, part, stage, pair, lambda i: _nanmean(vb[i]), lambda i: _nanmean(vt[i]), len(vb),
                           "unchanged", margin)
        row["note"] += f"; 'unchanged' means within +-{margin:.3g} ({DIVERSITY_MARGIN:.0%} of the baseline)"
        cb, ct = (ngram_counts(t, cutoff) for t in texts)
        row["note"] += (f"; {FORMULA_PART} (not the paper's scale): {log_diversity_of(cb):.3g} -> "
                        f"{log_diversity_of(ct):.3g}")
        return row

    def loss(self, claim: str, stage: str, pair: tuple, subset: str, expect: str, part: str) -> dict:
        if self.losses is None or None in pair:
            return unmeasured(claim, part, stage, pair, "no analysis/example_losses.csv: rerun stage 05", expect)
        mine = self.losses[(self.losses["stage"] == stage) & (self.losses["set"] == subset)]
        pick = [mine[mine["arm"] == a] for a in pair]
        both = pick[0].merge(pick[1], on="example", suffixes=("_b", "_t"))
        if both.empty:
            return unmeasured(claim, part, stage, pair, f"no per-example losses on the {subset!r} set", expect)
        tokens = both["tokens_b"].to_numpy(float)
        nb, nt = ((both[f"loss_{s}"].fillna(0) * both[f"tokens_{s}"]).to_numpy(float) for s in ("b", "t"))
        # token-weighted, as the arm's own loss: the resampled statistic is the verdict's statistic
        return self._paired(claim, part, stage, pair, lambda i: nb[i].sum() / tokens[i].sum(),
                            lambda i: nt[i].sum() / tokens[i].sum(), len(both), expect)

    def overlap(self, claim: str, stage: str, pair: tuple, metric: str) -> dict:
        part = f"{metric} of answers to training prompts vs training responses"
        texts = [self._texts(stage, a, "train_prompt_outputs") for a in pair] if None not in pair else [None]
        refs = _json(self.folder / "data" / "train_rows.json")
        if any(t is None for t in texts) or refs is None or len(texts[0]) != len(texts[1]):
            return unmeasured(claim, part, stage, pair, "no train_prompt_outputs.json for these arms", "lower")
        refs = [r["output"] for r in refs[: len(texts[0])]]
        if metric == "BLEU":
            stat_b, stat_t = ((lambda i, t=t: bleu([t[k] for k in i], [refs[k] for k in i])) for t in texts)
            n_boot = 500  # corpus BLEU per resample is the slow part
        else:
            from rouge_score import rouge_scorer
            scorer = rouge_scorer.RougeScorer(["rougeL"])
            sb, st = (np.array([100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(t, refs)]) for t in texts)
            stat_b, stat_t, n_boot = (lambda i: sb[i].mean()), (lambda i: st[i].mean()), None
        return self._paired(claim, part, stage, pair, stat_b, stat_t, len(refs), "lower", n_boot=n_boot)

    def openllm(self, claim: str, stage: str, pair: tuple) -> list[dict]:
        """eval/openllm.csv as openllm_table writes it: rows (stage, arm, task, value, stderr), fractions 0..1,
        compared here in percentage points."""
        table = read_table(self.folder / "eval" / "openllm.csv")
        if table is None or None in pair:
            return [unmeasured(claim, "OpenLLM accuracy", stage, pair,
                               "no OpenLLM results (eval/openllm.csv) in this run", "unchanged")]
        parts = []
        for task, rows in table[table["stage"] == stage].groupby("task"):
            b, t = (rows[rows["arm"] == a] for a in pair)
            if b.empty or t.empty:
                continue
            acc_b, acc_t = 100 * float(b["value"].iloc[0]), 100 * float(t["value"].iloc[0])
            diff = acc_t - acc_b
            se = 100 * math.hypot(float(b.get("stderr", pd.Series([math.nan])).iloc[0]),
                                  float(t.get("stderr", pd.Series([math.nan])).iloc[0]))
            # lm-eval's standard errors are normal theory over many documents: a large n for the t quantiles
            test = interval_test(diff, diff - 1.96 * se, diff + 1.96 * se, UNKNOWN_ITEMS)
            parts.append(evidence_row(claim, f"{task} accuracy", stage, pair, "unchanged",
                                      f"'flat' means within +-{OPENLLM_MARGIN} points", test=test,
                                      margin=OPENLLM_MARGIN, basis="normal 95% interval from the two standard errors",
                                      baseline=acc_b, treatment=acc_t))
        return parts or [unmeasured(claim, "OpenLLM accuracy", stage, pair, "no OpenLLM rows for these arms",
                                    "unchanged")]


UNKNOWN_ITEMS = 1000  # an interval with no item count (OpenLLM's normal interval): normal theory
