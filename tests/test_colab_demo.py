"""The Colab QLoRA demo notebook: thin and clean, and on a CPU it runs end to end in the smoke profile."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from neftlib.pipeline import colab, demo
from neftlib.base.config import stage_config
from neftlib.base.recipes import load_config

PROJ = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJ / "notebooks" / "colab_qlora_demo.ipynb"


def _cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_demo_notebook_opens_on_a_gpu_runtime():
    # clean and thin: tests/test_notebooks.py::test_notebook_is_clean_and_thin
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"].get("accelerator") == "GPU"  # Colab opens it on a GPU runtime


def test_empty_repo_url_says_how_to_set_it(tmp_path):
    params, install = _cells()[:2]
    # -I -S: no site-packages and no project on the path, as on a fresh Colab runtime
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", params + "\n" + install], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "REPO_URL is empty" in proc.stderr and 'REPO_URL = "https://github.com/OWNER/neftlib.git"' in proc.stderr
    assert "Runtime > Run all" in proc.stderr and not (tmp_path / "content").exists()


def test_install_keeps_the_runtime_torch():
    reqs = colab.requirements(PROJ)
    names = {colab._name(r) for r in reqs}
    assert "torch" not in names and "transformers==5.23.0" in reqs and "bitsandbytes==0.50.2" in reqs
    assert colab.constraints({"torch": "2.9.0+cu126", "torchvision": "0.24.0", "numpy": "2.0"}) == \
        "torch==2.9.0+cu126\ntorchvision==0.24.0\n"
    deps, itself, extra = colab.pip_commands(PROJ, Path("/tmp/keep.txt"))
    assert deps[deps.index("-c") + 1] == "/tmp/keep.txt" and "torch==2.13.0" not in deps
    assert "--no-deps" in itself and str(PROJ) in itself and "--no-deps" in extra
    # a restart is needed only when a package this session imported changed on disk
    before, after = {"numpy": "1.26.4", "peft": "0.10"}, {"numpy": "2.1.0", "peft": "0.21.2"}
    assert colab.needs_restart(before, after, {"numpy"}) == ["numpy 1.26.4 -> 2.1.0"]
    assert colab.needs_restart(before, after, {"torch"}) == []
    assert "torch" in colab.loaded_distributions()  # this test process imported it


def test_colab_qlora_trains_its_two_qlora_arms_once():
    cfg = load_config("colab-qlora")
    assert cfg.method == "qlora" and stage_config(cfg, "train")[1] == ("baseline", "neftune")
    assert stage_config(cfg, "qlora")[1] == ()  # 03 would repeat 02 exactly
    assert demo.demo_stage(cfg) == "train" and demo.demo_stage(load_config("smoke")) == "qlora"


def test_qlora_runs_judge_with_their_4bit_base(results):
    from neftlib.evaluation.stage import make_judge

    judge = make_judge(load_config("smoke", method="qlora"))
    assert judge.name == "local:tiny-random (4-bit NF4)" and judge.model.is_loaded_in_4bit
    assert make_judge(load_config("smoke")).name == "local:tiny-random"  # full fine-tunes judge as before


def test_a_run_that_cannot_fit_is_refused_naming_the_batch_that_does(results, no_real_data):
    from neftlib.training.memory import estimate_memory

    cfg = demo.start("smoke", "fit-4")
    q = stage_config(cfg, "qlora")[0]
    at = {b: estimate_memory(dataclasses.replace(q, batch_size=b)).total for b in (2, 4)}
    budget = (at[2] + at[4]) // 2
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* batch_size=4.*set BATCH_SIZE = 2 in the parameters"):
        demo.check_memory(cfg, budget)
    smaller = demo.start("smoke", "fit-2", batch_size=2)  # the named setting: 2 x accumulation 2 = 4 per step
    assert stage_config(smaller, "qlora")[0].grad_accum_for(1) == 2
    assert demo.check_memory(smaller, budget)["fits"] is True


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the demo trains a 7B model")
def test_demo_runs_in_the_smoke_profile_on_cpu(tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("NEFTLIB_RESULTS_DIR", str(tmp_path / "results"))  # the kernel inherits these
    monkeypatch.setenv("NEFTLIB_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NEFTLIB_DATA_DIR", raising=False)
    executed = tmp_path / "colab_qlora_demo.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(executed), kernel_name="python3", progress_bar=False,
                        cwd=str(NOTEBOOK.parent))
    text = executed.read_text()
    assert "neftlib already importable: installation skipped" in text and "profile: smoke" in text
    assert "Time per step:" in text and "min of training" in text

    run = tmp_path / "results" / "demo-smoke"
    plan = json.loads((run / "demo" / "plan.json").read_text())
    assert plan["fits"] and plan["step_s"] > 0 and plan["steps_per_arm"] == 4 and plan["arms"] == ["baseline", "neftune"]
    assert not (run / "demo" / "probe").exists()  # the timing run leaves nothing behind
    answers = pd.read_csv(run / "demo" / "answers.csv", keep_default_na=False)
    assert sorted(answers["state"].unique()) == ["baseline", "before", "neftune"]
    assert answers.groupby("state")["instruction"].count().tolist() == [4, 4, 4]
    assert (answers["chars"] == answers["answer"].str.len()).all() and (answers["new_tokens"] > 0).all()
    summary = json.loads((run / "demo" / "summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["method"] == "qlora" and summary["stage"] == "qlora"
    assert summary["device"]["device"] == "cpu"
    arms = summary["arms"]
    assert arms["baseline"]["alpha"] == 0.0 and arms["neftune"]["alpha"] == 5.0
    # both arms trained; the noise was on in every step of NEFTune's and in none of the baseline's
    assert arms["neftune"]["noised_steps"] == arms["neftune"]["steps"] > 0 and arms["baseline"]["noised_steps"] == 0
    # each trained arm is another model than the base: its adapters change the held-out loss
    assert arms["neftune"]["heldout_loss"] != summary["heldout_loss_before"] != arms["baseline"]["heldout_loss"]
    for arm in ("baseline", "neftune"):
        log = pd.read_csv(run / "qlora" / arm / "log.csv")
        assert ((log["noise_ratio"] > 0) == (arm == "neftune")).all()
    # every prompt answered before training, without noise and with NEFTune, with lengths; then what the run shows
    cells = json.loads(executed.read_text())["cells"]
    answers = next(c for c in cells if "".join(c["source"]).startswith("demo.print_answers"))
    shown = "".join("".join(o.get("text", "")) for o in answers["outputs"])
    assert shown.count("--- trained without noise (") == 4 and shown.count("--- trained with NEFTune (") == 4
    assert "tokens," in shown and "characters)" in shown
    last = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in cells[-1]["outputs"])
    assert f"{arms['neftune']['mean_answer_chars']:.0f} with NEFTune" in last and "no win rate" in last
    paper = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in cells
                    if "paper_numbers" in "".join(c["source"]) for o in c["outputs"])
    assert "26.71% -> 31.43%" in paper and "Table 3, ChatGPT judge" in paper  # read from the paper's tables
    assert (tmp_path / "figures" / "demo-smoke" / "loss_qlora.png").exists()
