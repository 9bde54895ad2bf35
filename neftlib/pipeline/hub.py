"""push_to_hub: each trained arm's model (or LoRA adapter) with its tokenizer and model card, one hub repo per arm."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from neftlib.base.config import RunConfig
from neftlib.base.io import is_done
from neftlib.base.run import stage_dir, trained_arms
from neftlib.pipeline.card import model_card
from neftlib.training.models import load_tokenizer


def repo_name(cfg: RunConfig, stage: str, arm: str) -> str:
    """`<hub_repo>-<stage>-<arm>`; without hub_repo, `neftlib-<run>-...` under the token's account."""
    return f"{cfg.hub_repo or f'neftlib-{cfg.run_name}'}-{stage}-{arm}"


def check_can_push(cfg: RunConfig) -> None:
    """Refuse before any training when push_to_hub is on but the hub cannot be written to."""
    if not cfg.push_to_hub:
        return
    from huggingface_hub import get_token

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ValueError("push_to_hub=True needs the hub, but HF_HUB_OFFLINE is set: unset it, or set "
                         "push_to_hub=False")
    if not get_token():
        raise ValueError("push_to_hub=True needs a hub token with write access: run `hf auth login` or set "
                         "HF_TOKEN, or set push_to_hub=False")


def push_arm(cfg: RunConfig, stage: str, arm: str, api=None, private: bool = True) -> str:
    """Upload one arm's model folder, tokenizer and README.md (the model card) in one commit; returns the repo id."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = stage_dir(cfg, stage) / arm
    if not is_done(folder):
        raise FileNotFoundError(f"{folder} is not a finished arm: train it before pushing")
    api = api or HfApi()
    card = model_card(cfg.run_name, stage, arm)
    with tempfile.TemporaryDirectory() as tmp:
        load_tokenizer(cfg.model).save_pretrained(tmp)
        # The weights are sent from where they lie (no copy of a 7B model); tokenizer and card from tmp.
        files = {p.relative_to(folder / "model").as_posix(): p for p in (folder / "model").rglob("*") if p.is_file()}
        files.update({p.name: p for p in Path(tmp).iterdir() if p.is_file() and p.name not in files})
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in sorted(files.items())]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        repo = api.create_repo(repo_name(cfg, stage, arm), private=private, exist_ok=True).repo_id
        api.create_commit(repo_id=repo, operations=ops, commit_message=f"neftlib {cfg.run_name}: {stage}/{arm}")
    return repo


def push_run(cfg: RunConfig, api=None) -> list[str]:
    """Push every trained arm of the run (after evaluation, so each card carries the arm's win rate)."""
    if not is_done(stage_dir(cfg, "eval")):
        raise FileNotFoundError(f"{stage_dir(cfg, 'eval')} is incomplete: push_to_hub runs after evaluation (04)")
    return [push_arm(cfg, stage, arm, api=api) for stage, arm, _ in trained_arms(cfg)]
