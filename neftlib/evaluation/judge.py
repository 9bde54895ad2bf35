"""Pairwise judging against reference answers, in both orders to cancel position bias."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neftlib.base.io import read_json, write_json
from neftlib.base.progress import tqdm
from neftlib.evaluation.winrate import discrete_preference

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
    return Judgments.from_cache(keys, p_first).soft()


def vote(p: float) -> float:
    """One order's discrete vote for the model: 1 when the judge prefers it, 0 when not, 0.5 for an exact tie."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


@dataclass
class Judgments:
    """Per pair: P(the model's answer is better) in each order (model first, reference first), and whether the
    judge saw the model's or the reference's answer clipped to fit its context."""

    p_model: list[tuple[float, float]]
    clipped_output: list[bool] = field(default_factory=list)
    clipped_reference: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.p_model)
        self.clipped_output = list(self.clipped_output) or [False] * n
        self.clipped_reference = list(self.clipped_reference) or [False] * n

    @classmethod
    def from_cache(cls, keys: list[tuple[str, str]], p_first: dict[str, float], **clipped) -> "Judgments":
        """Model first: P(A) is the model's; reference first: 1 - P(A)."""
        return cls([(p_first[k1], 1.0 - p_first[k2]) for k1, k2 in keys], **clipped)

    def soft(self) -> list[float]:
        """Preferences in [1, 2] from the probabilities, averaged over the two orders."""
        return [1.0 + 0.5 * (a + b) for a, b in self.p_model]

    def discrete(self) -> list[float]:
        """Preferences from one discrete vote per order, averaged over the two orders and counted as alpaca_eval's
        zero-one rule counts them: 2 (both orders prefer the model), 1 (neither), 1.5 (a draw: the orders disagree)."""
        return [discrete_preference(1.0 + 0.5 * (vote(a) + vote(b))) for a, b in self.p_model]


def context_length(model, tokenizer) -> int | None:
    """Tokens the judge model can attend to (its position table), or None when neither model nor tokenizer says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else None  # huge: transformers' "unset"


class LocalJudge:
    """A local causal LM that judges from the log-probabilities of ' A' and ' B' after the prompt.

    Answers are judged whole. Only when a pair does not fit the model's context are answers clipped (the
    longer one first) to share the room left; `judge_orders` says which ones were."""

    CLIP_MARK = " ..."

    def __init__(self, model, tokenizer, name: str, batch_size: int = 4, max_context: int | None = None):
        self.model, self.tok, self.name, self.batch_size = model.eval(), tokenizer, name, batch_size
        self.max_context = max_context or context_length(model, tokenizer)
        self.choice_ids = [tokenizer(" A", add_special_tokens=False)["input_ids"][-1],
                           tokenizer(" B", add_special_tokens=False)["input_ids"][-1]]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def fit(self, instruction: str, output: str, reference: str) -> tuple[str, str, bool, bool]:
        """The two answers as the judge sees them, and whether each was clipped to fit its context."""
        if self.max_context is None:
            return output, reference, False, False
        frame = len(self._ids(self._text(instruction, "", "")))
        room = self.max_context - frame - 2 * len(self._ids(self.CLIP_MARK)) - 2  # 2: token merges at the joins
        ids = [self._ids(output), self._ids(reference)]
        if frame + sum(map(len, ids)) + 2 <= self.max_context:
            return output, reference, False, False
        if room < 2:
            raise ValueError(f"judge {self.name}: its context of {self.max_context} tokens cannot hold the judging "
                             f"prompt of instruction {instruction[:60]!r}; use a judge model with a longer context")
        # The shorter answer keeps itself whole up to half the room; the longer one gets the rest.
        short = 0 if len(ids[0]) <= len(ids[1]) else 1
        keep = [0, 0]
        keep[short] = min(len(ids[short]), room // 2)
        keep[1 - short] = room - keep[short]
        shown, clipped = [], []
        for text, tokens, k in zip((output, reference), ids, keep):
            cut = len(tokens) > k
            shown.append(self.tok.decode(tokens[:k]) + self.CLIP_MARK if cut else text)
            clipped.append(cut)
        return shown[0], shown[1], clipped[0], clipped[1]

    def _text(self, instruction: str, a: str, b: str) -> str:
        user = JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)
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

    def judge_orders(self, instructions: list[str], outputs: list[str], references: list[str], *,
                     cache_path: Path | None = None, progress: bool = True) -> Judgments:
        """Each pair judged in both orders (cached by the exact judging text), and which answers were clipped."""
        if not len(instructions) == len(outputs) == len(references):
            raise ValueError("instructions, outputs and references must have equal length")
        fitted = [self.fit(*pair) for pair in zip(instructions, outputs, references)]
        cache = read_json(cache_path) if cache_path and Path(cache_path).exists() else {}
        keys, pending = plan_both_orders(instructions, [f[0] for f in fitted], [f[1] for f in fitted], self._text,
                                         self.name, cache)
        # Similar lengths share a batch: padding is most of the cost of a long judging prompt.
        jobs = sorted(((key, text) for key, (text, _, _) in pending.items()), key=lambda job: len(job[1]))
        for s in tqdm(range(0, len(jobs), self.batch_size), desc="judge", disable=not progress):
            chunk = jobs[s:s + self.batch_size]
            for (key, _), p in zip(chunk, self.prob_first_better([t for _, t in chunk])):
                cache[key] = p
            if cache_path:  # saved as it goes: an interrupted run resumes without judging twice
                write_json(cache_path, cache)
        return Judgments.from_cache(keys, cache, clipped_output=[f[2] for f in fitted],
                                    clipped_reference=[f[3] for f in fitted])

    def judge(self, instructions: list[str], outputs: list[str], references: list[str], *,
              cache_path: Path | None = None, progress: bool = True) -> list[float]:
        """alpaca_eval-style preferences in [1, 2] (2 = the model's output is better), averaged over both orders."""
        return self.judge_orders(instructions, outputs, references, cache_path=cache_path, progress=progress).soft()


def annotations(rows: list[dict], outputs: list[dict], judged: Judgments, judge_name: str) -> list[dict]:
    """alpaca_eval annotation rows (output_1 the reference, output_2 the model). `preference` is the discrete
    one alpaca_eval counts (votes per order, averaged); `preference_soft` the probabilities averaged; then the
    model's probability in each order and whether the judge saw either answer clipped."""
    return [{"instruction": r["instruction"], "output_1": r["output"], "generator_1": r.get("generator", "reference"),
             "output_2": o["output"], "generator_2": o["generator"], "annotator": judge_name, "preference": p,
             "preference_soft": soft, "p_model_shown_first": pm[0], "p_model_shown_second": pm[1],
             "clipped_output": co, "clipped_reference": cr}
            for r, o, p, soft, pm, co, cr in zip(rows, outputs, judged.discrete(), judged.soft(), judged.p_model,
                                                 judged.clipped_output, judged.clipped_reference)]
