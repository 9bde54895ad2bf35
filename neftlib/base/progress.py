"""Progress bars: widgets in JupyterLab (ipywidgets), text in a terminal and in the notebooks `neftlib run`
executes, whose kernels stream their output to the terminal (a widget there would show nothing)."""
from __future__ import annotations

import os

TEXT_ENV = "NEFTLIB_TEXT_PROGRESS"  # set by the runner for the kernels it starts

if os.environ.get(TEXT_ENV):
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["tqdm", "TEXT_ENV"]
