"""OpenLLM tasks (ARC, HellaSwag, MMLU, TruthfulQA) through lm-evaluation-harness's Python API.

The paper checks that NEFTune leaves these capabilities where they were (its OpenLLM Leaderboard
table). Every trained arm is scored on the same tasks; rows land in results/<run>/eval/openllm.csv,
one per (arm, task). lm-eval is imported only when a run asks for tasks: `pip install lm-eval==0.4.13`
(the test extra has it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neftlib.base.config import RunConfig, parse_tasks, stage_config
from neftlib.base.io import read_json, write_csv, write_json
from neftlib.base.run import stage_dir, trained_arms
from neftlib.training.models import free_memory, load_tokenizer
from neftlib.training.train import load_trained


# The leaderboard's metric per task: normalised accuracy for ARC and HellaSwag, accuracy for MMLU,
# mc2 for TruthfulQA (lm-eval's truthfulqa_mc2 calls its mc2 score "acc"); acc for any other task.
# lm-eval's `mmlu` group weights subjects by size; the leaderboard averaged the 57 subjects.
METRICS = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm"}
INSTALL = "pip install lm-eval==0.4.13"


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ImportError(f"OpenLLM tasks need lm-evaluation-harness: run `{INSTALL}` "
                          "(or set openllm_tasks='' to skip them)") from None
    return lm_eval


def _split_local(task: str) -> tuple[str, str | None]:
    """A local YAML path -> (its task name, its folder for lm-eval's TaskManager); a name passes through."""
    if task.endswith((".yaml", ".yml")):
        path = Path(task).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"openllm_tasks names {task}, which is not a file")
        return path.stem, str(path.parent)
    return task, None


def run_tasks(model, tokenizer, tasks: tuple[tuple[str, int], ...], *, batch_size: int = 8,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Score an already loaded model on lm-eval tasks, each with its own number of shots.

    One row per task: task, num_fewshot, metric, value (0..1), stderr, n (documents scored)."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    named = [(*_split_local(task), shots) for task, shots in tasks]
    folders = sorted({folder for _, folder, _ in named if folder})
    # lm-eval's own task index takes seconds to build: skipped when every task is a local YAML
    manager = TaskManager(include_path=folders or None, include_defaults=not all(f for _, f, _ in named))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    rows = []
    for name, _, shots in named:
        # One call per task: the leaderboard's shots differ by task, and num_fewshot is per call.
        out = lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=shots, limit=limit,
                                      task_manager=manager, log_samples=False)
        result = out["results"][name]
        metric = METRICS.get(name, "acc")
        stderr = result.get(f"{metric}_stderr,none")
        rows.append({"task": name, "num_fewshot": shots, "metric": metric, "value": float(result[f"{metric},none"]),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                     "n": _n_docs(out, name), "limit": limit})
    return rows


def _n_docs(out: dict, name: str) -> int | None:
    """Documents scored for a task, or summed over a group's subtasks (e.g. mmlu's 57 subjects)."""
    counts, groups = out.get("n-samples", {}), out.get("group_subtasks", {})
    if name in counts:
        return int(counts[name]["effective"])
    found = [n for sub in groups.get(name, []) if (n := _n_docs(out, sub)) is not None]  # groups nest
    return sum(found) if found else None


def openllm_table(cfg: RunConfig) -> pd.DataFrame:
    """`cfg.openllm_tasks` for every trained arm -> results/<run>/eval/openllm.csv (empty: skipped).

    Each arm's scores are saved as eval/<stage>-<arm>/openllm.json as soon as they exist, so an
    interrupted run scores only the arms still missing."""
    tasks = parse_tasks(cfg.openllm_tasks)
    if not tasks:
        return pd.DataFrame()
    _lm_eval()  # fail before loading any model when lm-eval is missing
    tok = load_tokenizer(cfg.model)
    rows = []
    for stage, arm, folder in trained_arms(cfg):
        path = stage_dir(cfg, "eval") / f"{stage}-{arm}" / "openllm.json"
        if path.exists():
            scores = read_json(path)
        else:
            model = load_trained(stage_config(cfg, stage)[0], folder)
            # load_trained's model keeps no KV cache in these forwards; few-shot contexts run to the model's
            # whole context, hence a batch of its own (openllm_batch_size), not generation's
            scores = run_tasks(model, tok, tasks, batch_size=cfg.openllm_batch_size, limit=cfg.openllm_limit)
            write_json(path, scores)
            del model
            free_memory()  # before the next arm's model is loaded
        rows += [{"run": cfg.run_name, "stage": stage, "arm": arm, **s} for s in scores]
    write_csv(stage_dir(cfg, "eval") / "openllm.csv", rows)
    return pd.DataFrame(rows)
