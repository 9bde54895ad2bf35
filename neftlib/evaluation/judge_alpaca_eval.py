"""Hand-off to the official `alpaca_eval` package: GPT-4 judges a run's answers as the leaderboard does.

Runs alpaca_eval's own evaluation, with its own judging prompt, order randomisation, caching and
metrics, on the model_outputs.json that stage 04 wrote for each arm, against the same reference
answers (Text-Davinci-003's, as in the paper). The same as, for one arm:

    alpaca_eval evaluate --model_outputs results/<run>/eval/<stage>-<arm>/model_outputs.json \
        --reference_outputs <the run's reference answers> --annotators_config alpaca_eval_gpt4

Needs `pip install alpaca-eval==0.6.6` and a key in the environment (paid GPT-4 calls): OPENAI_API_KEY, or
NEFTLIB_JUDGE_API_KEY (with NEFTLIB_JUDGE_BASE_URL), which are handed to alpaca_eval's OpenAI client as
OPENAI_API_KEY (and OPENAI_BASE_URL) for the call only; neftlib never writes the key anywhere. Run it with
`python -m neftlib.evaluation.judge_alpaca_eval RUN`, or let stage 04 run it (RunConfig.official_judge, e.g. the
gpu-7b-gpt4 profile). Either way an arm judged before is read back, never paid for twice.

`alpaca_eval_lc` gives alpaca_eval's own length-controlled win rate (its GLM with the instruction-difficulty
term) of any annotations, where the package and its inputs are there: the prompts must be AlpacaEval's 805
(the difficulty is per prompt) and its GLM fetches precomputed data from the Hugging Face hub (or its cache).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from neftlib.base.config import RunConfig, config_from_json
from neftlib.base.io import read_json, write_csv, write_json
from neftlib.base.paths import data_dir, run_dir
from neftlib.base.run import stage_dir

# AlpacaEval 1's GPT-4 judge: the one whose win rates against Text-Davinci-003 the NEFTune paper reports.
ANNOTATOR = "alpaca_eval_gpt4"
INSTALL = "pip install alpaca-eval==0.6.6"
OUTPUT_KEYS = ("instruction", "output", "generator", "dataset")  # alpaca_eval's model_outputs.json fields


def check_ready() -> None:
    """A clear error naming what to install or set, before anything is read or paid for."""
    missing = []
    if importlib.util.find_spec("alpaca_eval") is None:
        missing.append(f"the alpaca_eval package (`{INSTALL}`)")
    if not (os.environ.get("OPENAI_API_KEY", "").strip() or os.environ.get("NEFTLIB_JUDGE_API_KEY", "").strip()):
        missing.append("OPENAI_API_KEY (or NEFTLIB_JUDGE_API_KEY) in the environment (the OpenAI account that pays "
                       "for the GPT-4 judgments)")
    if missing:
        raise RuntimeError("the official alpaca_eval evaluation needs " + " and ".join(missing)
                           + "; the local judge (judge='local') needs neither")


def check_model_outputs(rows: list[dict], path: Path | str = "model_outputs") -> None:
    """alpaca_eval's format, exactly: a list of rows with instruction, output, generator and dataset strings."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of answers")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(OUTPUT_KEYS):
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}: row {i} has {keys}, alpaca_eval's model_outputs.json wants exactly "
                             f"{list(OUTPUT_KEYS)}")
        bad = [k for k in OUTPUT_KEYS if not isinstance(row[k], str)]
        if bad:
            raise ValueError(f"{path}: row {i}: {bad} must be strings")


@contextlib.contextmanager
def _endpoint_env():
    """NEFTLIB_JUDGE_API_KEY / _BASE_URL as the OpenAI client's own variables, for one call, where those are unset."""
    pairs = {"OPENAI_API_KEY": "NEFTLIB_JUDGE_API_KEY", "OPENAI_BASE_URL": "NEFTLIB_JUDGE_BASE_URL"}
    added = [ours for ours, theirs in pairs.items()
             if not os.environ.get(ours, "").strip() and os.environ.get(theirs, "").strip()]
    for ours in added:
        os.environ[ours] = os.environ[pairs[ours]].strip()
    try:
        yield
    finally:
        for ours in added:
            os.environ.pop(ours, None)


def official_alpaca_eval(model_outputs: Path, reference_outputs: list[dict], output_dir: Path, *,
                         annotators_config: str = ANNOTATOR) -> dict[str, Any]:
    """alpaca_eval's leaderboard row for one model_outputs.json; its annotations and leaderboard go to output_dir.

    `reference_outputs` are the reference rows of the same prompts, in the same order."""
    check_ready()
    rows = read_json(model_outputs)
    check_model_outputs(rows, model_outputs)
    if [r["instruction"] for r in rows] != [r["instruction"] for r in reference_outputs]:
        raise ValueError(f"{model_outputs}: its instructions are not the reference's, in the same order")
    import alpaca_eval

    with _endpoint_env():
        leaderboard, _ = alpaca_eval.evaluate(
            model_outputs=str(model_outputs),
            reference_outputs=reference_outputs,
            annotators_config=annotators_config,
            output_path=str(output_dir),
            precomputed_leaderboard=None,  # our reference subset has no published leaderboard to join
            is_cache_leaderboard=False,
            fn_metric="get_winrate",  # AlpacaEval 1's win rate, as the paper reports
            sort_by="win_rate",
            is_return_instead_of_print=True,
        )
    row = leaderboard.reset_index(names="generator").iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def alpaca_eval_run(cfg) -> pd.DataFrame:
    """The official evaluation of every arm stage 04 answered -> results/<run>/eval/alpaca_eval_gpt4.csv."""
    check_ready()
    folder = stage_dir(cfg, "eval")
    reference = read_json(stage_dir(cfg, "data") / "eval.json")  # the run's prompts with the reference answers
    arms = sorted(p.parent for p in folder.glob("*/model_outputs.json"))
    if not arms:
        raise FileNotFoundError(f"no model_outputs.json under {folder}: run notebook 04 first")
    table = []
    for arm in arms:
        out = arm / "alpaca_eval"
        done = out / "result.json"
        if done.exists():  # judged before: never paid for twice
            result = read_json(done)
        else:
            result = official_alpaca_eval(arm / "model_outputs.json", reference, out)
            write_json(done, result)
        table.append({"run": cfg.run_name, "arm": arm.name, "annotator": ANNOTATOR, **result})
    write_csv(folder / f"{ANNOTATOR}.csv", table)
    return pd.DataFrame(table)


def alpaca_eval_index(instructions: list[str]) -> list[int] | None:
    """Each instruction's position among AlpacaEval's 805 prompts (NEFTLIB_DATA_DIR), or None when any is not one."""
    root = data_dir()
    path = root / "alpaca_eval" / "text_davinci_003.json" if root else None
    if path is None or not path.exists():
        return None
    where = {r["instruction"]: i for i, r in enumerate(read_json(path))}
    index = [where.get(ins) for ins in instructions]
    return None if None in index else index


def alpaca_eval_lc(rows: list[dict]) -> tuple[float, str]:
    """alpaca_eval's own length-controlled win rate of annotation rows (output_1 reference, output_2 model,
    preference), or NaN and why it could not be computed."""
    if importlib.util.find_spec("alpaca_eval") is None:
        return math.nan, f"alpaca_eval not installed ({INSTALL})"
    index = alpaca_eval_index([r["instruction"] for r in rows])
    if index is None:
        return math.nan, "the prompts are not AlpacaEval's 805, whose per-prompt difficulty its GLM needs"
    try:
        from alpaca_eval.metrics import get_length_controlled_winrate

        frame = pd.DataFrame(rows).assign(index=index)
        metrics = get_length_controlled_winrate(frame, save_weights_dir=None)
    except Exception as err:  # noqa: BLE001 (a third-party fit; e.g. offline, its GLM cannot fetch its data)
        return math.nan, f"alpaca_eval's GLM failed: {type(err).__name__}: {str(err)[:200]}"
    return float(metrics["length_controlled_winrate"]), "ok"


def official_run(cfg: RunConfig) -> pd.DataFrame:
    """`alpaca_eval_run` plus alpaca_eval's length-controlled win rate of each arm's GPT-4 annotations."""
    table = alpaca_eval_run(cfg)
    lcs = []
    for arm in table["arm"]:
        notes = stage_dir(cfg, "eval") / arm / "alpaca_eval" / "annotations.json"
        lcs.append(alpaca_eval_lc(read_json(notes)) if notes.exists() else (math.nan, "no annotations.json"))
    return table.assign(lc_win_rate_alpaca_eval=[v for v, _ in lcs], lc_alpaca_eval_note=[n for _, n in lcs])


def merge_official(rows: list[dict], official: pd.DataFrame) -> list[dict]:
    """winrates.csv rows with the official judge's numbers of the same arm, as alpaca_eval_gpt4_<metric> columns."""
    keep = ("win_rate", "discrete_win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
            "lc_win_rate_alpaca_eval", "lc_alpaca_eval_note")
    by_arm = {r["arm"]: r for r in official.to_dict("records")}
    merged = []
    for row in rows:
        found = by_arm.get(f"{row['stage']}-{row['arm']}", {})
        merged.append({**row, **{f"{ANNOTATOR}_{k}": found.get(k, math.nan) for k in keep}})
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neftlib.evaluation.judge_alpaca_eval",
                                     description="official alpaca_eval (GPT-4) win rates of a run's arms")
    parser.add_argument("run", help="results/<run>/ folder name")
    args = parser.parse_args(argv)
    cfg = config_from_json(run_dir(args.run) / "config.json")
    print(alpaca_eval_run(cfg).to_string(index=False))


if __name__ == "__main__":
    main()
