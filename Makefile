# tuneatlas - set-up, demo and tests. Everything installs itself into .venv on a fresh machine.
#   make setup         create .venv: torch==2.13.0 first (CPU build here), then the package
#   make demo          run the whole toy DAG on config.yaml and build the HTML report
#   make test          unit + workflow tests (+ the real-SLURM test when CI=true)
#   make test-cluster  the real-SLURM test (installs Debian's SLURM; needs root)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test test-unit test-workflow test-cluster lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: a bare `torch` requirement with no torch installed pulls a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	time $(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/snakemake --profile profiles/local --report results/report.html
	@echo "tables: results/tables/  figures: results/figures/  report: results/report.html"

test: setup
	$(BIN)/pytest -ra tests/unit tests/workflow tests/cluster

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

clean:
	rm -rf results .snakemake
