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


# A file or folder whose presence makes data/ a real-data folder (docs/data.md gives the layout).
REAL_DATA_MARKERS = ("alpaca_5000.json", "alpaca_data.json", "alpaca_eval")


def data_dir() -> Path | None:
    """The real-data folder: `NEFTLIB_DATA_DIR` when set, else the project's data/ when real data was put there
    (docs/data.md), else None (the embedded mini set)."""
    value = os.environ.get("NEFTLIB_DATA_DIR", "").strip()
    if not value:
        found = any((EMBEDDED_DATA_DIR / name).exists() for name in REAL_DATA_MARKERS)
        return EMBEDDED_DATA_DIR if found else None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"NEFTLIB_DATA_DIR={value!r} is not a folder: point it at the real-data folder (docs/data.md), or unset "
            "it to use data/ (the embedded mini set, plus any real data placed there)."
        )
    return path


def data_notice() -> str:
    """One line saying which data a run reads, so a run on the embedded set is never a surprise."""
    root = data_dir()
    if root is not None:
        return f"data: NEFTLIB_DATA_DIR={root}"
    return ("data: no real data (NEFTLIB_DATA_DIR is not set and data/ holds only the embedded mini set), so 'auto' "
            "data means the mini set and the published answers are skipped; put the real data in data/ or "
            "export NEFTLIB_DATA_DIR=/path/to/data (docs/data.md)")


def run_dir(run: str) -> Path:
    return results_root() / run


def figures_dir(run: str) -> Path:
    return figures_root() / run
