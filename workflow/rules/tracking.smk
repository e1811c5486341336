# The MLflow tracking store (tuneatlas.tracking): every finished run of the plan written after
# the fact from the Parquet files the runs wrote, one experiment per study. One job, so cluster
# jobs never race on one SQLite file, and a local one: on the submit host, which can reach a
# site's MLflow server (tracking.uri) where compute nodes often have no network. Nothing in
# training uses MLflow.


localrules:
    track,


rule track:
    input:
        tracking_inputs,
    output:
        f"{RESULTS}/mlflow.db",
    log:
        f"{RESULTS}/logs/track.log",
    conda:
        "../../envs/tuneatlas.yaml"
    params:
        runs=tracked_runs,
        results=lambda wc, output: Path(output[0]).parent,
        uri=(
            f"--uri {shlex.quote(config['tracking']['uri'])}"
            if config["tracking"]["uri"]
            else ""
        ),
        failure=" ".join(f"--failure-table {t}" for t in FAILURE_TABLES),
    shell:
        "python -m tuneatlas track --runs {params.runs:q} --results {params.results:q} --out {output:q}"
        " {params.uri} {params.failure} 2> {log:q}"
