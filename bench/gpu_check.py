"""`make gpu-check`: everything that needs a GPU, in one command, in under 10 minutes on one large GPU.

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

Writes bench/results/gpu_check.json after every part (a run cut short keeps what it measured) and prints
a table. Without a CUDA GPU it says so and exits 0. `--rehearse` runs the 7B parts on a CPU at a tiny shape
(the tests do). `--parts a b` runs some parts and keeps the other parts' figures from an earlier run on the
same GPU.

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
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from neftlib.base.io import write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"
ORDER = ("gpu_tests", "random_7b", "qlora_7b", "bf16_7b", "smoke", "full_7b", "cpu_bf16")  # most wanted first
REHEARSED = ("random_7b", "qlora_7b", "bf16_7b", "full_7b")
# Seconds a part may take on one H200 before it is stopped (and recorded as timed out).
LIMITS = {"gpu_tests": 150, "random_7b": 120, "qlora_7b": 200, "bf16_7b": 180, "full_7b": 120, "smoke": 240,
          "cpu_bf16": 150}
GOALS = {"colab_qlora_peak_gib_max": 14.0, "bf16_mfu_min": 0.40, "neftlib_over_trainer_min": 1.0}


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
        env |= {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cudnn": torch.backends.cudnn.version()}
    else:
        env["device"] = "cpu"
    return env


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
        few = part["few_layers"]
        return f"{part['all_layers']['params'] / 1e9:.2f}B params" + (f"; {few['layers']}-layer copy" if few else "")
    if name == "qlora_7b":
        t, gen, t4 = part["train"], part["generation"], part.get("t4") or {}
        return (f"train peak {t['peak_reserved_gib']} GiB (est. {t['estimate_gib']}), generation peak "
                f"{gen['peak_reserved_gib']} GiB (est. {gen['estimate_gib']}); T4 goal <= 14: "
                f"{t4.get('peak_with_context_gib')} GiB {'met' if t4.get('fits_goal') else 'NOT met'}")
    if name == "bf16_7b":
        lora = part["lora"]
        return (f"LoRA {lora['tokens_per_s']:.0f} tok/s, MFU {pct(lora['mfu'])}, peak {lora['peak_reserved_gib']} GiB; "
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
    env = result["environment"]
    lines = [f"gpu-check on {env['device']} ({env.get('memory_gib', '-')} GiB), torch {env['torch']}, CUDA {env['cuda']}",
             f"{'part':<10} {'status':<10} {'s':>6}  figures"]
    for name, part in result["parts"].items():
        lines.append(f"{name:<10} {part.get('status', '?'):<10} {part.get('seconds', 0):>6.0f}  {headline(name, part)}")
    for name, g in result["goals"].items():
        lines.append(f"goal {name}: {g['value']} (goal {g['goal']}): "
                     f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[g['met']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=ORDER, default=None, help="parts to run (default: all)")
    p.add_argument("--budget", type=float, default=570, help="seconds for the whole check; parts left are skipped")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per training run (the first warms up)")
    p.add_argument("--full-layers", type=int, default=8, help="decoder layers of the full fine-tune's 7B shape")
    p.add_argument("--rehearse", action="store_true", help="the 7B parts on a CPU at a tiny shape (tests)")
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
    sizes = dataclasses.asdict(__import__("gpu_7b").Sizes(rehearse=a.rehearse, steps=a.steps, full_layers=a.full_layers))
    if a.rehearse:
        sizes |= {"gen_new_tokens": 4, "worst_gen_tokens": 4}
    names = a.parts or (REHEARSED if a.rehearse else ORDER)
    if any(n in names for n in REHEARSED[1:]) and "random_7b" not in names:
        names = ("random_7b", *names)  # the 7B parts load the random model it writes
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    # asked in a process of its own: a CUDA context opened here would hold GPU memory through every part
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--env-out", str(work / "env.json")], check=True)
    env = json.loads((work / "env.json").read_text())
    earlier = json.loads(a.out.read_text()) if a.parts and a.out.exists() else {}
    keep = earlier.get("parts", {}) if earlier.get("environment", {}).get("device") == env["device"] else {}
    result = {"environment": env, "sizes": sizes, "parts": {k: v for k, v in keep.items() if k not in names},
              "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    # every part's results and figures go to the scratch folder, never the project's results/
    os.environ["NEFTLIB_RESULTS_DIR"], os.environ["NEFTLIB_FIGURES_DIR"] = str(work / "results"), str(work / "figures")
    deadline = time.perf_counter() + a.budget
    try:
        for name in names:
            left = deadline - time.perf_counter()
            if left < 20:
                result["parts"][name] = {"status": "skipped", "error": f"the {a.budget:.0f} s budget was spent"}
            else:
                print(f"gpu-check: {name} (at most {min(LIMITS[name], left):.0f} s) ...", flush=True)
                result["parts"][name] = launch(name, work, sizes, min(LIMITS[name], left))
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
