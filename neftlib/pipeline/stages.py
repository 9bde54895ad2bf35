"""The pipeline's stages, one function per notebook: each reads results/<run>/ and writes its own folder.

start_run, prepare_data and train_arms also run as every rank of `accelerate launch` / `torchrun`
(`python -m neftlib train`): the main process writes, the other ranks wait at a barrier and then read.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from neftlib.base.config import RunConfig, config_from_json, qlora_config, stage_config
from neftlib.base.io import environment, is_done, mark_done, read_json, write_csv, write_json, write_jsonl
from neftlib.base.paths import MINI_TRAIN, run_dir
from neftlib.base.recipes import load_config
from neftlib.base.run import load_prepared, stage_dir, trained_arms  # noqa: F401 (also read as stages.X by the CLI, demo, tests)
from neftlib.data.prepare import load_eval_set, load_instructions, resolve_train_source, tokenize_rows
from neftlib.data.sources import HubPin
from neftlib.pipeline.lock import check_free
from neftlib.training.models import load_tokenizer, pin_revision
from neftlib.training.train import process_state, train


# Fields that `python -m neftlib train` sets from its command line (--grad-accum, --model) and the
# notebooks cannot: a later `run` or notebook of the same run keeps the values it was trained with.
TRAIN_CLI_FIELDS = ("grad_accum", "model")


def run_config(profile: str, run: str = "", seed: int | None = None, alpha: float | None = None,
               config: str = "", **overrides: Any) -> RunConfig:
    """The profile's (or the recipe file `config`'s) settings with overrides; TRAIN_CLI_FIELDS not given keep
    the earlier run's values."""
    cfg = load_config(profile, config=config or None, run=run or None, seed=seed, alpha=alpha, **overrides)
    saved = run_dir(cfg.run_name) / "config.json"
    if saved.exists():
        earlier = read_json(saved)
        kept = {n: earlier[n] for n in TRAIN_CLI_FIELDS if overrides.get(n) is None and n in earlier}
        if kept:
            cfg = load_config(profile, config=config or None, run=run or None, seed=seed, alpha=alpha,
                              **{**overrides, **kept})
    return cfg


def start_run(profile: str, run: str = "", seed: int | None = None, alpha: float | None = None,
              force: bool = False, config: str = "", **overrides: Any) -> RunConfig:
    """The run's config; writes config.json and env.json, refusing to mix with a different earlier run.

    `config`: a recipe file instead of the profile; `overrides`: settings by name, values typed or as text
    (the notebooks' SET parameter, the command line's --set)."""
    if force:
        cfg = load_config(profile, config=config or None, run=run or None, seed=seed, alpha=alpha, **overrides)
    else:
        cfg = run_config(profile, run, seed=seed, alpha=alpha, config=config, **overrides)
    for stage_cfg in (cfg, qlora_config(cfg)):  # every load of the run's model, in any stage, at its revision
        pin_revision(stage_cfg.model, stage_cfg.model_revision)
    state = process_state()
    if state.is_main_process:
        # A notebook opened while `neftlib run` / `train` works on this folder is refused; the notebooks
        # that command runs itself are its children and go on.
        check_free(run_dir(cfg.run_name))
    if not force:
        # Every rank checks: they read the same file, so they refuse together (none is left at a barrier).
        check_same_config(cfg)
    if state.is_main_process:
        folder = run_dir(cfg.run_name)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save(folder / "config.json")
        write_json(folder / "env.json", environment())
    state.wait_for_everyone()
    return cfg


def check_same_config(cfg: RunConfig) -> None:
    """Refuse to add to an earlier run made with other settings: its results would be mixed or lost."""
    folder = run_dir(cfg.run_name)
    if not (folder / "config.json").exists():
        return
    old = config_from_json(folder / "config.json")
    # `run` may be spelled out or left to default to the profile name: the folder is what counts.
    changed = sorted(k for k, v in cfg.to_dict().items() if k != "run" and old.to_dict().get(k) != v)
    if changed:
        raise FileExistsError(
            f"{folder} holds an earlier run with different settings ({', '.join(changed)}); "
            "choose another run name (RUN / --run) or pass --force to move the earlier run aside"
        )


# ---------- 01: data ----------

def hub_pin(cfg: RunConfig) -> HubPin:
    """What the run reads of a hub training set: its configuration, split and revision."""
    return HubPin(config=cfg.train_data_config, split=cfg.train_data_split, revision=cfg.train_data_revision)


def prepare_data(cfg: RunConfig) -> dict[str, Any]:
    """Load, validate, split and tokenize the training data; pick the evaluation prompts."""
    # Under a launcher the main process prepares; the others then find the stage done and read its report.
    with process_state().main_process_first():
        return _prepare_data(cfg)


def _prepare_data(cfg: RunConfig) -> dict[str, Any]:
    out = stage_dir(cfg, "data")
    if is_done(out):
        return read_json(out / "report.json")
    tok = load_tokenizer(cfg.model)
    n = None if cfg.train_limit is None else cfg.train_limit + cfg.heldout_limit
    rows, report = load_instructions(cfg.train_data, seed=cfg.seed, limit=n, drop_bad=cfg.drop_bad_rows,
                                     columns=cfg.train_columns, hub=hub_pin(cfg))
    heldout_rows, train_rows = rows[: cfg.heldout_limit], rows[cfg.heldout_limit:]
    train_report = dataclasses.replace(report, rows_used=len(train_rows))
    train = tokenize_rows(train_rows, tok, cfg.prompt_format, cfg.max_length, train_report)
    heldout = tokenize_rows(heldout_rows, tok, cfg.prompt_format, cfg.max_length)
    sets = {"train": train, "heldout": heldout}
    # A second kind of data for the cross-set loss: the mini set when training on real data, else Alpaca.
    other = "mini" if Path(report.source) != MINI_TRAIN else "auto"
    if resolve_train_source(other) != Path(report.source):
        other_rows, _ = load_instructions(other, seed=cfg.seed, limit=cfg.heldout_limit, drop_bad=True)
        sets["other"] = tokenize_rows(other_rows, tok, cfg.prompt_format, cfg.max_length)
    eval_rows, eval_source = load_eval_set(cfg.eval_data, seed=cfg.seed, limit=cfg.eval_limit)
    for name, examples in sets.items():
        write_jsonl(out / f"{name}.jsonl", examples)
    write_json(out / "train_rows.json", train_rows)
    write_json(out / "eval.json", eval_rows)
    lengths = [{"set": name, "tokens": len(e["input_ids"])} for name, ex in sets.items() for e in ex]
    write_csv(out / "lengths.csv", lengths)
    summary = {
        "train_source": report.source, "eval_source": eval_source, "rows_read": report.rows_read,
        "train_examples": len(train), "heldout_examples": len(heldout),
        "other_examples": len(sets.get("other", [])), "other_source": str(resolve_train_source(other)),
        "eval_prompts": len(eval_rows),
        "truncated": train_report.truncated, "longer_than_512": train_report.longer_than_512,
        "dropped": train_report.dropped, "max_length": cfg.max_length,
    }
    write_json(out / "report.json", summary)
    mark_done(out)
    return summary


# ---------- 02 / 03: training ----------

def train_arms(cfg: RunConfig, stage: str = "train", arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Train the arms of the stage ('train': full / profile method, 'qlora': the QLoRA variant).

    `arms`: a subset of the stage's arms (default all). The stage's summary.csv lists every finished
    arm; its DONE marker is written once all of the stage's arms are done.
    """
    if stage not in ("train", "qlora"):
        raise ValueError(f"stage={stage!r} is not one of train, qlora")
    run_cfg, stage_arms = stage_config(cfg, stage)
    chosen = tuple(arms) if arms else stage_arms
    unknown = [a for a in chosen if a not in stage_arms]
    if unknown:
        raise ValueError(f"arm(s) {unknown} are not arms of the {stage!r} stage: choose from {', '.join(stage_arms)}")
    state = process_state()
    examples = load_prepared(cfg, "train")
    if run_cfg.train_limit is not None:  # the QLoRA stage may train on fewer rows than 01 prepared
        examples = examples[: run_cfg.train_limit]
    # The noise-free training loss is measured on rows the arm trained on, never beyond them.
    subsets = {"train_nonoise": examples[: cfg.loss_subset], "heldout": load_prepared(cfg, "heldout")}
    other = load_prepared(cfg, "other")
    if other:
        subsets["other"] = other
    pad_id = load_tokenizer(cfg.model).pad_token_id
    out = stage_dir(cfg, stage)
    summaries = []
    for arm_name in chosen:
        arm = run_cfg.for_arm(arm_name)
        arm_cfg = run_cfg if arm.seed is None else dataclasses.replace(run_cfg, seed=arm.seed)
        arm_dir = out / arm_name
        if state.is_main_process:
            arm_dir.mkdir(parents=True, exist_ok=True)
            arm_cfg.save(arm_dir / "config.json")
        summaries.append(train(arm_cfg, arm, examples, arm_dir, loss_examples=subsets, pad_id=pad_id))
    finished = [a for a in stage_arms if is_done(out / a)]
    if state.is_main_process:
        write_csv(out / "summary.csv", [read_json(out / a / "summary.json") for a in finished])
        if len(finished) == len(stage_arms):
            mark_done(out, arms=list(stage_arms))
    state.wait_for_everyone()
    return pd.DataFrame(summaries)
