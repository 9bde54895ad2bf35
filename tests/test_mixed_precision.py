"""bf16 runs train like the paper's mixed precision: fp32 master weights, the forward under bf16 autocast."""
import pytest
import torch
from safetensors.torch import load_file

import neftlib.training.train as train_mod
from neftlib.base.recipes import load_config
from neftlib.data.prepare import load_instructions, tokenize_rows
from neftlib.training.models import load_base


@pytest.fixture(scope="module")
def examples(tokenizer):
    rows, _ = load_instructions("mini", limit=12)
    return tokenize_rows(rows, tokenizer, "alpaca", 64)


def _spy_on_forward(monkeypatch) -> list[tuple]:
    """(weight dtype, output dtype, autocast on) of one linear layer in every training forward."""
    seen, real = [], train_mod.load_model

    def load_and_spy(*args, **kwargs):
        model = real(*args, **kwargs)
        layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp.down_proj"))
        layer.register_forward_hook(lambda mod, inp, out: seen.append(
            (mod.weight.dtype, out.dtype, torch.is_autocast_enabled("cpu"))) if mod.training else None)
        return model

    monkeypatch.setattr(train_mod, "load_model", load_and_spy)
    return seen


def test_bf16_full_finetune_keeps_fp32_master_weights(tmp_path, examples, tokenizer, monkeypatch):
    seen = _spy_on_forward(monkeypatch)
    # lr 1e-5: Adam moves each weight by ~1e-5, below bf16's resolution at these weights' size (~1e-4)
    cfg = load_config("smoke", precision="bf16", max_steps=3, save_every=100, learning_rate=1e-5)
    summary = train_mod.train(cfg, cfg.for_arm("neftune"), examples, tmp_path / "a",
                              pad_id=tokenizer.pad_token_id, progress=False)
    assert summary["final_loss"] == summary["final_loss"]  # not NaN
    assert len(seen) == 3 and all(s == (torch.float32, torch.bfloat16, True) for s in seen)
    saved = load_file(tmp_path / "a" / "model" / "model.safetensors")
    start = load_base("tiny-random").state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    assert saved[name].dtype == torch.float32
    changed = (saved[name] != start[name]).float().mean().item()
    # bf16 weights updated in place would keep nearly all of them; fp32 masters keep every update
    assert changed > 0.9
    assert (saved[name].bfloat16() == start[name].bfloat16()).float().mean().item() > 0.5


def test_bf16_lora_keeps_a_bf16_base_and_fp32_adapters(tmp_path, examples, tokenizer, monkeypatch):
    seen = _spy_on_forward(monkeypatch)
    cfg = load_config("smoke", method="lora", precision="bf16", max_steps=2, save_every=100)
    train_mod.train(cfg, cfg.for_arm("neftune"), examples, tmp_path / "l", pad_id=tokenizer.pad_token_id,
                    progress=False)
    assert len(seen) == 2 and all(s == (torch.bfloat16, torch.bfloat16, True) for s in seen)
    adapters = load_file(tmp_path / "l" / "model" / "adapter_model.safetensors")
    assert adapters and all(t.dtype == torch.float32 for t in adapters.values())


def test_weights_precision_and_memory_estimate():
    from neftlib.training.memory import estimate_memory

    full, lora = load_config("smoke", precision="bf16"), load_config("smoke", precision="bf16", method="lora")
    assert train_mod.weights_precision(full) == "fp32" and train_mod.weights_precision(lora) == "bf16"
    n = sum(p.numel() for p in load_base("tiny-random").parameters())
    est = estimate_memory(full)
    # fp32 weights and grads, two fp32 Adam moments
    assert (est.weights, est.gradients, est.optimizer) == (4 * n, 4 * n, 8 * n)
    adapters = estimate_memory(lora)
    assert adapters.weights < 3 * n and 0 < adapters.optimizer < est.optimizer / 10


def test_one_process_trains_runs_of_different_precisions_in_turn():
    from accelerate import Accelerator

    fp32, bf16 = load_config("smoke"), load_config("smoke", precision="bf16")
    for cfg, expected in ((fp32, "no"), (bf16, "bf16"), (fp32, "no")):  # accelerate alone refuses the 2nd
        train_mod.reset_accelerate_precision(cfg)
        assert Accelerator(cpu=True, mixed_precision=expected).mixed_precision == expected
