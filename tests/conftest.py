"""Shared test fixtures: repository paths, offline environment, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# nothing in the tests may wait on a hub time-out
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_sst2() -> Path:
    path = SHARED / "data" / "sst2" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside the checkout)")
    return path
