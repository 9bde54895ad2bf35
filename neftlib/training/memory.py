"""Peak training memory from a model's config alone (weights, gradients, optimizer, activations), and the
check that refuses a run before anything is loaded when it clearly cannot fit."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from neftlib.base.config import RunConfig
from neftlib.training.models import DTYPES, model_config

GiB = 2**30
# Bytes per parameter of a bitsandbytes NF4 linear layer with double quantization: 4 bits, plus one fp8
# absmax per 64 weights and an fp32 constant per 256 of those (QLoRA paper, section 3).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Activation elements kept for the backward pass, per token and decoder layer, in units of the hidden
# size: the inputs of both norms and of q/k/v/o (6 h) and the gated MLP's four tensors (4 x intermediate).
# SDPA keeps no attention matrix, only its output and log-sum-exp.
ATTN_KEPT = 6
MLP_KEPT = 4
CUDA_CONTEXT = int(0.6 * GiB)  # CUDA context, cuBLAS workspace and allocator slack, measured order of magnitude


# Optimizer state bytes per trainable parameter: AdamW's two fp32 moments, or two 8-bit ones (bitsandbytes'
# 8-bit and paged optimizers, with a small fp32 scale per block of 256).
ADAM_STATE_BYTES = 8
ADAM_8BIT_STATE_BYTES = 2 + 8 / 256
# Optimizers whose step runs one fused kernel per tensor, with no temporary; transformers' other torch AdamW
# ("adamw_torch") takes torch's foreach path on a GPU, see optimizer_step_bytes.
FUSED_OPTIMIZERS = ("adamw_torch_fused",)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training process, by part.

    Two parts never coexist: the forward's peak (activations, logits, and autocast's low-precision copies of
    the weights, kept until the forward ends) and the optimizer step's temporary (after the backward has
    freed the activations). The total counts the larger of the two.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    autocast_cache: int = 0
    optimizer_step: int = 0

    @property
    def forward_peak(self) -> int:
        """What the forward adds on top of weights, gradients and optimizer states."""
        return self.activations + self.logits + self.autocast_cache

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.overhead
                + max(self.forward_peak, self.optimizer_step))

    def as_gib(self) -> dict[str, float]:
        """Each part and the total in GiB, for printing."""
        return {k: round(v / GiB, 3) for k, v in {**asdict(self), "total": self.total}.items()}


def optimizer_state_bytes(optim: str) -> float:
    """Bytes of optimizer state per trainable parameter for transformers' optimizer name `optim`."""
    return ADAM_8BIT_STATE_BYTES if "8bit" in optim else ADAM_STATE_BYTES


def optimizer_step_bytes(optim: str, *, cuda: bool) -> int:
    """Bytes per trainable parameter that one optimizer step allocates for a moment.

    torch's AdamW runs its foreach implementation on a GPU: the step builds sqrt(second moment) for every
    parameter at once, an fp32 temporary as big as all trainable weights (25 GiB for a 7B full fine-tune).
    On a CPU it steps one tensor at a time; the fused kernel and bitsandbytes' optimizers step in place.
    """
    if not cuda or optim in FUSED_OPTIMIZERS or "8bit" in optim or not optim.startswith("adamw"):
        return 0
    return 4


def _model_shape(cfg: RunConfig):
    config = Path(cfg.model).expanduser() / "config.json"
    # a local folder's config may be rewritten (a test saving another model there): its time is part of the key
    return _meta_model(cfg.model, config.stat().st_mtime_ns if config.is_file() else None)


@functools.lru_cache(maxsize=8)
def _meta_model(name: str, stamp: int | None = None):
    """A model's config and its parameters on the meta device (no memory, no weights): kept, since the
    estimate of a profile asks for the same model many times."""
    from transformers import AutoModelForCausalLM

    config = model_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def _lora_params(model, cfg: RunConfig) -> tuple[int, int]:
    """(LoRA adapter parameters, parameters of the linear layers that get them)."""
    targets = set(cfg.lora_targets)
    adapters = linear = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            adapters += cfg.lora_r * (module.in_features + module.out_features)
            linear += module.weight.numel()
    return adapters, linear


def _matmul_weights(model) -> int:
    """Parameters of every linear layer, the output head included (a tied head once): what autocast casts."""
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(weights.values())


def estimate_memory(cfg: RunConfig, *, world: int = 1, sharded: bool = False, cuda: bool = False) -> MemoryEstimate:
    """Peak memory of one process training `cfg` (at max_length, the worst case), from the config alone.

    `sharded`: FSDP full-shard over `world` processes (weights, optimizer and, without accumulation,
    gradients split; under gradient accumulation FSDP keeps each micro-batch's gradients unsharded).
    """
    config, model = _model_shape(cfg)
    n = sum(p.numel() for p in model.parameters())
    compute_bytes = DTYPES[cfg.precision].itemsize
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * hidden)
    if cfg.method == "full":
        # fp32 master weights and gradients, AdamW's two fp32 moments, whatever the compute precision
        weights, trainable, grads = 4 * n, n, 4 * n
        # autocast caches its low-precision copy of each fp32 weight it multiplies until the forward ends
        # (FSDP's mixed precision gathers weights in bf16 already, one unit at a time: nothing to cache)
        cast = _matmul_weights(model) if cfg.precision != "fp32" and not sharded else 0
    else:
        adapters, linear = _lora_params(model, cfg)
        if cfg.method == "qlora":
            # prepare_model_for_kbit_training casts what is not quantized (embeddings, head, norms) to fp32
            weights = int(linear * NF4_BYTES) + 4 * (n - linear)
        else:
            weights = compute_bytes * n
        weights += 4 * adapters  # peft keeps adapters in fp32
        trainable, grads = adapters, 4 * adapters
        cast = adapters if cfg.precision != "fp32" else 0  # the frozen base is in the compute dtype already
    optimizer = int(optimizer_state_bytes(cfg.optim) * trainable)
    step = optimizer_step_bytes(cfg.optim, cuda=cuda) * trainable
    shards = world if sharded else 1
    if sharded:
        weights, optimizer, step = weights // shards, optimizer // shards, step // shards
        if cfg.grad_accum_for(world) == 1:
            grads //= shards
    tokens = cfg.batch_size * cfg.max_length
    per_layer = (ATTN_KEPT * hidden + MLP_KEPT * inter) * compute_bytes
    if cfg.gradient_checkpointing:
        # only each layer's input is kept; one layer's activations exist again during its recompute
        activations = tokens * (layers * hidden * compute_bytes + per_layer)
    else:
        activations = tokens * layers * per_layer
    # fp32 logits, their softmax and its gradient over the vocabulary
    logits = 3 * tokens * config.vocab_size * 4
    return MemoryEstimate(weights=int(weights), gradients=int(grads), optimizer=int(optimizer),
                          activations=int(activations), logits=int(logits), overhead=CUDA_CONTEXT if cuda else 0,
                          autocast_cache=int(cast * compute_bytes), optimizer_step=int(step))


def available_bytes(device: torch.device | None = None) -> tuple[int, str]:
    """Memory a new run can use: free GPU memory plus what PyTorch's caching allocator holds unused, or free RAM."""
    import psutil

    if torch.cuda.is_available():
        # This rank's own GPU: asking the default one would open a context on GPU 0 from every rank.
        index = device if device is not None and device.type == "cuda" else None
        free = torch.cuda.mem_get_info(index)[0]
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return free + cached, "GPU"
    return psutil.virtual_memory().available, "RAM"


def held_bytes(device: torch.device | None = None) -> int:
    """GPU memory this process's tensors hold now (0 on a CPU): before a run starts, what earlier models left."""
    if not torch.cuda.is_available():
        return 0
    return torch.cuda.memory_allocated(device if device is not None and device.type == "cuda" else None)


# Below this, what a process holds before training is its own small tensors, not a model left behind.
HELD_NOTICE = GiB // 2


def check_fits(cfg: RunConfig, device: torch.device | None = None, *, world: int = 1, sharded: bool = False) -> None:
    """Refuse before loading anything when the run clearly cannot fit this process's memory."""
    estimate = estimate_memory(cfg, world=world, sharded=sharded, cuda=torch.cuda.is_available())
    have, where = available_bytes(device)
    if estimate.total > have:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate.as_gib().items() if k != "total")
        held = held_bytes(device)
        # memory an earlier model of this process still holds: the fix is to let go of it, not a smaller run
        first = (f"This process already holds {held / GiB:.1f} GiB of GPU memory: a model of an earlier arm or stage "
                 "is still referenced (a notebook variable, an exception's traceback); delete it or restart the "
                 "kernel, then rerun. Otherwise use" if held >= HELD_NOTICE else "Use")
        raise MemoryError(
            f"model {cfg.model!r} with method={cfg.method!r}, batch_size={cfg.batch_size}, max_length={cfg.max_length} "
            f"needs about {estimate.total / GiB:.1f} GiB to train ({parts} GiB); {where} has {have / GiB:.1f} GiB "
            f"free. {first} method='qlora' or 'lora', gradient_checkpointing=True, a smaller batch_size "
            "(effective_batch keeps the batch the optimizer sees), a bigger device, or FSDP over several GPUs "
            "(configs/accelerate/fsdp_7b.yaml)."
        )
