"""Peak GPU memory of every stage of a profile, from the model's config alone, and what to change when a
stage does not fit: `python -m neftlib estimate --profile NAME [--gpu-memory GB]`.

Training stages (02, 03) use neftlib.training.memory.estimate_memory, the same estimate the training stage's own
check refuses a run with; generation, the local judge and lm-eval's OpenLLM tasks (04) add the KV cache
they keep and a forward pass to the weights they load.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from neftlib.base.config import RunConfig, qlora_config
from neftlib.base.recipes import load_config
from neftlib.evaluation.stage import JUDGE_USE_CACHE, judge_in_4bit
from neftlib.training.memory import CUDA_CONTEXT, NF4_BYTES, GiB, _lora_params, _model_shape, estimate_memory
from neftlib.training.models import DTYPES

FSDP_SIZES = (2, 4, 8, 16, 32, 64)  # GPUs tried for the FSDP advice
JUDGE_TEMPLATE = 100  # tokens of the judging prompt's own text, beside the instruction and both answers (judged whole)


def _gib(nbytes: float) -> float:
    return round(nbytes / GiB, 3)


def _fits(total: int, budget: int | None) -> bool | None:
    return None if budget is None else total <= budget


def inference_memory(cfg: RunConfig, *, batch: int, context: int, load_in_4bit: bool, adapters: bool,
                     kv_cache: bool, all_logits: bool) -> dict[str, int]:
    """Bytes of one inference process: weights (4-bit linear layers when asked, LoRA adapters in fp32), the
    KV cache for `batch` sequences of `context` tokens, one layer's activations and the logits."""
    config, model = _model_shape(cfg)
    n = sum(p.numel() for p in model.parameters())
    nbytes = DTYPES[cfg.precision].itemsize
    lora, linear = _lora_params(model, cfg)
    weights = linear * NF4_BYTES + nbytes * (n - linear) if load_in_4bit else nbytes * n
    if adapters:
        weights += 4 * lora
    layers, hidden = config.num_hidden_layers, config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_dim = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    kv = 2 * layers * batch * context * kv_dim * nbytes if kv_cache else 0
    # the prompt pass, one layer at a time: the gated MLP's three intermediates and a few hidden-size tensors
    activations = batch * context * (3 * inter + 4 * hidden) * nbytes
    # generate keeps the last position's logits (fp32, a few copies in the logits processors); a plain
    # forward (the judge) returns logits for every position
    positions = context if all_logits else 1
    logits = batch * positions * config.vocab_size * (nbytes + 4 * (0 if all_logits else 2))
    return {"weights": int(weights), "kv_cache": int(kv), "activations": int(activations), "logits": int(logits),
            "overhead": CUDA_CONTEXT}


def _training_stage(cfg: RunConfig, arms: tuple[str, ...], budget: int | None, gpus: int) -> dict[str, Any]:
    sharded = gpus > 1 and cfg.method == "full"
    est = estimate_memory(cfg, world=gpus, sharded=sharded, cuda=True)
    out: dict[str, Any] = {
        "arms": list(arms), "method": cfg.method, "precision": cfg.precision, "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum_for(gpus), "max_length": cfg.max_length,
        "gradient_checkpointing": cfg.gradient_checkpointing, "gpus": gpus, "fsdp": sharded,
        "parts_gib": est.as_gib(), "total_gib": _gib(est.total), "fits": _fits(est.total, budget)}
    if budget is not None and est.total > budget:
        out["what_to_change"] = training_advice(cfg, budget, gpus)
    return out


def training_advice(cfg: RunConfig, budget: int, gpus: int = 1, cuda: bool = True) -> list[dict[str, Any]]:
    """Changes that bring a training stage within `budget` bytes per GPU (`cuda`: counting the CUDA context),
    each with its estimate; a single entry saying none does when none of them is enough."""
    tried: list[dict[str, Any]] = []

    def consider(change: str, new: RunConfig, world: int = gpus, sharded: bool = False) -> None:
        try:
            total = estimate_memory(new, world=world, sharded=sharded, cuda=cuda).total
        except ValueError:  # an effective batch this many processes cannot reach
            return
        tried.append({"change": change, "total_gib": _gib(total), "fits": total <= budget})

    if cfg.method == "full":
        for n in (s for s in FSDP_SIZES if s > gpus):
            before = len(tried)
            consider(f"FSDP over {n} GPUs (configs/accelerate/fsdp_7b.yaml)", cfg, world=n, sharded=True)
            if len(tried) > before and tried[-1]["fits"]:
                break
        consider("method='qlora' (4-bit NF4 base with LoRA adapters)", qlora_config(cfg))
        consider("method='lora' (the base frozen in the compute precision)", dataclasses.replace(cfg, method="lora"))
    if not cfg.gradient_checkpointing:
        consider("gradient_checkpointing=True", dataclasses.replace(cfg, gradient_checkpointing=True))
    for batch in range(cfg.batch_size - 1, 0, -1):
        smaller = _smaller_batch(cfg, batch, gpus)
        if smaller is not None:
            consider(f"batch_size={batch} with grad accumulation {smaller.grad_accum_for(gpus)} (the same "
                     "examples per optimizer step)", smaller)
            if tried and tried[-1]["fits"]:
                break
    fitting = [t for t in tried if t["fits"]]
    if fitting:
        return fitting
    best = min(tried, key=lambda t: t["total_gib"]) if tried else None
    return [{"change": "none of FSDP, QLoRA, LoRA, gradient checkpointing or a smaller batch is enough alone",
             "fits": False, "closest": best}]


def _smaller_batch(cfg: RunConfig, batch: int, gpus: int) -> RunConfig | None:
    """cfg at micro-batch `batch` with the accumulation that keeps its effective batch; None when it cannot."""
    if cfg.effective_batch is not None:
        if cfg.effective_batch % (batch * gpus):
            return None
        return dataclasses.replace(cfg, batch_size=batch)
    total = cfg.batch_size * cfg.grad_accum
    if total % batch:
        return None
    return dataclasses.replace(cfg, batch_size=batch, grad_accum=total // batch)


def _generation_stage(cfg: RunConfig, budget: int | None) -> dict[str, Any]:
    """04's answers: each trained arm's model (the 4-bit base and adapters for QLoRA arms) generating
    gen_batch_size answers at a time, prompts taken as long as max_length (the worst case)."""
    context = cfg.max_length + cfg.gen_max_new_tokens
    parts = inference_memory(cfg, batch=cfg.gen_batch_size, context=context, load_in_4bit=cfg.load_in_4bit,
                             adapters=cfg.method != "full", kv_cache=True, all_logits=False)
    total = sum(parts.values())
    out: dict[str, Any] = {"model": cfg.model, "precision": cfg.precision, "load_in_4bit": cfg.load_in_4bit,
                           "gen_batch_size": cfg.gen_batch_size, "context_tokens": context,
                           "parts_gib": {**{k: _gib(v) for k, v in parts.items()}, "total": _gib(total)},
                           "total_gib": _gib(total), "fits": _fits(total, budget)}
    if budget is not None and total > budget:
        fixed = parts["weights"] + parts["overhead"]
        per_answer = (total - fixed) / cfg.gen_batch_size  # the KV cache, activations and logits grow with the batch
        batch = int((budget - fixed) // per_answer) if budget > fixed else 0
        if batch >= 1:
            out["what_to_change"] = [{"change": f"gen_batch_size={min(batch, cfg.gen_batch_size - 1)}",
                                      "total_gib": _gib(fixed + per_answer * batch), "fits": True}]
        else:
            out["what_to_change"] = [{"change": "the weights alone do not fit: train with method='qlora' "
                                      "(answers then come from the 4-bit base)", "fits": False}]
    return out


def _judge_stage(cfg: RunConfig, budget: int | None) -> dict[str, Any]:
    """04's local judge: neftlib.evaluation.stage.make_judge's model (4-bit when it is a QLoRA run's own base)."""
    if cfg.judge != "local":
        why = "answers only, no win rate" if cfg.judge == "none" else "an API endpoint judges: no GPU memory here"
        return {"judge": cfg.judge, "skipped": why, "total_gib": 0.0, "fits": None if budget is None else True}
    name = cfg.judge_model or cfg.model
    judge_cfg = dataclasses.replace(cfg, model=name)
    four_bit = judge_in_4bit(cfg)
    context = cfg.max_length + cfg.gen_max_new_tokens + cfg.gen_max_new_tokens + JUDGE_TEMPLATE
    # the judge's forwards keep a KV cache only if make_judge leaves use_cache on (it turns it off)
    parts = inference_memory(judge_cfg, batch=4, context=context, load_in_4bit=four_bit,
                             adapters=False, kv_cache=JUDGE_USE_CACHE, all_logits=True)
    total = sum(parts.values())
    out: dict[str, Any] = {"judge": f"local:{name}", "precision": cfg.precision, "load_in_4bit": four_bit,
                           "batch": 4, "context_tokens": context,
                           "parts_gib": {**{k: _gib(v) for k, v in parts.items()}, "total": _gib(total)},
                           "total_gib": _gib(total), "fits": _fits(total, budget)}
    if budget is not None and total > budget:
        out["what_to_change"] = [
            {"change": "judge='openai' with NEFTLIB_JUDGE_API_KEY set (GPT-4 as in the paper)", "fits": True},
            {"change": "judge='none' (answers, lengths and diversity without a win rate)", "fits": True},
            {"change": "judge_model=<a smaller local model>", "fits": None}]
    return out


def _openllm_stage(cfg: RunConfig, budget: int | None) -> dict[str, Any]:
    """04's OpenLLM tasks: lm-eval scores each trained arm (as load_trained loads it: no KV cache) on few-shot
    contexts up to the model's whole context, openllm_batch_size at a time, with the log-softmax of every
    position's logits beside the logits themselves."""
    if not cfg.openllm_tasks:
        return {"skipped": "the profile scores no OpenLLM task", "total_gib": 0.0,
                "fits": None if budget is None else True}
    config, _ = _model_shape(cfg)
    # lm-eval truncates a request to the model's maximum length, read from the same config field
    context = getattr(config, "max_position_embeddings", None) or 2048
    batch = cfg.openllm_batch_size
    parts = inference_memory(cfg, batch=batch, context=context, load_in_4bit=cfg.load_in_4bit,
                             adapters=cfg.method != "full", kv_cache=False, all_logits=True)
    parts["logits"] *= 2  # lm-eval's log_softmax of the logits, in the same dtype
    total = sum(parts.values())
    out: dict[str, Any] = {"tasks": cfg.openllm_tasks, "openllm_batch_size": batch, "context_tokens": context,
                           "parts_gib": {**{k: _gib(v) for k, v in parts.items()}, "total": _gib(total)},
                           "total_gib": _gib(total), "fits": _fits(total, budget)}
    if budget is not None and total > budget:
        fixed = parts["weights"] + parts["overhead"]
        per_sequence = (total - fixed) / batch
        fits = int((budget - fixed) // per_sequence) if budget > fixed else 0
        out["what_to_change"] = [
            {"change": f"openllm_batch_size={min(fits, batch - 1)}", "total_gib": _gib(fixed + per_sequence * fits),
             "fits": True} if fits >= 1 else
            {"change": "the weights alone do not fit: openllm_tasks='' (skip the OpenLLM tasks)", "fits": False}]
    return out


def estimate_profile(profile: str, *, gpu_memory_gib: float | None = None, gpus: int = 1,
                     **overrides: Any) -> dict[str, Any]:
    """Each stage's peak memory per GPU for `profile`, whether it fits `gpu_memory_gib`, and what to change."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if gpu_memory_gib is not None and gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory must be a positive number of GB, got {gpu_memory_gib}")
    cfg = load_config(profile, **overrides)
    budget = None if gpu_memory_gib is None else int(gpu_memory_gib * GiB)
    stages: dict[str, Any] = {"02_train": _training_stage(cfg, cfg.arms, budget, gpus)}
    q = qlora_config(cfg)
    if q.qlora_arms:
        stages["03_qlora"] = _training_stage(q, q.qlora_arms, budget, gpus)
    else:
        why = "its training stage (02) is QLoRA already" if cfg.method == "qlora" else "the profile skips it"
        stages["03_qlora"] = {"arms": [], "skipped": f"no QLoRA arms: {why}", "total_gib": 0.0,
                              "fits": None if budget is None else True}
    # 04 generates with every trained arm: the full model of 02 and, when 03 trains, the 4-bit base of 03
    gens = [cfg] + ([q] if q.qlora_arms else [])
    generation = [_generation_stage(c, budget) for c in gens]
    stages["04_generation"] = max(generation, key=lambda g: g["total_gib"])
    stages["04_judge"] = _judge_stage(cfg, budget)
    # lm-eval scores the arms of 02 and of 03 (the 4-bit base with adapters): the bigger of the two
    stages["04_openllm"] = max((_openllm_stage(c, budget) for c in gens), key=lambda g: g["total_gib"])
    peak = max(s["total_gib"] for s in stages.values())
    verdicts = [s["fits"] for s in stages.values() if s["fits"] is not None]
    return {"profile": profile, "model": cfg.model, "gpus": gpus, "gpu_memory_gib": gpu_memory_gib,
            "stages": stages, "peak_gib": peak, "fits": all(verdicts) if budget is not None else None,
            "note": "GiB per GPU from the model's config alone, at max_length (the longest batch); the "
                    f"overhead is {_gib(CUDA_CONTEXT)} GiB of CUDA context and allocator slack"}
