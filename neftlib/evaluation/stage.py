"""Stage 04: answers to the evaluation prompts for every trained arm, judged against the reference answers."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from neftlib.base.config import RunConfig, stage_config
from neftlib.base.io import is_done, mark_done, read_json, write_csv, write_json
from neftlib.base.paths import data_dir
from neftlib.base.run import LENGTH_STAGE, stage_dir, trained_arms
from neftlib.evaluation.agreement import check_references, judge_agreement, published_pairs, reference_file
from neftlib.evaluation.generate import cap_record, eval_prompts, generate_with_lengths, model_outputs
from neftlib.evaluation.judge import LocalJudge, annotations
from neftlib.evaluation.judge_alpaca_eval import alpaca_eval_lc, check_ready, merge_official, official_run
from neftlib.evaluation.judge_api import OpenAIJudge
from neftlib.evaluation.length_arms import generation_of, length_arm_outputs
from neftlib.evaluation.openllm import openllm_table
from neftlib.evaluation.winrate import (bootstrap_ci, discrete_win_values, length_controlled_win_rate,
                                        summarize_preferences)
from neftlib.training.models import free_memory, load_base, load_tokenizer, on_best_device
from neftlib.training.train import load_trained


def arm_outputs(cfg: RunConfig, stage: str, arm: str, folder: Path, rows: list[dict], tok, *,
                name: str = "model_outputs", progress: bool = True) -> list[dict]:
    """Generate (or reuse) an arm's answers to `rows`, saved as <eval>/<stage>-<arm>/<name>.json, with the
    tokens per answer and which ones the cap cut in <name>_lengths.json (alpaca_eval's format has no room)."""
    out = stage_dir(cfg, "eval") / f"{stage}-{arm}" / f"{name}.json"
    if out.exists():
        return read_json(out)
    run_cfg, _ = stage_config(cfg, stage)
    model = load_trained(run_cfg, folder)
    answers, new_tokens = generate_with_lengths(
        model, tok, eval_prompts(rows, cfg.prompt_format, tok), max_new_tokens=cfg.gen_max_new_tokens,
        batch_size=cfg.gen_batch_size, repetition_penalty=cfg.repetition_penalty, progress=progress,
        desc=f"{stage}-{arm}")
    del model
    free_memory()  # before the next arm's model is loaded
    outputs = model_outputs(rows, answers, generator=f"{cfg.run_name}-{stage}-{arm}")
    write_json(out.with_name(f"{name}_lengths.json"), cap_record(new_tokens, cfg.gen_max_new_tokens))
    write_json(out, outputs)  # last: its presence means both files are complete
    return outputs


# The local judge only scores (one forward per judging text, never generate): a KV cache would keep every
# layer's keys and values of the whole batch for nothing. neftlib.pipeline.estimate counts what it keeps.
JUDGE_USE_CACHE = False


def make_judge(cfg: RunConfig):
    """The configured pairwise judge: a local transformers model, or an OpenAI-compatible endpoint."""
    if cfg.judge == "openai":
        return OpenAIJudge(model=cfg.judge_model or None)
    name = cfg.judge_model or cfg.model
    four_bit = judge_in_4bit(cfg)
    model = on_best_device(load_base(name, precision=cfg.precision, load_in_4bit=four_bit))
    model.config.use_cache = JUDGE_USE_CACHE
    # the table's judge column says when the judge is the 4-bit base
    return LocalJudge(model, load_tokenizer(name), name=f"local:{name}" + (" (4-bit NF4)" if four_bit else ""))


def judge_in_4bit(cfg: RunConfig) -> bool:
    """A QLoRA run's own base model judges in 4-bit, as it was trained: in fp16 a 7B judge (13.5 GB) would not
    fit a free Colab T4 (15 GB of GPU memory, 12.7 GB of RAM to load it through)."""
    return cfg.load_in_4bit and not cfg.judge_model


def measure_agreement(cfg: RunConfig, judge, progress: bool = True) -> dict:
    """The judge's agreement with GPT-4 on published judged pairs (empty when there are none to use)."""
    out = stage_dir(cfg, "eval") / "judge_agreement.json"
    if out.exists():
        return read_json(out)
    root = data_dir()
    if cfg.agreement_pairs <= 0 or root is None or not (root / "alpaca_eval").is_dir():
        return {}
    pairs = published_pairs(root, limit_per_model=cfg.agreement_pairs, seed=cfg.seed)
    result = judge_agreement(judge, pairs, cache_path=stage_dir(cfg, "eval") / "judge_cache.json", progress=progress)
    write_json(out, result)
    return result


def unjudged_row(cfg: RunConfig, stage: str, arm: str, outputs: list[dict]) -> dict:
    """A winrates.csv row for judge='none': the answers' count and length, and no win rate."""
    lengths = [len(o["output"]) for o in outputs]
    return {"run": cfg.run_name, "stage": stage, "arm": arm, "judge": "none", "win_rate": float("nan"),
            "win_rate_soft": float("nan"), "lc_win_rate_approx": float("nan"), "n_total": len(outputs),
            "avg_length": sum(lengths) / len(lengths) if lengths else float("nan")}


def judged_row(cfg: RunConfig, stage: str, arm: str, rows: list[dict], outs: list[dict], judge, agreement: dict,
               progress: bool = True) -> dict:
    """Judge one arm's answers (both orders) -> its annotations.json and its winrates.csv row."""
    folder = stage_dir(cfg, "eval")
    judged = judge.judge_orders([r["instruction"] for r in rows], [o["output"] for o in outs],
                                [r["output"] for r in rows], cache_path=folder / "judge_cache.json", progress=progress)
    notes = annotations(rows, outs, judged, judge.name)
    write_json(folder / f"{stage}-{arm}" / "annotations.json", notes)
    prefs, lengths = judged.discrete(), [len(o["output"]) for o in outs]
    stats = summarize_preferences(prefs, lengths, soft=judged.soft())
    low, high = bootstrap_ci(discrete_win_values(prefs), seed=cfg.seed)
    official_lc, lc_note = alpaca_eval_lc(notes)
    return {"run": cfg.run_name, "stage": stage, "arm": arm, "judge": judge.name, **stats,
            "ci_low": low, "ci_high": high,
            # win rate at equal answer length: a logistic model on the length difference, without alpaca_eval's
            # instruction-difficulty term (winrate.py says how), so an approximation of its LC win rate
            "lc_win_rate_approx": length_controlled_win_rate(prefs, lengths, [len(r["output"]) for r in rows]),
            "lc_win_rate_alpaca_eval": official_lc, "lc_alpaca_eval_note": lc_note,
            # answers are judged whole; these many did not fit the judge's context and were clipped
            "n_clipped": sum(judged.clipped_output), "n_clipped_reference": sum(judged.clipped_reference),
            "judge_context": getattr(judge, "max_context", None),
            # printed beside every win rate: how often this judge sides with GPT-4
            "judge_agreement": agreement.get("agreement"), "agreement_n": agreement.get("n", 0)}


def check_baseline_answers(cfg: RunConfig) -> None:
    """When the prompts come from the real-data folder, their reference answers must be the ones GPT-4 judged the
    paper's published models against; otherwise no win rate here is on the paper's baseline."""
    source = read_json(stage_dir(cfg, "data") / "report.json").get("eval_source", "")
    root = data_dir()
    if root is not None and Path(source) == reference_file(root):
        check_references(root)


def evaluate(cfg: RunConfig, progress: bool = True) -> pd.DataFrame:
    """Win rates (discrete as alpaca_eval counts votes, and soft from probabilities, with standard error, a
    bootstrap 95% interval and length-controlled variants), length, the answers the judge saw clipped and its
    agreement with GPT-4, for every trained arm and every length arm of the baseline model; alpaca_eval's own
    GPT-4 judging when the profile asks for it; OpenLLM tasks when the profile names them."""
    out = stage_dir(cfg, "eval")
    if is_done(out):
        return pd.read_csv(out / "winrates.csv")
    if cfg.official_judge:  # refuse before hours of generation, not after
        check_ready()
    rows = read_json(stage_dir(cfg, "data") / "eval.json")
    check_baseline_answers(cfg)
    tok = load_tokenizer(cfg.model)
    arms = trained_arms(cfg)
    if not arms:
        raise FileNotFoundError(f"no finished training arm under {stage_dir(cfg, 'train')}: run 02 (and 03) first")
    outputs = {(stage, arm): arm_outputs(cfg, stage, arm, folder, rows, tok, progress=progress)
               for stage, arm, folder in arms}
    for arm in cfg.length_arms:  # the paper's Table 5: the baseline model asked for longer answers
        outputs[(LENGTH_STAGE, arm)] = length_arm_outputs(cfg, arm, rows, tok, progress=progress)
    if cfg.judge == "none":
        table = [unjudged_row(cfg, stage, arm, outs) for (stage, arm), outs in outputs.items()]
    else:
        judge = make_judge(cfg)
        agreement = measure_agreement(cfg, judge, progress)
        table = [judged_row(cfg, stage, arm, rows, outs, judge, agreement, progress)
                 for (stage, arm), outs in outputs.items()]
        del judge
        free_memory()  # the judge's weights are gone before lm-eval loads each arm beside them
    for row in table:
        if row["stage"] == LENGTH_STAGE:
            row.update(generation_of(cfg, row["arm"]))
    if cfg.official_judge:  # paid GPT-4 judgments of every arm, cached per arm
        table = merge_official(table, official_run(cfg))
    write_csv(out / "winrates.csv", table)
    if cfg.openllm_tasks:  # ARC / HellaSwag / MMLU / TruthfulQA per arm -> eval/openllm.csv
        openllm_table(cfg)
    mark_done(out)
    return pd.DataFrame(table)
