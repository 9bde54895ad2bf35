"""What notebooks 02 and 03 show: the noise on one real batch beside the embeddings it is added to, the
losses each arm reached, and the memory of a 4-bit base against full weights."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from safetensors import safe_open

from neftlib.base.config import RunConfig, qlora_config, stage_config
from neftlib.base.io import read_json
from neftlib.base.run import load_prepared, stage_dir, trained_arms
from neftlib.data.batching import collate
from neftlib.noise import add_neftune_noise, noise_seed
from neftlib.training.memory import GiB, estimate_memory
from neftlib.training import models
from neftlib.training.models import DTYPES, free_memory, load_base, model_config, model_path, not_available

LOSSES = {"final_loss": "last logged training loss (with the arm's noise)",
          "train_nonoise_loss": "training loss without noise", "heldout_loss": "held-out loss",
          "other_loss": "loss on another set"}


def batch_embeddings(cfg: RunConfig, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, attention mask) of the first training batch, from the untrained base model, in fp32."""
    examples = load_prepared(cfg, "train")[: cfg.batch_size]
    if not examples:
        raise ValueError(f"{stage_dir(cfg, 'data')} holds no training example: run 01 first")
    batch = collate(examples, pad_id)
    embedding = input_embeddings(cfg.model, precision=cfg.precision)
    with torch.no_grad():
        embeds = embedding(batch["input_ids"]).float()
    return embeds, batch["attention_mask"]


def input_embeddings(name: str, *, precision: str = "fp32") -> torch.nn.Module:
    """The model's input embedding layer alone, with its pretrained weights.

    The model is built with its parameters on the meta device (no memory) and only the embedding matrix is
    read from the checkpoint: embedding a batch of LLaMA-2-7B needs 0.25 GB of RAM this way, not the 13.5 GB
    of the whole model in fp16, more than a free Colab has. Buffers stay real, so a layer that scales its
    output (Gemma's sqrt(d)) computes what the full model's would.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(model_config(name))
    layer = skeleton.get_input_embeddings()
    prefix = next(n for n, m in skeleton.named_modules() if m is layer)
    weight = checkpoint_tensor(name, f"{prefix}.weight", tuple(layer.weight.shape))
    layer.weight = torch.nn.Parameter(weight.to(DTYPES[precision]), requires_grad=False)
    return layer.eval()


# Where transformers keeps a model's weights, in the order it looks for them: an index names each tensor's shard.
WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def checkpoint_tensor(name: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor of a model's checkpoint (a local folder or a hub id), read without loading the others:
    safetensors reads just its bytes, and a .bin checkpoint is memory-mapped. `key` is the tensor's name in
    the model; a checkpoint that prefixes it differently (e.g. a multimodal model's text part) is matched by
    its ending and its shape."""
    for index_name, single in WEIGHT_FILES:
        index = _weight_file(name, index_name)
        if index is not None:
            weight_map = read_json(index)["weight_map"]
            found = _tensor_key(weight_map, key, shape=None)
            shard = _weight_file(name, weight_map[found]) if found else None
        else:
            shard = _weight_file(name, single)
        if shard is not None:
            return _read_tensor(shard, key, shape)
    raise FileNotFoundError(f"model {name!r}: no safetensors or PyTorch checkpoint holds {key!r} (looked for "
                            f"{', '.join(f for pair in WEIGHT_FILES for f in pair)}; offline, a hub model's files "
                            "must be in the hub cache)")


def _weight_file(name: str, filename: str) -> Path | None:
    """A file of the model's checkpoint on disk: in its folder, or from the hub cache (downloaded when online)."""
    folder = model_path(name)
    if isinstance(folder, Path):
        return folder / filename if (folder / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        # the run's pinned revision, as every other load of its model (models.pin_revision)
        return Path(hf_hub_download(folder, filename, revision=models.REVISIONS.get(name)))
    except EntryNotFoundError:  # includes "not in the cache" when offline
        return None
    except OSError as err:
        raise not_available(name, err) from None


def _read_tensor(path: Path, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor `key` (or the one matching it) of one checkpoint file, the file's other tensors left unread."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(_tensor_key(f.keys(), key, shape, lambda k: tuple(f.get_slice(k).get_shape())))
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return state[_tensor_key(state, key, shape, lambda k: tuple(state[k].shape))].clone()


def _tensor_key(keys: Iterable[str], key: str, shape: tuple[int, ...] | None,
                shape_of: Callable[[str], tuple[int, ...]] | None = None) -> str | None:
    """`key` itself, else the one key that ends like it (the layer's name and `weight`) with the right shape."""
    keys = list(keys)
    if key in keys:
        return key
    ending = ".".join(key.split(".")[-2:])
    found = [k for k in keys if k.endswith(ending) and (shape is None or shape_of(k) == shape)]
    if len(found) != 1:
        if shape is None:
            return None
        raise KeyError(f"the checkpoint has no single tensor for {key!r} of shape {shape} (candidates: {found})")
    return found[0]


def noise_on_batch(cfg: RunConfig, pad_id: int) -> pd.DataFrame:
    """Per example of one real batch: its length L, the embeddings' norm, and the norm of the noise NEFTune
    (uniform) and the Gaussian control add at the run's alpha (seeded with the run's noise seed)."""
    embeds, mask = batch_embeddings(cfg, pad_id)
    generator = torch.Generator().manual_seed(noise_seed(cfg.seed))
    d = embeds.shape[-1]
    noise = {dist: add_neftune_noise(embeds, mask, cfg.alpha, distribution=dist, generator=generator) - embeds
             for dist in ("uniform", "gaussian")}
    rows = []
    for i in range(embeds.shape[0]):
        n = int(mask[i].sum())
        emb = float(embeds[i, :n].norm())
        uniform, gauss = float(noise["uniform"][i, :n].norm()), float(noise["gaussian"][i, :n].norm())
        rows.append({"example": i, "tokens L": n, "embedding size d": d,
                     "largest noise entry alpha/sqrt(L d)": cfg.alpha / math.sqrt(n * d),
                     "embedding norm": emb, "NEFTune noise norm": uniform, "NEFTune noise / embedding": uniform / emb,
                     "Gaussian noise norm": gauss, "Gaussian noise / embedding": gauss / emb})
    return pd.DataFrame(rows).set_index("example")


def alpha_in_numbers(table: pd.DataFrame, alpha: float) -> str:
    """What alpha means for these examples, in a few computed sentences of Markdown."""
    short, long = table["tokens L"].min(), table["tokens L"].max()
    return "\n".join([
        f"- **alpha = {alpha:g}.** Each entry of an example's L x d embeddings moves by at most alpha/sqrt(L d): "
        f"{table['largest noise entry alpha/sqrt(L d)'].max():.2g} for the shortest example here (L = {short}), "
        f"{table['largest noise entry alpha/sqrt(L d)'].min():.2g} for the longest (L = {long}).",
        f"- **The whole noise** has norm about alpha/sqrt(3) = {alpha / math.sqrt(3):.2f} whatever the length "
        f"(measured: {table['NEFTune noise norm'].min():.2f} to {table['NEFTune noise norm'].max():.2f}), against "
        f"embeddings of norm {table['embedding norm'].min():.2f} to {table['embedding norm'].max():.2f}: in the "
        f"median example the noise is {table['NEFTune noise / embedding'].median():.0%} of the embeddings' norm. "
        "Longer examples get less noise per token, so the same alpha disturbs each word of a long answer less.",
        f"- **The Gaussian control** at the same alpha has norm about alpha = {alpha:g} "
        f"(measured median {table['Gaussian noise norm'].median():.2f}): sqrt(3) times the uniform noise.",
    ])


def loss_table(cfg: RunConfig, stage: str = "train") -> pd.DataFrame:
    """Every finished arm of a stage with its noise and the losses training measured (summary.csv)."""
    path = stage_dir(cfg, stage) / "summary.csv"
    if not path.exists() or not path.read_text().strip():  # a stage without arms writes an empty table
        return pd.DataFrame()
    table = pd.read_csv(path)
    keep = ["arm", "alpha", "distribution", "steps", *[c for c in LOSSES if c in table]]
    return table[keep].rename(columns=LOSSES).set_index("arm")


def training_summary(cfg: RunConfig, stage: str = "train") -> str:
    """What this stage's training shows: each noised arm's losses against the noise-free arm, in Markdown."""
    table = loss_table(cfg, stage)
    if table.empty:
        return f"No arm of the {stage} stage has finished: nothing to read yet."
    base = table[table["alpha"] == 0]
    if base.empty:
        return "No arm without noise (alpha 0) in this stage: no baseline to compare with."
    ref = base.iloc[0]
    lines = [f"Against the noise-free arm `{base.index[0]}` (one training seed each):"]
    for arm, row in table[table["alpha"] > 0].iterrows():
        parts = [f"{name} {row[name]:.3f} ({row[name] - ref[name]:+.3f})"
                 for name in (LOSSES["train_nonoise_loss"], LOSSES["heldout_loss"], LOSSES["other_loss"])
                 if name in row and pd.notna(row[name])]
        lines.append(f"- **{arm}** ({row['distribution']} noise, alpha {row['alpha']:g}): " + "; ".join(parts) + ".")
    lines.append("The paper (Figure 4) expects the training loss without noise to be higher with noise (less "
                 "memorising) and the loss on other data lower. Whether these differences exceed the noise of "
                 "the measurement is for notebooks 05 and 06: they put intervals on them.")
    return "\n".join(lines)


def memory_table(cfg: RunConfig) -> pd.DataFrame:
    """Estimated peak training memory (GiB) by part, a full fine-tune against QLoRA, for this run's model and
    batch (neftlib.training.memory: from the model's shape, nothing loaded)."""
    full = estimate_memory(dataclasses.replace(cfg, method="full"))
    q = qlora_config(cfg)
    qlora = estimate_memory(q)
    return pd.DataFrame({"full fine-tune (fp32 weights, AdamW)": full.as_gib(),
                         f"QLoRA (4-bit NF4 base, LoRA r {q.lora_r})": qlora.as_gib()}).rename_axis("GiB")


def weights_footprint(cfg: RunConfig) -> dict[str, float]:
    """The base model's weights in GiB: fp32 (from its shape) against 4-bit NF4, estimated and measured after
    loading it in 4-bit as QLoRA does."""
    q = qlora_config(cfg)
    model = load_base(cfg.model, precision=q.precision, load_in_4bit=True)
    measured = model.get_memory_footprint() / GiB
    del model
    free_memory()
    return {"fp32 weights (estimate)": estimate_memory(dataclasses.replace(cfg, method="full")).weights / GiB,
            "4-bit weights (estimate)": estimate_memory(q).weights / GiB, "4-bit weights (measured)": measured}


def qlora_summary(cfg: RunConfig, weights: dict[str, float]) -> str:
    """What the QLoRA stage shows: the memory it saves and what its arms reached, in Markdown."""
    share = weights["4-bit weights (measured)"] / weights["fp32 weights (estimate)"]
    lines = [f"- **Memory:** in 4-bit the base model's weights take {weights['4-bit weights (measured)']:.3g} GiB, "
             f"{share:.0%} of the {weights['fp32 weights (estimate)']:.3g} GiB of fp32 weights (what is not a "
             "linear layer, such as the embeddings, stays in full precision, so small models save less)."]
    arms = [a for s, a, _ in trained_arms(cfg) if s == "qlora"]
    if not arms:
        lines.append(f"- **Training:** this profile trains no QLoRA arm ({', '.join(stage_config(cfg, 'qlora')[1]) or 'none'}).")
        return "\n".join(lines)
    lines.append("- **Training:** " + training_summary(cfg, "qlora").replace("\n", "\n  "))
    summary = read_json(stage_dir(cfg, "qlora") / arms[0] / "summary.json")
    lines.append(f"- **Trained parameters:** {summary['trainable_params']:,} of {summary['total_params']:,} "
                 f"({summary['trainable_params'] / summary['total_params']:.2%}), the LoRA adapters only.")
    return "\n".join(lines)
