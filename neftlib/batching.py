"""Batches with little padding: seeded length grouping, right padding, masks from lengths."""
from __future__ import annotations

import random

import torch

from neftlib.data import IGNORE_INDEX


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Index batches for one epoch, the same for the same (seed, epoch) so a resumed run sees the same data."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        # Sort within shuffled windows of 50 batches: similar lengths share a batch, order stays random.
        window = batch_size * 50
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda j: -lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; the attention mask comes from lengths (pad may equal EOS)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def mean_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over response tokens, in eval mode (so never with noise)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for s in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[s:s + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum",
            )
            total += nll.item()
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)
