"""What the paper reports, with the setting of each number: Jain et al., "NEFTune: Noisy Embeddings
Improve Instruction Finetuning" (ICLR 2024, arXiv:2310.05914).

Numbers are transcribed only where the paper states them in its abstract or Figure 1 / Table 1. For the
other results the paper's statement is kept in words and its table or figure is named, so a reader
can look the numbers up; nothing here is a guess at a number.
"""
from __future__ import annotations

PAPER = "Jain et al. 2024 (NEFTune, ICLR)"

# Figure 1 (and Table 1): AlpacaEval win rate (%) against Text-Davinci-003's answers, judged by GPT-4,
# for LLaMA-2-7B fully fine-tuned on each data set without / with NEFTune. The averages are the
# means of the four rows (57.72 = mean(29.79, 70.34, 68.74, 62.00)).
FIGURE1 = {
    "Alpaca": (29.79, 64.69),
    "Evol-Instruct": (70.34, 79.60),
    "ShareGPT": (68.74, 76.28),
    "OpenPlatypus": (62.00, 70.61),
    "Average": (57.72, 72.80),
}
FIGURE1_SETTING = {
    "source": "Figure 1 / Table 1",
    "model": "LLaMA-2-7B (base), full fine-tune",
    "judge": "GPT-4 (AlpacaEval) vs Text-Davinci-003",
    "scale": "7B parameters, full data set, 805 AlpacaEval prompts",
}

# The paper's claims in words, keyed like report.CLAIMS: (where in the paper, model and data, statement).
STATEMENTS = {
    "win_rate_up": ("Figure 1 / Table 1", "LLaMA-2-7B on Alpaca, Evol-Instruct, ShareGPT, OpenPlatypus",
                    "NEFTune raises the GPT-4-judged AlpacaEval win rate on every data set "
                    "(Alpaca 29.8 -> 64.7; average 57.7 -> 72.8)."),
    "qlora": ("QLoRA table (Section 4)", "LLaMA-2 7B/13B and other 7B models, QLoRA, AlpacaEval judged by ChatGPT",
              "NEFTune also raises win rates when training with QLoRA, with smaller gains than full fine-tuning."),
    "chat_gain": ("abstract; LLaMA-2-Chat table", "LLaMA-2-7B-Chat further fine-tuned on Evol-Instruct",
                  "Even models refined with RLHF such as LLaMA-2-Chat benefit from additional training with NEFTune."),
    "openllm_flat": ("abstract; OpenLLM figure", "LLaMA-2-7B and others; ARC, HellaSwag, MMLU, TruthfulQA",
                     "The gains are in conversational quality, not on Open LLM Leaderboard tasks, "
                     "where performance stays the same."),
    "loss": ("Figure 4 (Section 5)", "LLaMA-2-7B trained on Alpaca; other set: Evol-Instruct",
             "With NEFTune the training loss (measured without noise) is higher, while the loss on "
             "another instruction set is slightly lower: less overfitting."),
    "overlap": ("Figure 5 (Section 5)", "LLaMA-2-7B trained on Alpaca, answers to training prompts",
                "NEFTune answers to training prompts have lower ROUGE-L and BLEU against the training responses."),
    "length_diversity": ("length / diversity table (Section 5)", "LLaMA-2-7B on each data set, AlpacaEval answers",
                         "NEFTune answers are much longer, while 2/3/4-gram repetition and log-diversity stay "
                         "about the same: the extra length is not repetition."),
    "gaussian": ("noise ablation (Section 5)", "LLaMA-2-7B, uniform vs Gaussian noise at matched scale",
                 "Gaussian noise gives even longer answers but no better win rate than uniform noise."),
}

# Figure 1's data sets and how a run's training data name maps onto them.
DATASET_KEYS = {"alpaca": "Alpaca", "evol": "Evol-Instruct", "sharegpt": "ShareGPT", "platypus": "OpenPlatypus"}


def paper_dataset(train_source: str) -> str | None:
    """The Figure 1 data set a run's training data corresponds to (from its name), or None."""
    name = str(train_source).lower().replace("_", "-")
    return next((label for key, label in DATASET_KEYS.items() if key in name), None)
