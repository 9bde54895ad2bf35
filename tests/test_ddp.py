"""DDP on two CPU processes (gloo) through the real launchers, `accelerate launch` and `torchrun`.

`python -m neftlib train` runs once per rank: training finishes, only the main process writes, the
two ranks draw different noise, and a second launch of the same command, killed after a checkpoint and
relaunched, ends with exactly the same per-step losses and noise states.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from neftlib.noise import noise_seed

PROJ = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# smoke: 6 steps, checkpoint at step 3; accumulation 2, so DDP's no_sync runs on every first micro-batch
TRAIN_ARGS = ["train", "--profile", "smoke", "--arm", "neftune", "--grad-accum", "2"]
LAUNCH_TIMEOUT = 300  # seconds; a rank stuck at a barrier fails the test instead of hanging it

# Simulates a kill: every rank stops in step 4, after the checkpoint of step 3 (each rank collates its own
# two micro-batches per step, one batch ahead: calls 1-3 in step 1, 8-9 in step 4), at the same point so
# neither rank is left waiting in a collective.
DYING_WORKER = """
import sys
import neftlib.batching as batching
from neftlib.__main__ import main

real_collate, calls = batching.collate, [0]

def dying_collate(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 8:
        raise KeyboardInterrupt("simulated kill")
    return real_collate(*args, **kwargs)

batching.collate = dying_collate
sys.exit(main(sys.argv[1:]))
"""


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, NEFTLIB_RESULTS_DIR=str(root / "results"), NEFTLIB_FIGURES_DIR=str(root / "figures"),
               # no user-level accelerate default_config.yaml may change the launch
               HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("NEFTLIB_DATA_DIR", None)  # the embedded mini set: fast and the same everywhere
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(root: Path, run: str) -> subprocess.CompletedProcess:
    # --multi_gpu selects torch's multi-process launcher; on a machine without GPUs neftlib joins the
    # group on CPU with gloo (accelerate's own --cpu path launches several processes only through MPI).
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "neftlib", *TRAIN_ARGS, "--run", run]
    return subprocess.run(cmd, cwd=PROJ, env=_env(root), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _torchrun(root: Path, run: str, script: Path | None = None) -> subprocess.CompletedProcess:
    target = [str(script)] if script else ["-m", "neftlib"]
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *target, *TRAIN_ARGS,
           "--run-name", run]  # torchrun would read "--run" as an abbreviation of its own --run-path
    return subprocess.run(cmd, cwd=PROJ, env=_env(root), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _arm(root: Path, run: str) -> Path:
    return root / "results" / run / "train" / "neftune"


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One `accelerate launch` of two ranks; the folder holding its results."""
    root = tmp_path_factory.mktemp("ddp")
    proc = _accelerate(root, "a")
    _ok(proc)
    assert "2 process(es), effective batch 16" in proc.stdout  # the main process reports, once
    assert proc.stdout.count("results in ") == 1
    return root


def test_two_ranks_train_once_with_their_own_noise(launched):
    run = launched / "results" / "a"
    arm = _arm(launched, "a")
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 16  # batch 4 x grad_accum 2 x 2
    # Each rank seeded its own noise stream, and the streams ended in different states.
    assert summary["noise_seeds"] == [noise_seed(0, 0), noise_seed(0, 1)]
    states = summary["noise_rng_sha256"]
    assert len(states) == 2 and states[0] != states[1]
    fresh = [hashlib.sha256(torch.Generator().manual_seed(s).get_state().numpy().tobytes()).hexdigest()[:16]
             for s in summary["noise_seeds"]]
    assert states[0] != fresh[0] and states[1] != fresh[1]  # both ranks drew noise

    log = pd.read_csv(arm / "log.csv")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6] and (log["noise_ratio"] > 0).all()
    # The cosine schedule moves once per optimizer step, not once per process (accelerate's default).
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, 1, 6)
    expected = []
    for _ in range(6):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert log["lr"].tolist() == pytest.approx(expected, rel=1e-12)

    # Only the main process wrote: one set of files, no leftovers of checkpoints or temp folders.
    assert sorted(p.name for p in arm.iterdir()) == ["DONE.json", "config.json", "log.csv", "model", "summary.json"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "data", "env.json", "train"]
    assert len(list(run.rglob("summary.json"))) == 1
    stage = pd.read_csv(run / "train" / "summary.csv")
    assert stage["arm"].tolist() == ["neftune"]
    assert not (run / "train" / "DONE.json").exists()  # baseline and gaussian were not trained


def test_killed_launch_resumes_to_the_same_numbers(launched, tmp_path):
    """A second launch of the same command, killed after its checkpoint and relaunched, matches the first."""
    script = tmp_path / "dying_worker.py"
    script.write_text(DYING_WORKER)
    cut = _torchrun(launched, "b", script)
    assert cut.returncode != 0
    arm = _arm(launched, "b")
    assert [p.name for p in arm.glob("checkpoint-*")] == ["checkpoint-3"] and not (arm / "DONE.json").exists()
    ckpt = arm / "checkpoint-3"
    assert json.loads((ckpt / "neftlib_state.json").read_text())["world_size"] == 2
    noise = [torch.load(ckpt / f"noise_rng_state_{r}.pth", weights_only=True) for r in (0, 1)]
    assert not torch.equal(noise[0], noise[1])  # each rank's own noise stream, saved by that rank

    _ok(_torchrun(launched, "b"))  # every rank loads checkpoint-3 and its own RNG states
    a, b = _arm(launched, "a"), arm
    assert pd.read_csv(b / "log.csv")["loss"].tolist() == pd.read_csv(a / "log.csv")["loss"].tolist()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("final_loss", "train_nonoise_loss", "heldout_loss", "noise_seeds", "noise_rng_sha256"):
        assert sb[key] == sa[key], key
    assert not list(b.glob("checkpoint-*"))
