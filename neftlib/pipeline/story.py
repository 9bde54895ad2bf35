"""The paper's side of each notebook: which of its claims the notebook tests, with the paper's numbers read
from its tables (neftlib/analysis/paper_tables.json), never typed in."""
from __future__ import annotations

from neftlib.analysis.claims import CLAIMS
from neftlib.analysis.paper import PAPER, STATEMENTS, cell, paper_dataset, table

# The claims each numbered notebook measures (keys of neftlib.analysis.claims.CLAIMS).
NOTEBOOK_CLAIMS = {
    "01_data_prep": (),
    "02_noisy_training": ("loss", "gaussian"),
    "03_qlora_variant": ("qlora",),
    "04_evaluation": ("win_rate_up", "chat_gain"),
    "05_overfitting_and_length": ("loss", "overlap", "length_diversity"),
    "06_report": tuple(CLAIMS),
}
T4, T8 = "table4_length_and_diversity", "table8_alpha_per_model_and_dataset"


def paper_setup() -> str:
    """The paper's data and noise settings for LLaMA-2-7B, from Tables 4 and 8, as Markdown."""
    t4, t8 = table(T4), table(T8)
    sets = [c.split(" (")[0] for c in t4["columns"]]
    chars = ", ".join(f"{name} {value:.0f}" for name, value in zip(sets, t4["rows"]["char_length.training_data"]))
    alphas = ", ".join(f"{name} {value:g}" for name, value in zip(t8["columns"], t8["rows"]["LLaMA-2 7B"]))
    return (f"- **Training data** (Table 4): the responses of each instruction set average {chars} characters.\n"
            f"- **Noise** (Table 8): the alpha the paper used for LLaMA-2-7B per data set: {alphas}.")


def paper_claims(notebook: str) -> str:
    """The claims a notebook tests, each with the paper's table, setting and numbers, as Markdown."""
    if notebook not in NOTEBOOK_CLAIMS:
        raise ValueError(f"unknown notebook {notebook!r}; choose from {', '.join(NOTEBOOK_CLAIMS)}")
    lines = [f"What {PAPER} reports, read from its tables:", ""]
    if notebook == "01_data_prep":
        lines.append(paper_setup())
    for claim in NOTEBOOK_CLAIMS[notebook]:
        source, setting, says = STATEMENTS[claim]
        lines.append(f"- **{CLAIMS[claim]}** ({source}; {setting}): {says}")
    return "\n".join(lines)


def paper_training_chars(train_source: str) -> float | None:
    """Table 4's average training-response length (characters) of the paper's data set matching ours, or None."""
    name = paper_dataset(train_source)
    columns = {c.split(" (")[0]: c for c in table(T4)["columns"]}
    return cell(T4, "char_length.training_data", columns[name]) if name in columns else None
