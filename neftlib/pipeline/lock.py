"""One writer per run folder: a lock file holding the writer's process id and start time.

`neftlib run` and `neftlib train` hold `results/<run>/.lock` while they work. A second command on the same
folder is refused, naming the first's process and start time, unless that process is gone (a killed run
leaves a stale lock, which the next command replaces). The notebooks' `start_run` only checks: a notebook
started by the holder (a papermill kernel is its child) goes on, any other is refused while a command runs.

The record is a JSON file, not an OS lock held for the whole run, because the holder's children (papermill's
kernels) must pass and a dead holder must be named. Only the short check-and-take is serialised, with
`filelock` (flock on POSIX, msvcrt on Windows) on a guard file beside the run folder (results/.<run>.guard),
which stays there empty: inside the folder it would travel with the run's results.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
from filelock import FileLock

from neftlib.base.io import write_json

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None when no such process exists."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's process: alive, start time unknown
        return -1.0


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "host": socket.gethostname(),
            "command": " ".join(psutil.Process().cmdline())[:300], "locked_at": time.time()}


def holder(folder: Path) -> dict[str, Any] | None:
    """The lock's record when its process still runs; None when there is no lock or it is stale."""
    path = Path(folder) / LOCK_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        pid, started = int(info["pid"]), float(info["start_time"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: treat as held, never delete blindly
        return {"pid": "?", "start_time": None, "host": "?", "command": f"unreadable lock file {path}"}
    if info.get("host") not in (None, socket.gethostname()):
        return info  # another machine's process cannot be checked from here
    now = _start_time(pid)
    # Gone, or the pid was reused by a process started later: the lock is stale.
    if now is None or (now >= 0 and abs(now - started) > 1.0):
        return None
    return info


def _mine(info: dict[str, Any]) -> bool:
    """The holder is this process or one of its ancestors (papermill's kernel is the runner's child)."""
    try:
        ours = [psutil.Process()] + psutil.Process().parents()
        return any(p.pid == info.get("pid") and abs(p.create_time() - float(info["start_time"])) <= 1.0
                   for p in ours)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def describe(info: dict[str, Any]) -> str:
    started = info.get("start_time")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started and started > 0 else "unknown"
    return f"process {info.get('pid')} on {info.get('host')} (started {when}: {info.get('command', '?')})"


def _refusal(folder: Path, info: dict[str, Any]) -> RunLockedError:
    return RunLockedError(
        f"{folder} is in use by {describe(info)}; wait for it to finish, or stop it, or choose another run "
        f"name (RUN / --run). If that process is gone from another machine, delete {Path(folder) / LOCK_NAME}")


def guard_path(folder: Path) -> Path:
    """The file whose OS lock serialises check-and-take for `folder`."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.guard")


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    """Serialise check-and-take between processes, so two can never both find the lock free and take it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(guard_path(folder)):
        yield


def check_free(folder: Path) -> None:
    """Refuse when another live process (not this one or an ancestor) holds the folder's lock."""
    info = holder(folder) if (Path(folder) / LOCK_NAME).exists() else None
    if info is not None and not _mine(info):
        raise _refusal(Path(folder), info)


def acquire(folder: Path) -> dict[str, Any]:
    """Take the folder's lock (replacing a stale one); RunLockedError naming the holder otherwise."""
    folder = Path(folder)
    with _guard(folder):
        info = holder(folder)
        if info is not None:
            if not _mine(info):
                raise _refusal(folder, info)
            return {**info, "reentrant": True}  # this process (or its parent) holds it already: keep theirs
        record = _me()
        write_json(folder / LOCK_NAME, record)
    return record


def release(folder: Path, record: dict[str, Any]) -> None:
    """Remove the lock if it is still the one `acquire` wrote."""
    folder = Path(folder)
    if record.get("reentrant") or not folder.exists():
        return
    with _guard(folder):
        try:
            info = json.loads((folder / LOCK_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if info.get("pid") == record["pid"] and info.get("locked_at") == record["locked_at"]:
            (folder / LOCK_NAME).unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[dict[str, Any]]:
    """Hold the run folder's lock inside the block."""
    record = acquire(folder)
    try:
        yield record
    finally:
        release(folder, record)
