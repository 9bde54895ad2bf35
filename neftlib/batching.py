"""Batches with little padding: seeded length grouping, right padding, masks from lengths, or padding-free rows."""
from __future__ import annotations

import random
from typing import Iterator

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


class EpochSampler(torch.utils.data.Sampler[int]):
    """Example order of `batch_order`, flattened: the same for the same (seed, epoch), so a resumed run (or
    any rank of a launch) sees exactly the data of an uninterrupted one. Trainer's DataLoader cuts it into
    batches of `batch_size` again; accelerate hands every world-th batch to each rank."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> None:
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        batches = batch_order(self.lengths, self.batch_size, self.seed, self.epoch, self.group)
        # The DataLoader cuts this order into batch_size pieces again: a short batch in the middle would
        # shift every later cut, so it goes last (sort is stable: full batches keep their order).
        batches.sort(key=lambda b: len(b) < self.batch_size)
        for batch in batches:
            yield from batch

    def batches(self) -> list[list[int]]:
        """This epoch's batches as the DataLoader will cut them."""
        order = list(self)
        return [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]


def non_pad_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Real tokens in a batch (a tensor on the batch's device: reading it is the caller's one sync)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum()
    return torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)


class PaddedCollator:
    """Trainer's data_collator: right-padded batches (see `collate`)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_id)


def flat_collator():
    """Padding-free batches: the examples of a batch concatenated in one row, position_ids restarting at 0
    for each, no pad token. transformers builds the block-diagonal attention from position_ids, and the
    NEFTune noise is scaled per segment from them."""
    from transformers import DataCollatorWithFlattening

    # The first label of every example is -100 already (a prompt token): no prediction crosses examples.
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


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
