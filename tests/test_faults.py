"""Fault drills: kill a stage mid-way, fill the disk, feed bad input, look for a leaked key.

Each test is named after its fault. A killed stage runs in a real child process (started from a
forkserver that has imported neftlib once); the child stops at a known point, announced by a marker
file, and is killed there with SIGTERM or SIGKILL. The same stage is then run again and must end with
exactly the results of an uninterrupted run.

Faults tested elsewhere, not repeated here:
  malformed rows / invalid JSON     test_data.py: test_bad_rows_name_file_row_and_field,
                                    test_bad_rows_dropped_and_counted_on_request, test_invalid_json_is_one_line;
                                    test_sources.py: test_bad_rows_raise_with_file_row_field_or_are_dropped
  empty data file / huge rows       test_sources.py: test_empty_file_is_an_error;
                                    test_data.py: test_truncation_and_drops_are_counted; test_train.py:
                                    test_clear_errors_before_training (no usable rows)
  unknown profile / field / alpha   test_config.py: test_unknown_profile_and_field_named, test_bad_alpha_is_refused;
                                    test_notebooks.py: test_bad_input_refused_before_running,
                                    test_unknown_notebook_parameter_is_refused
  unknown model name                test_train.py: test_clear_errors_before_training;
                                    test_cli_and_models.py: test_unknown_model_is_named
  judge timeout / 429 / 500 / not   test_judge_api.py: test_timeout_is_retried,
  a judgment / resume after error   test_429_then_success_respects_retry_after,
                                    test_5xx_until_max_retries_gives_clear_error,
                                    test_unparseable_reply_names_instruction_and_reply,
                                    test_malformed_reply_is_retried_then_reported,
                                    test_interrupted_run_resumes_with_the_rest
  key in cache / errors / repr      test_judge_api.py: test_cache_second_run_makes_no_requests,
                                    test_401_fails_at_once_without_the_key, test_key_never_in_repr_or_attributes,
                                    test_reply_echoing_the_key_is_redacted
  corrupted checkpoint              test_train.py: test_corrupted_checkpoint_is_named
  killed training (in-process)      test_train.py: test_interrupted_run_resumes_to_the_same_result
  a failing notebook                test_notebooks.py: test_failing_notebook_named_with_cell_and_copy_kept
  same run name, other settings     test_notebooks.py: test_different_settings_never_overwrite_an_earlier_run
"""
from __future__ import annotations

import errno
import io
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neftlib.pipeline import stages
from neftlib.evaluation.stage import evaluate
from neftlib.base.io import read_json, write_json
from neftlib.evaluation.judge import LocalJudge

PROJ = Path(__file__).resolve().parents[1]
RUN = "drill"
# A smoke run cut down further: 6 steps with checkpoints at 2 and 4, two arms, 4 prompts in 2 batches.
KW = dict(arms=("baseline", "neftune"), train_limit=12, heldout_limit=4, loss_subset=4, max_length=48,
          batch_size=2, max_steps=6, save_every=2, eval_limit=4, gen_batch_size=2, gen_max_new_tokens=4,
          agreement_pairs=0, length_arms=())
# Imported once by the forkserver, so that each killed child starts in a fraction of a second.
PRELOAD = ["neftlib.pipeline.stages", "neftlib.training.train", "neftlib.evaluation.stage", "transformers.optimization", "accelerate"]


def _start(**extra):
    return stages.start_run("smoke", RUN, **KW, **extra)


def _restore(snapshot: Path, results: Path) -> Path:
    shutil.copytree(snapshot, results / RUN)
    return results / RUN


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run: snapshots after 01 (after_data) and 02 (after_train), and its evaluation (results)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEFTLIB_RESULTS_DIR", str(root / "results"))
        cfg = _start()
        stages.prepare_data(cfg)
        shutil.copytree(root / "results" / RUN, root / "after_data")
        stages.train_arms(cfg, "train")
        shutil.copytree(root / "results" / RUN, root / "after_train")
        evaluate(cfg, progress=False)
    return root


# ---------- the child process and its faults ----------

def _wait_to_be_killed(marker: Path) -> None:
    marker.touch()
    while True:
        time.sleep(60)


def _stop_at_call(owner, name: str, n: int, marker: Path, before=None) -> None:
    """The n-th call of owner.name runs `before` (if given), creates `marker` and waits to be killed."""
    real, calls = getattr(owner, name), itertools.count(1)

    def stopping(*args, **kwargs):
        if next(calls) == n:
            if before is not None:
                before(real, *args, **kwargs)
            _wait_to_be_killed(marker)
        return real(*args, **kwargs)

    setattr(owner, name, stopping)


def _write_half(real_save, obj, path, *args, **kwargs) -> None:
    """A checkpoint file cut off half-way, as a kill in the middle of torch.save leaves it."""
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def _stop_at_save_into(folder: str, marker: Path) -> None:
    """The first torch.save into `folder` writes half its file, creates `marker` and waits to be killed."""
    real = torch.save

    def stopping(obj, f, *args, **kwargs):
        if folder in str(f):
            _write_half(real, obj, f)
            _wait_to_be_killed(marker)
        return real(obj, f, *args, **kwargs)

    torch.save = stopping


def _arm_fault(fault: str, marker: Path) -> None:
    import neftlib.data.batching
    from transformers.generation.utils import GenerationMixin

    # Trainer fetches one batch ahead: the n-th collate call comes in step n - 1.
    if fault == "between steps":  # in step 3 of 6: checkpoint-2 on disk, step 3 only in memory
        _stop_at_call(neftlib.data.batching, "collate", 4, marker)
    elif fault == "writing a checkpoint":  # a file of checkpoint-4 half written
        _stop_at_save_into("checkpoint-4", marker)
    elif fault == "generating":  # 2nd batch of the 2nd arm: the 1st arm's answers saved
        _stop_at_call(GenerationMixin, "generate", 4, marker)
    elif fault == "judging":  # 2nd batch of 4 judgments: the 1st batch cached
        _stop_at_call(LocalJudge, "prob_first_better", 2, marker)
    else:
        raise ValueError(fault)


def _stage_until_fault(results: str, fault: str, marker: str, threads: int, log: str) -> None:
    """Child process: the stage the fault belongs to, stopped at the fault until killed."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["NEFTLIB_RESULTS_DIR"] = results
    torch.set_num_threads(threads)  # as the parent: the same float results
    _arm_fault(fault, Path(marker))
    cfg = _start()
    if fault in ("between steps", "writing a checkpoint"):
        stages.train_arms(cfg, "train", arms=["neftune"])
    else:
        evaluate(cfg, progress=False)


def _kill_at(fault: str, sig: signal.Signals, results: Path, tmp_path: Path) -> None:
    """Run the stage in a child process and kill it with `sig` once it reaches `fault`."""
    marker, log = tmp_path / "reached_fault", tmp_path / "child.log"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    child = ctx.Process(target=_stage_until_fault,
                        args=(str(results), fault, str(marker), torch.get_num_threads(), str(log)))
    child.start()
    deadline = time.monotonic() + 300
    while not marker.exists():
        if not child.is_alive() or time.monotonic() > deadline:
            child.kill()
            child.join()
            pytest.fail(f"child never reached the fault {fault!r} (exit {child.exitcode}):\n"
                        + (log.read_text()[-3000:] if log.exists() else ""))
        time.sleep(0.05)
    os.kill(child.pid, sig)
    child.join(60)
    assert child.exitcode == -sig, f"child did not die of {sig.name}"


def _training_result(arm_dir: Path) -> tuple[dict, pd.DataFrame, dict]:
    summary = {k: v for k, v in read_json(arm_dir / "summary.json").items() if k != "train_wall_s"}
    log = pd.read_csv(arm_dir / "log.csv")[["step", "loss", "lr", "grad_norm", "noise_ratio"]]
    return summary, log, load_file(arm_dir / "model" / "model.safetensors")


def _assert_same_training(arm_dir: Path, expected_dir: Path) -> None:
    (summary, log, weights), (summary0, log0, weights0) = _training_result(arm_dir), _training_result(expected_dir)
    assert summary == summary0
    pd.testing.assert_frame_equal(log, log0)
    assert weights.keys() == weights0.keys() and all(torch.equal(weights[k], weights0[k]) for k in weights)


def _assert_same_evaluation(run: Path, expected_run: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(run / "eval" / "winrates.csv"),
                                  pd.read_csv(expected_run / "eval" / "winrates.csv"))
    for arm in ("train-baseline", "train-neftune"):
        for name in ("model_outputs.json", "annotations.json"):
            assert read_json(run / "eval" / arm / name) == read_json(expected_run / "eval" / arm / name), (arm, name)


def _record_calls(monkeypatch, owner, name: str) -> list[tuple]:
    """The positional arguments of every call of owner.name from now on."""
    calls, real = [], getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


# ---------- interruptions ----------

@pytest.mark.parametrize("sig,fault", [
    (signal.SIGTERM, "between steps"), (signal.SIGKILL, "between steps"),
    (signal.SIGTERM, "writing a checkpoint"), (signal.SIGKILL, "writing a checkpoint"),
], ids=["sigterm-between-steps", "sigkill-between-steps", "sigterm-writing-checkpoint", "sigkill-writing-checkpoint"])
def test_killed_during_training_resumes_same_result(reference, results, tmp_path, sig, fault):
    run = _restore(reference / "after_data", results)
    arm = run / "train" / "neftune"
    _kill_at(fault, sig, results, tmp_path)
    assert [p.name for p in arm.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (arm / "summary.json").exists() and not (arm / "DONE.json").exists()
    if fault == "writing a checkpoint":  # the half-written file sits in the staging folder, never read
        assert [p.name for p in arm.glob(".staging/checkpoint-4/*") if p.is_file() and p.stat().st_size > 0]

    stages.train_arms(_start(), "train", arms=["neftune"])  # the same command again
    _assert_same_training(arm, reference / "after_train" / "train" / "neftune")
    assert not list(arm.glob("checkpoint-*")) and not (arm / ".staging").exists()  # nothing left behind


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_during_generation_keeps_finished_arms_and_reads_no_partial_file(reference, results, tmp_path,
                                                                                monkeypatch, sig):
    from transformers.generation.utils import GenerationMixin

    run = _restore(reference / "after_train", results)
    _kill_at("generating", sig, results, tmp_path)
    assert read_json(run / "eval" / "train-baseline" / "model_outputs.json") == \
        read_json(reference / "results" / RUN / "eval" / "train-baseline" / "model_outputs.json")
    assert not (run / "eval" / "train-neftune").exists()  # half an arm's answers are never written
    assert not (run / "eval" / "DONE.json").exists()

    generate_calls = _record_calls(monkeypatch, GenerationMixin, "generate")
    evaluate(_start(), progress=False)
    assert len(generate_calls) == 2  # only the unfinished arm's two batches are generated again
    _assert_same_evaluation(run, reference / "results" / RUN)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_during_judging_resumes_from_cache_without_judging_twice(reference, results, tmp_path,
                                                                        monkeypatch, sig):
    run = _restore(reference / "after_train", results)
    _kill_at("judging", sig, results, tmp_path)
    assert len(read_json(run / "eval" / "judge_cache.json")) == 4  # the first batch, saved as it came
    assert not (run / "eval" / "winrates.csv").exists()

    judge_calls = _record_calls(monkeypatch, LocalJudge, "prob_first_better")
    evaluate(_start(), progress=False)
    expected_cache = read_json(reference / "results" / RUN / "eval" / "judge_cache.json")
    assert sum(len(texts) for _, texts in judge_calls) == len(expected_cache) - 4  # nothing judged twice
    assert read_json(run / "eval" / "judge_cache.json") == expected_cache
    _assert_same_evaluation(run, reference / "results" / RUN)


def _ended(process) -> bool:
    """Gone, or a zombie: it has ended, only its new parent (init or a subreaper) has yet to reap it."""
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_pipeline_leaves_no_kernel_running(tmp_path, sig):
    """`python -m neftlib run` killed mid-notebook: its kernel must not carry on alone (a rerun would race it)."""
    import psutil

    from neftlib.pipeline.runner import executed_completely

    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(tmp_path / "r"), "NEFTLIB_FIGURES_DIR": str(tmp_path / "f")}
    runner = subprocess.Popen([sys.executable, "-m", "neftlib", "run", "--profile", "smoke", "--only", "01"],
                              cwd=PROJ, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "r" / "smoke"
    kernels, deadline = [], time.monotonic() + 300
    while not (kernels and (run / "config.json").exists()):  # the kernel runs the notebook's cells
        assert runner.poll() is None and time.monotonic() < deadline, "the runner ended before its kernel started"
        try:
            kernels = [p for p in psutil.Process(runner.pid).children(recursive=True)
                       if "ipykernel" in " ".join(p.cmdline())]
        except psutil.Error:  # a child that ended while being listed
            kernels = []
        time.sleep(0.05)
    runner.send_signal(sig)
    assert runner.wait() == -sig
    deadline = time.monotonic() + 60
    while not all(_ended(k) for k in kernels) and time.monotonic() < deadline:
        time.sleep(0.1)  # ipykernel checks once a second whether its parent is still there
    alive = [k for k in kernels if not _ended(k)]
    for k in alive:
        k.kill()
    assert not alive, "the kernel outlived the killed pipeline"
    assert not executed_completely(run / "notebooks" / "01_data_prep.ipynb")  # a rerun runs 01 again


def test_notebook_killed_after_its_outputs_is_rerun_not_skipped(results, monkeypatch):
    """A stage can be complete (DONE.json) while its notebook's later cells (figures) never ran."""
    import papermill

    from neftlib.base.recipes import load_config
    from neftlib.pipeline.runner import run_pipeline

    run = results / "smoke"
    load_config("smoke").save(run / "config.json")
    for stage in ("data", "train", "qlora"):
        write_json(run / stage / "DONE.json", {})
    executed = run / "notebooks"
    finished = {"cells": [], "metadata": {"papermill": {"end_time": "2026-11-26T01:00:00", "exception": None}}}
    write_json(executed / "01_data_prep.ipynb", finished)
    cut_short = {"cells": [], "metadata": {"papermill": {"end_time": None, "exception": None}}}
    write_json(executed / "02_noisy_training.ipynb", cut_short)  # as papermill leaves it mid-run
    (executed / "03_qlora_variant.ipynb").write_text(json.dumps(finished)[:40])  # killed while being written

    ran = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, target, **kw: ran.append(Path(target).stem))
    run_pipeline("smoke", only=["01", "02", "03"], progress=False)
    assert ran == ["02_noisy_training", "03_qlora_variant"]


# ---------- a full disk ----------

def test_disk_full_while_checkpointing_keeps_previous_checkpoint(reference, results, monkeypatch):
    """The second checkpoint's first torch.save goes to /dev/full: a real ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    run = _restore(reference / "after_data", results)
    arm = run / "train" / "neftune"
    real_save = torch.save

    def second_save_on_a_full_disk(obj, f, *args, **kwargs):
        return real_save(obj, "/dev/full" if "checkpoint-4" in str(f) else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_save_on_a_full_disk)
    with pytest.raises(RuntimeError, match=r"could not write checkpoint \S+/checkpoint-4 .*GiB free on that disk\. "
                                           r"Free some space and rerun the same command: training resumes from "
                                           r"checkpoint-2, which is intact"):
        stages.train_arms(_start(), "train", arms=["neftune"])
    assert [p.name for p in arm.glob("checkpoint-*")] == ["checkpoint-2"] and not (arm / ".staging").exists()
    assert json.loads((arm / "checkpoint-2" / "neftlib_state.json").read_text())["step"] == 2

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same command finishes the arm
    stages.train_arms(_start(), "train", arms=["neftune"])
    _assert_same_training(arm, reference / "after_train" / "train" / "neftune")


def test_disk_full_while_writing_results_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "eval" / "winrates.json"
    write_json(path, {"win_rate": 51.0})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"could not write \S+winrates.json \(No space left on device\); the previous "
                                      r"version, if any, is intact: free disk space and rerun the same command"):
        write_json(path, {"win_rate": 99.0})
    monkeypatch.undo()
    assert read_json(path) == {"win_rate": 51.0}
    assert [p.name for p in path.parent.iterdir()] == ["winrates.json"]  # no temp file left


# ---------- bad input ----------

def test_data_with_no_usable_rows_refused_in_data_prep(tmp_path, results):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"instruction": "a", "output": " "}, {"instruction": "", "output": "b"}]))
    with pytest.raises(ValueError, match=r"rows.json: row 0: field 'output' is empty.*; fix the row, or set "
                                         r"drop_bad_rows=True to drop and count bad rows"):
        stages.prepare_data(stages.start_run("smoke", "bad", train_data=str(rows)))
    cfg = stages.start_run("smoke", "dropped", train_data=str(rows), drop_bad_rows=True)
    with pytest.raises(ValueError, match=r"rows.json: no usable rows \(2 read, all dropped: 1 x field 'output' is "
                                         r"empty; 1 x field 'instruction' is empty\); fix the file or choose "
                                         r"another train_data"):
        stages.prepare_data(cfg)
    assert not (results / "dropped" / "data" / "DONE.json").exists()


def test_model_not_available_offline_is_named_with_the_fix(monkeypatch):
    from neftlib.base.recipes import load_config
    from neftlib.training.models import load_base, load_tokenizer
    from neftlib.training.memory import check_fits

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = r"model 'nobody/not-on-this-machine' is not available: .* Offline, use the packaged " \
              r"'smollm2-135m-instruct' or a local folder"
    with pytest.raises(FileNotFoundError, match=message):  # before training: the memory estimate
        check_fits(load_config("smoke", model="nobody/not-on-this-machine"))
    with pytest.raises(FileNotFoundError, match=message):
        load_base("nobody/not-on-this-machine")
    with pytest.raises(FileNotFoundError, match=message):  # notebook 01 loads the tokenizer first
        load_tokenizer("nobody/not-on-this-machine")


def test_force_moves_earlier_run_aside_never_deletes_it(results, monkeypatch):
    import papermill

    from neftlib.base.recipes import load_config
    from neftlib.pipeline.runner import run_pipeline

    earlier = results / "smoke"
    load_config("smoke").save(earlier / "config.json")
    write_json(earlier / "eval" / "winrates.json", {"win_rate": 51.0})
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, target, **kw: None)
    run_pipeline("smoke", alpha=9.0, force=True, progress=False)
    kept = [p for p in results.iterdir() if p.name.startswith("smoke.old-")]
    assert len(kept) == 1 and read_json(kept[0] / "eval" / "winrates.json") == {"win_rate": 51.0}
    assert read_json(kept[0] / "config.json")["alpha"] == 5.0
    assert not (earlier / "eval").exists()  # the new run starts empty


# ---------- secrets ----------

def test_api_key_never_written_to_results_logs_or_env_json(reference, results, monkeypatch, capfd, caplog):
    """A whole evaluation with the API judge (a local stand-in server); then every byte written is searched."""
    import logging

    from test_judge_api import FakeServer, reply

    keys = {"NEFTLIB_JUDGE_API_KEY": "sk-drill-NEFTLIB-4242424242", "OPENAI_API_KEY": "sk-drill-OPENAI-1717171717"}
    for var, value in keys.items():
        monkeypatch.setenv(var, value)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # The stand-in echoes the key in a reply field, as a careless proxy might: nothing may keep it.
    server = FakeServer(lambda n, body: (200, {}, {**reply("A" if n % 3 else "B"),
                                                   "system_fingerprint": keys["NEFTLIB_JUDGE_API_KEY"]}))
    monkeypatch.setenv("NEFTLIB_JUDGE_BASE_URL", server.url)
    caplog.set_level(logging.DEBUG)
    try:
        _restore(reference / "after_train", results)
        evaluate(_start(force=True, judge="openai"))  # start_run also rewrites config.json and env.json
    finally:
        server.close()
    assert server.requests and all(r["headers"]["Authorization"] == f"Bearer {keys['NEFTLIB_JUDGE_API_KEY']}"
                                   for r in server.requests)
    written = [p for p in results.parent.rglob("*") if p.is_file()]
    assert any(p.name == "env.json" for p in written) and any(p.name == "judge_cache.json" for p in written)
    out, err = capfd.readouterr()
    for key in keys.values():
        assert not [p for p in written if key.encode() in p.read_bytes()], f"{key} written to a file"
        assert key not in out and key not in err and key not in caplog.text
