"""Hand-off to the official `alpaca_eval` package: GPT-4 judges a run's answers as the leaderboard does.

Runs alpaca_eval's own evaluation, with its own judging prompt, order randomisation, caching and
metrics, on the model_outputs.json that stage 04 wrote for each arm, against the same reference
answers (Text-Davinci-003's, as in the paper). The same as, for one arm:

    alpaca_eval evaluate --model_outputs results/<run>/eval/<stage>-<arm>/model_outputs.json \
        --reference_outputs <the run's reference answers> --annotators_config alpaca_eval_gpt4

Needs `pip install alpaca-eval==0.6.6` and OPENAI_API_KEY in the environment (paid GPT-4 calls);
neftlib never reads or writes the key, alpaca_eval takes it from the environment. Run it with
`python -m neftlib.evaluation.judge_alpaca_eval RUN`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

import pandas as pd

from neftlib.base.config import config_from_json
from neftlib.base.io import read_json, write_csv, write_json
from neftlib.base.paths import run_dir
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
    if not os.environ.get("OPENAI_API_KEY"):
        missing.append("OPENAI_API_KEY in the environment (the OpenAI account that pays for the GPT-4 judgments)")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neftlib.evaluation.judge_alpaca_eval",
                                     description="official alpaca_eval (GPT-4) win rates of a run's arms")
    parser.add_argument("run", help="results/<run>/ folder name")
    args = parser.parse_args(argv)
    cfg = config_from_json(run_dir(args.run) / "config.json")
    print(alpaca_eval_run(cfg).to_string(index=False))


if __name__ == "__main__":
    main()
