"""Atomic writes and run records: nothing half-written is ever read as complete."""
from __future__ import annotations

import csv
import errno
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from neftlib.base.paths import PROJ_ROOT


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_dir(tmp: Path, target: Path) -> None:
    """Give a finished temp folder (mkdtemp makes it 0700) normal permissions, then rename it into place."""
    os.chmod(tmp, 0o777 & ~_umask())
    tmp.rename(target)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: results must stay readable by others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"could not write {path} ({err.strerror}); the previous version, if any, "
                                     "is intact: free disk space and rerun the same command") from None
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    _atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    """Read JSON with a one-line error that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    _atomic_write_bytes(path, text.encode())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err.msg})") from None
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Tidy CSV, one row per record; columns from the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_bytes(path, buf.getvalue().encode())


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJ_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Package versions, git SHA and device: written as env.json with every run."""
    import torch

    packages = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "papermill"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git_sha": git_sha(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
    }


def mark_done(folder: Path, **info: Any) -> None:
    """Completion marker: a stage's outputs count only once this exists."""
    write_json(Path(folder) / "DONE.json", info)


def is_done(folder: Path) -> bool:
    return (Path(folder) / "DONE.json").exists()
