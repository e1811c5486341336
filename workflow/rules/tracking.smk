# The MLflow tracking store (tuneatlas.tracking): every finished run of the plan written after
# the fact from the Parquet files the runs wrote, one experiment per study. One local job: a
# single writer, so cluster jobs never race on one SQLite file; nothing in training uses MLflow.


localrules:
    track,


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
    """{study: {kind: [run ids]}}: compact, so 1,242 paper-scale ids fit in one argument."""
    grouped = {}
    for r, run in PLAN.runs.items():
        grouped.setdefault(run.study, {}).setdefault(run.kind, []).append(r)
    return as_json(grouped)


rule track:
    input:
        tracking_inputs,
    output:
        f"{RESULTS}/mlflow.db",
    log:
        f"{RESULTS}/logs/track.log",
    params:
        runs=tracked_runs,
        results=RESULTS,
        uri=(
            f"--uri {shlex.quote(config['tracking']['uri'])}"
            if config["tracking"]["uri"]
            else ""
        ),
        failure=" ".join(f"--failure-table {t}" for t in FAILURE_TABLES),
    shell:
        "python -m tuneatlas track --runs {params.runs:q} --results {params.results} --out {output}"
        " {params.uri} {params.failure} 2> {log}"
