"""The dose-response study: every arm of the `cpu-dose` profile trained, answered and measured in a run folder of
its own, so several processes (one thread each) work on different arms at once, and a stopped study resumes arm
by arm. Each finished arm is exported to the evidence folder (its per-prompt results, compressed): that export is
the study's record, and an arm found there is never run again.

    python -m neftlib.pipeline.dose_study run --evidence docs/evidence/dose-2026-12-03 --workers 2
    python -m neftlib.pipeline.dose_study status --evidence docs/evidence/dose-2026-12-03

The analysis (fixed in advance in the folder's preregistration.md) is neftlib.analysis.dose_response.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from neftlib.analysis.overfitting import diversity_table, example_losses_table, overfitting_table
from neftlib.base.io import read_json, write_json
from neftlib.base.paths import run_dir
from neftlib.base.profiles import PROFILES
from neftlib.base.recipes import load_config
from neftlib.evaluation.length_probe import length_probe
from neftlib.evaluation.stage import arm_outputs
from neftlib.pipeline.lock import holder, run_lock
from neftlib.pipeline.stages import prepare_data, stage_dir, start_run, train_arms
from neftlib.training.models import load_tokenizer
from neftlib.training.train import load_trained

PROFILE = "cpu-dose"
ARMS: tuple[str, ...] = PROFILES[PROFILE]["arms"]
# Seeds 0-2 of every dose first: if time runs out, the fourth seed is what is missing.
ORDER = tuple(sorted(ARMS, key=lambda a: (int(a.rsplit("seed", 1)[1]) >= 3, int(a.rsplit("seed", 1)[1]),
                                          float(a.split("-")[0].removeprefix("alpha")))))
ARM_FILES = ("summary.json", "log.csv", "model_outputs.json.gz", "train_prompt_outputs.json.gz",
             "example_losses.csv.gz", "metrics.json", "length_probe.csv.gz")


def arm_run(arm: str, profile: str = PROFILE) -> str:
    """The run folder of one arm: results/<profile>-<arm>/."""
    return f"{profile}-{arm}"


def exported(evidence: Path, arm: str) -> bool:
    """Whether the arm's record is complete in the evidence folder (its DONE marker is written last)."""
    return (evidence / "arms" / arm / "DONE").exists()


def _gzip_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with source.open("rb") as fin, gzip.GzipFile(tmp, "wb", mtime=0) as fout:  # mtime 0: same bytes every time
        fout.write(fin.read())
    tmp.replace(target)


def measure_arm(arm: str, evidence: Path, progress: bool = True, profile: str = PROFILE) -> Path:
    """Train, answer and measure one arm in its own run folder, then export it to `evidence`/arms/<arm>/."""
    arms = load_config(profile).arms
    if arm not in arms:
        raise ValueError(f"{arm!r} is not an arm of {profile}: choose from {', '.join(arms)}")
    target = evidence / "arms" / arm
    if exported(evidence, arm):
        return target
    folder = run_dir(arm_run(arm, profile))
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(folder):
        # One arm per folder; the study trains no QLoRA or length-only arms.
        cfg = start_run(profile, arm_run(arm, profile), arms=(arm,), qlora_arms=(), length_arms=())
        prepare_data(cfg)
        train_arms(cfg)
        arm_dir = stage_dir(cfg, "train") / arm
        tok = load_tokenizer(cfg.model)
        rows = read_json(stage_dir(cfg, "data") / "eval.json")
        arm_outputs(cfg, "train", arm, arm_dir, rows, tok, progress=progress)
        overfitting = overfitting_table(cfg, progress).iloc[0].to_dict()
        diversity = diversity_table(cfg).iloc[0].to_dict()
        losses = example_losses_table(cfg, progress)
        probe_path = arm_dir / "length_probe.csv"
        if not probe_path.exists():
            model = load_trained(cfg, arm_dir)
            probe = length_probe(model, tok, rows, cfg.prompt_format, batch_size=cfg.batch_size)
            del model
            tmp = probe_path.with_name(".length_probe.csv.tmp")
            probe.to_csv(tmp, index=False)
            tmp.replace(probe_path)
        losses_path = arm_dir / "example_losses_export.csv"
        losses.to_csv(losses_path, index=False)
    target.mkdir(parents=True, exist_ok=True)
    eval_dir = stage_dir(cfg, "eval") / f"train-{arm}"
    summary = read_json(arm_dir / "summary.json")
    log = pd.read_csv(arm_dir / "log.csv")
    metrics = {"arm": arm, "alpha": summary["alpha"], "seed": summary.get("seed"),
               "noise_ratio": float(log["noise_ratio"].mean()) if "noise_ratio" in log else None,
               **{k: v for k, v in overfitting.items() if k not in ("run", "stage", "arm", "alpha", "distribution")},
               **{k: v for k, v in diversity.items() if k not in ("run", "name")}}
    write_json(target / "summary.json", summary)
    log.to_csv(target / "log.csv", index=False)
    write_json(target / "metrics.json", metrics)
    _gzip_copy(eval_dir / "model_outputs.json", target / "model_outputs.json.gz")
    _gzip_copy(eval_dir / "train_prompt_outputs.json", target / "train_prompt_outputs.json.gz")
    _gzip_copy(losses_path, target / "example_losses.csv.gz")
    _gzip_copy(probe_path, target / "length_probe.csv.gz")
    (target / "DONE").write_text(json.dumps({"arm": arm, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime())}) + "\n")
    return target


def pending(evidence: Path, arms: tuple[str, ...] = ORDER) -> list[str]:
    """The arms not yet exported and not being measured by another live process, in the study's order."""
    return [a for a in arms if not exported(evidence, a) and holder(run_dir(arm_run(a))) is None]


def run_study(evidence: Path, workers: int = 2, arms: tuple[str, ...] = ORDER) -> None:
    """Measure every pending arm, `workers` arms at a time, each in a process of one thread; an arm that fails
    is reported and left for the next call (its run folder resumes from its last checkpoint)."""
    todo = pending(evidence, arms)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: dict[str, subprocess.Popen] = {}
    failed = []
    logs = run_dir("dose-logs")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{len(todo)} of {len(arms)} arms to measure, {workers} at a time; logs in {logs}", flush=True)
    while todo or running:
        # read again each time: another process may have measured or taken an arm meanwhile
        todo = [a for a in pending(evidence, arms) if a not in running and a not in failed]
        while todo and len(running) < workers:
            arm = todo.pop(0)
            with (logs / f"{arm}.log").open("ab") as log:
                running[arm] = subprocess.Popen([sys.executable, "-m", "neftlib.pipeline.dose_study", "arm", arm,
                                                 "--evidence", str(evidence)], env=env, stdout=log,
                                                stderr=subprocess.STDOUT)
            print(f"{time.strftime('%H:%M:%S')} started {arm}", flush=True)
        time.sleep(10)
        for arm, proc in list(running.items()):
            if proc.poll() is not None:
                del running[arm]
                status = "done" if proc.returncode == 0 and exported(evidence, arm) else f"failed ({proc.returncode})"
                if status != "done":
                    failed.append(arm)
                print(f"{time.strftime('%H:%M:%S')} {arm} {status}", flush=True)
    if failed:
        raise RuntimeError(f"arm(s) {failed} failed: see their logs in {logs}; rerun to resume them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neftlib.pipeline.dose_study", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "status", "arm"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--evidence", type=Path, required=True, help="the study's evidence folder")
        if name == "run":
            cmd.add_argument("--workers", type=int, default=2, help="arms at a time, one thread each")
        if name == "arm":
            cmd.add_argument("arm", help="one arm of the profile, e.g. alpha30-seed1")
    args = parser.parse_args(argv)
    if args.command == "status":
        done = [a for a in ORDER if exported(args.evidence, a)]
        print(f"{len(done)} of {len(ORDER)} arms exported: {', '.join(done) or 'none'}")
    elif args.command == "arm":
        print(measure_arm(args.arm, args.evidence))
    else:
        run_study(args.evidence, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
