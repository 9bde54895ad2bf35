import dataclasses
import json

import pytest

from neftlib.base.config import RunConfig, config_from_json, qlora_config
from neftlib.base.recipes import load_config
from neftlib.base.profiles import PROFILES


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu-7b", "colab-qlora"])
def test_every_profile_resolves(name):
    cfg = load_config(name)
    assert cfg.profile == name and cfg.run_name == name


def test_paper_settings_in_gpu_profile():
    cfg = load_config("gpu-7b")
    assert cfg.model == "meta-llama/Llama-2-7b-hf"
    assert cfg.max_length == 512 and cfg.alpha == 5.0 and cfg.epochs == 3.0
    assert cfg.batch_size * cfg.grad_accum_for(1) == 128 and cfg.learning_rate == 5e-5  # effective batch 128


def test_arms_differ_only_in_noise():
    cfg = load_config("smoke")
    arms = {a: cfg.for_arm(a) for a in ("baseline", "neftune", "gaussian")}
    assert arms["baseline"].alpha == 0.0
    assert arms["neftune"].alpha == arms["gaussian"].alpha == cfg.alpha
    assert arms["neftune"].distribution == "uniform" and arms["gaussian"].distribution == "gaussian"


def test_qlora_is_a_config_change():
    cfg = load_config("smoke")
    q = qlora_config(cfg)
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(q, f.name)}
    assert q.load_in_4bit and q.method == "qlora"
    assert changed <= {"method", "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "max_steps", "epochs", "train_limit"}


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        load_config("smoke", alpha=alpha)


def test_unknown_profile_and_field_named():
    with pytest.raises(ValueError, match="unknown profile 'gpu'.*smoke"):
        load_config("gpu")
    with pytest.raises(ValueError, match="unknown setting .alpah. .did you mean alpha"):
        load_config("smoke", alpah=5)
    with pytest.raises(ValueError, match="method='qlora4'"):
        load_config("smoke", method="qlora4")


def test_config_is_frozen_and_round_trips(tmp_path):
    cfg = load_config("cpu", seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 1.0  # type: ignore[misc]
    cfg.save(tmp_path / "config.json")
    assert config_from_json(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3


def test_every_field_has_a_comment():
    import inspect

    import neftlib.base.config as module

    source = inspect.getsource(module.RunConfig)
    for field in dataclasses.fields(RunConfig):
        line = next(l for l in source.splitlines() if l.strip().startswith(f"{field.name}:"))
        assert "#" in line, f"RunConfig.{field.name} has no comment"


def test_profiles_only_set_real_fields():
    names = {f.name for f in dataclasses.fields(RunConfig)}
    for profile, values in PROFILES.items():
        assert set(values) <= names, profile
