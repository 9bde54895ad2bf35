"""transformers' Trainer with what a NEFTune study needs on top: per-step rows of log.csv, the noise generator
in every checkpoint, checkpoints published atomically, and a data order that a resumed run repeats exactly.

Everything else (accumulation, mixed precision, DDP / FSDP / DeepSpeed, clipping, the schedule, resume) is
Trainer's own.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from neftlib.data.batching import EpochSampler, non_pad_tokens
from neftlib.noise import noise_state_name
from neftlib.base.io import read_json, write_json

STAGING = ".staging"  # where a checkpoint is written before it is renamed into place
STATE_FILE = "neftlib_state.json"  # our part of a checkpoint: world size and the log rows so far


# log.csv's columns that also go into Trainer's logs, under the same names.
TRAINER_LOG_KEYS = ("noise_ratio", "tokens_per_s")


class BarOnlyProgress(ProgressCallback):
    """Trainer's text progress bar without the dict it prints at every log step: those numbers go to the arm's
    log.csv (and TensorBoard / W&B), where a figure reads them, instead of filling a notebook's output."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class NoisyTrainer(Trainer):
    """Trainer plus the NEFTune callback's noise stream in checkpoints and the rows of log.csv.

    `neftune`: the NEFTuneCallback of this run (its handle exists once training begins); `lengths`: tokens per
    training example, for the seeded length-grouped order; `row`: the run and arm written into every row.
    """

    def __init__(self, *args: Any, neftune, lengths: list[int], group_by_length: bool, row: dict[str, Any],
                 log_rows: list[dict] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.neftune, self.lengths, self.group_by_length, self.row = neftune, lengths, group_by_length, row
        self.log_rows: list[dict] = list(log_rows or [])
        self._staging: Path | None = None
        self._tokens: torch.Tensor | None = None
        self._mark: tuple[float, float, int] | None = None

    # ---------- data order ----------

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        # Trainer's own samplers draw each epoch's order from the global RNG at the epoch's start, so a run
        # resumed in a later epoch would see another order; this one depends on (seed, epoch) alone.
        return EpochSampler(self.lengths, self.args.per_device_train_batch_size, self.args.seed, self.group_by_length)

    # ---------- per-step log rows ----------

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # Summed on the batches' device, read at the next log: no sync per micro-batch.
        counted = sum(non_pad_tokens(b) for b in batch_samples) if batch_samples else None
        if counted is not None:
            self._tokens = counted if self._tokens is None else self._tokens + counted
        if self._mark is None:
            self._mark = (time.perf_counter(), time.process_time(), self.state.global_step)
        return batch_samples, num_items

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._mark is not None:  # a training step (not the final summary)
            row = self._step_row(logs)
            self.log_rows.append(row)
            # Trainer's own logs too: its log_history and every report_to integration (TensorBoard, W&B) see them.
            logs = {**logs, **{k: row[k] for k in TRAINER_LOG_KEYS}}
        super().log(logs, start_time)

    def _step_row(self, logs: dict[str, float]) -> dict[str, Any]:
        """One row of log.csv for the steps since the last one, summed or averaged over all processes."""
        from accelerate.utils import gather_object

        wall, cpu = time.perf_counter() - self._mark[0], time.process_time() - self._mark[1]
        steps = max(1, self.state.global_step - self._mark[2])
        tokens = float(self._tokens) if self._tokens is not None else 0.0
        ratio = self.neftune.handle.pop_mean_ratio() if self.neftune.handle is not None else None
        ranks = gather_object([(tokens, ratio)]) if self.args.world_size > 1 else [(tokens, ratio)]
        ratios = [r for _, r in ranks if r is not None]
        self._tokens, self._mark = None, (time.perf_counter(), time.process_time(), self.state.global_step)
        return {**self.row, "step": self.state.global_step, "loss": logs["loss"],
                "lr": logs.get("learning_rate", float("nan")), "grad_norm": logs.get("grad_norm", float("nan")),
                "tokens_per_s": sum(t for t, _ in ranks) / wall, "noise_ratio": sum(ratios) / len(ratios) if ratios else 0.0,
                "step_s": wall / steps,
                # this process's CPU seconds per step: on a shared machine, step_s / cpu_s shows the contention
                "cpu_s": cpu / steps}

    # ---------- checkpoints ----------

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into a staging folder and renamed into place once complete."""
        out = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        self._staging = out / STAGING
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                write_json(self._staging / name / STATE_FILE, {"world_size": self.args.world_size,
                                                               "step": self.state.global_step, "log": self.log_rows})
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                publish_checkpoint(self._staging / name, out / name)
        except (OSError, RuntimeError) as err:  # a full disk makes torch.save raise RuntimeError, not OSError
            if self.args.should_save:
                shutil.rmtree(self._staging, ignore_errors=True)
            raise checkpoint_write_error(out, self.state.global_step, err) from None
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.neftune.handle is not None:
            torch.save(self.neftune.handle.rng_state(), Path(output_dir) / noise_state_name(self.args.process_index))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is not None and self.neftune.handle is not None:
            path = Path(checkpoint) / noise_state_name(self.args.process_index)
            self.neftune.handle.set_rng_state(torch.load(path, weights_only=True))


def checkpoints(out_dir: Path) -> list[Path]:
    """Published checkpoints of an arm, oldest first."""
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    found = [p for p in Path(out_dir).glob(f"{prefix}*") if p.is_dir() and p.name.removeprefix(prefix).isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(prefix)))


def publish_checkpoint(staged: Path, target: Path) -> None:
    """fsync every file, rename the folder into place, then drop older checkpoints and the staging folder."""
    for path in staged.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    if target.exists():
        shutil.rmtree(target)
    os.chmod(staged, 0o755)
    staged.rename(target)
    for old in checkpoints(target.parent):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(target.parent / STAGING, ignore_errors=True)


def checkpoint_write_error(out_dir: Path, step: int, err: Exception) -> RuntimeError:
    """What to do when a checkpoint cannot be written, most often for a full disk; the previous one is intact."""
    kept = checkpoints(out_dir)
    resume = f"resumes from {kept[-1].name}, which is intact" if kept else "starts this arm over"
    free = shutil.disk_usage(out_dir).free / 2**30
    return RuntimeError(
        f"could not write checkpoint {out_dir / f'checkpoint-{step}'} ({type(err).__name__}: {err}); "
        f"{free:.1f} GiB free on that disk. Free some space and rerun the same command: training {resume}."
    )


def checked_checkpoint(out_dir: Path, world: int) -> tuple[Path | None, list[dict]]:
    """The checkpoint to resume from and its log rows; a clear error for one that is unreadable or was
    written by another number of processes."""
    kept = checkpoints(out_dir)
    if not kept:
        return None, []
    ckpt = kept[-1]
    try:
        state = read_json(ckpt / STATE_FILE)
        read_json(ckpt / "trainer_state.json")
    except (OSError, ValueError) as err:
        raise RuntimeError(f"checkpoint {ckpt} is unreadable ({err}). Delete {ckpt} to start this arm over "
                           "(earlier checkpoints were already replaced).") from None
    if state.get("world_size", 1) != world:
        raise RuntimeError(
            f"checkpoint {ckpt} was written by {state.get('world_size', 1)} process(es) but this launch has {world}: "
            f"the data split and the noise streams depend on it. Relaunch with {state.get('world_size', 1)} "
            f"process(es), or delete {ckpt} to start this arm over.")
    return ckpt, state["log"]
