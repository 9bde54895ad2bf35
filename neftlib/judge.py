"""Pairwise judging against reference answers, in both orders to cancel position bias."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from neftlib.io import read_json, write_json
from neftlib.progress import tqdm

# The project's own judging prompt.
JUDGE_PROMPT = (
    "Two assistants answered the same instruction. Judge which answer follows the instruction better: "
    "more helpful, correct, relevant and clear. Ignore which one comes first.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Answer A:\n{a}\n\n"
    "Answer B:\n{b}\n\n"
    "Reply with one letter, A or B: which answer is better?"
)
ANSWER_PREFIX = "The better answer is"
ORDERS = ("model first", "reference first")


def judge_key(judge_name: str, text: str) -> str:
    """Cache key of one judgment: the judge and the exact text it is shown."""
    return hashlib.sha256(f"{judge_name}\0{text}".encode()).hexdigest()


def plan_both_orders(instructions: list[str], outputs: list[str], references: list[str], text_of, judge_name: str,
                     cache: dict) -> tuple[list[tuple[str, str]], dict[str, tuple[str, int, str]]]:
    """Per pair, the keys of its two judgments (model first, reference first), and every judgment not yet
    in `cache` as key -> (text, pair index, order)."""
    if not len(instructions) == len(outputs) == len(references):
        raise ValueError("instructions, outputs and references must have equal length")
    keys, jobs = [], {}
    for i, (ins, out, ref) in enumerate(zip(instructions, outputs, references)):
        pair = []
        for order, (a, b) in zip(ORDERS, ((out, ref), (ref, out))):
            text = text_of(ins, a, b)
            key = judge_key(judge_name, text)
            pair.append(key)
            if key not in cache:
                jobs.setdefault(key, (text, i, order))
        keys.append((pair[0], pair[1]))
    return keys, jobs


def preferences_from(keys: list[tuple[str, str]], p_first: dict[str, float]) -> list[float]:
    """alpaca_eval preferences in [1, 2]: model first P(A) is the model's, reference first 1 - P(A)."""
    return [1.0 + 0.5 * (p_first[k1] + (1.0 - p_first[k2])) for k1, k2 in keys]


class LocalJudge:
    """A local causal LM that judges from the log-probabilities of ' A' and ' B' after the prompt."""

    def __init__(self, model, tokenizer, name: str, max_answer_tokens: int = 256, batch_size: int = 4):
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        self.max_answer_tokens, self.batch_size = max_answer_tokens, batch_size
        self.choice_ids = [tokenizer(" A", add_special_tokens=False)["input_ids"][-1],
                           tokenizer(" B", add_special_tokens=False)["input_ids"][-1]]

    def _clip(self, text: str) -> str:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_answer_tokens else self.tok.decode(ids[: self.max_answer_tokens]) + " ..."

    def _text(self, instruction: str, a: str, b: str) -> str:
        user = JUDGE_PROMPT.format(instruction=instruction, a=self._clip(a), b=self._clip(b))
        if self.tok.chat_template:
            prompt = self.tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True)
        else:
            prompt = user + "\n\n"
        return prompt + ANSWER_PREFIX

    @torch.no_grad()
    def prob_first_better(self, texts: list[str]) -> list[float]:
        """P(A) / (P(A) + P(B)) at the next token, per judging text."""
        side, self.tok.padding_side = self.tok.padding_side, "left"
        try:
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            device = next(self.model.parameters()).device
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits[:, -1].float()
        finally:
            self.tok.padding_side = side
        pair = torch.log_softmax(logits, dim=-1)[:, self.choice_ids]
        return torch.softmax(pair, dim=-1)[:, 0].tolist()

    def judge(self, instructions: list[str], outputs: list[str], references: list[str], *,
              cache_path: Path | None = None, progress: bool = True) -> list[float]:
        """alpaca_eval-style preferences in [1, 2] (2 = the model's output is better), averaged over both orders."""
        cache = read_json(cache_path) if cache_path and Path(cache_path).exists() else {}
        keys, pending = plan_both_orders(instructions, outputs, references, self._text, self.name, cache)
        # Similar lengths share a batch: padding is most of the cost of a long judging prompt.
        jobs = sorted(((key, text) for key, (text, _, _) in pending.items()), key=lambda job: len(job[1]))
        for s in tqdm(range(0, len(jobs), self.batch_size), desc="judge", disable=not progress):
            chunk = jobs[s:s + self.batch_size]
            for (key, _), p in zip(chunk, self.prob_first_better([t for _, t in chunk])):
                cache[key] = p
            if cache_path:  # saved as it goes: an interrupted run resumes without judging twice
                write_json(cache_path, cache)
        return preferences_from(keys, cache)


def annotations(rows: list[dict], outputs: list[dict], preferences: list[float], judge_name: str) -> list[dict]:
    """alpaca_eval annotation rows: output_1 is the reference, output_2 the model."""
    return [{"instruction": r["instruction"], "output_1": r["output"], "generator_1": r.get("generator", "reference"),
             "output_2": o["output"], "generator_2": o["generator"], "annotator": judge_name, "preference": p}
            for r, o, p in zip(rows, outputs, preferences)]
