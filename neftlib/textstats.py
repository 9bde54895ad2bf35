"""Length, repetition and diversity of model answers (NEFTune section 5), plus ROUGE-L/BLEU.

Diversity follows Kirchenbauer et al. 2023, "On the Reliability of Watermarks for Large
Language Models" (their `metrics/repetition_diversity.py`, itself taken from SimCTG's
`evaluation.py`):

    rep_n         = 100 * (1 - |unique n-grams| / |total n-grams|)
    diversity     = prod_{n=2..4} (1 - rep_n / 100)
    log_diversity = -log(1 - diversity)

Over a set of answers the counts are aggregated as SimCTG does: an n-gram is "unique" within
its own answer, and the unique and total counts are summed over answers before the ratio.
Two deliberate departures from that code: every n-gram of an answer is counted (SimCTG's
loop skips the last one), and rep_n is kept in percent before the /100 (the per-text variant
in Kirchenbauer's release leaves it a fraction, which makes diversity ~1).

Because the NEFTune tables may have been made with that released code rather than with the
formula as written, `log_diversity_release` reproduces it too: per answer, n-grams counted as
its loop counts them, repetition left a fraction and divided by 100 once more, capped at 20,
then averaged over answers. Answers too short for one 4-gram after that loop (4 tokens or
fewer) are left out of the mean, where the released code would divide by zero. Each answer's
value lies between about 3.5 and the cap of 20 (typically 10 to 20) where `log_diversity` sits
near 2 to 4; compare each only with the same column.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

# Kirchenbauer et al. cap log-diversity at 20 (1 - diversity floored at exp(-20)) so that
# a set with no repetition at all gives a finite number.
LOG_DIVERSITY_CAP = 20.0


def read_json_rows(path: Path) -> list[dict[str, Any]]:
    """Read a JSON file holding a list of objects; errors name the file (and row)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is not a JSON object")
    return data


def whitespace_tokens(text: str) -> list[str]:
    """Split on any run of whitespace, as the paper's 'whitespace tokens' count does."""
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(text_tokens_list: Iterable[Sequence[str]], n: int, pooled: bool = False) -> float:
    """n-gram repetition rate in percent over a set of tokenised answers.

    Default: unique n-grams counted within each answer, counts summed over answers (SimCTG).
    `pooled=True` counts an n-gram as unique once over the whole set instead.
    NaN when no answer has n tokens.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = 0
    unique = 0
    seen: set[tuple[str, ...]] = set()
    for tokens in text_tokens_list:
        grams = _ngrams(tokens, n)
        total += len(grams)
        if pooled:
            seen.update(grams)
        else:
            unique += len(set(grams))
    if total == 0:
        return math.nan
    if pooled:
        unique = len(seen)
    return 100.0 * (1.0 - unique / total)


def diversity(text_tokens_list: Sequence[Sequence[str]], ns: Sequence[int] = (2, 3, 4)) -> float:
    """prod over n of (1 - rep_n/100); 1 means no repeated n-gram at all."""
    out = 1.0
    for n in ns:
        out *= 1.0 - rep_n(text_tokens_list, n) / 100.0
    return out


def log_diversity(text_tokens_list: Sequence[Sequence[str]], ns: Sequence[int] = (2, 3, 4)) -> float:
    """-log(1 - diversity), capped at 20 as in Kirchenbauer et al.'s code."""
    div = diversity(text_tokens_list, ns)
    if math.isnan(div):
        return math.nan
    return -math.log(max(1.0 - div, math.exp(-LOG_DIVERSITY_CAP)))


def log_diversity_release_values(text_tokens_list: Sequence[Sequence[str]], ns: Sequence[int] = (2, 3, 4)) -> list[float]:
    """Per answer, the log-diversity Kirchenbauer et al.'s released `measure_repetition_and_diversity` computes
    (see the module docstring); NaN for an answer of max(ns) tokens or fewer, where their code divides by zero."""
    values: list[float] = []
    for tokens in text_tokens_list:
        div = 1.0
        for n in ns:
            # Their loop stops one n-gram short of the end of the answer.
            grams = _ngrams(tokens, n)[:-1]
            if not grams:
                div = math.nan
                break
            div *= 1.0 - (1.0 - len(set(grams)) / len(grams)) / 100.0
        values.append(div if math.isnan(div) else -math.log(max(1.0 - div, math.exp(-LOG_DIVERSITY_CAP))))
    return values


def log_diversity_release(text_tokens_list: Sequence[Sequence[str]], ns: Sequence[int] = (2, 3, 4)) -> float:
    """Mean over answers of `log_diversity_release_values`: the scale of the paper's Table 4.
    Answers of max(ns) tokens or fewer are skipped; NaN when every answer is."""
    values = [v for v in log_diversity_release_values(text_tokens_list, ns) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _table_row(name: str, outputs: Sequence[str], cutoff: int) -> dict[str, Any]:
    if cutoff < 1:
        raise ValueError(f"cutoff must be >= 1, got {cutoff}")
    token_lists = [whitespace_tokens(o) for o in outputs]
    # The paper cuts every answer to the same length so that repetition is comparable
    # between short- and long-answer models; shorter answers cannot be cut, so they go.
    cut = [toks[:cutoff] for toks in token_lists if len(toks) >= cutoff]
    n = len(outputs)
    reps = {k: rep_n(cut, k) for k in (2, 3, 4)}
    return {
        "name": name,
        "n_answers": n,
        "n_kept": len(cut),
        "n_dropped": n - len(cut),
        "avg_chars": sum(len(o) for o in outputs) / n if n else math.nan,
        "avg_tokens": sum(len(t) for t in token_lists) / n if n else math.nan,
        "rep_2": reps[2],
        "rep_3": reps[3],
        "rep_4": reps[4],
        "diversity": diversity(cut),
        "log_diversity": log_diversity(cut),
        "log_diversity_release": log_diversity_release(cut),
    }


def length_diversity_table(outputs_by_name: dict[str, list[str]], cutoff: int) -> list[dict[str, Any]]:
    """One row per model: lengths of the uncut answers, and rep-2/3/4 and diversity of the
    answers cut to `cutoff` whitespace tokens (answers shorter than `cutoff` dropped)."""
    return [_table_row(name, outs, cutoff) for name, outs in outputs_by_name.items()]


def load_model_outputs(path: Path) -> tuple[str, list[str]]:
    """Read an alpaca_eval model_outputs.json; return (name, outputs).

    The name is the shared `generator` field, else the parent folder's name.
    """
    path = Path(path)
    rows = read_json_rows(path)
    outputs: list[str] = []
    for i, row in enumerate(rows):
        if "output" not in row:
            raise ValueError(f"{path}: row {i} has no 'output' field")
        if not isinstance(row["output"], str):
            raise ValueError(f"{path}: row {i} 'output' is not a string")
        outputs.append(row["output"])
    generators = {row.get("generator") for row in rows}
    if len(generators) == 1 and isinstance(next(iter(generators)), str) and next(iter(generators)):
        name = next(iter(generators))
    else:
        name = path.parent.name
    return name, outputs


def analyze_files(paths: Sequence[Path], cutoff: int = 50) -> list[dict[str, Any]]:
    """Length/diversity table for several model_outputs.json files, one row per file."""
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for path in paths:
        name, outputs = load_model_outputs(path)
        # Two files from the same generator must still give two distinguishable rows.
        if name in used:
            name = f"{name} ({Path(path).parent.name})"
        used.add(name)
        row = _table_row(name, outputs, cutoff)
        row["path"] = str(path)
        rows.append(row)
    return rows


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F1 over pairs, times 100 (rouge-score package)."""
    from rouge_score import rouge_scorer  # heavy-ish import, only when scoring

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * sum(scores) / len(scores)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, one reference per prediction)."""
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
