"""NEFTune noise per packed example under TRL's SFTTrainer (packing, padding-free batches): neftlib's
NEFTuneCallback against transformers' built-in `neftune_noise_alpha`.

Eight instructions of different lengths are packed by SFTTrainer into one padding-free row (TRL's
default `bfd` packing). The row goes through the model in train mode with each noise hook attached
exactly as a training run attaches it, and the squared norm of the noise on each packed example is
averaged over draws. NEFTune's expectation is alpha^2 / 3 per example whatever its length; the built-in
scales by the whole row's length T, giving alpha^2 / 3 * L / T. Writes results/trl_packing_noise.json.

    python bench/trl_packing_noise.py [--draws 200] [--alpha 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from neftlib.data.prepare import format_prompt  # noqa: E402
from neftlib.base.io import read_json  # noqa: E402
from neftlib.training.models import load_base, load_tokenizer  # noqa: E402
from neftlib.base.paths import MINI_TRAIN  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "trl_packing_noise.json"
EXAMPLES = 8


def examples(n: int = EXAMPLES) -> list[dict[str, str]]:
    """n rows of the embedded mini set with different lengths, as TRL's prompt/completion pairs."""
    rows, seen = [], set()
    for row in read_json(MINI_TRAIN):
        size = len(row["instruction"]) + len(row["input"]) + len(row["output"])
        if size // 40 not in seen:  # lengths spread out, not eight alike
            seen.add(size // 40)
            rows.append({"prompt": format_prompt(row, "alpaca") + "\n", "completion": row["output"]})
        if len(rows) == n:
            return rows
    raise ValueError(f"{MINI_TRAIN} has fewer than {n} rows of different lengths")


def sft_trainer(out_dir: str, callbacks: tuple = (), neftune_noise_alpha: float | None = None, max_steps: int = 1,
                **config: Any):
    """SFTTrainer on the tiny model with packing (TRL's default bfd strategy: padding-free rows), one row per step;
    `config`: other SFTConfig settings (packing_strategy, padding_free, pad_to_multiple_of, ...)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = dict(packing=True, max_length=4096, per_device_train_batch_size=1, save_strategy="no")
    args = SFTConfig(output_dir=out_dir, max_steps=max_steps, learning_rate=1e-4, neftune_noise_alpha=neftune_noise_alpha,
                     report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **{**settings, **config})
    return SFTTrainer(model=load_base("tiny-random"), args=args, train_dataset=Dataset.from_list(examples()),
                      processing_class=load_tokenizer("tiny-random"), callbacks=list(callbacks))


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each packed example in a padding-free row: positions restart at 0."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [position_ids.shape[1]]
    return list(zip(starts[:-1], starts[1:]))


class _Stop(Exception):
    """Raised once the noised embeddings are seen: the rest of the forward is not needed."""


def segment_sq_norms(model, batch: dict[str, Any], draws: int) -> torch.Tensor:
    """(draws, segments) squared norms of the noise on each packed example of the batch's first row, from
    train-mode forwards.

    Call after the noise hook is attached: this hook on the embedding runs after it and sees its output."""
    emb = model.get_input_embeddings()
    clean = emb.weight[batch["input_ids"]].detach().double()
    # A row without position_ids (TRL's `wrapped` packing) has no boundaries: it is one segment.
    spans = segments(batch["position_ids"]) if "position_ids" in batch else [(0, batch["input_ids"].shape[1])]
    rows: list[torch.Tensor] = []

    def look(module, inputs, output):
        noise = output.detach().double() - clean
        rows.append(torch.stack([noise[0, s:e].square().sum() for s, e in spans]))
        raise _Stop

    handle = emb.register_forward_hook(look)
    model.train()
    try:
        with torch.no_grad():
            for _ in range(draws):
                try:
                    model(**batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.stack(rows)


def measure(draws: int = 200, alpha: float = 5.0) -> dict[str, Any]:
    """Mean squared noise norm per packed example under neftlib and under the built-in, and the shortfall."""
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    from neftlib.noise import NEFTuneCallback

    with tempfile.TemporaryDirectory() as tmp:
        trainer = sft_trainer(tmp)
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model
        # neftlib: the callback's own on_train_begin, as Trainer.train() calls it.
        callback = NEFTuneCallback(alpha)
        callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=model)
        ours = segment_sq_norms(model, batch, draws)
        callback.close()
        # transformers: the function Trainer.train() calls for neftune_noise_alpha (noise from torch's global RNG).
        torch.manual_seed(0)
        handle = activate_neftune(model, alpha)
        builtin = segment_sq_norms(model, batch, draws)
        deactivate_neftune(model, handle)
    lengths = [e - s for s, e in segments(batch["position_ids"])]
    total, d = sum(lengths), model.get_input_embeddings().embedding_dim
    rows = []
    for i, length in enumerate(lengths):
        a, b = ours[:, i].mean().item(), builtin[:, i].mean().item()
        rows.append({"tokens": length, "neftlib_sq_norm": a, "builtin_sq_norm": b,
                     "shortfall_norm_factor": (a / b) ** 0.5, "predicted_sqrt_T_over_L": (total / length) ** 0.5})
    factors = [r["shortfall_norm_factor"] for r in rows]
    return {"alpha": alpha, "expected_sq_norm": alpha**2 / 3, "hidden_size": d, "row_tokens": total,
            "draws": draws, "segments": rows, "shortfall_norm_factor_mean": sum(factors) / len(factors),
            "shortfall_norm_factor_range": [min(factors), max(factors)],
            "what": "noise norm neftlib / built-in per packed example (TRL SFTTrainer, packing=True, bfd, "
                    "padding-free); the built-in's noise is this many times too weak"}


def main() -> None:
    from record import publish  # bench/record.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=5.0)
    args = parser.parse_args()
    publish(OUT, measure(args.draws, args.alpha))


if __name__ == "__main__":
    main()
