"""The one typed run configuration: its fields, their checks, the arms it trains and the QLoRA stage's settings.

A RunConfig is made from a profile or a recipe file by neftlib.base.recipes.load_config."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neftlib.base.io import write_json
from neftlib.base.profiles import LENGTH_ARMS, QLORA

METHODS = ("full", "lora", "qlora")
DISTRIBUTIONS = ("uniform", "gaussian")
SCALINGS = ("per_example", "padded")
PRECISIONS = ("fp32", "bf16", "fp16")
PROMPT_FORMATS = ("alpaca", "vicuna", "chat")
JUDGES = ("local", "openai", "none")
OFFICIAL_JUDGES = ("", "alpaca_eval_gpt4")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Our field names, which train_columns may map a dataset's own column names onto (neftlib.data.sources).
MAPPABLE = ("instruction", "input", "output", "conversations")

# The Open LLM Leaderboard v1 settings (its archived "About" page, Hugging Face docs,
# leaderboards/open_llm_leaderboard/archive): ARC-Challenge 25-shot, HellaSwag 10-shot, MMLU 5-shot,
# TruthfulQA 0-shot; the four tasks of the NEFTune paper's OpenLLM table.
OPENLLM_V1: tuple[tuple[str, int], ...] = (("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0))
TASK_SETS = {"openllm-v1": OPENLLM_V1}


def parse_tasks(spec: str) -> tuple[tuple[str, int], ...]:
    """`openllm_tasks` as (task, num_fewshot) pairs: '' (skip), a set name ('openllm-v1'), or
    'task:shots,task:shots'. A task may be a path to a local lm-eval YAML whose file name is its task name."""
    spec = spec.strip()
    if not spec:
        return ()
    if spec in TASK_SETS:
        return TASK_SETS[spec]
    pairs = []
    for item in spec.split(","):
        task, sep, shots = item.strip().rpartition(":")
        if not sep or not task or not shots.strip().isdigit():
            raise ValueError(f"openllm_tasks: {item.strip()!r} is not 'task:shots' "
                             f"(e.g. 'arc_challenge:25'); or use one of the sets {', '.join(TASK_SETS)}")
        pairs.append((task.strip(), int(shots)))
    return tuple(pairs)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; written to results/<run>/config.json."""

    profile: str = "smoke"  # name of the profile this config came from
    run: str = ""  # results/<run>/ folder; empty means the profile name
    seed: int = 0  # seeds data order, init of LoRA, noise (mixed with rank) and eval subsets
    # --- model ---
    model: str = "tiny-random"  # "tiny-random", "smollm2-135m-instruct", "gemma-3-270m", a local folder or a hub id
    model_revision: str = ""  # a hub model's branch, tag or commit, pinned for every load in the run; empty: its default branch
    method: str = "full"  # "full" fine-tune (the paper), "lora", or "qlora" (4-bit NF4 base + LoRA)
    lora_r: int = 16  # LoRA rank (lora / qlora)
    lora_alpha: int = 32  # LoRA scaling numerator
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_targets: tuple[str, ...] = ALL_LINEAR  # modules that get LoRA adapters (all linear layers, as QLoRA)
    precision: str = "fp32"  # compute dtype (autocast); trained weights stay fp32. bf16 on recent GPUs, as the paper
    gradient_checkpointing: bool = False  # trade compute for memory (7B)
    # --- data ---
    train_data: str = "mini"  # "mini" (data/), "alpaca", "evol-instruct", "open-platypus", "sharegpt", "hf:ORG/NAME" (any hub dataset; NEFTLIB_DATA_DIR's copy first, else the hub), "auto" (local alpaca else mini), or a file
    train_data_config: str = ""  # a hub dataset's configuration (subset) name; empty: its default (a local copy in NEFTLIB_DATA_DIR is read as it is)
    train_data_split: str = "train"  # the hub dataset's split read for training, e.g. "train" or "train[:5000]"
    train_data_revision: str = ""  # the hub dataset's branch, tag or commit; empty: its default branch
    train_columns: dict[str, str] = field(default_factory=dict)  # our field -> the data's column when names differ, e.g. {"instruction": "question", "output": "answer"}; fields: instruction, input, output, conversations
    train_limit: int | None = None  # rows kept after the seeded shuffle; None keeps all
    drop_bad_rows: bool = False  # drop (and count) malformed rows instead of stopping at the first
    heldout_limit: int = 32  # rows held out of the training set for the held-out loss (05)
    prompt_format: str = "alpaca"  # "alpaca" (paper, all sets but ShareGPT), "vicuna" (ShareGPT), "chat" (model's template)
    max_length: int = 512  # tokens per example after formatting (the paper: 512)
    eval_data: str = "auto"  # "mini" (data/mini_eval.json), "alpaca_eval" (805 prompts with Text-Davinci-003's answers: NEFTLIB_DATA_DIR, else the hub's tatsu-lab/alpaca_eval), "auto" (local alpaca_eval else mini), or a file
    eval_limit: int | None = None  # seeded subset of the evaluation prompts; None = all
    # --- optimisation ---
    epochs: float = 1.0  # passes over the training set (the paper: 3)
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 4  # examples per micro-batch per process
    effective_batch: int | None = None  # examples per optimizer step over all processes (paper: 128); grad_accum follows from it
    grad_accum: int = 1  # micro-batches per optimizer step and process, when effective_batch is not set
    learning_rate: float = 5e-5  # peak LR (paper code: 5e-5 for 7B)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # linear warmup share of steps, then cosine decay
    max_grad_norm: float = 1.0  # gradient clipping
    group_by_length: bool = True  # batch similar lengths together to cut padding
    padding_free: bool = False  # concatenate a batch's examples in one row (position_ids restart per example, no pads)
    optim: str = "adamw_torch"  # transformers' optimizer name (TrainingArguments.optim), e.g. "paged_adamw_8bit" for QLoRA
    logging_steps: int = 1  # optimizer steps per row of log.csv (one device sync per row on a GPU)
    report_to: list[str] = field(default_factory=lambda: ["none"])  # where Trainer also logs, as TrainingArguments takes it: [none], [tensorboard], [tensorboard, wandb]... (offline default: none)
    deterministic: bool | None = None  # deterministic kernels while training; None: on for CPU (free), off on GPU (slower there)
    # --- NEFTune ---
    alpha: float = 5.0  # noise alpha of the NEFTune arm (paper: 5 for 7B, 15 for 70B)
    noise_scaling: str = "per_example"  # "per_example" (paper code) or "padded" (transformers)
    arms: tuple[str, ...] = ("baseline", "neftune", "gaussian")  # arms trained by 02 (03 uses qlora_arms); sweep arms: profiles.sweep_arms()
    qlora_arms: tuple[str, ...] = ("baseline", "neftune")  # arms trained by 03
    qlora: dict[str, Any] = field(default_factory=dict)  # what 03's QLoRA stage changes in these settings (method, LoRA, LR...); filled from the profile (neftlib/base/profiles.py QLORA)
    # --- bookkeeping ---
    save_every: int = 50  # optimizer steps between atomic checkpoints
    loss_subset: int = 32  # training rows whose noise-free loss is measured after training
    push_to_hub: bool = False  # after evaluation, push each trained arm (model or LoRA adapter, tokenizer, model card) to a private hub repo; needs a hub token
    hub_repo: str = ""  # push_to_hub's repo names: "<hub_repo>-<stage>-<arm>", e.g. "me/smollm2-alpaca"; empty: "neftlib-<run>-<stage>-<arm>" under the token's account
    # --- generation and judging ---
    gen_max_new_tokens: int = 256  # answer length cap
    gen_batch_size: int = 16  # prompts per generate call (left-padded, sorted by length)
    repetition_penalty: float = 1.2  # the paper's decoding
    judge: str = "local"  # "local" (a transformers model, from the log-probs of its two choices), "openai" (NEFTLIB_JUDGE_* endpoint, e.g. GPT-4) or "none" (answers only: no win rate)
    judge_model: str = ""  # judge model; empty means the run's base model (local) or NEFTLIB_JUDGE_MODEL (openai)
    official_judge: str = ""  # "" (off: never paid for unasked) or "alpaca_eval_gpt4": 04 also hands every arm to alpaca_eval's GPT-4 judge, as the paper (paid; needs alpaca-eval and OPENAI_API_KEY or NEFTLIB_JUDGE_API_KEY; arms judged before are read back, never paid twice)
    agreement_pairs: int = 0  # published GPT-4-judged pairs per model on which the judge's agreement is measured (0 = skip)
    length_arms: tuple[str, ...] = ()  # the paper's Table 5: arms of the baseline model at generation time, no training: "prompt-long", "prompt-comprehensive", "prompt-long-comprehensive" (its meta-prompt after the instruction), "min-new-tokens" (EOS blocked until 250 of 1,024 tokens, scaled to gen_max_new_tokens); see neftlib/evaluation/length_arms.py
    overlap_limit: int = 16  # training prompts answered for ROUGE-L / BLEU (05)
    diversity_cutoff: int = 50  # whitespace tokens for the repetition / diversity table (paper: 50 for Alpaca)
    openllm_tasks: str = ""  # lm-eval tasks scored per arm in 04: "" skips, "openllm-v1" (ARC 25-shot, HellaSwag 10, MMLU 5, TruthfulQA 0), or "task:shots,..."
    openllm_limit: int | None = None  # documents per lm-eval task (None = all); a quick look at a big model
    openllm_batch_size: int = 4  # sequences per lm-eval forward: few-shot contexts run to the model's whole context (4,096 tokens for LLaMA-2), so far fewer than gen_batch_size fit

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # one integration by name, as TrainingArguments also takes it
            object.__setattr__(self, "report_to", [self.report_to])
        if not isinstance(self.report_to, list) or not all(isinstance(r, str) and r for r in self.report_to):
            raise ValueError(f"report_to must be a list of integration names, e.g. [tensorboard, wandb], "
                             f"got {self.report_to!r}")
        if self.model_revision and "/" not in self.model:
            raise ValueError(f"model_revision={self.model_revision!r} pins a hub model (ORG/NAME); "
                             f"{self.model!r} is packaged with neftlib and has no revisions")
        hub_data = {n: getattr(self, n) for n in ("train_data_config", "train_data_revision") if getattr(self, n)}
        if hub_data and self.train_data in ("mini", "auto"):
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in hub_data.items())} choose what is read from a "
                             f"hub dataset, but train_data={self.train_data!r} is local: name the dataset, "
                             "e.g. train_data=hf:ORG/NAME")
        if not self.train_data_split:
            raise ValueError("train_data_split must name a split of the hub dataset, e.g. 'train'")
        _check_choice("method", self.method, METHODS)
        _check_choice("noise_scaling", self.noise_scaling, SCALINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("prompt_format", self.prompt_format, PROMPT_FORMATS)
        _check_choice("judge", self.judge, JUDGES)
        _check_choice("official_judge", self.official_judge, OFFICIAL_JUDGES)
        parse_tasks(self.openllm_tasks)  # a malformed task list fails here, not after training
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0 (the paper uses 5 to 15), got {self.alpha!r}")
        if self.effective_batch is not None and self.grad_accum != 1:
            raise ValueError(f"give either effective_batch ({self.effective_batch}) or grad_accum ({self.grad_accum}), "
                             "not both: with effective_batch, grad_accum follows from batch_size and the processes")
        if self.effective_batch is not None and (not isinstance(self.effective_batch, int) or self.effective_batch < 1):
            raise ValueError(f"effective_batch must be a positive integer or None, got {self.effective_batch!r}")
        for name in ("batch_size", "grad_accum", "max_length", "save_every", "gen_max_new_tokens", "gen_batch_size",
                     "logging_steps", "openllm_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_limit", "eval_limit", "max_steps"):  # None: all rows / prompts, or the epochs decide
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not isinstance(self.train_columns, dict):
            raise ValueError(f"train_columns must map field names to column names, e.g. {{'instruction': 'question'}}, "
                             f"got {self.train_columns!r}")
        bad = {k: v for k, v in self.train_columns.items() if k not in MAPPABLE or not isinstance(v, str) or not v}
        if bad:
            raise ValueError(f"train_columns={bad!r}: map any of {', '.join(MAPPABLE)} to a column name (a string)")
        for arm in (*self.arms, *self.qlora_arms):
            parse_arm(arm, self)
        if not isinstance(self.qlora, dict) or {"profile", "run", "qlora"} & set(self.qlora):
            raise ValueError(f"qlora={self.qlora!r}: a mapping of the settings the QLoRA stage changes, e.g. "
                             "{method: qlora, lora_r: 16} (not profile, run or qlora)")
        if self.qlora:
            try:
                dataclasses.replace(self, qlora={}, **self.qlora)  # a bad QLoRA setting fails now, not at 03
            except TypeError as err:
                raise ValueError(f"qlora={self.qlora!r}: {err}") from None
        if self.length_arms:
            check_length_arms(self)

    @property
    def run_name(self) -> str:
        return self.run or self.profile

    @property
    def load_in_4bit(self) -> bool:
        return self.method == "qlora"

    def grad_accum_for(self, world: int) -> int:
        """Micro-batches per optimizer step on each of `world` processes: from effective_batch when set."""
        if self.effective_batch is None:
            return self.grad_accum
        per_step = self.batch_size * world
        if self.effective_batch % per_step:
            raise ValueError(
                f"effective_batch={self.effective_batch} cannot be reached with batch_size={self.batch_size} on "
                f"{world} process(es) ({per_step} examples per micro-step): choose a batch_size and number of "
                f"processes whose product divides {self.effective_batch}")
        return self.effective_batch // per_step

    def for_arm(self, arm: str) -> "ArmConfig":
        """The training config of one arm: the same run, differing only in the noise."""
        return parse_arm(arm, self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())


@dataclass(frozen=True)
class ArmConfig:
    """The noise of one arm of the comparison."""

    name: str  # "baseline", "neftune", "gaussian", or a sweep arm such as "alpha10-seed1"
    alpha: float  # 0 for the baseline
    distribution: str = "uniform"  # "uniform" (paper) or "gaussian" (ablation)
    seed: int | None = None  # training seed (init, data order, noise) of a sweep arm; None: the run's seed


# Baseline and NEFTune differ only in alpha; the Gaussian control only in the distribution.
ARMS = {
    "baseline": lambda c: (0.0, "uniform"),
    "neftune": lambda c: (float(c.alpha), "uniform"),
    "gaussian": lambda c: (float(c.alpha), "gaussian"),
}


# A sweep arm names its noise and training seed: "alpha10-seed1" (uniform), "gauss5-seed0" (Gaussian).
# The data split and evaluation prompts stay those of the run's seed, so arms differ only in
# alpha, distribution and the training seed.
_SWEEP_ARM = re.compile(r"^(alpha|gauss)(\d+(?:\.\d+)?)-seed(\d+)$")


def parse_arm(name: str, cfg: RunConfig) -> ArmConfig:
    """The noise of an arm, from its name; a ValueError listing the valid names otherwise."""
    if name in ARMS:
        alpha, distribution = ARMS[name](cfg)
        return ArmConfig(name=name, alpha=alpha, distribution=distribution)
    match = _SWEEP_ARM.match(str(name))
    if not match:
        raise ValueError(f"arm {name!r} is not one of {', '.join(ARMS)} or a sweep arm like 'alpha10-seed1' / "
                         "'gauss5-seed0'")
    kind, alpha, seed = match.groups()
    return ArmConfig(name=name, alpha=float(alpha), distribution="uniform" if kind == "alpha" else "gaussian",
                     seed=int(seed))


def base_arm(cfg: RunConfig) -> str | None:
    """The trained arm whose model the length arms prompt: the train stage's alpha-0 arm ('baseline' first)."""
    zero = [a for a in cfg.arms if cfg.for_arm(a).alpha == 0]
    return "baseline" if "baseline" in zero else (zero[0] if zero else None)


def check_length_arms(cfg: RunConfig) -> None:
    """A clear error for an unknown length arm, or length arms without a baseline model to prompt."""
    unknown = [a for a in cfg.length_arms if a not in LENGTH_ARMS]
    if unknown:
        raise ValueError(f"length_arms {unknown} are not among {', '.join(LENGTH_ARMS)}")
    if base_arm(cfg) is None:
        raise ValueError("length_arms prompt the baseline model, but arms has no alpha-0 arm: add 'baseline' to "
                         "arms or set length_arms=()")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def with_qlora(values: dict[str, Any], profile: str) -> dict[str, Any]:
    """The QLoRA stage's settings written out: the profile's QLORA entry when none are given."""
    if values.get("qlora"):
        return values
    return {**values, "qlora": dict(QLORA.get(profile, QLORA["default"]))}


def qlora_config(cfg: RunConfig) -> RunConfig:
    """The 03 stage's config: the same run with its QLoRA settings (cfg.qlora)."""
    return dataclasses.replace(cfg, **(cfg.qlora or with_qlora({}, cfg.profile)["qlora"]))


def stage_config(cfg: RunConfig, stage: str) -> tuple[RunConfig, tuple[str, ...]]:
    """The training config and arms of a stage: 'train' (02) or 'qlora' (03)."""
    if stage == "qlora":
        q = qlora_config(cfg)
        return q, q.qlora_arms
    return cfg, cfg.arms


def config_from_json(path: Path) -> RunConfig:
    """The config an earlier run saved; a ValueError naming the file when it no longer fits RunConfig."""
    data = json.loads(Path(path).read_text())
    for key in ("lora_targets", "arms", "qlora_arms", "length_arms"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    if isinstance(data.get("report_to"), str):  # runs from before report_to took a list
        data["report_to"] = [data["report_to"]]
    try:
        return RunConfig(**with_qlora(data, data.get("profile", "")))  # runs from before `qlora` was recorded
    except TypeError as err:
        raise ValueError(f"{path} was written by another version of neftlib ({err}); "
                         "use --run NEW_NAME, or --force to move that run aside") from None
