"""Runs the numbered notebooks in order with papermill, each in a fresh kernel."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from traitlets.config import Config

from neftlib.base.io import is_done, write_text
from neftlib.base.paths import NOTEBOOKS_DIR, data_notice, run_dir
from neftlib.base.progress import TEXT_ENV, without_bars
from neftlib.pipeline.hub import check_can_push, push_run
from neftlib.pipeline.lock import LOCK_NAME, run_lock
from neftlib.pipeline.stages import check_same_config, run_config

NOTEBOOKS = ("01_data_prep", "02_noisy_training", "03_qlora_variant", "04_evaluation", "05_overfitting_and_length",
             "06_report")
STAGE_OUTPUTS = {"01_data_prep": "data", "02_noisy_training": "train", "03_qlora_variant": "qlora",
                 "04_evaluation": "eval", "05_overfitting_and_length": "analysis", "06_report": "report"}


# The kernel's messages travel encrypted (CurveZMQ keys from the kernel manager, as the kernelspec allows):
# over plain TCP each kernel would print a warning that says nothing about the run.
KERNEL_CONFIG = Config({"KernelManager": {"transport_encryption": "auto"}})
# Notebook parameters beyond PROFILE / RUN / SEED / ALPHA, and the config field each one overrides (None: the
# profile's value). Every numbered notebook declares them in its `parameters` cell.
PARAMETER_FIELDS = {"TRAIN_EXAMPLES": "train_limit", "MAX_STEPS": "max_steps", "LEARNING_RATE": "learning_rate",
                    "EVAL_PROMPTS": "eval_limit"}


class PipelineError(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error, and where the executed copy is."""


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook's `parameters` cell does not declare (papermill would only warn)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    if not declared:
        raise PipelineError(f"{notebook.name} has no cell tagged 'parameters'")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {notebook.name}; it takes {', '.join(declared)}")


def executed_completely(nb_path: Path) -> bool:
    """Papermill stamps end_time once a notebook has run to its end; a copy cut short by a kill has none."""
    try:
        meta = json.loads(nb_path.read_text(encoding="utf-8"))["metadata"]["papermill"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, or half-written when the run was killed
        return False
    return bool(meta.get("end_time")) and not meta.get("exception")


@contextlib.contextmanager
def _text_progress() -> Iterator[None]:
    """The kernel inherits TEXT_ENV: its progress bars print as text, streamed to this terminal, not as widgets."""
    before = os.environ.get(TEXT_ENV)
    os.environ[TEXT_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TEXT_ENV, None)
        else:
            os.environ[TEXT_ENV] = before


def drop_progress_bars(nb_path: Path) -> None:
    """The executed copy without the text bars its kernel streamed to the terminal: they showed progress
    while it ran and say nothing once it is done. Every other stderr line (a warning to act on) stays."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no readable copy (an executor that keeps none): nothing to clean, nothing lost
        return
    for cell in nb["cells"]:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = without_bars("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
                if not text:
                    continue
                out = {**out, "text": text}
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    write_text(nb_path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _failure(nb_path: Path, name: str, err: Exception) -> PipelineError:
    cell = getattr(err, "exec_count", None) or "?"
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    return PipelineError(f"notebook {name} failed in cell [{cell}]: {ename}: {evalue} "
                         f"(executed copy with the error kept at {nb_path})")


def run_pipeline(profile: str, run: str = "", *, seed: int | None = None, alpha: float | None = None,
                 force: bool = False, only: list[str] | None = None, progress: bool = True, config: str = "",
                 sets: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None) -> Path:
    """Execute the notebooks for a profile or recipe file (`config`) with `sets` overrides (field -> value or
    text); stages with complete outputs are skipped unless `force`.

    `parameters`: more notebook parameters (PARAMETER_FIELDS, e.g. {"EVAL_PROMPTS": 10}), checked before
    anything runs like the others."""
    sets = dict(sets or {})
    extra = dict(parameters or {})
    unknown = sorted(set(extra) - set(PARAMETER_FIELDS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the notebooks also take {', '.join(PARAMETER_FIELDS)}")
    config = str(Path(config).expanduser().resolve()) if config else ""  # the kernels run in notebooks/
    # Fail fast on bad input; --grad-accum / --model given to an earlier `neftlib train` of this run are kept.
    cfg = run_config(profile, run, seed=seed, alpha=alpha, config=config,
                     **{**sets, **{PARAMETER_FIELDS[k]: v for k, v in extra.items()}})
    print(data_notice(), flush=True)  # raises before anything moves when NEFTLIB_DATA_DIR is not a folder
    if force and only:
        raise ValueError("--force moves the whole earlier run aside, so it cannot go with --only; "
                         "use --force alone, or --run NEW_NAME for a fresh run")
    names = list(NOTEBOOKS)
    if only:
        unknown = [n for n in only if not any(nb.startswith(n) for nb in NOTEBOOKS)]
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown}; choose from {', '.join(NOTEBOOKS)}")
        names = [nb for nb in NOTEBOOKS if any(nb.startswith(n) for n in only)]
    check_can_push(cfg)  # a missing hub token is found now, not after hours of training
    folder = run_dir(cfg.run_name)
    # One writer per run folder: a second `run` or `train` on it is refused while this one lives.
    with run_lock(folder):
        if not force:
            check_same_config(cfg)
        elif any(p.name != LOCK_NAME for p in folder.iterdir()):
            kept = move_aside(folder)
            print(f"earlier run moved to {kept}")
        params = {"PROFILE": cfg.profile, "RUN": run, "SEED": seed, "ALPHA": alpha, "CONFIG": config,
                  "SET": {k: list(v) if isinstance(v, tuple) else v for k, v in sets.items()},  # papermill: literals
                  **extra}
        _execute(folder, names, params, progress)
        if cfg.push_to_hub and is_done(folder / "eval"):
            for repo in push_run(cfg):
                print(f"pushed to https://huggingface.co/{repo}", flush=True)
    return folder


def move_aside(folder: Path) -> Path:
    """Move an earlier run's contents (never deleted) to <run>.old-<time>/, keeping this process's lock."""
    kept = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    kept.mkdir()
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME:
            entry.rename(kept / entry.name)
    return kept


def _execute(folder: Path, names: list[str], params: dict[str, Any], progress: bool) -> None:
    """Run the chosen notebooks in order, skipping stages whose outputs and executed copy are complete."""
    import papermill as pm

    executed = folder / "notebooks"
    for i, name in enumerate(names, 1):
        source = NOTEBOOKS_DIR / f"{name}.ipynb"
        target = executed / f"{name}.ipynb"
        # Both: a stage's outputs can be complete while its later cells (figures) never ran.
        if is_done(folder / STAGE_OUTPUTS[name]) and executed_completely(target):
            print(f"[{i}/{len(names)}] {name}: outputs complete, skipped (use --force to rerun)")
            continue
        check_parameters(source, params)
        executed.mkdir(parents=True, exist_ok=True)
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            # The kernel's own output (tqdm bars of training, generation, judging) streams to the terminal.
            stream = {"stdout_file": sys.stdout, "stderr_file": sys.stderr} if progress else {}
            with _text_progress():
                pm.execute_notebook(str(source), str(target), parameters=params, kernel_name="python3",
                                    progress_bar=False, cwd=str(NOTEBOOKS_DIR), config=KERNEL_CONFIG, **stream)
        except pm.PapermillExecutionError as err:
            raise _failure(target, name, err) from None
        drop_progress_bars(target)
        print(f"[{i}/{len(names)}] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
