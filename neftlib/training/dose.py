"""The noise dose: what one alpha means for a model's embeddings, measured on real batches, so models can be
compared by ||noise|| / ||embedding|| rather than by alpha."""
from __future__ import annotations

import pandas as pd
import torch

from neftlib.data.batching import collate
from neftlib.data.prepare import tokenize_rows
from neftlib.noise import noise_dose
from neftlib.training.models import load_base, load_tokenizer


@torch.no_grad()
def dose_row(model: str, rows: list[dict], alpha: float, *, prompt_format: str = "alpaca", max_length: int = 256,
             draws: int = 20, seed: int = 0) -> dict:
    """Mean ||noise|| / ||embedding|| over `draws` draws on one batch of `rows`, as the noise hook sees the
    embeddings (after any scaling the embedding module applies itself)."""
    tok = load_tokenizer(model)
    net = load_base(model)
    examples = tokenize_rows(rows, tok, prompt_format, max_length)
    batch = collate(examples, tok.pad_token_id)
    embeds = net.get_input_embeddings()(batch["input_ids"]).float()
    real = batch["attention_mask"].bool()
    gen = torch.Generator().manual_seed(seed)
    ratios = [noise_dose(embeds, batch["attention_mask"], alpha, generator=gen) for _ in range(draws)]
    return {"model": model, "alpha": alpha, "hidden": embeds.shape[-1], "examples": len(examples),
            "tokens": int(real.sum()), "embedding_norm": float(embeds[real].norm(dim=-1).mean()),
            "noise_ratio": sum(ratios) / len(ratios)}


def dose_table(models: list[str], rows: list[dict], alpha: float, **options) -> pd.DataFrame:
    """One row per model; `alpha_for_same_dose`: the alpha that gives each model the first model's ratio
    (the ratio is linear in alpha)."""
    table = pd.DataFrame([dose_row(m, rows, alpha, **options) for m in models])
    reference = table["noise_ratio"].iloc[0]
    table["alpha_for_same_dose"] = alpha * reference / table["noise_ratio"]
    table["reference_model"] = models[0]
    return table
