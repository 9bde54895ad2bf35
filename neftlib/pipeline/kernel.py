"""A notebook's kernel set up as the notebooks need it, by their first import cell (`kernel.setup()`)."""
from __future__ import annotations

from IPython import get_ipython
from transformers.utils import logging as transformers_logging

from neftlib.base.config import RunConfig
from neftlib.base.recipes import load_config


def setup() -> None:
    """Figures returned by a cell show inline as PNG (neftlib's figures are not pyplot's, so matplotlib's inline
    support must be switched on before the first one), and transformers' bars for loading and saving weights
    are off: they fill a notebook without saying anything about the run. The training and generation bars,
    and every warning, stay."""
    shell = get_ipython()
    if shell is not None:  # in a plain Python process there is nothing to show figures in
        shell.run_line_magic("matplotlib", "inline")
    transformers_logging.disable_progress_bar()


def settings(cfg: RunConfig) -> str:
    """The run's settings in a few lines of Markdown: its profile and only what differs from it (the whole config
    is results/<run>/config.json and configs/recipes/<profile>.yaml)."""
    base = load_config(cfg.profile).to_dict() if cfg.profile else {}
    changed = {k: v for k, v in cfg.to_dict().items() if k not in ("run", "profile") and base.get(k) != v}
    head = f"Run `{cfg.run_name}`: profile `{cfg.profile or 'a recipe file'}`"
    if not changed:
        return head + ", unchanged (every setting: `configs/recipes/" + (cfg.profile or "<file>") + ".yaml`)."
    rows = "\n".join(f"| `{k}` | `{base.get(k)}` | `{v}` |" for k, v in changed.items())
    return f"{head}, with these changes:\n\n| setting | profile | this run |\n|---|---|---|\n{rows}"
