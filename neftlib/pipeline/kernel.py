"""A notebook's kernel set up as the notebooks need it, by their first import cell (`kernel.setup()`)."""
from __future__ import annotations

from IPython import get_ipython
from transformers.utils import logging as transformers_logging


def setup() -> None:
    """Figures returned by a cell show inline as PNG (neftlib's figures are not pyplot's, so matplotlib's inline
    support must be switched on before the first one), and transformers' bars for loading and saving weights
    are off: they fill a notebook without saying anything about the run. The training and generation bars,
    and every warning, stay."""
    shell = get_ipython()
    if shell is not None:  # in a plain Python process there is nothing to show figures in
        shell.run_line_magic("matplotlib", "inline")
    transformers_logging.disable_progress_bar()
