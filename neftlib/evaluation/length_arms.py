"""The paper's "length is (not) all you need" (Section 5, Table 5) at our scale: generation-time arms of the
baseline model, no training.

The paper asks whether simply making the baseline write more recovers NEFTune's gain. It prompts Alpaca-7B
with three meta-prompts asking for longer answers, and in a fourth arm blocks the end-of-sequence token
until 250 new tokens are written; none comes close to NEFTune (Table 5, GPT-4 judge). Here the same four
arms answer the run's evaluation prompts with the run's baseline model (the train stage's alpha-0 arm):

  prompt-long, prompt-comprehensive, prompt-long-comprehensive
      the paper's meta-prompt appended to the instruction, on a line of its own (the paper quotes the
      meta-prompts but not where it put them; appending keeps the prompt template unchanged);
  min-new-tokens
      transformers' `min_new_tokens`: EOS is blocked until that many new tokens. The paper's 250 came with
      its code's generation limit of 1,024 tokens; the minimum here is that share of the profile's cap
      (`min_new_tokens`), i.e. 250 at gpu-7b's cap of 1,024.
  min-new-tokens-paper
      the paper's own minimum of 250 new tokens, as far as the profile's cap allows: under a cap of 250 or
      less every answer runs to the cap. The share-of-cap arm above forces far shorter answers than the
      paper's (31 tokens under a cap of 128); this one forces answers as long as the cap lets them be, the
      nearest a small profile comes to the paper's 1,111-character answers.

Answers are saved as eval/length-<arm>/model_outputs.json with the original instruction, so the judge
sees the same question as for every other arm; <name>_lengths.json records the meta-prompt and minimum.
"""
from __future__ import annotations

from neftlib.base.config import RunConfig, base_arm
from neftlib.base.io import is_done, read_json, write_json
from neftlib.base.profiles import LENGTH_ARMS
from neftlib.base.run import LENGTH_STAGE, stage_dir
from neftlib.evaluation.generate import cap_record, eval_prompts, generate_with_lengths, model_outputs
from neftlib.training.train import load_trained

META_PROMPTS = {  # the paper's wording (Table 5)
    "prompt-long": "Generate a long response",
    "prompt-comprehensive": "Generate a comprehensive response",
    "prompt-long-comprehensive": "Generate a long and comprehensive response",
}
PAPER_MIN_NEW_TOKENS = 250  # Table 5's "Min New Tokens" arm
PAPER_GENERATION_LIMIT = 1024  # the NEFTune code's generate(max_length=1024)


def min_new_tokens(gen_max_new_tokens: int, arm: str = "min-new-tokens") -> int:
    """The minimum of new tokens of a min-new-tokens arm: the paper's 250 of 1,024 scaled to the cap
    ('min-new-tokens', at least 1) or the paper's 250 bounded by the cap ('min-new-tokens-paper')."""
    if arm == "min-new-tokens-paper":
        return min(PAPER_MIN_NEW_TOKENS, gen_max_new_tokens)
    return max(1, round(gen_max_new_tokens * PAPER_MIN_NEW_TOKENS / PAPER_GENERATION_LIMIT))


def generation_of(cfg: RunConfig, arm: str) -> dict:
    """How an arm's answers are generated: its meta-prompt, its minimum of new tokens and the model it prompts."""
    if arm not in LENGTH_ARMS:
        raise ValueError(f"length arm {arm!r} is not one of {', '.join(LENGTH_ARMS)}")
    return {"meta_prompt": META_PROMPTS.get(arm, ""),
            "min_new_tokens": min_new_tokens(cfg.gen_max_new_tokens, arm) if arm.startswith("min-new-tokens") else 0,
            "base_arm": f"train-{base_arm(cfg)}"}


def prompted_rows(rows: list[dict], meta_prompt: str) -> list[dict]:
    """The evaluation rows with the meta-prompt appended to each instruction (unchanged when it is empty)."""
    if not meta_prompt:
        return rows
    return [{**r, "instruction": f"{r['instruction']}\n{meta_prompt}"} for r in rows]


def length_arm_outputs(cfg: RunConfig, arm: str, rows: list[dict], tok, progress: bool = True) -> list[dict]:
    """Generate (or reuse) a length arm's answers with the baseline model -> eval/length-<arm>/model_outputs.json,
    with tokens per answer, the cap share, the meta-prompt and the minimum in model_outputs_lengths.json."""
    out = stage_dir(cfg, "eval") / f"{LENGTH_STAGE}-{arm}" / "model_outputs.json"
    if out.exists():
        return read_json(out)
    how = generation_of(cfg, arm)
    folder = stage_dir(cfg, "train") / base_arm(cfg)
    if not is_done(folder):
        raise FileNotFoundError(f"{folder} is not trained: the length arms prompt the baseline model; run 02 first")
    model = load_trained(cfg, folder)
    answers, new_tokens = generate_with_lengths(
        model, tok, eval_prompts(prompted_rows(rows, how["meta_prompt"]), cfg.prompt_format, tok),
        max_new_tokens=cfg.gen_max_new_tokens, min_new_tokens=how["min_new_tokens"], batch_size=cfg.gen_batch_size,
        repetition_penalty=cfg.repetition_penalty, progress=progress, desc=f"{LENGTH_STAGE}-{arm}")
    # the original instructions, not the prompted ones
    outputs = model_outputs(rows, answers, generator=f"{cfg.run_name}-{LENGTH_STAGE}-{arm}")
    write_json(out.with_name("model_outputs_lengths.json"),
               {**cap_record(new_tokens, cfg.gen_max_new_tokens), **how})
    write_json(out, outputs)  # last: its presence means both files are complete
    return outputs
