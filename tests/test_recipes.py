"""Recipes and overrides: one YAML per profile generated from neftlib/base/profiles.py (checked here), a user's own
recipe with --config, and --set FIELD=VALUE typed by the field and refused before anything runs."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from neftlib.base.config import RunConfig, qlora_config
from neftlib.base.paths import RECIPES_DIR
from neftlib.base.profiles import PROFILES
from neftlib.base.recipes import load_config, parse_sets, read_recipe, recipe_text, split_seed_alpha

PROJ = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_each_profile_is_its_recipe(profile):
    path = RECIPES_DIR / f"{profile}.yaml"
    assert path.read_text() == recipe_text(profile), \
        f"{path} differs from neftlib/base/profiles.py: regenerate with `python -m neftlib recipes`"
    assert load_config(config=path) == load_config(profile)


def test_the_recipes_command_writes_what_is_committed(tmp_path, capsys):
    from neftlib.__main__ import main

    assert main(["recipes", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))
    for path in tmp_path.iterdir():
        assert path.read_text() == (RECIPES_DIR / path.name).read_text()
    assert str(tmp_path / "cpu.yaml") in capsys.readouterr().out


def test_no_recipe_without_a_profile():
    assert {p.stem for p in RECIPES_DIR.glob("*.yaml")} == set(PROFILES)


def test_every_field_once_and_commented():
    text = (RECIPES_DIR / "cpu.yaml").read_text()
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [line.split(":")[0] for line in settings] == [f.name for f in dataclasses.fields(RunConfig)]
    for line in settings:
        value, _, comment = line.partition("  # ")
        assert comment.strip(), f"no comment: {line}"
        yaml.safe_load(value)  # each line alone is valid YAML


def test_a_users_recipe(tmp_path, results):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"instruction": "i", "input": "", "output": "o"}) + "\n")
    text = (RECIPES_DIR / "cpu.yaml").read_text()
    text = text.replace("learning_rate: 0.0001", "learning_rate: 3e-4")  # YAML reads 3e-4 as text
    text = text.replace("train_data: auto", "train_data: mine.jsonl")  # beside the recipe
    text = text.replace("arms: [baseline, neftune, gaussian]", "arms: [baseline, alpha10-seed1]")
    (tmp_path / "mine.yaml").write_text(text)
    cfg = load_config(config=tmp_path / "mine.yaml")
    assert cfg.learning_rate == 3e-4 and cfg.arms == ("baseline", "alpha10-seed1")
    assert cfg.train_data == str(data) and cfg.run_name == "mine" and cfg.profile == "cpu"
    assert qlora_config(cfg).lora_r == 16  # the QLoRA stage's settings come with the recipe
    small = tmp_path / "small.yaml"
    small.write_text("profile: smoke\nmax_steps: 2\nqlora: {method: qlora, max_steps: 1}\n")
    cfg = load_config(config=small)  # a recipe may give only what differs from RunConfig's defaults
    assert cfg.max_steps == 2 and cfg.batch_size == RunConfig().batch_size and qlora_config(cfg).max_steps == 1


@pytest.mark.parametrize("line, message", [
    ("learnig_rate: 0.1", r"unknown setting 'learnig_rate' in .*bad.yaml \(did you mean learning_rate\?\)"),
    ("batch_size: eight", r"bad.yaml: batch_size='eight' is not an integer"),
    ("method: qlora4", r"method='qlora4' is not one of full, lora, qlora"),
    ("qlora: {lora_rank: 4}", r"qlora=.*lora_rank"),
    ("- just a list", r"a recipe is a mapping"),
])
def test_bad_recipes_are_refused_naming_file_and_field(tmp_path, line, message):
    (tmp_path / "bad.yaml").write_text(f"{line}\n")
    with pytest.raises(ValueError, match=message):
        load_config(config=tmp_path / "bad.yaml")


def test_missing_recipe_lists_the_profiles_recipes(tmp_path):
    with pytest.raises(FileNotFoundError, match="smoke.yaml"):
        read_recipe(tmp_path / "nope.yaml")


def test_set_values_are_typed_by_the_field():
    sets = parse_sets(["learning_rate=1e-4", "arms=baseline,neftune", "train_limit=none", "drop_bad_rows=yes",
                       "train_columns={instruction: question}", "max_steps=3", "judge=none", "alpha=7.5"])
    sets, seed, alpha = split_seed_alpha(sets, None, None)
    assert alpha == 7.5 and seed is None and "alpha" not in sets
    cfg = load_config("cpu", alpha=alpha, **sets)
    assert cfg.learning_rate == 1e-4 and cfg.arms == ("baseline", "neftune") and cfg.train_limit is None
    assert cfg.drop_bad_rows is True and cfg.train_columns == {"instruction": "question"}
    assert cfg.max_steps == 3 and cfg.judge == "none" and cfg.alpha == 7.5


@pytest.mark.parametrize("items, message", [
    (["learnig_rate=1"], r"unknown setting 'learnig_rate' in --set \(did you mean learning_rate\?\)"),
    (["batch_size=big"], r"batch_size='big' is not an integer"),
    (["learning_rate=fast"], r"learning_rate='fast' is not a number"),
    (["drop_bad_rows=maybe"], r"drop_bad_rows='maybe' is not true or false"),
    (["max_steps"], r"write FIELD=VALUE"),
    (["profile=cpu"], r"choose it with --profile or --config"),
    (["seed=1", "seed=2"], r"seed given twice"),
    # TRL / TrainingArguments names without a setting of their own point to the right one
    (["per_device_train_batch_sizes=4"], r"did you mean per_device_train_batch_size \(= batch_size\)"),
    (["bf16=true"], r"TRL / TrainingArguments' bf16 has no setting of its own here; use precision=bf16"),
    (["load_in_4bit=true"], r"use method=qlora"),
    (["epochs=2", "num_train_epochs=3"], r"--set epochs \(as num_train_epochs\) given twice"),
])
def test_bad_sets_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_sets(items)


def test_a_bad_choice_names_the_choices():
    with pytest.raises(ValueError, match="precision='fp8' is not one of fp32, bf16, fp16"):
        load_config("smoke", **parse_sets(["precision=fp8"]))


@pytest.mark.parametrize("command", ["run", "train"])
def test_cli_refuses_before_anything_runs(command, results, capsys):
    from neftlib.__main__ import main

    for args, message in ((["--set", "precision=fp8"], "precision='fp8' is not one of fp32, bf16, fp16"),
                          (["--set", "learnig_rate=1"], "did you mean learning_rate"),
                          (["--seed", "1", "--set", "seed=2"], "seed given twice")):
        assert main([command, "--profile", "smoke", "--run", "refused", *args]) == 2
        assert message in capsys.readouterr().err
    assert not (results / "refused").exists()


def test_run_hands_recipe_and_sets_to_every_notebook(tmp_path, results, monkeypatch):
    """The runner passes CONFIG and SET; each notebook declares them (check_parameters) and its start_run
    call gets the runner's own settings back."""
    import papermill

    from neftlib.pipeline import stages
    from neftlib.__main__ import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text((RECIPES_DIR / "smoke.yaml").read_text().replace("max_steps: 6", "max_steps: 2"))
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, parameters, **k: calls.append(parameters))
    assert main(["run", "--config", str(recipe), "--set", "learning_rate=2e-3", "--set", "arms=baseline,neftune",
                 "--seed", "3"]) == 0
    assert len(calls) == 6
    params = calls[0]
    assert params["CONFIG"] == str(recipe) and params["SET"] == {"learning_rate": "2e-3", "arms": "baseline,neftune"}
    assert params["SEED"] == 3
    cfg = stages.start_run(params["PROFILE"], params["RUN"], seed=params["SEED"], alpha=params["ALPHA"],
                           config=params["CONFIG"], **params["SET"])  # what each notebook's second cell calls
    assert cfg.run_name == "tiny" and cfg.max_steps == 2 and cfg.learning_rate == 2e-3 and cfg.seed == 3
    assert cfg.arms == ("baseline", "neftune")
    assert json.loads((results / "tiny" / "config.json").read_text())["learning_rate"] == 2e-3


# ---------- TRL / TrainingArguments names, `neftlib config`, checks before torch ----------

def test_trl_names_are_aliases_everywhere_a_setting_is_named(tmp_path):
    sets = parse_sets(["neftune_noise_alpha=7", "num_train_epochs=2", "per_device_train_batch_size=4",
                       "gradient_accumulation_steps=2", "model_name_or_path=HuggingFaceTB/SmolLM2-360M",
                       "report_to=tensorboard,wandb", "dataset_name=tatsu-lab/alpaca"])
    sets, _, alpha = split_seed_alpha(sets, None, None)
    cfg = load_config("smoke", alpha=alpha, **sets)
    assert (cfg.alpha, cfg.epochs, cfg.batch_size, cfg.grad_accum) == (7.0, 2.0, 4, 2)
    assert cfg.model == "HuggingFaceTB/SmolLM2-360M" and cfg.train_data == "hf:tatsu-lab/alpaca"
    assert cfg.report_to == ["tensorboard", "wandb"]
    # a recipe in TRL's words, the QLoRA stage's settings included
    (tmp_path / "trl.yaml").write_text("profile: smoke\nnum_train_epochs: 3\nlora_target_modules: [q_proj, v_proj]\n"
                                       "report_to: [tensorboard]\nqlora: {method: qlora, max_seq_length: 64}\n")
    cfg = load_config(config=tmp_path / "trl.yaml")
    assert cfg.epochs == 3.0 and cfg.lora_targets == ("q_proj", "v_proj") and cfg.report_to == ["tensorboard"]
    assert qlora_config(cfg).max_length == 64
    assert load_config("smoke", report_to="tensorboard").report_to == ["tensorboard"]  # one name, as Trainer takes


def test_same_setting_under_two_names_in_a_recipe(tmp_path):
    (tmp_path / "twice.yaml").write_text("alpha: 5\nneftune_noise_alpha: 7\n")
    with pytest.raises(ValueError, match=r"alpha in .*twice.yaml given twice, as alpha=5 and neftune_noise_alpha=7"):
        load_config(config=tmp_path / "twice.yaml")


def _without_torch(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that then prints which heavy modules it imported."""
    probe = code + "\nimport sys; print('IMPORTED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=PROJ,
                          env={**os.environ, "PYTHONPATH": str(PROJ)})


def test_config_command_prints_the_resolved_settings_without_torch():
    done = _without_torch("from neftlib.__main__ import main\n"
                          "rc = main(['config', '--profile', 'smoke', '--set', 'neftune_noise_alpha=7', "
                          "'--set', 'num_train_epochs=2'])")
    assert done.returncode == 0, done.stderr
    text, _, imported = done.stdout.rpartition("IMPORTED")
    assert imported.strip() == "[]"
    printed = yaml.safe_load(text)
    assert printed["alpha"] == 7.0 and printed["epochs"] == 2.0 and printed["profile"] == "smoke"
    assert printed == json.loads(json.dumps(load_config("smoke", alpha=7, epochs=2).to_dict()))  # tuples as lists
    assert "alpha: 7.0  # noise alpha" in text and "(TRL / TrainingArguments: neftune_noise_alpha)" in text


@pytest.mark.parametrize("command", ["run", "train", "config"])
def test_a_bad_set_is_named_before_torch_is_imported(command, results):
    done = _without_torch("from neftlib.__main__ import main\n"
                          f"rc = main(['{command}', '--profile', 'smoke', '--run', 'typo', "
                          "'--set', 'per_device_train_batch_sizes=4'])\nprint('RC', rc)")
    assert "RC 2" in done.stdout and "IMPORTED []" in done.stdout, done.stdout + done.stderr
    assert "did you mean per_device_train_batch_size (= batch_size)" in done.stderr
    # a combination only the whole config can refuse is caught as early
    done = _without_torch("from neftlib.__main__ import main\n"
                          f"rc = main(['{command}', '--profile', 'smoke', '--set', 'arms=baseline', "
                          "'--set', 'length_arms=min-new-tokens', '--set', 'arms=neftune'])\nprint('RC', rc)")
    assert "RC 2" in done.stdout and "IMPORTED []" in done.stdout
    done = _without_torch("from neftlib.__main__ import main\n"
                          f"rc = main(['{command}', '--profile', 'smoke', '--set', 'arms=neftune', "
                          "'--set', 'length_arms=min-new-tokens'])\nprint('RC', rc)")
    assert "RC 2" in done.stdout and "IMPORTED []" in done.stdout and "no alpha-0 arm" in done.stderr


def test_model_revision_reaches_every_load_of_the_runs_model(results, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neftlib.pipeline.stages import start_run
    from neftlib.training import models

    with pytest.raises(ValueError, match="model_revision='abc' pins a hub model"):
        load_config("smoke", model_revision="abc")
    models.model_path(models.TINY)  # built before the hub stand-in below, which would answer the build's own loads
    seen = []

    def loaded(name, **kwargs):  # stands in for the hub: records what each load asked for
        seen.append((str(name), kwargs.get("revision")))
        return types.SimpleNamespace(pad_token="<pad>")

    for cls in (AutoModelForCausalLM, AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", loaded)
    cfg = start_run("smoke", "pinned", model="someone/model", model_revision="0123abc")
    try:
        assert models.REVISIONS == {"someone/model": "0123abc"}
        models.load_base(cfg.model)
        models.load_tokenizer(cfg.model)
        models.load_tokenizer("tiny-random")  # other models load as before
        assert seen[:2] == [("someone/model", "0123abc")] * 2 and seen[2][1] is None
    finally:
        models.pin_revision("someone/model", "")
    assert models.REVISIONS == {}
