"""The README's results are generated from the committed evidence, never typed: the committed README and study
summary are exactly what `make readme-results` writes."""
import subprocess
import sys
from pathlib import Path

import pytest

from neftlib.analysis.results_block import MARKERS, readme_text, replace_block

PROJ = Path(__file__).resolve().parents[1]


def test_committed_readme_is_what_make_readme_results_writes():
    proc = subprocess.run([sys.executable, "-m", "neftlib.analysis.evidence", "readme", "--check"], cwd=PROJ,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"run `make readme-results` and commit: {proc.stderr}"


def test_every_generated_block_is_in_the_readme_and_holds_verdict_words(tmp_path):
    readme = (PROJ / "README.md").read_text(encoding="utf-8")
    for begin, end in MARKERS.values():
        assert readme.count(begin) == 1 and readme.count(end) == 1
    written = readme_text(readme, PROJ / "docs" / "evidence")
    block = written.split(MARKERS["results"][0])[1].split(MARKERS["results"][1])[0]
    assert "| shown |" in block or "shown" in block
    assert "excluded above" in block or "not shown" in block
    # a hand edit inside a block is undone by the generator
    edited = written.replace("excluded above", "held", 1)
    assert readme_text(edited, PROJ / "docs" / "evidence") == written
    with pytest.raises(ValueError, match="no results block"):
        replace_block("# a README without markers", "x")
