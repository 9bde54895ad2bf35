"""The Colab QLoRA demo: the same prompts answered by the 4-bit base, by a QLoRA run without noise and by one
with NEFTune noise.

notebooks/colab_qlora_demo.ipynb calls these. On a CUDA GPU it trains the `colab-qlora` profile (a 7B model in
4-bit NF4 with LoRA), on a CPU the `smoke` profile (a tiny random model, 4-bit on the CPU), both through the
pipeline's own training: the stage whose method is QLoRA (colab-qlora's 02, smoke's 03). Before training it
checks the memory estimate, refusing a run that cannot fit, and times two steps to estimate the run's time.
Writes results/<run>/demo/: plan.json, answers_<state>.json, answers.csv (one row per prompt and model
state, with answer lengths) and summary.json.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neftlib.analysis.paper import FIGURE1, cell
from neftlib.analysis.paper_rows import T4
from neftlib.base.config import RunConfig, stage_config
from neftlib.base.io import mark_done, read_json, write_csv, write_json
from neftlib.base.recipes import load_config
from neftlib.data.batching import mean_loss
from neftlib.evaluation.generate import eval_prompts, generate_with_lengths
from neftlib.pipeline import stages
from neftlib.pipeline.estimate import training_advice
from neftlib.training.memory import GiB, available_bytes, estimate_memory
from neftlib.training.models import free_memory, load_base, load_tokenizer, on_best_device
from neftlib.training import train as train_module  # demo.train (both arms) is this module's own

# AlpacaEval-style instructions written for this demo; none is in the training data.
PROMPTS = (
    "Give three tips for staying focused while studying at home.",
    "Explain what a hash table is to someone who has never programmed.",
    "Write a short, friendly email declining an invitation to a meeting.",
    "What are the main differences between a virus and a bacterium?",
)
ARMS = ("baseline", "neftune")  # without and with NEFTune noise, the same run otherwise
STATES = ("before", *ARMS)  # the 4-bit base, then each trained arm
PROBE_STEPS = 2  # timed before the run: the first step warms up, the second is the time per step


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
    return {"device": props.name, "memory_gib": round(props.total_memory / GiB, 1),
            "bf16": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda}


def start(profile: str, run: str = "", *, seed: int | None = None, alpha: float | None = None,
          model: str = "", max_steps: int | None = None, batch_size: int | None = None) -> RunConfig:
    """The demo run's config (results/demo-<profile>/ by default) and its prepared data.

    `model` replaces the profile's model except in the smoke profile (a CPU runs the tiny model).
    `batch_size` replaces the micro-batch; the accumulation grows so each optimizer step sees as many examples.
    The evaluation set is the embedded mini one: the demo answers its own PROMPTS, and a fresh Colab
    runtime has no local AlpacaEval file.
    """
    overrides: dict[str, Any] = {"eval_data": "mini", "max_steps": max_steps}
    if model and profile != "smoke":
        overrides["model"] = model
    if batch_size is not None:
        base = load_config(profile)
        overrides["batch_size"] = batch_size
        if base.effective_batch is None:
            overrides["effective_batch"] = base.batch_size * base.grad_accum
            overrides["grad_accum"] = 1
    cfg = stages.start_run(profile, run or f"demo-{profile}", seed=seed, alpha=alpha, **overrides)
    stages.prepare_data(cfg)
    return cfg


def demo_stage(cfg: RunConfig) -> str:
    """The pipeline stage whose method is QLoRA: the training stage (02) when the profile's own method is
    QLoRA (colab-qlora), else the QLoRA stage (03)."""
    return "train" if cfg.method == "qlora" else "qlora"


def _folder(cfg: RunConfig) -> Path:
    return stages.stage_dir(cfg, "demo")


def _training(cfg: RunConfig) -> tuple[RunConfig, list[dict], int]:
    """The QLoRA stage's config, its training examples and the pad token id."""
    q, _ = stage_config(cfg, demo_stage(cfg))
    examples = stages.load_prepared(cfg, "train")
    if q.train_limit is not None:
        examples = examples[: q.train_limit]
    return q, examples, load_tokenizer(cfg.model).pad_token_id


def steps_per_arm(q: RunConfig, n_examples: int) -> int:
    """Optimizer steps one arm takes: max_steps, else epochs over the examples at the run's accumulation."""
    if q.max_steps:
        return q.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_examples / q.batch_size) / q.grad_accum_for(1)))
    return math.ceil(per_epoch * q.epochs)


def check_memory(cfg: RunConfig, budget: int | None = None) -> dict[str, Any]:
    """The training memory estimate against this device (its whole memory on a GPU, free RAM on a CPU);
    a MemoryError naming the smaller setting that fits when it does not."""
    q, _, _ = _training(cfg)
    cuda = torch.cuda.is_available()
    if budget is None:
        budget = torch.cuda.get_device_properties(0).total_memory if cuda else available_bytes()[0]
    need = estimate_memory(q, cuda=cuda).total
    report = {"estimate_gib": round(need / GiB, 2), "memory_gib": round(budget / GiB, 2), "fits": need <= budget}
    if need > budget:
        smaller = [a for a in training_advice(q, budget, cuda=cuda) if a["fits"] and a["change"].startswith("batch_size=")]
        fix = (f"set BATCH_SIZE = {smaller[0]['change'].split()[0].split('=')[1]} in the parameters cell "
               f"({smaller[0]['change']}, about {smaller[0]['total_gib']} GiB)" if smaller else
               "no smaller batch fits either: use a GPU with more memory (Runtime > Change runtime type)")
        raise MemoryError(f"this run needs about {report['estimate_gib']} GiB to train ({q.model}, "
                          f"batch_size={q.batch_size}, max_length={q.max_length}) but this device has "
                          f"{report['memory_gib']} GiB: {fix}")
    return report


def plan(cfg: RunConfig, budget: int | None = None) -> dict[str, Any]:
    """Before training: the memory check, then two optimizer steps timed through the same training code
    (in a scratch folder, deleted after) and the run's time estimated from them. Kept in plan.json."""
    out = _folder(cfg) / "plan.json"
    if out.exists():
        return read_json(out)
    memory = check_memory(cfg, budget)
    q, examples, pad_id = _training(cfg)
    probe = _folder(cfg) / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    t0 = time.perf_counter()
    summary = train_module.train(dataclasses.replace(q, max_steps=PROBE_STEPS, save_every=10**9), q.for_arm("neftune"),
                                 examples, probe, pad_id=pad_id, progress=False)
    wall = time.perf_counter() - t0
    step_s = pd.read_csv(probe / "log.csv")["step_s"].iloc[-1]
    shutil.rmtree(probe, ignore_errors=True)
    free_memory()
    steps = steps_per_arm(q, len(examples))
    setup = max(0.0, wall - summary["train_wall_s"])  # loading the model and data, once per arm
    record = {"profile": cfg.profile, "stage": demo_stage(cfg), "arms": list(ARMS), "steps_per_arm": steps,
              "batch_size": q.batch_size, "grad_accum": q.grad_accum_for(1), "max_length": q.max_length,
              "step_s": round(float(step_s), 3), "setup_s": round(setup, 1),
              "train_estimate_min": round(len(ARMS) * (setup + steps * step_s) / 60, 1), **memory}
    write_json(out, record)
    return record


def describe_plan(record: dict[str, Any]) -> str:
    """The plan in one paragraph, for the notebook."""
    return (f"memory: about {record['estimate_gib']} GiB of {record['memory_gib']} GiB. "
            f"Time per step: {record['step_s']:.2f} s (measured on {PROBE_STEPS} steps of batch "
            f"{record['batch_size']} x {record['grad_accum']} micro-batches). {record['steps_per_arm']} steps x "
            f"{len(record['arms'])} arms, plus {record['setup_s']:.0f} s of loading per arm: about "
            f"{record['train_estimate_min']} min of training, then {len(PROMPTS)} answers per model.")


def train(cfg: RunConfig) -> pd.DataFrame:
    """Train both arms of the QLoRA stage, baseline then NEFTune; an interrupted run resumes from its checkpoint."""
    return stages.train_arms(cfg, demo_stage(cfg), arms=list(ARMS))


def answer(cfg: RunConfig, state: str, max_new_tokens: int = 256) -> dict[str, Any]:
    """Greedy answers to PROMPTS, with their lengths, and the held-out loss: 'before' (the 4-bit base) or an
    arm's trained adapters on it. Kept in answers_<state>.json, which a rerun reads instead of generating."""
    if state not in STATES:
        raise ValueError(f"state={state!r} is not one of {', '.join(STATES)}")
    out = _folder(cfg) / f"answers_{state}.json"
    if out.exists():
        return read_json(out)
    q, _, _ = _training(cfg)
    tok = load_tokenizer(q.model)
    free_memory()  # what training left behind: a T4 cannot hold a second 4-bit 7B model next to the first
    if state == "before":
        model = on_best_device(load_base(q.model, precision=q.precision, load_in_4bit=q.load_in_4bit)).eval()
    else:
        model = train_module.load_trained(q, stages.stage_dir(cfg, demo_stage(cfg)) / state)
    prompts = eval_prompts([{"instruction": p} for p in PROMPTS], q.prompt_format, tok)
    texts, tokens = generate_with_lengths(model, tok, prompts, max_new_tokens=min(max_new_tokens, q.gen_max_new_tokens),
                                          batch_size=len(prompts), repetition_penalty=q.repetition_penalty,
                                          desc=f"answers {state}")
    heldout = mean_loss(model, stages.load_prepared(cfg, "heldout"), tok.pad_token_id, q.batch_size)
    del model
    free_memory()
    record = {"state": state, "model": q.model, "heldout_loss": heldout,
              "answers": [{"instruction": p, "answer": a, "new_tokens": n, "chars": len(a)}
                          for p, a, n in zip(PROMPTS, texts, tokens)]}
    write_json(out, record)
    return record


def compare(cfg: RunConfig) -> pd.DataFrame:
    """The same prompts answered before training, without noise and with NEFTune, with answer lengths;
    writes answers.csv and summary.json."""
    records = {s: answer(cfg, s) for s in STATES}
    stage_dir = stages.stage_dir(cfg, demo_stage(cfg))
    rows = [{"run": cfg.run_name, "state": s, "instruction": a["instruction"], "answer": a["answer"],
             "new_tokens": a["new_tokens"], "chars": a["chars"]} for s, rec in records.items() for a in rec["answers"]]
    write_csv(_folder(cfg) / "answers.csv", rows)
    arms = {}
    for arm in ARMS:
        trained, log = read_json(stage_dir / arm / "summary.json"), pd.read_csv(stage_dir / arm / "log.csv")
        arms[arm] = {"alpha": trained["alpha"], "steps": trained["steps"], "final_loss": trained["final_loss"],
                     "train_wall_s": trained["train_wall_s"], "step_s_median": statistics.median(log["step_s"]),
                     # the noise was on: the per-step noise/embedding norm ratio the training loop logged
                     "noise_ratio_mean": float(log["noise_ratio"].mean()),
                     "noised_steps": int((log["noise_ratio"] > 0).sum()),
                     "heldout_loss": records[arm]["heldout_loss"],
                     "mean_answer_chars": statistics.mean(a["chars"] for a in records[arm]["answers"])}
    first = read_json(stage_dir / ARMS[0] / "summary.json")
    summary = {"run": cfg.run_name, "profile": cfg.profile, "stage": demo_stage(cfg), "model": first["model"],
               "method": first["method"], "trainable_params": first["trainable_params"], "arms": arms,
               "heldout_loss_before": records["before"]["heldout_loss"],
               "mean_answer_chars_before": statistics.mean(a["chars"] for a in records["before"]["answers"]),
               "plan": read_json(_folder(cfg) / "plan.json") if (_folder(cfg) / "plan.json").exists() else None,
               "device": device_report()}
    write_json(_folder(cfg) / "summary.json", summary)
    mark_done(_folder(cfg))
    frame = pd.DataFrame(rows)
    return frame.pivot(index="instruction", columns="state", values=["answer", "new_tokens", "chars"]).loc[list(PROMPTS)]


def summary(cfg: RunConfig) -> dict[str, Any]:
    """The demo's summary.json: per arm steps, loss, noise ratio, held-out loss and answer length; the plan."""
    return read_json(_folder(cfg) / "summary.json")


def print_answers(table: pd.DataFrame) -> None:
    """Each prompt with its answer before training, without noise and with NEFTune, and their lengths."""
    titles = {"before": "before training", "baseline": "trained without noise", "neftune": "trained with NEFTune"}
    for instruction, row in table.iterrows():
        print(f"### {instruction}")
        for state in STATES:
            print(f"--- {titles[state]} ({row[('new_tokens', state)]} tokens, {row[('chars', state)]} characters):\n"
                  f"{row[('answer', state)]}")
        print()


QLORA_TABLE, QLORA_COLUMN = "table3_qlora_chatgpt", "LLaMA2(7B) Alpaca"


def paper_numbers() -> str:
    """The paper's numbers this demo sits beside, read from its tables, each with its setting and judge named."""
    base, neft = cell(QLORA_TABLE, "Base", QLORA_COLUMN), cell(QLORA_TABLE, "+NEFT (alpha=5)", QLORA_COLUMN)
    before, after = FIGURE1["Alpaca"]
    chars = [cell(T4, f"char_length.{row}", "Alpaca (alpha=5)") for row in ("LLaMA-2 7B", "+NEFT")]
    return (f"**The paper's numbers.** QLoRA on LLaMA-2-7B with Alpaca (Table 3, ChatGPT judge): win rate "
            f"{base:.2f}% -> {neft:.2f}% at alpha 5. Full fine-tuning of LLaMA-2-7B on Alpaca (Table 1, GPT-4 judge): "
            f"{before:.2f}% -> {after:.2f}%, with answers of {chars[0]:.0f} -> {chars[1]:.0f} characters (Table 4). "
            "This demo answers a handful of prompts and judges none: what it can show is the answers and their length.")


def what_this_run_shows(cfg: RunConfig) -> str:
    """The demo's outcome in a few computed sentences, from its summary.json."""
    s = summary(cfg)
    base, neft = s["arms"]["baseline"], s["arms"]["neftune"]
    longer = neft["mean_answer_chars"] - base["mean_answer_chars"]
    return "\n".join([
        f"- **Answers:** {s['mean_answer_chars_before']:.0f} characters on average before training, "
        f"{base['mean_answer_chars']:.0f} after training without noise, {neft['mean_answer_chars']:.0f} with NEFTune "
        f"({longer:+.0f}), over {len(PROMPTS)} prompts: too few for an interval; the studies in the project's "
        "README test length on 200 prompts and several seeds.",
        f"- **Held-out loss** (without noise): {s['heldout_loss_before']:.3f} before, {base['heldout_loss']:.3f} "
        f"without noise, {neft['heldout_loss']:.3f} with NEFTune.",
        f"- **The noise was on:** its norm averaged {neft['noise_ratio_mean']:.2f} of the embeddings' over "
        f"{neft['noised_steps']} of {neft['steps']} steps (baseline: {base['noise_ratio_mean']:.2f}).",
        f"- **Model and scale:** {s['model']} ({s['method']}, {s['profile']} profile), {neft['steps']} optimizer steps per "
        "arm; no judge, so no win rate.",
    ])
