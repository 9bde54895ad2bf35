"""NEFTuneCallback under TRL's SFTTrainer with packing (padding-free rows): each packed example gets NEFTune's
noise for its own length; transformers' built-in neftune_noise_alpha scales by the whole row instead."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

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
