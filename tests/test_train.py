import pandas as pd
import pytest
import torch

import neftlib.train as train_mod
from neftlib.config import load_config, qlora_config
from neftlib.data import load_instructions, tokenize_rows
from neftlib.train import train


@pytest.fixture(scope="module")
def examples(tokenizer):
    rows, _ = load_instructions("mini", limit=24)
    return tokenize_rows(rows, tokenizer, "alpaca", 96)


def _cfg(**kw):
    return load_config("smoke", max_steps=6, save_every=2, batch_size=4, **kw)


def _run(cfg, arm, examples, out, tokenizer):
    return train(cfg, cfg.for_arm(arm), examples, out, pad_id=tokenizer.pad_token_id, progress=False,
                 loss_examples={"train_nonoise": examples[:8]})


def test_loss_falls_and_run_is_recorded(tmp_path, examples, tokenizer):
    summary = _run(_cfg(), "neftune", examples, tmp_path / "a", tokenizer)
    log = pd.read_csv(tmp_path / "a" / "log.csv")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert {"lr", "grad_norm", "tokens_per_s", "noise_ratio"} <= set(log.columns)
    assert (log["noise_ratio"] > 0).all() and (log["tokens_per_s"] > 0).all()
    assert summary["train_nonoise_loss"] > 0 and (tmp_path / "a" / "model").is_dir()
    assert not list((tmp_path / "a").glob("checkpoint-*"))  # removed once the arm is done


def test_same_seed_same_numbers(tmp_path, examples, tokenizer):
    a = _run(_cfg(), "neftune", examples, tmp_path / "a", tokenizer)
    b = _run(_cfg(), "neftune", examples, tmp_path / "b", tokenizer)
    la, lb = pd.read_csv(tmp_path / "a" / "log.csv"), pd.read_csv(tmp_path / "b" / "log.csv")
    assert la["loss"].tolist() == lb["loss"].tolist()
    assert a["train_nonoise_loss"] == b["train_nonoise_loss"]
    c = _run(_cfg(seed=1), "neftune", examples, tmp_path / "c", tokenizer)
    assert c["final_loss"] != a["final_loss"]


def test_baseline_has_no_noise(tmp_path, examples, tokenizer):
    _run(_cfg(), "baseline", examples, tmp_path / "base", tokenizer)
    assert (pd.read_csv(tmp_path / "base" / "log.csv")["noise_ratio"] == 0).all()


def test_interrupted_run_resumes_to_the_same_result(tmp_path, examples, tokenizer, monkeypatch):
    full = _run(_cfg(), "neftune", examples, tmp_path / "full", tokenizer)
    calls = {"n": 0}
    real_collate = train_mod.collate

    def dying_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in step 5, after the checkpoint at step 4
            raise KeyboardInterrupt("simulated kill")
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "collate", dying_collate)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), "neftune", examples, tmp_path / "cut", tokenizer)
    assert [p.name for p in (tmp_path / "cut").glob("checkpoint-*")] == ["checkpoint-4"]
    monkeypatch.setattr(train_mod, "collate", real_collate)
    resumed = _run(_cfg(), "neftune", examples, tmp_path / "cut", tokenizer)
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["train_nonoise_loss"] == full["train_nonoise_loss"]
    assert len(pd.read_csv(tmp_path / "cut" / "log.csv")) == 6


def test_qlora_trains_only_adapters_on_a_4bit_base(tmp_path, examples, tokenizer):
    cfg = qlora_config(_cfg())
    summary = _run(cfg, "neftune", examples, tmp_path / "q", tokenizer)
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    model = train_mod.load_trained(cfg, tmp_path / "q")
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())


def test_clear_errors_before_training(tmp_path, examples, tokenizer):
    with pytest.raises(ValueError, match="no usable rows"):
        _run(_cfg(), "baseline", [], tmp_path / "e", tokenizer)
    with pytest.raises(ValueError, match="unknown model 'llama-9'"):
        _run(_cfg(model="llama-9"), "baseline", examples, tmp_path / "m", tokenizer)


def test_corrupted_checkpoint_is_named(tmp_path, examples, tokenizer):
    (tmp_path / "c" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint-2" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint-2/state.pt is unreadable.*Delete"):
        _run(_cfg(), "baseline", examples, tmp_path / "c", tokenizer)
