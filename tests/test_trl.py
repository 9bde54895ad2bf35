"""NEFTuneCallback under TRL's SFTTrainer with packing (padding-free rows): each packed example gets NEFTune's
noise for its own length; transformers' built-in neftune_noise_alpha scales by the whole row instead. Also
padding_free without packing, bfd_split, pad_to_multiple_of and wrapped packing, and a resumed SFTTrainer."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra: pip install '.[trl]' (make test installs it)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import trl_packing_noise as tpn  # noqa: E402  (bench/trl_packing_noise.py: the measurement itself)

ALPHA = 5.0
DRAWS = 100


def _sq_norm_se(scale_sq: float, entries: int, draws: int) -> float:
    """Standard error of the mean squared norm of `entries` Uniform[-s, s] values (Var(u^2) = 4/45 for s = 1)."""
    return scale_sq * math.sqrt(entries * 4 / 45 / draws)


def test_each_packed_example_gets_alpha_squared_over_three_whatever_its_length():
    result = tpn.measure(draws=DRAWS, alpha=ALPHA)
    d, total = result["hidden_size"], result["row_tokens"]
    lengths = [s["tokens"] for s in result["segments"]]
    assert len(lengths) == tpn.EXAMPLES and len(set(lengths)) == tpn.EXAMPLES  # 8 lengths in one row
    assert max(lengths) > 2.5 * min(lengths)
    for seg in result["segments"]:
        L = seg["tokens"]
        # neftlib: alpha / sqrt(L d) per entry, so E||noise||^2 = alpha^2 / 3 for every example
        se = _sq_norm_se(ALPHA**2 / (L * d), L * d, DRAWS)
        assert abs(seg["neftlib_sq_norm"] - ALPHA**2 / 3) < 6 * se, seg
        # built-in: alpha / sqrt(T d) with T the whole row, so alpha^2 / 3 * L / T
        se_b = _sq_norm_se(ALPHA**2 / (total * d), L * d, DRAWS)
        assert abs(seg["builtin_sq_norm"] - ALPHA**2 / 3 * L / total) < 6 * se_b, seg
        assert seg["shortfall_norm_factor"] == pytest.approx(math.sqrt(total / L), rel=0.03)
    print(f"\nbuilt-in neftune_noise_alpha under TRL packing: noise norm {result['shortfall_norm_factor_mean']:.2f}x "
          f"too weak on average (range {result['shortfall_norm_factor_range'][0]:.2f}-"
          f"{result['shortfall_norm_factor_range'][1]:.2f}) for {tpn.EXAMPLES} examples in a {total}-token row")


def test_callback_runs_unchanged_in_a_real_sft_training_step(tmp_path):
    from transformers import TrainerCallback

    from neftlib.noise import NEFTuneCallback

    seen = {}

    class Recorder(TrainerCallback):
        """After NEFTuneCallback in the list, so its embedding hook runs after the noise hook."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            emb = model.get_input_embeddings()
            model.register_forward_pre_hook(lambda m, a, k: seen.update(ids=k["input_ids"], pos=k["position_ids"]),
                                            with_kwargs=True)

            def look(module, inputs, output):
                if module.training and "noise" not in seen:
                    seen["noise"] = (output - module.weight[seen["ids"]]).detach().double()
            emb.register_forward_hook(look)

    callback = NEFTuneCallback(ALPHA)
    trainer = tpn.sft_trainer(str(tmp_path), callbacks=(callback, Recorder()), max_steps=1)
    assert trainer.padding_free  # TRL's default bfd packing: one flattened row, no attention mask
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    spans = tpn.segments(seen["pos"])
    assert len(spans) == tpn.EXAMPLES
    d = seen["noise"].shape[-1]
    for s, e in spans:  # one draw per example: 6 standard errors of a single squared norm
        L = e - s
        se = _sq_norm_se(ALPHA**2 / (L * d), L * d, 1)
        assert abs(seen["noise"][0, s:e].square().sum().item() - ALPHA**2 / 3) < 6 * se
        assert seen["noise"][0, s:e].abs().max() <= ALPHA / math.sqrt(L * d) * (1 + 1e-5)
    assert callback._stack is None  # the noise hooks were removed at the end of training
    assert callback.handle.last_ratio is not None and callback.handle.last_ratio > 0


def test_callback_refuses_to_stack_on_the_builtin(tmp_path):
    from neftlib.noise import NEFTuneCallback

    trainer = tpn.sft_trainer(str(tmp_path), callbacks=(NEFTuneCallback(ALPHA),), neftune_noise_alpha=ALPHA)
    with pytest.raises(RuntimeError, match="would stack"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before any step


# ---------- the other ways TRL lays out a batch ----------

def _noised_segments(tmp_path, **config) -> tuple[list[int], torch.Tensor, int, dict]:
    """(segment lengths, (draws, segments) squared noise norms, hidden size, the batch) for the first batch that
    SFTTrainer builds with `config`, noised by NEFTuneCallback as a training run attaches it."""
    from neftlib.noise import NEFTuneCallback

    trainer = tpn.sft_trainer(str(tmp_path), **config)
    batch = next(iter(trainer.get_train_dataloader()))
    callback = NEFTuneCallback(ALPHA)
    callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=trainer.model)
    try:
        sq = tpn.segment_sq_norms(trainer.model, batch, DRAWS)
    finally:
        callback.close()
    spans = tpn.segments(batch["position_ids"]) if "position_ids" in batch else [(0, batch["input_ids"].shape[1])]
    return [e - s for s, e in spans], sq, trainer.model.get_input_embeddings().embedding_dim, batch


def _each_gets_alpha_squared_over_three(lengths: list[int], sq: torch.Tensor, d: int) -> None:
    for i, L in enumerate(lengths):
        se = _sq_norm_se(ALPHA**2 / (L * d), L * d, DRAWS)
        assert abs(sq[:, i].mean().item() - ALPHA**2 / 3) < 6 * se, (i, L, sq[:, i].mean().item())


def test_padding_free_without_packing(tmp_path):
    """padding_free=True alone: the batch's examples flattened into one row, positions restarting per example."""
    lengths, sq, d, batch = _noised_segments(tmp_path, packing=False, padding_free=True, max_length=None,
                                             per_device_train_batch_size=tpn.EXAMPLES)
    assert "attention_mask" not in batch and len(lengths) == tpn.EXAMPLES
    _each_gets_alpha_squared_over_three(lengths, sq, d)


def test_bfd_split_noises_each_chunk_of_a_split_example_by_the_chunks_length(tmp_path):
    """bfd_split cuts an example longer than max_length into chunks that TRL packs as examples of their own
    (positions restart): each chunk gets NEFTune's alpha^2 / 3, scaled by its own length."""
    lengths, sq, d, _ = _noised_segments(tmp_path, packing_strategy="bfd_split", max_length=128,
                                         per_device_train_batch_size=tpn.EXAMPLES)
    assert max(lengths) == 128 and len(lengths) > tpn.EXAMPLES  # the long examples were split
    _each_gets_alpha_squared_over_three(lengths, sq, d)


def test_pad_to_multiple_of(tmp_path):
    """pad_to_multiple_of pads the padding-free row at its end; TRL gives every pad position 0, so each pad is a
    one-token sequence of its own: noised as one (alpha^2 / 3), outside the loss and seen by no real token.
    The real examples get exactly the noise they get without the padding."""
    lengths, sq, d, batch = _noised_segments(tmp_path, pad_to_multiple_of=64)
    real = tpn.EXAMPLES
    assert batch["input_ids"].shape[1] % 64 == 0 and lengths[real:] == [1] * (len(lengths) - real)
    assert (batch["labels"][0, sum(lengths[:real]):] == -100).all()
    _each_gets_alpha_squared_over_three(lengths, sq, d)


def test_wrapped_packing_has_no_boundaries(tmp_path):
    """`wrapped` concatenates examples and cuts the stream every max_length tokens, with no position_ids and an
    all-ones attention mask: the model sees each chunk as one sequence, and so does the noise. A chunk gets
    alpha^2 / 3 in all, scaled by the chunk's length, not by the lengths of the pieces of examples in it."""
    lengths, sq, d, batch = _noised_segments(tmp_path, packing_strategy="wrapped", max_length=128)
    assert "position_ids" not in batch and batch["attention_mask"].all() and lengths == [128]
    _each_gets_alpha_squared_over_three(lengths, sq, d)


def test_resumed_sft_trainer_continues_the_noise_stream(tmp_path):
    """A plain SFTTrainer resumed from a checkpoint draws the noise the uninterrupted run draws: the generator's
    state travels in the checkpoint (noise_rng_state_0.pth)."""
    from neftlib.noise import NEFTuneCallback

    whole = NEFTuneCallback(ALPHA)
    tpn.sft_trainer(str(tmp_path / "whole"), callbacks=(whole,), max_steps=2, save_strategy="steps",
                    save_steps=1).train()
    assert (tmp_path / "whole" / "checkpoint-1" / "noise_rng_state_0.pth").is_file()
    resumed = NEFTuneCallback(ALPHA)
    tpn.sft_trainer(str(tmp_path / "whole"), callbacks=(resumed,), max_steps=2, save_strategy="no").train(
        resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    assert torch.equal(resumed.handle.rng_state(), whole.handle.rng_state())
    fresh = NEFTuneCallback(ALPHA)  # what a resume without the saved state would draw: the first step's noise again
    tpn.sft_trainer(str(tmp_path / "fresh"), callbacks=(fresh,), max_steps=1).train()
    assert not torch.equal(fresh.handle.rng_state(), whole.handle.rng_state())
