"""Refactors keep results: the tiny DAG reproduces, value for value, the tables recorded with the
code before the engine + recipes refactor (commit 17c5f47; `golden/`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from .conftest import snakemake

pytestmark = pytest.mark.workflow

GOLDEN = Path(__file__).with_name("golden")


def test_tiny_tables_equal_those_recorded_before_the_refactor(tmp_path):
    recorded = sorted((GOLDEN / "tables").glob("*.parquet"))
    assert len(recorded) == 17
    targets = [f"results/tables/{p.name}" for p in recorded]
    snakemake(tmp_path, "--configfile", str(GOLDEN / "tiny.yaml"), "--cores", "2", *targets)
    for path in recorded:
        before = pd.read_parquet(path)
        now = pd.read_parquet(tmp_path / "results/tables" / path.name)
        pd.testing.assert_frame_equal(now, before, check_exact=True, obj=path.stem)
