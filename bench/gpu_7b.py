"""The 7B-shaped measurements of `make gpu-check`: a randomly initialised LLaMA-2-7B (the config kept in
configs/models/llama-2-7b.json, no weights; random weights time and size like trained ones) trained and
generating at the profiles' settings through neftlib's own training and loading code.

Each function returns a dict of figures; bench/gpu_check.py runs each part in its own process. With
`rehearse=True` the same code runs on a CPU at a tiny shape (hidden 64), so the tests can run it.
"""
from __future__ import annotations

import dataclasses
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from neftlib.base.config import RunConfig  # noqa: E402
from neftlib.base.recipes import load_config  # noqa: E402
from neftlib.training.memory import GiB, estimate_memory  # noqa: E402
from neftlib.training.models import DTYPES, free_memory, load_base, model_config  # noqa: E402

LLAMA_7B = "meta-llama/Llama-2-7b-hf"
PAD = 2  # LLaMA has no pad token: neftlib pads with EOS (id 2)
ALPHA = 5.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a run measures; bench/gpu_check.py's plan scales it to the card, rehearsal shrinks it."""

    rehearse: bool = False  # CPU, a hidden-64 model of the same layout, a few tokens
    steps: int = 2  # optimizer steps per training run: the first warms up, the others are timed
    layers: int = 32  # decoder layers of the 7B model the bf16 LoRA part loads (all 32 where they fit)
    qlora_layers: int = 32  # decoder layers of the 7B model the QLoRA part loads (all 32 where they fit)
    full_layers: int = 8  # decoder layers of the full fine-tune (all 32 with AdamW states need ~110 GB)
    compute: str = "bf16"  # precision of the bf16 parts: fp16 on a card without bf16 (T4, V100)
    batch_size: int = 4  # micro-batch of the gpu-7b parts (the profile's 4)
    grad_accum: int = 32  # micro-batches per optimizer step of the gpu-7b parts (the profile's 32 on one GPU)
    qlora_grad_accum: int = 4  # micro-batches per optimizer step of the QLoRA part (colab-qlora's 4)
    gen_batch: int = 32  # answers per generate call of the LoRA part (gpu-7b's gen_batch_size)
    gen_new_tokens: int = 256  # tokens generated per answer in the throughput figure
    worst_gen_tokens: int = 512  # colab-qlora's answer cap, for its worst-case generation memory


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shape(sizes: Sizes, layers: int | None = None):
    """The 7B config (offline), with fewer layers when asked; a hidden-64 copy of its layout in rehearsal."""
    config = model_config(LLAMA_7B)
    if sizes.rehearse:
        config.update(dict(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                           num_hidden_layers=2))
    if layers is not None:
        config.num_hidden_layers = layers
    return config


def save_random(sizes: Sizes, folder: Path, layers: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised model of the 7B shape, saved in bf16 (initialised on the GPU: seconds, not minutes)."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(shape(sizes, layers), dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    free_memory()
    return {"folder": str(folder), "params": params, "layers": shape(sizes, layers).num_hidden_layers,
            "seconds": round(time.perf_counter() - t0, 1)}


def matmul_peak(dtype: torch.dtype, rehearse: bool = False, reps: int = 10) -> float:
    """TFLOP/s of square matmuls in `dtype` on this device: the best of `reps` after warm-up."""
    n = 256 if rehearse else 8192
    dev = device()
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e12)
    return best


class Meter:
    """Peak and remaining GPU memory around one measured call (None on a CPU)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.start = 0

    def reset(self) -> None:
        free_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()

    def read(self) -> dict[str, float | None]:
        if not self.cuda:
            return {"peak_allocated_gib": None, "peak_reserved_gib": None, "allocated_before_gib": None,
                    "allocated_after_gib": None}
        free_memory()
        gib = lambda v: round(v / GiB, 3)  # noqa: E731
        return {"peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
                "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
                "allocated_before_gib": gib(self.start), "allocated_after_gib": gib(torch.cuda.memory_allocated())}


def full_rows(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    """`n` examples of exactly `length` random tokens: every batch at max_length, the estimate's worst case."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def step_flops(config, tokens: int, examples: int, *, frozen_base: bool) -> float:
    """Model FLOPs of one optimizer step over `examples` rows of `tokens` real tokens: per row 6 N n (4 N n when
    the base is frozen: no weight gradients) + 12 layers hidden n^2 (attention), N the matmul parameters (the
    input embedding is a lookup). Recomputation under checkpointing is not counted (PaLM's MFU)."""
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    kv = (config.num_key_value_heads or config.num_attention_heads) * (h // config.num_attention_heads)
    n_matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * vocab
    return examples * ((4 if frozen_base else 6) * n_matmul * tokens + 12 * layers * h * tokens**2)


def train_steps(cfg: RunConfig, rows: list[dict], out: Path, peak_tflops: float, *, save: bool = True) -> dict:
    """neftlib's training (NEFTune arm) for cfg.max_steps steps: time per step, non-pad tokens/s, MFU, peak
    memory beside the estimate. `save=False` skips writing the trained weights (gigabytes of random numbers)."""
    import neftlib.training.train as train_mod

    meter = Meter()
    meter.reset()
    patch = mock.patch.object(train_mod, "_save_model", lambda trainer, target: None) if not save else nullcontext()
    with patch:
        summary = train_mod.train(cfg, cfg.for_arm("neftune"), rows, out, pad_id=PAD, progress=False)
    log = pd.read_csv(out / "log.csv")
    timed = log.iloc[1:] if len(log) > 1 else log
    seconds = float(timed["step_s"].sum())
    tokens = float((timed["tokens_per_s"] * timed["step_s"]).sum())
    config = model_config(cfg.model)
    per_step = step_flops(config, cfg.max_length, cfg.batch_size * cfg.grad_accum_for(1), frozen_base=cfg.method != "full")
    estimate = estimate_memory(cfg, cuda=torch.cuda.is_available())
    return {"method": cfg.method, "precision": cfg.precision, "gradient_checkpointing": cfg.gradient_checkpointing,
            "layers": config.num_hidden_layers, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum_for(1),
            "max_length": cfg.max_length, "steps": summary["steps"], "timed_steps": len(timed),
            "step_s": round(seconds / len(timed), 3), "tokens_per_s": round(tokens / seconds, 1),
            "model_tflops_per_s": round(per_step * len(timed) / seconds / 1e12, 2),
            "mfu": round(per_step * len(timed) / seconds / 1e12 / peak_tflops, 4),
            "final_loss": summary["final_loss"], **meter.read(),
            "estimate_gib": round(estimate.total / GiB, 3), "estimate_parts_gib": estimate.as_gib(),
            "weights_saved": save}


def trainer_steps(cfg: RunConfig, rows: list[dict], out: Path) -> dict:
    """transformers' Trainer with its built-in neftune_noise_alpha on the same model, rows and settings."""
    from bench_throughput import run_trainer

    from neftlib.training.models import load_model, load_tokenizer

    model = load_model(cfg.model, method=cfg.method, precision=cfg.precision, lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                       device="cuda:0" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer("tiny-random")  # pads only (with id 2 < the 7B vocabulary); the rows are token ids
    extra = {"bf16": cfg.precision == "bf16", "fp16": cfg.precision == "fp16",
             "gradient_accumulation_steps": cfg.grad_accum_for(1), "lr_scheduler_type": "cosine",
             "warmup_steps": cfg.warmup_ratio, "max_grad_norm": cfg.max_grad_norm,
             "activation_checkpointing": cfg.gradient_checkpointing,
             "activation_checkpointing_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None}
    timed = run_trainer(rows, tok, cfg.batch_size, cfg.max_steps, out, "group_by_length", model=model, extra_args=extra)[1:]
    del model
    free_memory()
    seconds = sum(r["wall_s"] for r in timed)
    return {"timed_steps": len(timed), "step_s": round(seconds / len(timed), 3),
            "tokens_per_s": round(sum(sum(r["lengths"]) for r in timed) / seconds, 1)}


def generate(folder: str, *, precision: str, load_in_4bit: bool, batch: int, prompt_tokens: list[int],
             new_tokens: int) -> dict:
    """Greedy generation with the paper's decoding (repetition penalty 1.2), left-padded prompts of the given
    lengths, exactly `new_tokens` per answer: tokens/s and peak memory."""
    from neftlib.training.models import on_best_device

    model = on_best_device(load_base(folder, precision=precision, load_in_4bit=load_in_4bit)).eval()
    vocab = model.config.vocab_size
    rng = random.Random(0)
    width = max(prompt_tokens[:batch])
    ids = torch.full((batch, width), PAD, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, n in enumerate(prompt_tokens[:batch]):
        ids[i, width - n:] = torch.tensor([rng.randrange(3, vocab) for _ in range(n)])
        mask[i, width - n:] = 1
    meter = Meter()
    meter.reset()
    dev = next(model.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.2,
                             pad_token_id=PAD)
    sync()
    seconds = time.perf_counter() - t0
    made = (out.shape[1] - width) * batch
    del model, out
    return {"batch": batch, "precision": precision, "load_in_4bit": load_in_4bit, "prompt_tokens_max": width,
            "new_tokens": new_tokens, "seconds": round(seconds, 2), "tokens_per_s": round(made / seconds, 1),
            **meter.read()}


def profile_cfg(profile: str, folder: Path, sizes: Sizes, **overrides: Any) -> RunConfig:
    """A profile's training settings on the random model, at the plan's batch and accumulation (one process);
    length and batch cut in rehearsal."""
    cfg = load_config(profile, model=str(folder), max_steps=sizes.steps, save_every=10**9, logging_steps=1,
                      **overrides)
    if profile == "colab-qlora":
        cfg = dataclasses.replace(cfg, effective_batch=cfg.batch_size * sizes.qlora_grad_accum)
    else:
        cfg = dataclasses.replace(cfg, batch_size=sizes.batch_size, effective_batch=sizes.batch_size * sizes.grad_accum)
    if sizes.rehearse:
        cfg = dataclasses.replace(cfg, max_length=32, batch_size=2, effective_batch=4)
    return cfg


def rows_for(cfg: RunConfig, vocab: int) -> list[dict]:
    return full_rows(cfg.batch_size * cfg.grad_accum_for(1) * cfg.max_steps, cfg.max_length, vocab)
