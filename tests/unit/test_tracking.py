"""The MLflow tracking store, from a hand-made results/ tree: one experiment per study, one run
per finished run with its spec as params, its metric history and final scores, S2's failure
flag, and idempotence (a second call adds nothing; a new run is added; a re-trained one is
replaced)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import require_module
from tuneatlas.tracking import EXPERIMENT_PREFIX, RUN_ID_TAG, flatten, track_runs

mlflow = require_module("mlflow")

STEPS = 6


def _write_run(results: Path, run: str, lr: float = 2e-5, seed: int = 0) -> None:
    run_dir = results / "runs" / run
    run_dir.mkdir(parents=True)
    spec = {
        "run": run,
        "task": "sst2",
        "dataset": "sst2",
        "model": "bert-tiny",
        "seed": seed,
        "betas_note": None,
        "optim": {"lr": lr, "betas": [0.9, 0.999]},
        "schedule": {"name": "linear", "warmup_steps": 0},
    }
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    steps = [
        {"run": run, "step": s, "epoch": s / STEPS, "lr": lr, "loss": 1.0 / s,
         "split": None, "metric": None, "value": float("nan")}
        for s in range(1, STEPS + 1)
    ]  # fmt: skip
    evals = [
        {"run": run, "step": s, "epoch": s / STEPS, "lr": float("nan"), "loss": float("nan"),
         "split": "valid", "metric": "accuracy", "value": 0.5 + s / 100}
        for s in (3, 6)
    ]  # fmt: skip
    pd.DataFrame(steps + evals).to_parquet(run_dir / "metrics.parquet")
    final = [{"run": run, "task": "sst2", "split": "valid", "metric": "accuracy", "value": 0.56}]
    pd.DataFrame(final).to_parquet(run_dir / "eval.parquet")


def _runs(client):
    out = {}
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id])
        out[exp.name] = {r.data.tags[RUN_ID_TAG]: r for r in runs if RUN_ID_TAG in r.data.tags}
    return out


@pytest.fixture
def results(tmp_path):
    results = tmp_path / "results"
    for run in ("s1-sst2-s42", "s1-sst2-s0", "s2-vanilla-lr2e-5-s0", "s2-vanilla-lr2e-5-s1"):
        _write_run(results, run)
    tables = results / "tables"
    tables.mkdir()
    pd.DataFrame(
        {"run": ["s2-vanilla-lr2e-5-s0", "s2-vanilla-lr2e-5-s1"], "failed": [True, False]}
    ).to_parquet(tables / "s2_f1.parquet")
    return results


PLANNED = {
    "s1": {"finetune": ["s1-sst2-s42", "s1-sst2-s0"]},
    "s2": {"finetune": ["s2-vanilla-lr2e-5-s0", "s2-vanilla-lr2e-5-s1", "s2-vanilla-lr2e-5-s2"]},
}


def test_every_finished_run_lands_once_in_its_studys_experiment(results):
    store = results / "mlflow.db"
    failure = [results / "tables" / "s2_f1.parquet"]
    counts = track_runs(PLANNED, results, store, failure_tables=failure)
    # s2-...-s2 has not finished yet (no run directory): left for a later call
    assert counts == {"added": 4, "replaced": 0, "kept": 0, "missing": 1}
    client = mlflow.tracking.MlflowClient(f"sqlite:///{store}")
    runs = _runs(client)
    assert {k: sorted(v) for k, v in runs.items() if k.startswith(EXPERIMENT_PREFIX)} == {
        "tuneatlas-s1": ["s1-sst2-s0", "s1-sst2-s42"],
        "tuneatlas-s2": ["s2-vanilla-lr2e-5-s0", "s2-vanilla-lr2e-5-s1"],
    }
    run = client.get_run(runs["tuneatlas-s2"]["s2-vanilla-lr2e-5-s0"].info.run_id)
    assert run.info.run_name == "s2-vanilla-lr2e-5-s0" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "2.0e-05"
    assert run.data.params["schedule.name"] == "linear"
    assert run.data.params["optim.betas"] == "[0.9, 0.999]"
    tags = run.data.tags
    assert (tags["study"], tags["model"], tags["dataset"], tags["seed"]) == (
        "s2", "bert-tiny", "sst2", "0"
    )  # fmt: skip
    assert tags["failed"] == "true" and tags["lr"] == "2e-05"
    assert tags["path.metrics"].endswith("runs/s2-vanilla-lr2e-5-s0/metrics.parquet")
    assert "failed" not in runs["tuneatlas-s1"]["s1-sst2-s42"].data.tags  # S1 defines no failure
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(s, 1.0 / s) for s in range(1, STEPS + 1)]
    valid = client.get_metric_history(run.info.run_id, "valid/accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in valid) == [(3, 0.53), (6, 0.56)]
    assert run.data.metrics["final/valid/accuracy"] == pytest.approx(0.56)

    # idempotent: nothing new, nothing added
    again = track_runs(PLANNED, results, store, failure_tables=failure)
    assert again == {"added": 0, "replaced": 0, "kept": 4, "missing": 1}
    assert sum(len(v) for v in _runs(client).values()) == 4

    # the last run finishes, another is re-trained with a new spec: one added, one replaced
    _write_run(results, "s2-vanilla-lr2e-5-s2", seed=2)
    spec_file = results / "runs" / "s1-sst2-s0" / "spec.yaml"
    spec_file.write_text(spec_file.read_text().replace("warmup_steps: 0", "warmup_steps: 5"))
    third = track_runs(PLANNED, results, store, failure_tables=failure)
    assert third == {"added": 1, "replaced": 1, "kept": 3, "missing": 0}
    runs = _runs(client)
    assert len(runs["tuneatlas-s2"]) == 3 and len(runs["tuneatlas-s1"]) == 2
    assert runs["tuneatlas-s1"]["s1-sst2-s0"].data.params["schedule.warmup_steps"] == "5"


def test_a_server_uri_leaves_a_marker_file(results, tmp_path):
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    marker = results / "mlflow.db"
    counts = track_runs({"s1": {"finetune": ["s1-sst2-s42"]}}, results, marker, uri=uri)
    assert yaml.safe_load(marker.read_text()) == {"tracking_uri": uri, **counts}
    assert counts["added"] == 1 and (tmp_path / "server.db").is_file()


def test_flatten_joins_nested_keys_with_dots():
    flat = flatten({"a": 1, "b": {"c": "x", "d": {"e": None}}, "f": [1, 2], "g": {}})
    assert flat == {"a": "1", "b.c": "x", "b.d.e": "null", "f": "[1, 2]", "g": "{}"}


def test_the_store_is_a_final_output_only_when_asked_for(repo):
    from tuneatlas.config import validate_config
    from tuneatlas.plan import make_plan

    raw = yaml.safe_load((repo / "config.yaml").read_text())
    assert raw["tracking"]["mlflow"] is True  # the demo shows it
    assert "results/mlflow.db" in make_plan(validate_config(raw)).final_outputs()
    raw["tracking"] = {}  # the schema's default: off
    config = validate_config(raw)
    assert config["tracking"] == {"mlflow": False, "uri": None}
    assert "results/mlflow.db" not in make_plan(config).final_outputs()
