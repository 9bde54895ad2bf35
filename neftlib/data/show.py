"""What notebook 01 shows: one formatted example with its loss mask, what was dropped or cut, and what the
prepared data says, each computed from the files the stage wrote (results/<run>/data/)."""
from __future__ import annotations

import pandas as pd

from neftlib.base.config import RunConfig
from neftlib.base.io import read_json
from neftlib.base.run import load_prepared, stage_dir
from neftlib.data.prepare import IGNORE_INDEX


def masked_example(cfg: RunConfig, tokenizer, index: int = 0) -> str:
    """One prepared training example as Markdown: the prompt the model reads (label -100, no loss) and the
    response it learns (the only tokens in the loss), decoded from the token ids 01 wrote."""
    examples = load_prepared(cfg, "train")
    if not examples:
        raise ValueError(f"{stage_dir(cfg, 'data')} holds no training example to show")
    example = examples[index % len(examples)]
    ids, labels = example["input_ids"], example["labels"]
    prompt = [i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX]
    response = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    cut = "" if response and response[-1] == tokenizer.eos_token_id else \
        f" It was cut at max_length = {cfg.max_length}: no end-of-sequence token."
    return "\n".join([
        f"**Training example {index % len(examples)}** in the `{cfg.prompt_format}` prompt format, "
        f"{len(ids)} tokens.", "",
        f"*The prompt: {len(prompt)} tokens with label {IGNORE_INDEX}, read but never in the loss:*",
        "```text", tokenizer.decode(prompt), "```",
        f"*The response: {len(response)} tokens, the only ones in the loss, ending with the end-of-sequence "
        f"token `{tokenizer.eos_token}`.{cut}*",
        "```text", tokenizer.decode(response), "```"])


def losses_and_cuts(report: dict) -> pd.DataFrame:
    """What happened to the rows on their way to training: read, kept, held out, dropped (with the reason), cut."""
    rows = [("rows read from the source", report["rows_read"]),
            ("training examples kept", report["train_examples"]),
            ("held-out examples (same source, never trained on)", report["heldout_examples"]),
            ("examples of another set (cross-set loss)", report.get("other_examples", 0)),
            ("evaluation prompts", report["eval_prompts"])]
    rows += [(f"dropped: {why}", n) for why, n in report.get("dropped", {}).items()]
    rows += [(f"cut to max_length = {report['max_length']} tokens", report["truncated"]),
             ("longer than the paper's 512 tokens before cutting", report["longer_than_512"])]
    return pd.DataFrame(rows, columns=["what", "count"]).set_index("what")


def response_chars(cfg: RunConfig) -> float:
    """Mean length of the training responses in characters (the paper's Table 4 reports it per data set)."""
    rows = read_json(stage_dir(cfg, "data") / "train_rows.json")
    return sum(len(r["output"]) for r in rows) / max(1, len(rows))


def data_summary(cfg: RunConfig, paper_chars: float | None = None) -> str:
    """What this run's data shows, in a few computed sentences of Markdown."""
    report = read_json(stage_dir(cfg, "data") / "report.json")
    lengths = pd.read_csv(stage_dir(cfg, "data") / "lengths.csv")
    train = lengths[lengths["set"] == "train"]["tokens"]
    dropped = sum(report.get("dropped", {}).values())
    chars = response_chars(cfg)
    lines = [
        f"- **Data:** {report['train_examples']} training examples from `{_name(report['train_source'])}` "
        f"({report['rows_read']} rows read; {dropped} dropped"
        + (": " + "; ".join(f"{n} x {why}" for why, n in report["dropped"].items()) if dropped else "") + ").",
        f"- **Length:** the median example has {train.median():.0f} tokens (longest {train.max():.0f}); "
        f"{report['truncated']} of {len(train)} were cut to {report['max_length']} tokens"
        f" ({report['truncated'] / max(1, len(train)):.0%}).",
        f"- **Responses** average {chars:.0f} characters"
        + (f", against {paper_chars:.0f} for the paper's Alpaca training data (Table 4)." if paper_chars else "."),
        f"- **Evaluation:** {report['eval_prompts']} prompts from `{_name(report['eval_source'])}`; held-out loss on "
        f"{report['heldout_examples']} unseen rows of the same source"
        + (f" and on {report['other_examples']} rows of `{_name(report['other_source'])}`." if report.get(
            "other_examples") else "."),
    ]
    return "\n".join(lines)


def _name(path: str) -> str:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]
