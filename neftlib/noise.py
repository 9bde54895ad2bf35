"""NEFTune: uniform noise on input embeddings during fine-tuning (Jain et al. 2023).

The paper scales Uniform[-1, 1] noise by ``alpha / sqrt(L * d)`` with ``L`` the
example's own (unpadded) length. transformers' ``neftune_noise_alpha`` uses the
padded length ``T`` and also noises pad tokens; ``scaling="padded"`` reproduces that.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

__all__ = ["add_neftune_noise", "neftune", "NEFTuneHandle", "noise_seed", "noise_dose", "noise_state_name",
           "NEFTuneCallback"]

log = logging.getLogger(__name__)

_DISTRIBUTIONS = ("uniform", "gaussian")
_SCALINGS = ("per_example", "padded")
_MASK64 = (1 << 64) - 1


def _check_args(alpha: Any, distribution: str, scaling: str) -> float:
    """Validate the shared options; returns alpha as a float."""
    ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    if not ok or not math.isfinite(float(alpha)) or float(alpha) < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
    if scaling not in _SCALINGS:
        raise ValueError(f"scaling must be one of {_SCALINGS}, got {scaling!r}")
    return float(alpha)


def _segment_lengths(real: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Per position, the number of real tokens in its packed segment, shape (B, T)."""
    B, T = real.shape
    # A segment starts wherever positions restart at 0. Offsetting by row keeps segment
    # ids unique across the batch, so one scatter_add counts every segment at once.
    seg = (position_ids == 0).cumsum(dim=1)
    seg = seg + torch.arange(B, device=seg.device).unsqueeze(1) * (T + 1)
    counts = torch.zeros(B * (T + 1), device=real.device, dtype=torch.float32)
    counts.scatter_add_(0, seg.reshape(-1), real.reshape(-1))
    return counts[seg]


def _make_noise(
    embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], alpha: float, distribution: str,
    scaling: str, position_ids: Optional[torch.Tensor], generator: Optional[torch.Generator],
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Float32 noise of embeds' shape, plus the (B, T) real-token mask (None = all real)."""
    if embeds.dim() != 3 or not embeds.is_floating_point():
        raise ValueError(f"embeds must be a floating (B, T, d) tensor, got {embeds.dtype} {tuple(embeds.shape)}")
    if generator is not None and generator.device.type != embeds.device.type:
        raise ValueError(f"generator is on {generator.device} but embeds are on {embeds.device}")
    B, T, d = embeds.shape
    real = None  # (B, T) float32 mask of real tokens; None means all real
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask must have shape (B, T) = {(B, T)}, got {tuple(attention_mask.shape)}")
        real = (attention_mask != 0).to(device=embeds.device, dtype=torch.float32)
    if position_ids is not None:
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        if position_ids.dim() != 2 or position_ids.shape[1] != T or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids must have shape (B, T) = {(B, T)}, got {tuple(position_ids.shape)}")
        position_ids = position_ids.to(embeds.device).expand(B, T)

    # float32 draw so bf16/fp16 embeddings get properly distributed noise before the cast.
    noise = torch.empty(embeds.shape, device=embeds.device, dtype=torch.float32)
    if distribution == "uniform":
        noise.uniform_(-1.0, 1.0, generator=generator)
    else:
        noise.normal_(generator=generator)
    if scaling == "padded" or (real is None and position_ids is None):
        return noise.mul_(alpha / math.sqrt(T * d)), real

    counted = real if real is not None else torch.ones(B, T, device=embeds.device)
    lengths = counted.sum(1, keepdim=True) if position_ids is None else _segment_lengths(counted, position_ids)
    # All-pad rows/segments get zero noise through the mask; clamping only avoids 0/0.
    scale = lengths.clamp_min(1.0).mul_(d).rsqrt_().mul_(alpha)
    if real is not None:
        scale = scale * real
    noise.mul_(scale.expand(B, T).unsqueeze(-1))
    return noise, real


def add_neftune_noise(
    embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], alpha: float, *,
    distribution: str = "uniform", scaling: str = "per_example",
    position_ids: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Return a new tensor ``embeds + noise`` (the input is not modified).

    ``scaling="per_example"``: entries are ``alpha / sqrt(L_i * d) * eps`` on the real
    tokens of example (or packed segment, via ``position_ids``) ``i`` and 0 on pads.
    ``scaling="padded"``: ``alpha / sqrt(T * d) * eps`` everywhere, as transformers does.
    ``eps`` is Uniform[-1, 1] (variance 1/3, so E||noise||^2 = alpha^2 / 3 per example)
    or, with ``distribution="gaussian"``, N(0, 1) (E||noise||^2 = alpha^2, i.e. a norm
    about sqrt(3) times the uniform one at the same alpha).
    """
    alpha = _check_args(alpha, distribution, scaling)
    if alpha == 0.0:
        return embeds.clone()
    noise, _ = _make_noise(embeds, attention_mask, alpha, distribution, scaling, position_ids, generator)
    return embeds + noise.to(embeds.dtype)


@dataclass
class NEFTuneHandle:
    """What ``neftune()`` yields: settings, the noise generator and the last noise/embedding ratio."""

    alpha: float
    generator: torch.Generator
    distribution: str = "uniform"
    scaling: str = "per_example"
    _last_ratio: Any = field(default=None, repr=False)
    _ratio_sum: Any = field(default=None, repr=False)
    _ratio_count: int = field(default=0, repr=False)

    @property
    def last_ratio(self) -> Optional[float]:
        """||noise|| / ||embeds|| over real tokens of the last noised forward (None before one)."""
        # Kept as a tensor until read so training steps never wait on a device sync.
        r = self._last_ratio
        return float(r) if r is not None else None

    def pop_mean_ratio(self) -> Optional[float]:
        """Mean ratio over the noised forwards since the last call (None if there were none); resets it.

        One device sync per call: a trainer calls it at its logging steps, not per micro-batch."""
        if self._ratio_count == 0:
            return 0.0 if self.alpha == 0.0 else None
        mean = float(self._ratio_sum) / self._ratio_count
        self._ratio_sum, self._ratio_count = None, 0
        return mean

    def _record_ratio(self, ratio: torch.Tensor) -> None:
        self._last_ratio = ratio
        self._ratio_sum = ratio if self._ratio_sum is None else self._ratio_sum + ratio
        self._ratio_count += 1

    def rng_state(self) -> torch.Tensor:
        """Noise-generator state, for checkpointing."""
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore a state saved with ``rng_state()``."""
        self.generator.set_state(state)


class _NoiseHooks:
    """Pre-hook on the top model captures the batch mask; hook on the embedding adds noise."""

    def __init__(self, handle: NEFTuneHandle, top: nn.Module, log_ratio: bool) -> None:
        self.handle = handle
        self.log_ratio = log_ratio
        self.local = threading.local()  # DataParallel replicas run forwards in threads
        try:
            self.signature: Optional[inspect.Signature] = inspect.signature(top.forward)
        except (TypeError, ValueError):
            self.signature = None

    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if args and self.signature is not None and (mask is None or pos is None):
            try:
                bound = self.signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                bound = {}
            mask = mask if mask is not None else bound.get("attention_mask")
            pos = pos if pos is not None else bound.get("position_ids")
        self.local.ctx = (mask if torch.is_tensor(mask) else None, pos if torch.is_tensor(pos) else None)

    def release(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.local.ctx = None

    def noise(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> Optional[torch.Tensor]:
        h = self.handle
        if not module.training or h.alpha == 0.0:
            return None
        mask, pos = getattr(self.local, "ctx", None) or (None, None)
        if mask is not None and tuple(mask.shape) != tuple(output.shape[:2]):
            raise ValueError(
                f"attention_mask captured from the model call has shape {tuple(mask.shape)} but the "
                f"embeddings are {tuple(output.shape[:2])}; NEFTune noise is for training forwards "
                "(call model.eval() before generate)"
            )
        noise, real = _make_noise(output, mask, h.alpha, h.distribution, h.scaling, pos, h.generator)
        if self.log_ratio:
            h._record_ratio(_norm_ratio(noise, output, real))
        return output + noise.to(output.dtype)


@torch.no_grad()
def _norm_ratio(noise: torch.Tensor, embeds: torch.Tensor, real: Optional[torch.Tensor]) -> torch.Tensor:
    """||noise|| / ||embeds|| over the real tokens, as a 0-d tensor (no device sync)."""
    n2 = torch.linalg.vector_norm(noise, dim=-1).square()
    e2 = torch.linalg.vector_norm(embeds.detach(), dim=-1, dtype=torch.float32).square()
    if real is not None:
        n2, e2 = n2 * real, e2 * real
    return (n2.sum() / e2.sum().clamp_min(1e-30)).sqrt()


def noise_dose(
    embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], alpha: float, *, distribution: str = "uniform",
    scaling: str = "per_example", position_ids: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> float:
    """||noise|| / ||embeds|| over real tokens for one draw: what `alpha` means for these embeddings.

    The noise norm depends only on alpha and the lengths; the embedding norm is the model's own (Gemma, for
    one, scales its embeddings by sqrt(d) before any hook sees them), so the same alpha is a different dose
    on different models. The ratio is linear in alpha."""
    alpha = _check_args(alpha, distribution, scaling)
    noise, real = _make_noise(embeds, attention_mask, alpha, distribution, scaling, position_ids, generator)
    return float(_norm_ratio(noise, embeds, real))


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel / DeepSpeed keep the real model in `.module`; HF models have
    # get_input_embeddings themselves, so this never strips a legitimate submodule.
    while not hasattr(model, "get_input_embeddings") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _check_attachable(top: nn.Module, emb: nn.Module) -> None:
    hooks = list(emb._forward_hooks.values())
    builtin = getattr(emb, "neftune_noise_alpha", None) is not None
    builtin |= getattr(top, "neftune_noise_alpha", None) is not None
    builtin |= any(getattr(f, "__name__", "") == "neftune_post_forward_hook" for f in hooks)
    if builtin:
        raise RuntimeError(
            "transformers' built-in NEFTune (neftune_noise_alpha) is active on this model; the two "
            "would stack. Set TrainingArguments(neftune_noise_alpha=None) or use only one of them."
        )
    if any(isinstance(getattr(f, "__self__", None), _NoiseHooks) for f in hooks):
        raise RuntimeError(
            "NEFTune noise is already attached to this embedding; exit the existing `with neftune(...)` "
            "block (or call NEFTuneCallback.close()) before attaching again."
        )


@contextlib.contextmanager
def neftune(
    model: nn.Module, alpha: float, *, distribution: str = "uniform", scaling: str = "per_example",
    generator: Optional[torch.Generator] = None, seed: Optional[int] = None, log_ratio: bool = True,
) -> Iterator[NEFTuneHandle]:
    """Add NEFTune noise to ``model``'s input embeddings (train mode only) inside the block.

    The batch's ``attention_mask``/``position_ids`` are read from the model call, so pads
    stay clean and packed sequences use their own lengths. Noise comes from ``generator``
    (default: a new one seeded with ``seed``, default 0), never from the global RNG.
    """
    alpha = _check_args(alpha, distribution, scaling)
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    top = _unwrap(model)
    emb = top.get_input_embeddings()
    if not isinstance(emb, nn.Module):
        raise RuntimeError("model.get_input_embeddings() returned no module to attach NEFTune to")
    _check_attachable(top, emb)
    if generator is None:
        weight = getattr(emb, "weight", None)
        device = weight.device if torch.is_tensor(weight) else torch.device("cpu")
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))

    handle = NEFTuneHandle(alpha, generator, distribution, scaling, 0.0 if alpha == 0.0 else None)
    hooks = _NoiseHooks(handle, top, log_ratio)
    removables = [
        top.register_forward_pre_hook(hooks.capture, with_kwargs=True),
        top.register_forward_hook(hooks.release, always_call=True),
        emb.register_forward_hook(hooks.noise),
    ]
    try:
        yield handle
    finally:
        for r in removables:
            r.remove()
        hooks.local.ctx = None


def noise_seed(run_seed: int, rank: int = 0) -> int:
    """Seed for the noise generator: distinct per DDP rank and from ``run_seed`` itself."""
    # splitmix64 finaliser: a bijection on 64 bits, so distinct (seed, rank) inputs stay distinct.
    x = (int(run_seed) * 0x9E3779B97F4A7C15 + int(rank) + 0x4E454654) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    out = x & ((1 << 63) - 1)
    return out ^ 1 if out == run_seed else out


def _rank(args: Any) -> int:
    """This process's index among a launch's processes (0 alone), from TrainingArguments."""
    return getattr(args, "process_index", 0)


def noise_state_name(rank: int) -> str:
    """The file, inside a Trainer checkpoint, that holds process `rank`'s noise-generator state."""
    return f"noise_rng_state_{rank}.pth"


def _build_callback_class() -> type:
    from transformers import TrainerCallback

    class NEFTuneCallback(TrainerCallback):
        """Trainer callback: ``Trainer(..., callbacks=[NEFTuneCallback(5.0)])`` turns NEFTune on.

        Options are those of ``neftune()``; without ``seed``/``generator`` the noise is seeded
        from ``noise_seed(args.seed, args.process_index)``. ``self.handle`` exposes the handle.
        Works as is in TRL's ``SFTTrainer`` with packing / padding-free rows: each packed example's
        length comes from the ``position_ids`` the trainer passes to the model.

        Checkpoints carry the noise generator's state (``noise_rng_state_<rank>.pth``), so a run resumed from
        ``output_dir/checkpoint-N`` continues the noise stream where it stopped instead of repeating it.
        Each training log gets ``noise_ratio``, ||noise|| / ||embeddings|| over the real tokens averaged
        since the previous log: in ``state.log_history`` and for the callbacks after this one. Trainer calls
        its ``report_to`` integrations before the callbacks you pass, so for TensorBoard or W&B to record it,
        give ``report_to="none"`` and their callback after this one:
        ``callbacks=[NEFTuneCallback(5.0), TensorBoardCallback()]``.
        """

        def __init__(self, alpha: float, **options: Any) -> None:
            self.alpha = _check_args(alpha, options.get("distribution", "uniform"), options.get("scaling", "per_example"))
            self.options = options
            self.handle: Optional[NEFTuneHandle] = None
            self._stack: Optional[contextlib.ExitStack] = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if getattr(args, "neftune_noise_alpha", None) is not None:
                raise RuntimeError(
                    "TrainingArguments.neftune_noise_alpha is set and NEFTuneCallback is used; the two "
                    "would stack. Set neftune_noise_alpha=None."
                )
            self.close()  # a previous train() that raised never reached on_train_end
            opts = dict(self.options)
            if "seed" not in opts and "generator" not in opts:
                opts["seed"] = noise_seed(args.seed, _rank(args))
            stack = contextlib.ExitStack()
            self.handle = stack.enter_context(neftune(model, self.alpha, **opts))
            self._stack = stack
            if getattr(state, "global_step", 0) > 0:  # resumed: Trainer restored the checkpoint of this step
                self._resume(Path(args.output_dir) / f"checkpoint-{state.global_step}", _rank(args))

        def _resume(self, checkpoint: Path, rank: int) -> None:
            """Continue the noise stream saved in `checkpoint`; without that file it restarts from its seed (a warning)."""
            saved = checkpoint / noise_state_name(rank)
            if saved.is_file():
                self.handle.set_rng_state(torch.load(saved, weights_only=True))
            else:
                log.warning("resumed at step %s without %s: the NEFTune noise restarts from its seed", checkpoint.name,
                            saved)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            saved = folder / noise_state_name(_rank(args))
            # A trainer that writes it itself into the checkpoint (neftlib's, atomically) is left alone.
            if self.handle is not None and folder.is_dir() and not saved.exists():
                torch.save(self.handle.rng_state(), saved)

        def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
            # A training log only, and only once: a trainer that logs the ratio itself (neftlib's) already did.
            if logs is None or "loss" not in logs or "noise_ratio" in logs or self.handle is None:
                return
            ratio = self.handle.pop_mean_ratio()
            if ratio is None:
                return
            logs["noise_ratio"] = ratio
            last = state.log_history[-1] if state.log_history else {}
            if last.get("step") == state.global_step and "loss" in last:
                last["noise_ratio"] = ratio

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close()

        def close(self) -> None:
            """Detach the noise hooks (idempotent)."""
            if self._stack is not None:
                stack, self._stack = self._stack, None
                stack.close()

    # Present it as a top-level class of this module so it pickles and prints normally.
    NEFTuneCallback.__module__ = __name__
    NEFTuneCallback.__qualname__ = "NEFTuneCallback"
    return NEFTuneCallback


def __getattr__(name: str) -> Any:
    # Importing transformers' Trainer stack takes seconds; only pay it when the callback is used.
    if name == "NEFTuneCallback":
        cls = _build_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
