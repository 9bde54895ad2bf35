"""One training function: full fine-tune, LoRA or QLoRA, with or without NEFTune, resumable and deterministic.

The same function runs as one process or as each rank of `accelerate launch` / `torchrun` (DDP, FSDP,
DeepSpeed): only the main process writes files, every rank reads the checkpoint it resumes from.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from neftlib.batching import batch_order, collate, mean_loss
from neftlib.config import ArmConfig, RunConfig
from neftlib.io import is_done, mark_done, read_json, write_csv, write_json, publish_dir
from neftlib.models import DTYPES, count_parameters, load_base, load_model, model_path, not_available, on_best_device
from neftlib.noise import neftune, noise_seed

CKPT_PREFIX = "checkpoint-"
# RunConfig.precision -> accelerate's mixed_precision: the forward runs under autocast in that dtype
# while the weights AdamW updates stay fp32 (master weights), as the paper's bf16 training did.
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def estimate_training_bytes(cfg: RunConfig) -> int:
    """Rough peak bytes to train: weights, gradients and AdamW moments of the trainable part."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path(cfg.model))
    except OSError as err:  # transformers' message does not name the model
        raise not_available(cfg.model, err) from None
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    weight_bytes = 0.55 if cfg.load_in_4bit else DTYPES[cfg.precision].itemsize
    if cfg.method == "full":
        return int(n * 16)  # fp32 master weights, fp32 grads and AdamW's two fp32 moments, whatever the precision
    return int(n * weight_bytes * 1.1)  # adapters are ~1% of the model


def check_fits(cfg: RunConfig, device: torch.device | None = None, shards: int = 1) -> None:
    """Refuse before loading anything when the run clearly cannot fit the device's memory.

    `shards`: processes the weights and optimizer states are split over (FSDP); `device`: this rank's GPU.
    """
    import psutil

    need = estimate_training_bytes(cfg) // max(1, shards)
    if torch.cuda.is_available():
        # This rank's own GPU: asking the default one would open a context on GPU 0 from every rank.
        have = torch.cuda.mem_get_info(device if device is not None and device.type == "cuda" else None)[0]
        where = "GPU"
    else:
        have = psutil.virtual_memory().available
        where = "RAM"
    if need > have:
        raise MemoryError(
            f"model {cfg.model!r} with method={cfg.method!r} needs about {need / 2**30:.1f} GiB to train; "
            f"{where} has {have / 2**30:.1f} GiB free. Use method='qlora' or 'lora', a smaller model, a bigger device, "
            "or shard it over several GPUs (configs/accelerate/fsdp_7b.yaml)."
        )


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


def _sharded(accelerator) -> bool:
    """FSDP / DeepSpeed split weights and optimizer states over ranks: no rank can save them alone."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _digest(state: torch.Tensor) -> str:
    """Short fingerprint of a generator state: equal states, equal noise to come."""
    return hashlib.sha256(state.cpu().numpy().tobytes()).hexdigest()[:16]


def _rng_snapshot(handle, device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's random state: global torch RNG (dropout), CUDA RNG, and the NEFTune noise generator."""
    snap = {"torch": torch.get_rng_state(), "noise": handle.rng_state()}
    if device.type == "cuda":
        snap["cuda"] = torch.cuda.get_rng_state(device)
    return snap


def _check_world(state: dict, path: Path, world: int) -> None:
    """A checkpoint resumes only with as many processes as wrote it (older checkpoints: one)."""
    saved_world = state.get("world_size", 1)
    if saved_world != world:
        raise RuntimeError(
            f"checkpoint {path} was written by {saved_world} process(es) but this launch has {world}: the data "
            f"split and the noise streams depend on it. Relaunch with {saved_world} process(es), or delete {path} "
            "to start this arm over."
        )


def _restore_rng(state: dict, handle, rank: int, device: torch.device) -> None:
    """Give each rank back its own random state (older single-process checkpoints hold one)."""
    snap = state["rng_by_rank"][rank] if "rng_by_rank" in state else {"torch": state["torch_rng"],
                                                                      "noise": state["noise_rng"]}
    torch.set_rng_state(snap["torch"])
    handle.set_rng_state(snap["noise"])
    if "cuda" in snap and device.type == "cuda":
        torch.cuda.set_rng_state(snap["cuda"], device)


def _checkpoints(out_dir: Path) -> list[Path]:
    found = [p for p in out_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir() and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(accelerator, out_dir: Path, step: int, model, optimizer, scheduler,
                     rngs: list[dict], log_rows: list[dict]) -> None:
    """Written into a temp folder then renamed: a killed save leaves the previous checkpoint intact.

    Called on every rank. One process or DDP: the main process writes everything into state.pt (the
    ranks' weights and optimizer states are identical). FSDP / DeepSpeed: every rank writes its shard
    through accelerator.save_state, and state.pt keeps the step, the log and the ranks' RNG states.
    """
    sharded = _sharded(accelerator)
    record = {"step": step, "log": log_rows, "world_size": accelerator.num_processes, "rng_by_rank": rngs,
              # rank 0's states under the single-process names, as earlier checkpoints hold them
              "torch_rng": rngs[0]["torch"], "noise_rng": rngs[0]["noise"]}
    if sharded:
        # Every rank must write into the same folder, so its name cannot be a random mkdtemp one.
        tmp = out_dir / f".ckpt.{step}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not sharded:
            tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ckpt."))
            record |= {"model": _trainable_state(accelerator.unwrap_model(model)),
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       # fp16 on a GPU: the loss scale, so a resumed run skips the same steps
                       "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict()}
        try:
            torch.save(record, tmp / "state.pt")
            with open(tmp / "state.pt", "rb") as fh:
                os.fsync(fh.fileno())  # on disk before the rename publishes it: a crash cannot leave it truncated
            publish_dir(tmp, out_dir / f"{CKPT_PREFIX}{step}")
        except (OSError, RuntimeError) as err:  # a full disk makes torch.save raise RuntimeError, not OSError
            raise _checkpoint_write_error(out_dir, step, err) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in _checkpoints(out_dir)[:-1]:
            shutil.rmtree(old, ignore_errors=True)


def _checkpoint_write_error(out_dir: Path, step: int, err: Exception) -> RuntimeError:
    """What to do when a checkpoint cannot be written, most often for a full disk; the previous one is intact."""
    kept = _checkpoints(out_dir)
    resume = f"resumes from {kept[-1].name}, which is intact" if kept else "starts this arm over"
    free = shutil.disk_usage(out_dir).free / 2**30
    return RuntimeError(
        f"could not write checkpoint {out_dir / f'{CKPT_PREFIX}{step}'} ({type(err).__name__}: {err}); "
        f"{free:.1f} GiB free on that disk. Free some space and rerun the same command: training {resume}."
    )


def _load_trainable(model, weights: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Load a checkpoint's trainable weights, refusing one that does not match this model."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {ckpt} does not match this model ({len(missing)} trainable weights missing, "
            f"{len(unexpected)} unknown, e.g. {sorted(missing | unexpected)[:2]}); it was made with other "
            f"settings: delete {ckpt} to start this arm over."
        )
    model.load_state_dict(weights, strict=False)  # frozen weights are not in a checkpoint


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
    """Train one arm into `out_dir` (log.csv, model/, summary.json); resumes from its last checkpoint.

    Under a launcher each rank calls this with the same arguments: rank r trains on every world-th
    batch with its own noise stream (seed noise_seed(cfg.seed, r)); the logged numbers are averaged
    over ranks and only the main process writes.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from transformers import get_cosine_schedule_with_warmup

    out_dir = Path(out_dir)
    # Rank 0's view decides: a rank that returned here while others train would leave them waiting.
    if main_decides(is_done(out_dir)):
        return read_json(out_dir / "summary.json")
    if not examples:
        raise ValueError(f"arm {arm.name!r}: the training set has no usable rows (see the data report of 01)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if process_state().is_main_process:
        # A save killed mid-way leaves its temp folder behind: never resumed from, only taking space.
        for stale in [*out_dir.glob(".ckpt.*"), *out_dir.glob(".model.*")]:
            shutil.rmtree(stale, ignore_errors=True)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # The schedule below already counts optimizer steps per process: accelerate must not step it once
    # per process (its default, made for a DataLoader it shards itself).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False,
                              mixed_precision=_mixed_precision(cfg))
    rank, world = accelerator.process_index, accelerator.num_processes
    deepspeed = _is_deepspeed(accelerator)
    if not deepspeed:  # DeepSpeed's CPU offload makes a GPU-memory estimate meaningless
        check_fits(cfg, accelerator.device, shards=world if _sharded(accelerator) else 1)
    dev = accelerator.device
    model = load_model(cfg.model, method=cfg.method, precision=weights_precision(cfg, deepspeed), lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                       gradient_checkpointing=cfg.gradient_checkpointing,
                       # a 4-bit base is placed at load time: on this rank's GPU, not every rank's GPU 0
                       device=f"cuda:{dev.index or 0}" if dev.type == "cuda" else "cpu")
    model.config.use_cache = False
    if not deepspeed:
        _upcast_trainable(model)
    trainable, total = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(accelerator, params, cfg)

    lengths = [len(e["input_ids"]) for e in examples]
    per_rank = len(batch_order(lengths, cfg.batch_size, cfg.seed, 0, False)) // world
    if per_rank < cfg.grad_accum:
        raise ValueError(f"{len(examples)} examples make fewer batches per process than grad_accum={cfg.grad_accum}")
    steps_per_epoch = per_rank // cfg.grad_accum
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    if deepspeed:
        # No DataLoader goes through prepare(): DeepSpeed takes the batch geometry from its config. Its
        # engine accumulates cfg.grad_accum micro-batches itself and clips inside its step.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds.update(train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                  gradient_clipping=cfg.max_grad_norm)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # FSDP clips through the wrapped module, which accelerate recognises by its parameter list.
    clip_params = list(model.parameters()) if _sharded(accelerator) and not deepspeed else params

    def micro_batch(index: int) -> list[dict]:
        epoch, within = divmod(index, per_rank)
        batches = batch_order(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        return [examples[i] for i in batches[rank::world][within]]

    start, log_rows, state, ckpt = 0, [], None, None
    if _checkpoints(out_dir):
        ckpt = _checkpoints(out_dir)[-1]
        state = _load_checkpoint(ckpt)
        _check_world(state, ckpt, world)
        if "model" in state:
            # Every rank loads the same weights and optimizer state: DDP replicas stay identical.
            _load_trainable(accelerator.unwrap_model(model), state["model"], ckpt)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") is not None and accelerator.scaler is not None:
                accelerator.scaler.load_state_dict(state["scaler"])
        else:
            accelerator.load_state(str(ckpt))  # FSDP / DeepSpeed: each rank reads its own shard
            # FSDP's SHARDED_STATE_DICT came back without the Adam moments (accelerate 1.15, torch 2.11):
            # refuse rather than resume with a silently reset optimizer.
            if not deepspeed and len(optimizer.state) == 0:
                raise RuntimeError(
                    f"checkpoint {ckpt} restored no optimizer state; use fsdp_state_dict_type: FULL_STATE_DICT "
                    "(configs/accelerate/fsdp_7b.yaml), and delete the checkpoint to start this arm over."
                )
        start, log_rows = state["step"], state["log"]

    model.train()
    seed = noise_seed(cfg.seed, rank)
    t_start = time.perf_counter()
    with neftune(model, arm.alpha, distribution=arm.distribution, scaling=cfg.noise_scaling, seed=seed) as handle:
        if state is not None:
            _restore_rng(state, handle, rank, dev)
        bar = tqdm(range(start, total_steps), desc=f"train {arm.name}", disable=not progress or rank != 0,
                   initial=start, total=total_steps)
        for step in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            losses, tokens, ratios = [], 0, []
            for k in range(cfg.grad_accum):
                batch = collate(micro_batch(step * cfg.grad_accum + k), pad_id)
                batch = {key: v.to(dev) for key, v in batch.items()}
                sync = nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss = model(**batch).loss
                    # DeepSpeed divides by its gradient_accumulation_steps inside its backward.
                    accelerator.backward(loss if deepspeed else loss / cfg.grad_accum)
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
                if handle.last_ratio is not None:
                    ratios.append(handle.last_ratio)
            grad_norm = accelerator.clip_grad_norm_(clip_params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            # One row for the whole step: every rank's mean loss, tokens and noise ratio, gathered.
            mine = torch.tensor([sum(losses) / len(losses), tokens, sum(ratios) / len(ratios) if ratios else 0.0,
                                 float(bool(ratios))], dtype=torch.float64, device=dev)
            ranks = accelerator.gather(mine).view(-1, 4)
            noised = ranks[ranks[:, 3] > 0, 2]
            row = {"run": cfg.run_name, "arm": arm.name, "step": step + 1, "loss": float(ranks[:, 0].mean()),
                   "lr": lr, "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                   "tokens_per_s": float(ranks[:, 1].sum()) / dt,
                   "noise_ratio": float(noised.mean()) if len(noised) else 0.0, "step_s": dt,
                   # this process's CPU seconds in the step: on a shared machine, step_s / cpu_s shows the contention
                   "cpu_s": cpu}
            log_rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
                rngs = gather_object([_rng_snapshot(handle, dev)])  # a collective: every rank comes here
                _save_checkpoint(accelerator, out_dir, step + 1, model, optimizer, scheduler, rngs, log_rows)
            accelerator.wait_for_everyone()
    wall = time.perf_counter() - t_start

    summary = {"run": cfg.run_name, "arm": arm.name, "alpha": arm.alpha, "distribution": arm.distribution,
               "seed": cfg.seed,
               "method": cfg.method, "model": cfg.model, "steps": total_steps, "examples": len(examples),
               "trainable_params": trainable, "total_params": total, "train_wall_s": wall,
               "final_loss": log_rows[-1]["loss"] if log_rows else None,
               "world_size": world, "effective_batch": cfg.batch_size * cfg.grad_accum * world,
               # Each rank's noise seed and its noise generator's final state: distinct across ranks,
               # equal across identical runs (and across a resumed one).
               "noise_seeds": gather_object([seed]), "noise_rng_sha256": gather_object([_digest(handle.rng_state())])}
    # Every rank runs the noise-free losses in step (FSDP / DeepSpeed forwards are collectives); in
    # eval mode they compute the same numbers.
    for name, subset in (loss_examples or {}).items():
        summary[f"{name}_loss"] = mean_loss(model, subset, pad_id, cfg.batch_size)
    # FSDP / DeepSpeed gather the full weights on every rank; otherwise the main process saves alone.
    full_state = accelerator.get_state_dict(model) if _sharded(accelerator) else None
    if accelerator.is_main_process:
        write_csv(out_dir / "log.csv", log_rows)
        _save_model(accelerator.unwrap_model(model), out_dir / "model", full_state)
        write_json(out_dir / "summary.json", summary)
        mark_done(out_dir, arm=arm.name)  # before the checkpoints go: a kill in between loses nothing
        for old in _checkpoints(out_dir):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return summary


def _mixed_precision(cfg: RunConfig) -> str:
    """accelerate's mixed_precision for this run, forgetting an earlier run's in the same single process."""
    from accelerate.state import AcceleratorState

    wanted = MIXED_PRECISION[cfg.precision]
    earlier = AcceleratorState._shared_state.get("_mixed_precision")
    if earlier not in (None, wanted) and process_state().num_processes == 1:
        # accelerate keeps the first Accelerator's precision for the whole process and refuses another;
        # one process may train runs of different precisions in turn (a notebook, the tests). Under a
        # launcher every rank runs one config, so ranks never get here.
        AcceleratorState._reset_state()
    return wanted


def weights_precision(cfg: RunConfig, deepspeed: bool = False) -> str:
    """The dtype the weights are loaded in: fp32 for every weight the optimizer updates.

    Full fine-tuning loads fp32 weights and computes in cfg.precision under autocast (accelerate's
    mixed_precision; FSDP keeps fp32 shards and casts to bf16 for compute). LoRA / QLoRA keep the
    frozen base in cfg.precision (peft makes the adapters fp32). DeepSpeed's bf16 mode keeps its own
    fp32 master copy, so it gets the weights in cfg.precision.
    """
    return cfg.precision if deepspeed or cfg.method != "full" else "fp32"


def _upcast_trainable(model) -> None:
    """Trainable weights in fp32: AdamW updates on bf16 / fp16 weights would round most of them away."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def _optimizer(accelerator, params: list, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; DeepSpeed's CPU Adam when its config offloads the optimizer (torch's is refused there)."""
    if _is_deepspeed(accelerator):
        zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        if zero.get("offload_optimizer", {}).get("device") in ("cpu", "nvme"):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _save_model(model, target: Path, state_dict: dict | None = None) -> None:
    """Atomic save_pretrained; `state_dict`: the full weights gathered from FSDP / DeepSpeed shards."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        if target.exists():
            shutil.rmtree(target)
        publish_dir(tmp, target)
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
    return on_best_device(model).eval()
