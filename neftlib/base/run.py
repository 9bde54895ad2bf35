"""Where a run's files are: its stage folders, the data 01 prepared and the arms 02 and 03 finished.

Every later stage reads these; they live here, below the stages, so that evaluation and analysis never
reach up into the pipeline that calls them.
"""
from __future__ import annotations

from pathlib import Path

from neftlib.base.config import RunConfig, stage_config
from neftlib.base.io import is_done, read_jsonl
from neftlib.base.paths import run_dir

# eval/length-<arm>/: answers of the length-only arms (the paper's Table 5), the baseline model prompted to write
# more, no training (neftlib.evaluation.length_arms); a stage of its own beside "train" and "qlora".
LENGTH_STAGE = "length"


def stage_dir(cfg: RunConfig, name: str) -> Path:
    return run_dir(cfg.run_name) / name


def load_prepared(cfg: RunConfig, name: str) -> list[dict]:
    path = stage_dir(cfg, "data") / f"{name}.jsonl"
    if not is_done(path.parent):
        raise FileNotFoundError(f"{path.parent} is incomplete: run notebook 01_data_prep first")
    return read_jsonl(path) if path.exists() else []


def trained_arms(cfg: RunConfig) -> list[tuple[str, str, Path]]:
    """(stage, arm, folder) of every finished arm, in training order."""
    found = []
    for stage in ("train", "qlora"):
        for arm in stage_config(cfg, stage)[1]:
            folder = stage_dir(cfg, stage) / arm
            if is_done(folder):
                found.append((stage, arm, folder))
    return found
