"""Training throughput: neftlib.training.train against transformers' Trainer with its built-in NEFTune, in one run.

Four trainers, the same model (SmolLM2-135M-Instruct, fp32), the same tokenized Alpaca examples,
batch size and number of optimizer steps, all with NEFTune alpha 5:

- `neftlib`: neftlib.training.train.train (Trainer with neftlib's noise callback) with its length-grouped batches
  (the `cpu` profile's batching);
- `neftlib_padding_free`: the same with `padding_free=True` (each batch one row, no pad tokens);
- `hf_trainer`: transformers' Trainer with `neftune_noise_alpha=5` and its defaults (random batches);
- `hf_trainer_grouped`: the same Trainer with `train_sampling_strategy="group_by_length"`, so the
  reader sees how much of the gain is the batching alone.

The figure is non-pad tokens per second over the timed steps (the first step of each is warm-up).
Seconds are this process's CPU seconds by default (`--clock cpu`), with one torch thread: on a
machine shared with other jobs, wall time depends on what else runs, CPU time on the work done; one
thread's CPU second is one dedicated core's second. `--clock wall` reports wall time instead; both
are recorded. Model FLOPs utilisation (MFU) sets the useful model FLOPs per second against the peak
of fp32 square matmuls timed the same way in the same run, before each trainer and at the end. Model FLOPs
per example of n real tokens: 6 * N * n + 12 * layers * hidden * n^2 (N: parameters, the tied
embedding counted once, as the LM head's matmul; the second term is attention's QK^T and AV, forward
and backward, as PaLM's appendix B counts them). Padding is not useful work and is not counted.

    python bench/bench_throughput.py [--steps 5] [--batch 8] [--max-length 256] [--threads 1] [--clock cpu]
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from neftlib.data.batching import EpochSampler  # noqa: E402
from neftlib.base.recipes import load_config  # noqa: E402
from neftlib.data.prepare import load_instructions, tokenize_rows  # noqa: E402
from neftlib.training.models import count_parameters, load_model, load_tokenizer  # noqa: E402

MODEL = "smollm2-135m-instruct"
ALPHA = 5.0
OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"
DATA = Path(os.environ.get("NEFTLIB_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def matmul_peak(n: int = 2048, reps: int = 6) -> dict[str, float]:
    """GFLOP per second of fp32 n x n matmuls, per CPU second and per wall second: best and median of `reps`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    cpu, wall = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        cpu.append(2 * n**3 / (time.process_time() - c0) / 1e9)
        wall.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"best_gflops_cpu": max(cpu), "median_gflops_cpu": statistics.median(cpu),
            "best_gflops_wall": max(wall), "median_gflops_wall": statistics.median(wall)}


def load_examples(tok, n: int, max_length: int, seed: int = 0) -> list[dict]:
    """The first `n` Alpaca rows after neftlib's seeded shuffle, in the paper's Alpaca prompt."""
    rows, _ = load_instructions(str(DATA / "alpaca_5000.json"), seed=seed, limit=n, drop_bad=True)
    return tokenize_rows(rows, tok, "alpaca", max_length)


def model_flops(lengths: list[int], n_params: int, layers: int, hidden: int) -> float:
    """Useful FLOPs of one forward + backward over examples of these real lengths."""
    return sum(6 * n_params * n + 12 * layers * hidden * n * n for n in lengths)


def run_neftlib(examples: list[dict], pad_id: int, batch: int, steps: int, max_length: int, work: Path,
                padding_free: bool = False) -> list[dict]:
    """Per-step rows of neftlib.training.train.train: seconds, real lengths of the batch, padded tokens."""
    from neftlib.training.train import train

    cfg = load_config("cpu", model=MODEL, max_steps=steps, batch_size=batch, max_length=max_length,
                      alpha=ALPHA, group_by_length=not padding_free, padding_free=padding_free, save_every=10_000,
                      learning_rate=2e-5)
    folder = work / ("neftlib_padding_free" if padding_free else "neftlib")
    train(cfg, cfg.for_arm("neftune"), examples, folder, pad_id=pad_id, progress=False)
    log = _read_log(folder / "log.csv")
    # The same batches train() drew: one process, epoch 0 (steps < batches per epoch).
    order = EpochSampler([len(e["input_ids"]) for e in examples], batch, cfg.seed, not padding_free).batches()
    rows = []
    for step, row in enumerate(log):
        lengths = [len(examples[i]["input_ids"]) for i in order[step]]
        assert abs(sum(lengths) - row["tokens_per_s"] * row["step_s"]) < 0.5, "batches differ from train()'s"
        rows.append({"wall_s": row["step_s"], "cpu_s": row["cpu_s"], "lengths": lengths,
                     "padded": sum(lengths) if padding_free else max(lengths) * len(lengths)})
    return rows


def _read_log(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def run_trainer(examples: list[dict], tok, batch: int, steps: int, work: Path, sampling: str, *, model=None,
                extra_args: dict[str, Any] | None = None) -> list[dict]:
    """Per-step rows of transformers' Trainer with neftune_noise_alpha, as a user would set it up.

    `model`: the model to train (default: SmolLM2 in fp32); `extra_args`: more TrainingArguments (bf16,
    gradient accumulation, checkpointing: bench/gpu_7b.py sets the GPU profiles' own)."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model = model if model is not None else load_model(MODEL)
    # a step's GPU work is queued, not done, when its callback runs: wait for it so each step's time is its own
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    seen: list[torch.Tensor] = []  # per training forward: real length of each row

    def count(module, args, kwargs):
        if module.training:
            seen.append(kwargs["attention_mask"].sum(1))
            seen.append(torch.tensor([kwargs["input_ids"].numel()]))

    class StepTimer(TrainerCallback):
        # From one step's end to the next: data loading, forward, backward, clipping, AdamW, callbacks.
        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.t = (0.0, 0.0)

        def on_train_begin(self, args, state, control, **kw):
            self.t = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kw):
            sync()
            now = (time.perf_counter(), time.process_time())
            lengths = [int(n) for n in torch.cat(seen[0::2]).tolist()]
            padded = int(sum(int(p) for p in seen[1::2]))
            self.rows.append({"wall_s": now[0] - self.t[0], "cpu_s": now[1] - self.t[1], "lengths": lengths,
                              "padded": padded})
            seen.clear()
            self.t = now

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    tok.padding_side = "right"
    data = Dataset.from_list([{"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]),
                               "labels": e["labels"]} for e in examples])
    args = TrainingArguments(
        output_dir=str(work / sampling), per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-5,
        neftune_noise_alpha=ALPHA, train_sampling_strategy=sampling, use_cpu=not torch.cuda.is_available(), seed=0,
        report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True, **(extra_args or {}),
    )
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()
    hook.remove()
    return timer.rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize(name: str, rows: list[dict], peaks: dict[str, float], n_params: int, layers: int,
              hidden: int) -> dict:
    """Tokens per second, model FLOPs per second and MFU over the timed steps, by CPU and by wall clock."""
    timed = rows[1:]  # the first step is warm-up
    tokens = sum(sum(r["lengths"]) for r in timed)
    padded = sum(r["padded"] for r in timed)
    flops = sum(model_flops(r["lengths"], n_params, layers, hidden) for r in timed)
    # the same formula over the padded rows: what the hardware computed, useful or not
    padded_flops = sum(model_flops([max(r["lengths"])] * len(r["lengths"]), n_params, layers, hidden) for r in timed)
    out = {"trainer": name, "timed_steps": len(timed), "non_pad_tokens": tokens, "padded_tokens": padded,
           "fill": tokens / padded}
    for clock in ("cpu", "wall"):
        seconds = sum(r[f"{clock}_s"] for r in timed)
        out |= {f"{clock}_s": seconds, f"median_step_{clock}_s": statistics.median(r[f"{clock}_s"] for r in timed),
                f"tokens_per_{clock}_s": tokens / seconds, f"model_gflops_per_{clock}_s": flops / seconds / 1e9,
                f"mfu_{clock}": flops / seconds / 1e9 / peaks[clock],
                f"padded_gflops_per_{clock}_s": padded_flops / seconds / 1e9}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per trainer (plus one warm-up)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (the cpu profile's; the paper: 512)")
    p.add_argument("--examples", type=int, default=2000, help="pool the batches are drawn from")
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the square matmuls of the peak")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="seconds of the headline figures")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if torch.cuda.is_available():
        raise SystemExit("this benchmark measures the CPU path; hide the GPU with CUDA_VISIBLE_DEVICES=")
    load_before, t_run = os.getloadavg()[0], time.perf_counter()

    tok = load_tokenizer(MODEL)
    examples = load_examples(tok, a.examples, a.max_length)
    probe = load_model(MODEL)
    n_params = count_parameters(probe)[1]
    layers, hidden = probe.config.num_hidden_layers, probe.config.hidden_size
    del probe

    steps = a.steps + 1
    peaks, raw = [], {}
    # Trainer default, neftlib (both batchings), Trainer grouped: neftlib in the middle, so a drift in the
    # machine's load over the run tilts neither comparison its way. The matmul peak is measured before each.
    with tempfile.TemporaryDirectory(prefix="bench_throughput.") as tmp:
        work = Path(tmp)
        for name in ("hf_trainer", "neftlib", "neftlib_padding_free", "hf_trainer_grouped"):
            peaks.append({"before": name, **matmul_peak(a.matmul_n)})
            print(f"{name}: {steps} steps ...", file=sys.stderr, flush=True)
            if name.startswith("neftlib"):
                raw[name] = run_neftlib(examples, tok.pad_token_id, a.batch, steps, a.max_length, work,
                                        padding_free=name == "neftlib_padding_free")
            else:
                raw[name] = run_trainer(examples, tok, a.batch, steps, work,
                                        "random" if name == "hf_trainer" else "group_by_length")
            gc.collect()
        peaks.append({"before": "end", **matmul_peak(a.matmul_n)})

    peak = {clock: max(m[f"best_gflops_{clock}"] for m in peaks) for clock in ("cpu", "wall")}
    rows = [summarize(k, v, peak, n_params, layers, hidden) for k, v in raw.items()]
    by = {r["trainer"]: r for r in rows}
    c = a.clock
    result = {
        "model": MODEL, "precision": "fp32", "params": n_params, "layers": layers, "hidden": hidden,
        "alpha": ALPHA, "batch": a.batch, "max_length": a.max_length, "timed_steps": a.steps,
        "warmup_steps": 1, "examples_pool": len(examples), "data": "alpaca_5000.json, Alpaca prompt, seed 0",
        "clock": c, "threads": a.threads,
        "flops_formula": "6*N*n + 12*layers*hidden*n^2 per example of n real tokens (N: parameters, tied "
                         "embedding once; second term: attention, PaLM appendix B); pads not counted",
        "tokens_per_s": {r["trainer"]: r[f"tokens_per_{c}_s"] for r in rows},
        "ratio_neftlib_over_hf_trainer": by["neftlib"][f"tokens_per_{c}_s"] / by["hf_trainer"][f"tokens_per_{c}_s"],
        "ratio_neftlib_over_hf_trainer_grouped":
            by["neftlib"][f"tokens_per_{c}_s"] / by["hf_trainer_grouped"][f"tokens_per_{c}_s"],
        "ratio_padding_free_over_hf_trainer_grouped":
            by["neftlib_padding_free"][f"tokens_per_{c}_s"] / by["hf_trainer_grouped"][f"tokens_per_{c}_s"],
        "ratio_wall_neftlib_over_hf_trainer": by["neftlib"]["tokens_per_wall_s"] / by["hf_trainer"]["tokens_per_wall_s"],
        "matmul_peak_gflops": peak[c], "mfu": {r["trainer"]: r[f"mfu_{c}"] for r in rows},
        "matmul_n": a.matmul_n, "matmul_peak_gflops_by_clock": peak, "matmul_measurements": peaks,
        "goal_ratio": 1.3, "goal_mfu": 0.5, "rows": rows,
        "environment": {
            "device": "cpu", "cpu": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
            "run_wall_s": time.perf_counter() - t_run,
        },
        "command": "python bench/bench_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = a.out.with_name(a.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, a.out)  # readers never see a half-written file
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "matmul_measurements")}, indent=2))
    return result


if __name__ == "__main__":
    main()
