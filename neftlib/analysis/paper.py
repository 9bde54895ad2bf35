"""What the paper reports: Jain et al., "NEFTune: Noisy Embeddings Improve Instruction Finetuning" (ICLR 2024,
arXiv:2310.05914).

Every numeric table of the paper lives in one file, `neftlib/analysis/paper_tables.json`, copied as printed; chart
readings of Figures 2 and 3 are marked approximate. Each table records which judge scored it: GPT-4 and
ChatGPT win rates are different scales and are never set beside each other as one. Everything else here
(Figure 1, the statements per claim) is read from that file.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

PAPER = "Jain et al. 2024 (NEFTune, ICLR)"
TABLES_FILE = "paper_tables.json"

# The judge of each scale, in words. 'gpt4' / 'chatgpt': AlpacaEval win rate against Text-Davinci-003.
JUDGES = {"gpt4": "GPT-4 (AlpacaEval) vs Text-Davinci-003", "chatgpt": "ChatGPT (AlpacaEval) vs Text-Davinci-003",
          "lm-eval": "no judge: lm-eval accuracy", "none": "no judge: measured",
          "human": "the paper's authors as annotators"}


@lru_cache(maxsize=1)
def paper_tables() -> dict:
    """The whole file: {"tables": {...}, "figures_read_from_charts": {...}, ...}."""
    return json.loads(resources.files("neftlib.analysis").joinpath(TABLES_FILE).read_text(encoding="utf-8"))


def table(key: str) -> dict:
    """One table (or chart reading) by its key, e.g. 'table1_llama2_7b_gpt4' or 'figure3_openllm'."""
    data = paper_tables()
    for group in ("tables", "figures_read_from_charts"):
        if key in data[group]:
            return data[group][key]
    known = sorted([*data["tables"], *data["figures_read_from_charts"]])
    raise KeyError(f"no paper table {key!r} in {TABLES_FILE}; known: {', '.join(known)}")


def table_name(key: str) -> str:
    """How the paper names a table: 'table1_llama2_7b_gpt4' -> 'Table 1', 'figure3_openllm' -> 'Figure 3'."""
    found = re.match(r"(table|figure)s?(\d+)", key)
    if found:
        return f"{found.group(1).title()} {found.group(2)}"
    return key.replace("_", " ").capitalize()


def table_judge(key: str) -> str:
    """The scale a table's numbers are on: 'gpt4', 'chatgpt', 'lm-eval', 'none' or 'human'."""
    entry = table(key)
    if isinstance(entry, dict) and entry.get("judge"):
        return str(entry["judge"])
    if key.endswith("_chatgpt"):
        return "chatgpt"
    if key.endswith("_gpt4"):
        return "gpt4"
    return {"figure3_openllm": "lm-eval", "human_study": "human"}.get(key, "none")


def is_approximate(key: str) -> bool:
    """Chart readings, not printed numbers."""
    return key in paper_tables()["figures_read_from_charts"]


def cell(key: str, row: str, column: str):
    """One printed number: table(key)['rows'][row] at `column`."""
    entry = table(key)
    try:
        return entry["rows"][row][entry["columns"].index(column)]
    except (KeyError, ValueError):
        raise KeyError(f"{table_name(key)} ({key}) has no cell ({row!r}, {column!r}); rows: "
                       f"{', '.join(entry['rows'])}; columns: {', '.join(entry.get('columns', []))}") from None


_T1 = "table1_llama2_7b_gpt4"
# Figure 1 is Table 1 as bars: AlpacaEval win rate (%) against Text-Davinci-003, GPT-4 judge, LLaMA-2-7B fully
# fine-tuned on each data set without / with NEFTune; "Average" as printed (the mean of the four).
FIGURE1 = {c: (cell(_T1, "LLaMA-2 7B", c), cell(_T1, "+NEFT", c)) for c in table(_T1)["columns"]}
FIGURE1_SETTING = {
    "source": "Table 1 (Figure 1)",
    "model": "LLaMA-2-7B (base), full fine-tune",
    "judge": JUDGES["gpt4"],
    "scale": "7B parameters, full data set, 805 AlpacaEval prompts",
}


def _statements() -> dict[str, tuple[str, str, str]]:
    t2, t3 = "table2_chat_and_larger_models_gpt4", "table3_qlora_chatgpt"
    t4, t6 = "table4_length_and_diversity", "table6_noise_type_and_level_chatgpt"
    a, avg = FIGURE1["Alpaca"], FIGURE1["Average"]
    chat = "LLaMA-2-Chat (7B)"
    return {
        "win_rate_up": ("Table 1 (Figure 1)", "LLaMA-2-7B on Alpaca, Evol-Instruct, ShareGPT, OpenPlatypus; GPT-4 judge",
                        f"NEFTune raises the GPT-4-judged AlpacaEval win rate on every data set (Alpaca {a[0]:.1f} -> "
                        f"{a[1]:.1f}; average {avg[0]:.1f} -> {avg[1]:.1f})."),
        "qlora": ("Table 3", "LLaMA-2 7B/13B and LLaMA-1 30B, QLoRA, one epoch; ChatGPT judge",
                  "NEFTune also raises win rates when training with QLoRA, with smaller gains than full fine-tuning "
                  f"(LLaMA-2-7B on Alpaca {cell(t3, 'Base', 'LLaMA2(7B) Alpaca'):.1f} -> "
                  f"{cell(t3, '+NEFT (alpha=5)', 'LLaMA2(7B) Alpaca'):.1f} at alpha 5, ChatGPT judge)."),
        "chat_gain": ("Table 2", "LLaMA-2-7B-Chat further fine-tuned on Evol-Instruct; GPT-4 judge",
                      "Even models refined with RLHF such as LLaMA-2-Chat benefit from additional training with "
                      f"NEFTune ({cell(t2, 'Evol-Instruct', chat):.1f} -> {cell(t2, '+NEFT', chat):.1f})."),
        "openllm_flat": ("Figure 3 (approximate chart readings)", "LLaMA-2-7B and LLaMA-1-7B; ARC, HellaSwag, MMLU, "
                         "TruthfulQA (lm-eval)",
                         "The gains are in conversational quality, not on Open LLM Leaderboard tasks, where "
                         "performance stays the same (no change larger than "
                         f"{max(abs(b - a) for r in table('figure3_openllm')['rows'].values() for a, b in r):.1f} "
                         "points in the chart)."),
        "loss": ("Figure 4 (no printed numbers)", "LLaMA-2-7B trained on Alpaca; other set: Evol-Instruct",
                 "With NEFTune the training loss (measured without noise) is higher, while the loss on "
                 "another instruction set is slightly lower: less overfitting."),
        "overlap": ("Figure 5 (no printed numbers)", "LLaMA-2-7B trained on Alpaca, answers to training prompts",
                    "NEFTune answers to training prompts have lower ROUGE-L and BLEU against the training responses."),
        "length_diversity": ("Table 4", "LLaMA-2-7B on each data set, AlpacaEval answers",
                             "NEFTune answers are much longer (Alpaca "
                             f"{cell(t4, 'char_length.LLaMA-2 7B', 'Alpaca (alpha=5)'):.0f} -> "
                             f"{cell(t4, 'char_length.+NEFT', 'Alpaca (alpha=5)'):.0f} characters), while 2-gram "
                             "repetition and log-diversity stay about the same (log-diversity "
                             f"{cell(t4, 'log_diversity.LLaMA-2 7B', 'Alpaca (alpha=5)'):.2f} -> "
                             f"{cell(t4, 'log_diversity.+NEFT', 'Alpaca (alpha=5)'):.2f}): the extra length is not "
                             "repetition."),
        "gaussian": ("Table 6", "LLaMA-2-7B, uniform vs Gaussian noise at alpha 5; ChatGPT judge",
                     "Gaussian noise gives even longer answers but no better win rate than uniform noise (Alpaca: "
                     f"{cell(t6, '+Uniform Noise 5', 'Alpaca chars'):.0f} -> "
                     f"{cell(t6, '+Gaussian Noise 5', 'Alpaca chars'):.0f} characters, win rate "
                     f"{cell(t6, '+Uniform Noise 5', 'Alpaca win'):.1f} -> "
                     f"{cell(t6, '+Gaussian Noise 5', 'Alpaca win'):.1f})."),
        "length_not_all": ("Table 5", "LLaMA-1-7B (Alpaca-7B) on Alpaca; GPT-4 judge (AlpacaEval 1)",
                           "Length alone does not explain the gain: asking the baseline for longer answers, or "
                           "blocking the end of sequence, makes it longer but leaves it far below NEFTune's win rate "
                           "(62.0 against 38.6-48.0)."),
    }


# The paper's claims, keyed like claims.CLAIMS: (its table, model and data, statement with the table's numbers).
STATEMENTS = _statements()

# Figure 1's data sets and how a run's training data name maps onto them.
DATASET_KEYS = {"alpaca": "Alpaca", "evol": "Evol-Instruct", "sharegpt": "ShareGPT", "platypus": "OpenPlatypus"}


def paper_dataset(train_source: str) -> str | None:
    """The Figure 1 data set a run's training data corresponds to (from its name), or None."""
    name = str(train_source).lower().replace("_", "-")
    return next((label for key, label in DATASET_KEYS.items() if key in name), None)


def judge_scale(judge: str) -> str:
    """The scale of a win rate from its judge's name: 'gpt4', 'chatgpt', 'none' (no win rate) or 'local'
    (our own judge, comparable with no paper number)."""
    name = str(judge).lower().split(" vs ")[0]  # the name only, not what follows (e.g. its agreement with GPT-4)
    if name.startswith(("none", "no judge")):
        return "none"
    if "chatgpt" in name or "gpt-3.5" in name:
        return "chatgpt"
    if re.search(r"gpt-?4", name):
        return "gpt4"
    return "local"
