"""One training function: full fine-tune, LoRA or QLoRA, with or without NEFTune, resumable and deterministic."""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from neftlib.batching import batch_order, collate, mean_loss
from neftlib.config import ArmConfig, RunConfig
from neftlib.io import is_done, mark_done, read_json, write_csv, write_json
from neftlib.models import DTYPES, count_parameters, load_base, load_model, model_path
from neftlib.noise import neftune, noise_seed

CKPT_PREFIX = "checkpoint-"


def estimate_training_bytes(cfg: RunConfig) -> int:
    """Rough peak bytes to train: weights, gradients and AdamW moments of the trainable part."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path(cfg.model))
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    weight_bytes = 0.55 if cfg.load_in_4bit else DTYPES[cfg.precision].itemsize
    if cfg.method == "full":
        return int(n * (weight_bytes + 4 + 8))  # fp32 grads and two fp32 Adam moments
    return int(n * weight_bytes * 1.1)  # adapters are ~1% of the model


def check_fits(cfg: RunConfig) -> None:
    """Refuse before loading anything when the run clearly cannot fit the device's memory."""
    import psutil

    need = estimate_training_bytes(cfg)
    if torch.cuda.is_available():
        have = torch.cuda.mem_get_info()[0]
        where = "GPU"
    else:
        have = psutil.virtual_memory().available
        where = "RAM"
    if need > have:
        raise MemoryError(
            f"model {cfg.model!r} with method={cfg.method!r} needs about {need / 2**30:.1f} GiB to train; "
            f"{where} has {have / 2**30:.1f} GiB free. Use method='qlora' or 'lora', a smaller model, or a bigger device."
        )


def _checkpoints(out_dir: Path) -> list[Path]:
    found = [p for p in out_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir() and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, handle, log_rows: list[dict]) -> None:
    """Written into a temp folder then renamed: a killed save leaves the previous checkpoint intact."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ckpt."))
    try:
        torch.save({
            "step": step,
            "model": _trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "noise_rng": handle.rng_state(),
            "log": log_rows,
        }, tmp / "state.pt")
        tmp.rename(out_dir / f"{CKPT_PREFIX}{step}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoints(out_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except Exception as err:
        raise RuntimeError(
            f"checkpoint {path / 'state.pt'} is unreadable ({type(err).__name__}: {err}). "
            f"Delete {path} to start this arm over (earlier checkpoints were already replaced)."
        ) from None


def train(cfg: RunConfig, arm: ArmConfig, examples: list[dict], out_dir: Path, *,
          loss_examples: dict[str, list[dict]] | None = None, pad_id: int, progress: bool = True) -> dict:
    """Train one arm into `out_dir` (log.csv, model/, summary.json); resumes from its last checkpoint."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    out_dir = Path(out_dir)
    if is_done(out_dir):
        return read_json(out_dir / "summary.json")
    if not examples:
        raise ValueError(f"arm {arm.name!r}: the training set has no usable rows (see the data report of 01)")
    check_fits(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    model = load_model(cfg.model, method=cfg.method, precision=cfg.precision, lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                       gradient_checkpointing=cfg.gradient_checkpointing)
    model.config.use_cache = False
    trainable, total = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    lengths = [len(e["input_ids"]) for e in examples]
    per_rank = len(batch_order(lengths, cfg.batch_size, cfg.seed, 0, False)) // world
    if per_rank < cfg.grad_accum:
        raise ValueError(f"{len(examples)} examples make fewer batches per process than grad_accum={cfg.grad_accum}")
    steps_per_epoch = per_rank // cfg.grad_accum
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def micro_batch(index: int) -> list[dict]:
        epoch, within = divmod(index, per_rank)
        batches = batch_order(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        return [examples[i] for i in batches[rank::world][within]]

    start, log_rows, state = 0, [], None
    if _checkpoints(out_dir):
        state = _load_checkpoint(_checkpoints(out_dir)[-1])
        accelerator.unwrap_model(model).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, log_rows = state["step"], state["log"]

    model.train()
    t_start = time.perf_counter()
    with neftune(model, arm.alpha, distribution=arm.distribution, scaling=cfg.noise_scaling,
                 seed=noise_seed(cfg.seed, rank)) as handle:
        if state is not None:
            handle.set_rng_state(state["noise_rng"])
        bar = tqdm(range(start, total_steps), desc=f"train {arm.name}", disable=not progress or rank != 0,
                   initial=start, total=total_steps)
        for step in bar:
            t0 = time.perf_counter()
            losses, tokens, ratios = [], 0, []
            for k in range(cfg.grad_accum):
                batch = collate(micro_batch(step * cfg.grad_accum + k), pad_id)
                batch = {key: v.to(accelerator.device) for key, v in batch.items()}
                sync = nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss = model(**batch).loss
                    accelerator.backward(loss / cfg.grad_accum)
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
                if handle.last_ratio is not None:
                    ratios.append(handle.last_ratio)
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            row = {"run": cfg.run_name, "arm": arm.name, "step": step + 1, "loss": sum(losses) / len(losses),
                   "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens * world / dt,
                   "noise_ratio": sum(ratios) / len(ratios) if ratios else 0.0, "step_s": dt}
            log_rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if (step + 1) % cfg.save_every == 0 and step + 1 < total_steps and accelerator.is_main_process:
                _save_checkpoint(out_dir, step + 1, accelerator.unwrap_model(model), optimizer, scheduler,
                                 handle, log_rows)
            accelerator.wait_for_everyone()
    wall = time.perf_counter() - t_start

    summary = {"run": cfg.run_name, "arm": arm.name, "alpha": arm.alpha, "distribution": arm.distribution,
               "method": cfg.method, "model": cfg.model, "steps": total_steps, "examples": len(examples),
               "trainable_params": trainable, "total_params": total, "train_wall_s": wall,
               "final_loss": log_rows[-1]["loss"] if log_rows else None}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        for name, subset in (loss_examples or {}).items():
            summary[f"{name}_loss"] = mean_loss(unwrapped, subset, pad_id, cfg.batch_size)
        write_csv(out_dir / "log.csv", log_rows)
        _save_model(unwrapped, out_dir / "model")
        write_json(out_dir / "summary.json", summary)
        for old in _checkpoints(out_dir):
            shutil.rmtree(old, ignore_errors=True)
        mark_done(out_dir, arm=arm.name)
    accelerator.wait_for_everyone()
    return summary


def _save_model(model, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained(cfg: RunConfig, out_dir: Path):
    """The trained model of an arm, in eval mode (adapters on their base for LoRA / QLoRA)."""
    from transformers import AutoModelForCausalLM

    folder = Path(out_dir) / "model"
    if cfg.method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[cfg.precision])
    else:
        from peft import PeftModel

        base = load_base(cfg.model, precision=cfg.precision, load_in_4bit=cfg.load_in_4bit)
        model = PeftModel.from_pretrained(base, folder)
    if torch.cuda.is_available() and not cfg.load_in_4bit:
        model = model.to("cuda")
    return model.eval()
