"""Runs of the checkout's Snakefile in a work directory, for the tests and the benchmarks alike.

It lives beside the tests, not in the package: it drives the repository's Snakefile with the
virtual environment's snakemake, which only a checkout has. Benchmarks import it with the
repository root on sys.path (`from tests.support import snakemake`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the virtual environment of this interpreter: its snakemake, and the jobs' `python -m tuneatlas`
BIN = Path(sys.executable).parent


class SnakemakeFailed(AssertionError):
    """A snakemake run that was expected to succeed exited non-zero (a test failure)."""


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line of snakemake on the repository's Snakefile, run in `workdir`."""
    snakefile = str(REPO / "Snakefile")
    return [str(BIN / "snakemake"), "--snakefile", snakefile, "--directory", str(workdir), *args]


def snakemake_env(drop: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment, less `drop`, plus `extra`, with the venv first on PATH (so
    the jobs find `python -m tuneatlas` and its dependencies, also through sbatch --export=ALL)."""
    dropped = set(drop)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    env.update(extra)
    return env


def start_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    """Start snakemake on the repository's Snakefile in `workdir` without waiting for it (a run
    to interrupt, or one to run beside another); its output, stdout and stderr together, is
    the process's text `stdout`."""
    return subprocess.Popen(
        snakemake_command(workdir, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=snakemake_env(),
    )


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: float | None = 1200,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    launcher: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in `workdir` and wait for it.

    Its output (stdout and stderr together) is the result's `stdout`, or goes to the file `log`.
    `launcher` prefixes the command (e.g. `timeout -s INT 600`); `env` defaults to
    `snakemake_env()`. With `check`, a non-zero exit raises SnakemakeFailed with the output's
    tail; a run past `timeout` raises subprocess.TimeoutExpired.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [*launcher, *snakemake_command(workdir, *args)]
    env = snakemake_env() if env is None else env
    if log is None:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=workdir,
            timeout=timeout,
        )
        output = proc.stdout
    else:
        with log.open("w") as out:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, timeout=timeout
            )
        output = log.read_text()
    if check and proc.returncode != 0:
        raise SnakemakeFailed(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{output[-8000:]}"
        )
    return proc
