"""Batched greedy generation with the paper's decoding, saved in alpaca_eval's model_outputs.json format."""
from __future__ import annotations

import torch

from neftlib.base.progress import tqdm
from neftlib.data.prepare import format_prompt


def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
                     repetition_penalty: float = 1.2, progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy answers, batched with left padding and sorted by length; eval mode, so never noised."""
    return generate_with_lengths(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 repetition_penalty=repetition_penalty, progress=progress, desc=desc)[0]


@torch.no_grad()
def generate_with_lengths(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
                          repetition_penalty: float = 1.2, progress: bool = True, desc: str = "generate",
                          min_new_tokens: int = 0) -> tuple[list[str], list[int]]:
    """Greedy answers and, per answer, the new tokens it took up to its EOS (max_new_tokens: cut by the cap).
    `min_new_tokens` > 0 blocks EOS until that many new tokens (transformers' min_new_tokens)."""
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    answers: list[str] = [""] * len(prompts)
    new_tokens: list[int] = [0] * len(prompts)
    try:
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[s:s + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=not prompts[idx[0]].startswith(tokenizer.bos_token or "\0"))
            enc = {k: v.to(device) for k, v in enc.items()}
            extra = {"min_new_tokens": min_new_tokens} if min_new_tokens > 0 else {}
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **extra)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                ends = (row == tokenizer.eos_token_id).nonzero()
                new_tokens[i] = int(ends[0, 0]) + 1 if len(ends) else len(row)
    finally:
        tokenizer.padding_side = side
    return answers, new_tokens


def cap_record(new_tokens: list[int], max_new_tokens: int) -> dict:
    """What a length analysis needs besides the text: tokens per answer, and which ones the cap cut."""
    hit = [n >= max_new_tokens for n in new_tokens]
    return {"max_new_tokens": max_new_tokens, "new_tokens": new_tokens, "hit_cap": hit,
            "cap_share": sum(hit) / len(hit) if hit else float("nan")}


def model_outputs(rows: list[dict], answers: list[str], generator: str) -> list[dict]:
    """alpaca_eval's model_outputs.json rows: instruction, output, generator, dataset."""
    return [{"instruction": r["instruction"], "output": a, "generator": generator,
             "dataset": r.get("dataset", "neftlib")} for r, a in zip(rows, answers)]


def eval_prompts(rows: list[dict], fmt: str, tokenizer) -> list[str]:
    """Prompts for evaluation rows; AlpacaEval puts any input inside the instruction."""
    return [format_prompt({"instruction": r["instruction"], "input": r.get("input", "")}, fmt, tokenizer)
            for r in rows]
