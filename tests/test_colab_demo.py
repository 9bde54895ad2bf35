"""The Colab QLoRA demo notebook: thin and clean, and on a CPU it runs end to end in the smoke profile."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

PROJ = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJ / "notebooks" / "colab_qlora_demo.ipynb"


def test_demo_notebook_opens_on_a_gpu_runtime():
    # clean and thin: tests/test_notebooks.py::test_notebook_is_clean_and_thin
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"].get("accelerator") == "GPU"  # Colab opens it on a GPU runtime


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

    run = tmp_path / "results" / "demo-smoke"
    answers = pd.read_csv(run / "demo" / "answers.csv", keep_default_na=False)
    assert sorted(answers["state"].unique()) == ["after", "before"]
    assert answers.groupby("state")["instruction"].count().tolist() == [4, 4]
    summary = json.loads((run / "demo" / "summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["method"] == "qlora" and summary["alpha"] == 5.0
    assert summary["device"]["device"] == "cpu"
    # the model the "after" answers came from is another model: trained adapters change its held-out loss
    assert summary["heldout_loss_after"] != summary["heldout_loss_before"]
    # the noise was on in every training step
    assert summary["noised_steps"] == summary["steps"] > 0 and summary["noise_ratio_mean"] > 0
    log = pd.read_csv(run / "qlora" / "neftune" / "log.csv")
    assert (log["noise_ratio"] > 0).all()
    assert (tmp_path / "figures" / "demo-smoke" / "loss_qlora.png").exists()
