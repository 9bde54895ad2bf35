"""paper_vs_ours.csv: every table of the paper (neftlib.analysis.paper_rows) with our measurement beside the row that
matches it: same claim, same kind of training data, same alpha or epochs. Each row names its table, and the
judge of both sides: a win rate is only 'same_judge' when both were judged on the same scale (a ChatGPT-judged
number is never read as a GPT-4-judged one, and our local judge matches neither)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from neftlib.analysis.claims import CLAIMS, FORMULA_PART, NOT_MEASURED
from neftlib.analysis.detectable import seed_changes
from neftlib.analysis.paper import JUDGES, STATEMENTS, judge_scale, paper_dataset, table_judge
from neftlib.analysis.paper_rows import OPENLLM_TASKS, T1, T2, T3, T6, T14, paper_rows
from neftlib.analysis.sweep import effect_verdict

_FIGURES = {"loss": "Figure 4", "overlap": "Figure 5"}
# the table each claim (or ablation) is tested against, and its key in paper_tables.json
_CLAIM_TABLES = {"win_rate_up": "Table 1", "chat_gain": "Table 2", "qlora": "Table 3", "openllm_flat": "Figure 3",
                 "length_diversity": "Table 4", "gaussian": "Table 6", "alpha": "Table 6", "epochs": "Table 14"}
_TABLE_KEYS = {"Table 1": T1, "Table 2": T2, "Table 3": T3, "Table 6": T6, "Table 14": T14}
_PUBLISHED_JUDGE = "GPT-4 (alpaca_eval_gpt4 annotations of the published answers)"


def _interval(r: pd.Series) -> str:
    if r["verdict"] == NOT_MEASURED:
        return f"not measured ({r['note']})"
    if pd.notna(r.get("low")):
        return f"difference {r['difference']:+.4g}, 95% CI [{r['low']:.4g}, {r['high']:.4g}]"
    if pd.notna(r.get("baseline_low")):
        return (f"[{r['baseline_low']:.4g}, {r['baseline_high']:.4g}] -> "
                f"[{r['treatment_low']:.4g}, {r['treatment_high']:.4g}]")
    return ""


class _Ours:
    """Our side of each row, built from the run's evidence, arms and alpha sweep."""

    def __init__(self, info: dict, arms: pd.DataFrame):
        self.info, self.arms = info, arms
        self.side = {"ours_model": f"{info['model']} ({info['method']})", "ours_data": info["train_data"],
                     "ours_scale": info["scale"]}

    def alpha_of(self, stage: str, arm) -> float | None:
        rows = self.arms[(self.arms["stage"] == stage) & (self.arms["arm"] == arm)]
        return float(rows["alpha"].iloc[0]) if len(rows) else None

    def judged(self, win: bool) -> dict:
        judge = self.info["judge"] if win else JUDGES["none"]
        return {"ours_judge": judge, "ours_judge_scale": judge_scale(judge) if win else "none"}

    def from_evidence(self, r: pd.Series) -> dict:
        win = "win rate" in str(r["part"])
        published = r.get("scope") == "published"
        side = ({"ours_model": f"{r['baseline_arm']} -> {r['treatment_arm']} (the paper's published answers, "
                               "measured here)", "ours_data": "AlpacaEval, 805 prompts", "ours_scale": "7B",
                 "ours_judge": _PUBLISHED_JUDGE if win else JUDGES["none"],
                 "ours_judge_scale": "gpt4" if win else "none"} if published else {**self.side, **self.judged(win)})
        if r["claim_id"] == "openllm_flat":
            side.update(ours_judge=JUDGES["lm-eval"], ours_judge_scale="lm-eval")
        return {**side, "ours_part": str(r["part"]),
                "ours_alpha": None if published else self.alpha_of(r["stage"], r["treatment_arm"]),
                "ours_arms": f"{r['stage']}: {r['baseline_arm']} -> {r['treatment_arm']}",
                "ours_before": r["baseline"], "ours_after": r["treatment"], "ours_difference": r["difference"],
                "ours_interval": _interval(r), "ours_verdict": r["verdict"], "ours_note": r["note"],
                "ours_detectable_effect": r.get("detectable_effect", math.nan)}

    def from_arms(self, stage: str, pair: tuple, column: str) -> dict | None:
        if None in pair or column not in self.arms:
            return None
        values = [self.arms[(self.arms["stage"] == stage) & (self.arms["arm"] == a)][column] for a in pair]
        if any(v.empty or v.isna().all() for v in values):
            return None
        before, after = (float(v.iloc[0]) for v in values)
        return {**self.side, **self.judged(column == "win_rate"), "ours_part": column,
                "ours_alpha": self.alpha_of(stage, pair[1]),
                "ours_arms": f"{stage}: {pair[0]} -> {pair[1]}", "ours_before": before, "ours_after": after,
                "ours_difference": after - before, "ours_verdict": "not tested (one value per arm, no interval)",
                "ours_interval": ""}

    def alpha_sweep(self, stage: str, column: str, effects: pd.DataFrame | None) -> dict[float, dict]:
        """Per uniform alpha > 0: mean over seeds against the alpha-0 arms of the same seeds."""
        changes = seed_changes(self.arms, stage, column) if column in self.arms else pd.DataFrame()
        out = {}
        rows = self.arms[self.arms["stage"] == stage]
        for comparison, frame in changes.groupby("comparison") if len(changes) else ():
            if not comparison.startswith("uniform"):
                continue
            alpha = float(comparison[len("uniform"):])
            base = rows[(rows["alpha"] == 0) & rows["seed"].isin(frame["seed"])][column].mean()
            entry = {**self.side, **self.judged(column == "win_rate"), "ours_part": f"{column}, alpha {alpha:g}",
                     "ours_alpha": alpha,
                     "ours_arms": f"{stage}: alpha 0 -> {alpha:g}, {len(frame)} seed(s)", "ours_before": base,
                     "ours_after": base + frame["change"].mean(), "ours_difference": frame["change"].mean(),
                     "ours_interval": f"per-seed changes {', '.join(f'{c:+.4g}' for c in frame['change'])}"}
            if effects is not None and "metric" in effects:
                match = effects[(effects["stage"] == stage) & (effects["metric"] == column)
                                & (effects["distribution"] == "uniform") & (effects["alpha"] == alpha)]
                if len(match):
                    entry["ours_verdict"] = effect_verdict(match.iloc[0])
                    entry["ours_detectable_effect"] = match.iloc[0].get("detectable_effect", math.nan)
            out[alpha] = entry
        return out


def _ours_by_slot(evidence: pd.DataFrame, info: dict, arms: pd.DataFrame, effects, roles: dict) -> tuple:
    """{paper slot: our side} and the parts of ours that have no paper row: (claim, part, paper slot whose
    numbers to show beside it or None, our side, note)."""
    ours = _Ours(info, arms)
    # Data unlike any of the paper's (the embedded mini set) is set beside the paper's Alpaca column, and says so.
    data = paper_dataset(info["train_data"]) or "Alpaca"
    slots, extra = {}, []
    epochs = info.get("epochs")
    for _, r in evidence.iterrows():
        claim, part, entry = r["claim_id"], str(r["part"]), ours.from_evidence(r)
        if r.get("scope") == "published":
            pair = "alpaca" if "alpaca" in str(r["baseline_arm"]) else "chat"
            kind = "win rate" if "win rate" in part else "answer length" if part.startswith("answer length") else None
            if r["verdict"] == NOT_MEASURED:
                continue
            if kind and (pair, kind) != ("chat", "answer length"):
                slots[("published", pair, kind)] = entry
            else:
                extra.append((claim, part, ("length_diversity", "Alpaca", "log_diversity") if kind is None else None,
                              entry, "the published answers are LLaMA-1-7B (alpaca) or LLaMA-2-7B-Chat (chat); "
                              "Table 4's rows are LLaMA-2-7B"))
            continue
        key = {"win_rate_up": ("win_rate_up", data), "chat_gain": ("chat_gain", "LLaMA-2-Chat (7B)")}.get(claim)
        if claim == "qlora":
            alpha = entry["ours_alpha"] if entry["ours_alpha"] is not None else info.get("alpha")
            key = ("qlora", data, int(alpha) if alpha in (5.0, 10.0, 15.0) else alpha, "7B")
        if claim == "openllm_flat":
            task = part.split("_")[0].split(" ")[0].lower()
            key = ("openllm_flat", data, "Llama-2 7B", task if task in OPENLLM_TASKS.values() else "arc")
        if claim == "length_diversity":
            key = ("length_diversity", data, "char_length" if part.startswith("answer length") else "log_diversity")
        if claim == "gaussian":
            key = ("gaussian", data, "win rate" if "win rate" in part else "answer length")
        if claim == "win_rate_up" and isinstance(epochs, (int, float)) and float(epochs).is_integer():
            slots.setdefault(("epochs", int(epochs)), entry)
        if key is None or claim in _FIGURES:
            extra.append((claim, part, None, entry, ""))
        else:
            slots[key] = entry
    neft = (roles.get("train", {}).get("baseline"), roles.get("train", {}).get("neftune"))
    for prefix, column in (("whitespace_length", "avg_tokens"), ("rep2_percent", "rep_2")):
        found = ours.from_arms("train", neft, column)
        if found:
            slots[("length_diversity", data, prefix)] = found
    formula = ours.from_arms("train", neft, "log_diversity")
    if formula:
        extra.append(("length_diversity", f"{FORMULA_PART} (not Table 4's scale)", None, formula,
                      "compare with the release-code row, which is on the paper's scale"))
    for stage, kinds in (("train", (("win_rate", "win rate"), ("avg_chars", "answer length"))),
                         ("qlora", (("win_rate", None),))):
        for column, kind in kinds:
            for alpha, entry in ours.alpha_sweep(stage, column, effects).items():
                if alpha in (5.0, 10.0, 15.0):
                    key = ("alpha", data, int(alpha), kind) if stage == "train" else ("qlora", data, int(alpha), "7B")
                    slots.setdefault(key, entry)
    return slots, extra


def _judging(row: dict) -> dict:
    if not row.get("ours_judge_scale"):
        return {}
    paper, ours = row["paper_judge_scale"], row["ours_judge_scale"]
    same = paper == ours
    note = "" if same else (f"different judges (paper: {JUDGES.get(paper, paper)}; ours: {row['ours_judge']}): "
                            "compare the direction of the change, not the numbers")
    if {paper, ours} == {"gpt4", "chatgpt"}:
        note = "ChatGPT- and GPT-4-judged win rates are different scales: " + note
    return {"same_judge": same, "judge_note": note}


def paper_vs_ours(evidence: pd.DataFrame, info: dict, arms: pd.DataFrame, roles: dict,
                  effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every paper row with ours beside it where one matches; ours with no matching row get their own row,
    naming the table whose claim they test."""
    slots, extra = _ours_by_slot(evidence, info, arms, effects, roles)
    unmatched = paper_dataset(info["train_data"]) is None
    rows, paper = [], paper_rows()
    for row in paper:
        found = slots.pop(row["slot"], None)
        row = {**row, **(found or {})}
        if found and unmatched and row.get("paper_data") == "Alpaca":
            row["note"] = f"our training data ({info['train_data']}) is not Alpaca: compare directions, not numbers"
        rows.append({**row, **_judging(row)})
    by_slot = {r["slot"]: r for r in paper}
    leftovers = [(key[0], entry["ours_part"], None, entry, f"no row of {_CLAIM_TABLES.get(key[0], 'the paper')} "
                  f"matches our setting (alpha {entry.get('ours_alpha')})") for key, entry in slots.items()]
    for claim, part, paper_slot, entry, note in extra + leftovers:
        source = STATEMENTS.get(claim, ("", "", ""))
        table_of = _FIGURES.get(claim) or _CLAIM_TABLES.get(claim) or source[0].split(" (")[0]
        scale = (table_judge(_TABLE_KEYS[table_of]) if "win rate" in part and table_of in _TABLE_KEYS
                 else "lm-eval" if claim == "openllm_flat" else "none")
        base = {k: v for k, v in by_slot[paper_slot].items() if k.startswith("paper_")} if paper_slot else {}
        row = {"claim_id": claim, "topic": CLAIMS.get(claim, claim), "metric": part, "paper_table": table_of,
               "paper_source": source[0] or table_of, "paper_model": source[1], "paper_statement": source[2],
               "paper_judge": JUDGES[scale], "paper_judge_scale": scale, **base, **entry, "note": note}
        rows.append({**row, **_judging(row)})
    table = pd.DataFrame(rows).drop(columns=["ours_part"], errors="ignore")
    table["slot"] = table["slot"].map(lambda s: "/".join(map(str, s)) if isinstance(s, tuple) else s)
    return table


def headline(table: pd.DataFrame, claim: str) -> str:
    """The paper's number for a claim from its matching table, and ours beside it, in one line."""
    rows = table[(table["claim_id"] == claim) & table["paper_before"].notna()]
    if "ours_verdict" in rows:  # the row our measurement (or its absence) was set beside
        with_ours = rows[rows["ours_verdict"].notna()]
        rows = with_ours if len(with_ours) else rows
    if rows.empty:
        source = STATEMENTS.get(claim, ("", "", ""))
        return f"Paper ({source[0]}): {source[2]}"
    r = rows.iloc[0]
    alpha = f", alpha {r['paper_alpha']}" if pd.notna(r.get("paper_alpha")) else ""
    text = (f"Paper ({r['paper_source']}, {r['paper_judge']}; {r['paper_model']} on {r['paper_data']}{alpha}): "
            f"{r['metric']} {r['paper_before']:g} -> {r['paper_after']:g}")
    if r.get("ours_verdict") == NOT_MEASURED:
        text += f"; ours: {NOT_MEASURED}"
    elif pd.notna(r.get("ours_before")):
        same = r.get("same_judge")
        scale = "same scale" if isinstance(same, (bool, np.bool_)) and same else "not the same scale"
        text += f"; ours {r['ours_before']:.4g} -> {r['ours_after']:.4g} ({r['ours_judge']}; {scale})"
    return text
