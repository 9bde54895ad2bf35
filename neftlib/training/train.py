"""One training function: a run config mapped to transformers' `TrainingArguments`, a collator, the NEFTune
callback and the resume. Full fine-tune, LoRA or QLoRA, with or without noise.

The same function runs as one process or as each rank of `accelerate launch` / `torchrun` (DDP, FSDP,
DeepSpeed come from the launcher's accelerate config, through Trainer): only the main process writes the
arm's files, every rank resumes from the same checkpoint with its own noise stream.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch

from neftlib.base.config import ArmConfig, RunConfig
from neftlib.base.io import is_done, mark_done, publish_dir, read_json, write_csv, write_json
from neftlib.base.progress import TEXT_ENV
from neftlib.data.batching import PaddedCollator, flat_collator, mean_loss
from neftlib.noise import NEFTuneCallback, noise_seed
from neftlib.training.memory import check_fits
from neftlib.training.models import (DTYPES, count_parameters, free_memory, load_base, load_model, on_best_device,
                                     peft_quietly)
from neftlib.training.trainer import STAGING, BarOnlyProgress, NoisyTrainer, checked_checkpoint, checkpoints


def process_state():
    """accelerate's view of this launch (rank, world size, barriers); a single process when not launched."""
    from accelerate import PartialState

    # Without cpu=True accelerate ignores a torchrun / accelerate-launch group on a machine without GPUs.
    return PartialState(cpu=not torch.cuda.is_available())


def main_decides(value):
    """Rank 0's `value` on every rank, so that all ranks take the same branch and meet at the same barriers."""
    from accelerate.utils import broadcast_object_list

    process_state()  # broadcast_object_list asks PartialState() without cpu=True: initialise it first
    return broadcast_object_list([value])[0]


def launcher_shards() -> bool:
    """FSDP or DeepSpeed from the launcher's accelerate config: weights and optimizer split over the ranks."""
    return any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def fsdp_checkpoints() -> bool:
    """The launcher's FSDP config checkpoints activations itself (fsdp_activation_checkpointing: true)."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
            and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true")


def trainer_checkpoints(cfg: RunConfig) -> bool:
    """Whether Trainer checkpoints activations: cfg.gradient_checkpointing, unless FSDP already does. FSDP's own
    wrapper recomputes each layer inside its unit; Trainer's would all-gather the layer's weights once more."""
    return cfg.gradient_checkpointing and not fsdp_checkpoints()


def weights_precision(cfg: RunConfig) -> str:
    """The dtype the weights are loaded in: fp32 for every weight the optimizer updates.

    Full fine-tuning loads fp32 weights and computes in cfg.precision under autocast (Trainer's bf16 / fp16),
    as the paper's FSDP mixed precision did. LoRA / QLoRA keep the frozen base in cfg.precision (peft makes
    the adapters fp32).
    """
    return "fp32" if cfg.method == "full" else cfg.precision


def deterministic_on(cfg: RunConfig) -> bool:
    """cfg.deterministic, where None means on for CPU (it costs nothing there) and off on a GPU."""
    return cfg.deterministic if cfg.deterministic is not None else not torch.cuda.is_available()


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the block only (generation afterwards runs at full speed)."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and torch.cuda.is_available():
        # cuBLAS reads it when it creates its handle: set before the first matmul of the process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def reset_accelerate_precision(cfg: RunConfig) -> None:
    """Forget an earlier run's mixed precision in this single process: accelerate keeps the first one for the
    whole process and refuses another, while a notebook or the tests train runs of several precisions in
    turn. Under a launcher every rank runs one config, so ranks never need this."""
    from accelerate.state import AcceleratorState

    wanted = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    earlier = AcceleratorState._shared_state.get("_mixed_precision")
    if earlier not in (None, wanted) and process_state().num_processes == 1:
        AcceleratorState._reset_state()


def training_arguments(cfg: RunConfig, out_dir: Path, *, world: int, progress: bool = True):
    """transformers' TrainingArguments for one arm of `cfg`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum_for(world),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type="cosine",
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        activation_checkpointing=trainer_checkpoints(cfg),
        # Non-reentrant checkpointing: works with frozen inputs (LoRA) and with 4-bit bases.
        activation_checkpointing_kwargs={"use_reentrant": False} if trainer_checkpoints(cfg) else None,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # its isnan check would wait on the device every micro-batch
        save_strategy="steps",
        save_steps=cfg.save_every,
        report_to=cfg.report_to,
        remove_unused_columns=False,  # our examples are plain dicts of token lists
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


def train(cfg: RunConfig, arm: ArmConfig, examples: list[dict], out_dir: Path, *,
          loss_examples: dict[str, list[dict]] | None = None, pad_id: int, progress: bool = True) -> dict:
    """Train one arm into `out_dir` (log.csv, model/, summary.json); resumes from its last checkpoint.

    Under a launcher each rank calls this with the same arguments; Trainer gives rank r every world-th
    batch, and the noise is seeded noise_seed(cfg.seed, r). The logged numbers are over all ranks and only
    the main process writes.
    """
    from transformers import set_seed

    out_dir = Path(out_dir)
    # Rank 0's view decides: a rank that returned here while others train would leave them waiting.
    if main_decides(is_done(out_dir)):
        return read_json(out_dir / "summary.json")
    if not examples:
        raise ValueError(f"arm {arm.name!r}: the training set has no usable rows (see the data report of 01)")
    state = process_state()
    rank, world = state.process_index, state.num_processes
    ckpt, log_rows = checked_checkpoint(out_dir, world) if out_dir.exists() else (None, [])
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A save killed mid-way leaves its staging folder behind: never resumed from, only taking space.
        for stale in [out_dir / STAGING, *out_dir.glob(".model.*")]:
            shutil.rmtree(stale, ignore_errors=True)
    state.wait_for_everyone()
    if not os.environ.get("ACCELERATE_USE_DEEPSPEED"):  # DeepSpeed's CPU offload makes an estimate meaningless
        check_fits(cfg, state.device, world=world, sharded=launcher_shards())
    reset_accelerate_precision(cfg)
    # Before the model: DeepSpeed ZeRO-3 must know its config when the weights are created.
    args = training_arguments(cfg, out_dir, world=world, progress=progress)
    set_seed(cfg.seed)  # LoRA's initial adapters
    model = load_model(cfg.model, method=cfg.method, precision=weights_precision(cfg), lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                       # a 4-bit base is placed at load time: on this rank's GPU, not every rank's GPU 0
                       device=f"cuda:{state.device.index or 0}" if state.device.type == "cuda" else "cpu")
    model.config.use_cache = False
    trainable, total = count_parameters(model)
    neftune = NEFTuneCallback(arm.alpha, distribution=arm.distribution, scaling=cfg.noise_scaling)
    trainer = NoisyTrainer(
        model=model, args=args, train_dataset=examples, callbacks=[neftune], neftune=neftune,
        data_collator=flat_collator() if cfg.padding_free else PaddedCollator(pad_id),
        lengths=[len(e["input_ids"]) for e in examples], group_by_length=cfg.group_by_length and not cfg.padding_free,
        row={"run": cfg.run_name, "arm": arm.name}, log_rows=log_rows)
    if os.environ.get(TEXT_ENV):
        # Kernels of `neftlib run` stream text to the terminal: Trainer's HTML bar would show nothing there.
        from transformers.utils.notebook import NotebookProgressCallback

        if trainer.pop_callback(NotebookProgressCallback) is not None:
            trainer.add_callback(BarOnlyProgress)
    t_start = time.perf_counter()
    try:
        with deterministic_algorithms(deterministic_on(cfg)):
            trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        wall = time.perf_counter() - t_start
        summary = _summary(cfg, arm, trainer, examples, trainable, total, wall, rank, world)
        # Every rank runs the noise-free losses in step (FSDP / DeepSpeed forwards are collectives).
        for name, subset in (loss_examples or {}).items():
            summary[f"{name}_loss"] = mean_loss(trainer.model_wrapped, subset, pad_id, cfg.batch_size)
            summary[f"{name}_rows"] = len(subset)
        _save_model(trainer, out_dir / "model")
        if state.is_main_process:
            write_csv(out_dir / "log.csv", trainer.log_rows)
            write_json(out_dir / "summary.json", summary)
            mark_done(out_dir, arm=arm.name)  # before the checkpoints go: a kill in between loses nothing
            for old in checkpoints(out_dir):
                shutil.rmtree(old, ignore_errors=True)
        state.wait_for_everyone()
        return summary
    finally:
        neftune.close()
        release(trainer)
        del trainer, model
        # Only now is this frame's last reference gone: what is left of the arm is freed here, and the GPU
        # allocator's cache goes back before the next arm (or the evaluation) asks for memory.
        free_memory()


def _summary(cfg: RunConfig, arm: ArmConfig, trainer, examples: list[dict], trainable: int, total: int,
             wall: float, rank: int, world: int) -> dict:
    from accelerate.utils import gather_object

    handle = trainer.neftune.handle
    digest = hashlib.sha256(handle.rng_state().cpu().numpy().tobytes()).hexdigest()[:16]
    rows = trainer.log_rows
    return {"run": cfg.run_name, "arm": arm.name, "alpha": arm.alpha, "distribution": arm.distribution,
            "seed": cfg.seed, "method": cfg.method, "model": cfg.model, "steps": trainer.state.global_step,
            "examples": len(examples), "trainable_params": trainable, "total_params": total, "train_wall_s": wall,
            "final_loss": rows[-1]["loss"] if rows else None, "world_size": world,
            "effective_batch": cfg.batch_size * cfg.grad_accum_for(world) * world,
            # Each rank's noise seed and its noise generator's final state: distinct across ranks,
            # equal across identical runs (and across a resumed one).
            "noise_seeds": gather_object([noise_seed(cfg.seed, rank)]), "noise_rng_sha256": gather_object([digest])}


def _save_model(trainer, target: Path) -> None:
    """Trainer.save_model (gathers FSDP / DeepSpeed shards; adapters only for LoRA) into a temp folder that
    the main process renames into place: a kill mid-save never leaves a half model at `target`."""
    tmp = target.parent / f".model.{os.getpid() if trainer.args.world_size == 1 else 'tmp'}"
    trainer.save_model(str(tmp))  # a collective under FSDP / DeepSpeed: every rank calls it
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        (tmp / "training_args.bin").unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)
        publish_dir(tmp, target)


def release(trainer) -> None:
    """Let go of an arm's model, optimizer and Trainer before the next arm, so their memory is free again.

    accelerate stores wrappers bound to the model on the model (the autocast forward of bf16 / fp16) and, with
    fp16's loss scaler, step methods on the optimizers: reference cycles that only a garbage collection would
    break, so the weights and Adam's moments outlived the arm. They are removed here, after which dropping the
    last reference frees the model by reference counting alone.
    """
    from accelerate.utils import extract_model_from_parallel

    accelerator = trainer.accelerator
    models = [m for m in (trainer.model, trainer.model_wrapped, *accelerator._models) if m is not None]
    for model in models:
        unbind_accelerate(extract_model_from_parallel(model))
    for optimizer in [*accelerator._optimizers, trainer.optimizer]:
        unbind_optimizer(optimizer)
    accelerator.free_memory()  # accelerate's own lists of what it prepared
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    handler = trainer.callback_handler  # callbacks are handed the model and optimizer too
    handler.model = handler.optimizer = handler.lr_scheduler = None


def unbind_accelerate(model) -> None:
    """Drop the forward wrappers accelerate's prepare bound onto `model` (methods of the model kept in its own
    __dict__): the class's forward applies again, and the model no longer refers to itself."""
    model.__dict__.pop("_original_forward", None)
    forward = model.__dict__.get("forward")
    if forward is not None and getattr(forward, "__self__", None) is model:
        del model.__dict__["forward"]


def unbind_optimizer(optimizer) -> None:
    """Drop the step methods accelerate's AcceleratedOptimizer keeps for the loss scaler (a closure over the
    wrapper held by the wrapper, and the inner optimizer's bound step stored on that optimizer)."""
    if optimizer is None:
        return
    for name in ("_optimizer_original_step_method", "_optimizer_patched_step_method"):
        optimizer.__dict__.pop(name, None)
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and "step" in inner.__dict__:
        # the class's step stays; only the instance's override (accelerate's or the LR scheduler's wrapper) goes
        del inner.__dict__["step"]


def load_trained(cfg: RunConfig, out_dir: Path):
    """The trained model of an arm, in eval mode (adapters on their base for LoRA / QLoRA)."""
    from transformers import AutoModelForCausalLM

    folder = Path(out_dir) / "model"
    if cfg.method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[cfg.precision])
    else:
        from peft import PeftModel

        base = load_base(cfg.model, precision=cfg.precision, load_in_4bit=cfg.load_in_4bit)
        with peft_quietly():
            model = PeftModel.from_pretrained(base, folder)
    # Plain forwards (lm-eval's scoring, the losses of 05) keep no KV cache, as a full arm saved after training
    # already says: a LoRA arm's base config would keep one per forward. generate() still caches
    # (its generation config decides there).
    model.config.use_cache = False
    return on_best_device(model).eval()
