"""A local judge calibrated on the paper's own answers: does it see GPT-4's jump from Alpaca-7B to Alpaca-7B-NEFT?

Both published models' answers are judged against Text-Davinci-003 on the same prompts, in both orders, and set
beside GPT-4's judgments of the same pairs and a judge that always prefers the longer answer. The rule
(docs/methodology.md, neftlib.analysis.verdict.calibration_passes): the judge passes when its paired win-rate
difference excludes 0 in GPT-4's direction and reaches a quarter of GPT-4's.

    python -m neftlib.analysis.calibration --out docs/evidence/judge-calibration-<date> [--prompts 200]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from neftlib.analysis.verdict import CALIBRATION_SHARE, calibration_passes, decided_share, paired_interval
from neftlib.base.io import read_json, write_csv, write_json
from neftlib.base.paths import data_dir, run_dir
from neftlib.evaluation.agreement import check_references, reference_file
from neftlib.evaluation.judge import Judgments, LocalJudge, vote
from neftlib.evaluation.winrate import discrete_preference, load_annotations
from neftlib.training.models import load_base, load_tokenizer

PAIR = ("alpaca-7b", "alpaca-7b-neft")  # the paper's own before / after pair (LLaMA-1-7B on Alpaca)
COLUMNS = ("model", "n_prompts", "local_win_rate", "local_win_rate_soft", "gpt4_win_rate", "length_baseline_win_rate")


def _gpt4_values(path: Path) -> np.ndarray:
    """GPT-4's win value per prompt (1 model, 0 reference, 0.5 draw, NaN no judgment), in file order."""
    values = [discrete_preference(r["preference"]) for r in load_annotations(path)]
    return np.array([math.nan if v is None else v - 1.0 for v in values], dtype=float)


def _longer(outputs: list[str], references: list[str]) -> np.ndarray:
    """The 'longer answer wins' judge: 1 when the model's answer is longer, 0 shorter, 0.5 equal."""
    return np.array([1.0 if len(o) > len(r) else 0.0 if len(o) < len(r) else 0.5
                     for o, r in zip(outputs, references)])


def judge_published(judge, root: Path, prompts: list[int], cache: Path | None, progress: bool = True
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Per published model, per chosen prompt: the local judge's discrete and soft win values (both orders),
    GPT-4's and the longer-answer judge's."""
    refs = read_json(reference_file(root))
    out = {}
    for model in PAIR:
        answers = read_json(Path(root) / "alpaca_eval" / model / "model_outputs.json")
        gpt4 = _gpt4_values(Path(root) / "alpaca_eval" / model / "annotations_alpaca_eval_gpt4.json")
        instr = [refs[i]["instruction"] for i in prompts]
        outs, rs = [answers[i]["output"] for i in prompts], [refs[i]["output"] for i in prompts]
        judged: Judgments = judge.judge_orders(instr, outs, rs, progress=progress,
                                               cache_path=cache and cache / f"{model}.json")
        out[model] = {"local": np.array([0.5 * (vote(a) + vote(b)) for a, b in judged.p_model]),
                      "local_soft": np.array([0.5 * (a + b) for a, b in judged.p_model]),
                      "gpt4": gpt4[prompts], "length": _longer(outs, rs)}
    return out


def _agreement(local: np.ndarray, gpt4: np.ndarray) -> float:
    """Share of prompts where the local judge's vote equals GPT-4's, draws counted as a vote of their own."""
    both = np.isfinite(gpt4)
    return float((local[both] == gpt4[both]).mean())


def calibration_tables(values: dict[str, dict[str, np.ndarray]], n_boot: int = 2000, seed: int = 0
                       ) -> tuple[pd.DataFrame, dict]:
    """calibration.csv (one row per model, then the paired difference) and the verdict of the rule."""
    rows = []
    for model in PAIR:
        v = values[model]
        rows.append({"model": model, "n_prompts": len(v["local"]), "local_win_rate": 100 * v["local"].mean(),
                     "local_win_rate_soft": 100 * v["local_soft"].mean(),
                     "gpt4_win_rate": 100 * np.nanmean(v["gpt4"]),
                     "length_baseline_win_rate": 100 * v["length"].mean(),
                     "agreement_with_gpt4": _agreement(v["local"], v["gpt4"]),
                     "length_agreement_with_gpt4": _agreement(v["length"], v["gpt4"]),
                     "local_decided_share": decided_share(v["local"]), "kind": "model"})
    base, neft = (values[m] for m in PAIR)
    diff = {"model": f"{PAIR[1]} minus {PAIR[0]}", "n_prompts": len(base["local"]), "kind": "paired difference"}
    for key, column in (("local", "local_win_rate"), ("local_soft", "local_win_rate_soft"), ("gpt4", "gpt4_win_rate"),
                        ("length", "length_baseline_win_rate")):
        b, t = 100 * base[key], 100 * neft[key]
        ok = np.isfinite(b) & np.isfinite(t)
        b, t = b[ok], t[ok]
        point, low, high = paired_interval(lambda i: t[i].mean() - b[i].mean(), len(b), n_boot, seed)
        diff.update({column: point, f"{column}_low": low, f"{column}_high": high})
    rows.append(diff)
    table = pd.DataFrame(rows)
    passes = calibration_passes(diff["local_win_rate_low"], diff["local_win_rate_high"], diff["local_win_rate"],
                                diff["gpt4_win_rate"])
    verdict = {"passes": passes, "rule": (f"the local judge's paired win-rate difference excludes 0 in GPT-4's "
                                          f"direction and reaches {CALIBRATION_SHARE:.0%} of GPT-4's"),
               "local_difference": diff["local_win_rate"], "local_low": diff["local_win_rate_low"],
               "local_high": diff["local_win_rate_high"], "gpt4_difference": diff["gpt4_win_rate"],
               "verdict": "judge can decide" if passes else "judge cannot decide"}
    return table, verdict


def choose_prompts(n_total: int, n: int, seed: int = 0) -> list[int]:
    """A seeded subset of prompt indices, in file order (the same prompts for both models)."""
    return sorted(random.Random(seed).sample(range(n_total), min(n, n_total)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neftlib.analysis.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="evidence folder to write calibration.csv into")
    parser.add_argument("--prompts", type=int, default=200, help="AlpacaEval prompts (the same for both models)")
    parser.add_argument("--judge-model", default="smollm2-135m-instruct", help="the local judge's model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        print("calibration needs the published answers: set NEFTLIB_DATA_DIR to the real-data folder (docs/data.md)",
              file=sys.stderr)
        return 2
    n_total = check_references(root, PAIR)
    prompts = choose_prompts(n_total, args.prompts, args.seed)
    judge = LocalJudge(load_base(args.judge_model), load_tokenizer(args.judge_model), name=f"local:{args.judge_model}")
    values = judge_published(judge, root, prompts, cache=run_dir("judge-calibration") / "cache")
    table, verdict = calibration_tables(values, seed=args.seed)
    write_csv(args.out / "calibration.csv", table.astype(object).where(table.notna(), None).to_dict("records"))
    write_json(args.out / "verdict.json", {**verdict, "judge": judge.name, "prompts": prompts, "seed": args.seed})
    per_prompt = pd.DataFrame([{"model": m, "prompt": p, **{k: float(v[k][j]) for k in v}}
                               for m in PAIR for j, p in enumerate(prompts) for v in [values[m]]])
    write_csv(args.out / "per_prompt.csv", per_prompt.to_dict("records"))
    print(json.dumps(verdict, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
