"""The notebooks are thin and clean, and the whole pipeline runs in the smoke profile under papermill."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from neftlib.analysis.verdict import WORDS, word
from neftlib.base.profiles import PROFILES
from neftlib.base.progress import BAR_LINE
from neftlib.pipeline.runner import NOTEBOOKS, PARAMETER_FIELDS

PROJ = Path(__file__).resolve().parents[1]
FAKE_KEY = "sk-neftlib-test-0123456789abcdef"
PATHS = [PROJ / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]
DEMO = PROJ / "notebooks" / "colab_qlora_demo.ipynb"  # outside the pipeline, held to the same rules


def _is_literal(node: ast.expr) -> bool:
    """A constant or a container of constants (SET = {}): what papermill can pass and nothing computed."""
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("path", [*PATHS, DEMO], ids=[*NOTEBOOKS, DEMO.stem])
def test_notebook_is_clean_and_thin(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    # nbformat 4.5 wants a unique id per cell; papermill warns now and newer nbformat will refuse
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), "every cell needs its own id"
    assert cells[0]["cell_type"] == "markdown" and "Reproduces" in "".join(cells[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "outputs committed"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "exactly one parameters cell, the first code cell"
    for cell in code:
        tree = ast.parse("".join(cell["source"]))
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))
    params = ast.parse("".join(tagged[0]["source"]))
    assert all(isinstance(n, ast.Assign) and _is_literal(n.value) for n in params.body), "literals only"


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_parameters_cell_lists_every_profile_and_reaches_the_run(path):
    cells = json.loads(path.read_text())["cells"]
    source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    names = [n.targets[0].id for n in ast.parse(source).body]
    assert names == ["PROFILE", "RUN", "SEED", "ALPHA", *PARAMETER_FIELDS, "CONFIG", "SET"]
    profile_line = source.splitlines()[0]
    assert all(f" {name}," in profile_line + "," for name in PROFILES), "the PROFILE comment names every profile"
    # Every parameter reaches the run's config: the start_run call passes each one.
    calls = [n for c in cells if c["cell_type"] == "code" for n in ast.walk(ast.parse("".join(c["source"])))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "start_run"]
    assert len(calls) == 1
    passed = {a.id for a in calls[0].args if isinstance(a, ast.Name)} | \
        {k.value.id for k in calls[0].keywords if isinstance(k.value, ast.Name)}
    assert passed == set(names)
    keywords = {k.arg: k.value.id for k in calls[0].keywords}
    assert all(keywords[field] == name for name, field in PARAMETER_FIELDS.items())


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_notebook_opens_with_the_paper_and_ends_with_what_the_run_shows(path):
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert "story.paper_claims(" in code[1], "the paper's claim and numbers right after the parameters"
    shows = next(i for i, c in enumerate(cells) if "What this run shows" in "".join(c["source"]))
    assert cells[shows]["cell_type"] == "markdown" and all(c["cell_type"] == "code" for c in cells[shows + 1:])
    assert all("Markdown(" in "".join(c["source"]) for c in cells[shows + 1:]), "computed, shown as Markdown"
    assert not any(line.rstrip().endswith(";") for c in code for line in c.splitlines()), "a `;` hides a figure"


def _run(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "neftlib", "run", *args], cwd=PROJ, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One full smoke-profile pipeline run, shared by the assertions below."""
    root = tmp_path_factory.mktemp("pipeline")
    # A judge key in the environment, as a user with GPT-4 access has it: it must leak nowhere.
    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(root / "results"), "NEFTLIB_FIGURES_DIR": str(root / "figures"),
           "OPENAI_API_KEY": FAKE_KEY, "NEFTLIB_JUDGE_API_KEY": FAKE_KEY}
    proc = _run(["--profile", "smoke"], env, timeout=1800)  # minutes on 2 free cores; a busy machine takes longer
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, env, proc


def test_pipeline_writes_every_stage(smoke_run):
    root, _, _ = smoke_run
    run = root / "results" / "smoke"
    cfg = json.loads((run / "config.json").read_text())
    env = json.loads((run / "env.json").read_text())
    assert cfg["profile"] == "smoke" and env["packages"]["torch"] and env["device"] == "cpu"
    assert sorted(p.name for p in (run / "notebooks").glob("*.ipynb")) == [f"{n}.ipynb" for n in NOTEBOOKS]
    report = json.loads((run / "data" / "report.json").read_text())
    assert report["train_examples"] > 0 and report["eval_prompts"] == cfg["eval_limit"]

    train = pd.read_csv(run / "train" / "summary.csv")
    assert list(train["arm"]) == ["baseline", "neftune", "gaussian"]
    assert list(train["alpha"]) == [0.0, cfg["alpha"], cfg["alpha"]]
    assert (train["steps"] == cfg["max_steps"]).all() and train["train_nonoise_loss"].notna().all()
    logs = pd.concat(pd.read_csv(p) for p in (run / "train").glob("*/log.csv"))
    assert (logs.groupby("arm")["noise_ratio"].max()["baseline"] == 0) and (logs[logs.arm == "neftune"].noise_ratio > 0).all()

    qlora = pd.read_csv(run / "qlora" / "summary.csv")
    assert list(qlora["method"]) == ["qlora", "qlora"] and (qlora["trainable_params"] < qlora["total_params"]).all()

    wins = pd.read_csv(run / "eval" / "winrates.csv")
    # 3 trained arms, 2 QLoRA arms and the 5 length-only arms of the baseline model (the paper's Table 5)
    assert len(wins) == 10 and wins["win_rate"].between(0, 100).all()
    assert (wins["ci_low"] <= wins["win_rate"]).all() and (wins["win_rate"] <= wins["ci_high"]).all()
    assert wins["win_rate_soft"].between(0, 100).all() and wins["lc_win_rate_approx"].between(0, 100).all()
    counted = 100 * (wins["n_wins"] + 0.5 * wins["n_draws"]) / wins["n_total"]
    assert (wins["n_wins"] + wins["n_wins_base"] + wins["n_draws"] == wins["n_total"]).all()
    assert ((wins["win_rate"] - counted).abs() < 1e-9).all() and (wins["n_clipped"] >= 0).all()
    length_arms = ["prompt-long", "prompt-comprehensive", "prompt-long-comprehensive", "min-new-tokens",
                   "min-new-tokens-paper"]
    assert list(wins.loc[wins["stage"] == "length", "arm"]) == length_arms
    for arm in length_arms:
        answers = json.loads((run / "eval" / f"length-{arm}" / "model_outputs.json").read_text())
        assert len(answers) == cfg["eval_limit"] and (run / "eval" / f"length-{arm}" / "annotations.json").exists()
    if (run / "eval" / "judge_agreement.json").exists():  # real data present: agreement beside each win rate
        assert wins["judge_agreement"].between(0, 1).all() and (wins["agreement_n"] > 0).all()
    outputs = json.loads((run / "eval" / "train-neftune" / "model_outputs.json").read_text())
    assert len(outputs) == cfg["eval_limit"] and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}

    over = pd.read_csv(run / "analysis" / "overfitting.csv")
    assert len(over) == 5 and over["heldout_loss"].notna().all() and over["rouge_l"].between(0, 100).all()
    assert len(pd.read_csv(run / "analysis" / "diversity.csv")) == 10  # 5 trained arms and 5 length-only arms
    length_only = pd.read_csv(run / "analysis" / "length_only.csv")
    assert list(length_only["arm"]) == ["baseline", *length_arms, "neftune"]
    losses = pd.read_csv(run / "analysis" / "example_losses.csv")  # per example, without noise
    assert len(losses.groupby(["stage", "arm"])) == 3 and set(losses["set"]) >= {"train", "heldout"}
    seen = losses[(losses["stage"] == "train") & (losses["set"] == "train")]
    seen = seen.assign(nll=seen["loss"] * seen["tokens"]).groupby("arm")[["nll", "tokens"]].sum()
    assert ((seen["nll"] / seen["tokens"]) - train.set_index("arm")["train_nonoise_loss"]).abs().max() < 1e-3
    published = pd.read_csv(run / "analysis" / "published_diversity.csv")
    real = (run / "eval" / "judge_agreement.json").exists()
    assert len(published) == 4 and (published["status"] == "ok").all() == real
    claims = pd.read_csv(run / "report" / "claims.csv")
    assert len(claims) == 9 and all(word(part) in WORDS for v in claims["verdict"] for part in v.split(" / "))
    beside = pd.read_csv(run / "report" / "length_only.csv").set_index("arm")
    assert beside.loc["prompt-long", "paper_win_rate"] == 44.84 and beside.loc["neftune", "paper_win_rate"] == 61.99
    assert "Length alone and the gain" in (run / "report" / "summary.md").read_text()
    paper = pd.read_csv(run / "report" / "paper_vs_ours.csv")
    assert paper.loc[paper["metric"] == "win rate (%), Alpaca", "paper_after"].iloc[0] == 64.69
    figures = {p.name for p in (root / "figures" / "smoke").glob("*.png")}
    assert figures >= {"token_lengths.png", "loss_train.png", "loss_qlora.png", "win_rates.png",
                       "overfitting.png", "length_diversity.png", "figure1_paper_vs_ours.png",
                       "loss_histograms.png", "rouge_bleu.png", "length_diversity_table.png", "gaussian_ablation.png"}
    assert "alpha_sweep.png" not in figures  # one seed per alpha: no sweep to draw


def _outputs(path: Path) -> list[dict]:
    return [o for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]


def test_every_executed_notebook_shows_a_figure_and_what_the_run_shows(smoke_run):
    root, _, _ = smoke_run
    for name in NOTEBOOKS:
        outputs = _outputs(root / "results" / "smoke" / "notebooks" / f"{name}.ipynb")
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}: no figure shown inline"
        cells = json.loads((root / "results" / "smoke" / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        last = [o for o in cells[-1].get("outputs", []) if "text/markdown" in o.get("data", {})]
        assert last and len("".join(last[0]["data"]["text/markdown"])) > 40, f"{name}: nothing computed at the end"


def test_noise_free_training_loss_is_measured_on_rows_the_arm_trained_on(smoke_run):
    root, _, _ = smoke_run
    for stage in ("train", "qlora"):
        summary = pd.read_csv(root / "results" / "smoke" / stage / "summary.csv")
        assert (summary["train_nonoise_rows"] <= summary["examples"]).all(), stage
        assert (summary["train_nonoise_rows"] > 0).all()


def test_no_transport_or_progress_noise(smoke_run):
    root, _, proc = smoke_run
    assert "without encryption" not in proc.stderr
    # the terminal showed the kernels' bars as they ran
    assert any(BAR_LINE.match(line) for line in re.split(r"[\r\n]+", proc.stderr + proc.stdout))
    for name in NOTEBOOKS:
        stderr = ["".join(o["text"]) for o in _outputs(root / "results" / "smoke" / "notebooks" / f"{name}.ipynb")
                  if o.get("output_type") == "stream" and o.get("name") == "stderr"]
        # the text bars streamed to the terminal while it ran are dropped from the executed copy
        assert not stderr, f"{name} writes to stderr: {stderr[:2]}"


def test_reference_run_published_without_machine_paths(smoke_run, tmp_path):
    from neftlib.pipeline.reference import publish

    root, env, _ = smoke_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEFTLIB_RESULTS_DIR", env["NEFTLIB_RESULTS_DIR"])
        written = publish("smoke", tmp_path / "reference-run")
        with pytest.raises(FileNotFoundError, match="did not run to the end"):
            publish("no-such-run", tmp_path / "other")
    assert [p.name for p in written] == [f"{n}.ipynb" for n in NOTEBOOKS]
    for path in written:
        text = path.read_text()
        assert str(PROJ) not in text and "application/vnd.jupyter.widget-view+json" not in text
        if os.environ.get("NEFTLIB_DATA_DIR"):
            assert str(Path(os.environ["NEFTLIB_DATA_DIR"]).resolve()) not in text
        assert "image/png" in text  # the figures travel inside the notebooks


def test_committed_reference_run_is_whole():
    # docs/reference-run/ is what a reader opens without running anything: every notebook, run to the end,
    # each with its figures, no error or stderr output, and nothing of the machine it ran on.
    folder = PROJ / "docs" / "reference-run"
    for name in NOTEBOOKS:
        path = folder / f"{name}.ipynb"
        assert path.exists(), f"{path} is missing: make reference-run publishes it"
        text = path.read_text()
        cells = json.loads(text)["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c.get("execution_count") for c in code), f"{name}: a cell did not run"
        outputs = [o for c in code for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"
        assert not [o for o in outputs if o.get("output_type") == "error" or o.get("name") == "stderr"], name
        assert str(PROJ) not in text


def test_api_key_never_in_results_figures_or_executed_notebooks(smoke_run):
    root, _, proc = smoke_run
    assert FAKE_KEY not in proc.stdout + proc.stderr
    leaked = [p for p in root.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_rerun_skips_complete_stages(smoke_run):
    _, env, _ = smoke_run
    proc = _run(["--profile", "smoke"], env, timeout=1800)  # minutes on 2 free cores; a busy machine takes longer
    assert proc.returncode == 0 and proc.stdout.count("outputs complete, skipped") == len(NOTEBOOKS)


def test_different_settings_never_overwrite_an_earlier_run(smoke_run):
    root, env, _ = smoke_run
    before = (root / "results" / "smoke" / "train" / "summary.csv").read_text()
    proc = _run(["--profile", "smoke", "--alpha", "9", "--only", "01"], env)
    assert proc.returncode == 2
    assert "different settings (alpha)" in proc.stderr and "Traceback" not in proc.stderr
    assert (root / "results" / "smoke" / "train" / "summary.csv").read_text() == before


def test_failing_notebook_named_with_cell_and_copy_kept(tmp_path):
    # The model cache under a regular file: 01 fails inside a cell when it builds the model's tokenizer.
    (tmp_path / "not-a-folder").write_text("")
    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(tmp_path / "r"), "NEFTLIB_FIGURES_DIR": str(tmp_path / "f"),
           "NEFTLIB_CACHE_DIR": str(tmp_path / "not-a-folder" / "cache")}
    proc = _run(["--profile", "smoke", "--only", "01"], env, timeout=300)
    assert proc.returncode == 2
    assert "notebook 01_data_prep failed in cell" in proc.stderr and "not-a-folder" in proc.stderr
    kept = tmp_path / "r" / "smoke" / "notebooks" / "01_data_prep.ipynb"
    assert kept.exists() and "not-a-folder" in kept.read_text()


def test_missing_data_folder_refused_before_any_notebook(tmp_path):
    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(tmp_path / "r"), "NEFTLIB_DATA_DIR": str(tmp_path / "missing")}
    proc = _run(["--profile", "smoke"], env, timeout=120)
    assert proc.returncode == 2
    assert "NEFTLIB_DATA_DIR=" in proc.stderr and "is not a folder" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "smoke", "--alpha", "-1"], "alpha must be a finite number"),
    (["--profile", "smoke", "--only", "07"], "unknown notebook"),
])
def test_bad_input_refused_before_running(tmp_path, args, message):
    env = {**os.environ, "NEFTLIB_RESULTS_DIR": str(tmp_path / "r")}
    proc = _run(args, env, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "smoke" / "notebooks").exists()


def test_unknown_notebook_parameter_is_refused():
    from neftlib.pipeline.runner import check_parameters

    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['APLHA'\].*takes PROFILE"):
        check_parameters(PATHS[0], {"PROFILE": "smoke", "APLHA": 5})


@pytest.mark.parametrize("parameters,message", [
    ({"EVAL_PROMPTS": 0}, "eval_limit must be a positive integer"),
    ({"TRAIN_EXAMPLES": 2.5}, r"train_limit=2\.5 is not an integer"),
    ({"EPOCHS": 2}, r"unknown parameter\(s\) \['EPOCHS'\]"),
])
def test_notebook_parameters_checked_before_anything_runs(results, parameters, message):
    from neftlib.pipeline.runner import run_pipeline

    with pytest.raises(ValueError, match=message):
        run_pipeline("smoke", parameters=parameters, progress=False)
    assert not (results / "smoke").exists()


def test_analysis_reruns_from_each_arms_kept_losses_without_loading_a_model(smoke_run, monkeypatch):
    from neftlib.analysis import overfitting
    from neftlib.base.config import config_from_json

    root, env, _ = smoke_run
    monkeypatch.setenv("NEFTLIB_RESULTS_DIR", env["NEFTLIB_RESULTS_DIR"])
    run = root / "results" / "smoke"
    cfg = config_from_json(run / "config.json")
    first = pd.read_csv(run / "analysis" / "example_losses.csv")
    assert all((run / "train" / arm / overfitting.EXAMPLE_LOSSES).exists() for arm in first["arm"].unique())

    def no_model(*args, **kwargs):
        raise AssertionError("a finished arm's losses are read back, not computed again")

    monkeypatch.setattr(overfitting, "load_trained", no_model)
    again = overfitting.example_losses_table(cfg, progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), first, check_dtype=False)
    # a kept file that no longer matches the run's sets is computed again
    kept = run / "train" / "baseline" / overfitting.EXAMPLE_LOSSES
    pd.read_csv(kept).iloc[:-1].to_csv(kept, index=False)
    with pytest.raises(AssertionError, match="read back"):
        overfitting.example_losses_table(cfg, progress=False)
