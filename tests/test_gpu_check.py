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
    # the plan of the pretend 16 GiB card: the bf16 LoRA part cannot hold 32 layers; what it scaled is recorded,
    # each part ran at those sizes, and each part's predicted seconds sit beside its measured ones
    planned = result["plan"]
    assert planned["card"]["memory_gib"] == 16 and planned["sizes"]["qlora_layers"] == 32
    layers = next(c for c in planned["changes"] if c["what"] == "layers")
    assert layers["from"] == 32 and layers["to"] == planned["sizes"]["layers"] < 32 and "memory" in layers["why"]
    assert bf16["layers"] == result["sizes"]["layers"] == layers["to"] and qlora["layers"] == 32
    assert qlora["t4"] is None or qlora["t4"]["projected_to_32_layers"] is False
    assert all(parts[n]["predicted_s"] > 0 for n in ("random_7b", "qlora_7b", "bf16_7b"))
    assert f"scaled layers: 32 -> {layers['to']}" in proc.stdout
    assert result["goals"]["neftlib_over_trainer"]["value"] == bf16["ratio_neftlib_over_hf_trainer"]
    assert "full_7b    error" in proc.stdout and "goal bf16_mfu" in proc.stdout  # the printed table


# Cards the check should finish on in 10 minutes: (GiB CUDA reports, native bf16, matmul TFLOP/s, memory GB/s)
CARDS = {"T4": (14.6, False, 40, 280), "16 GB": (15.7, True, 60, 400), "RTX 4090": (23.6, True, 150, 900),
         "A100 40GB": (39.4, True, 250, 1300), "A100 80GB": (79.2, True, 250, 1700), "H200": (139.8, True, 650, 4000)}


@pytest.fixture(scope="module")
def gpu_check_module():
    sys.path.insert(0, str(PROJ / "bench"))
    import gpu_check

    yield gpu_check
    sys.path.remove(str(PROJ / "bench"))


@pytest.mark.parametrize("card", list(CARDS))
def test_plan_fits_each_card_and_the_budget_and_says_what_it_scaled(tmp_path, gpu_check_module, card):
    gc = gpu_check_module
    memory, bf16, tflops, bandwidth = CARDS[card]
    spec = {"memory_gib": memory, "bf16": bf16, "tflops": tflops, "bandwidth_gb_s": bandwidth}
    planned = gc.plan(spec, 540, gc.ORDER, folder=tmp_path)
    sizes, kept = planned["sizes"], planned["parts"]
    # every part that runs fits the card by the project's own estimates, and all of them fit the budget
    usable = memory * 2**30 * gc.USABLE
    mem = gc.part_memory(gc.Shapes(tmp_path), sizes)
    for part, layers in (("qlora_7b", "qlora_layers"), ("bf16_train", "layers"), ("bf16_generation", "layers"),
                         ("full_7b", "full_layers")):
        if sizes[layers]:
            assert mem[part](sizes[layers]) <= usable, (part, sizes[layers])
    assert planned["predicted_total_s"] <= 540 * gc.TIME_MARGIN
    assert sum(planned["limits_s"].values()) > planned["predicted_total_s"]  # limits leave room for a slow part
    assert {"gpu_tests", "random_7b", "qlora_7b", "bf16_7b", "full_7b"} <= set(kept)  # the most wanted parts run
    assert set(kept) | set(planned["skipped"]) == set(gc.ORDER)
    for change in planned["changes"]:
        assert set(change) == {"what", "from", "to", "why"} and change["from"] != change["to"]
        assert change["why"].split(":")[0] in ("memory", "time", "the card has no bf16")
    changed = {c["what"] for c in planned["changes"]}
    assert ("compute" in changed) == (not bf16) and sizes["compute"] == ("bf16" if bf16 else "fp16")
    if memory < 20:  # 16 GB: the bf16 LoRA and the full fine-tune on fewer layers, QLoRA on (nearly) all 32
        assert sizes["layers"] < 32 and sizes["full_layers"] <= 2 and sizes["qlora_layers"] >= 30
        assert {"layers", "full_layers"} <= changed
    if memory > 70:
        assert sizes["layers"] == sizes["qlora_layers"] == 32 and sizes["full_layers"] == 8
    assert (planned["warning"] is None) == (memory >= gc.SMALLEST_CARD_GIB)


def test_bundle_pins_the_replications_versions():
    import re

    bundle = (PROJ / "bench" / "gpu_bundle.sh").read_text()
    pinned = dict(re.findall(r"([a-z-]+)==([0-9.]+)", re.search(r'PINNED="([^"]+)"', bundle).group(1)))
    # the replication's exact versions: constraints.txt where the project keeps them, else pyproject's pins
    source = PROJ / "constraints.txt" if (PROJ / "constraints.txt").exists() else PROJ / "pyproject.toml"
    exact = dict(re.findall(r'^"?([A-Za-z0-9_.-]+)==([0-9.]+)', source.read_text().replace('  "', '"'), re.M))
    exact = {name.lower(): version for name, version in exact.items()}
    assert "accelerate" in pinned and all(exact.get(name) == version for name, version in pinned.items()), pinned
