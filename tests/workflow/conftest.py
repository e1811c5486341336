"""Helpers for the workflow tests: real snakemake runs of the repository's Snakefile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import snakemake

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete run of the tiny config (shared by the tests that read its outputs)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2")
    return workdir
