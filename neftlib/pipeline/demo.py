"""The Colab QLoRA demo: a model's answers before and after a NEFTune QLoRA run.

notebooks/colab_qlora_demo.ipynb calls these. On a CUDA GPU it trains the `colab-qlora` profile (a 7B
model in 4-bit NF4 with LoRA), on a CPU the `smoke` profile (a tiny random model, 4-bit on CPU), both
through the pipeline's own QLoRA stage. Writes results/<run>/demo/: answers_before.json,
answers_after.json, answers.csv (one row per prompt and model state) and summary.json.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neftlib.pipeline import stages
from neftlib.data.batching import mean_loss
from neftlib.base.config import RunConfig, qlora_config
from neftlib.evaluation.generate import eval_prompts, generate_answers
from neftlib.base.io import mark_done, read_json, write_csv, write_json
from neftlib.training.models import load_base, load_tokenizer, on_best_device
from neftlib.training.train import load_trained

# AlpacaEval-style instructions written for this demo; none is in the training data.
PROMPTS = (
    "Give three tips for staying focused while studying at home.",
    "Explain what a hash table is to someone who has never programmed.",
    "Write a short, friendly email declining an invitation to a meeting.",
    "What are the main differences between a virus and a bacterium?",
)
STAGE = "qlora"  # the pipeline's QLoRA stage: colab-qlora's own settings on a GPU, a 4-bit smoke run on a CPU
ARM = "neftune"  # the demo trains one arm, with NEFTune noise at the profile's alpha


def pick_profile(profile: str = "auto") -> str:
    """'auto': colab-qlora when a CUDA GPU is present, else smoke; any other name is kept."""
    if profile != "auto":
        return profile
    return "colab-qlora" if torch.cuda.is_available() else "smoke"


def device_report() -> dict[str, Any]:
    """What this runtime trains on: the GPU's name, memory and bf16 support, or the CPU."""
    if not torch.cuda.is_available():
        return {"device": "cpu", "threads": torch.get_num_threads(),
                "note": "no CUDA GPU: the smoke profile runs (Colab: Runtime > Change runtime type > T4 GPU)"}
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda}


def start(profile: str, run: str = "", *, seed: int | None = None, alpha: float | None = None,
          model: str = "", max_steps: int | None = None) -> RunConfig:
    """The demo run's config (results/demo-<profile>/ by default) and its prepared data.

    `model` replaces the profile's model except in the smoke profile (a CPU runs the tiny model).
    The evaluation set is the embedded mini one: the demo answers its own PROMPTS, and a fresh
    Colab runtime has no local AlpacaEval file.
    """
    overrides: dict[str, Any] = {"eval_data": "mini", "max_steps": max_steps}
    if model and profile != "smoke":
        overrides["model"] = model
    cfg = stages.start_run(profile, run or f"demo-{profile}", seed=seed, alpha=alpha, **overrides)
    stages.prepare_data(cfg)
    return cfg


def _folder(cfg: RunConfig) -> Path:
    return stages.stage_dir(cfg, "demo")


def _release() -> None:
    """Hand freed GPU memory back: a T4 cannot hold a second 4-bit 7B model next to the first."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer(cfg: RunConfig, state: str, max_new_tokens: int = 256) -> dict[str, Any]:
    """Greedy answers to PROMPTS and the held-out loss, 'before' (the 4-bit base) or 'after' training.

    'after' is the base with the trained NEFTune adapters. Kept in answers_<state>.json, which a
    rerun reads instead of generating again.
    """
    if state not in ("before", "after"):
        raise ValueError(f"state={state!r} is not one of before, after")
    out = _folder(cfg) / f"answers_{state}.json"
    if out.exists():
        return read_json(out)
    q = qlora_config(cfg)
    tok = load_tokenizer(q.model)
    _release()  # what training left behind
    if state == "before":
        model = on_best_device(load_base(q.model, precision=q.precision, load_in_4bit=q.load_in_4bit)).eval()
    else:
        model = load_trained(q, stages.stage_dir(cfg, STAGE) / ARM)
    prompts = eval_prompts([{"instruction": p} for p in PROMPTS], q.prompt_format, tok)
    texts = generate_answers(model, tok, prompts, max_new_tokens=min(max_new_tokens, q.gen_max_new_tokens),
                             batch_size=len(prompts), repetition_penalty=q.repetition_penalty,
                             desc=f"answers {state}")
    heldout = mean_loss(model, stages.load_prepared(cfg, "heldout"), tok.pad_token_id, q.batch_size)
    del model
    _release()
    record = {"state": state, "model": q.model, "heldout_loss": heldout,
              "answers": [{"instruction": p, "answer": a} for p, a in zip(PROMPTS, texts)]}
    write_json(out, record)
    return record


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train the NEFTune arm of the QLoRA stage; an interrupted run resumes from its checkpoint."""
    stages.train_arms(cfg, STAGE, arms=[ARM])
    return read_json(stages.stage_dir(cfg, STAGE) / ARM / "summary.json")


def compare(cfg: RunConfig) -> pd.DataFrame:
    """Before / after answers side by side; writes answers.csv and summary.json."""
    before, after = answer(cfg, "before"), answer(cfg, "after")
    arm_dir = stages.stage_dir(cfg, STAGE) / ARM
    trained, log = read_json(arm_dir / "summary.json"), pd.read_csv(arm_dir / "log.csv")
    rows = [{"run": cfg.run_name, "state": rec["state"], "instruction": a["instruction"], "answer": a["answer"]}
            for rec in (before, after) for a in rec["answers"]]
    write_csv(_folder(cfg) / "answers.csv", rows)
    summary = {
        "run": cfg.run_name, "profile": cfg.profile, "model": trained["model"], "method": trained["method"],
        "arm": ARM, "alpha": trained["alpha"], "steps": trained["steps"], "final_loss": trained["final_loss"],
        "train_wall_s": trained["train_wall_s"], "trainable_params": trained["trainable_params"],
        # the noise was on: the per-step noise/embedding norm ratio the training loop logged
        "noise_ratio_mean": float(log["noise_ratio"].mean()), "noised_steps": int((log["noise_ratio"] > 0).sum()),
        "heldout_loss_before": before["heldout_loss"], "heldout_loss_after": after["heldout_loss"],
        "device": device_report(),
    }
    write_json(_folder(cfg) / "summary.json", summary)
    mark_done(_folder(cfg))
    return pd.DataFrame({"instruction": list(PROMPTS), "before": [a["answer"] for a in before["answers"]],
                         "after": [a["answer"] for a in after["answers"]]})


def summary(cfg: RunConfig) -> dict[str, Any]:
    """The demo's summary.json: model, steps, noise ratio, held-out loss before and after, device."""
    return read_json(_folder(cfg) / "summary.json")


def print_answers(table: pd.DataFrame) -> None:
    """Each prompt with its answer before and after training, in full."""
    for row in table.itertuples():
        print(f"### {row.instruction}\n--- before:\n{row.before}\n--- after:\n{row.after}\n")
