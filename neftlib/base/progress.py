"""Progress bars: widgets in JupyterLab (ipywidgets), text in a terminal and in the notebooks `neftlib run`
executes, whose kernels stream their output to the terminal (a widget there would show nothing)."""
from __future__ import annotations

import os
import re

TEXT_ENV = "NEFTLIB_TEXT_PROGRESS"  # set by the runner for the kernels it starts
# One state of a text bar: "name:  40%|####  | 2/5 [00:01<00:02, ...]", or "name: 0it [...]" with nothing to count.
BAR_LINE = re.compile(r"^[\w./ -]+: +(\d+%\|.*\| *\d+/\d+|\d+it) \[")

if os.environ.get(TEXT_ENV):
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm


def without_bars(text: str) -> str:
    """`text` (a stream a kernel wrote) without the states of text progress bars; every other line is kept."""
    pieces = re.split(r"([\r\n]+)", text)  # line, its ending, line, its ending, ...
    out = []
    for line, end in zip(pieces[::2], pieces[1::2] + [""]):
        if line and not BAR_LINE.match(line):
            out.append(line + ("\n" if "\n" in end else end))
    return "".join(out)


__all__ = ["tqdm", "TEXT_ENV", "BAR_LINE", "without_bars"]
