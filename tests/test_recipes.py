"""Recipes and overrides: one YAML per profile generated from neftlib/base/profiles.py (checked here), a user's own
recipe with --config, and --set FIELD=VALUE typed by the field and refused before anything runs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from neftlib.base.config import RunConfig, qlora_config
from neftlib.base.paths import RECIPES_DIR
from neftlib.base.profiles import PROFILES
from neftlib.base.recipes import load_config, parse_sets, read_recipe, recipe_text, split_seed_alpha


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
