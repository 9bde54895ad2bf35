"""A run trained with `neftlib train --grad-accum N` (or --model) is evaluated by `neftlib run` as is."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neftlib.pipeline import stages

PROJ = Path(__file__).resolve().parents[1]


def test_later_start_run_keeps_the_trained_grad_accum(results):
    first = stages.start_run("smoke", "ga", grad_accum=2)
    again = stages.start_run("smoke", "ga")  # what notebooks 01-05 call: no grad_accum given
    assert first == again and again.grad_accum == 2
    assert json.loads((results / "ga" / "config.json").read_text())["grad_accum"] == 2
    with pytest.raises(FileExistsError, match=r"different settings \(grad_accum\)"):
        stages.start_run("smoke", "ga", grad_accum=3)  # an explicit other value is still refused
    with pytest.raises(FileExistsError, match=r"different settings \(alpha\)"):
        stages.start_run("smoke", "ga", alpha=9.0)
    assert stages.start_run("smoke", "other").grad_accum == 1  # other runs keep the profile's value


@pytest.mark.slow
def test_run_evaluates_a_run_trained_with_grad_accum(tmp_path):
    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(tmp_path / "results"),
           "NEFTLIB_FIGURES_DIR": str(tmp_path / "figures"), "HF_HUB_OFFLINE": "1"}
    env.pop("NEFTLIB_DATA_DIR", None)  # the embedded mini set: fast and the same everywhere

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "neftlib", *args], cwd=PROJ, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    trained = cli("train", "--profile", "smoke", "--run", "ga", "--grad-accum", "2", "--arm", "baseline", "neftune")
    assert "effective batch 8" in trained.stdout
    cli("run", "--profile", "smoke", "--run", "ga", "--only", "02")  # was: "different settings (grad_accum)"
    run = tmp_path / "results" / "ga"
    assert json.loads((run / "config.json").read_text())["grad_accum"] == 2
    for arm in ("baseline", "neftune", "gaussian"):  # gaussian trained by notebook 02, the others reused
        assert json.loads((run / "train" / arm / "summary.json").read_text())["effective_batch"] == 8
    assert (run / "notebooks" / "02_noisy_training.ipynb").exists() and (run / "train" / "DONE.json").exists()
