"""`make gpu-check` (bench/gpu_check.py): without a GPU it says so and exits 0; on a CPU its 7B parts rehearse at a
tiny shape, each recording its figures or its error without stopping the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJ = Path(__file__).resolve().parents[1]
CHECK = PROJ / "bench" / "gpu_check.py"


def _check(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], cwd=PROJ, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})},
                          timeout=timeout)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    out.write_text('{"earlier": "kept"}')
    proc = _check("--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert "gpu-check: no CUDA GPU here" in proc.stdout and "nothing to check" in proc.stdout
    assert out.read_text() == '{"earlier": "kept"}'  # an earlier GPU run's figures are not wiped


def test_make_gpu_check_is_that_one_command():
    # Under `make test` this make is a sub-make: without these it would print "Entering directory", and the
    # ARGS of `make test ARGS=...` (exported to the environment) would reach gpu-check's command line.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "ARGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", "PY=/nonexistent/python",
                           "PYTHON=python3"], cwd=PROJ, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "python3 bench/gpu_check.py"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="rehearses the GPU parts on a CPU")
def test_rehearsal_records_each_part_and_an_error_without_stopping(tmp_path):
    out = tmp_path / "gpu_check.json"
    # --full-layers 0 makes the full fine-tune part fail: the check records it and goes on
    proc = _check("--rehearse", "--parts", "qlora_7b", "full_7b", "bf16_7b", "--full-layers", "0", "--steps", "2",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert list(parts) == ["random_7b", "qlora_7b", "full_7b", "bf16_7b"]  # the model the 7B parts load comes first
    assert result["environment"]["device"] == "cpu" and result["environment"]["torch"] == torch.__version__
    assert parts["full_7b"]["status"] == "error" and "--full-layers must be at least 1" in parts["full_7b"]["error"]
    qlora, bf16 = parts["qlora_7b"], parts["bf16_7b"]
    assert qlora["status"] == "ok" and bf16["status"] == "ok"  # the part after the failed one still ran
    train = qlora["train"]
    assert (train["method"], train["precision"], train["gradient_checkpointing"]) == ("qlora", "fp16", True)
    assert train["steps"] == 2 and train["timed_steps"] == 1 and train["tokens_per_s"] > 0 and train["estimate_gib"] > 0
    assert qlora["generation"]["load_in_4bit"] and qlora["generation"]["tokens_per_s"] > 0
    lora = bf16["lora"]
    assert lora["method"] == "lora" and lora["precision"] == "bf16" and 0 < lora["mfu"]
    assert bf16["ratio_neftlib_over_hf_trainer"] == pytest.approx(
        lora["tokens_per_s"] / bf16["hf_trainer_neftune"]["tokens_per_s"], rel=1e-3)
    assert bf16["generation"]["batch"] == 32  # gpu-7b's gen_batch_size
    assert result["goals"]["neftlib_over_trainer"]["value"] == bf16["ratio_neftlib_over_hf_trainer"]
    assert "full_7b    error" in proc.stdout and "goal bf16_mfu" in proc.stdout  # the printed table
