"""Text progress bars: shown in the terminal while a notebook runs, dropped from its executed copy."""
from __future__ import annotations

import json

from neftlib.base.progress import without_bars
from neftlib.pipeline.runner import drop_progress_bars

BARS = ("\rtrain-neftune:   0%|          | 0/4 [00:00<?, ?it/s]"
        "\rtrain-neftune:  50%|#####     | 2/4 [00:01<00:01,  1.9it/s]"
        "\rtrain-neftune: 100%|##########| 4/4 [00:02<00:00,  1.9it/s]\n")


def test_bars_go_and_every_other_line_stays():
    assert without_bars(BARS) == ""
    assert without_bars("judge: 0it [00:00, ?it/s]\n") == ""
    warning = "UserWarning: the judge clipped 3 answers\n"
    assert without_bars(BARS + warning + BARS) == warning
    assert without_bars("loss: 50% lower\n") == "loss: 50% lower\n"  # a sentence with a percent is no bar


def test_executed_copy_keeps_stdout_figures_and_warnings(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "source": "x", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": [BARS]},
            {"output_type": "stream", "name": "stdout", "text": ["trained 4 steps\n"]},
            {"output_type": "display_data", "data": {"image/png": "iVBO"}, "metadata": {}},
            {"output_type": "stream", "name": "stderr", "text": BARS + "UserWarning: check this\n"}]},
        {"cell_type": "markdown", "source": "text"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "02.ipynb"
    path.write_text(json.dumps(nb))
    drop_progress_bars(path)
    outputs = json.loads(path.read_text())["cells"][0]["outputs"]
    assert [o.get("name", o["output_type"]) for o in outputs] == ["stdout", "display_data", "stderr"]
    assert outputs[2]["text"] == "UserWarning: check this\n"
