"""Tests for neftlib.noise: the noise law, the model hooks and the Trainer callback."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from neftlib.noise import NEFTuneHandle, add_neftune_noise, neftune, noise_seed

ALPHA = 5.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def right_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


# --- the noise law ---------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_uniform_bound_and_pads_untouched(side: str) -> None:
    T, d, lengths = 16, 64, [16, 5, 1, 9]
    mask = right_mask(lengths, T)
    if side == "left":
        mask = mask.flip(1)
    x = torch.randn(len(lengths), T, d)
    noise = add_neftune_noise(x, mask, ALPHA, generator=gen()) - x
    for i, L in enumerate(lengths):
        bound = ALPHA / math.sqrt(L * d)
        real = noise[i][mask[i].bool()]
        assert real.abs().max() <= bound * (1 + 1e-5)
        # with >= 64 entries the max |U| is near 1, so a wrong (e.g. padded-length) scale shows
        assert real.abs().max() >= 0.9 * bound
        assert torch.equal(noise[i][~mask[i].bool()], torch.zeros_like(noise[i][~mask[i].bool()]))


@pytest.mark.parametrize("distribution, mean_sq, var_entry", [("uniform", 1 / 3, 4 / 45), ("gaussian", 1.0, 2.0)])
def test_mean_squared_norm_is_length_free(distribution: str, mean_sq: float, var_entry: float) -> None:
    # E||n_i||^2 = alpha^2 * E[eps^2]; per draw Var = alpha^4 * Var(eps^2) / (L d) (sum of L d terms)
    T, d, lengths, draws = 12, 8, [12, 4, 1], 500
    mask = right_mask(lengths, T).repeat(draws, 1)
    x = torch.zeros(len(lengths) * draws, T, d)
    noise = add_neftune_noise(x, mask, ALPHA, distribution=distribution, generator=gen(1))
    sq = noise.double().square().sum(dim=(1, 2)).view(draws, len(lengths))
    for i, L in enumerate(lengths):
        se = ALPHA**2 * math.sqrt(var_entry / (L * d) / draws)
        assert abs(sq[:, i].mean().item() - ALPHA**2 * mean_sq) < 6 * se, (L, sq[:, i].mean().item())


def test_packed_segments_use_their_own_length() -> None:
    d, segs, pad = 64, [3, 2, 5], 2
    pos = torch.cat([torch.arange(n) for n in segs] + [torch.arange(pad)])[None]
    mask = torch.ones_like(pos)
    mask[0, -pad:] = 0
    x = torch.randn(1, pos.shape[1], d)
    noise = add_neftune_noise(x, mask, ALPHA, position_ids=pos, generator=gen(2)) - x
    start = 0
    for L in segs:
        seg = noise[0, start : start + L]
        bound = ALPHA / math.sqrt(L * d)
        assert seg.abs().max() <= bound * (1 + 1e-5) and seg.abs().max() >= 0.9 * bound
        start += L
    assert torch.count_nonzero(noise[0, -pad:]) == 0
    # 1-D position_ids broadcast over a batch of 1
    again = add_neftune_noise(x, mask, ALPHA, position_ids=pos[0], generator=gen(2)) - x
    assert torch.equal(again, noise)


def test_padded_mode_matches_transformers_hook() -> None:
    from transformers.integrations.neftune import neftune_post_forward_hook

    B, T, d, draws = 4, 10, 16, 200
    emb = torch.nn.Embedding(50, d).train()
    emb.neftune_noise_alpha = ALPHA
    x = torch.zeros(B * draws, T, d)
    mask = right_mask([10, 3, 1, 6], T).repeat(draws, 1)
    torch.manual_seed(0)
    hf = neftune_post_forward_hook(emb, None, x)
    ours = add_neftune_noise(x, mask, ALPHA, scaling="padded", generator=gen(3))
    bound = ALPHA / math.sqrt(T * d)
    se = ALPHA**2 * math.sqrt(4 / 45 / (T * d) / (B * draws))
    for noise in (hf, ours):
        assert noise.abs().max() <= bound * (1 + 1e-5) and noise.abs().max() >= 0.99 * bound
        assert abs(noise.double().square().sum((1, 2)).mean().item() - ALPHA**2 / 3) < 6 * se
        assert abs((noise.abs() > bound / 2).float().mean().item() - 0.5) < 0.01  # uniform, not peaked
    assert torch.count_nonzero(ours[:, -1]) > 0  # pads are noised too, as in transformers


def test_no_mask_means_all_real() -> None:
    x = torch.randn(2, 6, 8)
    a = add_neftune_noise(x, None, ALPHA, generator=gen(4))
    b = add_neftune_noise(x, torch.ones(2, 6), ALPHA, generator=gen(4))
    c = add_neftune_noise(x, None, ALPHA, scaling="padded", generator=gen(4))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"alpha": "5"}, "alpha"),
        ({"distribution": "laplace"}, "distribution"),
        ({"scaling": "global"}, "scaling"),
        ({"attention_mask": torch.ones(2, 5)}, "attention_mask"),
        ({"position_ids": torch.zeros(3, 6, dtype=torch.long)}, "position_ids"),
        ({"embeds": torch.zeros(6, 8)}, "embeds"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    args = {"embeds": torch.zeros(2, 6, 8), "attention_mask": torch.ones(2, 6), "alpha": ALPHA, **kwargs}
    embeds, mask, alpha = args.pop("embeds"), args.pop("attention_mask"), args.pop("alpha")
    with pytest.raises(ValueError, match=name):
        add_neftune_noise(embeds, mask, alpha, **args)


def test_input_unmodified_alpha_zero_and_generator_isolation() -> None:
    x = torch.randn(2, 6, 8)
    before = x.clone()
    rng = torch.get_rng_state()
    y = add_neftune_noise(x, torch.ones(2, 6), ALPHA, generator=gen(5))
    assert torch.equal(x, before) and not torch.equal(y, x)
    assert torch.equal(torch.get_rng_state(), rng)  # global stream (dropout) untouched
    assert torch.equal(y, add_neftune_noise(x, torch.ones(2, 6), ALPHA, generator=gen(5)))
    assert torch.equal(add_neftune_noise(x, None, 0.0), x)


def test_bf16_embeddings() -> None:
    x = torch.zeros(2, 8, 32, dtype=torch.bfloat16)
    y = add_neftune_noise(x, None, ALPHA, generator=gen(6))
    assert y.dtype == torch.bfloat16
    assert y.float().abs().max() <= ALPHA / math.sqrt(8 * 32) * 1.01


def test_noise_seed() -> None:
    seeds = {noise_seed(s, r) for s in range(10) for r in range(64)}
    assert len(seeds) == 640
    assert all(noise_seed(s, r) != s and 0 <= noise_seed(s, r) < 2**63 for s in range(10) for r in range(4))
    assert noise_seed(42, 3) == noise_seed(42, 3)


# --- model hooks -------------------------------------------------------------------------------


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


class Capture:
    """Forward hook registered after NEFTune's: records (ids, embedding output) pairs."""

    def __init__(self, emb: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight = emb.weight
        self.handle = emb.register_forward_hook(lambda m, i, o: self.calls.append((i[0], o.detach().clone())))

    def noise(self, k: int = -1) -> torch.Tensor:
        ids, out = self.calls[k]
        return out - self.weight.detach()[ids]


def batch(T: int = 10, lengths: tuple[int, ...] = (10, 6, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 128, (len(lengths), T), generator=gen(7))
    mask = right_mask(list(lengths), T)
    return ids.masked_fill(mask == 0, 0), mask


def no_hooks(*mods: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_train_mode_noises_real_tokens_only(model) -> None:
    ids, mask = batch()
    emb = model.get_input_embeddings()
    model.train()
    with neftune(model, ALPHA, seed=1) as h:
        cap = Capture(emb)
        model(input_ids=ids, attention_mask=mask)
        model(ids, mask)  # positional mask reaches the hook too
        cap.handle.remove()
    for k in (0, 1):
        n = cap.noise(k)
        assert torch.count_nonzero(n[mask == 0]) == 0
        assert (n[mask == 1].abs().sum(-1) > 0).all()
        for i, L in enumerate(mask.sum(1).tolist()):
            assert n[i].abs().max() <= ALPHA / math.sqrt(L * 32) * (1 + 1e-5)
    assert isinstance(h, NEFTuneHandle) and h.last_ratio is not None and h.last_ratio > 0
    assert no_hooks(model, emb)


def test_packed_position_ids_in_model(model) -> None:
    segs = [3, 5, 8]
    pos = torch.cat([torch.arange(n) for n in segs])[None]
    ids = torch.randint(1, 128, pos.shape, generator=gen(8))
    model.train()
    with neftune(model, ALPHA, seed=2):
        cap = Capture(model.get_input_embeddings())
        model(input_ids=ids, position_ids=pos)
        cap.handle.remove()
    n, start = cap.noise(), 0
    for L in segs:
        bound = ALPHA / math.sqrt(L * 32)
        assert 0.9 * bound <= n[0, start : start + L].abs().max() <= bound * (1 + 1e-5)
        start += L


def test_eval_and_generate_add_no_noise(model) -> None:
    ids, mask = batch()
    model.eval()
    with neftune(model, ALPHA) as h:
        cap = Capture(model.get_input_embeddings())
        model(input_ids=ids, attention_mask=mask)
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
        cap.handle.remove()
    assert len(cap.calls) >= 4
    assert all(torch.count_nonzero(cap.noise(k)) == 0 for k in range(len(cap.calls)))
    assert h.last_ratio is None


def test_seeded_runs_repeat_and_global_rng_untouched(model) -> None:
    ids, mask = batch()
    model.train()

    def logits(seed: int) -> torch.Tensor:
        with neftune(model, ALPHA, seed=seed), torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    rng = torch.get_rng_state()
    a, b, c = logits(3), logits(3), logits(4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with neftune(model, ALPHA, seed=3) as h, torch.no_grad():
        state = h.rng_state()
        first = model(input_ids=ids, attention_mask=mask).logits
        h.set_rng_state(state)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, first)


def test_alpha_zero_is_a_no_op(model) -> None:
    ids, mask = batch()
    model.train()
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=mask).logits
        with neftune(model, 0.0) as h:
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)
    assert h.last_ratio == 0.0


def test_hooks_removed_after_exception_and_double_attach_refused(model) -> None:
    emb = model.get_input_embeddings()
    with pytest.raises(KeyError):
        with neftune(model, ALPHA):
            raise KeyError("boom")
    assert no_hooks(model, emb)
    with neftune(model, ALPHA):
        with pytest.raises(RuntimeError, match="already attached"):
            with neftune(model, ALPHA):
                pass
    assert no_hooks(model, emb)


def test_transformers_neftune_refused(model) -> None:
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    handle = activate_neftune(model, ALPHA)
    try:
        with pytest.raises(RuntimeError, match="stack"):
            with neftune(model, ALPHA):
                pass
    finally:
        deactivate_neftune(model, handle)
    emb = model.get_input_embeddings()
    emb.neftune_noise_alpha = ALPHA  # attribute alone, hook not yet registered
    try:
        with pytest.raises(RuntimeError, match="stack"):
            with neftune(model, ALPHA):
                pass
    finally:
        del emb.neftune_noise_alpha
    assert no_hooks(model, emb)


def test_mismatched_mask_shape_raises(model) -> None:
    ids, mask = batch()
    model.train()
    with neftune(model, ALPHA):
        with pytest.raises(ValueError, match="attention_mask"):
            model(input_ids=ids[:, :6], attention_mask=mask)


def test_captured_mask_is_not_reused(model) -> None:
    ids, mask = batch()
    emb = model.get_input_embeddings()
    model.train()
    with neftune(model, ALPHA, seed=6), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        direct = emb(ids) - emb.weight[ids]  # no model call, so no mask: every position is real
        model(input_ids=ids[:, :4])  # another shape, no mask: must not meet the old mask
    assert (direct.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_peft_lora_and_gradient_checkpointing(checkpointing: bool) -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    if checkpointing:
        # reentrant checkpointing needs the embedding output to require grad (HF adds a hook for it)
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    # LoRA B starts at 0; make adapters matter so their gradients depend on the input
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.train()
    ids, mask = batch()
    emb = peft_model.get_input_embeddings()
    before = (dict(emb._forward_hooks), dict(peft_model._forward_hooks), dict(peft_model._forward_pre_hooks))
    with neftune(peft_model, ALPHA, seed=5) as h:
        cap = Capture(emb)
        out = peft_model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        cap.handle.remove()
    n = cap.noise()
    assert torch.count_nonzero(n[mask == 0]) == 0 and torch.count_nonzero(n[mask == 1]) > 0
    grads = [p.grad for name, p in peft_model.named_parameters() if "lora_A" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert h.last_ratio > 0
    assert before == (dict(emb._forward_hooks), dict(peft_model._forward_hooks), dict(peft_model._forward_pre_hooks))


def test_qlora_4bit_model(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": "cpu"})
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).train()
    ids, mask = batch()
    with neftune(peft_model, ALPHA) as h:
        cap = Capture(peft_model.get_input_embeddings())
        peft_model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        cap.handle.remove()
    n = cap.noise()
    assert torch.count_nonzero(n[mask == 0]) == 0 and (n[mask == 1].abs().sum(-1) > 0).all()
    assert h.last_ratio > 0 and no_hooks(peft_model, peft_model.get_input_embeddings())


# --- Trainer callback ----------------------------------------------------------------------------


def test_callback_in_trainer(tmp_path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from neftlib.noise import NEFTuneCallback

    model = tiny_llama()
    emb = model.get_input_embeddings()
    rows = []
    for i, L in enumerate([8, 5, 3, 8]):
        ids, mask = batch(8, (L,))
        rows.append({"input_ids": ids[0], "attention_mask": mask[0], "labels": ids[0].masked_fill(mask[0] == 0, -100)})
    cb = NEFTuneCallback(ALPHA)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy_hook(m, i, o):  # noise = output minus the clean lookup with the weights of that step
        seen.append((i[0], (o - m.weight[i[0]]).detach()))

    class Spy(TrainerCallback):  # registered after NEFTune's hook, so it sees the noisy output
        def on_train_begin(self, args, state, control, **kw):
            self.h = emb.register_forward_hook(spy_hook)

        def on_train_end(self, args, state, control, **kw):
            self.h.remove()

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1, seed=1)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb, Spy()]).train()
    assert no_hooks(model, emb) and cb.handle.last_ratio > 0 and len(seen) == 2
    for ids, noise in seen:  # pad ids are 0, real ids >= 1 (see batch())
        assert torch.count_nonzero(noise[ids == 0]) == 0 and (ids == 0).any()
        assert (noise[ids != 0].abs().sum(-1) > 0).all()


def test_callback_puts_the_noise_ratio_in_trainers_logs(tmp_path) -> None:
    """Plain Trainer: noise_ratio in log_history and for the callbacks after NEFTuneCallback, TensorBoard's too."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from neftlib.noise import NEFTuneCallback

    rows = []
    for L in (8, 5, 3, 8):
        ids, mask = batch(8, (L,))
        rows.append({"input_ids": ids[0], "attention_mask": mask[0], "labels": ids[0].masked_fill(mask[0] == 0, -100)})
    seen = []

    class After(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(logs.get("noise_ratio"))

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, use_cpu=True,
                             report_to="none", save_strategy="no",
                             logging_steps=1, seed=1)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=rows,
                      callbacks=[NEFTuneCallback(ALPHA), After(), TensorBoardCallback()])
    trainer.train()
    logged = [h["noise_ratio"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(r > 0 for r in logged) and seen[:3] == logged
    assert seen[3] is None  # the run's closing summary is no training step
    (events,) = list(tmp_path.rglob("events.out.tfevents.*"))
    scalars = EventAccumulator(str(events.parent))
    scalars.Reload()
    assert [e.value for e in scalars.Scalars("train/noise_ratio")] == pytest.approx(logged)


def test_callback_seeding_and_refusal(model) -> None:
    from neftlib.noise import NEFTuneCallback

    cb = NEFTuneCallback(ALPHA)
    cb.on_train_begin(SimpleNamespace(seed=7, process_index=3), None, None, model=model)
    assert cb.handle.generator.initial_seed() == noise_seed(7, 3)
    cb.on_train_end(None, None, None)
    cb.close()  # idempotent
    with pytest.raises(RuntimeError, match="stack"):
        cb.on_train_begin(SimpleNamespace(neftune_noise_alpha=5.0, seed=0, process_index=0), None, None, model=model)
    with pytest.raises(ValueError, match="alpha"):
        NEFTuneCallback(-1.0)
    assert no_hooks(model, model.get_input_embeddings())


def test_noise_dose_is_alpha_over_the_embedding_norm():
    """Four examples, every embedding of norm r: E||noise||^2 = 4 alpha^2 / 3 over N real tokens of norm r."""
    from neftlib.noise import noise_dose

    torch.manual_seed(0)
    lengths, d, r, alpha = [5, 9, 13, 17], 32, 3.0, 5.0
    mask = torch.zeros(4, 17)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    embeds = torch.nn.functional.normalize(torch.randn(4, 17, d), dim=-1) * r
    gen = torch.Generator().manual_seed(1)
    draws = [noise_dose(embeds, mask, alpha, generator=gen) for _ in range(300)]
    expected = math.sqrt(4 * alpha**2 / 3 / (sum(lengths) * r**2))
    assert sum(d**2 for d in draws) / len(draws) == pytest.approx(expected**2, rel=0.05)
    # linear in alpha: the same draw at twice the alpha is twice the dose
    one = noise_dose(embeds, mask, alpha, generator=torch.Generator().manual_seed(2))
    two = noise_dose(embeds, mask, 2 * alpha, generator=torch.Generator().manual_seed(2))
    assert two == pytest.approx(2 * one, rel=1e-6)


def test_dose_table_gives_the_alpha_of_equal_dose():
    from neftlib.data.prepare import load_instructions
    from neftlib.training.dose import dose_table

    rows, _ = load_instructions("mini", limit=8)
    table = dose_table(["tiny-random", "tiny-random"], rows, 5.0, draws=3)
    assert table["alpha_for_same_dose"].tolist() == pytest.approx([5.0, 5.0])
    assert (table["noise_ratio"] > 0).all() and (table["tokens"] > 0).all()
