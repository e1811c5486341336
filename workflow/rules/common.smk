# Everything that is not a rule: config validation, the plan, input functions.
import json
import os
import re
import shlex
import sys
from pathlib import Path

# a checkout works without `pip install`: here and in every job (`python -m tuneatlas ...`)
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from tuneatlas.analysis.lmeval import TOY_TASKS, harness_cache_env
from tuneatlas.config import config_hash, read_yaml, validate_config
from tuneatlas.data.prepare import local_source_files
from tuneatlas.data.sources import hub_fetch_spec
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.estimate import (
    GPUS,
    Settings,
    bundle_resources,
    estimate_plan,
    job_resources,
)
from tuneatlas.io import stable_hash
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight

# `snakemake -n` (CI's dry-run on a clone without data): plan without the local data files a
# real run needs, one warning each; the executor is not chosen yet when this file is read, so
# the dry-run flag comes from the output settings (absent when the API builds no output)
DRY_RUN = bool(getattr(workflow.output_settings, "dryrun", False))

try:
    # snakemake's own YAML reader keeps the last of two equal keys: re-read strictly
    for _configfile in workflow.configfiles:
        read_yaml(_configfile)
    config = validate_config(config)
    PLAN = make_plan(config)
    # the same checks as `tuneatlas validate`: files, model dirs, lengths, device; CUDA only
    # where the jobs run on this machine (a cluster profile sends them to GPU nodes), and not
    # in a dry-run, which runs nothing
    for _warning in preflight(
        config,
        PLAN,
        check_device=getattr(workflow, "local_exec", True) and not DRY_RUN,
        dry_run=DRY_RUN,
    ):
        print(f"WARNING tuneatlas: {_warning}", file=sys.stderr)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

CONFIG_HASH = config_hash(config)
RESULTS = "results"
THREADS = config["threads"]
DEVICE = config["device"]

# Every job runs the package from this checkout, with the Python that runs snakemake (a venv
# need not be activated) unless rules run in their conda env; offline, no call ever waits on a
# hub time-out. Braces are doubled twice: once for the f-string, once for snakemake's format.
USE_CONDA = "conda" in {
    str(m).lower() for m in workflow.deployment_settings.deployment_method
}
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + (
        ""
        if USE_CONDA
        else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
    )
    + ("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; " if config["offline"] else "")
    # execution settings and information, never params (DESIGN principle 8): changing them
    # re-runs nothing; the CLI reads them (--device default, the config hash in table metadata)
    + f"export TUNEATLAS_DEVICE={shlex.quote(str(DEVICE))}"
    + f" TUNEATLAS_CONFIG_HASH={shlex.quote(CONFIG_HASH)}; "
    # tasks declared in the config (`tasks:`) reach every job; the prepare_data rule also
    # takes the dataset's declaration as a param, so a changed declaration re-prepares
    + (
        "export TUNEATLAS_TASKS="
        + shlex.quote(json.dumps(config["tasks"], sort_keys=True))
        .replace("{", "{{")
        .replace("}", "}}")
        + "; "
        if config["tasks"]
        else ""
    )
)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.\-]+",
    model=r"[A-Za-z0-9_.\-]+",
    run=r"[A-Za-z0-9_.\-]+",
    # any table name but REPRO's (repro.smk) reaches the `table` rule, whose input function
    # names the known ids (the look-ahead sees the rest of the path: `<slug>.parquet`)
    slug=r"(?!(?:repro|findings)\.parquet$)[A-Za-z0-9_.\-]+",
    study=r"s[0-9]+",
    name=r"[a-z0-9]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def model_dirs_needed(wildcards):
    spec = PLAN.models[wildcards.model]
    if spec["source"] == "build":
        return [f"{RESULTS}/data/{d}" for d in spec["corpus"]]
    return []


def dataset_sources(wildcards):
    """The local files a dataset reads (`files`, the split files of `dir`, `facts`): inputs of
    prepare_data, so editing one re-prepares the dataset and re-runs what depends on it.
    """
    name = wildcards.dataset
    if name not in PLAN.datasets:
        raise WorkflowError(
            f"dataset {name!r} is not in the config; known: {', '.join(PLAN.datasets)}"
        )
    try:
        files = local_source_files(name, PLAN.datasets[name])
    except DataError as exc:
        raise WorkflowError(str(exc)) from None
    # a dry-run plans without the missing ones (preflight warned of each)
    if DRY_RUN:
        files = {key: path for key, path in files.items() if path.is_file()}
    for key, path in files.items():
        if not path.is_file():
            raise WorkflowError(
                f"datasets.{name}.{key}: {path} does not exist (relative paths are read from"
                f" the working directory {Path.cwd()}); fix the path in the config"
                + (
                    "; livedoor's files come from `tuneatlas livedoor-convert ARCHIVE DIR`"
                    " (see README)"
                    if PLAN.datasets[name].get("task") == "livedoor"
                    else ""
                )
            )
    return [str(p) for p in files.values()]


def run_of(wildcards):
    try:
        return PLAN.runs[wildcards.run]
    except KeyError:
        raise WorkflowError(
            f"run {wildcards.run!r} is not in the plan of this config"
        ) from None


def finetune_inputs(spec):
    """A fine-tune's data and base model, and the run whose weights it starts from."""
    inputs = {
        "data": f"{RESULTS}/data/{spec['dataset']}",
        "model": f"{RESULTS}/models/{spec['model']}",
    }
    if spec["init_from"]:
        inputs["init"] = f"{RESULTS}/runs/{spec['init_from']}/model"
    return inputs


def init_arg(wildcards, input):
    return f"--init {shlex.quote(input.init)}" if "init" in input.keys() else ""


# runs whose per-example logits a table reads (rule train_with_predictions)
# Only fine-tunes go to the train rule. Without this constraint snakemake also tries that rule
# for every pre-training run (same output paths, pretrain wins by ruleorder) and logs a KeyError
FINETUNE_RUNS = sorted(r for r, run in PLAN.runs.items() if run.kind == "finetune")
PREDICTED_RUNS = sorted({r for t in PLAN.targets.values() for r in t.predictions})


def predictions_arg(wildcards, output):
    return (
        f"--predictions {shlex.quote(output.predictions)}"
        if "predictions" in output.keys()
        else ""
    )


def clustering_of(wildcards):
    """S5's clustering spec, the param of the `cluster` job."""
    return PLAN.clusterings[wildcards.clustering]


def member_dataset_of(wildcards):
    """An S5 member dataset, made by the `cluster_data` job from its base and clusters."""
    return PLAN.datasets[wildcards.dataset]


def fisher_of(wildcards):
    """S2's Fisher trial spec, the param of the `fisher` job."""
    return PLAN.fishers[wildcards.fisher]


def artifact_of(wildcards):
    from tuneatlas.catalogue import ARTIFACTS

    slug = getattr(wildcards, "slug", None) or f"{wildcards.study}_{wildcards.name}"
    found = [a for a in ARTIFACTS.values() if a.slug == slug]
    if not found:
        raise WorkflowError(
            f"no artifact has the file name {slug!r}; known ids (file name = id in lower case,"
            f" dot -> underscore): {', '.join(ARTIFACTS)}"
        )
    return found[0]


def target_of(wildcards):
    """The plan's target of a requested table; raises before any run of it joins the DAG."""
    artifact = artifact_of(wildcards)
    if artifact.id not in PLAN.targets:
        key = f"studies.{artifact.study.lower()}"
        raise WorkflowError(
            f"{artifact.id} is not planned: this config has no section {key}, or it sets"
            f" {key}.enabled: false"
        )
    return PLAN.targets[artifact.id]


# The HTML report: each artifact under its study (category), as "<id>: <title>" (subcategory),
# with the paper's reported values in its caption (workflow/report/artifacts.yaml)
REPORT_TEXT = read_yaml(Path(workflow.basedir) / "workflow/report/artifacts.yaml")
# the reproduction summary sorts before the studies in the sidebar
SUMMARY_CATEGORY = "0 Reproduction summary"


def report_entry(view, artifact_id=None):
    """report()'s category, subcategory and labels of one view ("figure", "table", ...) of the
    artifact named by the job's wildcards, or of `artifact_id` in rules without wildcards.
    """
    from tuneatlas.catalogue import ARTIFACTS

    def artifact(wildcards):
        return ARTIFACTS[artifact_id] if artifact_id else artifact_of(wildcards)

    def category(wildcards):
        study = artifact(wildcards).study
        return f"{study} {REPORT_TEXT['studies'][study]}"

    def subcategory(wildcards):
        return f"{artifact(wildcards).id}: {artifact(wildcards).title}"

    def labels(wildcards):
        return {"artifact": artifact(wildcards).id, "view": view}

    return {"category": category, "subcategory": subcategory, "labels": labels}


def paper_reported(wildcards):
    return REPORT_TEXT["paper"][artifact_of(wildcards).id]


def catalogue_slugs():
    """A wildcard pattern of the artifacts' file names only (not repro, findings)."""
    from tuneatlas.catalogue import ARTIFACTS

    return "|".join(re.escape(a.slug) for a in ARTIFACTS.values())


def report_views():
    """The report's HTML page of every planned table, of the reproduction summary's two
    tables, and the APNG of an S3.F4 animation."""
    views = [
        f"{RESULTS}/tables/html/{target.artifact.slug}.html"
        for target in PLAN.targets.values()
    ]
    if PLAN.repro:
        views += [
            f"{RESULTS}/tables/html/{name}.html" for name in ("repro", "findings")
        ]
    if "S3.F4" in PLAN.targets:
        views.append(f"{RESULTS}/figures/animated/s3_f4.png")
    return views


def table_inputs(wildcards):
    target = target_of(wildcards)
    files = []
    for run in target.runs:
        files.append(f"{RESULTS}/runs/{run}/eval.parquet")
        files.append(f"{RESULTS}/runs/{run}/captures")
    for run in target.embeddings:
        files.append(f"{RESULTS}/embeddings/{run}/embeddings.safetensors")
    # runs whose subset scan the table reads, and their spec (SCAN_FILES is in subsets.smk)
    for run in target.subsets:
        files += [f"{RESULTS}/subsets/{run}/{f}" for f in SCAN_FILES]
        files.append(f"{RESULTS}/runs/{run}/spec.yaml")
    files += [f"{RESULTS}/runs/{run}/predictions.parquet" for run in target.predictions]
    files += [f"{RESULTS}/clusters/{c}" for c in target.clusterings]
    files += [f"{RESULTS}/fisher/{f}.parquet" for f in target.fishers]
    files += [f"{RESULTS}/data/{d}" for d in target.datasets]
    files += [f"{RESULTS}/lm_eval/{r}.parquet" for r in target.lm_evals]
    return files


def table_spec(wildcards):
    target = target_of(wildcards)
    return as_json(
        {
            "runs": list(target.runs),
            "embeddings": list(target.embeddings),
            "subsets": list(target.subsets),
            "params": target.params,
        }
    )


# Hub sources (data.smk): the fetch rules are localrules, their copies inputs of the others.
def one_of(names):
    """A wildcard regex matching exactly these names (nothing at all for none)."""
    return "|".join(map(re.escape, sorted(names))) or "(?!)"


def models_from(*sources):
    """A wildcard regex matching exactly the planned models of these sources."""
    return one_of(m for m, spec in PLAN.models.items() if spec["source"] in sources)


def simcse_stsb(model):
    """The prepared STS-B dev data that selects a SimCSE model's checkpoint ([] for none)."""
    stsb = PLAN.models[model].get("stsb")
    return [f"{RESULTS}/data/{stsb}"] if stsb else []


def datasets_from(*sources):
    """A wildcard regex matching exactly the planned datasets of these sources."""
    return one_of(d for d, spec in PLAN.datasets.items() if spec["source"] in sources)


def hub_copy_of(wildcards):
    """The local copy of a hub dataset (rule fetch_hub_data); nothing for other sources."""
    if PLAN.datasets[wildcards.dataset]["source"] == "hub":
        return f"{RESULTS}/hub/{wildcards.dataset}"
    return []


def hub_copy_arg(wildcards, input):
    return f"--hub-copy {shlex.quote(input.hub)}" if input.hub else ""


def hub_fetch_spec_of(wildcards):
    return as_json(hub_fetch_spec(PLAN.datasets[wildcards.dataset]))


# S4 (pretrain.smk): the pre-training runs, GPUs per pre-training job, tokenize's inputs
PRETRAIN_RUNS = sorted(r for r, run in PLAN.runs.items() if run.kind == "pretrain")
GPUS_PER_PRETRAIN = config["studies"].get("s4", {}).get("gpus", 1)


# the harness tasks whose datasets come from the hub (toy tasks are written from the corpus):
# fetched once on the submit host (rule fetch_harness_data), read offline by the lm_eval jobs
HARNESS_TASKS = sorted(
    {t for spec in PLAN.lm_evals.values() for t in spec["tasks"] if t not in TOY_TASKS}
)
HARNESS_CACHE = f"{RESULTS}/hub/harness"


def harness_caches(names):
    """The harness's dataset cache, for lm_eval jobs (`names`) with hub tasks; none for toy tasks."""
    tasks = {t for name in names for t in PLAN.lm_evals[name]["tasks"]}
    return [HARNESS_CACHE] if tasks - set(TOY_TASKS) else []


def harness_cache_of(wildcards):
    return harness_caches([wildcards.run])


def harness_env(names):
    """The shell's `export ...;` for lm_eval jobs `names` (one job, or a bundle's members): every
    one runs offline, one with hub tasks reads the fetched cache. Exported before Python starts:
    `datasets` reads these variables when it is first imported."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for cache in harness_caches(names):
        env.update(harness_cache_env(cache))
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + ";"


def tokens_inputs(wildcards):
    spec = PLAN.tokens[wildcards.tokens]
    inputs = {"data": f"{RESULTS}/data/{spec['corpus']}"}
    if spec["tokenizer"] != "build":
        inputs["tokenizer"] = f"{RESULTS}/models/{spec['tokenizer']}"
    return inputs


# The MLflow tracking store (tracking.smk): what the `track` rule reads.
# tables whose `failed` column defines a failed run (S2: accuracy at or below the threshold)
FAILURE_TABLES = [
    PLAN.targets[a].artifact.table for a in ("S2.F1",) if a in PLAN.targets
]


def tracking_inputs(wildcards):
    """Every run's outputs (a SimCSE run's declared output is its model directory), S4's
    harness scores and the failure tables."""
    files = [
        (
            f"{RESULTS}/models/{r}"
            if run.kind == "simcse"
            else f"{RESULTS}/runs/{r}/metrics.parquet"
        )
        for r, run in PLAN.runs.items()
    ]
    files += [f"{RESULTS}/lm_eval/{r}.parquet" for r in PLAN.lm_evals]
    return files + FAILURE_TABLES


def tracked_runs(wildcards):
    """{study: {kind: [run ids]}}: compact, so the 1,248 paper-scale ids fit in one argument."""
    grouped = {}
    for r, run in PLAN.runs.items():
        grouped.setdefault(run.study, {}).setdefault(run.kind, []).append(r)
    return as_json(grouped)


# REPRO (repro.smk): the artifact tables of every configured study and the published values.
from tuneatlas.catalogue import REPRO_FIGURES, REPRO_TABLES

# the published values (package data): a corrected value rebuilds the tables
PUBLISHED = sorted(
    str(p) for p in (Path(SRC) / "tuneatlas/studies/published").glob("*.yaml")
)


def repro_inputs(wildcards):
    tables = [table for study in PLAN.repro.values() for table in study["tables"]]
    return tables + PUBLISHED


# Resources of the GPU rules from `tuneatlas estimate` (cluster profiles): runtime and host
# memory per job, scaled by the attempt (the profile's `retries`). Execution settings from the
# environment, as the profile's partition: TUNEATLAS_ESTIMATE_GPU (or TUNEATLAS_GPU_MODEL) when
# it names a GPU the estimate knows (h100, h200, a100-80g, a100-40g, v100; else h100),
# TUNEATLAS_MAX_HOURS the site's job limit (48 by default). A local run ignores runtime.
_GPU = os.environ.get("TUNEATLAS_ESTIMATE_GPU") or os.environ.get("TUNEATLAS_GPU_MODEL")
ESTIMATE_SETTINGS = Settings(
    GPUS.get(_GPU or "h100", GPUS["h100"]),
    max_hours=float(os.environ.get("TUNEATLAS_MAX_HOURS") or 48),
)
ESTIMATES = {
    (e.rule.replace("train_with_predictions", "train"), e.job): e
    for e in estimate_plan(config, PLAN, ESTIMATE_SETTINGS)
}


def estimated(rule, field, default, wildcards, attempt):
    """`field` (runtime or mem_mb) of a job's attempt from its estimate, `default` where there
    is none (the rule's one wildcard names the job)."""
    est = ESTIMATES.get((rule, wildcards[0]))
    return job_resources(est, attempt, ESTIMATE_SETTINGS, {field: default})[field]


# Bundles (config `bundles`, tuneatlas.bundles, the `bundle` rule). The jobs of rules train,
# fisher, pretrain and lm_eval that run inside a bundle job; their own rules leave them to
# adopt_<rule>.
TRAIN_OUTPUTS = ("model", "captures", "eval.parquet", "metrics.parquet", "spec.yaml")
PRETRAIN_OUTPUTS = ("model", "eval.parquet", "metrics.parquet", "spec.yaml")


def bundled(rule_name):
    return sorted(
        m for b in PLAN.bundles.values() if b["rule"] == rule_name for m in b["members"]
    )


def unbundled(rule_name, names):
    return sorted(set(names) - set(bundled(rule_name)))


def bundle_done(rule_name):
    """Input function of adopt_<rule>: the manifest of the bundle that ran the member."""

    def done(wildcards):
        return f"{RESULTS}/bundles/{PLAN.bundle_of(rule_name, wildcards[0])}/done.json"

    return done


def member_inputs(rule_name, name):
    """What a member's own job (of rules train, fisher, pretrain or lm_eval) reads, as its
    command's option -> path (an lm_eval job's harness cache: by its environment)."""
    if rule_name == "pretrain":
        return {"tokens": f"{RESULTS}/tokens/{PLAN.runs[name].spec['tokens']}"}
    if rule_name == "lm_eval":
        return {
            "model": f"{RESULTS}/runs/{name}/model",
            "data": f"{RESULTS}/data/{PLAN.lm_evals[name]['corpus']}",
        }
    if rule_name == "train":
        return finetune_inputs(PLAN.runs[name].spec)
    spec = PLAN.fishers[name]
    return {
        "data": f"{RESULTS}/data/{spec['dataset']}",
        "model": f"{RESULTS}/models/{spec['model']}",
    }


def bundle_inputs(wildcards):
    bundle = PLAN.bundles[wildcards.bundle]
    members = bundle["members"]
    paths = {p for m in members for p in member_inputs(bundle["rule"], m).values()}
    if bundle["rule"] == "lm_eval":
        paths.update(harness_caches(members))
    return sorted(paths)


def bundle_env(wildcards):
    """The shell's environment for a bundle job: that of its lm_eval members' own jobs."""
    bundle = PLAN.bundles[wildcards.bundle]
    return harness_env(bundle["members"]) if bundle["rule"] == "lm_eval" else ""


# the runs other runs start from (init_from: S1's sequential fine-tunes)
STARTS = {run.spec.get("init_from") for run in PLAN.runs.values()} - {None}


def training_priority(wildcards):
    """Of the jobs ready to run, snakemake starts those of higher priority first. Training jobs
    and bundles (this priority's rules) are the long ones: 1, so they start before the short
    jobs that read them (tables, figures, an evaluation of its own: 0), which then fill the
    cores at the end instead of leaving one long job to run alone. So do the jobs that make
    training inputs out of other jobs' outputs (S5's clusters and member datasets): at 0 they
    waited until the end, and S5's training then ran last, alone. A job training a run that
    others start from gets 2: their later wave waits on it."""
    bundle = PLAN.bundles.get(wildcards.get("bundle"))
    names = bundle["members"] if bundle else list(wildcards)
    return 2 if STARTS & set(names) else 1


def bundle_member(bundle_id, name):
    """A member's command line (the one its own job runs, outputs under the bundle's stage),
    outputs and log: a tuneatlas.bundles.Member as JSON."""
    from tuneatlas.bundles import Member, staged

    rule_name = PLAN.bundles[bundle_id]["rule"]
    # the rules whose job writes one table: results/<rule>/<name>.parquet
    one_table = {"fisher": PLAN.fishers, "lm_eval": PLAN.lm_evals}
    if rule_name in one_table:
        spec, out = one_table[rule_name][name], f"{RESULTS}/{rule_name}/{name}.parquet"
        outputs = [out]
    else:
        spec, out = PLAN.runs[name].spec, f"{RESULTS}/runs/{name}"
        names = TRAIN_OUTPUTS if rule_name == "train" else PRETRAIN_OUTPUTS
        outputs = [f"{out}/{o}" for o in names]
    command = rule_name.replace("_", "-")  # rule lm_eval runs `tuneatlas lm-eval`
    argv = [command, "--spec", as_json(spec), "--out", staged(out, bundle_id)]
    if name in PREDICTED_RUNS:  # as rule train_with_predictions
        outputs.append(f"{out}/predictions.parquet")
        argv += ["--predictions", staged(outputs[-1], bundle_id)]
    argv += [
        a
        for option, path in member_inputs(rule_name, name).items()
        for a in (f"--{option}", path)
    ]
    return Member(
        name, argv, outputs, f"{RESULTS}/logs/{rule_name}/{name}.log"
    ).to_json()


def bundle_members_arg(wildcards):
    return " ".join(
        f"--member {shlex.quote(bundle_member(wildcards.bundle, m))}"
        for m in PLAN.bundles[wildcards.bundle]["members"]
    )


# the resources rules train, fisher, pretrain and lm_eval ask for a job without an estimate
UNESTIMATED = {
    "train": {"runtime": 240, "mem_mb": 16000},
    "fisher": {"runtime": 30, "mem_mb": 16000},
    "pretrain": {"runtime": 1440, "mem_mb": 32000},
    "lm_eval": {"runtime": 240, "mem_mb": 16000},
}


def bundle_resource(field):
    """`field` of a bundle job's attempt: its members one after another (estimate.bundle_resources)."""

    def resource(wildcards, attempt):
        bundle = PLAN.bundles[wildcards.bundle]
        ests = [ESTIMATES.get((bundle["rule"], m)) for m in bundle["members"]]
        default = UNESTIMATED[bundle["rule"]]
        return bundle_resources(ests, attempt, ESTIMATE_SETTINGS, default)[field]

    return resource
