"""Two commands on one run folder: the second is refused while the first lives; a dead holder's lock is stale."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from neftlib.pipeline import lock

PROJ = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from neftlib.pipeline.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJ)}


def _holder(folder: Path, seconds: float = 900) -> subprocess.Popen:
    """A second process that takes the folder's lock and keeps it for `seconds` (the test kills it sooner)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neftlib", *args], capture_output=True, text=True, env=_env(),
                          timeout=300)


def test_second_command_refused_naming_the_first_then_stale_lock_replaced(results: Path) -> None:
    folder = results / "busy"
    first = _holder(folder)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(psutil.Process(first.pid).create_time()))
        for command in (["run", "--profile", "smoke", "--run", "busy"],
                        ["train", "--profile", "smoke", "--run", "busy"]):
            done = _cli(*command)
            assert done.returncode == 2, done.stderr
            assert f"process {first.pid}" in done.stderr and started in done.stderr, done.stderr
            # Refused before anything ran: no config, no data, no executed notebook.
            assert sorted(p.name for p in folder.iterdir()) == [lock.LOCK_NAME]
        # A notebook kernel that is not the holder's child is refused the same way.
        with pytest.raises(lock.RunLockedError, match=f"process {first.pid}"):
            lock.check_free(folder)
    finally:
        first.send_signal(signal.SIGKILL)  # killed: its lock file stays behind, stale
        first.wait()
    assert json.loads((folder / lock.LOCK_NAME).read_text())["pid"] == first.pid
    assert lock.holder(folder) is None
    with lock.run_lock(folder) as record:
        assert record["pid"] == os.getpid()
        assert json.loads((folder / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / lock.LOCK_NAME).exists()


def test_two_at_once_exactly_one_wins(results: Path) -> None:
    folder = results / "race"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "900"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    try:
        deadline = time.monotonic() + 180
        while all(p.poll() is None for p in procs):  # the loser exits; the winner holds until killed
            assert time.monotonic() < deadline, "both processes hold the lock"
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert winner.poll() is None and winner.stdout.readline().strip() == "held"
        err = loser.stderr.read()
        assert loser.returncode != 0 and "RunLockedError" in err and f"process {winner.pid}" in err, err
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_child_of_the_holder_goes_on(results: Path) -> None:
    """papermill's kernels are children of `neftlib run`: their start_run passes the check."""
    folder = results / "family"
    child = "import sys; from neftlib.pipeline.lock import check_free, acquire, release; check_free(sys.argv[1]); " \
            "r = acquire(sys.argv[1]); assert r['reentrant']; release(sys.argv[1], r); print('ok')"
    with lock.run_lock(folder):
        done = subprocess.run([sys.executable, "-c", child, str(folder)], capture_output=True, text=True, env=_env())
        assert done.stdout.strip() == "ok", done.stderr
        assert (folder / lock.LOCK_NAME).exists()  # the child's release left the parent's lock alone


def test_reused_pid_counts_as_stale(results: Path) -> None:
    folder = results / "reused"
    folder.mkdir(parents=True)
    parent = psutil.Process(os.getppid())
    # A live pid whose process started later than the recorded start time: the pid was reused.
    (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": parent.pid, "start_time": parent.create_time() - 1000,
                                                     "host": lock.socket.gethostname()}))
    assert lock.holder(folder) is None
    record = lock.acquire(folder)
    assert record["pid"] == os.getpid()
    lock.release(folder, record)


def test_force_moves_the_run_aside_and_keeps_the_lock(results: Path) -> None:
    from neftlib.pipeline.runner import move_aside

    folder = results / "forced"
    with lock.run_lock(folder):
        (folder / "config.json").write_text("{}")
        (folder / "train").mkdir()
        kept = move_aside(folder)
        assert sorted(p.name for p in folder.iterdir()) == [lock.LOCK_NAME]
        assert sorted(p.name for p in kept.iterdir()) == ["config.json", "train"]


def test_no_fcntl_needed(results: Path) -> None:
    """Windows has no fcntl: the lock module imports and works there (filelock picks the platform's lock)."""
    code = ("import sys, warnings; sys.modules['fcntl'] = None; warnings.simplefilter('ignore')\n"
            "from neftlib.pipeline import lock\n"
            "with lock.run_lock(sys.argv[1]) as record: print(record['pid'] == __import__('os').getpid())\n"
            "print(lock.holder(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(results / "portable")], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.stdout.split() == ["True", "None"], done.stderr
    source = (PROJ / "neftlib" / "pipeline" / "lock.py").read_text()
    assert "import fcntl" not in source and lock.guard_path(results / "x") == results / ".x.guard"
