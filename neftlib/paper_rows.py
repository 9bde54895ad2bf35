"""The paper's side of paper_vs_ours.csv: one row per published number pair (before -> after NEFTune), each
naming its table, model, data, judge and alpha, and a `slot` saying which of our measurements belongs
beside it (neftlib.report fills those in)."""
from __future__ import annotations

import re

from neftlib.paper import JUDGES, cell, is_approximate, table, table_judge, table_name

T1, T2, T3 = "table1_llama2_7b_gpt4", "table2_chat_and_larger_models_gpt4", "table3_qlora_chatgpt"
T4, T5, T6 = "table4_length_and_diversity", "table5_prompting_for_length_llama1_gpt4", "table6_noise_type_and_level_chatgpt"
T14, F3 = "table14_epochs_chatgpt", "figure3_openllm"
# Table 4's metrics: (row prefix, metric in words, our arm-table column, scale key for non-judged numbers)
T4_METRICS = (("char_length", "answer length (characters)", "avg_chars"),
              ("whitespace_length", "answer length (whitespace tokens)", "avg_tokens"),
              ("rep2_percent", "2-gram repetition (%)", "rep_2"),
              ("log_diversity", "log-diversity (release code, per answer: Table 4's scale)", "log_diversity_release"))
OPENLLM_TASKS = {"ARC": "arc", "HellaSwag": "hellaswag", "MMLU": "mmlu", "TruthfulQA": "truthfulqa"}


def _row(key: str, claim: str, topic: str, metric: str, model: str, data: str, alpha, before, after,
         slot: tuple, **extra) -> dict:
    scale = table_judge(key) if "win rate" in metric else ("lm-eval" if key == F3 else "none")
    return {"claim_id": claim, "topic": topic, "metric": metric, "paper_table": table_name(key),
            "paper_source": f"{table_name(key)}{' (approximate chart reading)' if is_approximate(key) else ''}",
            "paper_model": model, "paper_data": data, "paper_judge": JUDGES[scale], "paper_judge_scale": scale,
            "paper_alpha": alpha, "paper_before": before, "paper_after": after,
            "paper_change": None if before is None or after is None else round(after - before, 2),
            "approximate": is_approximate(key), "slot": slot, **extra}


def _win_rows() -> list[dict]:
    rows = []
    t1 = table(T1)
    for data in t1["columns"]:
        rows.append(_row(T1, "win_rate_up", "AlpacaEval win rate", f"win rate (%), {data}", "LLaMA-2-7B, full fine-tune",
                         data, t1["alpha"].get(data, "per data set"), cell(T1, "LLaMA-2 7B", data),
                         cell(T1, "+NEFT", data), ("win_rate_up", data), paper_scale="7B, 805 AlpacaEval prompts"))
    t2 = table(T2)
    for model in t2["columns"]:
        rows.append(_row(T2, "chat_gain", "Chat and larger models", f"win rate (%), {model}",
                         f"{model}, full fine-tune", "Evol-Instruct", t2["alpha"][model], cell(T2, "Evol-Instruct", model),
                         cell(T2, "+NEFT", model), ("chat_gain", model)))
    for name, before in t2["footnote_rows"].items():
        chat = "LLaMA-2-Chat (7B)"
        rows.append(_row(T2, "chat_gain", "Chat and larger models", "win rate (%), LLaMA-2-Chat-7B as released -> "
                         "+NEFT on Evol-Instruct", name, "Evol-Instruct", t2["alpha"][chat], before,
                         cell(T2, "+NEFT", chat), ("published", "chat", "win rate")))
    for column in table(T3)["columns"]:
        family, size, data = re.match(r"LLaMA(\d)\((\d+B)\) (.+)", column).groups()
        data = {"Evolve70k": "Evol-Instruct"}.get(data, data)
        for alpha in (5, 10, 15):
            rows.append(_row(T3, "qlora", "QLoRA", f"QLoRA win rate (%), {column}, alpha {alpha}",
                             f"LLaMA-{family}-{size}, QLoRA, one epoch", data, alpha, cell(T3, "Base", column),
                             cell(T3, f"+NEFT (alpha={alpha})", column), ("qlora", data, alpha, size)))
    return rows


def _length_rows() -> list[dict]:
    rows = []
    for column in table(T4)["columns"]:
        data, alpha = re.match(r"(.+) \(alpha=(\d+)\)", column).groups()
        rows.append(_row(T4, "length_diversity", "Length and diversity", "training data answer length (characters)",
                         "the training set's own answers", data, None, None,
                         cell(T4, "char_length.training_data", column), ("none",)))
        for prefix, words, _ in T4_METRICS:
            rows.append(_row(T4, "length_diversity", "Length and diversity", f"{words}, {data}", "LLaMA-2-7B",
                             data, int(alpha), cell(T4, f"{prefix}.LLaMA-2 7B", column),
                             cell(T4, f"{prefix}.+NEFT", column), ("length_diversity", data, prefix)))
    base = "Alpaca-7B"
    for variant in table(T5)["rows"]:
        if variant == base:
            continue
        slot = ("published", "alpaca") if variant == "Alpaca-7B-NEFT" else ("length_only", variant)
        for column, words in (("win_rate", "win rate (%)"), ("avg_char_length", "answer length (characters)")):
            rows.append(_row(T5, "length_diversity", "Length is (not) all you need", f"{words}, {base} -> {variant}",
                             "LLaMA-1-7B", "Alpaca", 5 if "NEFT" in variant else 0, cell(T5, base, column),
                             cell(T5, variant, column), (*slot, words.split(" (")[0])))
    return rows


def _noise_rows() -> list[dict]:
    rows = []
    for data in ("Alpaca", "Evol-Instruct", "OpenPlatypus"):
        for column, words in ((f"{data} win", "win rate (%)"), (f"{data} chars", "answer length (characters)")):
            kind = words.split(" (")[0]
            for alpha in (5, 10, 15):
                rows.append(_row(T6, "alpha", "Noise level (alpha)", f"{words}, {data}, uniform alpha {alpha}",
                                 "LLaMA-2-7B", data, alpha, cell(T6, "LLaMA-2-7b", column),
                                 cell(T6, f"+Uniform Noise {alpha}", column), ("alpha", data, alpha, kind)))
            rows.append(_row(T6, "gaussian", "Gaussian vs uniform noise", f"{words}, {data}, uniform 5 -> Gaussian 5",
                             "LLaMA-2-7B", data, 5, cell(T6, "+Uniform Noise 5", column),
                             cell(T6, "+Gaussian Noise 5", column), ("gaussian", data, kind)))
    for epochs in table(T14)["rows"]:
        rows.append(_row(T14, "epochs", "Epochs", f"win rate (%), {epochs} epoch(s)", "LLaMA-2-7B", "Alpaca", 5,
                         cell(T14, epochs, "Base"), cell(T14, epochs, "+NEFT"), ("epochs", int(epochs))))
    return rows


def _openllm_rows() -> list[dict]:
    rows = []
    chart = table(F3)
    for model, pairs in chart["rows"].items():
        name, data = re.match(r"(.+) \((.+)\)", model).groups()
        for task, (before, after) in zip(chart["columns"], pairs):
            rows.append(_row(F3, "openllm_flat", "OpenLLM tasks", f"{task} accuracy (%), {model}", name, data, None,
                             before, after, ("openllm_flat", data, name, OPENLLM_TASKS[task])))
    return rows


def paper_rows() -> list[dict]:
    """Every paper row of paper_vs_ours.csv, before any of ours is set beside it."""
    return _win_rows() + _length_rows() + _noise_rows() + _openllm_rows()
