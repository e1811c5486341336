"""The MLflow store of the tiny DAG (rule `track`): one experiment per study with the plan's
runs, and a forced re-run that leaves the same runs (no duplicates)."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from tests.conftest import require_module
from tuneatlas.config import validate_config
from tuneatlas.plan import make_plan
from tuneatlas.tracking import EXPERIMENT_PREFIX

from .conftest import TINY, snakemake

pytestmark = pytest.mark.workflow
mlflow = require_module("mlflow")


def _runs_per_study(store) -> Counter:
    client = mlflow.tracking.MlflowClient(f"sqlite:///{store}")
    return Counter(
        {
            exp.name.removeprefix(EXPERIMENT_PREFIX): len(
                client.search_runs([exp.experiment_id], max_results=5000)
            )
            for exp in client.search_experiments()
            if exp.name.startswith(EXPERIMENT_PREFIX)
        }
    )


def test_the_store_holds_every_planned_run_once(tiny_run, tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["tracking"] = {"mlflow": True}
    config = tmp_path / "tiny-tracking.yaml"
    config.write_text(yaml.safe_dump(raw))
    # the switch changes no run: only the store is left to build
    dry = snakemake(tiny_run, "--configfile", str(config), "-n").stdout
    assert "track" in dry and "train" not in dry.split("Job stats:")[1]
    snakemake(tiny_run, "--configfile", str(config), "--cores", "1")
    plan = make_plan(validate_config(raw))
    planned = Counter(run.study for run in plan.runs.values())
    store = tiny_run / "results" / "mlflow.db"
    assert _runs_per_study(store) == planned
    snakemake(tiny_run, "--configfile", str(config), "--cores", "1", "--force", "results/mlflow.db")
    assert _runs_per_study(store) == planned
