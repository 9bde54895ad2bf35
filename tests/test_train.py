"""Training through transformers' Trainer: logs, determinism, resume, precisions, padding-free batches, memory."""
import gc
import json
import math
import types
import weakref

import pandas as pd
import pytest
import torch

import neftlib.data.batching as batching
import neftlib.training.train as train_mod
from neftlib.base.config import qlora_config
from neftlib.base.recipes import load_config
from neftlib.data.prepare import load_instructions, tokenize_rows
from neftlib.training.models import load_base
from neftlib.training.train import train


@pytest.fixture(scope="module")
def examples(tokenizer):
    rows, _ = load_instructions("mini", limit=24)
    return tokenize_rows(rows, tokenizer, "alpaca", 96)


def _cfg(**kw):
    return load_config("smoke", **{"max_steps": 6, "save_every": 2, "batch_size": 4, **kw})


def _run(cfg, arm, examples, out, tokenizer, **kw):
    return train(cfg, cfg.for_arm(arm), examples, out, pad_id=tokenizer.pad_token_id, progress=False,
                 loss_examples={"train_nonoise": examples[:8]}, **kw)


def _log(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "log.csv")


LOG_COLUMNS = ["run", "arm", "step", "loss", "lr", "grad_norm", "tokens_per_s", "noise_ratio", "step_s", "cpu_s"]


def test_loss_falls_and_run_is_recorded(tmp_path, examples, tokenizer):
    summary = _run(_cfg(), "neftune", examples, tmp_path / "a", tokenizer)
    log = _log(tmp_path / "a")
    assert list(log.columns) == LOG_COLUMNS and list(log["step"]) == [1, 2, 3, 4, 5, 6]
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert (log["noise_ratio"] > 0).all() and (log["tokens_per_s"] > 0).all()
    # tokens are non-pad tokens: 6 batches of 4 examples, each counted once
    sampler = batching.EpochSampler([len(e["input_ids"]) for e in examples], 4, 0, True)
    per_step = [sum(len(examples[i]["input_ids"]) for i in b) for b in sampler.batches()]
    assert (log["tokens_per_s"] * log["step_s"]).round(3).tolist() == pytest.approx(per_step)
    assert summary["train_nonoise_loss"] > 0 and (tmp_path / "a" / "model").is_dir()
    assert summary["steps"] == 6 and summary["effective_batch"] == 4 and summary["world_size"] == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["DONE.json", "log.csv", "model", "summary.json"]


def test_same_seed_same_numbers(tmp_path, examples, tokenizer):
    a = _run(_cfg(), "neftune", examples, tmp_path / "a", tokenizer)
    b = _run(_cfg(), "neftune", examples, tmp_path / "b", tokenizer)
    assert _log(tmp_path / "a")["loss"].tolist() == _log(tmp_path / "b")["loss"].tolist()
    assert a["train_nonoise_loss"] == b["train_nonoise_loss"] and a["noise_rng_sha256"] == b["noise_rng_sha256"]
    c = _run(_cfg(seed=1), "neftune", examples, tmp_path / "c", tokenizer)
    assert c["final_loss"] != a["final_loss"]


def test_arms_differ_only_in_the_noise(tmp_path, examples, tokenizer):
    """Baseline draws no noise; NEFTune and the Gaussian control see the same data from the same start."""
    base = _run(_cfg(), "baseline", examples, tmp_path / "base", tokenizer)
    gauss = _run(_cfg(), "gaussian", examples, tmp_path / "gauss", tokenizer)
    assert (_log(tmp_path / "base")["noise_ratio"] == 0).all()
    assert (_log(tmp_path / "gauss")["noise_ratio"] > 0).all()
    # same batches: the same real tokens per step
    tokens = [(_log(tmp_path / d)["tokens_per_s"] * _log(tmp_path / d)["step_s"]).round(6).tolist()
              for d in ("base", "gauss")]
    assert tokens[0] == tokens[1] and base["final_loss"] != gauss["final_loss"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, examples, tokenizer, monkeypatch):
    full = _run(_cfg(), "neftune", examples, tmp_path / "full", tokenizer)
    calls = {"n": 0}
    real_collate = batching.collate

    def dying_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # fetching step 5's batch, after the checkpoint of step 4
            raise KeyboardInterrupt("simulated kill")
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(batching, "collate", dying_collate)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), "neftune", examples, tmp_path / "cut", tokenizer)
    ckpt = tmp_path / "cut" / "checkpoint-4"
    assert [p.name for p in (tmp_path / "cut").glob("checkpoint-*")] == ["checkpoint-4"]
    assert (ckpt / "noise_rng_state_0.pth").exists()  # the noise stream is part of the checkpoint
    assert len(json.loads((ckpt / "neftlib_state.json").read_text())["log"]) == 4
    monkeypatch.setattr(batching, "collate", real_collate)
    resumed = _run(_cfg(), "neftune", examples, tmp_path / "cut", tokenizer)
    for key in ("final_loss", "train_nonoise_loss", "noise_rng_sha256"):
        assert resumed[key] == full[key], key
    pd.testing.assert_frame_equal(_log(tmp_path / "cut")[["step", "loss", "lr", "grad_norm", "noise_ratio"]],
                                  _log(tmp_path / "full")[["step", "loss", "lr", "grad_norm", "noise_ratio"]])


def test_resume_across_epochs_sees_the_same_data(tmp_path, examples, tokenizer, monkeypatch):
    """Killed in the second epoch: the resumed run draws that epoch's order exactly as the first run did."""
    cfg = _cfg(max_steps=12, save_every=7)  # 22 examples in 6 batches: two epochs
    full = _run(cfg, "neftune", examples, tmp_path / "full", tokenizer)
    real_collate, calls = batching.collate, {"n": 0}

    def dying_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # step 9 of 12
            raise KeyboardInterrupt("simulated kill")
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(batching, "collate", dying_collate)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, "neftune", examples, tmp_path / "cut", tokenizer)
    assert [p.name for p in (tmp_path / "cut").glob("checkpoint-*")] == ["checkpoint-7"]
    monkeypatch.setattr(batching, "collate", real_collate)
    resumed = _run(cfg, "neftune", examples, tmp_path / "cut", tokenizer)
    assert resumed["final_loss"] == full["final_loss"] and resumed["steps"] == 12
    assert _log(tmp_path / "cut")["loss"].tolist() == _log(tmp_path / "full")["loss"].tolist()


def test_qlora_trains_only_adapters_on_a_4bit_base(tmp_path, examples, tokenizer):
    cfg = qlora_config(_cfg())
    summary = _run(cfg, "neftune", examples, tmp_path / "q", tokenizer)
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    # 4-bit weights count by their values (two per packed byte): the base model's parameters plus the adapters
    base = sum(p.numel() for p in load_base("tiny-random").parameters())
    assert summary["total_params"] == base + summary["trainable_params"]
    model = train_mod.load_trained(cfg, tmp_path / "q")
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())


@pytest.mark.parametrize("settings", [
    dict(precision="bf16"), dict(precision="fp16"), dict(gradient_checkpointing=True),
    dict(method="qlora", precision="bf16", gradient_checkpointing=True),
    dict(method="qlora", precision="fp16", gradient_checkpointing=True),
    dict(method="lora", precision="fp16", gradient_checkpointing=True),
], ids=["bf16", "fp16", "checkpointing", "qlora-bf16-checkpointing", "qlora-fp16-checkpointing",
        "lora-fp16-checkpointing"])
def test_precisions_checkpointing_and_4bit_alone_and_together(tmp_path, examples, tokenizer, settings):
    cfg = _cfg(max_steps=3, save_every=100, lora_r=8, **settings)
    summary = _run(cfg, "neftune", examples, tmp_path / "p", tokenizer)
    log = _log(tmp_path / "p")
    assert len(log) == 3 and log["loss"].map(math.isfinite).all() and (log["noise_ratio"] > 0).all()
    assert math.isfinite(summary["train_nonoise_loss"])


def test_gradient_checkpointing_keeps_our_use_reentrant_choice(tmp_path, examples, tokenizer, monkeypatch):
    """QLoRA with checkpointing: every layer is checkpointed non-reentrant (peft would pick its own)."""
    import transformers.modeling_utils as mu

    seen, real = [], mu.checkpoint

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", spy)
    cfg = qlora_config(_cfg(max_steps=1, save_every=100, gradient_checkpointing=True))
    train(cfg, cfg.for_arm("neftune"), examples, tmp_path / "gc", pad_id=tokenizer.pad_token_id, progress=False)
    assert len(seen) >= 2 and set(seen) == {False}  # both layers of the tiny model, in the one step


def test_under_fsdp_checkpointing_is_fsdps_own(tmp_path, monkeypatch):
    """configs/accelerate/fsdp_7b.yaml checkpoints activations in FSDP; Trainer's is then left off (it would
    all-gather each layer's weights again in the backward pass). Without FSDP the profile's setting holds."""
    import yaml

    from neftlib.base.paths import PROJ_ROOT

    fsdp = yaml.safe_load((PROJ_ROOT / "configs" / "accelerate" / "fsdp_7b.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_activation_checkpointing"] is True
    cfg = _cfg(gradient_checkpointing=True)
    args = train_mod.training_arguments(cfg, tmp_path, world=1, progress=False)
    assert args.activation_checkpointing is True and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    # what `accelerate launch --config_file configs/accelerate/fsdp_7b.yaml` puts in each rank's environment
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    assert train_mod.fsdp_checkpoints() and not train_mod.trainer_checkpoints(cfg)
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "false")  # an FSDP config that leaves it to Trainer
    assert train_mod.trainer_checkpoints(cfg) and not train_mod.trainer_checkpoints(_cfg())


def test_padding_free_batches_match_padded_ones(tmp_path, examples, tokenizer, monkeypatch):
    """The same batches concatenated without pads give the padded batches' losses; each segment gets noise
    scaled by its own length (so a segment's mean squared noise norm is alpha^2 / 3 whatever its length)."""
    padded = _run(_cfg(max_steps=3, save_every=100, group_by_length=False), "baseline", examples, tmp_path / "pad",
                  tokenizer)
    flat = _run(_cfg(max_steps=3, save_every=100, padding_free=True), "baseline", examples, tmp_path / "flat",
                tokenizer)
    assert _log(tmp_path / "flat")["loss"].tolist() == pytest.approx(_log(tmp_path / "pad")["loss"].tolist(), rel=1e-4)
    assert flat["train_nonoise_loss"] == pytest.approx(padded["train_nonoise_loss"], rel=1e-5)
    assert (_log(tmp_path / "flat")["tokens_per_s"] * _log(tmp_path / "flat")["step_s"]).sum() == pytest.approx(
        (_log(tmp_path / "pad")["tokens_per_s"] * _log(tmp_path / "pad")["step_s"]).sum())

    from neftlib.noise import add_neftune_noise

    batch = batching.flat_collator()(examples[:8])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    pos = batch["position_ids"]
    starts = (pos[0] == 0).nonzero().flatten().tolist() + [pos.shape[1]]
    alpha, d, draws = 5.0, 64, 400
    gen = torch.Generator().manual_seed(0)
    zeros = torch.zeros(1, pos.shape[1], d)
    sq = torch.stack([(add_neftune_noise(zeros, None, alpha, position_ids=pos, generator=gen)[0] ** 2).sum(-1)
                      for _ in range(draws)])
    for s, e in zip(starts, starts[1:]):
        # E||noise||^2 = alpha^2/3 per segment; sd of the mean over 400 draws is < 2% of it
        assert sq[:, s:e].sum(1).mean().item() == pytest.approx(alpha**2 / 3, rel=0.06), (s, e)


def test_logging_steps_rows_and_tensorboard_events(tmp_path, examples, tokenizer):
    pytest.importorskip("tensorboard")
    cfg = _cfg(logging_steps=2, report_to="tensorboard")
    _run(cfg, "neftune", examples, tmp_path / "tb", tokenizer)
    log = _log(tmp_path / "tb")
    assert list(log["step"]) == [2, 4, 6] and (log["noise_ratio"] > 0).all()
    (events,) = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    # log.csv's noise ratio and throughput are in Trainer's logs too: TensorBoard (and W&B) record them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events.parent))
    scalars.Reload()
    for key in ("noise_ratio", "tokens_per_s"):
        written = scalars.Scalars(f"train/{key}")
        assert [e.step for e in written] == [2, 4, 6]
        assert [e.value for e in written] == pytest.approx(list(log[key]), rel=1e-6)


@pytest.fixture
def no_garbage_collection(monkeypatch):
    """Neither the automatic collector nor any gc.collect() (ours, accelerate's) runs: whatever is freed is
    freed by reference counting, so a reference cycle left behind keeps its objects alive."""
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


@pytest.fixture
def fp16_loss_scaler_on_cpu(monkeypatch) -> list:
    """accelerate runs fp16 only on accelerators (on CPU Trainer's fp16 trains in fp32, with no loss scaler):
    give its Accelerator fp16 autocast and torch's CPU GradScaler, so training takes the GPU's fp16 path (the
    scaled backward, the unscale before clipping, the scaler's patched optimizer step). Returns the scalers."""
    from accelerate import Accelerator

    scalers, real = [], Accelerator.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state.mixed_precision == "fp16" and self.device.type == "cpu":
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu")
            scalers.append(self.scaler)

    monkeypatch.setattr(Accelerator, "__init__", init)
    return scalers


def _watch_models(monkeypatch) -> tuple[list, list]:
    """Weak references to each loaded model and to one of its trainable parameters (which the optimizer's
    state refers to), and whether deterministic kernels were on in each of its forwards."""
    refs, modes, real = [], [], train_mod.load_model

    def load_and_watch(*args, **kwargs):
        model = real(*args, **kwargs)
        trainable = next(p for p in model.parameters() if p.requires_grad)
        refs.extend([weakref.ref(model), weakref.ref(trainable)])
        model.register_forward_hook(lambda *a: modes.append(torch.are_deterministic_algorithms_enabled()))
        return model

    monkeypatch.setattr(train_mod, "load_model", load_and_watch)
    return refs, modes


def test_an_arm_lets_go_of_its_model_and_deterministic_mode(tmp_path, examples, tokenizer, monkeypatch,
                                                            no_garbage_collection):
    """After train() returns nothing holds the arm's model, and deterministic kernels were on for training only."""
    refs, modes = _watch_models(monkeypatch)
    before = torch.are_deterministic_algorithms_enabled()
    _run(_cfg(max_steps=2, save_every=100), "neftune", examples, tmp_path / "m", tokenizer)
    assert refs and all(ref() is None for ref in refs)
    assert modes and all(modes[:2]) and torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize("precision,method", [("bf16", "full"), ("fp16", "full"), ("bf16", "qlora"),
                                              ("fp16", "qlora")])
def test_mixed_precision_arm_is_freed_without_a_garbage_collection(tmp_path, examples, tokenizer, monkeypatch,
                                                                   no_garbage_collection, fp16_loss_scaler_on_cpu,
                                                                   precision, method):
    """accelerate binds its autocast forward onto the model and, for fp16, step methods onto the optimizer:
    reference cycles. train() breaks them, so the model and the optimizer's parameters are gone when it
    returns, with no collection anywhere."""
    refs, _ = _watch_models(monkeypatch)
    cfg = _cfg(precision=precision, max_steps=2, save_every=100)
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
        cfg = qlora_config(cfg)
    summary = _run(cfg, "neftune", examples, tmp_path / "m", tokenizer)
    assert summary["steps"] == cfg.max_steps and math.isfinite(summary["final_loss"])
    if precision == "fp16":  # the loss scaler did scale the losses
        assert fp16_loss_scaler_on_cpu and fp16_loss_scaler_on_cpu[0].get_scale() > 0
    assert len(refs) == 2 and refs[0]() is None and refs[1]() is None


def test_release_unbinds_what_accelerate_bound(tmp_path):
    """The cycles themselves: accelerate's prepared model and fp16 optimizer refer to themselves; after
    unbind_accelerate / unbind_optimizer, dropping them frees them by reference counting."""
    from accelerate.optimizer import AcceleratedOptimizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gc, "collect", lambda generation=2: 0)
        gc.disable()
        try:
            for fix in (False, True):
                model = torch.nn.Linear(2, 2)
                model._original_forward = model.forward  # what accelerate's prepare_model does under autocast
                model.forward = types.MethodType(type(model).forward, model)
                inner = torch.optim.AdamW(model.parameters())
                scaler = torch.amp.GradScaler("cpu")
                opt = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
                scaler.scale(model(torch.ones(1, 2)).sum()).backward()
                opt.step()  # stores the inner optimizer's bound step on itself
                if fix:
                    train_mod.unbind_accelerate(model)
                    train_mod.unbind_optimizer(opt)
                refs = [weakref.ref(model), weakref.ref(inner)]
                del model, inner, opt, scaler
                assert [r() is None for r in refs] == [fix, fix]
        finally:
            gc.enable()
            gc.collect()


def test_effective_batch_sets_grad_accum_or_is_refused():
    cfg = load_config("smoke", effective_batch=16, batch_size=4)
    assert cfg.grad_accum_for(1) == 4 and cfg.grad_accum_for(2) == 2 and cfg.grad_accum_for(4) == 1
    with pytest.raises(ValueError, match=r"effective_batch=16 cannot be reached with batch_size=4 on 3 process"):
        cfg.grad_accum_for(3)
    with pytest.raises(ValueError, match="either effective_batch .* or grad_accum"):
        load_config("smoke", effective_batch=16, grad_accum=2)
    gpu = load_config("gpu-7b")
    assert gpu.effective_batch == 128 and gpu.grad_accum_for(1) == 32 and gpu.grad_accum_for(8) == 4


def test_grad_accum_steps_the_optimizer_once_per_two_micro_batches(tmp_path, examples, tokenizer):
    """Accumulation 2: each logged step holds the real tokens of two consecutive batches of the seeded order."""
    summary = _run(_cfg(max_steps=3, save_every=100, grad_accum=2, group_by_length=False), "neftune", examples,
                   tmp_path / "acc", tokenizer)
    log = _log(tmp_path / "acc")
    assert summary["effective_batch"] == 8 and list(log["step"]) == [1, 2, 3]
    lengths = [len(e["input_ids"]) for e in examples]
    batches = batching.EpochSampler(lengths, 4, 0, False).batches()
    expected = [sum(lengths[i] for b in batches[2 * k:2 * k + 2] for i in b) for k in range(3)]
    assert (log["tokens_per_s"] * log["step_s"]).round(3).tolist() == pytest.approx(expected)


def test_clear_errors_before_training(tmp_path, examples, tokenizer):
    with pytest.raises(ValueError, match="no usable rows"):
        _run(_cfg(), "baseline", [], tmp_path / "e", tokenizer)
    with pytest.raises(ValueError, match="unknown model 'llama-9'"):
        _run(_cfg(model="llama-9"), "baseline", examples, tmp_path / "m", tokenizer)


def test_corrupted_checkpoint_is_named(tmp_path, examples, tokenizer):
    (tmp_path / "c" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint-2" / "neftlib_state.json").write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint-2 is unreadable.*Delete"):
        _run(_cfg(), "baseline", examples, tmp_path / "c", tokenizer)
