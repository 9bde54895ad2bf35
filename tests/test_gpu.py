"""What only a CUDA GPU can show: noise drawn on the GPU, half-precision embeddings, bitsandbytes 4-bit layers and
QLoRA steps, batched generation, and memory handed back between arms. Skipped without a GPU; `make gpu-check`
runs them (`pytest -m gpu`) and records the outcome in bench/results/gpu_check.json."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

ALPHA = 5.0


def native_bf16() -> bool:
    """A GPU that computes in bf16 itself (Ampere and later); a T4 or V100 only emulates it, slowly."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


NEEDS_BF16 = pytest.mark.skipif(torch.cuda.is_available() and not native_bf16(),
                                reason="this GPU has no bf16 (T4, V100): bf16 runs need Ampere or later")
BF16 = pytest.param(torch.bfloat16, marks=NEEDS_BF16)


@pytest.fixture
def examples(tokenizer):
    from neftlib.data.prepare import load_instructions, tokenize_rows

    rows, _ = load_instructions("mini", limit=32)
    return tokenize_rows(rows, tokenizer, "alpaca", 64)


def test_noise_on_cuda_comes_from_a_seeded_cuda_generator():
    from neftlib.noise import add_neftune_noise, neftune
    from neftlib.training.models import load_base

    model = load_base("tiny-random").cuda().train()
    with neftune(model, ALPHA, seed=7) as handle:
        assert handle.generator.device.type == "cuda"
    embeds = torch.randn(4, 96, 512, device="cuda")
    mask = torch.ones(4, 96, device="cuda")
    mask[1, 40:] = 0  # a padded example
    draws = []
    for _ in range(2):
        gen = torch.Generator(device="cuda").manual_seed(11)
        draws.append(add_neftune_noise(embeds, mask, ALPHA, generator=gen) - embeds)
    assert torch.equal(draws[0], draws[1])  # same seed, same noise, on the GPU
    noise = draws[0]
    assert noise.device.type == "cuda" and torch.count_nonzero(noise[1, 40:]) == 0  # pads stay clean
    # Uniform[-1, 1] scaled by alpha / sqrt(L d): E||noise||^2 = alpha^2 / 3 per example, with its own L
    for i, length in enumerate((96, 40, 96, 96)):
        norm = noise[i, :length].norm().item()
        assert abs(norm - ALPHA / math.sqrt(3)) < 0.05 * ALPHA / math.sqrt(3), (i, norm)


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
def test_half_precision_embeddings_get_noise_drawn_in_fp32(dtype):
    from neftlib.noise import add_neftune_noise

    embeds = torch.randn(2, 64, 256, device="cuda").to(dtype)
    mask = torch.ones(2, 64, device="cuda")
    noised = add_neftune_noise(embeds, mask, ALPHA, generator=torch.Generator(device="cuda").manual_seed(3))
    assert noised.dtype == dtype
    # the same draw made in fp32 by hand, scaled, then cast once: exactly what neftlib added
    gen = torch.Generator(device="cuda").manual_seed(3)
    draw = torch.empty(embeds.shape, device="cuda", dtype=torch.float32).uniform_(-1.0, 1.0, generator=gen)
    expected = embeds + (draw * (ALPHA / math.sqrt(64 * 256))).to(dtype)
    # equal up to one unit in the last place of the half type (the GPU's rsqrt of the scale may round)
    torch.testing.assert_close(noised, expected, rtol=torch.finfo(dtype).eps, atol=1e-6)
    # a draw in the half type itself would have only a few hundred distinct values; fp32 has ~all distinct
    assert draw.unique().numel() > 0.99 * draw.numel()


@pytest.mark.parametrize("precision", ["fp16", pytest.param("bf16", marks=NEEDS_BF16)])
def test_4bit_nf4_layers_and_qlora_steps_on_cuda(tmp_path, examples, tokenizer, precision):
    import bitsandbytes as bnb

    from neftlib.base.config import qlora_config
    from neftlib.base.recipes import load_config
    from neftlib.training.models import load_model
    from neftlib.training.train import train

    model = load_model("tiny-random", method="qlora", precision=precision, lora_r=8, lora_targets=("q_proj", "v_proj"),
                       device="cuda:0")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.quant_type == "nf4" and m.weight.device.type == "cuda" for m in four_bit)
    assert all(m.weight.dtype == torch.uint8 for m in four_bit)
    del model

    cfg = dataclasses.replace(qlora_config(load_config("smoke", precision=precision, gradient_checkpointing=True)),
                              max_steps=3)
    summary = train(cfg, cfg.for_arm("neftune"), examples, tmp_path / precision, pad_id=tokenizer.pad_token_id,
                    progress=False)
    import pandas as pd

    log = pd.read_csv(tmp_path / precision / "log.csv")
    assert summary["steps"] == 3 and log["loss"].map(math.isfinite).all() and (log["noise_ratio"] > 0).all()


def test_batched_generation_on_cuda_matches_one_prompt_at_a_time(tokenizer):
    from neftlib.data.prepare import format_prompt
    from neftlib.evaluation.generate import generate_answers
    from neftlib.training.models import load_base

    model = load_base("tiny-random").cuda().eval()
    prompts = [format_prompt({"instruction": t, "input": ""}, "alpaca", tokenizer)
               for t in ("Name a colour.", "Write two sentences about the sea and the wind.", "Add 2 and 3.")]
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=3, progress=False)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=16, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single and next(model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NEEDS_BF16), "fp16"])
def test_memory_is_released_between_two_arms(tmp_path, examples, tokenizer, precision):
    """In every precision: bf16 / fp16 are where accelerate's wrappers made the model refer to itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from neftlib.base.recipes import load_config
    from neftlib.training.models import free_memory
    from neftlib.training.train import train

    # ~50M parameters: an arm holds about 0.8 GB (weights, gradients, AdamW states), well above any noise
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    cfg = load_config("smoke", model=str(tmp_path / "model"), precision=precision, max_steps=3, save_every=100)
    free_memory()
    # cuBLAS keeps a workspace from the first matmul on: create it before measuring where we start
    (torch.ones(256, 256, device="cuda", requires_grad=True) @ torch.ones(256, 256, device="cuda")).sum().backward()
    start = torch.cuda.memory_allocated()
    used = []
    for arm in ("baseline", "neftune"):
        torch.cuda.reset_peak_memory_stats()
        train(cfg, cfg.for_arm(arm), examples, tmp_path / arm, pad_id=tokenizer.pad_token_id, progress=False)
        # no garbage collection here: what train() left is what the next arm would find
        peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        used.append(peak - start)
        # back to within 5% of where it started, measured against what the arm used
        assert after - start <= 0.05 * (peak - start), (start, peak, after)
    assert used[0] > 500 * 2**20 and abs(used[1] - used[0]) <= 0.05 * used[0]  # the second arm did not stack
