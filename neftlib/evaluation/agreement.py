"""How often a judge agrees with GPT-4 on the published AlpacaEval judgments of the paper's models.

The data folder (`NEFTLIB_DATA_DIR`) holds `alpaca_eval/<model>/annotations_alpaca_eval_gpt4.json`,
where output_1 is the reference (Text-Davinci-003), output_2 the model, and `preference` GPT-4's verdict
(1 = reference, 2 = model, 0 or 1.5 = draw, null = no judgment).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

import numpy as np

from neftlib.evaluation.textstats import read_json_rows
from neftlib.evaluation.winrate import bootstrap_ci, load_annotations

MODELS = ("alpaca-7b", "alpaca-7b-neft", "llama-2-7b-chat-hf", "llama-2-chat-7b-evol70k-neft")


class PairwiseJudge(Protocol):
    name: str

    def judge(self, instructions: list[str], outputs: list[str], references: list[str], *,
              cache_path: Optional[Path] = None, progress: bool = True) -> list[float]: ...


class Pairs(list):
    """A list of judged pairs that also says how many GPT-4 draws / non-judgments were dropped per model."""

    dropped: dict[str, int]


def reference_file(root: Path) -> Path:
    return Path(root) / "alpaca_eval" / "text_davinci_003.json"


def check_references(root: Path, models: Iterable[str] = MODELS) -> int:
    """The reference answers are the ones GPT-4 judged the published models against (`output_1` of their
    annotations), prompt by prompt; returns the number of prompts checked. A mismatch names the file and the fix."""
    refs = read_json_rows(reference_file(root))  # the eval set as 01 reads it
    for model in models:
        path = Path(root) / "alpaca_eval" / model / "annotations_alpaca_eval_gpt4.json"
        if not path.exists():
            continue
        notes = load_annotations(path)
        differ = [i for i, (r, a) in enumerate(zip(refs, notes)) if r["output"] != a["output_1"]
                  or r["instruction"] != a["instruction"]]
        if differ or len(refs) != len(notes):
            raise ValueError(
                f"{reference_file(root)}: {len(differ)} of {len(notes)} reference answers differ from the ones GPT-4 "
                f"judged {model} against ({path}, output_1), first at row {differ[0] if differ else len(notes)}: "
                "replace the file with the annotations' output_1 answers, or every win rate is measured against "
                "another baseline than the paper's")
    return len(refs)


def annotations_path(data_dir: Path, model: str) -> Path:
    return Path(data_dir) / "alpaca_eval" / model / "annotations_alpaca_eval_gpt4.json"


def _gpt4_side(preference: Any) -> Optional[float]:
    """1.0 when GPT-4 preferred the model, 0.0 the reference, None for a draw or no judgment."""
    if preference is None or isinstance(preference, bool):
        return None
    p = float(preference)
    if math.isnan(p) or not 1.0 <= p <= 2.0 or p == 1.5:  # 0 is the legacy draw code, 1.5 the current one
        return None
    return 1.0 if p > 1.5 else 0.0


def published_pairs(data_dir: Path, models: Optional[Iterable[str]] = None,
                    limit_per_model: Optional[int] = None, seed: int = 0) -> Pairs:
    """Pairs GPT-4 judged, as dicts (model, index, instruction, output, reference, gpt4_preference).

    GPT-4 draws (preference 0 or 1.5) and non-judgments (null, NaN, out of [1, 2]) are dropped, since they
    give no side to agree with; the count per model is in the result's `.dropped`. With `limit_per_model`,
    a seeded random subset of each model's remaining pairs is kept, in file order."""
    pairs = Pairs()
    pairs.dropped = {}
    for model in (list(models) if models is not None else MODELS):
        path = annotations_path(data_dir, model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no published GPT-4 annotations for {model!r} (known: {', '.join(MODELS)})")
        rows = load_annotations(path)
        kept = []
        for i, row in enumerate(rows):
            if _gpt4_side(row["preference"]) is None:
                continue
            if not isinstance(row.get("instruction"), str):
                raise ValueError(f"{path}: row {i} has no 'instruction' string")
            kept.append({"model": model, "index": i, "instruction": row["instruction"], "output": row["output_2"],
                         "reference": row["output_1"], "gpt4_preference": float(row["preference"])})
        pairs.dropped[model] = len(rows) - len(kept)
        if limit_per_model is not None and limit_per_model < len(kept):
            # Seeded per model; each file dropped different GPT-4 draws, so the prompts can differ across models.
            chosen = sorted(random.Random(seed).sample(range(len(kept)), limit_per_model))
            kept = [kept[j] for j in chosen]
        pairs.extend(kept)
    return pairs


def _side(preference: float) -> float:
    """The judge's side: 1.0 model, 0.0 reference, 0.5 for a tie (exactly 1.5)."""
    p = float(preference)
    if math.isnan(p) or not 1.0 <= p <= 2.0:
        raise ValueError(f"judge preference {preference!r} is not in [1, 2]")
    return 1.0 if p > 1.5 else 0.0 if p < 1.5 else 0.5


def _cohen_kappa(judge_side: np.ndarray, gpt4_side: np.ndarray) -> Optional[float]:
    """Cohen's kappa over the two sides, a judge tie split half to each side (so observed agreement
    equals the half-credit agreement); None when chance agreement is 1 (one side only)."""
    observed = float(np.mean(1.0 - np.abs(judge_side - gpt4_side)))
    pj, pg = float(judge_side.mean()), float(gpt4_side.mean())
    chance = pj * pg + (1 - pj) * (1 - pg)
    return None if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def _summary(judge_side: np.ndarray, gpt4_side: np.ndarray, prefs: np.ndarray) -> dict[str, Any]:
    share = float(gpt4_side.mean())
    return {
        "n": int(judge_side.size),
        "agreement": float(np.mean(1.0 - np.abs(judge_side - gpt4_side))),
        "cohen_kappa": _cohen_kappa(judge_side, gpt4_side),
        "judge_ties": int((judge_side == 0.5).sum()),
        # win rates (percent) on these pairs: does the judge rank models as GPT-4 does?
        "judge_win_rate": float((prefs - 1.0).mean() * 100),
        "gpt4_win_rate": share * 100,
        # what a judge that always picks GPT-4's majority side would score
        "majority_baseline": max(share, 1.0 - share),
    }


def judge_agreement(judge: PairwiseJudge, pairs: list[dict], cache_path: Optional[Path] = None,
                    progress: bool = True, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Agreement of `judge` with GPT-4 on `pairs` (from `published_pairs`), overall and per model.

    The judge's side is the model when its preference is > 1.5, the reference when < 1.5; a tie (exactly
    1.5) counts as half an agreement. Agreement is the mean over pairs, with a seeded 95% percentile
    bootstrap interval overall; Cohen's kappa splits a tie half to each side. Returns a JSON-ready dict."""
    if not pairs:
        raise ValueError("no pairs to judge")
    prefs = judge.judge([p["instruction"] for p in pairs], [p["output"] for p in pairs],
                        [p["reference"] for p in pairs], cache_path=cache_path, progress=progress)
    if len(prefs) != len(pairs):
        raise ValueError(f"judge {judge.name} returned {len(prefs)} preferences for {len(pairs)} pairs")
    prefs_arr = np.asarray(prefs, dtype=float)
    judge_side = np.array([_side(p) for p in prefs])
    gpt4_side = np.array([_gpt4_side(p["gpt4_preference"]) for p in pairs], dtype=float)
    if np.isnan(gpt4_side).any():
        raise ValueError("pairs include GPT-4 draws or non-judgments: build them with published_pairs")
    low, high = bootstrap_ci(1.0 - np.abs(judge_side - gpt4_side), n_boot=n_boot, seed=seed)
    models = list(dict.fromkeys(p["model"] for p in pairs))
    per_model = {}
    for model in models:
        mask = np.array([p["model"] == model for p in pairs])
        per_model[model] = _summary(judge_side[mask], gpt4_side[mask], prefs_arr[mask])
    result: dict[str, Any] = {"judge": judge.name, **_summary(judge_side, gpt4_side, prefs_arr),
                              "ci_low": low / 100, "ci_high": high / 100, "ci_level": 0.95,
                              "n_boot": n_boot, "seed": seed, "per_model": per_model}
    dropped = getattr(pairs, "dropped", None)
    if dropped is not None:
        result["gpt4_draws_dropped"] = dict(dropped)
    return result
