# Everything that is not a rule: config validation, the plan, input functions.
import json
import shlex
import sys
from pathlib import Path

# a checkout works without `pip install`: here and in every job (`python -m tuneatlas ...`)
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from tuneatlas.config import ConfigError, config_hash, validate_config
from tuneatlas.io import stable_hash
from tuneatlas.plan import make_plan

try:
    config = validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

CONFIG_HASH = config_hash(config)
PLAN = make_plan(config)
RESULTS = "results"
THREADS = config["threads"]
DEVICE = config["device"]

# Every job runs the package from this checkout, with the Python that runs snakemake (a venv
# need not be activated) unless rules run in their conda env; offline, no call ever waits on a
# hub time-out. Braces are doubled twice: once for the f-string, once for snakemake's format.
USE_CONDA = "conda" in {str(m).lower() for m in workflow.deployment_settings.deployment_method}
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + ("" if USE_CONDA else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; ")
    + ("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; " if config["offline"] else "")
)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.\-]+",
    model=r"[A-Za-z0-9_.\-]+",
    run=r"[A-Za-z0-9_.\-]+",
    slug=r"s[1-5]_[a-z0-9]+",
    study=r"s[1-5]",
    name=r"[a-z0-9]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def model_dirs_needed(wildcards):
    spec = PLAN.models[wildcards.model]
    if spec["source"] == "build":
        return [f"{RESULTS}/data/{d}" for d in spec["corpus"]]
    return []


def run_of(wildcards):
    try:
        return PLAN.runs[wildcards.run]
    except KeyError:
        raise WorkflowError(
            f"run {wildcards.run!r} is not in the plan of this config"
        ) from None


def train_inputs(wildcards):
    spec = run_of(wildcards).spec
    inputs = {
        "data": f"{RESULTS}/data/{spec['dataset']}",
        "model": f"{RESULTS}/models/{spec['model']}",
    }
    if spec["init_from"]:
        inputs["init"] = f"{RESULTS}/runs/{spec['init_from']}/model"
    return inputs


def init_arg(wildcards, input):
    return f"--init {input.init}" if "init" in input.keys() else ""


def artifact_of(wildcards):
    from tuneatlas.catalogue import from_slug

    slug = getattr(wildcards, "slug", None) or f"{wildcards.study}_{wildcards.name}"
    return from_slug(slug)


def target_of(wildcards):
    artifact = artifact_of(wildcards)
    if artifact.id not in PLAN.targets:
        raise WorkflowError(
            f"{artifact.id} is not planned: its study is disabled in this config"
        )
    return PLAN.targets[artifact.id]


def table_inputs(wildcards):
    target = target_of(wildcards)
    files = []
    for run in target.runs:
        files.append(f"{RESULTS}/runs/{run}/eval.parquet")
        files.append(f"{RESULTS}/runs/{run}/captures")
    for run in target.embeddings:
        files.append(f"{RESULTS}/embeddings/{run}/embeddings.safetensors")
    return files


def table_spec(wildcards):
    target = target_of(wildcards)
    return as_json(
        {
            "runs": list(target.runs),
            "embeddings": list(target.embeddings),
            "params": target.params,
        }
    )
