"""Cost of NEFTune noise in a training step: neftlib vs no noise vs transformers' built-in hook.

Steps (forward + backward + AdamW) of the three variants are interleaved in one run, after
warm-up, so drift in machine load hits all of them alike; medians are reported.

    python bench/bench_noise.py [--model PATH_OR_NAME] [--batch 8] [--seq 256] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from record import publish  # noqa: E402  (bench/record.py, beside this script)

from neftlib.noise import add_neftune_noise, neftune  # noqa: E402

ALPHA = 5.0
OUT = Path(__file__).resolve().parent / "results" / "noise_overhead.json"
RANDOM = "random-smollm2-shape"


def random_smollm2_shape() -> torch.nn.Module:
    """SmolLM2-135M's architecture with random weights: enough for timing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def load(name: Optional[str]) -> tuple[torch.nn.Module, str]:
    if name == RANDOM:
        return random_smollm2_shape(), RANDOM
    try:
        from neftlib.training.models import load_model
    except ImportError:
        load_model = None
    if load_model is not None:
        target = name or "smollm2-135m-instruct"
        try:
            return load_model(target), target
        except Exception as err:  # the packaged model may be absent; timing works on random weights
            if name is not None:
                raise
            print(f"load_model({target!r}) failed ({err}); using {RANDOM}", file=sys.stderr)
            return random_smollm2_shape(), RANDOM
    if name is None:
        return random_smollm2_shape(), RANDOM
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name), name


def hf_hook() -> Optional[Callable]:
    for mod in ("transformers.trainer_utils", "transformers.integrations.neftune"):
        try:
            return getattr(__import__(mod, fromlist=["x"]), "neftune_post_forward_hook")
        except (ImportError, AttributeError):
            continue
    return None


@contextlib.contextmanager
def hf_noise(model: torch.nn.Module, hook: Callable):
    """Attach transformers' hook the way Trainer does."""
    emb = model.get_input_embeddings()
    with hf_attr(emb):
        handle = emb.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def time_hooks(model: torch.nn.Module, hook: Optional[Callable], batch: dict[str, torch.Tensor],
               reps: int = 20) -> dict[str, float]:
    """Median ms of one noising of this batch's embeddings (neftlib incl. mask handling, vs HF)."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        out = emb(batch["input_ids"])
    sync = torch.cuda.synchronize if out.is_cuda else (lambda: None)
    g = torch.Generator(device=out.device).manual_seed(0)
    calls: dict[str, Callable[[], Any]] = {
        "neftlib": lambda: add_neftune_noise(out, batch["attention_mask"], ALPHA, generator=g)}
    if hook is not None:
        calls["hf"] = lambda: hook(emb, None, out)
    res = {}
    with hf_attr(emb):
        for k, f in calls.items():
            ts = []
            for _ in range(reps):
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                ts.append(time.perf_counter() - t0)
            res[k] = 1e3 * statistics.median(ts)
    return res


@contextlib.contextmanager
def hf_attr(emb: torch.nn.Module):
    emb.neftune_noise_alpha = ALPHA
    try:
        yield
    finally:
        del emb.neftune_noise_alpha


def make_batch(vocab: int, batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded batch with lengths spread over [seq/2, seq], like instruction data."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": ids.masked_fill(mask == 0, -100).to(device)}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=f"local HF folder or neftlib model name; '{RANDOM}' forces random weights")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, model_name = load(a.model)
    model.to(device).train()
    batch = make_batch(model.get_input_embeddings().num_embeddings, a.batch, a.seq, device)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-6)
    hook = hf_hook()
    variants: dict[str, Callable[[], Any]] = {
        "none": contextlib.nullcontext,
        "neftlib": lambda: neftune(model, ALPHA, seed=0),
    }
    if hook is not None:
        variants["hf"] = lambda: hf_noise(model, hook)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.warmup + a.steps):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate order: no fixed position bias
            with variants[k]():
                dt_s = step()
            if r >= a.warmup:
                times[k].append(dt_s)

    med = {k: statistics.median(v) for k, v in times.items()}
    hook_ms = time_hooks(model, hook, batch)
    result = {
        "model": model_name, "batch": a.batch, "seq": a.seq, "steps": a.steps, "device": str(device),
        "median_step_s_none": med["none"], "median_step_s_neftlib": med["neftlib"],
        "median_step_s_hf": med.get("hf"),
        "ratio_neftlib_over_none": med["neftlib"] / med["none"],
        "ratio_neftlib_over_hf": med["neftlib"] / med["hf"] if "hf" in med else None,
        # the hook's own work on this batch, timed alone: readable even when step times are noisy
        "median_noise_call_ms_neftlib": hook_ms["neftlib"], "median_noise_call_ms_hf": hook_ms.get("hf"),
    }
    return publish(a.out, result)


if __name__ == "__main__":
    main()
