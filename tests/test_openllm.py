"""OpenLLM tasks through lm-evaluation-harness, offline: a local task on the tiny random model, per arm."""
from __future__ import annotations

import sys
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch

from neftlib.base.recipes import load_config
from neftlib.base.io import mark_done
from neftlib.base.config import OPENLLM_V1, parse_tasks
from neftlib.evaluation.openllm import run_tasks

TASK = Path(__file__).parent / "fixtures" / "lm_eval_tasks" / "neftlib_tiny_mc.yaml"
N_TEST_DOCS = 8  # rows of the fixture's test split


def test_parse_tasks():
    assert parse_tasks("") == ()
    assert parse_tasks("openllm-v1") == OPENLLM_V1
    assert parse_tasks(" arc_challenge:25, hellaswag:10 ") == (("arc_challenge", 25), ("hellaswag", 10))
    assert parse_tasks(f"{TASK}:2") == ((str(TASK), 2),)
    for bad in ("arc_challenge", "arc_challenge:x", ":5", "mmlu:5,"):
        with pytest.raises(ValueError, match="task:shots"):
            parse_tasks(bad)
    with pytest.raises(ValueError, match="task:shots"):
        load_config("smoke", openllm_tasks="hellaswag")  # refused before anything runs


def test_leaderboard_settings_only_in_the_gpu_profile():
    # Open LLM Leaderboard v1: ARC 25-shot, HellaSwag 10, MMLU 5, TruthfulQA (mc2) 0
    assert dict(parse_tasks(load_config("gpu-7b").openllm_tasks)) == {
        "arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}
    assert load_config("smoke").openllm_tasks == "" and load_config("cpu").openllm_tasks == ""


def test_missing_lm_eval_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ImportError, match="pip install lm-eval"):
        run_tasks(None, None, ((str(TASK), 0),))


def test_local_task_on_tiny_model_gives_an_accuracy():
    from neftlib.training.models import load_base, load_tokenizer

    rows = run_tasks(load_base("tiny-random"), load_tokenizer("tiny-random"), ((str(TASK), 2),), batch_size=4)
    assert len(rows) == 1
    row = rows[0]
    assert (row["task"], row["num_fewshot"], row["metric"], row["n"]) == ("neftlib_tiny_mc", 2, "acc", N_TEST_DOCS)
    assert isinstance(row["value"], float) and 0.0 <= row["value"] <= 1.0
    assert row["value"] * N_TEST_DOCS == pytest.approx(round(row["value"] * N_TEST_DOCS))  # a share of 8 documents


def _fake_trained_arms(cfg, arms):
    """Stand-ins for trained arms: the tiny model, its weights nudged differently per arm."""
    from neftlib.training.models import load_base
    from neftlib.pipeline.stages import stage_dir

    for i, arm in enumerate(arms):
        model = load_base("tiny-random")
        with torch.no_grad():
            gen = torch.Generator().manual_seed(i)
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        folder = stage_dir(cfg, "train") / arm
        model.save_pretrained(folder / "model")
        mark_done(folder)


def _watch_judge_and_lm_eval(monkeypatch) -> tuple[list, list, list]:
    """Weak references to each judge's model (and whether its forwards returned a KV cache), and what
    lm-eval was handed: whether the judge was still alive then, the batch size, the model's use_cache."""
    import neftlib.evaluation.openllm as openllm
    import neftlib.evaluation.stage as stage

    judges, judge_caches, lm_eval_calls = [], [], []
    real_judge, real_tasks = stage.make_judge, openllm.run_tasks

    def make_judge(cfg):
        judge = real_judge(cfg)
        judges.append(weakref.ref(judge.model))
        judge.model.register_forward_hook(lambda mod, args, out: judge_caches.append(out.past_key_values))
        return judge

    def run_tasks(model, tokenizer, tasks, **kwargs):
        with torch.no_grad():
            cached = model(torch.tensor([[1, 2, 3]], device=model.device)).past_key_values
        lm_eval_calls.append({"judge_alive": any(ref() is not None for ref in judges), "cache": cached,
                              "use_cache": model.config.use_cache, "batch_size": kwargs["batch_size"]})
        return real_tasks(model, tokenizer, tasks, **kwargs)

    monkeypatch.setattr(stage, "make_judge", make_judge)
    monkeypatch.setattr(openllm, "run_tasks", run_tasks)
    return judges, judge_caches, lm_eval_calls


def test_evaluation_stage_writes_openllm_and_the_full_win_rate_table(results, monkeypatch):
    from neftlib.evaluation.stage import evaluate
    from neftlib.pipeline.stages import prepare_data, stage_dir, start_run

    arms = ("baseline", "neftune")
    cfg = start_run("smoke", "openllm", arms=arms, qlora_arms=(), length_arms=(), openllm_tasks=f"{TASK}:2",
                    openllm_batch_size=3)
    prepare_data(cfg)
    _fake_trained_arms(cfg, arms)
    judges, judge_caches, lm_eval_calls = _watch_judge_and_lm_eval(monkeypatch)

    wins = evaluate(cfg, progress=False)
    # the judge scored with plain forwards that kept no KV cache, and was gone before lm-eval started;
    # lm-eval ran with its own batch size (not gen_batch_size's 6) on arms whose forwards keep no cache
    assert len(judges) == 1 and judge_caches and all(c is None for c in judge_caches)
    assert [c["judge_alive"] for c in lm_eval_calls] == [False, False]
    assert all(c["batch_size"] == 3 and c["use_cache"] is False and c["cache"] is None for c in lm_eval_calls)
    # every arm's win rate comes with its error bars, its length-controlled twin, its length and judge agreement
    for col in ("win_rate", "win_rate_soft", "standard_error", "ci_low", "ci_high", "lc_win_rate_approx",
                "avg_length", "n_clipped", "judge_agreement", "agreement_n"):
        assert col in wins.columns, col
    assert list(wins["arm"]) == list(arms)
    assert wins["lc_win_rate_approx"].between(0, 100).all()

    table = pd.read_csv(stage_dir(cfg, "eval") / "openllm.csv")
    assert list(table["arm"]) == list(arms)  # one row per arm and task
    assert (table["task"] == "neftlib_tiny_mc").all() and (table["num_fewshot"] == 2).all()
    assert table["value"].between(0, 1).all() and table["value"].notna().all()
    assert (table["n"] == N_TEST_DOCS).all()
    assert (stage_dir(cfg, "eval") / "train-neftune" / "openllm.json").exists()  # per-arm, resumable

    # The report reads the table the stage wrote, in percentage points (it once looked for a column 'acc').
    from neftlib.analysis.claims import RunEvidence

    rows = RunEvidence(cfg.run_name, n_boot=50).openllm("openllm_flat", "train", arms)
    assert len(rows) == 1 and rows[0]["part"] == "neftlib_tiny_mc accuracy"
    assert rows[0]["baseline"] == pytest.approx(100 * table["value"].iloc[0])
    assert rows[0]["difference"] == pytest.approx(100 * (table["value"].iloc[1] - table["value"].iloc[0]))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_trained_adapters_score_without_a_kv_cache_and_still_generate_with_one(tmp_path, method):
    """A LoRA / QLoRA arm's base config says use_cache=True: load_trained turns it off for plain forwards
    (lm-eval, the losses of 05); generate() keeps its cache, so answers do not slow down."""
    from neftlib.base.config import qlora_config
    from neftlib.training.models import load_model
    from neftlib.training.train import load_trained

    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    cfg = load_config("smoke", method="lora")
    cfg = qlora_config(cfg) if method == "qlora" else cfg
    load_model(cfg.model, method="lora", lora_r=4, lora_targets=cfg.lora_targets).save_pretrained(
        tmp_path / "arm" / "model")
    model = load_trained(cfg, tmp_path / "arm")
    assert model.config.use_cache is False and model.get_base_model().config.use_cache is False
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert model(input_ids=ids).past_key_values is None
    seen = []
    model.get_base_model().model.register_forward_hook(lambda mod, args, out: seen.append(out.past_key_values))
    model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert len(seen) == 3 and all(c is not None for c in seen)  # one forward per new token, each with the cache
