"""A continuous probe of answer length: how readily a trained arm would end a reference answer.

Teacher-forced on each evaluation prompt followed by its reference answer (Text-Davinci-003's), the arm's
log-probability of the end-of-sequence token right after the answer, and its mean negative log-likelihood
per answer token. A model that tends to stop later puts less probability on EOS there, which shows even
where sampled answer lengths are too noisy to tell.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from neftlib.data.batching import collate
from neftlib.data.prepare import IGNORE_INDEX, tokenize_example

# Reference answers run to ~1,500 tokens at most: the probe keeps each whole so its EOS is there to score.
PROBE_MAX_LENGTH = 2048


@torch.no_grad()
def length_probe(model, tokenizer, rows: list[dict], prompt_format: str, batch_size: int = 8) -> pd.DataFrame:
    """One row per prompt: `eos_logprob` (natural log), `answer_nll` (mean over the answer's tokens, EOS
    excluded), `answer_tokens`. A prompt whose formatted text does not fit PROBE_MAX_LENGTH gets NaN."""
    model.eval()
    device = next(model.parameters()).device
    examples, kept = [], []
    for i, row in enumerate(rows):
        example, _ = tokenize_example(row, tokenizer, prompt_format, PROBE_MAX_LENGTH)
        if example is not None and example.pop("full_length") <= PROBE_MAX_LENGTH:
            examples.append(example)
            kept.append(i)
    values = {i: (math.nan, math.nan, 0) for i in range(len(rows))}
    # Similar lengths batched together: padding would cost as much as the answers on a CPU.
    order = sorted(range(len(examples)), key=lambda k: len(examples[k]["input_ids"]))
    examples, kept = [examples[k] for k in order], [kept[k] for k in order]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = batch["labels"][:, 1:]
        scored = targets != IGNORE_INDEX
        token_lp = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for j, example in enumerate(chunk):
            positions = scored[j].nonzero().flatten()
            eos_at = int(positions[-1])  # tokenize_example ends every response with EOS
            answer = positions[:-1]
            nll = float(-token_lp[j, answer].mean()) if len(answer) else math.nan
            values[kept[start + j]] = (float(token_lp[j, eos_at]), nll, int(len(answer)))
    return pd.DataFrame([{"prompt": i, "eos_logprob": v[0], "answer_nll": v[1], "answer_tokens": v[2]}
                         for i, v in values.items()])
