"""Cost of one decode step per answer at several batch sizes: what sets a profile's `gen_batch_size`.

For each batch size B, B copies of one chat prompt are answered greedily twice, with exactly 1 and
exactly 1 + STEPS new tokens (min_new_tokens = max_new_tokens, so no answer stops early); the
difference over STEPS is one decode step with the KV cache, and the 1-token call is the prompt pass.
All batch sizes run in one process, on the same model and prompt.

    python bench/bench_decode_step.py [--profile cpu] [--batches 1 16 32 64] [--steps 32] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from record import publish, timed  # noqa: E402  (bench/record.py, beside this script)

from neftlib.base.recipes import load_config  # noqa: E402
from neftlib.evaluation.generate import eval_prompts  # noqa: E402
from neftlib.training.models import load_base, load_tokenizer, on_best_device  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "decode_step.json"
PROMPT = {"instruction": "Write a short poem about the sea, the sky and the wind."}


@torch.no_grad()
def seconds(model, enc: dict, new_tokens: int, pad_id: int) -> float:
    """Wall seconds of one greedy `generate` call that makes exactly `new_tokens` tokens per answer."""
    return timed(lambda: model.generate(**enc, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        repetition_penalty=1.2, pad_token_id=pad_id), model.device)[1]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32, 64])
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per batch size")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.profile)
    tok = load_tokenizer(cfg.model)
    model = on_best_device(load_base(cfg.model, precision=cfg.precision)).eval()
    prompt = eval_prompts([PROMPT], cfg.prompt_format, tok)[0]
    enc1 = dict(tok(prompt, return_tensors="pt"))
    pad = tok.pad_token_id
    seconds(model, {k: v.to(model.device) for k, v in enc1.items()}, 2, pad)  # warm-up

    rows = []
    for b in a.batches:
        enc = {k: v.repeat(b, 1).to(model.device) for k, v in enc1.items()}
        prefill = seconds(model, enc, 1, pad)
        step = (seconds(model, enc, 1 + a.steps, pad) - prefill) / a.steps
        rows.append({"batch": b, "prompt_pass_s": prefill, "decode_step_s": step, "decode_step_s_per_answer": step / b})
        print(f"batch {b}: prompt pass {prefill * 1e3:.0f} ms, decode step {step * 1e3:.0f} ms "
              f"({step / b * 1e3:.1f} ms per answer)", file=sys.stderr)
    single = next((r["decode_step_s"] for r in rows if r["batch"] == 1), None)
    for r in rows:
        # decode speed of a batch against answering its prompts one at a time
        r["decode_speedup_vs_batch_1"] = single / r["decode_step_s_per_answer"] if single else None
    result = {"model": cfg.model, "profile": a.profile, "prompt_tokens": int(enc1["input_ids"].shape[1]),
              "steps": a.steps, "device": str(model.device), "rows": rows}
    return publish(a.out, result)


if __name__ == "__main__":
    main()
