"""The memory estimate against the peak a real training run reaches, and the check built on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftlib.base.recipes import load_config
from neftlib.training.memory import GiB, check_fits, estimate_memory

PROJ = Path(__file__).resolve().parents[1]
# A child process trains a 16M-parameter random LLaMA (big enough that its training memory, not the
# interpreter's, dominates the growth of the process) and reports the peak resident memory it reached.
CHILD = """
import json, resource, sys
import psutil, torch
from transformers import LlamaConfig, LlamaForCausalLM
from neftlib.base.recipes import load_config
from neftlib.data.prepare import load_instructions, tokenize_rows
from neftlib.training.memory import estimate_memory
from neftlib.training.models import load_tokenizer
from neftlib.training.train import train

folder, out, method, checkpointing = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
tok = load_tokenizer("tiny-random")
config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
torch.manual_seed(0)
LlamaForCausalLM(config).save_pretrained(folder)
tok.save_pretrained(folder)
rows, _ = load_instructions("mini", limit=40)
examples = [e for e in tokenize_rows(rows, tok, "alpaca", 128)]
# every batch as long as max_length: the estimate is for the worst case
examples = [{"input_ids": (e["input_ids"] * 4)[:128], "labels": (e["labels"] * 4)[:128]} for e in examples]
cfg = load_config("smoke", model=folder, method=method, max_length=128, batch_size=8, max_steps=3,
                  save_every=100, gradient_checkpointing=checkpointing, lora_r=16)
before = psutil.Process().memory_info().rss
train(cfg, cfg.for_arm("neftune"), examples, out, pad_id=tok.pad_token_id, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - before, "estimate": estimate_memory(cfg).total}))
"""


@pytest.mark.parametrize("method,checkpointing", [("full", False), ("full", True), ("lora", False)])
def test_estimate_is_within_a_factor_of_the_measured_peak(tmp_path, method, checkpointing):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "NEFTLIB_RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "model"), str(tmp_path / "arm"), method,
                           "1" if checkpointing else "0"], cwd=PROJ, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = measured["estimate"] / measured["growth"]
    # The estimate counts tensors; the process also holds allocator slack and Trainer's own buffers.
    assert 0.5 < ratio < 2.0, measured


def test_estimate_accounts_for_each_setting():
    full = estimate_memory(load_config("gpu-7b"))
    assert 100 * GiB < full.weights + full.gradients + full.optimizer < 110 * GiB  # 16 bytes x 6.7B
    checkpointed = estimate_memory(load_config("gpu-7b", gradient_checkpointing=True))
    plain = estimate_memory(load_config("gpu-7b", gradient_checkpointing=False))
    assert checkpointed.activations < plain.activations / 5
    qlora = estimate_memory(load_config("colab-qlora"))
    # 4-bit linear layers, fp32 embeddings and head (peft's prepare_model_for_kbit_training), fp32 adapters
    assert 4 * GiB < qlora.weights < 6 * GiB and qlora.optimizer < 2 * GiB
    fsdp = estimate_memory(load_config("gpu-7b"), world=8, sharded=True)
    # FSDP splits weights and optimizer over 8 ranks but keeps full gradients under accumulation (no_sync)
    assert fsdp.weights == full.weights // 8 and fsdp.gradients == full.gradients


def test_check_fits_names_the_parts_and_the_fixes(monkeypatch):
    import neftlib.training.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: (1 * GiB, "RAM"))
    with pytest.raises(MemoryError, match=r"needs about .* GiB to train \(weights .*optimizer.*\); RAM has 1.0 GiB "
                                          r"free. Use method='qlora'"):
        check_fits(load_config("cpu"))


def test_check_fits_names_memory_an_earlier_model_still_holds(monkeypatch):
    """When this process's GPU memory is held by an earlier arm's model, the fix is to let go of it."""
    import neftlib.training.memory as memory

    if not torch.cuda.is_available():
        assert memory.held_bytes() == 0  # a CPU holds no GPU memory
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: (1 * GiB, "GPU"))
    monkeypatch.setattr(memory, "held_bytes", lambda device=None: int(5.9 * GiB))
    with pytest.raises(MemoryError, match=r"GPU has 1.0 GiB free. This process already holds 5.9 GiB of GPU memory: "
                                          r"a model of an earlier arm or stage is still referenced.*Otherwise use "
                                          r"method='qlora'"):
        check_fits(load_config("cpu"))
