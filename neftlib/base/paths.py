"""Every path the project uses, from one place. Nothing is created at import."""
from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
EMBEDDED_DATA_DIR = PROJ_ROOT / "data"
MINI_TRAIN = EMBEDDED_DATA_DIR / "mini_instruct.json"
MINI_EVAL = EMBEDDED_DATA_DIR / "mini_eval.json"
RECIPES_DIR = PROJ_ROOT / "configs" / "recipes"  # one YAML per profile (neftlib.recipes)


def results_root() -> Path:
    """Where runs write; `NEFTLIB_RESULTS_DIR` overrides (tests point it at a temp dir)."""
    return Path(os.environ.get("NEFTLIB_RESULTS_DIR", PROJ_ROOT / "results"))


def figures_root() -> Path:
    """Where figures go; `NEFTLIB_FIGURES_DIR` overrides."""
    return Path(os.environ.get("NEFTLIB_FIGURES_DIR", PROJ_ROOT / "figures"))


def cache_dir() -> Path:
    """Project-local cache for converted models (never site-packages); `NEFTLIB_CACHE_DIR` overrides."""
    return Path(os.environ.get("NEFTLIB_CACHE_DIR", PROJ_ROOT / ".cache"))


def data_dir() -> Path | None:
    """The real-data folder named by `NEFTLIB_DATA_DIR`, or None when unset or empty."""
    value = os.environ.get("NEFTLIB_DATA_DIR", "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"NEFTLIB_DATA_DIR={value!r} is not a folder: point it at the real-data folder "
            "(e.g. ../shared/data) or unset it to use the embedded mini set."
        )
    return path


def data_notice() -> str:
    """One line saying which data a run reads, so a run on the embedded set is never a surprise."""
    root = data_dir()
    if root is not None:
        return f"data: NEFTLIB_DATA_DIR={root}"
    return ("data: NEFTLIB_DATA_DIR is not set, so 'auto' data means the embedded mini set (data/) and the "
            "published answers are skipped; `make reproduce` sets it to ../shared/data when that folder "
            "exists, or export NEFTLIB_DATA_DIR=/path/to/data")


def run_dir(run: str) -> Path:
    return results_root() / run


def figures_dir(run: str) -> Path:
    return figures_root() / run
