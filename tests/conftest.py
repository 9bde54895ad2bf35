"""Shared fixtures: every test writes results into its own temp folder; real data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJ = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The real-data folder the project would read (NEFTLIB_DATA_DIR, or real data placed in data/)."""
    from neftlib.base.paths import data_dir

    try:
        return data_dir()
    except FileNotFoundError:
        return None


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """Results and figures go to a temp folder, never the project's results/."""
    monkeypatch.setenv("NEFTLIB_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("NEFTLIB_FIGURES_DIR", str(tmp_path / "figures"))
    return tmp_path / "results"


@pytest.fixture
def no_real_data(monkeypatch):
    monkeypatch.delenv("NEFTLIB_DATA_DIR", raising=False)


@pytest.fixture
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real data absent: put it in data/ or set NEFTLIB_DATA_DIR (docs/data.md)")
    return found


@pytest.fixture(scope="session")
def tokenizer():
    from neftlib.training.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture
def fake_arms():
    """Stand-ins for a run's trained arms (training is tested elsewhere): the tiny model nudged differently per
    arm, marked done, with the train/summary.csv that 02 writes. Call it with the run's config."""

    def make(cfg, scale: float = 0.05) -> None:
        import torch

        from neftlib.base.io import mark_done, write_csv
        from neftlib.training.models import load_base
        from neftlib.pipeline.stages import stage_dir

        for i, arm in enumerate(cfg.arms):
            model = load_base("tiny-random")
            with torch.no_grad():
                gen = torch.Generator().manual_seed(i)
                for p in model.parameters():
                    p.add_(scale * torch.randn(p.shape, generator=gen))
            model.save_pretrained(stage_dir(cfg, "train") / arm / "model")
            mark_done(stage_dir(cfg, "train") / arm)
        write_csv(stage_dir(cfg, "train") / "summary.csv",
                  [{"arm": a, "alpha": cfg.for_arm(a).alpha, "distribution": cfg.for_arm(a).distribution,
                    "method": cfg.method} for a in cfg.arms])

    return make
