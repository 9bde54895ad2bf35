"""`make gpu-check`: everything that needs a GPU, in one command, in under 10 minutes on any card of 16 GB or more.

Parts, each in its own process with its own time limit, each recording its figures or its error (a failing
part never stops the others):

- gpu_tests: `pytest -m gpu` (noise on CUDA, fp16/bf16 embeddings, 4-bit NF4 and QLoRA, generation, memory
  handed back between arms);
- random_7b: a randomly initialised LLaMA-2-7B-shaped model from configs/models/llama-2-7b.json (no weights);
- qlora_7b: colab-qlora's QLoRA steps and worst-case generation on it: peak memory, does it fit a 15 GB T4?
- bf16_7b: bf16 LoRA steps at gpu-7b's per-device settings, neftlib against Trainer's built-in NEFTune on the
  same rows, batched generation at gen_batch_size;
- full_7b: full fine-tune steps at gpu-7b's per-device settings on a few of the 32 layers (all 32 with
  AdamW's fp32 states do not fit one GPU), with and without checkpointing, the 32-layer peak projected;
- smoke: the smoke profile end to end; cpu_bf16: the cpu profile's training stage in bf16.

Before the first part it plans (`plan`): from the card's memory, whether it has bf16, its matmul peak and
memory bandwidth (timed in a process of its own), it picks the layers of each 7B model that fit the card by
the project's own memory estimate, the micro-batch, the gradient accumulation and the tokens generated, so
that the parts' predicted time fits the budget; parts that still do not fit are skipped up front. The plan,
its predictions and every change it made (what, from, to, why) are written with the results, beside the
seconds each part really took.

Writes bench/results/gpu_check.json after every part (a run cut short keeps what it measured) and prints
a table. Without a CUDA GPU it says so and exits 0. `--rehearse` runs the 7B parts on a CPU at a tiny shape
with the plan of a pretend card (the tests do); `--card-memory` / `--card-no-bf16` plan as if the card were
smaller or without bf16. `--parts a b` runs some parts and keeps the other parts' figures from an earlier run
on the same GPU.

    python bench/gpu_check.py [--parts ...] [--budget 570] [--full-layers 8] [--steps 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from neftlib.base.io import write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"
ORDER = ("gpu_tests", "random_7b", "qlora_7b", "bf16_7b", "full_7b", "smoke", "cpu_bf16")  # most wanted first
REHEARSED = ("random_7b", "qlora_7b", "bf16_7b", "full_7b")
SEVEN_B = REHEARSED[1:]  # the parts that load random_7b's models
GOALS = {"colab_qlora_peak_gib_max": 14.0, "bf16_mfu_min": 0.40, "neftlib_over_trainer_min": 1.0}

# ---------- the plan's model of a card (its predictions are recorded beside the measured seconds) ----------
# Seconds of the parts whose work does not depend on the card's size (small models, fixed test lists).
FIXED_S = {"gpu_tests": 75.0, "smoke": 150.0, "cpu_bf16": 75.0}
PART_START_S = 20.0  # a part's own process: Python, torch and transformers imports, the CUDA context
DISK_GB_S = 1.0  # reading or writing a 7B model's weights (page cache or a local SSD)
# Share of the card's matmul peak a training step reaches: 4-bit layers dequantize before each matmul.
EFFICIENCY = {"full": 0.3, "lora": 0.3, "qlora": 0.12}
DECODE_STEP_S = 0.03  # a decode step's kernel launches, beside reading the weights once
USABLE = 0.9  # share of the card's memory a part's estimate may fill (allocator fragmentation, other processes)
TIME_MARGIN = 0.9  # share of the budget the predicted seconds may fill
PROMPT_TOKENS = 100  # the longest mini evaluation prompt the LoRA part generates from, rounded up
PROFILE_LAYERS = 32  # LLaMA-2-7B's decoder layers
# Cards of 16 GB (a T4 shows 15 GiB to CUDA) and up: the smallest the check is sized for.
SMALLEST_CARD_GIB = 14.5
REHEARSAL_CARD = {"memory_gib": 16.0, "bf16": True, "tflops": 100.0, "bandwidth_gb_s": 500.0}


def environment() -> dict[str, Any]:
    """The GPU, its driver-visible memory and the versions that decide the figures."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           **{p: version(p) for p in ("transformers", "peft", "bitsandbytes", "accelerate")}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        env |= {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cudnn": torch.backends.cudnn.version(),
                "bf16": bf16, **card_speed(torch.bfloat16 if bf16 else torch.float16)}
    else:
        env["device"] = "cpu"
    return env


def card_speed(dtype: torch.dtype) -> dict[str, float]:
    """The GPU's matmul peak in `dtype` and its memory bandwidth, timed in a second or two: the plan's clock."""
    import gpu_7b

    n = 2**28  # 1 GiB of fp32, copied: 2 GiB moved
    a = torch.empty(n, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del a, b
    return {"tflops": round(gpu_7b.matmul_peak(dtype), 1), "bandwidth_gb_s": round(2 * 4 * n / best / 1e9, 1)}


# ---------- the plan ----------

def _config_at(folder: Path, layers: int) -> str:
    """A folder with only the LLaMA-2-7B config at `layers` decoder layers (what the estimates read)."""
    import gpu_7b

    path = folder / f"llama-7b-{layers}l"
    if not (path / "config.json").exists():
        gpu_7b.shape(gpu_7b.Sizes(), layers).save_pretrained(path)
    return str(path)


class Shapes:
    """Estimates at any layer count of the 7B shape, from two small ones: every part of an estimate grows
    linearly with the layers (weights, gradients, states, activations, KV cache), so two points give all."""

    def __init__(self, folder: Path) -> None:
        self.folders = {n: _config_at(folder, n) for n in (1, 2)}

    def at(self, layers: int, estimate: Callable[[str], Any]) -> int:
        """Bytes of `estimate(model_folder)` (a MemoryEstimate or a dict of parts) at `layers` layers."""
        from neftlib.training.memory import MemoryEstimate

        one, two = estimate(self.folders[1]), estimate(self.folders[2])
        if isinstance(one, MemoryEstimate):
            a, b = dataclasses.asdict(one), dataclasses.asdict(two)
            return MemoryEstimate(**{k: a[k] + (layers - 1) * (b[k] - a[k]) for k in a}).total
        return sum(one[k] + (layers - 1) * (two[k] - one[k]) for k in one)

    def params(self, layers: int) -> int:
        """Parameters of the 7B shape at `layers` layers."""
        from neftlib.training.memory import _model_shape
        from neftlib.base.recipes import load_config

        one, two = (sum(p.numel() for p in _model_shape(load_config("smoke", model=self.folders[n]))[1].parameters())
                    for n in (1, 2))
        return one + (layers - 1) * (two - one)


def part_memory(shapes: Shapes, s: dict) -> dict[str, Callable[[int], int]]:
    """Peak bytes of each 7B part at the sizes `s`, by the project's estimates (cuda=True: with the context)."""
    from neftlib.base.recipes import load_config
    from neftlib.pipeline.estimate import inference_memory
    from neftlib.training.memory import estimate_memory

    def qlora(model):
        return load_config("colab-qlora", model=model, effective_batch=4 * s["qlora_grad_accum"])

    def gpu7b(model, **kw):
        return load_config("gpu-7b", model=model, precision=s["compute"], batch_size=s["batch_size"],
                           effective_batch=s["batch_size"] * s["grad_accum"], **kw)

    q_gen = lambda m: inference_memory(qlora(m), batch=qlora(m).gen_batch_size,  # noqa: E731
                                       context=qlora(m).max_length + s["worst_gen_tokens"], load_in_4bit=True,
                                       adapters=True, kv_cache=True, all_logits=False)
    l_gen = lambda m: inference_memory(gpu7b(m), batch=s["gen_batch"],  # noqa: E731
                                       context=PROMPT_TOKENS + s["gen_new_tokens"], load_in_4bit=False,
                                       adapters=False, kv_cache=True, all_logits=False)
    return {
        # random_7b builds each model on the GPU in bf16 before saving it
        "random_7b": lambda L: 2 * shapes.params(L) + estimate_memory(qlora(shapes.folders[1]), cuda=True).overhead,
        "qlora_7b": lambda L: max(shapes.at(L, lambda m: estimate_memory(qlora(m), cuda=True)), shapes.at(L, q_gen)),
        "bf16_train": lambda L: shapes.at(L, lambda m: estimate_memory(gpu7b(m, method="lora"), cuda=True)),
        "bf16_generation": lambda L: shapes.at(L, l_gen),
        "full_7b": lambda L: shapes.at(L, lambda m: estimate_memory(gpu7b(m, gradient_checkpointing=False), cuda=True)),
    }


def part_seconds(shapes: Shapes, s: dict, card: dict, parts: list[str]) -> dict[str, float]:
    """Predicted seconds of each part at the sizes `s` on `card` when `parts` run: model loads from disk, the
    training steps' model FLOPs at a share of the matmul peak, decode steps that read the weights once each."""
    import gpu_7b

    def weights_s(layers: int) -> float:  # reading or writing a model in bf16
        return 2 * shapes.params(layers) / 1e9 / DISK_GB_S

    def step_s(layers: int, method: str, tokens: int, examples: int, checkpointing: bool = True) -> float:
        config = gpu_7b.shape(gpu_7b.Sizes(), layers)
        flops = gpu_7b.step_flops(config, tokens, examples, frozen_base=method != "full")
        return flops * (4 / 3 if checkpointing else 1) / (card["tflops"] * 1e12 * EFFICIENCY[method])

    def decode_s(layers: int, nbytes: float, tokens: int) -> float:
        return tokens * (nbytes * shapes.params(layers) / (card["bandwidth_gb_s"] * 1e9) + DECODE_STEP_S)

    L, Q, F, steps = s["layers"], s["qlora_layers"], s["full_layers"], s["steps"]
    # random_7b saves one model per layer count the parts that run load
    saved = {n for part, n in (("bf16_7b", L), ("qlora_7b", Q), ("full_7b", F)) if part in parts and n >= 1}
    return {
        **FIXED_S,
        "random_7b": PART_START_S + sum(1.5 * weights_s(n) for n in saved),
        # two loads (training, then generation), each reading bf16 weights and quantizing them
        "qlora_7b": PART_START_S + 2 * 2 * weights_s(Q) + steps * step_s(Q, "qlora", 512, 4 * s["qlora_grad_accum"])
        + decode_s(Q, 0.5, s["worst_gen_tokens"]),
        # three loads: neftlib's training, Trainer's, generation
        "bf16_7b": PART_START_S + 3 * weights_s(L)
        + 2 * steps * step_s(L, "lora", 512, s["batch_size"] * s["grad_accum"]) + decode_s(L, 2, s["gen_new_tokens"]),
        "full_7b": PART_START_S + 2 * weights_s(max(F, 1)) + sum(
            steps * step_s(max(F, 1), "full", 512, s["batch_size"] * s["grad_accum"], ckpt) for ckpt in (True, False)),
    }


def plan(card: dict, budget: float, names: tuple[str, ...], *, steps: int = 2, full_layers: int | None = None,
         folder: Path) -> dict[str, Any]:
    """Sizes that fit `card` (memory_gib, bf16, tflops, bandwidth_gb_s) and the `budget` in seconds.

    Memory first, part by part, by the project's own estimates at the 7B shape: the layers of each 7B model
    (all 32 where they fit), then the micro-batch. Then time: while the predicted seconds exceed the budget,
    the gradient accumulation, then the generated tokens shrink, and at last the least wanted parts are
    skipped. Returns the sizes, the predicted seconds and limits per part, and every change with its reason.
    """
    usable = card["memory_gib"] * 2**30 * USABLE
    shapes = Shapes(folder)
    s = {"steps": steps, "layers": PROFILE_LAYERS, "qlora_layers": PROFILE_LAYERS,
         "full_layers": 8 if full_layers is None else full_layers, "compute": "bf16" if card["bf16"] else "fp16",
         "batch_size": 4, "grad_accum": 32, "qlora_grad_accum": 4, "gen_batch": 32, "gen_new_tokens": 256,
         "worst_gen_tokens": 512}
    changes: list[dict[str, Any]] = []

    def change(key: str, value, why: str) -> None:
        if s[key] != value:
            changes.append({"what": key, "from": s[key], "to": value, "why": why})
            s[key] = value

    if not card["bf16"]:
        changes.append({"what": "compute", "from": "bf16", "to": "fp16",
                        "why": "the card has no bf16: the bf16 parts run in fp16 (with the loss scaler)"})
    gib = lambda v: f"{v / 2**30:.1f} GiB"  # noqa: E731
    room = f"{gib(usable)} usable of {card['memory_gib']:.1f} GiB"

    def most_layers(fits, start: int) -> int:
        layers = start
        while layers > 1 and not fits(layers):
            layers -= 1
        return layers

    mem = part_memory(shapes, s)
    # the QLoRA part measures colab-qlora's T4 figure: all 32 layers wherever they fit
    need = max(mem["qlora_7b"](PROFILE_LAYERS), mem["random_7b"](PROFILE_LAYERS))
    change("qlora_layers", most_layers(lambda n: max(mem["qlora_7b"](n), mem["random_7b"](n)) <= usable,
                                       PROFILE_LAYERS),
           f"memory: 32 layers need {gib(need)}, {room}; its peaks are projected to 32 layers by the estimate")
    # the bf16 LoRA part: fewer layers first; its batches shrink only when even 8 layers do not fit
    for key, part in (("batch_size", "bf16_train"), ("gen_batch", "bf16_generation")):
        while s[key] > 1 and mem[part](8) > usable:
            change(key, s[key] // 2, f"memory: the LoRA part's {part} on 8 layers needs {gib(mem[part](8))}, {room}")
            mem = part_memory(shapes, s)
    lora = lambda n: max(mem["bf16_train"](n), mem["bf16_generation"](n), mem["random_7b"](n))  # noqa: E731
    change("layers", most_layers(lambda n: lora(n) <= usable, PROFILE_LAYERS),
           f"memory: the bf16 LoRA part on 32 layers needs {gib(lora(PROFILE_LAYERS))}, {room}")
    if s["full_layers"] >= 1:
        change("full_layers", most_layers(lambda n: mem["full_7b"](n) <= usable, s["full_layers"]),
               f"memory: {s['full_layers']} layers of the full fine-tune need {gib(mem['full_7b'](s['full_layers']))}, "
               f"{room}")

    # Time. At the smallest sizes, the parts that fit the budget, most wanted first; then the kept parts get
    # their sizes back (the profile's accumulation first) while the prediction stays within the budget.
    goal = budget * TIME_MARGIN
    wanted = [n for n in ORDER if n in names]

    def total(parts: list[str]) -> float:
        seconds = part_seconds(shapes, s, card, parts)
        return sum(seconds[n] for n in parts)

    ladder = (("grad_accum", 1), ("qlora_grad_accum", 1), ("gen_new_tokens", 64))
    defaults = {key: s[key] for key, _ in ladder}
    for key, floor in ladder:
        s[key] = floor
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for name in wanted:
        if name in ("gpu_tests", "random_7b") or total([*kept, name]) <= goal:
            kept.append(name)
        else:
            skipped[name] = (f"time: predicted {part_seconds(shapes, s, card, [*kept, name])[name]:.0f} s, and the "
                             f"parts before it {total(kept):.0f} s, of a budget of {goal:.0f} s")
    if not any(n in kept for n in SEVEN_B):
        kept = [n for n in kept if n != "random_7b"]
    growing = [key for key, _ in ladder]
    while growing:  # one doubling each in turn, while the budget holds
        for key in list(growing):
            s[key] *= 2
            if s[key] > defaults[key] or total(kept) > goal:
                s[key] //= 2
                growing.remove(key)
    for key, floor in ladder:
        if s[key] != defaults[key]:
            grown, s[key] = s[key], defaults[key]
            why = f"time: at {defaults[key]} the parts kept would take {total(kept):.0f} s, budget {goal:.0f} s"
            change(key, grown, why)
    for part, key in (("qlora_7b", "qlora_layers"), ("bf16_7b", "layers"), ("full_7b", "full_layers")):
        if part not in kept:
            s[key] = 0  # no model to build for a part that does not run
    seconds = part_seconds(shapes, s, card, kept)
    # a part is stopped at half again its prediction (at least a minute more): the plan's model is rough
    limits = {n: round(max(1.5 * seconds[n], seconds[n] + 60)) for n in kept}
    warning = (None if card["memory_gib"] >= SMALLEST_CARD_GIB else
               f"{card['memory_gib']:.1f} GiB is below the 16 GB cards the check is sized for: parts may not fit")
    return {"card": card, "sizes": s, "changes": changes, "skipped": skipped, "warning": warning,
            "parts": kept, "predicted_s": {n: round(seconds[n], 1) for n in kept}, "limits_s": limits,
            "predicted_total_s": round(total(kept), 1), "budget_s": budget}


def run_part(name: str, work: Path, sizes_json: str, out: Path) -> None:
    """In the part's own process: run it, write its figures or its error."""
    import gpu_7b
    from gpu_parts import PARTS

    sizes = gpu_7b.Sizes(**json.loads(sizes_json))
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **PARTS[name](work, sizes)}
    except Exception as err:  # recorded, never raised: the next part still runs
        result = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000],
                  "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, result)


def launch(name: str, work: Path, sizes: dict, limit: float) -> dict[str, Any]:
    """One part in a fresh process, stopped after `limit` seconds."""
    out = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", name, "--work", str(work),
           "--sizes", json.dumps(sizes), "--part-out", str(out)]
    t0 = time.perf_counter()
    log = work / f"{name}.log"
    with open(log, "w") as fh:
        # its own process group: on timeout the part goes with everything it started (pytest, notebook kernels)
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "timed out", "error": f"stopped after {limit:.0f} s", "seconds": round(limit, 1),
                    "log_tail": log.read_text(errors="replace")[-1500:]}
    if out.exists():
        return json.loads(out.read_text())
    return {"status": "error", "error": f"the part's process exited {proc.returncode} without a result: "
            f"{log.read_text(errors='replace')[-1500:]}", "seconds": round(time.perf_counter() - t0, 1)}


def goals(parts: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals against what was measured (None where the part did not run)."""
    q = parts.get("qlora_7b", {}).get("t4") or {}
    b = parts.get("bf16_7b", {})
    f = parts.get("full_7b", {})
    mfus = [r.get("mfu") for r in (b.get("lora", {}), f.get("checkpointing", {}), f.get("no_checkpointing", {}))
            if r.get("mfu") is not None]
    ratio = b.get("ratio_neftlib_over_hf_trainer")
    peak = q.get("peak_with_context_gib")
    return {"colab_qlora_peak_gib": {"value": peak, "goal": f"<= {GOALS['colab_qlora_peak_gib_max']}",
                                     "met": None if peak is None else peak <= GOALS["colab_qlora_peak_gib_max"]},
            "bf16_mfu": {"value": mfus, "goal": f">= {GOALS['bf16_mfu_min']}",
                         "met": None if not mfus else min(mfus) >= GOALS["bf16_mfu_min"]},
            "neftlib_over_trainer": {"value": ratio, "goal": f">= {GOALS['neftlib_over_trainer_min']}",
                                     "met": None if ratio is None else ratio >= GOALS["neftlib_over_trainer_min"]}}


def headline(name: str, part: dict[str, Any]) -> str:
    """The part's key figures in one line."""
    if part.get("status") != "ok":
        return part.get("error", "")[:110]
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    if name == "gpu_tests":
        return f"{part['passed']} passed, {part['failed']} failed, {part['skipped']} skipped"
    if name == "random_7b":
        return "; ".join(f"{n} layers, {m['params'] / 1e9:.2f}B params" for n, m in part["models"].items())
    if name == "qlora_7b":
        t, gen, t4 = part["train"], part["generation"], part.get("t4") or {}
        return (f"{part['layers']} layers: train peak {t['peak_reserved_gib']} GiB (est. {t['estimate_gib']}), "
                f"generation peak {gen['peak_reserved_gib']} GiB (est. {gen['estimate_gib']}); T4 goal <= 14: "
                f"{t4.get('peak_with_context_gib')} GiB {'met' if t4.get('fits_goal') else 'NOT met'}")
    if name == "bf16_7b":
        lora = part["lora"]
        return (f"{part['layers']} layers {part['precision']}: LoRA {lora['tokens_per_s']:.0f} tok/s, MFU "
                f"{pct(lora['mfu'])}, peak {lora['peak_reserved_gib']} GiB; "
                f"neftlib/Trainer {part['ratio_neftlib_over_hf_trainer']:.3f}x; "
                f"generation {part['generation']['tokens_per_s']:.0f} tok/s")
    if name == "full_7b":
        on, off = part["checkpointing"], part["no_checkpointing"]
        return (f"{part['layers']} layers: MFU {pct(on['mfu'])} / {pct(off['mfu'])} (ckpt on/off), peak "
                f"{on['peak_reserved_gib']} / {off['peak_reserved_gib']} GiB; 32 layers ~"
                f"{on.get('projected_32_layer_peak_gib')} GiB (est. {on['estimate_32_layers_gib']})")
    if name == "smoke":
        return f"{len(part['arms'])} arms trained, {part['judged_arms']} judged, report: {part['report']}"
    if name == "cpu_bf16":
        return "; ".join(f"{a} loss {r['final_loss']}" for a, r in part["arms"].items())
    return ""


def table(result: dict[str, Any]) -> str:
    env, planned = result["environment"], result.get("plan", {})
    lines = [f"gpu-check on {env['device']} ({env.get('memory_gib', '-')} GiB), torch {env['torch']}, CUDA {env['cuda']}"]
    lines += [f"scaled {c['what']}: {c['from']} -> {c['to']} ({c['why']})" for c in planned.get("changes", [])]
    lines.append(f"{'part':<10} {'status':<10} {'s':>6} {'plan':>6}  figures")
    for name, part in result["parts"].items():
        predicted = planned.get("predicted_s", {}).get(name)
        lines.append(f"{name:<10} {part.get('status', '?'):<10} {part.get('seconds', 0):>6.0f} "
                     f"{'-' if predicted is None else f'{predicted:.0f}':>6}  {headline(name, part)}")
    for name, g in result["goals"].items():
        lines.append(f"goal {name}: {g['value']} (goal {g['goal']}): "
                     f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[g['met']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=ORDER, default=None, help="parts to run (default: all)")
    p.add_argument("--budget", type=float, default=570, help="seconds for the whole check; parts left are skipped")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per training run (the first warms up)")
    p.add_argument("--full-layers", type=int, default=None,
                   help="most decoder layers of the full fine-tune's 7B shape (default 8, fewer where they do not fit)")
    p.add_argument("--rehearse", action="store_true", help="the 7B parts on a CPU at a tiny shape (tests)")
    p.add_argument("--card-memory", type=float, default=None, help="plan as if the card had this many GiB")
    p.add_argument("--card-no-bf16", action="store_true", help="plan as if the card had no bf16 (a T4)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder, removed)")
    p.add_argument("--run-part", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--env-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run_part:
        run_part(a.run_part, a.work, a.sizes, a.part_out)
        return 0
    if a.env_out:
        write_json(a.env_out, environment())
        return 0
    if not torch.cuda.is_available() and not a.rehearse:
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
              f"nothing to check; {a.out} is left as it was. Run it on a machine with an NVIDIA GPU and a CUDA "
              "build of torch.")
        return 0
    names = a.parts or (REHEARSED if a.rehearse else ORDER)
    if any(n in names for n in SEVEN_B) and "random_7b" not in names:
        names = ("random_7b", *names)  # the 7B parts load the random model it writes
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    # asked in a process of its own: a CUDA context opened here would hold GPU memory through every part
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--env-out", str(work / "env.json")], check=True)
    env = json.loads((work / "env.json").read_text())
    card = dict(REHEARSAL_CARD) if a.rehearse else {k: env[k] for k in REHEARSAL_CARD}
    if a.card_memory is not None:
        card["memory_gib"] = min(a.card_memory, card["memory_gib"]) if not a.rehearse else a.card_memory
    if a.card_no_bf16:
        card["bf16"] = False
    planned = plan(card, a.budget, tuple(names), steps=a.steps, full_layers=a.full_layers, folder=work / "plan")
    fields = {f.name for f in dataclasses.fields(__import__("gpu_7b").Sizes)}
    sizes = {"rehearse": a.rehearse, **{k: v for k, v in planned["sizes"].items() if k in fields}}
    if a.rehearse:  # a CPU makes a few tokens; the plan above is the pretend card's
        sizes |= {"gen_new_tokens": 4, "worst_gen_tokens": 4}
    earlier = json.loads(a.out.read_text()) if a.parts and a.out.exists() else {}
    keep = earlier.get("parts", {}) if earlier.get("environment", {}).get("device") == env["device"] else {}
    result = {"environment": env, "sizes": sizes, "plan": planned,
              "parts": {k: v for k, v in keep.items() if k not in names},
              "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if planned["warning"]:
        print(f"gpu-check: {planned['warning']}", flush=True)
    for change in planned["changes"]:
        print(f"gpu-check: scaled {change['what']} {change['from']} -> {change['to']} ({change['why']})", flush=True)
    # every part's results and figures go to the scratch folder, never the project's results/
    os.environ["NEFTLIB_RESULTS_DIR"], os.environ["NEFTLIB_FIGURES_DIR"] = str(work / "results"), str(work / "figures")
    deadline = time.perf_counter() + a.budget
    try:
        for name in names:
            left = deadline - time.perf_counter()
            # a rehearsal's CPU is not the pretend card: only the budget stops its parts
            limit = left if a.rehearse else min(planned["limits_s"].get(name, left), left)
            if name in planned["skipped"]:
                result["parts"][name] = {"status": "skipped", "error": planned["skipped"][name]}
            elif left < 20:
                result["parts"][name] = {"status": "skipped", "error": f"the {a.budget:.0f} s budget was spent"}
            else:
                print(f"gpu-check: {name} (at most {limit:.0f} s) ...", flush=True)
                result["parts"][name] = launch(name, work, sizes, limit)
                result["parts"][name]["predicted_s"] = planned["predicted_s"].get(name)
            result["goals"] = goals(result["parts"])
            write_json(a.out, result)  # after every part: a run cut short keeps what it measured
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
