"""The package's error types and how an error that ends a command is printed.

Every error a user can fix derives from `TuneatlasError`; its message is what the console shows
after ``ERROR tuneatlas: ``, one line per problem, shaped ``<what> (<key or file:row>): <how to
fix>``. `error_lines` turns any exception into such lines (the traceback only with
TUNEATLAS_DEBUG=1, see `debug`).
"""

from __future__ import annotations

import os

from tuneatlas.io import disk_full

DEBUG_ENV = "TUNEATLAS_DEBUG"  # 1: show the traceback of an error instead of one line


class TuneatlasError(Exception):
    """An error the user can fix; the message is printed as ``ERROR tuneatlas: <message>``."""


class ConfigError(TuneatlasError, ValueError):
    """A config that fails validation; the message names every offending key."""


class DataError(TuneatlasError, ValueError):
    """Bad input data: the message names the file (or hub split), the row and the fix."""


class HubOfflineError(TuneatlasError, RuntimeError):
    """A hub source was requested while the hub is unreachable by configuration (offline)."""


# The exit status of a command stopped by SIGTERM after saving its checkpoint (sysexits'
# EX_TEMPFAIL: "try again later"); snakemake's `retries` (profiles/slurm) then reruns the job,
# which resumes from that checkpoint.
PREEMPTED_EXIT = 75


class Preempted(Exception):
    """A training run stopped on SIGTERM (SLURM's preemption / time-limit signal) after writing
    a checkpoint at `step`; the same command again resumes from there."""

    def __init__(self, run: str, step: int, total: int) -> None:
        super().__init__(
            f"run {run}: stopped by SIGTERM at step {step}/{total} after saving a checkpoint;"
            " run the same command again (snakemake: retries) to resume from it"
        )
        self.run, self.step, self.total = run, step, total


def debug() -> bool:
    """Whether TUNEATLAS_DEBUG asks for the traceback instead of the one-line form."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_lines(exc: BaseException) -> list[str]:
    """`ERROR tuneatlas: ...` lines for an exception that ends a command."""
    if disk_full(exc):
        where = getattr(exc, "filename", None) or "the output directory"
        return [
            f"ERROR tuneatlas: no space left on device: {where}; the previous checkpoint is"
            " intact and no half-written output was left (writes are atomic): free space, then"
            " rerun the same command (training resumes from that checkpoint)"
        ]
    text = str(exc).strip() or type(exc).__name__
    if "Parquet magic bytes not found" in text:  # pyarrow: a damaged file under results/
        text += (
            " Delete that file and rerun the same command: snakemake rebuilds it (a file under"
            " results/ is an output of the workflow)."
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].rstrip(":") == "invalid config":
        lines = lines[1:]  # one line per offending key
    elif len(lines) > 1:
        lines = [" ".join(lines)]
    # a fixable error (ours, or a ValueError / missing file from a library) needs no type name
    user = isinstance(exc, TuneatlasError | ValueError | FileNotFoundError)
    suffix = "" if user else f" [{type(exc).__name__}; set {DEBUG_ENV}=1 for the traceback]"
    return [f"ERROR tuneatlas: {line}{suffix}" for line in lines]
