"""The reference run's executed notebooks, published under docs/reference-run/ so a reader sees every result
without running anything. `make reference-run` runs the pipeline on the cpu profile with real Alpaca, then

    python -m neftlib.pipeline.reference RUN

copies the run's executed notebooks there, outputs kept: machine paths become `<project>` and
`$NEFTLIB_DATA_DIR`, progress-bar widgets are left out, and nothing else changes.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from neftlib.base.io import write_json
from neftlib.base.paths import PROJ_ROOT, run_dir
from neftlib.pipeline.runner import NOTEBOOKS, executed_completely

DEST = PROJ_ROOT / "docs" / "reference-run"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _scrub(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def publishable(notebook: dict, replacements: dict[str, str]) -> dict:
    """An executed notebook as readers get it: paths of this machine replaced, progress-bar widgets left out (a
    page without the widgets' saved state shows them stuck at their first frame), their saved state dropped."""
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if WIDGET not in o.get("data", {})]
    return json.loads(_scrub(json.dumps(notebook), replacements))


def publish(run: str, dest: Path = DEST) -> list[Path]:
    """Copy the run's six executed notebooks into `dest`, refusing a run whose notebooks did not all finish."""
    folder = run_dir(run) / "notebooks"
    sources = [folder / f"{name}.ipynb" for name in NOTEBOOKS]
    unfinished = [p.name for p in sources if not executed_completely(p)]
    if unfinished:
        raise FileNotFoundError(f"{folder}: {', '.join(unfinished)} did not run to the end; run "
                                f"`python -m neftlib run --profile cpu --run {run}` first")
    replacements = {str(PROJ_ROOT): "<project>"}
    data = os.environ.get("NEFTLIB_DATA_DIR", "").strip()
    if data:
        replacements = {str(Path(data).expanduser().resolve()): "$NEFTLIB_DATA_DIR", data: "$NEFTLIB_DATA_DIR",
                        **replacements}
    written = []
    for source in sources:
        notebook = json.loads(source.read_text(encoding="utf-8"))
        target = dest / source.name
        write_json(target, publishable(notebook, replacements))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neftlib.pipeline.reference",
                                     description="publish a run's executed notebooks under docs/reference-run/")
    parser.add_argument("run", help="results/<run>/ folder whose executed notebooks are published")
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    for path in publish(args.run, args.dest):
        print(path)


if __name__ == "__main__":
    main()
