"""The MLflow tracking store: every finished run of the plan, written after the fact.

The `track` rule (workflow/rules/tracking.smk) calls `track_runs` once, after the runs: one
writer, so many cluster jobs never race on one SQLite file, and nothing in training imports
MLflow. The run directories' Parquet files stay the source of truth; the store is a view of
them that researchers browse with `mlflow ui`:

- one MLflow experiment per study (``tuneatlas-s1`` ...), one MLflow run per tuneatlas run, its
  id as the run name;
- params: the run's spec.yaml flattened (``optim.lr``, ``schedule.name``, ...);
- metrics: per step ``loss``, ``lr`` and ``epoch``; the in-training evaluations as
  ``<split>/<metric>`` at their step; the final scores of eval.parquet as
  ``final/<split>/<metric>``; S4's lm-evaluation-harness scores as ``lm_eval/<task>/<metric>``;
- tags: study, kind, model, dataset, seed, lr, `failed` where the study defines failure (S2:
  its S2.F1 table's flag), the paths of the run's outputs, and the tuneatlas run id + spec hash
  that make a second call idempotent: a run already in the store with the same spec hash is
  skipped; one with another hash (the run was re-trained) is replaced.

Snakemake removes a job's output before the job runs, so the rule rebuilds a local SQLite
store whole (the same runs, none twice, in seconds for the toy DAG); a server's store
(`tracking.uri`, the rule's output then a marker file) only ever gets what is new.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tuneatlas.io import stable_hash, write_yaml

RUN_ID_TAG = "tuneatlas.run"
SPEC_HASH_TAG = "tuneatlas.spec_hash"
EXPERIMENT_PREFIX = "tuneatlas-"
# MLflow's per-request limits of log_batch (its REST API refuses larger batches)
_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100
_PARAM_VALUE_LIMIT = 6000


@dataclass(frozen=True)
class RunFiles:
    """Where one tuneatlas run's outputs lie under `results/`."""

    run: str
    study: str
    kind: str  # finetune | simcse | pretrain
    results: Path

    @property
    def run_dir(self) -> Path:
        return self.results / "runs" / self.run

    def outputs(self) -> dict[str, Path]:
        """The run's outputs that exist, by name (the model, eval, metrics, spec, ...)."""
        model = self.results / "models" / self.run if self.kind == "simcse" else None
        found = {
            "run_dir": self.run_dir,
            "model": model or self.run_dir / "model",
            "spec": self.run_dir / "spec.yaml",
            "metrics": self.run_dir / "metrics.parquet",
            "eval": self.run_dir / "eval.parquet",
            "predictions": self.run_dir / "predictions.parquet",
            "captures": self.run_dir / "captures",
            "lm_eval": self.results / "lm_eval" / f"{self.run}.parquet",
        }
        return {name: path for name, path in found.items() if path.exists()}


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec keys joined by dots (``optim.lr``); values as spec.yaml writes them, lists
    in flow style (``[0.9, 0.999]``)."""
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = (
                value
                if isinstance(value, str)
                else yaml.safe_dump(value, default_flow_style=True, width=1e9)
            )
            text = text.strip().removesuffix("...").strip()  # a bare scalar ends a YAML document
            flat[name] = text[:_PARAM_VALUE_LIMIT]
    return flat


def metric_history(metrics: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(name, value, step) of a run's metrics.parquet: loss, lr and epoch of each training
    step, and each in-training evaluation as ``<split>/<metric>``."""
    out: list[tuple[str, float, int]] = []
    steps = metrics[metrics["split"].isna()]
    for column in ("loss", "lr", "epoch"):
        for step, value in zip(steps["step"], steps[column], strict=True):
            out.append((column, float(value), int(step)))
    evals = metrics[metrics["split"].notna()]
    for row in evals.itertuples():
        out.append((f"{row.split}/{row.metric}", float(row.value), int(row.step)))
    return [m for m in out if math.isfinite(m[1])]


def final_scores(files: RunFiles, last_step: int) -> list[tuple[str, float, int]]:
    """The run's final scores (eval.parquet) and S4's harness scores (lm_eval Parquet)."""
    out: list[tuple[str, float, int]] = []
    outputs = files.outputs()
    if "eval" in outputs:
        for row in pd.read_parquet(outputs["eval"]).itertuples():
            out.append((f"final/{row.split}/{row.metric}", float(row.value), last_step))
    if "lm_eval" in outputs:
        for row in pd.read_parquet(outputs["lm_eval"]).itertuples():
            out.append((f"lm_eval/{row.task}/{row.metric}", float(row.value), last_step))
    return [m for m in out if math.isfinite(m[1])]


def run_tags(
    files: RunFiles, spec: dict[str, Any], spec_hash: str, failed: dict[str, bool]
) -> dict[str, str]:
    """What a researcher filters on, the paths of the run's outputs and the idempotence key."""
    tags = {
        RUN_ID_TAG: files.run,
        SPEC_HASH_TAG: spec_hash,
        "study": files.study,
        "kind": files.kind,
        "model": str(spec.get("model")),
        "dataset": str(spec.get("dataset")),
        "seed": str(spec.get("seed")),
        "lr": str((spec.get("optim") or {}).get("lr")),
    }
    if files.run in failed:
        tags["failed"] = str(failed[files.run]).lower()
    tags.update({f"path.{name}": str(path) for name, path in files.outputs().items()})
    return tags


def failed_runs(tables: list[Path]) -> dict[str, bool]:
    """Run id -> failed, from study tables with `run` and `failed` columns (S2.F1)."""
    flags: dict[str, bool] = {}
    for table in tables:
        df = pd.read_parquet(table, columns=["run", "failed"])
        flags.update(dict(zip(df["run"], df["failed"].astype(bool), strict=True)))
    return flags


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_run(
    client: Any, experiment_id: str, files: RunFiles, spec: dict[str, Any], tags: dict[str, str]
) -> None:
    """One MLflow run from one run directory, with batched writes (log_batch)."""
    from mlflow.entities import Metric, Param

    metrics_file = files.run_dir / "metrics.parquet"
    metrics = pd.read_parquet(metrics_file)
    # the files' time, not now: the store shows when the run finished, the same on a rebuild
    when = int(metrics_file.stat().st_mtime * 1000)
    history = metric_history(metrics)
    last_step = int(metrics["step"].max()) if len(metrics) else 0
    history += final_scores(files, last_step)
    run = client.create_run(experiment_id, start_time=when, tags=tags, run_name=files.run)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in flatten(spec).items()]
    for batch in _chunks(params, _BATCH_PARAMS):
        client.log_batch(run_id, params=batch)
    points = [Metric(name, value, when, step) for name, value, step in history]
    for batch in _chunks(points, _BATCH_METRICS):
        client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id, status="FINISHED", end_time=when)


def logged_runs(client: Any, experiment_id: str) -> dict[str, tuple[str, str]]:
    """tuneatlas run id -> (MLflow run id, spec hash) of the runs already in an experiment."""
    found: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if RUN_ID_TAG in tags:
                found[tags[RUN_ID_TAG]] = (run.info.run_id, tags.get(SPEC_HASH_TAG, ""))
        token = page.token
        if not token:
            return found


def track_runs(
    runs: dict[str, dict[str, list[str]]],
    results: Path,
    out: Path,
    uri: str | None = None,
    failure_tables: list[str | Path] | None = None,
) -> dict[str, int]:
    """Write the finished runs of `runs` ({study: {kind: [run ids]}}, the plan's) into the
    MLflow store at `uri` (default: SQLite at `out`), adding only runs not yet there with the
    same spec hash. With a `uri`, `out` becomes a marker file naming the store. Returns counts:
    added, replaced (re-trained with another spec), kept, missing (not finished yet)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError(
            "tracking.mlflow needs MLflow: pip install -e '.[tracking]' (make setup does)"
        ) from None

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri or f"sqlite:///{out}")
    failed = failed_runs([Path(t) for t in failure_tables or []])
    counts = {"added": 0, "replaced": 0, "kept": 0, "missing": 0}
    experiments: dict[str, str] = {}
    known: dict[str, dict[str, tuple[str, str]]] = {}
    planned = [
        RunFiles(run, study, kind, Path(results))
        for study, kinds in runs.items()
        for kind, ids in kinds.items()
        for run in ids
    ]
    for files in sorted(planned, key=lambda f: f.run):
        if not (files.run_dir / "metrics.parquet").is_file():
            counts["missing"] += 1  # not finished yet: a later call adds it
            continue
        study, run = files.study, files.run
        if study not in experiments:
            experiments[study] = _experiment(client, EXPERIMENT_PREFIX + study)
            known[study] = logged_runs(client, experiments[study])
        spec = yaml.safe_load(files.run_dir.joinpath("spec.yaml").read_text())
        spec_hash = stable_hash(spec)
        previous = known[study].get(run)
        if previous and previous[1] == spec_hash:
            counts["kept"] += 1
            continue
        if previous:
            client.delete_run(previous[0])  # re-trained with another spec: the new one replaces it
        counts["replaced" if previous else "added"] += 1
        tags = run_tags(files, spec, spec_hash, failed)
        log_run(client, experiments[study], files, spec, tags)
    if uri:
        write_yaml({"tracking_uri": uri, **counts}, out)
    return counts


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)
