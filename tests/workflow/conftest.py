"""Helpers for the workflow tests: real snakemake runs of the repository's Snakefile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200):
    """Run snakemake on the repository's Snakefile with `workdir` as working directory."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete run of the tiny config (shared by the tests that read its outputs)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2")
    return workdir
