"""Answers per second: neftlib's batched generation vs a one-prompt-at-a-time `model.generate` loop.

Same model, same seeded subset of AlpacaEval prompts, same decoding (greedy, repetition penalty,
max_new_tokens), side by side in one run. The prompts are sorted by length as
`neftlib.evaluation.generate.generate_answers` sorts them and cut into its batches; for each batch the batched
call and the loop over the same prompts run back to back, the order alternating, so drift in
machine load hits both alike. The measured batched rate gives a projected wall time for all 805
AlpacaEval prompts.

    python bench/bench_generate.py [--profile cpu] [--n 32] [--batch B] [--max-new-tokens T] [--threads 1]
    python bench/bench_generate.py --n 805 --batched-only --out bench/results/generate_805.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from record import publish, timed  # noqa: E402  (bench/record.py, beside this script)

from neftlib.base.recipes import load_config  # noqa: E402
from neftlib.data.prepare import load_eval_set  # noqa: E402
from neftlib.evaluation.generate import eval_prompts, generate_answers  # noqa: E402
from neftlib.training.models import load_base, load_tokenizer, on_best_device  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "generate_throughput.json"
ALPACA_EVAL_PROMPTS = 805


@torch.no_grad()
def one_at_a_time(model, tok, prompts: list[str], *, max_new_tokens: int,
                  repetition_penalty: float) -> tuple[list[str], list[int]]:
    """The plain loop: one `generate` call per prompt, no padding; answers and new-token counts."""
    model.eval()
    answers, counts = [], []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=not p.startswith(tok.bos_token or "\0"))
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             repetition_penalty=repetition_penalty, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        counts.append(int(new.shape[0]))  # generated tokens, EOS included; it stops there
        answers.append(tok.decode(new, skip_special_tokens=True).strip())
    return answers, counts


def _batched_only(a: argparse.Namespace, cfg, model, tok, prompts: list[str], batch: int, max_new: int,
                  source: str, device: torch.device) -> dict[str, Any]:
    """Measured, not projected: one `generate_answers` call over all the prompts, as stage 04 makes it."""
    answers, secs, cpu = timed(lambda: generate_answers(model, tok, prompts, max_new_tokens=max_new, batch_size=batch,
                                                        repetition_penalty=cfg.repetition_penalty), device)
    n = len(prompts)
    result = {
        "model": cfg.model, "profile": a.profile, "prompt_format": cfg.prompt_format, "eval_source": source,
        "n_prompts": n, "seed": a.seed, "batch_size": batch, "max_new_tokens": max_new,
        "repetition_penalty": cfg.repetition_penalty, "decoding": "greedy", "device": str(device),
        "wall_s_batched": secs, "cpu_s_batched": cpu, "answers_per_s_batched": n / secs,
        "mean_answer_words": sum(len(x.split()) for x in answers) / n,
        "cpu_count": os.cpu_count(),
    }
    return publish(a.out, result)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu", help="profile whose model, prompt format and decoding are used")
    p.add_argument("--n", type=int, default=32, help="seeded subset of the AlpacaEval prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="prompts per batch (default: the profile's gen_batch_size)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the profile's gen_max_new_tokens")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--batched-only", action="store_true",
                   help="time neftlib's batched generation alone (e.g. --n 805 for the whole set's wall time); "
                        "no loop, so no speedup")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    cfg = load_config(a.profile)
    batch = a.batch or cfg.gen_batch_size
    max_new = a.max_new_tokens or cfg.gen_max_new_tokens
    rows, source = load_eval_set("auto", seed=a.seed, limit=a.n)
    tok = load_tokenizer(cfg.model)
    model = on_best_device(load_base(cfg.model, precision=cfg.precision)).eval()
    device = next(model.parameters()).device
    prompts = eval_prompts(rows, cfg.prompt_format, tok)

    # warm-up, untimed: first calls pay for lazy initialisation
    generate_answers(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)
    if a.batched_only:
        return _batched_only(a, cfg, model, tok, prompts, batch, max_new, source, device)
    one_at_a_time(model, tok, prompts[:1], max_new_tokens=4, repetition_penalty=cfg.repetition_penalty)

    # generate_answers' own order (longest prompt first) and batches, so each chunk is one of its batches
    lengths = [len(tok(q, add_special_tokens=False)["input_ids"]) for q in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    chunks = [order[s:s + batch] for s in range(0, len(order), batch)]

    t_batched = t_loop = cpu_batched = cpu_loop = 0.0
    batched: dict[int, str] = {}
    looped: dict[int, str] = {}
    new_tokens: dict[int, int] = {}
    for c, idx in enumerate(chunks):
        chunk = [prompts[i] for i in idx]
        runs = {
            "batched": lambda: generate_answers(model, tok, chunk, max_new_tokens=max_new, batch_size=len(chunk),
                                                repetition_penalty=cfg.repetition_penalty, progress=False),
            "loop": lambda: one_at_a_time(model, tok, chunk, max_new_tokens=max_new,
                                          repetition_penalty=cfg.repetition_penalty),
        }
        for name in (("batched", "loop") if c % 2 == 0 else ("loop", "batched")):
            out, secs, cpu = timed(runs[name], device)
            if name == "batched":
                t_batched += secs
                cpu_batched += cpu
                batched.update(zip(idx, out))
            else:
                t_loop += secs
                cpu_loop += cpu
                looped.update(zip(idx, out[0]))
                new_tokens.update(zip(idx, out[1]))
            print(f"chunk {c + 1}/{len(chunks)} {name}: {len(idx)} answers in {secs:.1f} s ({cpu:.1f} CPU s)",
                  file=sys.stderr)

    n = len(prompts)
    rate_batched, rate_loop = n / t_batched, n / t_loop
    same = sum(batched[i] == looped[i] for i in range(n))
    result = {
        "model": cfg.model, "profile": a.profile, "prompt_format": cfg.prompt_format, "eval_source": source,
        "n_prompts": n, "seed": a.seed, "batch_size": batch, "max_new_tokens": max_new,
        "repetition_penalty": cfg.repetition_penalty, "decoding": "greedy", "device": str(device),
        "wall_s_batched": t_batched, "wall_s_loop": t_loop,
        "answers_per_s_batched": rate_batched, "answers_per_s_loop": rate_loop,
        "speedup_batched_over_loop": rate_batched / rate_loop,
        "cpu_s_batched": cpu_batched, "cpu_s_loop": cpu_loop,
        "answers_per_cpu_s_batched": n / cpu_batched, "answers_per_cpu_s_loop": n / cpu_loop,
        # the same ratio in CPU time: robust to other programs' load on a shared machine
        "speedup_cpu_time": cpu_loop / cpu_batched,
        # greedy answers of the two paths should match; left padding can flip a near-tie in fp32
        "identical_answers": same,
        "mean_new_tokens_loop": sum(new_tokens.values()) / n,
        "share_at_max_new_tokens": sum(v >= max_new for v in new_tokens.values()) / n,
        # projected from the measured rate on this subset, not measured on all 805
        "projected_805_prompts_s_batched": ALPACA_EVAL_PROMPTS / rate_batched,
        "projected_805_prompts_s_loop": ALPACA_EVAL_PROMPTS / rate_loop,
        # ... and from the CPU-time rate: the wall time on `threads` otherwise idle cores (one thread: exact)
        "projected_805_prompts_cpu_s_batched": ALPACA_EVAL_PROMPTS * cpu_batched / n,
        "cpu_count": os.cpu_count(),
    }
    return publish(a.out, result)


if __name__ == "__main__":
    main()
