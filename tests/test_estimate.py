"""`python -m neftlib estimate`: each stage's peak memory from the config alone, whether it fits, what to change."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neftlib.base.recipes import load_config
from neftlib.pipeline.estimate import estimate_profile, training_advice
from neftlib.training.memory import GiB, estimate_memory

PROJ = Path(__file__).resolve().parents[1]
STAGES = ["02_train", "03_qlora", "04_generation", "04_judge", "04_openllm"]


def test_cli_prints_colab_qlora_offline_and_it_fits_a_t4():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "neftlib", "estimate", "--profile", "colab-qlora",
                           "--gpu-memory", "15"], cwd=PROJ, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["profile"] == "colab-qlora" and out["gpu_memory_gib"] == 15 and list(out["stages"]) == STAGES
    train = out["stages"]["02_train"]
    assert train["method"] == "qlora" and train["arms"] == ["baseline", "neftune"] and train["fits"] is True
    parts = train["parts_gib"]
    # the forward's peak and the optimizer step's temporary never coexist: the larger of the two counts
    fixed = sum(parts[k] for k in ("weights", "gradients", "optimizer", "overhead"))
    forward = parts["activations"] + parts["logits"] + parts["autocast_cache"]
    assert parts["total"] == pytest.approx(fixed + max(forward, parts["optimizer_step"]), abs=0.01)
    # the 4-bit 7B base: about 3.4 GiB of NF4 linear layers plus fp32 embeddings and head, under 6 GiB
    assert 4 < parts["weights"] < 6
    # 03 would train the same two QLoRA arms again: the profile skips it, and the estimate says why
    assert out["stages"]["03_qlora"]["arms"] == [] and "QLoRA already" in out["stages"]["03_qlora"]["skipped"]
    # the judge is the 4-bit base, not a 13.5 GB fp16 7B
    judge = out["stages"]["04_judge"]
    assert judge["load_in_4bit"] is True and judge["total_gib"] < 6
    assert out["fits"] is True and out["peak_gib"] < 14


def test_gpu_7b_on_one_80gb_gpu_names_fsdp_and_qlora():
    out = estimate_profile("gpu-7b", gpu_memory_gib=80)
    train = out["stages"]["02_train"]
    # 16 bytes per parameter (fp32 weights and gradients, AdamW's two moments) for 6.7B parameters
    assert train["fits"] is False and train["total_gib"] > 100
    changes = {c["change"].split(" (")[0]: c for c in train["what_to_change"]}
    assert "FSDP over 2 GPUs" in changes and "method='qlora'" in changes
    assert all(c["fits"] and c["total_gib"] <= 80 for c in train["what_to_change"])
    assert out["fits"] is False
    # the same run fits one 141 GB H200 by this estimate, and the answer comes without --gpu-memory too
    assert estimate_profile("gpu-7b", gpu_memory_gib=141)["stages"]["02_train"]["fits"] is True
    assert estimate_profile("gpu-7b")["fits"] is None


def test_training_stage_is_the_estimate_the_memory_check_uses():
    cfg = load_config("gpu-7b")
    out = estimate_profile("gpu-7b", gpu_memory_gib=80, gpus=8)
    train = out["stages"]["02_train"]
    expected = estimate_memory(cfg, world=8, sharded=True, cuda=True)
    assert train["total_gib"] == round(expected.total / GiB, 3) and train["fsdp"] is True
    assert train["grad_accum"] == 4 and train["fits"] is True  # 128 = 4 per GPU x 4 micro-batches x 8 GPUs


def test_a_smaller_batch_keeps_the_effective_batch_and_fits():
    # no checkpointing, long rows: activations dominate, so a smaller micro-batch is the fix
    cfg = load_config("smoke", max_length=2048, batch_size=8, effective_batch=32)
    full = estimate_memory(cfg, cuda=True).total
    at_two = estimate_memory(dataclasses.replace(cfg, batch_size=2), cuda=True).total
    budget = (at_two + estimate_memory(dataclasses.replace(cfg, batch_size=4), cuda=True).total) // 2
    assert at_two < budget < full
    advice = training_advice(cfg, budget)
    smaller = [a for a in advice if a["change"].startswith("batch_size=")]
    # batch 4 does not fit this budget, 2 does: grad accumulation 16 keeps 32 examples per optimizer step
    assert smaller and smaller[0]["change"].startswith("batch_size=2 with grad accumulation 16")
    checkpointed = estimate_memory(dataclasses.replace(cfg, gradient_checkpointing=True), cuda=True).total
    assert any(a["change"] == "gradient_checkpointing=True" for a in advice) == (checkpointed <= budget)
    assert all(a["fits"] and a["total_gib"] * GiB <= budget + 0.001 * GiB for a in advice)


def test_nothing_fits_a_budget_below_the_weights():
    cfg = load_config("smoke")
    advice = training_advice(cfg, budget=1)
    assert len(advice) == 1 and advice[0]["fits"] is False and "none of" in advice[0]["change"]
    assert advice[0]["closest"]["total_gib"] > 0


def test_generation_advice_names_a_batch_that_fits():
    out = estimate_profile("colab-qlora", gpu_memory_gib=7, gen_batch_size=16)
    gen = out["stages"]["04_generation"]
    assert gen["fits"] is False
    fix = gen["what_to_change"][0]
    batch = int(fix["change"].split("=")[1])
    assert 1 <= batch < 16 and fix["total_gib"] <= 7
    # linear in the batch: the named batch fits, one more does not
    per_answer = (gen["total_gib"] - gen["parts_gib"]["weights"] - gen["parts_gib"]["overhead"]) / 16
    assert fix["total_gib"] + per_answer > 7


def test_answers_only_runs_need_no_judge_memory():
    out = estimate_profile("cpu-study", gpu_memory_gib=24)
    assert out["stages"]["04_judge"]["skipped"].startswith("answers only") and out["stages"]["04_judge"]["total_gib"] == 0


def test_bad_input_is_refused_with_its_name(capsys):
    from neftlib.__main__ import main

    with pytest.raises(ValueError, match="--gpu-memory must be a positive number"):
        estimate_profile("smoke", gpu_memory_gib=0)
    assert main(["estimate", "--profile", "nope"]) == 2
    assert "neftlib estimate: error: unknown profile 'nope'" in capsys.readouterr().err


def test_full_finetune_counts_autocast_weights_and_the_foreach_adamw_temporary():
    from neftlib.training.memory import _matmul_weights, _model_shape

    foreach = load_config("gpu-7b", optim="adamw_torch")
    _, model = _model_shape(foreach)
    n = sum(p.numel() for p in model.parameters())
    gpu = estimate_memory(foreach, cuda=True)
    # torch's foreach AdamW builds sqrt(v) for all 6.7B weights at once: 4 bytes each, 25 GiB
    assert gpu.optimizer_step == 4 * n and 24 * GiB < gpu.optimizer_step < 26 * GiB
    # autocast keeps a bf16 copy of every weight it multiplies (not the embedding lookup) until the forward ends
    assert gpu.autocast_cache == 2 * _matmul_weights(model) and 12 * GiB < gpu.autocast_cache < 13 * GiB
    assert gpu.total == (gpu.weights + gpu.gradients + gpu.optimizer + gpu.overhead
                         + max(gpu.activations + gpu.logits + gpu.autocast_cache, gpu.optimizer_step))
    # gpu-7b uses the fused AdamW (no temporary); a CPU steps tensor by tensor; fp32 casts nothing
    assert load_config("gpu-7b").optim == "adamw_torch_fused"
    assert estimate_memory(load_config("gpu-7b"), cuda=True).optimizer_step == 0
    assert estimate_memory(foreach, cuda=False).optimizer_step == 0
    assert estimate_memory(load_config("gpu-7b", precision="fp32"), cuda=True).autocast_cache == 0
    # FSDP's mixed precision gathers bf16 weights itself; the temporary is split with the optimizer states
    fsdp = estimate_memory(foreach, world=8, sharded=True, cuda=True)
    assert fsdp.autocast_cache == 0 and fsdp.optimizer_step == gpu.optimizer_step // 8
    # 8-bit optimizers keep two 1-byte moments per parameter and step in place
    paged = estimate_memory(load_config("colab-qlora", optim="paged_adamw_8bit"), cuda=True)
    adamw = estimate_memory(load_config("colab-qlora"), cuda=True)
    assert paged.optimizer_step == 0 and paged.optimizer < adamw.optimizer / 3 and adamw.optimizer_step > 0


def test_one_gpu_full_finetune_number_in_the_docs_is_the_estimate():
    import re

    doc = (PROJ / "docs" / "multi_gpu.md").read_text()
    found = re.search(r"needs about ([0-9.]+) GiB by `python -m neftlib estimate --profile gpu-7b`", doc)
    assert found, "docs/multi_gpu.md no longer states the one-GPU estimate"
    total = estimate_profile("gpu-7b", gpu_memory_gib=80)["stages"]["02_train"]["total_gib"]
    assert float(found.group(1)) == pytest.approx(total, abs=0.5)


def test_judge_kv_cache_is_counted_exactly_when_the_judge_keeps_one(monkeypatch):
    import neftlib.pipeline.estimate as estimate
    from neftlib.evaluation.stage import JUDGE_USE_CACHE, make_judge

    judge = make_judge(load_config("smoke"))
    assert JUDGE_USE_CACHE is False and judge.model.config.use_cache is False  # what the estimate assumes
    without = estimate_profile("gpu-7b")["stages"]["04_judge"]
    monkeypatch.setattr(estimate, "JUDGE_USE_CACHE", True)
    kept = estimate_profile("gpu-7b")["stages"]["04_judge"]
    # LLaMA-2-7B: 32 layers x (keys + values) x 4096 x 2 bytes per token, for 4 judging texts
    kv = 2 * 32 * 4 * kept["context_tokens"] * 4096 * 2
    assert without["parts_gib"]["kv_cache"] == 0
    assert kept["parts_gib"]["kv_cache"] == pytest.approx(kv / GiB, abs=0.001) and 4.5 < kv / GiB < 5.5
    assert kept["total_gib"] == pytest.approx(without["total_gib"] + kv / GiB, abs=0.002)


def test_openllm_stage_has_its_own_batch_and_advice():
    out = estimate_profile("gpu-7b", gpu_memory_gib=80)["stages"]["04_openllm"]
    # few-shot contexts to LLaMA-2's 4,096 tokens, logits and their log-softmax for every position
    assert out["openllm_batch_size"] == 4 and out["context_tokens"] == 4096 and out["parts_gib"]["kv_cache"] == 0
    assert out["fits"] is True and out["total_gib"] < 20
    assert estimate_profile("colab-qlora")["stages"]["04_openllm"]["skipped"]
    big = estimate_profile("colab-qlora", gpu_memory_gib=15, openllm_tasks="openllm-v1", openllm_batch_size=32)
    stage = big["stages"]["04_openllm"]
    assert stage["fits"] is False and big["fits"] is False
    fix = stage["what_to_change"][0]
    assert fix["change"].startswith("openllm_batch_size=") and fix["fits"] and fix["total_gib"] <= 15
    smaller = int(fix["change"].split("=")[1])
    assert estimate_profile("colab-qlora", gpu_memory_gib=15, openllm_tasks="openllm-v1",
                            openllm_batch_size=smaller)["stages"]["04_openllm"]["fits"] is True
