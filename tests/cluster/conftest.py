"""The real-SLURM tests' cluster: `cluster.sh up` before the first test, `cluster.sh stop` after.

They install Debian's SLURM as root, so they run only when asked: `make test-cluster` (which sets
TUNEATLAS_CLUSTER_TESTS=1) or with TUNEATLAS_REQUIRE naming `cluster` (CI: `.ci/run`). Everywhere
else every test here is skipped with the command that runs them; asked for but not root, they skip
with that reason, or fail when TUNEATLAS_REQUIRE names `cluster`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require_or_skip, required

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
SKIP_REASON = "real-SLURM tests: run `make test-cluster` (installs Debian's SLURM, needs root)"

# The profile asks for what a site's GPU node has (train: 32 GB). The test node declares
# that much (SlurmdParameters=config_overrides); nothing enforces it, the toy jobs are tiny.
# The tests run two workflows at once (three fine-tunes side by side, one fake GPU each).
NODE_SIZE = {
    "TUNEATLAS_SLURM_NODE_CPUS": "16",
    "TUNEATLAS_SLURM_NODE_MEM_MB": "128000",
    "TUNEATLAS_SLURM_GPUS": "3",
}


def cluster_tests_enabled() -> bool:
    """Opted in by their own variable or by TUNEATLAS_REQUIRE, never by CI=true alone."""
    return "cluster" in required() or os.environ.get("TUNEATLAS_CLUSTER_TESTS") == "1"


def emit(config: pytest.Config, text: str) -> None:
    """Write to the terminal past pytest's output capturing (with or without `-s`)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if reporter is not None:
            reporter.write("\n" + text.rstrip("\n") + "\n")
            reporter.flush()
        else:
            sys.__stdout__.write(text.rstrip("\n") + "\n")
            sys.__stdout__.flush()


def _cluster(command: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**NODE_SIZE, **os.environ}  # the caller's TUNEATLAS_SLURM_* win
    return subprocess.run(
        [str(CLUSTER_SH), command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def show(pytestconfig) -> Callable[[str], None]:
    """show(text): print into the pytest log (CI shows it), captured or not."""
    return lambda text: emit(pytestconfig, text)


@pytest.fixture(scope="session")
def slurm_cluster(show):
    """A running single-node SLURM cluster (partitions cpu and gpu, one fake GPU)."""
    if not cluster_tests_enabled():
        pytest.skip(f"[cluster] {SKIP_REASON}")
    if os.geteuid() != 0:
        require_or_skip(
            "cluster",
            "the real-SLURM tests need root (tests/cluster/cluster.sh installs Debian's SLURM"
            " and starts its daemons); run them as root, e.g. `sudo make test-cluster`",
        )
    t0 = time.monotonic()
    up = _cluster("up", timeout=600)
    show(
        f"==== tests/cluster/cluster.sh up (exit {up.returncode}, {time.monotonic() - t0:.1f} s)\n"
        + up.stdout
    )
    if up.returncode != 0:
        pytest.fail(
            f"`tests/cluster/cluster.sh up` failed (exit {up.returncode}):\n{up.stdout}",
            pytrace=False,
        )
    smoke = _cluster("smoke", timeout=120)
    show(f"==== tests/cluster/cluster.sh smoke (exit {smoke.returncode})\n" + smoke.stdout)
    if smoke.returncode != 0:
        _cluster("stop", timeout=120)
        pytest.fail(f"the SLURM smoke test failed:\n{smoke.stdout}", pytrace=False)
    yield
    t0 = time.monotonic()
    down = _cluster("stop", timeout=120)
    show(
        f"==== tests/cluster/cluster.sh stop (exit {down.returncode}, "
        f"{time.monotonic() - t0:.1f} s)\n" + down.stdout
    )
