"""REPRO of the tiny DAG: `rule all` builds the findings and the values beside the papers', every
value is `not comparable` (toy scale), and `tuneatlas compare` reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tuneatlas.studies import findings, repro

pytestmark = pytest.mark.workflow


def test_tiny_run_checks_every_finding_and_compares_nothing(tiny_run):
    tables = tiny_run / "results" / "tables"
    found = pd.read_parquet(tables / "findings.parquet")
    assert list(found.columns) == repro.FINDINGS_COLUMNS
    assert list(found["finding"]) == [f.id for f in findings.FINDINGS]
    assert set(found["verdict"]) <= {findings.HOLDS, findings.FAILS, findings.UNTESTABLE}
    values = pd.read_parquet(tables / "repro.parquet")
    assert set(values["verdict"]) == {repro.NOT_COMPARABLE}
    assert values.loc[values["ours"].notna(), "reason"].str.startswith("toy scale:").all()
    for figure in ("repro.png", "findings.png"):
        assert (tiny_run / "results" / "figures" / figure).stat().st_size > 0
    out = subprocess.run(
        [sys.executable, "-m", "tuneatlas", "compare", "--json"],
        cwd=tiny_run,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out)["missing_studies"] == []
