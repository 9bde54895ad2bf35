"""The parts of `make gpu-check`, one function each; bench/gpu_check.py runs every part in its own process
(a CUDA error or a crash in one leaves the others their GPU) and records what it returns, or its error."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import gpu_7b as g

PROJ = Path(__file__).resolve().parents[1]


def _folder(work: Path, layers: int) -> Path:
    return work / f"llama-7b-random-{layers}l"


def _model_folder(work: Path, layers: int) -> Path:
    folder = _folder(work, layers)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is missing: the random_7b part did not finish")
    return folder


def _config_folder(work: Path, sizes: g.Sizes, layers: int) -> Path:
    """A folder holding only the config of the 7B shape at `layers` layers: what an estimate reads."""
    folder = work / f"llama-7b-config-{layers}l"
    if not (folder / "config.json").exists():
        g.shape(sizes, layers).save_pretrained(folder)
    return folder


def gpu_tests(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """`pytest -m gpu`: each test's outcome."""
    report = work / "gpu_tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}", "tests/test_gpu.py"], cwd=PROJ, capture_output=True, text=True)
    tests = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        tests[case.get("name")] = ("failed: " + (failed.get("message") or "")[:300] if failed is not None else
                                   "skipped: " + (skipped.get("message") or "") if skipped is not None else "passed")
    counts = {k: sum(v.startswith(k) for v in tests.values()) for k in ("passed", "failed", "skipped")}
    return {**counts, "tests": tests, "pytest_rc": proc.returncode, "ok": proc.returncode == 0 and counts["passed"] > 0}


def smoke(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """The smoke profile end to end (the six notebooks) on this GPU."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "neftlib", "run", "--profile", "smoke", "--run", "gpu-check-smoke",
                           "--force"], cwd=PROJ, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"neftlib run --profile smoke exited {proc.returncode}: {proc.stderr[-1500:]}")
    run = Path(os.environ["NEFTLIB_RESULTS_DIR"]) / "gpu-check-smoke"
    env = pd.read_json(run / "env.json", typ="series")
    trained = pd.concat([pd.read_csv(run / s / "summary.csv") for s in ("train", "qlora")])
    wins = pd.read_csv(run / "eval" / "winrates.csv")
    return {"seconds": round(time.perf_counter() - t0, 1), "device": env.get("device"),
            "arms": {f"{r['method']}/{r['arm']}": round(r["final_loss"], 4) for _, r in trained.iterrows()},
            "judged_arms": len(wins), "report": (run / "report" / "summary.md").exists()}


def cpu_bf16(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """The `cpu` profile's training stage (packaged SmolLM2-135M, all three arms) in bf16 on this GPU."""
    from neftlib.pipeline import stages

    steps = 2 if sizes.rehearse else None  # None: the profile's own (4 epochs of 40 examples: 20 steps)
    cfg = stages.start_run("cpu", "gpu-check-cpu-bf16", force=True, precision=sizes.compute, max_steps=steps)
    stages.prepare_data(cfg)
    arms = {}
    for arm in cfg.arms:
        meter = g.Meter()
        meter.reset()
        stages.train_arms(cfg, "train", arms=[arm])
        folder = stages.stage_dir(cfg, "train") / arm
        summary, log = pd.read_json(folder / "summary.json", typ="series"), pd.read_csv(folder / "log.csv")
        arms[arm] = {"steps": int(summary["steps"]), "final_loss": round(float(summary["final_loss"]), 4),
                     "train_nonoise_loss": round(float(summary["train_nonoise_loss"]), 4),
                     "tokens_per_s_median": round(float(log["tokens_per_s"].iloc[1:].median()), 1)
                     if len(log) > 1 else None, "noise_ratio_mean": round(float(log["noise_ratio"].mean()), 5),
                     **meter.read()}
    return {"model": cfg.model, "precision": cfg.precision, "max_steps": cfg.max_steps, "arms": arms}


def random_7b(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """The random 7B-shaped models the next parts load, one per layer count the plan gave them: all 32 layers
    where the card holds them, fewer where it does not, and the full fine-tune's few layers."""
    counts = sorted({n for n in (sizes.qlora_layers, sizes.layers, sizes.full_layers) if n >= 1}, reverse=True)
    return {"models": {str(n): g.save_random(sizes, _folder(work, n), layers=n) for n in counts}}


def qlora_7b(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """colab-qlora's training (4-bit NF4 base, LoRA r 64, fp16, checkpointing, batch 4 x 4, length 512) and
    its worst-case generation (gen_batch_size prompts of max_length, answers at the cap): do they fit a T4?"""
    from neftlib.pipeline.estimate import inference_memory
    from neftlib.training.memory import estimate_memory

    folder = _model_folder(work, sizes.qlora_layers)
    cfg = g.profile_cfg("colab-qlora", folder, sizes)
    peak = g.matmul_peak(torch.float16 if torch.cuda.is_available() else torch.float32, sizes.rehearse)
    train = g.train_steps(cfg, g.rows_for(cfg, g.shape(sizes).vocab_size), work / "qlora", peak)
    gen = g.generate(str(folder), precision=cfg.precision, load_in_4bit=True, batch=cfg.gen_batch_size,
                     prompt_tokens=[cfg.max_length] * cfg.gen_batch_size, new_tokens=sizes.worst_gen_tokens)
    estimate = inference_memory(cfg, batch=cfg.gen_batch_size, context=cfg.max_length + sizes.worst_gen_tokens,
                                load_in_4bit=True, adapters=True, kv_cache=True, all_logits=False)
    gen["estimate_gib"] = round(sum(estimate.values()) / g.GiB, 3)
    context = _context_gib()
    t4 = None
    if train["peak_reserved_gib"] is not None:
        # on a card that cannot hold all 32 layers the plan loads fewer: the peaks scale by the estimates' ratio
        whole = g.profile_cfg("colab-qlora", _config_folder(work, sizes, 32), sizes)
        scale_train = estimate_memory(whole, cuda=True).total / estimate_memory(cfg, cuda=True).total
        whole_gen = inference_memory(whole, batch=cfg.gen_batch_size, context=cfg.max_length + sizes.worst_gen_tokens,
                                     load_in_4bit=True, adapters=True, kv_cache=True, all_logits=False)
        scale_gen = sum(whole_gen.values()) / sum(estimate.values())
        need = max(train["peak_reserved_gib"] * scale_train, gen["peak_reserved_gib"] * scale_gen) + context
        # a T4 has 15 GiB; the goal leaves 1 GiB of it for the display driver, fragmentation and Colab itself
        t4 = {"peak_with_context_gib": round(need, 3), "goal_gib": 14.0, "fits_goal": need <= 14.0,
              "t4_memory_gib": 15.0, "measured_layers": sizes.qlora_layers,
              "projected_to_32_layers": sizes.qlora_layers != 32}
    return {"fp16_matmul_peak_tflops": round(peak, 3), "layers": sizes.qlora_layers, "train": train, "generation": gen,
            "cuda_context_gib": context, "t4": t4}


def bf16_7b(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """gpu-7b's per-device settings (batch 4, length 512, checkpointing, accumulation 32) with a bf16 LoRA:
    neftlib against Trainer's built-in NEFTune on the same rows, then batched generation at gen_batch_size."""
    folder = _model_folder(work, sizes.layers)
    cfg = g.profile_cfg("gpu-7b", folder, sizes, method="lora", precision=sizes.compute)
    peak = g.matmul_peak(_dtype(sizes), sizes.rehearse)
    rows = g.rows_for(cfg, g.shape(sizes).vocab_size)
    lora = g.train_steps(cfg, rows, work / "lora", peak)
    trainer = g.trainer_steps(cfg, rows, work / "hf_trainer")
    lengths = _prompt_lengths(sizes.gen_batch)
    gen = g.generate(str(folder), precision=sizes.compute, load_in_4bit=False, batch=sizes.gen_batch,
                     prompt_tokens=lengths, new_tokens=sizes.gen_new_tokens)
    return {"bf16_matmul_peak_tflops": round(peak, 3), "precision": sizes.compute, "layers": sizes.layers, "lora": lora,
            "hf_trainer_neftune": trainer,
            "ratio_neftlib_over_hf_trainer": round(lora["tokens_per_s"] / trainer["tokens_per_s"], 4),
            "generation": gen}


def full_7b(work: Path, sizes: g.Sizes) -> dict[str, Any]:
    """A full fine-tune at gpu-7b's per-device settings on `full_layers` of the 32 decoder layers, with and
    without checkpointing; the 32-layer peak projected from the measured one by the estimate's ratio."""
    from neftlib.training.memory import estimate_memory

    if sizes.full_layers < 1:
        raise ValueError(f"--full-layers must be at least 1, got {sizes.full_layers}")
    folder = _model_folder(work, sizes.full_layers)
    peak = g.matmul_peak(_dtype(sizes), sizes.rehearse)
    runs = {}
    for checkpointing in (True, False):
        cfg = g.profile_cfg("gpu-7b", folder, sizes, gradient_checkpointing=checkpointing, precision=sizes.compute)
        run = g.train_steps(cfg, g.rows_for(cfg, g.shape(sizes).vocab_size), work / f"full-{checkpointing}", peak,
                            save=False)
        whole = g.profile_cfg("gpu-7b", _config_folder(work, sizes, 32), sizes, gradient_checkpointing=checkpointing,
                              precision=sizes.compute)
        est_all = estimate_memory(whole, cuda=torch.cuda.is_available()).total
        if run["peak_reserved_gib"] is not None:
            run["projected_32_layer_peak_gib"] = round(run["peak_reserved_gib"] * est_all / g.GiB / run["estimate_gib"], 1)
        run["estimate_32_layers_gib"] = round(est_all / g.GiB, 3)
        runs["checkpointing" if checkpointing else "no_checkpointing"] = run
    return {"bf16_matmul_peak_tflops": round(peak, 3), "precision": sizes.compute, "layers": sizes.full_layers, **runs}


def _dtype(sizes: g.Sizes) -> torch.dtype:
    """The matmul dtype of the bf16 parts' peak: the plan's compute precision on a GPU, fp32 on a CPU."""
    return g.DTYPES[sizes.compute] if torch.cuda.is_available() else torch.float32


def _prompt_lengths(n: int) -> list[int]:
    """Token counts of the first `n` mini evaluation prompts in the Alpaca format (repeated when fewer)."""
    from neftlib.data.prepare import format_prompt, load_eval_set
    from neftlib.training.models import load_tokenizer

    tok = load_tokenizer("tiny-random")
    rows, _ = load_eval_set("mini", seed=0, limit=None)
    lengths = [len(tok(format_prompt({"instruction": r["instruction"], "input": ""}, "alpaca", tok))["input_ids"])
               for r in rows]
    return [lengths[i % len(lengths)] for i in range(n)]


def _context_gib() -> float:
    """Memory this process holds outside PyTorch's allocator: the CUDA context, cuBLAS and library workspaces."""
    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return round((total - free - torch.cuda.memory_reserved()) / g.GiB, 3)


PARTS = {"gpu_tests": gpu_tests, "random_7b": random_7b, "qlora_7b": qlora_7b, "bf16_7b": bf16_7b,
         "full_7b": full_7b, "smoke": smoke, "cpu_bf16": cpu_bf16}
